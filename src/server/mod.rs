//! The HTTP side: Twilio's webhooks, the media websocket (`/ws`), the
//! owner's dial-out, health, Prometheus metrics, and recent calls.

pub mod browser_ws;
pub mod call_control;
pub mod demo;
pub mod dialout;
pub mod line;
pub mod media_ws;
pub mod webhooks;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{CallSummary, Direction};
use crate::observe::live::LiveFeed;
use crate::observe::log::LogObserver;
use crate::observe::metrics::Metrics;
use crate::observe::trace::TraceObserver;
use crate::observe::{Bus, Observer};
use crate::stack::Engines;
use crate::twilio::rest::TwilioRest;

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
    /// Twilio's REST API, when credentials are configured.
    pub twilio: Option<TwilioRest>,
    /// Stream tokens issued in TwiML and not yet used.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Shutting down: no new calls, the ones in progress may finish.
    draining: AtomicBool,
    /// Cancelled when the calls still in progress must end.
    end_calls: CancellationToken,
    /// Calls watched live (the browser demo).
    pub live: LiveFeed,
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
        let twilio = TwilioRest::from_config(&cfg.twilio);
        Self::build(cfg, engines, extra, twilio)
    }

    /// A server that never talks to Twilio's REST API, even with
    /// credentials in the environment: for the offline demo, whose calls
    /// Twilio never heard of.
    pub fn offline(cfg: Config, engines: Engines) -> Arc<Self> {
        Self::build(cfg, engines, Vec::new(), None)
    }

    fn build(
        cfg: Config,
        engines: Engines,
        extra: Vec<(String, Box<dyn Observer>)>,
        twilio: Option<TwilioRest>,
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
            bus.subscribe(
                "trace",
                queue,
                TraceObserver::new(dir.clone(), models, metrics.errors.clone()),
            );
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
        let live = LiveFeed::default();
        bus.subscribe("live", queue, live.observer());
        Arc::new(Self {
            twilio,
            calls: Arc::new(Semaphore::new(cfg.server.max_calls)),
            cfg: Arc::new(cfg),
            engines,
            finished: Mutex::new(VecDeque::new()),
            metrics,
            bus: Arc::new(bus),
            tokens: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            end_calls: CancellationToken::new(),
            live,
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Resolves when the server ends the calls in progress.
    pub fn calls_ended(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.end_calls.cancelled()
    }

    /// Where each engine runs (`cpu`, `cuda:N`, or `api` for a remote
    /// backend), for `/health`: a deployment can check it got its GPU.
    fn devices(&self) -> serde_json::Map<String, serde_json::Value> {
        use crate::config::{LlmBackend, SttBackend, TtsBackend};
        use crate::engines::device::Engine;
        let cfg = &self.cfg;
        let remote = |e| match e {
            Engine::Stt => cfg.stt.backend == SttBackend::Deepgram,
            Engine::Llm => cfg.llm.backend == LlmBackend::OpenAi,
            Engine::Tts => cfg.tts.backend == TtsBackend::Deepgram,
            Engine::Vad | Engine::Turn => false,
        };
        Engine::ALL
            .into_iter()
            .map(|e| {
                // Placements were validated with the configuration.
                let on = if remote(e) {
                    "api".to_string()
                } else {
                    cfg.devices
                        .resolve(e)
                        .map_or_else(|err| err.to_string(), |d| d.to_string())
                };
                (e.key().to_string(), on.into())
            })
            .collect()
    }

    fn active_calls(&self) -> usize {
        self.cfg.server.max_calls - self.calls.available_permits()
    }

    /// Resolves when no call is in progress.
    async fn idle(&self) {
        let all = self.cfg.server.max_calls as u32;
        if let Ok(p) = self.calls.acquire_many(all).await {
            drop(p);
        }
    }

    /// Stops taking calls, lets those in progress go on for
    /// `server.drain_secs`, then ends the rest and waits for them to close
    /// their recordings and traces.
    pub async fn drain(&self) {
        self.drain_calls().await;
        let bus = self.bus.clone();
        let flushed = tokio::task::spawn_blocking(move || bus.flush(Duration::from_secs(10)))
            .await
            .unwrap_or(false);
        if !flushed {
            tracing::error!("observers did not catch up before exit: traces may be missing");
        }
    }

    async fn drain_calls(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let limit = Duration::from_secs(self.cfg.server.drain_secs);
        tracing::info!(
            active_calls = self.active_calls(),
            drain_secs = limit.as_secs(),
            "shutting down: no new calls; waiting for the calls in progress"
        );
        if tokio::time::timeout(limit, self.idle()).await.is_ok() {
            tracing::info!("every call finished");
            return;
        }
        tracing::warn!(
            active_calls = self.active_calls(),
            "drain timeout: ending the calls still in progress"
        );
        self.end_calls.cancel();
        // A call ends once its engines' threads have let go (see Session::run).
        if tokio::time::timeout(Duration::from_secs(15), self.idle())
            .await
            .is_err()
        {
            tracing::error!(
                active_calls = self.active_calls(),
                "calls did not end in time after the drain; exiting anyway"
            );
        }
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

    /// Why a new call cannot be taken now, if it cannot; a call turned
    /// away is counted and logged.
    pub fn turn_away(&self, direction: Direction) -> Option<Refusal> {
        let refusal = if self.draining() {
            Refusal::Draining
        } else if self.calls.available_permits() == 0 {
            Refusal::Busy
        } else {
            return None;
        };
        self.metrics
            .calls
            .with_label_values(&[direction.as_str(), "rejected"])
            .inc();
        tracing::warn!(
            direction = direction.as_str(),
            "call turned away: {}",
            refusal.reason()
        );
        Some(refusal)
    }

    pub fn record(&self, s: CallSummary) {
        let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() == KEEP_SUMMARIES {
            f.pop_front();
        }
        f.push_back(s);
    }
}

/// Hands the memory the engines freed back to the system once no call is
/// in progress. glibc keeps freed heap pages for reuse, in each of its
/// arenas, so a server's resident size after a busy hour reflects that
/// hour's peak, not what it holds. Trimming while calls run would make
/// them fault those pages back in (Piper's short sentence took 100–150 ms
/// longer when glibc handed every buffer over 1 MiB straight back); with
/// no call in progress nobody waits. In the 10-minute soak, idle RSS at
/// its four pauses went 517 → 518 → 508 → 506 MiB with this, 667 → 736 →
/// 712 → 742 MiB without.
pub(crate) fn release_idle_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t0 = Instant::now();
        // SAFETY: malloc_trim only walks glibc's own arenas and takes no
        // pointer of ours.
        unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "no call in progress: freed memory returned to the system"
        );
    }
}

/// Why a new call is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every line is taken (`server.max_calls`).
    Busy,
    /// The server is shutting down.
    Draining,
}

impl Refusal {
    /// For logs and the dial-out API.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "all lines are busy; try again later",
            Refusal::Draining => "the server is shutting down; try another instance or later",
        }
    }

    /// What a caller hears before the line hangs up.
    pub fn spoken(self) -> &'static str {
        match self {
            Refusal::Busy => "Sorry, all our lines are busy. Please call again in a few minutes.",
            Refusal::Draining => {
                "Sorry, this line is being restarted. Please call again in a minute."
            }
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.server.max_message_bytes;
    Router::new()
        .route("/", post(webhooks::incoming_call))
        .route("/twiml", post(webhooks::outbound_answered))
        .route("/status", post(webhooks::call_status))
        .route("/dialout", post(dialout::dialout))
        .route("/health", get(health))
        .route("/ws", get(media_ws::upgrade))
        .route("/calls", get(calls))
        .route("/metrics", get(metrics))
        .merge(demo::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A websocket held to `server.max_message_bytes`: Twilio's frames are a
/// few hundred bytes and the browser's 20 ms of audio 640, so a huge
/// message is neither.
fn limited(ws: WebSocketUpgrade, app: &AppState) -> WebSocketUpgrade {
    let limit = app.cfg.server.max_message_bytes;
    ws.max_message_size(limit).max_frame_size(limit)
}

/// Binds and serves until the process ends; returns the bound address
/// through `bound` first (port 0 picks a free one).
pub async fn serve(
    state: Arc<AppState>,
    bind: &str,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    serve_until(state, bind, bound, std::future::pending()).await
}

/// Serves until `stop` resolves, then drains (see [`AppState::drain`]):
/// health and webhooks keep answering meanwhile, so Twilio hears a polite
/// refusal and a load balancer sees "draining" rather than a dead port.
pub async fn serve_until(
    state: Arc<AppState>,
    bind: &str,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !state.cfg.server.validate_signatures {
        tracing::warn!(
            "!!! server.validate_signatures is OFF: anyone who can reach this server can open calls \
             and talk to the model. Use this for local development only. !!!"
        );
    } else if state.cfg.twilio.auth_token().is_none() {
        tracing::warn!(
            "no Twilio auth token (TWILIO_AUTH_TOKEN): every webhook will be refused with 403"
        );
    }
    match (&state.twilio, state.cfg.server.api_token()) {
        (Some(_), Some(_)) => tracing::info!("Twilio REST on: dial-out, recordings, hang-ups"),
        (Some(_), None) => tracing::info!(
            "Twilio REST on (recordings, hang-ups); dial-out off without CALLBOX_API_TOKEN"
        ),
        (None, _) => tracing::info!(
            "no Twilio REST credentials (TWILIO_ACCOUNT_SID + auth token or API key): \
             no dial-out, Twilio recordings or hang-ups"
        ),
    }
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    let app = state.clone();
    // The peer's address tells the demo page whether a browser is local.
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            stop.await;
            app.drain().await;
        })
        .await?;
    Ok(())
}

/// Resolves on the first SIGTERM (what Docker, Kubernetes and Modal send)
/// or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
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
