//! The HTTP side: Twilio's webhooks, the media websocket (`/ws`), the
//! owner's dial-out, health, Prometheus metrics, and recent calls.

pub(crate) mod amd;
pub(crate) mod auth;
pub(crate) mod browser_ws;
pub(crate) mod call_control;
pub mod demo;
pub(crate) mod dialout;
mod http;
pub(crate) mod limits;
pub(crate) mod line;
pub(crate) mod media_ws;
mod status;
pub(crate) mod stream_token;
pub(crate) mod webhooks;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
/// Log lines about clients' malformed messages, server-wide, per second.
const MALFORMED_LINES_PER_SEC: u32 = 10;

pub struct AppState {
    pub cfg: Arc<Config>,
    pub(crate) engines: Engines,
    /// The phone lines: one permit per call in progress or placed and not
    /// yet ended ([`dialout::Reservations`]).
    pub calls: Arc<Semaphore>,
    /// The browser demo's lines, apart from the phone's.
    demo_calls: Arc<Semaphore>,
    /// Calls in progress (phone and demo): what `/health` reports and the
    /// drain waits on.
    active: tokio::sync::watch::Sender<usize>,
    /// Lines held for calls we placed until they stream or end.
    pub(crate) reservations: Arc<dialout::Reservations>,
    /// Finished calls for `GET /calls`, already redacted as configured.
    pub finished: Mutex<VecDeque<CallSummary>>,
    pub(crate) metrics: Metrics,
    pub(crate) bus: Arc<Bus>,
    /// Twilio's REST API, when credentials are configured.
    pub twilio: Option<TwilioRest>,
    /// Signs and checks the stream tokens of our TwiML.
    token_key: stream_token::TokenKey,
    /// Calls whose stream this process has served.
    redeemed: stream_token::Redeemed,
    /// Media websockets that have not sent `start` yet.
    pub(crate) pending: Arc<limits::PendingStreams>,
    /// Log lines about misbehaving clients ([`AppState::may_log`]).
    log_budget: limits::LogBudget,
    /// Calls placed per minute, per owner token.
    pub(crate) dial_rate: limits::PerMinute,
    /// Shutting down: no new calls, the ones in progress may finish.
    draining: AtomicBool,
    /// Cancelled when the calls still in progress must end.
    end_calls: CancellationToken,
    /// Cancelled when the server stops: sockets that are not calls close.
    closing: CancellationToken,
    /// Calls watched live (the browser demo).
    pub(crate) live: LiveFeed,
    /// Answering-machine verdicts, on their way to the calls' sessions.
    pub(crate) verdicts: amd::Verdicts,
}

impl AppState {
    pub(crate) fn new(cfg: Config, engines: Engines) -> Arc<Self> {
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
    #[cfg(feature = "testkit")]
    pub(crate) fn offline(cfg: Config, engines: Engines) -> Arc<Self> {
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
        bus.redact(cfg.observe.redact);
        bus.subscribe(
            "log",
            queue,
            LogObserver {
                transcripts: cfg.observe.log_transcripts,
            },
        );
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
        let s = &cfg.server;
        let secret = s.stream_secret().or_else(|| cfg.twilio.auth_token());
        Arc::new(Self {
            twilio,
            calls: Arc::new(Semaphore::new(s.max_calls)),
            demo_calls: Arc::new(Semaphore::new(s.demo_max_calls)),
            active: tokio::sync::watch::Sender::new(0),
            reservations: Arc::default(),
            token_key: stream_token::TokenKey::new(secret.as_deref()),
            redeemed: Default::default(),
            pending: limits::PendingStreams::new(
                s.max_pending_streams,
                s.max_pending_streams_per_address,
            ),
            log_budget: limits::LogBudget::new(MALFORMED_LINES_PER_SEC, Duration::from_secs(1)),
            dial_rate: limits::PerMinute::new(s.dialout_per_minute),
            cfg: Arc::new(cfg),
            engines,
            finished: Mutex::new(VecDeque::new()),
            metrics,
            bus: Arc::new(bus),
            draining: AtomicBool::new(false),
            end_calls: CancellationToken::new(),
            closing: CancellationToken::new(),
            live,
            verdicts: Default::default(),
        })
    }

    /// Resolves when the server stops serving: what is not a call (a
    /// socket still waiting for `start`) closes then.
    pub(crate) fn closing(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Resolves when the server ends the calls in progress.
    pub(crate) fn calls_ended(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
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

    /// Calls in progress, phone and demo. Counted apart from the lines: a
    /// line may be held for a call that is still ringing, and a waiting
    /// drain must not make every line look taken.
    pub(crate) fn active_calls(&self) -> usize {
        *self.active.borrow()
    }

    /// A call began (+1) or ended (-1): the count `/health` and the drain
    /// read, and the gauge Prometheus scrapes, move together.
    fn count_call(&self, delta: isize) {
        self.active.send_modify(|n| {
            *n = n.saturating_add_signed(delta);
            self.metrics.active_calls.set(*n as i64);
        });
    }

    /// Resolves when no call is in progress.
    async fn idle(&self) {
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// A phone line for the call `call_sid`: the one held for it since we
    /// placed it, else a free one. `None` (counted and logged) when every
    /// line is taken.
    pub(crate) fn phone_line(
        &self,
        call_sid: &str,
        direction: Direction,
    ) -> Option<OwnedSemaphorePermit> {
        self.reservations
            .take(call_sid)
            .or_else(|| self.free_line(direction))
    }

    /// A free phone line; `None` (counted and logged) when every line is
    /// taken.
    pub(crate) fn free_line(&self, direction: Direction) -> Option<OwnedSemaphorePermit> {
        let line = self.calls.clone().try_acquire_owned().ok();
        if line.is_none() {
            tracing::warn!(
                direction = direction.as_str(),
                "call refused: all lines busy"
            );
            self.metrics
                .calls
                .with_label_values(&[direction.as_str(), "rejected"])
                .inc();
        }
        line
    }

    /// Whether a line about an unauthenticated client may be logged now:
    /// such lines share the server's budget ([`limits::LogBudget`]), so
    /// that anyone can cost the log only a few lines a second.
    pub(crate) fn may_log(&self) -> bool {
        match self.log_budget.take(Instant::now()) {
            Some(0) => true,
            Some(skipped) => {
                tracing::warn!(skipped, "lines about misbehaving clients were skipped");
                true
            }
            None => false,
        }
    }

    /// The key of a demo call's downloads.
    pub(crate) fn demo_key(&self, call_sid: &str) -> String {
        self.token_key.tag("demo download", call_sid)
    }

    /// Whether `key` is the demo call's download key (in constant time).
    pub(crate) fn demo_key_matches(&self, call_sid: &str, key: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.demo_key(call_sid)
            .as_bytes()
            .ct_eq(key.as_bytes())
            .into()
    }

    /// A line of the browser demo's own, if one is free.
    pub(crate) fn demo_line(&self) -> Option<OwnedSemaphorePermit> {
        self.demo_calls.clone().try_acquire_owned().ok()
    }

    /// Stops taking calls, lets those in progress go on for
    /// `server.drain_secs`, then ends the rest and waits for them to close
    /// their recordings and traces.
    pub(crate) async fn drain(&self) {
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

    /// The stream token for the websocket of the call being answered.
    pub(crate) fn issue_token(&self, claims: &stream_token::Claims<'_>) -> String {
        self.token_key.issue(claims, SystemTime::now())
    }

    /// Whether `token` lets this stream in: issued by any process of the
    /// deployment for exactly this call, not expired, and the call not yet
    /// served here. The error says why not, for the log.
    /// A call has a second stream when an answering machine took it (the
    /// voicemail's, `leg`).
    pub(crate) fn redeem_token(
        &self,
        token: &str,
        claims: &stream_token::Claims<'_>,
        leg: Option<&str>,
    ) -> Result<(), &'static str> {
        let now = SystemTime::now();
        let expires = self.token_key.check(token, claims, now)?;
        let key = match leg {
            Some(leg) => format!("{}/{leg}", claims.call_sid),
            None => claims.call_sid.to_string(),
        };
        if !self.redeemed.first(&key, expires, now) {
            return Err("this call's stream was already served");
        }
        Ok(())
    }

    /// Why a new call cannot be taken now, if it cannot; a call turned
    /// away is counted and logged. `call_sid` names a call whose line may
    /// already be held for it (one we placed).
    pub(crate) fn turn_away(
        &self,
        direction: Direction,
        call_sid: Option<&str>,
    ) -> Option<Refusal> {
        let held = call_sid.is_some_and(|sid| self.reservations.holds(sid));
        let refusal = if self.draining() {
            Refusal::Draining
        } else if self.calls.available_permits() == 0 && !held {
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

    /// Keeps a finished call for `GET /calls`, redacted as configured and
    /// without the persona: what is kept is what may be shown. (The owner
    /// knows the persona, and it is the one thing a prompt thief wants.)
    pub(crate) fn record(&self, s: CallSummary) {
        let mut s = self.cfg.observe.redact.summary(&s);
        s.history.retain(|m| m.role != crate::engines::Role::System);
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
pub(crate) enum Refusal {
    /// Every line is taken (`server.max_calls`).
    Busy,
    /// The server is shutting down.
    Draining,
}

impl Refusal {
    /// For logs and the dial-out API.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "all lines are busy; try again later",
            Refusal::Draining => "the server is shutting down; try another instance or later",
        }
    }

    /// What a caller hears before the line hangs up.
    pub(crate) fn spoken(self) -> &'static str {
        match self {
            Refusal::Busy => "Sorry, all our lines are busy. Please call again in a few minutes.",
            Refusal::Draining => {
                "Sorry, this line is being restarted. Please call again in a minute."
            }
        }
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.server.max_message_bytes;
    Router::new()
        .route("/", post(webhooks::incoming_call))
        .route("/twiml", post(webhooks::outbound_answered))
        .route("/status", post(webhooks::call_status))
        .route("/amd", post(webhooks::answered))
        .route("/dialout", post(dialout::dialout))
        .route("/health", get(status::health))
        .route("/ws", get(media_ws::upgrade))
        .route("/calls", get(status::calls))
        .route("/metrics", get(status::metrics))
        .merge(demo::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A request body, whole, within `server.max_message_bytes` and
/// `server.header_timeout_secs`: a client that trickles its body holds a
/// connection just as one that trickles its headers does.
async fn read_body(
    app: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, StatusCode> {
    let limit = app.cfg.server.max_message_bytes;
    let patience = Duration::from_secs_f32(app.cfg.server.header_timeout_secs);
    match tokio::time::timeout(patience, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
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
/// Once the calls are over it returns within a few seconds, whatever
/// idle or half-sent connections are still open.
pub(crate) async fn serve_until(
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
            "Twilio REST on (recordings, hang-ups); dial-out, /calls and /metrics closed without CALLBOX_API_TOKEN"
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
    let stopped = async move {
        stop.await;
        app.drain().await;
    };
    let timeout = Duration::from_secs_f32(state.cfg.server.header_timeout_secs);
    let closing = state.closing.clone();
    http::serve(listener, router(state), timeout, stopped).await;
    closing.cancel();
    Ok(())
}

/// Resolves on the first SIGTERM (what Docker, Kubernetes and Modal send)
/// or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
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
