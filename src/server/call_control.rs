//! Twilio call control around a live call: the dual-channel recording that
//! starts with the stream, and when the session ends the hang-up — or the
//! transfer the bot announced.
//!
//! Both run beside the conversation and never inside it: a failing REST API
//! costs a recording or leaves Twilio to end the call itself, and is logged
//! and counted, but the caller hears no difference.

use super::AppState;
use crate::twilio::rest::{HangUp, RestError};

fn failed(app: &AppState, op: &str, call_sid: &str, e: &RestError) {
    app.metrics.twilio_request(op, "failed");
    tracing::error!(
        call = call_sid,
        op,
        "Twilio call control failed: {}",
        e.brief()
    );
}

/// Starts Twilio's recording of the call (caller and bot on separate
/// channels), if REST credentials are configured and recording is on.
/// Runs concurrently with the greeting, so the caller never waits for it.
pub(crate) async fn record(app: &AppState, call_sid: &str) {
    let Some(rest) = app.twilio.as_ref().filter(|_| app.cfg.twilio.record_calls) else {
        return;
    };
    match rest.start_recording(call_sid).await {
        Ok(r) => {
            app.metrics.twilio_request("record", "ok");
            tracing::info!(call = call_sid, recording = %r.sid, "Twilio recording started");
        }
        Err(e) => failed(app, "record", call_sid, &e),
    }
}

/// Ends the call on Twilio's side once the session is over (whoever ended
/// it), so a bot that stops talking never leaves a silent line open.
pub(crate) async fn hang_up(app: &AppState, call_sid: &str) {
    let Some(rest) = app.twilio.as_ref() else {
        return;
    };
    match rest.hang_up(call_sid).await {
        Ok(HangUp::Completed) => {
            app.metrics.twilio_request("hang_up", "ok");
            tracing::info!(call = call_sid, "call hung up");
        }
        Ok(HangUp::AlreadyEnded) => {
            app.metrics.twilio_request("hang_up", "already_ended");
            tracing::debug!(call = call_sid, "call had already ended");
        }
        Err(e) => failed(app, "hang_up", call_sid, &e),
    }
}

/// Hands the live call on to `to` (the bot's `transfer_call`, offered only
/// when REST credentials are configured): a call update whose TwiML dials
/// the number, which also ends our stream. When Twilio refuses, the call is
/// hung up instead: the caller was told they would be put through, but a
/// silent open line is worse.
pub(crate) async fn transfer(app: &AppState, call_sid: &str, to: &str) {
    let Some(rest) = app.twilio.as_ref() else {
        tracing::error!(
            call = call_sid,
            "transfer asked for, but no Twilio REST credentials are configured"
        );
        return;
    };
    match rest
        .redirect(call_sid, &crate::twilio::twiml::dial(to))
        .await
    {
        Ok(()) => {
            app.metrics.twilio_request("transfer", "ok");
            let to = crate::events::Redact::Digits.number(to);
            tracing::info!(call = call_sid, %to, "call transferred");
        }
        Err(e) => {
            failed(app, "transfer", call_sid, &e);
            hang_up(app, call_sid).await;
        }
    }
}
