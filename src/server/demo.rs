//! `GET /demo`: a page that calls the bot from the browser and draws where
//! each turn's time went. Everything it needs is compiled into the binary
//! and served from here, so it works with no network at all; its
//! Content-Security-Policy forbids fetching from anywhere else.
//!
//! The page talks to `WS /demo/ws` ([`super::browser_ws`]); at the end of a
//! call it offers the recording and the trace, served from the folders the
//! configuration writes them to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{browser_ws, AppState};
use crate::config::{is_loopback_host, DemoAccess};

/// The page's files, embedded: name, content type, text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("demo/index.html"),
    ),
    (
        "demo.css",
        "text/css; charset=utf-8",
        include_str!("demo/demo.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("demo/app.js"),
    ),
    (
        "microphone.js",
        "text/javascript; charset=utf-8",
        include_str!("demo/microphone.js"),
    ),
];

/// Only this server: scripts, styles, media and sockets. A browser refuses
/// anything else even if a file named it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long a download waits for the trace observer, which writes the
/// trace on its own thread just after the call ends.
const TRACE_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/demo", get(page))
        .route("/demo/ws", get(browser_ws::upgrade))
        .route("/demo/{asset}", get(asset))
        .route("/demo/calls/{sid}/{file}", get(download))
}

/// The embedded files of the page, for tests that check what it links to.
pub fn assets() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|(name, _, text)| (*name, *text))
}

/// Headers that proxies add. A request carrying one came through a proxy,
/// whatever its TCP peer: behind Caddy, ngrok or cloudflared on this host
/// every visitor connects from 127.0.0.1.
const FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "via",
];

/// The host part of a `Host` header or an origin's authority
/// (`[::1]:8765` → `[::1]`, `localhost:80` → `localhost`).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|h| h.to_str().ok())
}

/// Whether an `Origin` header is this server: a page of ours, not another
/// site's script driving a visitor's browser at us. The `Host` the browser
/// sent, or the configured public URL, must be the origin's authority.
fn same_origin(app: &AppState, headers: &HeaderMap, origin: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let public = app
        .cfg
        .server
        .public_url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    header(headers, "host").is_some_and(|h| h.eq_ignore_ascii_case(authority))
        || public.is_some_and(|p| p.eq_ignore_ascii_case(authority))
}

/// Whether the request may use the demo, per `server.demo`. "local" is a
/// browser on this machine talking to us directly: a loopback peer, a
/// loopback `Host`, no proxy's headers, and no other site's `Origin`.
/// `websocket`: the request opens a call, so its `Origin` must be ours in
/// every mode (browsers always send one on a websocket).
pub(crate) fn allowed(
    app: &AppState,
    ext: &Extensions,
    headers: &HeaderMap,
    websocket: bool,
) -> bool {
    let origin = header(headers, "origin");
    if origin.is_some_and(|o| !same_origin(app, headers, o)) || (websocket && origin.is_none()) {
        return false;
    }
    match app.cfg.server.demo {
        DemoAccess::Off => false,
        DemoAccess::Anyone => true,
        DemoAccess::Local => {
            let peer = ext
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
            let host = header(headers, "host").is_some_and(|h| is_loopback_host(host_of(h)));
            let proxied = FORWARDING.iter().any(|h| headers.contains_key(*h));
            peer && host && !proxied
        }
    }
}

pub(super) fn refused(app: &AppState) -> Response {
    let why = match app.cfg.server.demo {
        DemoAccess::Off => "the browser demo is off (server.demo = \"off\")",
        DemoAccess::Local => "the browser demo answers a browser on this machine only, not through a proxy (server.demo = \"local\"); set server.demo = \"anyone\" to open it to others",
        DemoAccess::Anyone => "the browser demo takes calls from its own page only",
    };
    (StatusCode::FORBIDDEN, why).into_response()
}

async fn page(State(app): State<Arc<AppState>>, ext: Extensions, headers: HeaderMap) -> Response {
    serve_asset(&app, &ext, &headers, "index.html")
}

async fn asset(
    State(app): State<Arc<AppState>>,
    ext: Extensions,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    serve_asset(&app, &ext, &headers, &name)
}

fn serve_asset(app: &AppState, ext: &Extensions, headers: &HeaderMap, name: &str) -> Response {
    if !allowed(app, ext, headers, false) {
        return refused(app);
    }
    let Some((_, kind, text)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        *text,
    )
        .into_response()
}

/// The secret of a demo call's downloads, handed to its page alone.
#[derive(serde::Deserialize)]
struct Key {
    key: Option<String>,
}

/// A demo call's recording (`recording.wav`) or trace (`trace.json`). Only
/// calls made from the page, and only with the call's own key (which only
/// its page was given): a phone call's recording is nobody's download, and
/// another visitor's is not yours.
async fn download(
    State(app): State<Arc<AppState>>,
    ext: Extensions,
    headers: HeaderMap,
    Path((sid, file)): Path<(String, String)>,
    Query(Key { key }): Query<Key>,
) -> Response {
    if !allowed(&app, &ext, &headers, false) {
        return refused(&app);
    }
    if !key.is_some_and(|k| app.demo_key_matches(&sid, &k)) {
        return (StatusCode::NOT_FOUND, "no finished browser call by that id").into_response();
    }
    let summary = {
        let f = app.finished.lock().unwrap_or_else(|p| p.into_inner());
        f.iter()
            .find(|s| s.info.call_sid == sid && browser_ws::is_browser_call(&s.info))
            .cloned()
    };
    let Some(summary) = summary else {
        return (StatusCode::NOT_FOUND, "no finished browser call by that id").into_response();
    };
    let (path, kind): (Option<PathBuf>, _) = match file.as_str() {
        "recording.wav" => (summary.recording.clone(), "audio/wav"),
        "trace.json" => (
            app.cfg
                .observe
                .traces_dir
                .as_ref()
                .map(|d| d.join(format!("{}.json", crate::events::sanitize(&sid)))),
            "application/json",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let Some(path) = path else {
        return (
            StatusCode::NOT_FOUND,
            "not kept: call.recordings_dir or observe.traces_dir is not set",
        )
            .into_response();
    };
    let waited = Instant::now();
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let disposition = format!("attachment; filename=\"{sid}-{file}\"");
                return (
                    [
                        (header::CONTENT_TYPE, kind.to_string()),
                        (header::CONTENT_DISPOSITION, disposition),
                    ],
                    bytes,
                )
                    .into_response();
            }
            Err(_) if waited.elapsed() < TRACE_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "demo download failed: {e}");
                return (
                    StatusCode::NOT_FOUND,
                    format!("{file} is not available: {e}"),
                )
                    .into_response();
            }
        }
    }
}
