//! A local stand-in for Deepgram's text-to-speech REST API at the network
//! edge: `POST /v1/speak?model=…&encoding=linear16&container=none&sample_rate=…`
//! with `Authorization: Token <key>` and a JSON `{"text"}` body, answered
//! with raw 16-bit little-endian audio streamed in pieces (or Deepgram's
//! JSON error body). The audio is real speech of the text, from our own
//! Piper voice: the fake plays the service, not its voice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub const API_KEY: &str = "dg_test_key";

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Speak,
    /// An HTTP error with Deepgram's error body.
    Status(u16, &'static str, &'static str),
    /// The connection is cut after this many bytes of audio.
    DropAfter(usize),
    /// Nothing more is sent after this many bytes; the connection stays open.
    StallAfter(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    pub mode: Mode,
    /// Bytes per piece of the stream; odd on purpose, so samples straddle pieces.
    pub piece: usize,
    pub first_byte: Duration,
    pub per_piece: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            mode: Mode::Speak,
            piece: 333,
            first_byte: Duration::from_millis(20),
            per_piece: Duration::from_millis(1),
        }
    }
}

/// One request: the query, the JSON body, and whether it carried our key.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: HashMap<String, String>,
    pub body: Value,
    pub authorised: bool,
}

pub struct FakeDeepgram {
    pub addr: SocketAddr,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Request>>,
    /// The audio last sent, whole, at the requested rate.
    pub last_audio: Mutex<Vec<i16>>,
}

impl FakeDeepgram {
    pub async fn start(behaviour: Behaviour) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            last_audio: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/v1/speak", axum::routing::post(speak))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn error(code: StatusCode, err_code: &str, msg: &str) -> Response {
    (
        code,
        Json(json!({"err_code": err_code, "err_msg": msg, "request_id": "00000000-fake"})),
    )
        .into_response()
}

async fn speak(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Token {API_KEY}"));
    fake.requests.lock().unwrap().push(Request {
        query: query.clone(),
        body: body.clone(),
        authorised,
    });
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTH",
            "Invalid credentials.",
        );
    }
    let b = *fake.behaviour.lock().unwrap();
    if let Mode::Status(code, err_code, msg) = b.mode {
        return error(StatusCode::from_u16(code).unwrap(), err_code, msg);
    }
    let (Some(text), Some(rate)) = (
        body["text"].as_str(),
        query.get("sample_rate").and_then(|r| r.parse::<u32>().ok()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "text and sample_rate are required",
        );
    };
    if query.get("encoding").map(String::as_str) != Some("linear16")
        || query.get("container").map(String::as_str) != Some("none")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake speaks raw linear16 only",
        );
    }
    let text = text.to_string();
    let pcm = tokio::task::spawn_blocking(move || {
        callbox::engines::speak(super::tts().as_ref(), &text)
            .unwrap()
            .resampled(rate)
            .to_i16()
    })
    .await
    .unwrap();
    *fake.last_audio.lock().unwrap() = pcm.clone();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        tokio::time::sleep(b.first_byte).await;
        let mut sent = 0;
        for piece in bytes.chunks(b.piece) {
            match b.mode {
                Mode::DropAfter(n) if sent >= n => {
                    let _ = tx
                        .send(Err(std::io::Error::other("connection reset")))
                        .await;
                    return;
                }
                Mode::StallAfter(n) if sent >= n => std::future::pending::<()>().await,
                _ => {}
            }
            if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                return;
            }
            sent += piece.len();
            tokio::time::sleep(b.per_piece).await;
        }
    });
    super::streamed("audio/l16", rx)
}
