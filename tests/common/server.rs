//! A callbox server for tests: the shared engines, a free port, Twilio's
//! auth token, and readers for its finished calls and metrics.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use callbox::config::Config;
use callbox::events::CallSummary;
use callbox::observe::Observer;
use callbox::server::{self, AppState};
use callbox::sim::{SimOptions, SimTurn};
use callbox::stack::Engines;

use super::*;

pub fn engines() -> Engines {
    static E: OnceLock<Engines> = OnceLock::new();
    E.get_or_init(|| Engines {
        vad: vad(),
        turn: turn(),
        stt: stt(),
        llm: llm(),
        tts: tts(),
        denoiser: callbox::stack::denoiser(),
        load_times: Default::default(),
        models: callbox::stack::describe(&store().manifest, "default"),
    })
    .clone()
}

/// The auth token of the test servers' Twilio account.
pub const AUTH_TOKEN: &str = "test-auth-token";

/// A simulated call that plays Twilio's signed webhook before the stream.
pub fn signed(url: impl Into<String>, turns: Vec<SimTurn>) -> SimOptions {
    SimOptions::new(url, turns).signed(AUTH_TOKEN)
}

/// A server on a free port with `tweak` applied to the default configuration.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> (Arc<AppState>, SocketAddr) {
    start_with(tweak, Vec::new()).await
}

/// The same, with extra observers.
pub async fn start_with(
    tweak: impl FnOnce(&mut Config),
    observers: Vec<(String, Box<dyn Observer>)>,
) -> (Arc<AppState>, SocketAddr) {
    start_on(engines(), tweak, observers).await
}

/// The same, on `engines` (the shared ones, some wrapped by a test).
pub async fn start_on(
    engines: Engines,
    tweak: impl FnOnce(&mut Config),
    observers: Vec<(String, Box<dyn Observer>)>,
) -> (Arc<AppState>, SocketAddr) {
    let mut cfg = Config::default();
    let tmp = std::env::temp_dir();
    cfg.call.recordings_dir = Some(tmp.join(format!("callbox-rec-{}", std::process::id())));
    cfg.observe.traces_dir = Some(tmp.join(format!("callbox-traces-{}", std::process::id())));
    cfg.llm.max_tokens = 30;
    cfg.server.validate_signatures = true;
    cfg.twilio.auth_token = Some(callbox::config::Secret(AUTH_TOKEN.into()));
    // The tests read the metrics as a scraper on a private network would;
    // tests/security.rs checks the token that guards them otherwise.
    cfg.server.metrics_public = true;
    tweak(&mut cfg);
    let state = AppState::with_observers(cfg, engines, observers);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server::serve(state.clone(), "127.0.0.1:0", Some(tx)));
    (state.clone(), rx.await.unwrap())
}

pub fn turn_of(text: &str) -> SimTurn {
    SimTurn::new(speech(text), Some(text.to_string()))
}

pub async fn summary(state: &AppState, call_sid: &str) -> CallSummary {
    for _ in 0..200 {
        let f = state
            .finished
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.info.call_sid == call_sid)
            .cloned();
        if let Some(s) = f {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {call_sid} never finished");
}

pub async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

/// The value of an unlabelled (or first matching) sample.
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .sum()
}

/// Waits until no call is in progress (each call ends after its threads
/// do), so that a test leaves no engine busy behind it.
pub async fn settle(state: &AppState) {
    for _ in 0..400 {
        if state.calls.available_permits() == state.cfg.server.max_calls {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("calls still in progress after 20 s");
}

/// A call's trace, as its observer wrote it after the call (waited for).
pub async fn trace(dir: &std::path::Path, call_sid: &str) -> serde_json::Value {
    let path = dir.join(format!("{call_sid}.json"));
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no complete JSON trace at {}", path.display());
}

/// The seconds of the call's two-channel recording, and of the call.
pub fn recording_and_call_secs(trace: &serde_json::Value) -> (f64, f64) {
    let path = trace["call"]["recording"].as_str().expect("a recording");
    let w = hound::WavReader::open(path).expect("a readable recording");
    assert_eq!(w.spec().channels, 2);
    let secs = w.duration() as f64 / w.spec().sample_rate as f64;
    (secs, trace["call"]["duration_secs"].as_f64().unwrap())
}

/// The call's recording exists, has both channels and lasts as long as the
/// call.
pub fn check_recording(trace: &serde_json::Value) {
    let (secs, call) = recording_and_call_secs(trace);
    assert!(
        (secs - call).abs() < 1.5,
        "recording {secs} s, call {call} s"
    );
}

pub type TwilioSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Twilio's side up to the stream, for tests that play the socket by hand:
/// the signed webhook for `call_sid`, then the websocket its TwiML points
/// at. Returns the socket and the `start` message with the TwiML's
/// parameters (its one-time token included), to send when the test likes.
pub async fn twilio_socket(
    addr: SocketAddr,
    call_sid: &str,
) -> (TwilioSocket, tokio_tungstenite::tungstenite::Message) {
    let params = callbox::sim::webhook(
        &format!("http://{addr}/"),
        AUTH_TOKEN,
        &callbox::sim::incoming_form(call_sid),
    )
    .await
    .unwrap()
    .params;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let start = serde_json::json!({"event": "start", "streamSid": format!("MZ{call_sid}"),
        "start": {"callSid": call_sid, "accountSid": callbox::sim::SIM_ACCOUNT, "customParameters": params}});
    (
        ws,
        tokio_tungstenite::tungstenite::Message::text(start.to_string()),
    )
}

/// A port nobody listens on now, for a server process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the server process on `port` answers `/health` (it loads
/// its models first); panics if it exits or takes over two minutes.
pub async fn wait_healthy(child: &mut tokio::process::Child, port: u16) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server never became healthy"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Twilio's `start` for a stream of `call_sid` (of the simulated account)
/// with these custom parameters (the TwiML's, its stream token included).
pub fn start_message(
    call_sid: &str,
    params: &impl serde::Serialize,
) -> tokio_tungstenite::tungstenite::Message {
    let start = serde_json::json!({"event": "start", "streamSid": "MZt",
        "start": {"callSid": call_sid, "accountSid": callbox::sim::SIM_ACCOUNT,
                  "customParameters": params}});
    tokio_tungstenite::tungstenite::Message::text(start.to_string())
}

/// A raw stream of `call_sid` with these custom parameters; true if the
/// server kept the socket open (a session started and greets) rather than
/// closing it at `start`.
pub async fn stream_accepted(
    addr: SocketAddr,
    call_sid: &str,
    params: &impl serde::Serialize,
) -> bool {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    tx.send(start_message(call_sid, params)).await.unwrap();
    let accepted = match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => true,
        Ok(_) => false,
        Err(_) => panic!("neither a greeting nor a close"),
    };
    let _ = tx.send(Message::Close(None)).await;
    accepted
}
