//! The owner's bearer token: it guards what only the owner may see or
//! spend — dial-out (`POST /dialout`), the conversations (`GET /calls`)
//! and, unless made public on purpose, `GET /metrics`.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;

/// Whether the request's bearer token is `expected`. Both sides are hashed
/// first so the comparison takes the same time whatever their lengths.
fn bearer_ok(headers: &HeaderMap, expected: &str) -> bool {
    let Some((scheme, given)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().split_once(' '))
    else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (
        Sha256::digest(given.trim().as_bytes()),
        Sha256::digest(expected.trim().as_bytes()),
    );
    a.ct_eq(&b).into()
}

/// A JSON error body, as the owner's API answers.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request carries the owner's token; else the answer to
/// send: 401 with a challenge, or 503 when no token is configured (then
/// nobody may, and the message says how to open it).
pub(crate) fn unless_owner(app: &AppState, headers: &HeaderMap, what: &str) -> Option<Response> {
    let Some(expected) = app.cfg.server.api_token() else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is disabled: configure an API token (CALLBOX_API_TOKEN or server.api_token)"),
        ));
    };
    if bearer_ok(headers, &expected) {
        return None;
    }
    if app.may_log() {
        tracing::warn!("{what} refused: missing or wrong bearer token");
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}
