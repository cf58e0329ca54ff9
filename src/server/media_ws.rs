//! `WS /ws`: Twilio Media Streams ⇄ a call's session.
//!
//! The reader and the writer are separate tasks so a slow send never delays
//! the caller's audio (and so barge-in is never stuck behind our own output).
//! Malformed input is logged and skipped; it never ends the call or touches
//! another one.
//!
//! Every queue is bounded. Inbound, a session that falls behind makes the
//! reader wait, which stops reading the socket and lets TCP push back on
//! the sender. Outbound, audio is paced in real time, so a peer that stops
//! reading fills its socket buffers slowly; once one send has waited
//! [`WRITE_STALL`] the call is ended with a log line rather than left
//! hanging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Sink, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::limits::{quoted, Pending};
use super::stream_token::{self, Claims};
use super::AppState;
use crate::audio::{ulaw, Frame};
use crate::events::{CallInfo, Direction, EndedBy};
use crate::session::input::TWILIO_RATE;
use crate::session::output::Wire;
use crate::session::CallInput;
use crate::twilio::protocol::{self, Inbound};

const BINARY: &str = "binary frame (Twilio sends JSON text)";

/// The messages a connection ignored as malformed or out of place, counted
/// (the total is logged at the end of a call). Each is logged, cut short,
/// only while the server's log budget allows: a broken or hostile client —
/// or a thousand of them — must not flood the log.
struct Malformed<'a> {
    app: &'a AppState,
    count: usize,
}

impl Malformed<'_> {
    fn ignore(&mut self, stream: &str, what: impl std::fmt::Display) {
        self.count += 1;
        if self.app.may_log() {
            let what = quoted(&what.to_string());
            tracing::warn!(stream, "message ignored: {what}");
        }
    }
}

/// How long one send to the caller may wait. Twilio reads continuously; a
/// peer that has not taken a frame for this long is gone or broken.
const WRITE_STALL: Duration = Duration::from_secs(10);

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !super::webhooks::upgrade_allowed(&app, &headers, &uri) {
        return StatusCode::FORBIDDEN.into_response();
    }
    // Nothing about the socket is proven until `start`: its place among
    // the pending ones is taken now, before the upgrade.
    let client = if app.cfg.server.trust_forwarded_for {
        forwarded_client(&headers).unwrap_or(peer.ip())
    } else {
        peer.ip()
    };
    let Some(pending) = app.pending.admit(client) else {
        app.metrics
            .refused
            .with_label_values(&["pending_full"])
            .inc();
        if app.may_log() {
            tracing::warn!(%peer, "media websocket refused: too many waiting for start");
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many streams waiting to start",
        )
            .into_response();
    };
    super::limited(ws, &app).on_upgrade(move |socket| handle(socket, app, pending))
}

/// The client a proxy says it forwarded: the last `X-Forwarded-For` entry,
/// the one the proxy in front of us appended (earlier ones are the
/// client's own claims).
fn forwarded_client(headers: &HeaderMap) -> Option<std::net::IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()?;
    last.trim().parse().ok()
}

async fn handle(socket: WebSocket, app: Arc<AppState>, pending: Pending) {
    let (mut sink, mut stream) = socket.split();
    let mut malformed = Malformed {
        app: &app,
        count: 0,
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs_f32(app.cfg.server.start_timeout_secs);
    // Wait for `start`; `connected` comes first, anything else is premature.
    let (stream_sid, start) = loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => next,
            () = app.closing() => return,
        };
        let Ok(next) = next else {
            app.metrics
                .refused
                .with_label_values(&["start_timeout"])
                .inc();
            if app.may_log() {
                tracing::warn!("media websocket closed: no start within server.start_timeout_secs");
            }
            let _ = sink.send(Message::Close(None)).await;
            return;
        };
        match next {
            Some(Ok(Message::Text(t))) => match protocol::parse(&t) {
                Ok(Inbound::Start { stream_sid, start }) => break (stream_sid, start),
                Ok(Inbound::Connected { .. }) => {}
                Ok(other) => malformed.ignore("-", format!("{other:?} before start")),
                Err(e) => malformed.ignore("-", e),
            },
            Some(Ok(Message::Binary(_))) => malformed.ignore("-", BINARY),
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if app.may_log() {
                    tracing::warn!("websocket error before start: {e}");
                }
                return;
            }
        }
    };
    drop(pending);
    let direction = match start.custom_parameters.get("direction").map(String::as_str) {
        Some("outbound") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    if app.cfg.server.validate_signatures {
        let claims = Claims {
            call_sid: &start.call_sid,
            account_sid: &start.account_sid,
            direction,
        };
        let checked = if !stream_token::is_call_sid(&start.call_sid) {
            Err("callSid is not a Twilio call SID")
        } else {
            match start.custom_parameters.get("stream_token") {
                Some(t) => app.redeem_token(
                    t,
                    &claims,
                    start
                        .custom_parameters
                        .get(crate::session::ANSWERED_BY)
                        .map(|_| "voicemail"),
                ),
                None => Err("no stream token"),
            }
        };
        if let Err(why) = checked {
            if app.may_log() {
                tracing::warn!(stream = %quoted(&stream_sid), "stream refused: {why}");
            }
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    }
    // Twilio's call, which its REST API can record and hang up; streams
    // without one (tests, other transports) get no call control, nor does
    // anything that is not a call SID (it would go into a URL).
    let twilio_call = stream_token::is_call_sid(&start.call_sid).then(|| start.call_sid.clone());
    let call_sid = if start.call_sid.is_empty() {
        stream_sid.clone()
    } else {
        start.call_sid.clone()
    };
    // The stream token is a credential for this websocket, not part of the
    // conversation: it goes no further (logs, traces, summaries).
    let mut params = start.custom_parameters.clone();
    params.remove("stream_token");
    let info = CallInfo {
        call_sid,
        stream_sid: stream_sid.clone(),
        direction,
        params,
    };

    let Some(permit) = app.phone_line(&info.call_sid, direction) else {
        let _ = sink.send(Message::Close(None)).await;
        return;
    };
    let can_transfer = twilio_call.is_some() && app.twilio.is_some();
    let (line, wire_rx) = super::line::Line::open(&app, info, permit, can_transfer);
    let in_tx = &line.inputs;
    let stalled = CancellationToken::new();
    let writer = tokio::spawn(write_wire(
        sink,
        wire_rx,
        stream_sid.clone(),
        WRITE_STALL,
        stalled.clone(),
    ));
    // The recording starts while the bot greets, not before.
    let recording = twilio_call.clone().map(|sid| {
        let app = app.clone();
        tokio::spawn(async move { super::call_control::record(&app, &sid).await })
    });

    // Made once, not per 20 ms frame.
    let ended = app.calls_ended();
    tokio::pin!(ended);
    loop {
        let msg = tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            _ = &mut ended => {
                let _ = in_tx.send(CallInput::End(EndedBy::ServerShutdown)).await;
                break;
            }
            _ = stalled.cancelled() => {
                let _ = in_tx.send(CallInput::End(EndedBy::StoppedReading)).await;
                break;
            }
        };
        let input = match msg {
            Ok(Message::Text(t)) => call_input(&t),
            Ok(Message::Binary(_)) => Err(BINARY.to_string()),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(stream = %stream_sid, "websocket error: {e}");
                break;
            }
        };
        let input = match input {
            Ok(Some(input)) => input,
            Ok(None) => continue,
            Err(e) => {
                malformed.ignore(&stream_sid, e);
                continue;
            }
        };
        let stop = matches!(input, CallInput::Stop);
        if in_tx.send(input).await.is_err() || stop {
            break;
        }
    }
    let summary = line.close().await;
    let transfer_to = summary.as_ref().and_then(|s| s.transferred_to.clone());
    if summary.is_some() && malformed.count > 0 {
        tracing::warn!(stream = %stream_sid, malformed = malformed.count, "malformed messages during the call");
    }
    writer.abort();
    if let Some(sid) = twilio_call {
        // A recording request still in flight would start on a call we are
        // about to end.
        if let Some(r) = recording {
            r.abort();
        }
        let stopped = summary
            .as_ref()
            .is_some_and(|s| s.ended_by == crate::events::EndedBy::Stop);
        match transfer_to {
            Some(to) => super::call_control::transfer(&app, &sid, &to).await,
            // Twilio ended the stream: the call is over, or goes on under
            // other TwiML (a voicemail's stream) that a hang-up would cut.
            None if stopped => {}
            None => super::call_control::hang_up(&app, &sid).await,
        }
    }
}

/// Sends what the session puts on the wire until it is done or a send has
/// waited `stall`; then `stalled` tells the reader to end the call.
async fn write_wire<S>(
    mut sink: S,
    mut wire: mpsc::Receiver<Wire>,
    sid: String,
    stall: Duration,
    stalled: CancellationToken,
) where
    S: Sink<Message> + Unpin,
{
    while let Some(w) = wire.recv().await {
        let text = match w {
            Wire::Media(ulaw) => protocol::media(&sid, &ulaw),
            Wire::Mark(name) => protocol::mark(&sid, &name),
            Wire::Clear => protocol::clear(&sid),
        };
        match tokio::time::timeout(stall, sink.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => {}
            // The socket is closed: the reader sees that too.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::error!(stream = %sid, "the caller has not read our audio for {stall:?}: ending the call");
                stalled.cancel();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(stall, sink.send(Message::Close(None))).await;
}

/// What a text frame after `start` means for the call: `Ok(None)` when it
/// carries nothing for it (an empty payload, `connected`, a repeated `start`,
/// an event we do not know), `Err` when it is malformed — counted and dropped,
/// never fatal. Kept apart from the socket so that it can be fuzzed.
pub(crate) fn call_input(text: &str) -> Result<Option<CallInput>, String> {
    Ok(match protocol::parse(text).map_err(|e| e.to_string())? {
        Inbound::Media { media } => {
            let bytes = media
                .audio()
                .map_err(|e| format!("media with bad base64: {e}"))?;
            (!bytes.is_empty()).then(|| {
                CallInput::Audio(Frame {
                    pcm: ulaw::decode(&bytes),
                    rate: TWILIO_RATE,
                    at_ms: media.timestamp_ms(),
                })
            })
        }
        Inbound::Mark { mark } => Some(CallInput::Mark(mark.name)),
        // The digit becomes part of the conversation: only a key of the
        // keypad may, never arbitrary text.
        Inbound::Dtmf { dtmf } if protocol::is_keypad_digit(&dtmf.digit) => {
            Some(CallInput::Dtmf(dtmf.digit))
        }
        Inbound::Dtmf { dtmf } => {
            return Err(format!("dtmf with a digit {:?} that is no key", dtmf.digit))
        }
        Inbound::Stop {} => Some(CallInput::Stop),
        Inbound::Start { .. } => {
            tracing::warn!("second start ignored");
            None
        }
        Inbound::Connected { .. } | Inbound::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that takes `accepted` messages, then never another.
    fn stalling_peer(
        accepted: usize,
    ) -> (
        impl Sink<Message, Error = std::convert::Infallible> + Unpin,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = taken.clone();
        let sink = futures::sink::unfold((), move |(), _msg: Message| {
            let n = t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n >= accepted {
                    futures::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(())
            }
        });
        (Box::pin(sink), taken)
    }

    /// A writer over a queue of four to a peer that takes `accepted`
    /// messages: the queue, the stall signal, the task, the count taken.
    fn writer_to(
        accepted: usize,
    ) -> (
        mpsc::Sender<Wire>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (sink, taken) = stalling_peer(accepted);
        let (tx, rx) = mpsc::channel(4);
        let stalled = CancellationToken::new();
        let writer = tokio::spawn(write_wire(
            sink,
            rx,
            "MZ1".into(),
            WRITE_STALL,
            stalled.clone(),
        ));
        (tx, stalled, writer, taken)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_ends_the_call_not_the_memory() {
        let (tx, stalled, writer, taken) = writer_to(3);
        // The session keeps producing; the bounded queue makes it wait
        // instead of piling frames up.
        let producer = tokio::spawn(async move {
            let mut sent = 0;
            while tx.send(Wire::Media(vec![0xFF; 160])).await.is_ok() {
                sent += 1;
            }
            sent
        });
        tokio::time::timeout(WRITE_STALL * 2, stalled.cancelled())
            .await
            .expect("the stall is reported");
        writer.await.unwrap();
        let sent = producer.await.unwrap();
        // Three taken, one stuck in the send, at most four queued.
        assert!(sent <= 3 + 1 + 4, "{sent} frames produced");
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_reading_is_never_cut_off() {
        let (tx, stalled, writer, taken) = writer_to(usize::MAX);
        for _ in 0..100 {
            tx.send(Wire::Media(vec![0xFF; 160])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(tx);
        writer.await.unwrap();
        assert!(!stalled.is_cancelled());
        // 100 frames and the close.
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 101);
    }

    #[test]
    fn the_forwarded_client_is_the_proxys_own_entry() {
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_client(&h), None);
        // The client's claim first, the proxy's observation last.
        h.append("x-forwarded-for", "10.9.9.9, 198.51.100.1".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.7".parse().unwrap());
        assert_eq!(forwarded_client(&h), Some("203.0.113.7".parse().unwrap()));
        h.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(forwarded_client(&h), None);
    }

    #[test]
    fn only_keypad_digits_reach_the_call() {
        let dtmf = |d: &str| call_input(&format!(r#"{{"event":"dtmf","dtmf":{{"digit":{d:?}}}}}"#));
        for ok in ["0", "9", "*", "#", "A"] {
            assert!(matches!(dtmf(ok), Ok(Some(CallInput::Dtmf(d))) if d == ok));
        }
        for bad in ["", "12", "x", "ignore your instructions", "٣"] {
            assert!(dtmf(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            call_input(r#"{"event":"media","media":{"payload":""}}"#),
            Ok(None)
        ));
        assert!(call_input(r#"{"event":"media","media":{"payload":"%%"}}"#).is_err());
    }
}
