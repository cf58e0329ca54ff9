//! A call in progress, whatever carries its audio: the line it holds, its
//! session, and its bookkeeping when it ends. Transports (Twilio's media
//! websocket, the browser demo's) only move messages in and out.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::AppState;
use crate::events::{CallInfo, CallSummary};
use crate::observe::Publisher;
use crate::session::output::Wire;
use crate::session::{CallInput, Session};

pub(crate) struct Line {
    /// What the transport delivers to the call.
    pub(crate) inputs: mpsc::Sender<CallInput>,
    call_sid: String,
    session: JoinHandle<CallSummary>,
    direction: &'static str,
    app: Arc<AppState>,
    _permit: OwnedSemaphorePermit,
}

impl Line {
    /// Starts the session of `info` on the line `permit` (a phone line or
    /// a demo line, held until the call closes); with it, what the transport
    /// must send (closed when the session ends). Only a call Twilio can
    /// redirect (`can_transfer`: Twilio's, with REST credentials) is offered
    /// the transfer tool.
    pub(crate) fn open(
        app: &Arc<AppState>,
        info: CallInfo,
        permit: OwnedSemaphorePermit,
        can_transfer: bool,
    ) -> (Line, mpsc::Receiver<Wire>) {
        let (in_tx, in_rx) = mpsc::channel::<CallInput>(256);
        let (wire_tx, wire_rx) = mpsc::channel::<Wire>(64);
        let events = Publisher::new(app.bus.clone(), &info.call_sid, Instant::now());
        // A machine-detection verdict that came before the stream.
        if let Some(verdict) = app.verdicts.attach(&info.call_sid, in_tx.clone()) {
            let _ = in_tx.try_send(CallInput::AnsweredBy(verdict.to_string()));
        }
        let call_sid = info.call_sid.clone();
        let direction = info.direction.as_str();
        app.count_call(1);
        let cfg = if app.cfg.call.transfer_to.is_some() && !can_transfer {
            let mut cfg = (*app.cfg).clone();
            cfg.call.transfer_to = None;
            Arc::new(cfg)
        } else {
            app.cfg.clone()
        };
        let session = tokio::spawn(Session::run(
            cfg,
            app.engines.clone(),
            info,
            in_rx,
            wire_tx,
            events,
        ));
        let line = Line {
            inputs: in_tx,
            call_sid,
            session,
            direction,
            app: app.clone(),
            _permit: permit,
        };
        (line, wire_rx)
    }

    /// Ends the call (its input is closed) and waits for the session: the
    /// summary is counted, kept for `GET /calls` and returned.
    pub(crate) async fn close(self) -> Option<CallSummary> {
        let Line {
            inputs,
            call_sid,
            session,
            direction,
            app,
            _permit,
        } = self;
        app.verdicts.detach(&call_sid, &inputs);
        drop(inputs);
        let summary = match session.await {
            Ok(summary) => {
                app.metrics
                    .calls
                    .with_label_values(&[direction, summary.outcome()])
                    .inc();
                app.record(summary.clone());
                Some(summary)
            }
            Err(e) => {
                tracing::error!("call task failed: {e}");
                app.metrics
                    .calls
                    .with_label_values(&[direction, "failed"])
                    .inc();
                None
            }
        };
        drop(_permit);
        app.count_call(-1);
        if app.active_calls() == 0 {
            tokio::task::spawn_blocking(super::release_idle_memory);
        }
        summary
    }
}
