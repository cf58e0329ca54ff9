//! The HTTP side: Twilio's webhook (`POST /`), the media websocket (`/ws`),
//! health, Prometheus metrics, and the summaries of recent calls.

pub mod media_ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap};
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

pub struct AppState {
    pub cfg: Arc<Config>,
    pub engines: Engines,
    /// One permit per call in progress.
    pub calls: Arc<Semaphore>,
    pub finished: Mutex<VecDeque<CallSummary>>,
    pub metrics: Metrics,
    pub bus: Arc<Bus>,
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
        })
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
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    axum::serve(listener, router(state)).await?;
    Ok(())
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

async fn incoming_call(State(app): State<Arc<AppState>>, headers: HeaderMap) -> impl IntoResponse {
    let url = ws_url(&app.cfg, &headers);
    let xml = if app.calls.available_permits() == 0 {
        app.metrics
            .calls
            .with_label_values(&["inbound", "rejected"])
            .inc();
        twiml::say_and_hang_up("Sorry, all our lines are busy. Please call again in a few minutes.")
    } else {
        // A per-call token travels back in `start.customParameters`; checking
        // it at `start` is how the websocket will refuse strangers.
        let token = format!("{:032x}", rand::random::<u128>());
        twiml::connect_stream(&url, &[("direction", "inbound"), ("stream_token", &token)])
    };
    ([(header::CONTENT_TYPE, "text/xml")], xml)
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
