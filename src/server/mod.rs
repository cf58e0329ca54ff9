//! The HTTP side: Twilio's webhook (`POST /`), the media websocket (`/ws`),
//! health, Prometheus metrics, and the summaries of recent calls.

pub mod media_ws;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::observe::log::LogObserver;
use crate::observe::metrics::Metrics;
use crate::observe::trace::TraceObserver;
use crate::observe::{Bus, Observer};
use crate::session::CallSummary;
use crate::stack::Engines;
use crate::twilio::twiml;

/// Finished calls kept for `GET /calls`.
const KEEP_SUMMARIES: usize = 100;
/// How long a stream token issued in TwiML stays valid: Twilio opens the
/// websocket within seconds of reading it.
const TOKEN_TTL: Duration = Duration::from_secs(120);

pub struct AppState {
    pub cfg: Arc<Config>,
    pub engines: Engines,
    /// One permit per call in progress.
    pub calls: Arc<Semaphore>,
    pub finished: Mutex<VecDeque<CallSummary>>,
    pub metrics: Metrics,
    pub bus: Arc<Bus>,
    /// Stream tokens issued in TwiML and not yet used.
    tokens: Mutex<HashMap<String, Instant>>,
}

impl AppState {
    pub fn new(cfg: Config, engines: Engines) -> Arc<Self> {
        Self::with_observers(cfg, engines, Vec::new())
    }

    /// With `extra` observers beside the standard ones (logs, metrics and,
    /// when configured, traces).
    pub fn with_observers(
        cfg: Config,
        engines: Engines,
        extra: Vec<(String, Box<dyn Observer>)>,
    ) -> Arc<Self> {
        let metrics = Metrics::new();
        for (engine, secs) in &engines.load_times.0 {
            metrics.model_load.with_label_values(&[engine]).set(*secs);
        }
        let queue = cfg.observe.queue.max(1);
        let mut bus = Bus::new(metrics.observer_dropped.clone());
        bus.subscribe("log", queue, LogObserver);
        bus.subscribe("metrics", queue, metrics.clone());
        if let Some(dir) = &cfg.observe.traces_dir {
            let models = Arc::new(engines.models.clone());
            bus.subscribe("trace", queue, TraceObserver::new(dir.clone(), models));
        }
        if crate::observe::otel::wanted(&cfg.observe) {
            match crate::observe::otel::OtelObserver::new(&cfg.observe) {
                Ok(o) => bus.subscribe("otlp", queue, o),
                Err(e) => tracing::error!("OpenTelemetry export disabled: {e}"),
            }
        }
        for (name, o) in extra {
            bus.subscribe(&name, queue, o);
        }
        Arc::new(Self {
            calls: Arc::new(Semaphore::new(cfg.server.max_calls)),
            cfg: Arc::new(cfg),
            engines,
            finished: Mutex::new(VecDeque::new()),
            metrics,
            bus: Arc::new(bus),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh one-time token for the websocket of the call being answered.
    pub fn issue_token(&self) -> String {
        let token = format!("{:032x}", rand::random::<u128>());
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.retain(|_, issued| now.duration_since(*issued) < TOKEN_TTL);
        t.insert(token.clone(), now);
        token
    }

    /// Uses up `token`: true once, for a token we issued that has not expired.
    pub fn redeem_token(&self, token: &str) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.remove(token)
            .is_some_and(|issued| issued.elapsed() < TOKEN_TTL)
    }

    pub fn record(&self, s: CallSummary) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() == KEEP_SUMMARIES {
            f.pop_front();
        }
        f.push_back(s);
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", post(incoming_call))
        .route("/health", get(health))
        .route("/ws", get(media_ws::upgrade))
        .route("/calls", get(calls))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds and serves until the process ends; returns the bound address
/// through `bound` first (port 0 picks a free one).
pub async fn serve(
    state: Arc<AppState>,
    bind: &str,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    if !state.cfg.server.validate_signatures {
        tracing::warn!(
            "!!! server.validate_signatures is OFF: anyone who can reach this server can open calls \
             and talk to the model. Use this for local development only. !!!"
        );
    } else if state.cfg.server.auth_token().is_none() {
        tracing::warn!(
            "no Twilio auth token (TWILIO_AUTH_TOKEN): every webhook will be refused with 403"
        );
    }
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    axum::serve(listener, router(state)).await?;
    Ok(())
}

/// The URL Twilio requested, as it signed it: the configured public URL
/// (behind tunnels and proxies the Host and scheme we see are not Twilio's),
/// else `https://` + the Host header, with the path and query we received.
fn request_url(cfg: &Config, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match &cfg.server.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("https://{host}{path}")
        }
    }
}

/// Whether a webhook really comes from Twilio (or validation is off).
fn from_twilio(
    app: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    form: &[(String, String)],
) -> bool {
    if !app.cfg.server.validate_signatures {
        return true;
    }
    let Some(token) = app.cfg.server.auth_token() else {
        tracing::warn!("webhook refused: no Twilio auth token configured to check its signature");
        return false;
    };
    let Some(sig) = headers
        .get("x-twilio-signature")
        .and_then(|h| h.to_str().ok())
    else {
        tracing::warn!(path = uri.path(), "webhook refused: no X-Twilio-Signature");
        return false;
    };
    let url = request_url(&app.cfg, headers, uri);
    // Without a configured public URL we cannot know whether a proxy
    // terminated TLS in front of us: either scheme may be what Twilio signed.
    let plain = url.replacen("https://", "http://", 1);
    let ok = crate::twilio::signature::is_valid(&token, &url, form, sig)
        || (app.cfg.server.public_url.is_none()
            && crate::twilio::signature::is_valid(&token, &plain, form, sig));
    if !ok {
        tracing::warn!(%url, "webhook refused: X-Twilio-Signature does not match");
    }
    ok
}

/// The public `wss://` URL of our websocket: the configured public URL (for
/// tunnels and proxies), else the Host the request came to.
fn ws_url(cfg: &Config, headers: &HeaderMap) -> String {
    if let Some(base) = &cfg.server.public_url {
        let base = base.trim_end_matches('/');
        let rest = base.split_once("://").map_or(base, |(_, r)| r);
        let scheme = if base.starts_with("http://") {
            "ws"
        } else {
            "wss"
        };
        return format!("{scheme}://{rest}/ws");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("wss://{host}/ws")
}

async fn incoming_call(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if !from_twilio(&app, &headers, &uri, &form) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let url = ws_url(&app.cfg, &headers);
    let xml = if app.calls.available_permits() == 0 {
        app.metrics
            .calls
            .with_label_values(&["inbound", "rejected"])
            .inc();
        twiml::say_and_hang_up("Sorry, all our lines are busy. Please call again in a few minutes.")
    } else {
        // A one-time token travels back in `start.customParameters`: the
        // websocket serves only streams that our TwiML started.
        let token = app.issue_token();
        twiml::connect_stream(&url, &[("direction", "inbound"), ("stream_token", &token)])
    };
    ([(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

async fn health(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let active = app.cfg.server.max_calls - app.calls.available_permits();
    Json(serde_json::json!({"status": "ok", "active_calls": active}))
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn calls(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let f = app.finished.lock().unwrap_or_else(|p| p.into_inner());
    Json(f.iter().cloned().collect::<Vec<_>>())
}
