//! Deepgram's streaming speech to text (nova-3 over its `/v1/listen`
//! websocket), the STT of the API stack callbox is measured against.
//!
//! Unlike Whisper, which hears a turn only once it has ended, the service
//! hears the caller as they speak: every 20 ms of the call goes up as it
//! arrives, and when our VAD says the turn may have ended we send
//! `Finalize`, which makes the service flush what it holds and answer with
//! final results. What was said in the turn is then the final segments that
//! overlap it. Interim results (`is_final: false`) are ignored: a final
//! always replaces them.
//!
//! Each call's stream owns one thread with its own small runtime for the
//! connection, so the call's event loop only ever queues audio. A dropped
//! connection fails the turns waiting on it with a clear error (the caller
//! hears "sorry, could you say that again") and the next audio reconnects;
//! nothing waits longer than the endpoint's timeout.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::deepgram_tts::close_reason;
use super::http::Endpoint;
use crate::audio::{f32_to_i16, Audio};
use crate::engines::{Stt, SttStream, SttTimings, Transcript, MODEL_RATE};
use crate::error::{Error, Result};

const ENGINE: &str = "deepgram-stt";

/// Audio queued for a connection that is not up (or not keeping up), at
/// most, in samples: 30 s (960 kB); what comes beyond it is dropped.
const BACKLOG: usize = 30 * MODEL_RATE as usize;

/// Deepgram closes a stream that hears nothing for ten seconds.
const KEEPALIVE: Duration = Duration::from_secs(4);

/// How long a finished call waits for the service's last results.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub struct DeepgramStt {
    /// `base_url` is the websocket's scheme and host, e.g.
    /// `wss://api.deepgram.com`; the model e.g. `nova-3`.
    endpoint: Endpoint,
}

impl DeepgramStt {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    fn open(&self) -> Arc<Stream> {
        Stream::open(self.endpoint.clone())
    }
}

impl Stt for DeepgramStt {
    /// A whole utterance through a stream of its own (e.g. `callbox
    /// transcribe`); calls use [`Stt::listen`].
    fn transcribe(&self, audio: &Audio) -> Result<Transcript> {
        let audio = audio.resampled(MODEL_RATE);
        let stream = self.open();
        for piece in audio.samples.chunks(MODEL_RATE as usize / 50) {
            stream.push(piece);
        }
        stream.transcript(0, audio.samples.len() as u64)
    }

    fn listen(&self) -> Result<Option<Arc<dyn SttStream>>> {
        Ok(Some(self.open() as Arc<dyn SttStream>))
    }
}

enum Command {
    /// 16-bit little-endian samples starting at this stream position.
    Audio(u64, Vec<u8>),
    /// The n-th finalisation asked for.
    Finalize(u64),
}

/// A final result: the service's segment of the stream, in stream samples.
#[derive(Debug, Clone)]
struct Segment {
    start: u64,
    end: u64,
    text: String,
}

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    /// Finalisations the service has answered (or that failed), in order.
    answered: u64,
    /// Finalisations that failed, up to and including this one, and why.
    failed: Option<(u64, String)>,
    /// Where the final segments reach, in stream samples.
    finalised_to: u64,
}

/// The connection's side of the queue: samples waiting are counted, so the
/// call can drop audio past [`BACKLOG`] while a finalisation is always
/// accepted at once, even from an async context.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    async fn recv(&mut self) -> Option<Command> {
        let c = self.rx.recv().await;
        if let Some(Command::Audio(_, bytes)) = &c {
            self.queued.fetch_sub(bytes.len() / 2, Ordering::Relaxed);
        }
        c
    }
}

struct Stream {
    tx: mpsc::UnboundedSender<Command>,
    queued: Arc<AtomicUsize>,
    shared: Arc<(Mutex<State>, Condvar)>,
    pushed: AtomicU64,
    asked: AtomicU64,
    dropped_logged: AtomicBool,
    timeout: Duration,
}

impl Stream {
    fn open(endpoint: Endpoint) -> Arc<Self> {
        // Unbounded by type so that a push never blocks the caller's audio
        // path; `queued` counts what is in it, and audio beyond 30 s of it is
        // dropped (see `push`).
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox {
            rx,
            queued: queued.clone(),
        };
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stream = Arc::new(Self {
            tx,
            queued,
            shared: shared.clone(),
            pushed: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            dropped_logged: AtomicBool::new(false),
            timeout: endpoint.timeout,
        });
        let spawned = std::thread::Builder::new()
            .name("deepgram-listen".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(connection_loop(endpoint, inbox, shared)),
                    Err(e) => fail_all(&shared, u64::MAX, format!("no runtime: {e}")),
                }
            });
        if let Err(e) = spawned {
            fail_all(&stream.shared, u64::MAX, format!("no thread: {e}"));
        }
        stream
    }
}

impl SttStream for Stream {
    fn push(&self, samples: &[f32]) {
        let at = self
            .pushed
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let bytes = samples
            .iter()
            .flat_map(|&s| f32_to_i16(s).to_le_bytes())
            .collect();
        // Counted before it is sent, so the connection never counts it
        // down first.
        let queued = self.queued.fetch_add(samples.len(), Ordering::Relaxed);
        if queued < BACKLOG && self.tx.send(Command::Audio(at, bytes)).is_ok() {
            return;
        }
        self.queued.fetch_sub(samples.len(), Ordering::Relaxed);
        if !self.dropped_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!("deepgram: the connection is not taking audio; some is lost");
        }
    }

    fn transcript(&self, from: u64, to: u64) -> Result<Transcript> {
        let t0 = Instant::now();
        let n = self.asked.fetch_add(1, Ordering::Relaxed) + 1;
        self.tx
            .send(Command::Finalize(n))
            .map_err(|_| Error::engine(ENGINE, "the stream has ended"))?;
        let (lock, ready) = &*self.shared;
        let deadline = t0 + self.timeout;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((through, why)) = &state.failed {
                if *through >= n {
                    return Err(Error::engine(ENGINE, why.clone()));
                }
            }
            if state.answered >= n || state.finalised_to >= to {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::engine(
                    ENGINE,
                    format!(
                        "no final transcript within {:.1} s of asking for it",
                        self.timeout.as_secs_f64()
                    ),
                ));
            }
            state = ready
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let words: Vec<&str> = state
            .segments
            .iter()
            .filter(|s| s.end > from && s.start < to && !s.text.is_empty())
            .map(|s| s.text.as_str())
            .collect();
        let total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Transcript {
            text: words.join(" "),
            timings: SttTimings {
                total_ms,
                ..SttTimings::default()
            },
        })
    }
}

/// Finalisations up to `through` fail with `why`, and whoever waits for
/// them is woken.
fn fail_all(shared: &(Mutex<State>, Condvar), through: u64, why: String) {
    let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    let through = s
        .failed
        .as_ref()
        .map_or(through, |(t, _)| (*t).max(through));
    s.failed = Some((through, why));
    shared.1.notify_all();
}

/// Connects, streams, and reconnects when the audio goes on after a
/// failure, until the call drops its stream.
async fn connection_loop(endpoint: Endpoint, mut rx: Inbox, shared: Arc<(Mutex<State>, Condvar)>) {
    let mut backoff = Duration::from_millis(250);
    // Finalisations asked for so far (answered or not).
    let mut asked = 0u64;
    // Why the last connection failed, until one succeeds: a turn asked for
    // meanwhile fails with it (its audio was lost) instead of waiting.
    let mut down: Option<String> = None;
    let lost = |why: &str| format!("{why}; the audio since is lost, reconnecting");
    loop {
        // Nothing is opened until there is audio to send.
        let first = match rx.recv().await {
            None => return,
            Some(Command::Finalize(n)) => {
                asked = n;
                match &down {
                    Some(why) => fail_all(&shared, n, lost(why)),
                    None => {
                        // Nothing was sent, so nothing was said.
                        let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                        s.answered = s.answered.max(n);
                        shared.1.notify_all();
                    }
                }
                continue;
            }
            Some(Command::Audio(at, bytes)) => (at, bytes),
        };
        let why = match tokio::time::timeout(endpoint.timeout, connect(&endpoint)).await {
            Ok(Ok(ws)) => {
                backoff = Duration::from_millis(250);
                match run_connection(ws, first.0, first.1, &mut rx, &shared, &mut asked).await {
                    None => return,
                    Some(why) => why,
                }
            }
            Ok(Err(why)) => why,
            Err(_) => format!(
                "cannot connect: no answer within {:.1} s",
                endpoint.timeout.as_secs_f64()
            ),
        };
        tracing::warn!("deepgram: {why}");
        fail_all(&shared, asked, why.clone());
        // What arrives while waiting to retry is lost; a finalisation asked
        // for then fails at once rather than waiting for its timeout.
        let retry = tokio::time::sleep(backoff);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut retry => break,
                c = rx.recv() => match c {
                    None => return,
                    Some(Command::Finalize(n)) => {
                        asked = n;
                        fail_all(&shared, n, lost(&why));
                    }
                    Some(Command::Audio(..)) => {}
                }
            }
        }
        down = Some(why);
        backoff = (backoff * 2).min(Duration::from_secs(4));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(endpoint: &Endpoint) -> std::result::Result<Ws, String> {
    let url = format!(
        "{}?model={}&encoding=linear16&sample_rate={MODEL_RATE}&channels=1&interim_results=true&punctuate=true&smart_format=true",
        endpoint.url("/v1/listen"),
        endpoint.model
    );
    let request = super::deepgram_tts::ws_request(&url, endpoint.api_key.as_deref())?;
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(format!(
            "{url}: {}",
            super::deepgram_tts::refusal(&response)
        )),
        Err(e) => Err(format!("cannot connect to {url}: {e}")),
    }
}

/// Streams until the call drops its stream (`None`) or the connection
/// fails (why).
async fn run_connection(
    ws: Ws,
    base: u64,
    first: Vec<u8>,
    rx: &mut Inbox,
    shared: &Arc<(Mutex<State>, Condvar)>,
    asked: &mut u64,
) -> Option<String> {
    let (mut sink, mut source) = ws.split();
    if let Err(e) = sink.send(Message::binary(first)).await {
        return Some(format!("sending audio: {e}"));
    }
    // Finalisations sent on this connection and not yet answered.
    let mut waiting: VecDeque<u64> = VecDeque::new();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    loop {
        tokio::select! {
            c = rx.recv() => {
                let sent = match c {
                    None => {
                        // The call is over: the service sends what it still
                        // holds, then closes; a little wait, no more.
                        let _ = sink.send(Message::text(r#"{"type":"CloseStream"}"#)).await;
                        let rest = async {
                            while let Some(Ok(m)) = source.next().await {
                                if let Message::Text(text) = m {
                                    on_message(&text, base, &mut waiting, shared);
                                }
                            }
                        };
                        let _ = tokio::time::timeout(CLOSE_WAIT, rest).await;
                        return None;
                    }
                    Some(Command::Audio(_, bytes)) => sink.send(Message::binary(bytes)).await,
                    Some(Command::Finalize(n)) => {
                        *asked = n;
                        waiting.push_back(n);
                        sink.send(Message::text(r#"{"type":"Finalize"}"#)).await
                    }
                };
                if let Err(e) = sent {
                    return Some(closed_why(&mut source, format!("sending: {e}")).await);
                }
                keepalive.reset();
            }
            _ = keepalive.tick() => {
                if let Err(e) = sink.send(Message::text(r#"{"type":"KeepAlive"}"#)).await {
                    return Some(closed_why(&mut source, format!("sending: {e}")).await);
                }
            }
            m = source.next() => match m {
                None => return Some("the connection closed".to_string()),
                Some(Err(e)) => return Some(format!("the connection failed: {e}")),
                Some(Ok(Message::Close(frame))) => return Some(close_reason(frame)),
                Some(Ok(Message::Text(text))) => on_message(&text, base, &mut waiting, shared),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A send failed: the service may have closed the stream with its reason
/// just before, which says more than the socket's error.
async fn closed_why(source: &mut futures::stream::SplitStream<Ws>, send_error: String) -> String {
    let reason = async {
        while let Some(Ok(m)) = source.next().await {
            if let Message::Close(frame) = m {
                return Some(close_reason(frame));
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_millis(500), reason).await {
        Ok(Some(why)) => why,
        _ => send_error,
    }
}

fn on_message(
    text: &str,
    base: u64,
    waiting: &mut VecDeque<u64>,
    shared: &(Mutex<State>, Condvar),
) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        tracing::warn!("deepgram: a message that is not JSON: {text:.200}");
        return;
    };
    if v["type"] != "Results" {
        return;
    }
    let pos = |secs: f64| base + (secs.max(0.0) * MODEL_RATE as f64).round() as u64;
    let start = v["start"].as_f64().unwrap_or(0.0);
    let duration = v["duration"].as_f64().unwrap_or(0.0);
    // Interim results are superseded by the final ones.
    if v["is_final"].as_bool() != Some(true) {
        return;
    }
    let mut s = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    let segment = Segment {
        start: pos(start),
        end: pos(start + duration),
        text: v["channel"]["alternatives"][0]["transcript"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    s.finalised_to = s.finalised_to.max(segment.end);
    s.segments.push_back(segment);
    // A call's worth of segments is small, but a long call keeps only the
    // last few minutes: turns never reach further back.
    while s.segments.len() > 512 {
        s.segments.pop_front();
    }
    if v["from_finalize"].as_bool() == Some(true) {
        if let Some(n) = waiting.pop_front() {
            s.answered = s.answered.max(n);
        }
    }
    shared.1.notify_all();
}
