//! Graceful shutdown of the real binary: SIGTERM during two calls.

mod common;

use std::time::Duration;

use callbox::sim::{self, SimTurn};
use common::server::{
    check_recording, free_port, signed, trace, turn_of, wait_healthy, AUTH_TOKEN,
};

/// One call ends by itself during the drain, the other is ended when the
/// drain timeout passes; both leave complete traces and recordings, new
/// calls are turned away politely meanwhile, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_calls_then_exits_cleanly() {
    common::store();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("callbox-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let traces = dir.join("traces");
    let recordings = dir.join("recordings");
    let drain_secs = 25;
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("CALLBOX_SERVER__DRAIN_SECS", drain_secs.to_string())
        .env("CALLBOX_OBSERVE__TRACES_DIR", &traces)
        .env("CALLBOX_CALL__RECORDINGS_DIR", &recordings)
        .env("CALLBOX_LLM__MAX_TOKENS", "30")
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env_remove("TWILIO_ACCOUNT_SID")
        .env_remove("TWILIO_API_KEY")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/health");
    wait_healthy(&mut server, port).await;

    let url = format!("ws://127.0.0.1:{port}/ws");
    // A: one question, then it hangs up by itself (well within the drain).
    let short = signed(&url, vec![turn_of("What colour is grass?")]);
    let short_sid = short.call_sid.clone();
    // B: a long call the drain timeout cuts short.
    let long_turns: Vec<SimTurn> = [
        "Why is the sky blue?",
        "How do birds fly?",
        "What do plants eat?",
        "Why is the ocean salty?",
        "How far away is the moon?",
        "What is thunder?",
    ]
    .iter()
    .map(|t| turn_of(t))
    .collect();
    let long = signed(&url, long_turns);
    let long_sid = long.call_sid.clone();
    let a = tokio::spawn(sim::run(short));
    let b = tokio::spawn(sim::run(long));

    // Both calls are up and greeting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let active: serde_json::Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
    assert_eq!(active["active_calls"], 2, "{active}");
    let pid = server.id().expect("running");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Draining: health says so, a new call hears a polite refusal.
    let r = reqwest::get(&health).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "draining", "{body}");
    let form = sim::incoming_form("CAlatecomer");
    let twiml = sim::post_signed(AUTH_TOKEN, &format!("{base}/"), &format!("{base}/"), &form)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(twiml.contains("<Hangup"), "{twiml}");
    assert!(!twiml.contains("<Stream"), "{twiml}");

    // A finishes its conversation during the drain.
    let ra = tokio::time::timeout(Duration::from_secs(60), a)
        .await
        .expect("call A hung")
        .unwrap()
        .expect("call A completes");
    assert!(
        ra.turns.iter().all(|t| t.latency_ms.is_some()),
        "call A's question went unanswered"
    );
    // B is ended by the server; the simulated caller just sees the line close.
    let _ = tokio::time::timeout(Duration::from_secs(drain_secs + 30), b)
        .await
        .expect("call B hung");

    let status = tokio::time::timeout(Duration::from_secs(drain_secs + 40), server.wait())
        .await
        .expect("the server did not exit")
        .unwrap();
    assert!(status.success(), "exit status {status}");

    let ta = trace(&traces, &short_sid).await;
    assert_eq!(ta["call"]["ended_by"], "stop", "{}", ta["call"]);
    check_recording(&ta);
    let tb = trace(&traces, &long_sid).await;
    assert_eq!(tb["call"]["ended_by"], "server shutdown", "{}", tb["call"]);
    check_recording(&tb);
    assert!(tb["turns"].as_array().unwrap().len() >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}
