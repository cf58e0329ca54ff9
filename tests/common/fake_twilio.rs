//! A local stand-in for Twilio at the network edge: its REST API (Calls,
//! Recordings, hang-up) on the real paths, with HTTP Basic auth, form bodies
//! and Twilio's JSON answers and error bodies — and, when a call is placed,
//! Twilio's part of the call: the signed `POST` of the call's TwiML URL, the
//! websocket to the stream that TwiML names (with its parameters), a
//! caller's audio, and a signed status callback when the call ends.
//!
//! Twilio reaches our server through `https://`/`wss://` URLs; here a
//! TLS-terminating proxy is played by connecting over plain HTTP to the same
//! host while signing the URL Twilio would have used.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use callbox::sim::{self, SimOptions, SimReport, SimTurn};
use callbox::twilio::twiml::StreamTarget;
use serde_json::json;

pub const ACCOUNT_SID: &str = "ACfakefakefakefakefakefakefakefake";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `create_call`, `record`, `hang_up` or `unknown`.
    pub op: &'static str,
    pub path: String,
    /// The Basic credentials were the account's.
    pub authorised: bool,
    pub form: Vec<(String, String)>,
}

impl Request {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What Twilio's side of a placed call did.
#[derive(Debug)]
pub struct Played {
    pub call_sid: String,
    /// The stream the `/twiml` answer connected.
    pub stream: StreamTarget,
    pub report: SimReport,
    /// Our server's answer to the `completed` status callback (0: none was
    /// sent, the stream was stopped by a redirect).
    pub status_callback: u16,
}

#[derive(Default)]
pub struct Behaviour {
    /// Operations answered with a 500.
    pub failing: Vec<&'static str>,
    /// Operations never answered (the request hangs until the client gives up).
    pub stalling: Vec<&'static str>,
    /// The callee's turns once the call is answered; `None`: nobody answers.
    pub callee: Option<Vec<SimTurn>>,
    /// What answering-machine detection hears, for calls placed with
    /// `AsyncAmd`: posted to their callback two seconds into the stream.
    pub answered_by: Option<&'static str>,
}

pub struct FakeTwilio {
    pub addr: SocketAddr,
    auth_token: String,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Request>>,
    calls: Mutex<Vec<tokio::task::JoinHandle<anyhow::Result<Played>>>>,
    /// The stream each live call plays, to end when the call is redirected.
    streams: Mutex<std::collections::HashMap<String, tokio_util::sync::CancellationToken>>,
}

impl FakeTwilio {
    pub async fn start(auth_token: &str, behaviour: Behaviour) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            auth_token: auth_token.to_string(),
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            streams: Mutex::new(Default::default()),
        });
        let f = fake.clone();
        let app = axum::Router::new().fallback(move |method, uri, headers, body| {
            let f = f.clone();
            async move { f.handle(method, uri, headers, body).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// A server whose Twilio REST API is this fake, changed by `tweak`.
    pub async fn server(
        &self,
        tweak: impl FnOnce(&mut callbox::config::Config),
    ) -> (Arc<callbox::server::AppState>, SocketAddr) {
        let base = self.api_base();
        super::server::start(|c| {
            c.twilio.account_sid = Some(ACCOUNT_SID.into());
            c.twilio.api_base = base;
            tweak(c);
        })
        .await
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, op: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.op == op).collect()
    }

    /// The calls Twilio's side played, once they end.
    pub async fn played(&self) -> Vec<anyhow::Result<Played>> {
        let handles: Vec<_> = self.calls.lock().unwrap().drain(..).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    async fn handle(
        self: Arc<Self>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = uri.path().to_string();
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let prefix = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/");
        let rest = path.strip_prefix(&prefix).unwrap_or("");
        let op = if method != Method::POST {
            "unknown"
        } else if rest == "Calls.json" {
            "create_call"
        } else if rest.starts_with("Calls/") && rest.ends_with("/Recordings.json") {
            "record"
        } else if rest.starts_with("Calls/")
            && rest.ends_with(".json")
            && rest.matches('/').count() == 1
        {
            // The same resource: new TwiML (a transfer) or a status.
            if form.iter().any(|(k, _)| k == "Twiml") {
                "update_call"
            } else {
                "hang_up"
            }
        } else {
            "unknown"
        };
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{ACCOUNT_SID}:{}", self.auth_token))
        );
        let authorised = headers
            .get("authorization")
            .is_some_and(|h| h.as_bytes() == expected.as_bytes());
        let req = Request {
            op,
            path: path.clone(),
            authorised,
            form,
        };
        self.requests.lock().unwrap().push(req.clone());

        let error = |status: StatusCode, code: u32, message: &str| {
            let body = json!({"code": code, "message": message, "more_info": "", "status": status.as_u16()});
            (status, Json(body)).into_response()
        };
        if op == "unknown" {
            return error(
                StatusCode::NOT_FOUND,
                20404,
                "The requested resource was not found",
            );
        }
        if !authorised {
            return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        }
        if self.behaviour.lock().unwrap().stalling.contains(&op) {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        if self.behaviour.lock().unwrap().failing.contains(&op) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            );
        }
        let call_sid = rest
            .strip_prefix("Calls/")
            .and_then(|r| r.split(['/', '.']).next())
            .unwrap_or_default()
            .to_string();
        match op {
            "create_call" => {
                let (Some(to), Some(from), Some(url)) =
                    (req.field("To"), req.field("From"), req.field("Url"))
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        21201,
                        "To, From and Url are required",
                    );
                };
                let sid = format!("CA{:032x}", rand::random::<u128>());
                let (callee, answered_by) = {
                    let b = self.behaviour.lock().unwrap();
                    (b.callee.clone(), b.answered_by)
                };
                if let Some(turns) = callee {
                    let stop = tokio_util::sync::CancellationToken::new();
                    self.streams
                        .lock()
                        .unwrap()
                        .insert(sid.clone(), stop.clone());
                    let call = answer(
                        self.auth_token.clone(),
                        sid.clone(),
                        req.clone(),
                        Leg::Twiml(url.to_string()),
                        turns,
                        stop,
                        answered_by.filter(|_| req.field("AsyncAmd") == Some("true")),
                    );
                    self.calls.lock().unwrap().push(tokio::spawn(call));
                }
                let body = json!({"sid": sid, "status": "queued", "to": to, "from": from,
                                  "account_sid": ACCOUNT_SID, "direction": "outbound-api"});
                (StatusCode::CREATED, Json(body)).into_response()
            }
            "record" => {
                let body = json!({"sid": format!("RE{:032x}", rand::random::<u128>()),
                                  "call_sid": call_sid, "status": "in-progress",
                                  "channels": if req.field("RecordingChannels") == Some("dual") { 2 } else { 1 }});
                (StatusCode::CREATED, Json(body)).into_response()
            }
            "update_call" => {
                // New TwiML with a stream: Twilio stops the call's stream
                // and plays the new one (here: a recorder, silent).
                let twiml = req.field("Twiml").unwrap_or_default();
                if let Some(stream) = callbox::twilio::twiml::parse_stream(twiml) {
                    let old = self.streams.lock().unwrap().remove(&call_sid);
                    if let Some(old) = old {
                        old.cancel();
                        let create = self
                            .requests()
                            .into_iter()
                            .find(|r| r.op == "create_call")
                            .unwrap_or_else(|| req.clone());
                        let call = answer(
                            self.auth_token.clone(),
                            call_sid.clone(),
                            create,
                            Leg::Stream(stream),
                            Vec::new(),
                            tokio_util::sync::CancellationToken::new(),
                            None,
                        );
                        self.calls.lock().unwrap().push(tokio::spawn(call));
                    }
                }
                Json(json!({"sid": call_sid, "status": "in-progress"})).into_response()
            }
            _ => {
                if req.field("Status") != Some("completed") {
                    return error(StatusCode::BAD_REQUEST, 21218, "Invalid Status");
                }
                Json(json!({"sid": call_sid, "status": "completed"})).into_response()
            }
        }
    }
}

/// Through the TLS-terminating proxy: the same host over plain HTTP.
fn via_proxy(url: &str) -> String {
    url.replacen("https://", "http://", 1)
        .replacen("wss://", "ws://", 1)
}

/// Where a leg of a call gets its stream: the TwiML URL Twilio fetches
/// when the callee answers, or a stream a call update named.
enum Leg {
    Twiml(String),
    Stream(StreamTarget),
}

/// Twilio's part once the callee picks up (or once the call was redirected
/// to a new stream): the stream, an answering-machine verdict when one was
/// asked for, and the `completed` callback — unless the stream was stopped
/// because the call moved on.
async fn answer(
    auth_token: String,
    call_sid: String,
    created: Request,
    leg: Leg,
    turns: Vec<SimTurn>,
    stop: tokio_util::sync::CancellationToken,
    answered_by: Option<&'static str>,
) -> anyhow::Result<Played> {
    let form: Vec<(String, String)> = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", &call_sid),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound-api"),
        ("From", created.field("From").unwrap_or_default()),
        ("To", created.field("To").unwrap_or_default()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let recorder =
        matches!(leg, Leg::Stream(_)) || answered_by.is_some_and(|v| v.starts_with("machine"));
    let stream = match leg {
        Leg::Stream(stream) => stream,
        Leg::Twiml(twiml_url) => {
            // Signed over the URL Twilio was given, sent through the proxy.
            let resp =
                sim::post_signed(&auth_token, &twiml_url, &via_proxy(&twiml_url), &form).await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "/twiml answered {}",
                resp.status()
            );
            let twiml = resp.text().await?;
            callbox::twilio::twiml::parse_stream(&twiml)
                .ok_or_else(|| anyhow::anyhow!("no stream in {twiml}"))?
        }
    };

    if let Some(verdict) = answered_by {
        let callback = created
            .field("AsyncAmdStatusCallback")
            .unwrap_or_default()
            .to_string();
        let mut amd = form.clone();
        amd.push(("AnsweredBy".into(), verdict.into()));
        amd.push(("MachineDetectionDuration".into(), "2000".into()));
        let token = auth_token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let _ = sim::post_signed(&token, &callback, &via_proxy(&callback), &amd).await;
        });
    }

    let mut opts = SimOptions::new(via_proxy(&stream.url), turns);
    opts.call_sid = call_sid.clone();
    opts.account_sid = ACCOUNT_SID.into();
    opts.params = stream.params.clone();
    opts.auth_token = Some(auth_token.clone());
    opts.stop = Some(stop.clone());
    if recorder {
        // A recorder says nothing back: it stays on the line until the bot
        // is done or the call moves on.
        opts.linger_secs = 20.0;
    }
    let report = sim::run(opts).await?;

    let mut done = form.clone();
    done.retain(|(k, _)| k != "CallStatus");
    done.push(("CallStatus".into(), "completed".into()));
    done.push(("CallDuration".into(), "12".into()));
    let callback = created
        .field("StatusCallback")
        .unwrap_or_default()
        .to_string();
    let status_callback = if stop.is_cancelled() {
        0
    } else {
        sim::post_signed(&auth_token, &callback, &via_proxy(&callback), &done)
            .await?
            .status()
            .as_u16()
    };
    Ok(Played {
        call_sid,
        stream,
        report,
        status_callback,
    })
}
