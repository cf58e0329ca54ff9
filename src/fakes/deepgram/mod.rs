//! A local stand-in for Deepgram at the network edge, both halves of the
//! API stack's voice:
//!
//! - speak: `POST /v1/speak?model=…&encoding=linear16&container=none&sample_rate=…`
//!   with `Authorization: Token <key>` and a JSON `{"text"}` body, answered
//!   with raw 16-bit little-endian audio streamed in pieces (or Deepgram's
//!   JSON error body);
//! - listen: the `/v1/listen` websocket, binary linear16 audio up, JSON
//!   `Results` down (interim and final), `Finalize`, `KeepAlive` and
//!   `CloseStream` honoured, errors as Deepgram gives them: an HTTP answer
//!   with a `dg-error` header on the upgrade, a close frame in the stream.
//!
//! The fake plays the service, not its models: what it hears is recognised
//! by an engine of ours (Whisper), and what it says is our Piper voice or,
//! where a benchmark needs the provider's speed rather than a voice,
//! speech-shaped tones of the text's length ([`Voice::Tones`]). Each answer
//! is held back to the latency it is configured with, counted from the
//! request, so the engine's own time is inside it, not added to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::streamed;
use crate::audio::Audio;
use crate::engines::{Stt, Tts};
use listen::listen;
pub use speak::tones;
use speak::{speak, speak_ws};

mod listen;
mod speak;

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

/// How the speak endpoint answers.
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

/// What the speak endpoint's audio is.
#[derive(Clone)]
pub enum Voice {
    /// Real speech of the text from one of our engines.
    Tts(Arc<dyn Tts>),
    /// Voiced syllables as long as the text would take to say, made in
    /// microseconds: the provider's timing without a second TTS competing
    /// for the machine under test.
    Tones,
}

/// How the listen websocket behaves.
#[derive(Debug, Clone, Copy)]
pub struct ListenBehaviour {
    pub mode: ListenMode,
    /// From a `Finalize` (or `CloseStream`) to its final result.
    pub finalize_latency: Duration,
    /// An interim result each time this much more audio arrived (None:
    /// finals only).
    pub interim_every: Option<Duration>,
}

impl Default for ListenBehaviour {
    fn default() -> Self {
        Self {
            mode: ListenMode::Transcribe,
            finalize_latency: Duration::from_millis(50),
            interim_every: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ListenMode {
    Transcribe,
    /// The upgrade is refused with this status and `dg-error` text.
    Refuse(u16, &'static str),
    /// The connection is cut (no close frame) once this many seconds of
    /// audio have arrived.
    DropAfter(f32),
    /// Closed with Deepgram's close frame (1011, a `NET-`/`DATA-` reason)
    /// once this many seconds of audio have arrived.
    CloseAfter(f32),
    /// `Finalize` is never answered; the connection stays open.
    IgnoreFinalize,
}

/// One request: the query, the JSON body, and whether it carried our key.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: HashMap<String, String>,
    pub body: Value,
    pub authorised: bool,
}

/// What one listen connection heard and said, for tests.
#[derive(Debug, Clone, Default)]
pub struct ListenLog {
    pub query: HashMap<String, String>,
    pub authorised: bool,
    /// Seconds of audio received.
    pub audio_secs: f64,
    pub finalizes: usize,
    pub(crate) keepalives: usize,
    pub(crate) close_stream: bool,
    pub interims: Vec<String>,
    pub finals: Vec<String>,
}

pub struct FakeDeepgram {
    pub(crate) addr: SocketAddr,
    behaviour: Mutex<Behaviour>,
    listen: Mutex<ListenBehaviour>,
    voice: Voice,
    /// What recognises the caller on the listen socket.
    ears: Option<Arc<dyn Stt>>,
    requests: Mutex<Vec<Request>>,
    connections: Mutex<Vec<Arc<Mutex<ListenLog>>>>,
    /// Speak websockets opened.
    pub speak_sockets: std::sync::atomic::AtomicUsize,
    /// The audio last sent, whole, at the requested rate.
    pub last_audio: Mutex<Vec<i16>>,
}

impl FakeDeepgram {
    /// Serves on a free local port. Without `ears` the listen socket
    /// refuses connections.
    pub async fn start(
        behaviour: Behaviour,
        voice: Voice,
        ears: Option<Arc<dyn Stt>>,
    ) -> std::io::Result<Arc<Self>> {
        Self::bind("127.0.0.1:0", behaviour, voice, ears).await
    }

    pub async fn bind(
        addr: &str,
        behaviour: Behaviour,
        voice: Voice,
        ears: Option<Arc<dyn Stt>>,
    ) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let fake = Arc::new(Self {
            addr: listener.local_addr()?,
            behaviour: Mutex::new(behaviour),
            listen: Mutex::new(ListenBehaviour::default()),
            voice,
            ears,
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
            speak_sockets: Default::default(),
            last_audio: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/v1/speak", axum::routing::post(speak).get(speak_ws))
            .route("/v1/listen", axum::routing::get(listen))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(fake)
    }

    /// The speak API's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listen API's base URL, and the speak websocket's.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn set_listen(&self, behaviour: ListenBehaviour) {
        *self.listen.lock().unwrap() = behaviour;
    }

    /// `text` in the fake's voice at `rate`, kept as the last audio sent.
    async fn say(&self, text: &str, rate: u32) -> Result<Vec<i16>, String> {
        let (text, voice) = (text.to_string(), self.voice.clone());
        let pcm = tokio::task::spawn_blocking(move || match voice {
            Voice::Tts(tts) => crate::engines::speak(tts.as_ref(), &text)
                .map(|a| a.resampled(rate).to_i16())
                .map_err(|e| e.to_string()),
            Voice::Tones => Ok(tones(&text, rate)),
        })
        .await
        .map_err(|e| e.to_string())??;
        *self.last_audio.lock().unwrap() = pcm.clone();
        Ok(pcm)
    }

    /// Every listen connection so far, oldest first.
    pub fn connections(&self) -> Vec<ListenLog> {
        let c = self.connections.lock().unwrap();
        c.iter().map(|l| l.lock().unwrap().clone()).collect()
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

fn authorised(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Token {API_KEY}"))
}

/// Our key, then the behaviour's status mode, as Deepgram checks them;
/// `answer` shapes a refusal (see [`error`] and [`refuse`]).
fn refusal(
    headers: &HeaderMap,
    b: &Behaviour,
    answer: fn(StatusCode, &str, &str) -> Response,
) -> Option<Response> {
    if !authorised(headers) {
        return Some(answer(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTH",
            "Invalid credentials.",
        ));
    }
    if let Mode::Status(code, err_code, msg) = b.mode {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some(answer(code, err_code, msg));
    }
    None
}

/// The upgrade, refused as Deepgram refuses it: a status, `dg-error`, and
/// the JSON error body.
fn refuse(code: StatusCode, err_code: &str, msg: &str) -> Response {
    let mut r = error(code, err_code, msg);
    if let Ok(v) = msg.parse() {
        r.headers_mut().insert("dg-error", v);
    }
    r
}
