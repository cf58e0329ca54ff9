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
    pub keepalives: usize,
    pub close_stream: bool,
    pub interims: Vec<String>,
    pub finals: Vec<String>,
}

pub struct FakeDeepgram {
    pub addr: SocketAddr,
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

async fn speak(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorised = authorised(&headers);
    fake.requests.lock().unwrap().push(Request {
        query: query.clone(),
        body: body.clone(),
        authorised,
    });
    let b = *fake.behaviour.lock().unwrap();
    if let Some(refused) = refusal(&headers, &b, error) {
        return refused;
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
    let t0 = Instant::now();
    let pcm = match fake.say(text, rate).await {
        Ok(pcm) => pcm,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "FAKE_VOICE", &e),
    };
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        tokio::time::sleep(b.first_byte.saturating_sub(t0.elapsed())).await;
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
    streamed("audio/l16", rx)
}

/// The speak websocket: `Speak` texts gather until `Flush`, whose audio
/// goes out in binary pieces followed by `Flushed`; `Clear` drops what is
/// still to be sent and answers `Cleared`; `Close` ends it. The behaviour's
/// modes apply as on the REST endpoint, counting the connection's bytes.
async fn speak_ws(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let b = *fake.behaviour.lock().unwrap();
    if let Some(refused) = refusal(&headers, &b, refuse) {
        return refused;
    }
    let rate = query.get("sample_rate").and_then(|r| r.parse::<u32>().ok());
    let (Some(rate), Some("linear16")) = (rate, query.get("encoding").map(String::as_str)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake speaks linear16 with a sample_rate only",
        );
    };
    fake.speak_sockets
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ws.on_upgrade(move |socket| speak_session(fake, socket, query, rate, b))
}

enum Out {
    Audio(Bytes),
    Flushed(u64),
}

async fn speak_session(
    fake: Arc<FakeDeepgram>,
    socket: WebSocket,
    query: HashMap<String, String>,
    rate: u32,
    b: Behaviour,
) {
    use futures::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let mut text = String::new();
    let mut queue: std::collections::VecDeque<Out> = Default::default();
    let mut next_at = tokio::time::Instant::now();
    let (mut flushes, mut sent) = (0u64, 0usize);
    let mut stalled = false;
    loop {
        let sending = !queue.is_empty() && !stalled;
        tokio::select! {
            m = rx.next() => {
                let Some(Ok(m)) = m else { return };
                let t = match m {
                    Message::Text(t) => t,
                    Message::Close(_) => return,
                    _ => continue,
                };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                let answer = match v["type"].as_str() {
                    Some("Speak") => {
                        let piece = v["text"].as_str().unwrap_or_default();
                        text.push_str(piece);
                        fake.requests.lock().unwrap().push(Request {
                            query: query.clone(),
                            body: json!({"text": piece}),
                            authorised: true,
                        });
                        None
                    }
                    Some("Flush") => {
                        let asked = tokio::time::Instant::now();
                        let Ok(pcm) = fake.say(&std::mem::take(&mut text), rate).await else {
                            return;
                        };
                        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                        if queue.is_empty() {
                            next_at = asked + b.first_byte;
                        }
                        let pieces = bytes.chunks(b.piece).map(|c| Out::Audio(Bytes::copy_from_slice(c)));
                        queue.extend(pieces);
                        queue.push_back(Out::Flushed(flushes));
                        flushes += 1;
                        None
                    }
                    Some("Clear") => {
                        queue.clear();
                        text.clear();
                        Some(json!({"type": "Cleared", "sequence_id": flushes}))
                    }
                    Some("Close") => {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    _ => Some(json!({"type": "Warning", "description": "unknown message type", "code": "UNKNOWN_MESSAGE_TYPE"})),
                };
                if let Some(a) = answer {
                    if tx.send(Message::text(a.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_at), if sending => {
                let m = match queue.pop_front() {
                    Some(Out::Audio(piece)) => {
                        match b.mode {
                            Mode::DropAfter(n) if sent >= n => return,
                            Mode::StallAfter(n) if sent >= n => {
                                stalled = true;
                                continue;
                            }
                            _ => {}
                        }
                        sent += piece.len();
                        Message::Binary(piece)
                    }
                    Some(Out::Flushed(id)) => {
                        Message::text(json!({"type": "Flushed", "sequence_id": id}).to_string())
                    }
                    None => continue,
                };
                if tx.send(m).await.is_err() {
                    return;
                }
                next_at = tokio::time::Instant::now() + b.per_piece;
            }
        }
    }
}

/// Voiced syllables at `rate`: about one per three letters of each word,
/// a short gap between words and a longer one after a sentence's end, so
/// the audio lasts about as long as the text takes to say.
pub fn tones(text: &str, rate: u32) -> Vec<i16> {
    let n = |secs: f32| (secs * rate as f32) as usize;
    let mut out = Vec::new();
    let mut phase = 0f32;
    for (k, word) in text.split_whitespace().enumerate() {
        let letters = word.chars().filter(|c| c.is_alphanumeric()).count();
        for syllable in 0..letters.div_ceil(3).max(1) {
            let len = n(0.16);
            // A falling pitch per syllable, a different vowel each time.
            let f0 = 150.0 - 20.0 * ((k + syllable) % 3) as f32;
            for i in 0..len {
                let t = i as f32 / len as f32;
                let envelope = (std::f32::consts::PI * t).sin().powi(2);
                phase += std::f32::consts::TAU * f0 * (1.0 - 0.1 * t) / rate as f32;
                let v = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.25 * (3.0 * phase).sin();
                out.push((v * envelope * 5000.0) as i16);
            }
        }
        let pause = if word.ends_with(['.', '!', '?']) {
            0.35
        } else {
            0.05
        };
        out.resize(out.len() + n(pause), 0);
    }
    out
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

async fn listen(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let log = Arc::new(Mutex::new(ListenLog {
        query: query.clone(),
        authorised: authorised(&headers),
        ..ListenLog::default()
    }));
    fake.connections.lock().unwrap().push(log.clone());
    if !authorised(&headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTH",
            "Invalid credentials.",
        );
    }
    let b = *fake.listen.lock().unwrap();
    if let ListenMode::Refuse(code, why) = b.mode {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return refuse(code, "REFUSED", why);
    }
    let rate = query.get("sample_rate").and_then(|r| r.parse::<u32>().ok());
    let (Some(ears), Some(rate), Some("linear16")) = (
        fake.ears.clone(),
        rate,
        query.get("encoding").map(String::as_str),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake hears linear16 with a sample_rate only",
        );
    };
    ws.on_upgrade(move |socket| async move {
        let _ = Listener::new(ears, rate, b, log).run(socket).await;
    })
}

/// One listen connection: the audio so far and how much of it is final.
struct Listener {
    ears: Arc<dyn Stt>,
    rate: u32,
    behaviour: ListenBehaviour,
    log: Arc<Mutex<ListenLog>>,
    audio: Vec<i16>,
    /// Samples already covered by final results.
    finalised: usize,
    /// Samples when the last interim was sent.
    interim_at: usize,
}

/// Deepgram closes a stream that sends nothing for this long.
const IDLE: Duration = Duration::from_secs(10);

impl Listener {
    fn new(
        ears: Arc<dyn Stt>,
        rate: u32,
        behaviour: ListenBehaviour,
        log: Arc<Mutex<ListenLog>>,
    ) -> Self {
        Self {
            ears,
            rate,
            behaviour,
            log,
            audio: Vec::new(),
            finalised: 0,
            interim_at: 0,
        }
    }

    fn secs(&self, samples: usize) -> f64 {
        samples as f64 / self.rate as f64
    }

    async fn run(mut self, mut socket: WebSocket) -> Result<(), axum::Error> {
        loop {
            let msg = match tokio::time::timeout(IDLE, socket.recv()).await {
                Err(_) => {
                    return close(socket, "NET-0001: no audio received within the timeout").await
                }
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Binary(bytes) => {
                    self.audio.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]])),
                    );
                    let heard = self.secs(self.audio.len());
                    self.log.lock().unwrap().audio_secs = heard;
                    match self.behaviour.mode {
                        ListenMode::DropAfter(s) if heard >= s as f64 => return Ok(()),
                        ListenMode::CloseAfter(s) if heard >= s as f64 => {
                            return close(socket, "DATA-0000: the audio could not be decoded").await
                        }
                        _ => {}
                    }
                    if let Some(every) = self.behaviour.interim_every {
                        let step = (every.as_secs_f64() * self.rate as f64) as usize;
                        if self.audio.len() >= self.interim_at + step {
                            self.interim_at = self.audio.len();
                            let r = self.result(false, false).await;
                            socket.send(Message::text(r.to_string())).await?;
                        }
                    }
                }
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("KeepAlive") => self.log.lock().unwrap().keepalives += 1,
                        Some("Finalize") => {
                            self.log.lock().unwrap().finalizes += 1;
                            if matches!(self.behaviour.mode, ListenMode::IgnoreFinalize) {
                                continue;
                            }
                            let asked = Instant::now();
                            let r = self.result(true, true).await;
                            let wait = self
                                .behaviour
                                .finalize_latency
                                .saturating_sub(asked.elapsed());
                            tokio::time::sleep(wait).await;
                            socket.send(Message::text(r.to_string())).await?;
                        }
                        Some("CloseStream") => {
                            self.log.lock().unwrap().close_stream = true;
                            if self.audio.len() > self.finalised {
                                let r = self.result(true, false).await;
                                socket.send(Message::text(r.to_string())).await?;
                            }
                            let meta = json!({"type": "Metadata", "request_id": "00000000-fake",
                                "duration": self.secs(self.audio.len()), "channels": 1});
                            socket.send(Message::text(meta.to_string())).await?;
                            return socket.send(Message::Close(None)).await;
                        }
                        _ => {
                            return close(
                                socket,
                                "DATA-0000: a text message that is not a control message",
                            )
                            .await
                        }
                    }
                }
                Message::Close(_) => return Ok(()),
                _ => {}
            }
        }
    }

    /// A `Results` message for the audio not yet final: final ones cover it
    /// for good, interim ones only say what has been heard so far.
    async fn result(&mut self, is_final: bool, from_finalize: bool) -> Value {
        let (from, to) = (self.finalised, self.audio.len());
        let text = self.recognise(from, to).await;
        if is_final {
            self.finalised = to;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let (start, duration) = (self.secs(from), self.secs(to - from));
        let step = duration / words.len().max(1) as f64;
        let words: Vec<Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let bare: String = w
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .collect();
                json!({"word": bare.to_lowercase(), "punctuated_word": w, "confidence": 0.99,
                       "start": start + step * i as f64, "end": start + step * (i + 1) as f64})
            })
            .collect();
        {
            let mut log = self.log.lock().unwrap();
            if is_final {
                log.finals.push(text.clone());
            } else {
                log.interims.push(text.clone());
            }
        }
        json!({
            "type": "Results", "channel_index": [0, 1], "start": start, "duration": duration,
            "is_final": is_final, "speech_final": is_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": words}]},
            "metadata": {"request_id": "00000000-fake", "model_uuid": "fake", "model_info": {"name": "fake", "version": "0", "arch": "fake"}}
        })
    }

    /// What was said between two positions: the speech in it (by energy;
    /// silence alone is no words) through our STT.
    async fn recognise(&self, from: usize, to: usize) -> String {
        let audio = Audio::from_i16(&self.audio[from..to], self.rate);
        let Some((first, last)) = crate::audio::loud_extent(&audio.samples, self.rate, -45.0, 20)
        else {
            return String::new();
        };
        let pad = (self.rate as usize) / 4;
        let a = first.saturating_sub(pad);
        let b = (last + pad).min(audio.samples.len());
        let speech = Audio::new(audio.samples[a..b].to_vec(), self.rate);
        let ears = self.ears.clone();
        match tokio::task::spawn_blocking(move || ears.transcribe(&speech)).await {
            Ok(Ok(t)) => t.text.trim().to_string(),
            _ => String::new(),
        }
    }
}

/// Ends a listen connection the way Deepgram does when something is wrong:
/// a close frame with code 1011 and the reason.
async fn close(mut socket: WebSocket, reason: &str) -> Result<(), axum::Error> {
    socket
        .send(Message::Close(Some(CloseFrame {
            code: 1011,
            reason: reason.into(),
        })))
        .await
}
