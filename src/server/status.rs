//! What the server says about itself: health for load balancers, and
//! for the owner the metrics and the recent calls.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{auth, AppState};

/// Open to all: a load balancer's probe carries no credential, and the
/// answer holds nothing about any call.
pub(super) async fn health(State(app): State<Arc<AppState>>) -> Response {
    let active = app.active_calls();
    if app.draining() {
        let body = Json(serde_json::json!({"status": "draining", "active_calls": active}));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    Json(serde_json::json!({
        "status": "ok",
        "active_calls": active,
        "build": if crate::engines::device::CUDA_BUILD { "cuda" } else { "cpu" },
        "devices": app.devices(),
    }))
    .into_response()
}

/// The owner's, unless `server.metrics_public`.
pub(super) async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !app.cfg.server.metrics_public {
        if let Some(refused) = auth::unless_owner(&app, &headers, "GET /metrics") {
            return refused;
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The owner's alone: what callers said (as [`AppState::record`] kept it).
pub(super) async fn calls(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = auth::unless_owner(&app, &headers, "GET /calls") {
        return refused;
    }
    let f = app.finished.lock().unwrap_or_else(|p| p.into_inner());
    Json(f.iter().cloned().collect::<Vec<_>>()).into_response()
}
