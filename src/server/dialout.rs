//! `POST /dialout`: the owner asks the bot to call someone.
//!
//! Anyone who can reach this route could spend the owner's money, so it
//! takes a bearer token (compared in constant time) and is disabled when
//! none is configured. Twilio then dials and, when the person answers,
//! fetches `POST /twiml`, which connects the call to the usual websocket.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::config::Config;
use crate::events::Direction;
use crate::twilio::rest::{is_e164, RestError, TwilioRest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRequest {
    pub to_number: Option<String>,
    pub from_number: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Dialed {
    pub call_sid: String,
    pub status: String,
    pub to_number: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "Twilio credentials are not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN \
         (or TWILIO_API_KEY and TWILIO_API_SECRET)"
    )]
    NoCredentials,
    #[error("Twilio did not place the call: {0}")]
    Twilio(#[from] RestError),
}

/// Places a call that Twilio connects back to the server at `base_url`
/// (its public `https://` URL): the TwiML webhook and status callbacks.
/// Shared by the route and `callbox dial`.
pub async fn dial(
    cfg: &Config,
    rest: Option<&TwilioRest>,
    req: &DialRequest,
    base_url: &str,
) -> Result<Dialed, DialError> {
    let (to, from) = numbers(cfg, req)?;
    let rest = rest.ok_or(DialError::NoCredentials)?;
    let base = base_url.trim_end_matches('/');
    let call = rest
        .create_call(
            &to,
            &from,
            &format!("{base}/twiml"),
            &format!("{base}/status"),
        )
        .await?;
    Ok(Dialed {
        call_sid: call.sid,
        status: "call_initiated".into(),
        to_number: to,
    })
}

/// The numbers to dial to and from, checked: a malformed request is refused
/// before Twilio is asked (and charged) anything.
pub fn numbers(cfg: &Config, req: &DialRequest) -> Result<(String, String), DialError> {
    let to = req
        .to_number
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DialError::BadRequest("to_number is required".into()))?;
    let from = req
        .from_number
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| cfg.twilio.from_number())
        .ok_or_else(|| {
            DialError::BadRequest(
                "from_number is required (or configure twilio.from_number / TWILIO_PHONE_NUMBER)"
                    .into(),
            )
        })?;
    for (name, n) in [("to_number", to), ("from_number", from.as_str())] {
        if !is_e164(n) {
            return Err(DialError::BadRequest(format!(
                "{name} must be an E.164 number like +14155550100, not {n:?}"
            )));
        }
    }
    Ok((to.to_string(), from))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Whether the request's bearer token is `expected`. Both sides are hashed
/// first so the comparison takes the same time whatever their lengths.
fn bearer_ok(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (
        Sha256::digest(given.trim().as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.ct_eq(&b).into()
}

pub(super) async fn dialout(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(expected) = app.cfg.server.api_token() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "dial-out is disabled: configure an API token (CALLBOX_API_TOKEN or server.api_token)",
        );
    };
    if !bearer_ok(&headers, &expected) {
        tracing::warn!("dial-out refused: missing or wrong bearer token");
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let req: DialRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON {{\"to_number\", \"from_number\"}}: {e}"),
            )
        }
    };
    if let Some(refusal) = app.turn_away(Direction::Outbound) {
        return error(StatusCode::SERVICE_UNAVAILABLE, refusal.reason());
    }
    let base = super::webhooks::public_base(&app.cfg, &headers);
    match dial(&app.cfg, app.twilio.as_ref(), &req, &base).await {
        Ok(d) => {
            app.metrics.twilio_request("create_call", "ok");
            tracing::info!(call = %d.call_sid, to = %d.to_number, "dialling");
            Json(d).into_response()
        }
        Err(e @ DialError::BadRequest(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ DialError::NoCredentials) => {
            tracing::error!("dial-out: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e @ DialError::Twilio(_)) => {
            app.metrics.twilio_request("create_call", "failed");
            tracing::error!("dial-out: {e}");
            error(StatusCode::BAD_GATEWAY, e.to_string())
        }
    }
}
