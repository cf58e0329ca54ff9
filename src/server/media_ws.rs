//! `WS /ws`: Twilio Media Streams ⇄ a [`Session`].
//!
//! The reader and the writer are separate tasks so a slow send never delays
//! the caller's audio (and so barge-in is never stuck behind our own output).
//! Malformed input is logged and skipped; it never ends the call or touches
//! another one.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use std::time::Instant;

use super::AppState;
use crate::observe::Publisher;
use crate::session::output::Wire;
use crate::session::{CallInfo, CallInput, Direction, Session};
use crate::twilio::protocol::{self, Inbound};

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if !super::webhooks::upgrade_allowed(&app, &headers, &uri) {
        return StatusCode::FORBIDDEN.into_response();
    }
    // Twilio's frames are a few hundred bytes; a huge message is not Twilio.
    let limit = app.cfg.server.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| handle(socket, app))
}

async fn handle(socket: WebSocket, app: Arc<AppState>) {
    let (mut sink, mut stream) = socket.split();
    // Wait for `start`; `connected` comes first, anything else is premature.
    let (stream_sid, start) = loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => match protocol::parse(&t) {
                Ok(Inbound::Start { stream_sid, start }) => break (stream_sid, start),
                Ok(Inbound::Connected { .. }) => {}
                Ok(other) => tracing::warn!("message before start ignored: {other:?}"),
                Err(e) => tracing::warn!("malformed message before start ignored: {e}"),
            },
            Some(Ok(Message::Binary(_))) => {
                tracing::warn!("binary frame ignored (Twilio sends JSON text)")
            }
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!("websocket error before start: {e}");
                return;
            }
        }
    };
    if app.cfg.server.validate_signatures {
        let token = start.custom_parameters.get("stream_token");
        if !token.is_some_and(|t| app.redeem_token(t)) {
            tracing::warn!(stream = %stream_sid, "stream refused: no valid stream token (not started by our TwiML, expired or reused)");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    }
    let Ok(permit) = app.calls.clone().try_acquire_owned() else {
        tracing::warn!(stream = %stream_sid, "call refused: all lines busy");
        app.metrics
            .calls
            .with_label_values(&["unknown", "rejected"])
            .inc();
        let _ = sink.send(Message::Close(None)).await;
        return;
    };
    let direction = match start.custom_parameters.get("direction").map(String::as_str) {
        Some("outbound") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    // Twilio's call, which its REST API can record and hang up; streams
    // without one (tests, other transports) get no call control.
    let twilio_call = (!start.call_sid.is_empty()).then(|| start.call_sid.clone());
    let call_sid = twilio_call.clone().unwrap_or_else(|| stream_sid.clone());
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

    let (in_tx, in_rx) = mpsc::channel::<CallInput>(256);
    let (wire_tx, mut wire_rx) = mpsc::channel::<Wire>(64);
    let sid = stream_sid.clone();
    let writer = tokio::spawn(async move {
        while let Some(w) = wire_rx.recv().await {
            let text = match w {
                Wire::Media(ulaw) => protocol::media(&sid, &ulaw),
                Wire::Mark(name) => protocol::mark(&sid, &name),
                Wire::Clear => protocol::clear(&sid),
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let events = Publisher::new(app.bus.clone(), &info.call_sid, Instant::now());
    let direction = info.direction.as_str();
    app.metrics.active_calls.inc();
    let session = tokio::spawn(Session::run(
        app.cfg.clone(),
        app.engines.clone(),
        info,
        in_rx,
        wire_tx,
        events,
    ));
    // The recording starts while the bot greets, not before.
    let recording = twilio_call.clone().map(|sid| {
        let app = app.clone();
        tokio::spawn(async move { super::call_control::record(&app, &sid).await })
    });

    let mut malformed = 0usize;
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
                let _ = in_tx.send(CallInput::End("server shutdown".into())).await;
                break;
            }
        };
        let input = match msg {
            Ok(Message::Text(t)) => match protocol::parse(&t) {
                Ok(Inbound::Media { media }) => match media.audio() {
                    Ok(bytes) if !bytes.is_empty() => CallInput::Audio(bytes),
                    Ok(_) => continue,
                    Err(e) => {
                        malformed += 1;
                        tracing::warn!(stream = %stream_sid, "media with bad base64 ignored: {e}");
                        continue;
                    }
                },
                Ok(Inbound::Mark { mark }) => CallInput::Mark(mark.name),
                Ok(Inbound::Dtmf { dtmf }) => CallInput::Dtmf(dtmf.digit),
                Ok(Inbound::Stop {}) => CallInput::Stop,
                Ok(Inbound::Start { .. }) => {
                    tracing::warn!(stream = %stream_sid, "second start ignored");
                    continue;
                }
                Ok(Inbound::Connected { .. }) => continue,
                Ok(Inbound::Unknown) => {
                    tracing::debug!(stream = %stream_sid, "unknown event ignored");
                    continue;
                }
                Err(e) => {
                    malformed += 1;
                    tracing::warn!(stream = %stream_sid, "malformed message ignored: {e}");
                    continue;
                }
            },
            Ok(Message::Binary(_)) => {
                malformed += 1;
                tracing::warn!(stream = %stream_sid, "binary frame ignored (Twilio sends JSON text)");
                continue;
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(stream = %stream_sid, "websocket error: {e}");
                break;
            }
        };
        let stop = matches!(input, CallInput::Stop);
        if in_tx.send(input).await.is_err() || stop {
            break;
        }
    }
    drop(in_tx);
    match session.await {
        Ok(summary) => {
            if malformed > 0 {
                tracing::warn!(stream = %stream_sid, malformed, "malformed messages during the call");
            }
            app.metrics
                .calls
                .with_label_values(&[direction, summary.outcome()])
                .inc();
            app.record(summary);
        }
        Err(e) => {
            tracing::error!(stream = %stream_sid, "call task failed: {e}");
            app.metrics
                .calls
                .with_label_values(&[direction, "failed"])
                .inc();
        }
    }
    app.metrics.active_calls.dec();
    writer.abort();
    drop(permit);
    if let Some(sid) = twilio_call {
        // A recording request still in flight would start on a call we are
        // about to end.
        if let Some(r) = recording {
            r.abort();
        }
        super::call_control::hang_up(&app, &sid).await;
    }
}
