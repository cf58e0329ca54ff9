//! Twilio's webhooks: `POST /` (a call to our number), `POST /twiml` (a
//! call we placed was answered) and `POST /status` (a placed call's
//! progress). Each must prove with `X-Twilio-Signature` that Twilio sent it:
//! whoever can fake one can open calls on the owner's account and talk to
//! the model.

use std::sync::Arc;

use axum::extract::{FromRequest, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{limits, stream_token, AppState};
use crate::config::Config;
use crate::events::Direction;
use crate::twilio::{signature, twiml};

/// Our public base URL as Twilio knows it: the configured public URL
/// (behind tunnels and proxies the Host and scheme we see are not
/// Twilio's), else `https://` + the Host the request came to.
pub(super) fn public_base(cfg: &Config, headers: &HeaderMap) -> String {
    match &cfg.server.public_url {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("https://{host}")
        }
    }
}

/// The public `wss://` URL of our websocket (`ws://` behind a plain-HTTP
/// public URL).
pub(super) fn ws_url(cfg: &Config, headers: &HeaderMap) -> String {
    let base = public_base(cfg, headers);
    match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}/ws"),
        Some((_, rest)) => format!("wss://{rest}/ws"),
        None => format!("wss://{base}/ws"),
    }
}

/// The URLs Twilio may have signed for a request to `uri`: the public one
/// and, when no public URL is configured (so a proxy may have terminated TLS
/// unseen), the same with the other scheme.
fn signed_urls(cfg: &Config, headers: &HeaderMap, uri: &Uri) -> Vec<String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", public_base(cfg, headers));
    let mut urls = vec![url.clone()];
    if cfg.server.public_url.is_none() {
        urls.push(url.replacen("https://", "http://", 1));
    }
    urls
}

/// Whether the request carries Twilio's signature over one of `urls` and
/// `form` (always, when validation is off). Refusals are logged.
fn signed_by_twilio(
    app: &AppState,
    headers: &HeaderMap,
    urls: &[String],
    form: &[(String, String)],
) -> bool {
    if !app.cfg.server.validate_signatures {
        return true;
    }
    let Some(token) = app.cfg.twilio.auth_token() else {
        tracing::warn!("request refused: no Twilio auth token configured to check its signature");
        return false;
    };
    let Some(sig) = headers
        .get("x-twilio-signature")
        .and_then(|h| h.to_str().ok())
    else {
        if app.may_log() {
            // Without the query: a dial-out's variables are personal data.
            let url = limits::quoted(urls[0].split('?').next().unwrap_or_default());
            tracing::warn!(url, "request refused: no X-Twilio-Signature");
        }
        return false;
    };
    let ok = urls
        .iter()
        .any(|u| signature::is_valid(&token, u, form, sig));
    if !ok && app.may_log() {
        // Without the query: a dial-out's variables are personal data.
        let url = limits::quoted(urls[0].split('?').next().unwrap_or_default());
        tracing::warn!(url, "request refused: X-Twilio-Signature does not match");
    }
    ok
}

/// A webhook's form, extracted only when Twilio signed it (otherwise the
/// request is refused with 403), with the headers that locate us.
pub(super) struct TwilioForm {
    form: Vec<(String, String)>,
    /// The webhook URL's query (signed with it): a dial-out's context.
    query: Vec<(String, String)>,
    headers: HeaderMap,
}

impl TwilioForm {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<Arc<AppState>> for TwilioForm {
    type Rejection = StatusCode;

    async fn from_request(req: Request, app: &Arc<AppState>) -> Result<Self, StatusCode> {
        let (parts, body) = req.into_parts();
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        let body = super::read_body(app, body).await?;
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let urls = signed_urls(&app.cfg, &parts.headers, &uri);
        if !signed_by_twilio(app, &parts.headers, &urls, &form) {
            return Err(StatusCode::FORBIDDEN);
        }
        let query = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        Ok(Self {
            form,
            query,
            headers: parts.headers,
        })
    }
}

/// Twilio signs the websocket upgrade too (over the `wss://` URL, with no
/// form); a signature that is present must be right. Its absence is not
/// fatal: the one-time stream token checked at `start` is what guards the
/// socket.
pub(super) fn upgrade_allowed(app: &AppState, headers: &HeaderMap, uri: &Uri) -> bool {
    if !headers.contains_key("x-twilio-signature") {
        return true;
    }
    let mut urls: Vec<String> = signed_urls(&app.cfg, headers, uri)
        .into_iter()
        .map(|u| {
            u.replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        })
        .collect();
    // Twilio's advice: its handshake signature may be over the URL with a
    // trailing slash.
    let slashed: Vec<String> = urls
        .iter()
        .filter(|u| !u.contains('?') && !u.ends_with('/'))
        .map(|u| format!("{u}/"))
        .collect();
    urls.extend(slashed);
    signed_by_twilio(app, headers, &urls, &[])
}

/// TwiML that connects the call to our websocket with a stream token for
/// this call and `params`, or a polite refusal when every line is busy.
fn connect(
    app: &AppState,
    req: &TwilioForm,
    direction: Direction,
    params: &[(&str, &str)],
) -> Response {
    match stream_twiml(app, req, direction, params) {
        Ok(xml) => ([(header::CONTENT_TYPE, "text/xml")], xml).into_response(),
        Err(refused) => *refused,
    }
}

/// The TwiML of [`connect`]; the error is the answer to give instead.
fn stream_twiml(
    app: &AppState,
    req: &TwilioForm,
    direction: Direction,
    params: &[(&str, &str)],
) -> Result<String, Box<Response>> {
    let call_sid = req.field("CallSid").unwrap_or_default();
    if let Some(refusal) = app.turn_away(direction, Some(call_sid)) {
        let xml = twiml::say_and_hang_up(refusal.spoken());
        return Err(Box::new(
            ([(header::CONTENT_TYPE, "text/xml")], xml).into_response(),
        ));
    }
    // Twilio's calls always have one; the token is bound to it, and it
    // goes into REST paths later.
    if app.cfg.server.validate_signatures && !stream_token::is_call_sid(call_sid) {
        if app.may_log() {
            tracing::warn!("webhook refused: CallSid is not a Twilio call SID");
        }
        return Err(Box::new(
            (StatusCode::BAD_REQUEST, "CallSid is not a Twilio call SID").into_response(),
        ));
    }
    // The token travels back in `start.customParameters`: the websocket
    // serves only the stream of the call our TwiML answered.
    let claims = stream_token::Claims {
        call_sid,
        account_sid: req.field("AccountSid").unwrap_or_default(),
        direction,
    };
    let token = app.issue_token(&claims);
    let mut all = vec![("direction", direction.as_str()), ("stream_token", &token)];
    all.extend_from_slice(params);
    Ok(twiml::connect_stream(&ws_url(&app.cfg, &req.headers), &all))
}

/// A dial-out's persona and variables, from the URL we gave Twilio (checked
/// when the call was placed; only these names pass on).
fn dialout_context(req: &TwilioForm) -> impl Iterator<Item = (&str, &str)> {
    req.query
        .iter()
        .filter(|(k, _)| k == "persona" || k.starts_with(crate::persona::VARIABLE_PREFIX))
        .take(super::dialout::MAX_VARIABLES + 1)
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// `POST /`: someone called our number. Its numbers go to the session
/// as the persona's `{{from_number}}` and `{{to_number}}`.
pub(super) async fn incoming_call(State(app): State<Arc<AppState>>, req: TwilioForm) -> Response {
    let to = req.field("To").unwrap_or_default();
    let from = req.field("From").unwrap_or_default();
    connect(
        &app,
        &req,
        Direction::Inbound,
        &[("to_number", to), ("from_number", from)],
    )
}

/// `POST /twiml`: the person we dialled answered; the bot greets first, as
/// the outbound persona, knowing whom it called.
pub(super) async fn outbound_answered(
    State(app): State<Arc<AppState>>,
    req: TwilioForm,
) -> Response {
    let to = req.field("To").unwrap_or_default();
    let from = req.field("From").unwrap_or_default();
    tracing::info!(
        call = req.field("CallSid").unwrap_or_default(),
        "outbound call answered"
    );
    let mut params = vec![("to_number", to), ("from_number", from)];
    params.extend(dialout_context(&req));
    connect(&app, &req, Direction::Outbound, &params)
}

/// `POST /status`: Twilio's progress reports on a call we placed (initiated,
/// ringing, answered, completed — or busy, no-answer, failed).
pub(super) async fn call_status(State(app): State<Arc<AppState>>, req: TwilioForm) -> Response {
    let status = req.field("CallStatus").unwrap_or("unknown");
    // A label value from outside: only Twilio's documented statuses.
    let label = match status {
        "queued" | "initiated" | "ringing" | "in-progress" | "completed" | "busy" | "failed"
        | "no-answer" | "canceled" => status,
        _ => "other",
    };
    app.metrics
        .twilio_call_status
        .with_label_values(&[label])
        .inc();
    if let Some(sid) = req.field("CallSid") {
        if super::dialout::ENDED.contains(&status) {
            // A call we placed that never streamed gives its line back.
            app.reservations.release(sid);
        }
    }
    tracing::info!(
        call = req.field("CallSid").unwrap_or_default(),
        status,
        duration_secs = req.field("CallDuration").unwrap_or_default(),
        "call status"
    );
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /amd`: what answered a call we placed, as Twilio's
/// answering-machine detection heard it ([`super::amd`]). A machine whose
/// greeting has ended gets the persona's voicemail message on a new
/// stream; a fax is hung up on.
pub(super) async fn answered(State(app): State<Arc<AppState>>, req: TwilioForm) -> Response {
    let sid = req.field("CallSid").unwrap_or_default().to_string();
    let verdict = super::amd::label(req.field("AnsweredBy").unwrap_or("unknown"));
    app.metrics.answered_by.with_label_values(&[verdict]).inc();
    tracing::info!(
        call = %sid,
        answered_by = verdict,
        detection_ms = req.field("MachineDetectionDuration").unwrap_or_default(),
        "answering-machine detection"
    );
    app.verdicts.deliver(&sid, verdict);
    let Some(rest) = app.twilio.clone() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if verdict == "fax" {
        let app = app.clone();
        tokio::spawn(async move { super::call_control::hang_up(&app, &sid).await });
    } else if crate::session::is_machine_end(verdict) {
        let to = req.field("To").unwrap_or_default();
        let from = req.field("From").unwrap_or_default();
        let mut params = vec![
            ("to_number", to),
            ("from_number", from),
            (crate::session::ANSWERED_BY, verdict),
        ];
        params.extend(dialout_context(&req));
        let xml = match stream_twiml(&app, &req, Direction::Outbound, &params) {
            Ok(xml) => xml,
            // No line for the message: the call ends rather than talk to
            // a recorder in silence.
            Err(_) => twiml::say_and_hang_up(""),
        };
        // Answered at once (Twilio waits on us); the redirect follows.
        tokio::spawn(async move {
            match rest.redirect(&sid, &xml).await {
                Ok(()) => app.metrics.twilio_request("voicemail", "ok"),
                Err(e) => {
                    app.metrics.twilio_request("voicemail", "failed");
                    tracing::error!(call = %sid, "leaving a voicemail failed: {}", e.brief());
                }
            }
        });
    }
    StatusCode::NO_CONTENT.into_response()
}
