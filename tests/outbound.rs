//! Outbound calls and Twilio call control, against a local fake of Twilio's
//! REST API that also plays Twilio's part of the call, on the real default
//! models and the real websocket.

mod common;

use std::time::Duration;

use callbox::audio::Audio;
use callbox::config::Secret;
use callbox::events::{Direction, TurnKind};
use common::fake_twilio::{Behaviour, FakeTwilio, ACCOUNT_SID};
use common::server::*;
use common::*;

const API_TOKEN: &str = "owner-secret-token";

/// A valid dial-out request.
fn numbers() -> serde_json::Value {
    serde_json::json!({"to_number": "+14155550123", "from_number": "+14155550100"})
}

/// A server with Twilio REST credentials pointing at `fake`, dial-out on.
async fn start_against(
    fake: &FakeTwilio,
    tweak: impl FnOnce(&mut callbox::config::Config),
) -> (
    std::sync::Arc<callbox::server::AppState>,
    std::net::SocketAddr,
) {
    fake.server(|c| {
        c.twilio.retries = 2;
        c.server.api_token = Some(Secret(API_TOKEN.into()));
        tweak(c);
    })
    .await
}

async fn dialout(
    addr: std::net::SocketAddr,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/dialout"))
        .json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Waits until the fake has seen `n` requests of `op` (or a while passed).
async fn wait_for(fake: &FakeTwilio, op: &str, n: usize) {
    for _ in 0..100 {
        if fake.requests_for(op).len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_places_a_call_that_greets_first_and_hangs_up_once() {
    // The callee says goodbye and the bot ends the call: a callee who hangs
    // up first ends it on Twilio's side, with nothing left to hang up.
    let callee = vec![turn_of("Who is this?"), turn_of("Okay, thanks, goodbye.")];
    let fake = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            callee: Some(callee),
            ..Default::default()
        },
    )
    .await;
    let (state, addr) = start_against(&fake, |_| {}).await;
    let (status, body) = dialout(addr, Some(API_TOKEN), numbers()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "call_initiated");
    assert_eq!(body["to_number"], "+14155550123");
    let call_sid = body["call_sid"].as_str().unwrap().to_string();

    // The Calls request: authenticated, the numbers, and our webhooks.
    let created = fake.requests_for("create_call");
    assert_eq!(created.len(), 1);
    let c = &created[0];
    assert!(c.authorised);
    assert_eq!(c.field("To"), Some("+14155550123"));
    assert_eq!(c.field("From"), Some("+14155550100"));
    assert_eq!(
        c.field("Url"),
        Some(format!("https://{addr}/twiml").as_str())
    );
    assert_eq!(c.field("Method"), Some("POST"));
    assert_eq!(
        c.field("StatusCallback"),
        Some(format!("https://{addr}/status").as_str())
    );
    assert_eq!(
        c.fields("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );

    // Twilio's side: the signed /twiml, the stream with its parameters.
    let played = fake.played().await;
    assert_eq!(played.len(), 1);
    let p = played.into_iter().next().unwrap().expect("the call played");
    assert_eq!(p.call_sid, call_sid);
    assert_eq!(p.stream.params["direction"], "outbound");
    assert_eq!(p.stream.params["to_number"], "+14155550123");
    assert_eq!(p.stream.params["from_number"], "+14155550100");
    assert_eq!(p.status_callback, 204, "signed status callback accepted");

    // The bot spoke first, as the outbound persona, and answered the callee.
    let greeting = stt()
        .transcribe(&Audio::from_i16(&p.report.greeting_audio, 8000))
        .unwrap()
        .text
        .to_lowercase();
    assert!(
        greeting.contains("sam") || greeting.contains("appointment"),
        "greeting heard as {greeting:?}"
    );
    assert!(p.report.turns[0].latency_ms.is_some(), "no reply");
    let s = summary(&state, &call_sid).await;
    assert_eq!(s.info.direction, Direction::Outbound);
    assert_eq!(s.info.params["to_number"], "+14155550123");
    assert!(!s.info.params.contains_key("stream_token"));
    let first = &s.turns[0];
    assert_eq!(first.kind, TurnKind::Greeting);
    assert_eq!(first.bot_text, callbox::persona::ASSISTANT_GREETING);

    // Call control: a dual-channel recording, and exactly one hang-up.
    wait_for(&fake, "hang_up", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recordings = fake.requests_for("record");
    assert_eq!(recordings.len(), 1);
    assert!(recordings[0].path.contains(&call_sid));
    assert_eq!(recordings[0].field("RecordingChannels"), Some("dual"));
    let hangups = fake.requests_for("hang_up");
    assert_eq!(hangups.len(), 1, "{hangups:#?}");
    assert!(hangups[0].path.ends_with(&format!("Calls/{call_sid}.json")));
    assert_eq!(hangups[0].field("Status"), Some("completed"));
    assert!(fake.requests().iter().all(|r| r.authorised));

    let m = scrape(addr).await;
    for op in ["create_call", "record", "hang_up"] {
        assert_eq!(
            sample(
                &m,
                "callbox_twilio_requests_total",
                &[("op", op), ("outcome", "ok")]
            ),
            1.0,
            "{op}"
        );
    }
    assert_eq!(
        sample(
            &m,
            "callbox_twilio_call_status_total",
            &[("status", "completed")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_needs_the_owner_and_says_what_is_wrong() {
    let fake = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            failing: vec!["create_call"],
            ..Default::default()
        },
    )
    .await;
    let (_state, addr) = start_against(&fake, |_| {}).await;
    let ok_body = numbers();
    assert_eq!(dialout(addr, None, ok_body.clone()).await.0, 401);
    assert_eq!(dialout(addr, Some("guess"), ok_body.clone()).await.0, 401);
    let (status, body) = dialout(addr, Some(API_TOKEN), serde_json::json!({})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("to_number"),
        "{body}"
    );
    let (status, body) = dialout(
        addr,
        Some(API_TOKEN),
        serde_json::json!({"to_number": "+14155550123"}),
    )
    .await;
    assert_eq!(status, 400, "no from_number and none configured");
    assert!(
        body["error"].as_str().unwrap().contains("from_number"),
        "{body}"
    );
    let (status, _) = dialout(
        addr,
        Some(API_TOKEN),
        serde_json::json!({"to_number": "555-0123", "from_number": "+14155550100"}),
    )
    .await;
    assert_eq!(status, 400, "not E.164");
    assert!(fake.requests().is_empty(), "nothing reached Twilio");

    // Twilio failing: retried (twice here), then 502.
    let (status, body) = dialout(addr, Some(API_TOKEN), ok_body.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("500"), "{body}");
    assert_eq!(fake.requests_for("create_call").len(), 3);

    // Twilio not answering at all: given up on after the timeout, and not
    // retried — the call may have been placed, and a retry would ring twice.
    let silent = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            stalling: vec!["create_call"],
            ..Default::default()
        },
    )
    .await;
    let (_s, to_silent) = start_against(&silent, |c| c.twilio.timeout_secs = 1.0).await;
    let (status, body) = dialout(to_silent, Some(API_TOKEN), ok_body.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(silent.requests_for("create_call").len(), 1);

    // No Twilio credentials: a clear 500. No API token: dial-out is off.
    let (_s, bare) = start(|c| c.server.api_token = Some(Secret(API_TOKEN.into()))).await;
    let (status, body) = dialout(bare, Some(API_TOKEN), ok_body.clone()).await;
    assert_eq!(status, 500);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("TWILIO_ACCOUNT_SID"),
        "{body}"
    );
    let (_s, off) = start(|_| {}).await;
    let (status, body) = dialout(off, Some(API_TOKEN), ok_body).await;
    assert_eq!(status, 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CALLBOX_API_TOKEN"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_goes_on_when_twilio_rest_fails() {
    let fake = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            failing: vec!["record"],
            stalling: vec!["hang_up"],
            callee: Some(vec![
                turn_of("What time is it?"),
                turn_of("Okay, thanks, goodbye."),
            ]),
            ..Default::default()
        },
    )
    .await;
    let (state, addr) = start_against(&fake, |c| {
        c.twilio.retries = 1;
        c.twilio.timeout_secs = 1.0;
    })
    .await;
    let (status, body) = dialout(addr, Some(API_TOKEN), numbers()).await;
    assert_eq!(status, 200, "{body}");
    let call_sid = body["call_sid"].as_str().unwrap().to_string();
    let p = fake.played().await.pop().unwrap().expect("the call played");
    assert!(p.report.greeting_ms.is_some());
    assert!(
        p.report.turns[0].latency_ms.is_some(),
        "the callee got no answer"
    );
    let s = summary(&state, &call_sid).await;
    assert!(s
        .turns
        .iter()
        .any(|t| t.kind == TurnKind::Turn && t.total_ms.is_some()));
    wait_for(&fake, "hang_up", 2).await;
    // The retried hang-up is given up on when its own timeout passes.
    let failed = |m: &prometheus_parse::Scrape| {
        sample(
            m,
            "callbox_twilio_requests_total",
            &[("op", "hang_up"), ("outcome", "failed")],
        )
    };
    let mut m = scrape(addr).await;
    for _ in 0..100 {
        if failed(&m) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = scrape(addr).await;
    }
    // One try and one retry each (a hang-up may be retried after a
    // timeout: ending a call twice is harmless), then given up on.
    assert_eq!(fake.requests_for("record").len(), 2);
    assert_eq!(fake.requests_for("hang_up").len(), 2);
    for op in ["record", "hang_up"] {
        assert_eq!(
            sample(
                &m,
                "callbox_twilio_requests_total",
                &[("op", op), ("outcome", "failed")]
            ),
            1.0,
            "{op}"
        );
    }
    assert_eq!(
        sample(&m, "callbox_errors_total", &[("kind", "twilio")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbox_dial_places_the_same_call_from_the_command_line() {
    let fake = FakeTwilio::start(AUTH_TOKEN, Behaviour::default()).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["dial", "+14155550123"])
        .env("CALLBOX_TWILIO__API_BASE", fake.api_base())
        .env("CALLBOX_SERVER__PUBLIC_URL", "https://agent.example.com")
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("TWILIO_PHONE_NUMBER", "+14155550100")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dialed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(dialed["status"], "call_initiated");
    let c = &fake.requests_for("create_call")[0];
    assert!(c.authorised);
    assert_eq!(c.field("From"), Some("+14155550100"));
    assert_eq!(c.field("Url"), Some("https://agent.example.com/twiml"));
    assert!(
        !stdout.contains(AUTH_TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(AUTH_TOKEN)
    );

    // Without a public URL Twilio could not reach the server: refused, clearly.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["dial", "+14155550123"])
        .env("CALLBOX_TWILIO__API_BASE", fake.api_base())
        .env_remove("CALLBOX_SERVER__PUBLIC_URL")
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_url"));
}

/// The persona's voicemail message, with the callee's name from the
/// dial-out's variables.
const VOICEMAIL: &str =
    "Hello {{name}}, this is Sam from the dental office. Please call us back about your appointment. Goodbye!";

async fn place_with_detection(
    answered_by: &'static str,
    callee: Vec<callbox::sim::SimTurn>,
) -> (
    std::sync::Arc<FakeTwilio>,
    std::sync::Arc<callbox::server::AppState>,
    std::net::SocketAddr,
    String,
) {
    let fake = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            callee: Some(callee),
            answered_by: Some(answered_by),
            ..Default::default()
        },
    )
    .await;
    let (state, addr) = start_against(&fake, |c| {
        c.twilio.record_calls = false;
        c.personas.outbound.voicemail = VOICEMAIL.into();
    })
    .await;
    let mut body = numbers();
    body["machine_detection"] = true.into();
    body["variables"] = serde_json::json!({"name": "Maria"});
    let (status, body) = dialout(addr, Some(API_TOKEN), body).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["call_sid"].as_str().unwrap().to_string();
    let create = &fake.requests_for("create_call")[0];
    assert_eq!(create.field("MachineDetection"), Some("DetectMessageEnd"));
    assert_eq!(create.field("AsyncAmd"), Some("true"));
    let callback = create.field("AsyncAmdStatusCallback").unwrap();
    assert!(
        callback.starts_with("https://") && callback.contains("/amd?"),
        "{callback}"
    );
    (fake, state, addr, sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_gets_the_voicemail_after_its_beep_and_the_call_is_hung_up() {
    let (fake, state, addr, sid) = place_with_detection("machine_end_beep", Vec::new()).await;
    // Twilio's verdict moves the call to a new stream: the message.
    wait_for(&fake, "update_call", 1).await;
    let update = &fake.requests_for("update_call")[0];
    let twiml = update.field("Twiml").unwrap();
    let stream = callbox::twilio::twiml::parse_stream(twiml).expect("a stream");
    assert_eq!(stream.params["answered_by"], "machine_end_beep");
    wait_for(&fake, "hang_up", 1).await;
    let played = fake.played().await;
    let legs: Vec<_> = played
        .into_iter()
        .map(|p| p.expect("a leg played"))
        .collect();
    assert_eq!(legs.len(), 2, "the greeting's stream and the message's");
    // The first stream was stopped by the redirect, not hung up.
    assert_eq!(legs[0].status_callback, 0);
    let message = stt()
        .transcribe(&Audio::from_i16(&legs[1].report.greeting_audio, 8000))
        .unwrap()
        .text
        .to_lowercase();
    assert!(
        message.contains("maria") && message.contains("call us back"),
        "the machine recorded {message:?}"
    );
    // One hang-up, once the message had played to its end: the message's
    // stream asked for it, and the greeting's, stopped by the redirect, did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = state.finished.lock().unwrap().clone();
    let ended: Vec<_> = calls
        .iter()
        .map(|s| {
            (
                &s.info.stream_sid,
                s.info.params.get("answered_by"),
                s.ended_by,
            )
        })
        .collect();
    let leg = calls
        .iter()
        .find(|s| s.info.call_sid == sid && s.info.params.contains_key("answered_by"))
        .expect("the message's stream");
    assert_eq!(leg.answered_by.as_deref(), Some("machine_end_beep"));
    assert_eq!(leg.ended_by, callbox::events::EndedBy::Bot, "{ended:?}");
    // The greeting's stream heard the verdict too, and was not hung up.
    let first = calls
        .iter()
        .find(|s| s.info.call_sid == sid && !s.info.params.contains_key("answered_by"))
        .expect("the greeting's stream");
    assert_eq!(first.ended_by, callbox::events::EndedBy::Stop, "{ended:?}");
    assert_eq!(first.answered_by.as_deref(), Some("machine_end_beep"));
    assert_eq!(
        fake.requests_for("hang_up").len(),
        1,
        "streams ended: {ended:?}; requests: {:#?}",
        fake.requests()
    );
    let said = &leg.turns[0];
    assert_eq!(
        said.heard_text,
        VOICEMAIL.replace("{{name}}", "Maria"),
        "played to its last mark"
    );
    let m = scrape(addr).await;
    let verdicts = |v| sample(&m, "callbox_answered_by_total", &[("answered_by", v)]);
    assert_eq!(verdicts("machine_end_beep"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_gets_the_greeting_and_the_conversation() {
    let callee = vec![turn_of("Who is this?")];
    let (fake, state, addr, sid) = place_with_detection("human", callee).await;
    let p = fake.played().await.pop().unwrap().expect("the call played");
    assert!(p.report.greeting_ms.is_some());
    assert!(p.report.turns[0].latency_ms.is_some(), "no reply");
    let s = summary(&state, &sid).await;
    assert_eq!(s.answered_by.as_deref(), Some("human"));
    assert_eq!(s.turns[0].bot_text, callbox::persona::ASSISTANT_GREETING);
    assert!(fake.requests_for("update_call").is_empty());
    let m = scrape(addr).await;
    assert_eq!(
        sample(&m, "callbox_answered_by_total", &[("answered_by", "human")]),
        1.0
    );
}
