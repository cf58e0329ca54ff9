//! `WS /demo/ws`: a browser's microphone and speaker ⇄ a call's session —
//! the second transport next to Twilio's ([`super::media_ws`]), feeding the
//! same [`crate::session::Session`] through the same [`Line`].
//!
//! The browser sends 16 kHz PCM; it is brought to what a phone call carries
//! (8 kHz μ-law, 20 ms frames) so every stage does exactly the work it does
//! on a call and the page's waterfall is the phone's. Back come the bot's
//! audio as 8 kHz PCM, Twilio's `mark` and `clear` as JSON (the page echoes
//! a mark once it has played the audio before it, and every pending mark at
//! a `clear`, as Twilio does), and the call's observer events, live.
//!
//! Browser → server:
//! - binary: 16 kHz mono PCM, signed 16-bit little-endian, at most
//!   [`MAX_CHUNK_SECS`] per message;
//! - `{"event":"mark","name":…}`, `{"event":"stop"}`.
//!
//! Server → browser:
//! - `{"event":"start","call_sid":…,"rate":8000}` first;
//! - binary: the bot's audio, 8 kHz mono PCM, signed 16-bit little-endian;
//! - `{"event":"mark","name":…}`, `{"event":"clear"}`;
//! - `{"event":"observe",…}`: an [`crate::observe::Event`] of this call;
//! - `{"event":"ended","recording":…,"trace":…}` last, with download paths
//!   (null when the configuration keeps none).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::line::Line;
use super::AppState;
use crate::audio::resample::Stream;
use crate::audio::{f32_to_i16, ulaw, Frame};
use crate::events::{CallInfo, CallSummary, Direction, EndedBy};
use crate::observe::live::Watch;
use crate::observe::EventKind;
use crate::session::input::TWILIO_RATE;
use crate::session::output::Wire;
use crate::session::CallInput;

/// What the page's microphone sends.
pub(crate) const BROWSER_RATE: u32 = 16_000;
/// The longest piece of audio one message may carry.
pub(crate) const MAX_CHUNK_SECS: f32 = 1.0;
/// One phone frame: 20 ms at 8 kHz.
const FRAME: usize = 160;
/// Marks a call's parameters as a browser call (for the downloads).
const TRANSPORT: (&str, &str) = ("transport", "browser");
/// As for Twilio: a browser that has not taken a message for this long is
/// gone or broken.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// After the session ends, how long its last events may take to arrive.
const LAST_EVENTS: Duration = Duration::from_secs(2);

/// Whether a call came through this transport.
pub(crate) fn is_browser_call(info: &CallInfo) -> bool {
    info.params.get(TRANSPORT.0).map(String::as_str) == Some(TRANSPORT.1)
}

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<AppState>>,
    ext: Extensions,
    headers: HeaderMap,
) -> Response {
    if !super::demo::allowed(&app, &ext, &headers, true) {
        return super::demo::refused(&app);
    }
    if app.draining() {
        let why = super::Refusal::Draining.reason();
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    // Demo calls have lines of their own: a visitor never takes a phone
    // line from a caller.
    let Some(permit) = app.demo_line() else {
        let why = "all demo lines are busy (server.demo_max_calls); try again later";
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    super::limited(ws, &app).on_upgrade(move |socket| handle(socket, app, permit))
}

async fn handle(socket: WebSocket, app: Arc<AppState>, permit: tokio::sync::OwnedSemaphorePermit) {
    let (mut sink, mut stream) = socket.split();
    let call_sid = format!("DM{:032x}", rand::random::<u128>());
    let info = CallInfo {
        call_sid: call_sid.clone(),
        stream_sid: call_sid.clone(),
        direction: Direction::Inbound,
        params: HashMap::from([(TRANSPORT.0.to_string(), TRANSPORT.1.to_string())]),
    };
    // Before the session starts, so that its first events are seen.
    let watch = app.live.watch(&call_sid);
    let (line, wire) = Line::open(&app, info, permit, false);
    let hello = json!({"event": "start", "call_sid": call_sid, "rate": TWILIO_RATE});
    let _ = sink.send(Message::Text(hello.to_string().into())).await;
    let (done_tx, done_rx) = oneshot::channel();
    let stalled = CancellationToken::new();
    let writer = tokio::spawn(write(
        sink,
        wire,
        watch,
        done_rx,
        app.clone(),
        stalled.clone(),
    ));

    let mut mic = Microphone::default();
    let ended = app.calls_ended();
    tokio::pin!(ended);
    'call: loop {
        let msg = tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::warn!(call = %call_sid, "browser websocket error: {e}");
                    break;
                }
                None => break,
            },
            _ = &mut ended => {
                let _ = line.inputs.send(CallInput::End(EndedBy::ServerShutdown)).await;
                break;
            }
            _ = stalled.cancelled() => {
                let _ = line.inputs.send(CallInput::End(EndedBy::StoppedReading)).await;
                break;
            }
        };
        let inputs = match msg {
            Message::Binary(bytes) => mic.push(&bytes),
            Message::Text(text) => control(&text).map(|c| c.into_iter().collect()),
            Message::Close(_) => break,
            _ => continue,
        };
        match inputs {
            Ok(inputs) => {
                for input in inputs {
                    let stop = matches!(input, CallInput::Stop);
                    if line.inputs.send(input).await.is_err() || stop {
                        break 'call;
                    }
                }
            }
            Err(e) => {
                if app.may_log() {
                    let e = super::limits::quoted(&e);
                    tracing::warn!(call = %call_sid, "browser message ignored: {e}");
                }
            }
        }
    }
    let summary = line.close().await;
    let _ = done_tx.send(summary);
    let _ = writer.await;
}

/// A text message from the page: a played mark, or the hang-up.
fn control(text: &str) -> Result<Option<CallInput>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match v["event"].as_str() {
        Some("mark") => match v["name"].as_str() {
            Some(name) => Ok(Some(CallInput::Mark(name.to_string()))),
            None => Err("mark without a name".into()),
        },
        Some("stop") => Ok(Some(CallInput::Stop)),
        other => Err(format!("unknown event {other:?}")),
    }
}

/// The page's 16 kHz PCM, as a phone line carries it: 20 ms frames of
/// 8 kHz μ-law.
struct Microphone {
    down: Stream,
    /// 8 kHz samples not yet a whole frame.
    pending: Vec<f32>,
    pcm: Vec<f32>,
}

impl Default for Microphone {
    fn default() -> Self {
        Self {
            down: Stream::new(BROWSER_RATE, TWILIO_RATE, 320),
            pending: Vec::with_capacity(2 * FRAME),
            pcm: Vec::with_capacity(320),
        }
    }
}

impl Microphone {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<CallInput>, String> {
        if !bytes.len().is_multiple_of(2) {
            return Err(format!(
                "audio of {} bytes: not 16-bit samples",
                bytes.len()
            ));
        }
        let most = (MAX_CHUNK_SECS * BROWSER_RATE as f32) as usize * 2;
        if bytes.len() > most {
            return Err(format!(
                "audio of {} bytes: more than {MAX_CHUNK_SECS} s in one message",
                bytes.len()
            ));
        }
        self.pcm.clear();
        self.pcm.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0),
        );
        self.down.push(&self.pcm, &mut self.pending);
        let whole = self.pending.len() / FRAME * FRAME;
        let frames = self.pending[..whole]
            .chunks_exact(FRAME)
            .map(|f| {
                CallInput::Audio(Frame {
                    pcm: f.iter().map(|&s| f32_to_i16(s)).collect(),
                    rate: TWILIO_RATE,
                    at_ms: None,
                })
            })
            .collect();
        self.pending.drain(..whole);
        Ok(frames)
    }
}

/// Sends the session's output and the call's events until the call has
/// ended, then the `ended` message with the downloads.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut wire: mpsc::Receiver<Wire>,
    mut watch: Watch,
    mut done: oneshot::Receiver<Option<CallSummary>>,
    app: Arc<AppState>,
    stalled: CancellationToken,
) {
    let mut wire_open = true;
    let mut seen_end = false;
    let summary = loop {
        let msg = tokio::select! {
            w = wire.recv(), if wire_open => match w {
                Some(Wire::Media(ulaw)) => Message::Binary(
                    ulaw.iter().flat_map(|&b| ulaw::decode_sample(b).to_le_bytes()).collect(),
                ),
                Some(Wire::Mark(name)) => text(json!({"event": "mark", "name": name})),
                Some(Wire::Clear) => text(json!({"event": "clear"})),
                None => {
                    wire_open = false;
                    continue;
                }
            },
            Some(e) = watch.events.recv() => {
                seen_end |= matches!(e.kind, EventKind::CallEnded { .. });
                observed(&e)
            }
            s = &mut done => break s.ok().flatten(),
        };
        if !send(&mut sink, msg).await {
            stalled.cancel();
            return;
        }
    };
    // The call is over; its last events (the final turn, the summary) may
    // still be on their way through the bus.
    let deadline = tokio::time::Instant::now() + LAST_EVENTS;
    while !seen_end {
        match tokio::time::timeout_at(deadline, watch.events.recv()).await {
            Ok(Some(e)) => {
                seen_end = matches!(e.kind, EventKind::CallEnded { .. });
                if !send(&mut sink, observed(&e)).await {
                    return;
                }
            }
            _ => break,
        }
    }
    let link = |file: &str, kept: bool| {
        let s = summary.as_ref().filter(|_| kept)?;
        let sid = &s.info.call_sid;
        Some(format!(
            "/demo/calls/{sid}/{file}?key={}",
            app.demo_key(sid)
        ))
    };
    let recording = link(
        "recording.wav",
        summary.as_ref().is_some_and(|s| s.recording.is_some()),
    );
    let trace = link("trace.json", app.cfg.observe.traces_dir.is_some());
    let bye = json!({"event": "ended", "recording": recording, "trace": trace,
        "ended_by": summary.as_ref().map(|s| &s.ended_by)});
    if send(&mut sink, text(bye)).await {
        let _ = send(&mut sink, Message::Close(None)).await;
    }
}

/// False when the browser is gone or has not read for [`WRITE_STALL`].
async fn send(sink: &mut SplitSink<WebSocket, Message>, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_STALL, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// An event for the page. Without the persona: the page is the public's
/// (with `server.demo = "anyone"`, anybody's), the prompt is the owner's —
/// as `/calls` never shows it either.
fn observed(e: &crate::observe::Event) -> Message {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("persona");
    }
    if let Some(history) = v
        .pointer_mut("/summary/history")
        .and_then(Value::as_array_mut)
    {
        history.retain(|m| m["role"] != "system");
    }
    v["event"] = "observe".into();
    text(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn the_page_never_sees_the_persona() {
        use crate::events::{CallInfo, CallSummary, Direction, EventKind};
        let info = CallInfo {
            call_sid: "DM1".into(),
            stream_sid: "DM1".into(),
            direction: Direction::Inbound,
            params: HashMap::new(),
        };
        let persona = crate::config::Config::default().personas.inbound;
        let secret = persona.system.clone();
        let mut summary = CallSummary::failed(info.clone(), String::new());
        summary.history = vec![crate::engines::ChatMessage::new(
            crate::engines::Role::System,
            secret.clone(),
        )];
        for kind in [
            EventKind::CallStarted { info, persona },
            EventKind::CallEnded {
                summary: Box::new(summary),
            },
        ] {
            let e = crate::observe::Event {
                call_sid: "DM1".into(),
                at_ms: 0.0,
                kind,
            };
            let Message::Text(t) = observed(&e) else {
                panic!("text")
            };
            assert!(!t.contains(&secret[..40]), "{t}");
        }
    }

    #[test]
    fn the_page_audio_becomes_phone_frames() {
        let mut mic = Microphone::default();
        // One second of a 440 Hz tone at 16 kHz, in 20 ms messages.
        let tone: Vec<i16> = (0..16_000)
            .map(|i| (8000.0 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin()) as i16)
            .collect();
        let mut frames = Vec::new();
        for piece in tone.chunks(320) {
            frames.extend(mic.push(&pcm16(piece)).unwrap());
        }
        // A second of audio is fifty 20 ms frames, less the resampler's
        // delay of at most one.
        assert!((49..=50).contains(&frames.len()), "{}", frames.len());
        let last = match frames.last().unwrap() {
            CallInput::Audio(f) => f.pcm.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(last.len(), FRAME);
        let peak = last.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(
            (6000..=10000).contains(&peak),
            "the tone's level kept: {peak}"
        );
    }

    #[test]
    fn broken_messages_are_refused_with_the_reason() {
        let mut mic = Microphone::default();
        assert!(mic.push(&[1, 2, 3]).unwrap_err().contains("16-bit"));
        let big = vec![0u8; 2 * 16_000 + 2];
        assert!(mic.push(&big).unwrap_err().contains("1 s"));
        assert!(control("{").unwrap_err().contains("JSON"));
        assert!(control(r#"{"event":"mark"}"#).is_err());
        assert!(control(r#"{"event":"dance"}"#).is_err());
        assert!(matches!(
            control(r#"{"event":"mark","name":"m3"}"#),
            Ok(Some(CallInput::Mark(n))) if n == "m3"
        ));
        assert!(matches!(
            control(r#"{"event":"stop"}"#),
            Ok(Some(CallInput::Stop))
        ));
    }
}
