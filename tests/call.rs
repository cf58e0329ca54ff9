//! Whole calls through the real websocket, on the real default models, with
//! the simulated Twilio caller.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use callbox::audio::Audio;
use callbox::config::Config;
use callbox::engines::Role;
use callbox::server::{self, AppState};
use callbox::session::{CallSummary, TurnKind};
use callbox::sim::{self, SimOptions, SimTurn};
use callbox::stack::Engines;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn engines() -> Engines {
    static E: OnceLock<Engines> = OnceLock::new();
    E.get_or_init(|| Engines {
        vad: vad(),
        turn: turn(),
        stt: stt(),
        llm: llm(),
        tts: tts(),
        denoiser: callbox::stack::denoiser(),
        load_times: Default::default(),
    })
    .clone()
}

/// A server on a free port with `tweak` applied to the default configuration.
async fn start(tweak: impl FnOnce(&mut Config)) -> (Arc<AppState>, SocketAddr) {
    let mut cfg = Config::default();
    cfg.call.recordings_dir =
        Some(std::env::temp_dir().join(format!("callbox-rec-{}", std::process::id())));
    cfg.llm.max_tokens = 30;
    tweak(&mut cfg);
    let state = AppState::new(cfg, engines());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server::serve(state.clone(), "127.0.0.1:0", Some(tx)));
    (state.clone(), rx.await.unwrap())
}

fn turn_of(text: &str) -> SimTurn {
    SimTurn::new(speech(text), Some(text.to_string()))
}

async fn summary(state: &AppState, call_sid: &str) -> CallSummary {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_call_with_two_turns() {
    let (state, addr) = start(|_| {}).await;
    let opts = SimOptions::new(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Why is the sky blue?"),
            turn_of("And what makes a rainbow?"),
        ],
    );
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.greeting_ms.is_some(), "no greeting");
    assert_eq!(r.turns.len(), 2);
    for t in &r.turns {
        assert!(t.latency_ms.is_some(), "turn {} got no reply", t.index);
        let heard = stt()
            .transcribe(&Audio::from_i16(&t.bot_audio, 8000))
            .unwrap();
        assert!(
            heard.text.split_whitespace().count() >= 3,
            "bot said {:?}",
            heard.text
        );
    }
    // Pacing and framing.
    assert_eq!(r.invalid_media, 0);
    assert!(r.max_lead_ms <= 500.0, "lead {} ms", r.max_lead_ms);
    assert!(r.marks_echoed >= 3);

    let s = summary(&state, &sid).await;
    let users: Vec<&str> = s
        .history
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(users.len(), 2, "{:#?}", s.history);
    assert!(
        users[0].to_lowercase().contains("sky") && users[1].to_lowercase().contains("rainbow"),
        "{users:?}"
    );
    assert!(
        s.history
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count()
            >= 2
    );
    let turns: Vec<_> = s
        .turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn)
        .collect();
    assert_eq!(turns.len(), 2);
    for t in &turns {
        assert!(
            t.total_ms.is_some()
                && t.stt_ms.is_some()
                && t.llm_ttfb_ms.is_some()
                && t.tts_ttfb_ms.is_some(),
            "{t:#?}"
        );
        // The second turn reuses the first one's KV cache.
        assert!(t.prefilled_tokens < t.prompt_tokens, "{t:#?}");
    }
    assert!(s.turns.iter().any(|t| t.kind == TurnKind::Greeting));

    // The recording: two channels, the call's length, both sides audible.
    let rec = s.recording.expect("a recording");
    let w = hound::WavReader::open(&rec).unwrap();
    assert_eq!(w.spec().channels, 2);
    let secs = w.duration() as f64 / 8000.0;
    assert!(
        (secs - s.duration_secs).abs() < 1.5,
        "recording {secs} s, call {} s",
        s.duration_secs
    );
    let samples: Vec<i16> = w.into_samples::<i16>().map(|x| x.unwrap()).collect();
    let energy = |ch: usize| {
        samples
            .iter()
            .skip(ch)
            .step_by(2)
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
    };
    assert!(energy(0) > 0.0 && energy(1) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_and_keeps_only_what_was_heard() {
    let (state, addr) = start(|c| c.llm.max_tokens = 60).await;
    let mut interrupting = turn_of("Wait, stop, I have another question.");
    interrupting.barge_in_after_ms = Some(1200);
    let opts = SimOptions::new(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Can you tell me a long story about the ocean?"),
            interrupting,
        ],
    );
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(!r.clears.is_empty(), "no clear was sent");
    let s = summary(&state, &sid).await;
    assert!(!s.interruptions.is_empty(), "{:#?}", s.turns);
    for i in &s.interruptions {
        assert!(
            i.onset_to_clear_ms <= 300.0,
            "clear {} ms after onset",
            i.onset_to_clear_ms
        );
    }
    let cut = s.turns.iter().find(|t| t.interrupted).unwrap();
    assert!(cut.heard_text.len() < cut.bot_text.len(), "{cut:#?}");
    // The history holds the heard part, not the whole generated reply.
    assert!(
        s.history
            .iter()
            .any(|m| m.role == Role::Assistant && m.content == cut.heard_text),
        "{:#?}",
        s.history
    );
    assert!(!s.history.iter().any(|m| m.content == cut.bot_text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_short_bursts_do_not_interrupt() {
    let (state, addr) = start(|c| c.llm.max_tokens = 40).await;
    // A speakerphone: the bot's audio comes back 10 dB down, 100 ms late.
    let mut opts = SimOptions::new(
        format!("ws://{addr}/ws"),
        vec![turn_of("Tell me about the moon.")],
    );
    opts.echo = Some((10.0, 100));
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        s.interruptions.is_empty(),
        "echo interrupted the bot: {:#?}",
        s.interruptions
    );

    // A 150 ms burst of noise while the bot talks.
    let mut burst = SimTurn::new(white_noise(0.15, -20.0, 8000, 3), None);
    burst.barge_in_after_ms = Some(800);
    let mut opts = SimOptions::new(
        format!("ws://{addr}/ws"),
        vec![turn_of("Tell me about the sun."), burst],
    );
    opts.reply_timeout_secs = 6.0;
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        s.interruptions.is_empty(),
        "a noise burst interrupted the bot: {:#?}",
        s.interruptions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_carries_on_after_five_silent_seconds_but_not_before_first_activity() {
    let (state, addr) = start(|_| {}).await;
    // Nobody speaks: no idle prompt.
    let mut opts = SimOptions::new(format!("ws://{addr}/ws"), vec![]);
    opts.linger_secs = 7.0;
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        !s.turns.iter().any(|t| t.kind == TurnKind::Idle),
        "{:#?}",
        s.turns
    );

    let mut opts = SimOptions::new(
        format!("ws://{addr}/ws"),
        vec![turn_of("What is a volcano?")],
    );
    opts.linger_secs = 9.0;
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        s.turns.iter().any(|t| t.kind == TurnKind::Idle),
        "{:#?}",
        s.turns
    );
}

/// A client that breaks every rule, then vanishes.
async fn misbehave(addr: SocketAddr) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let (mut tx, _rx) = ws.split();
    let media = r#"{"event":"media","streamSid":"MZx","media":{"payload":"//8="}}"#;
    tx.send(Message::text(media)).await.unwrap(); // media before start
    tx.send(Message::text("this is not json")).await.unwrap();
    tx.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let start =
        r#"{"event":"start","streamSid":"MZx","start":{"callSid":"CAbad","customParameters":{}}}"#;
    tx.send(Message::text(start)).await.unwrap();
    for _ in 0..20 {
        tx.send(Message::text(
            r#"{"event":"media","streamSid":"MZx","media":{"payload":"%%%not base64"}}"#,
        ))
        .await
        .unwrap();
        tx.send(Message::text(r#"{"event":"surprise","streamSid":"MZx"}"#))
            .await
            .unwrap();
        tx.send(Message::text(r#"{"event":"mark","mark":{}}"#))
            .await
            .unwrap();
        tx.send(Message::binary(vec![0u8; 400])).await.unwrap();
        tx.send(Message::text(media)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Abrupt: drop the connection without a close frame.
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_disturbs_no_other_call_and_four_calls_run_at_once() {
    let (state, addr) = start(|_| {}).await;
    let mut calls = Vec::new();
    let questions = [
        "What is rain?",
        "Why do dogs bark?",
        "What is snow?",
        "Where do fish sleep?",
    ];
    for q in questions {
        let opts = SimOptions::new(format!("ws://{addr}/ws"), vec![turn_of(q)]);
        calls.push((opts.call_sid.clone(), tokio::spawn(sim::run(opts))));
    }
    misbehave(addr).await;
    for (sid, c) in calls {
        let r = c.await.unwrap().unwrap();
        assert!(r.turns[0].latency_ms.is_some(), "call {sid} got no reply");
        let s = summary(&state, &sid).await;
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let bad = summary(&state, "CAbad").await;
    assert!(
        bad.turns.iter().all(|t| t.kind == TurnKind::Greeting),
        "{:#?}",
        bad.turns
    );
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert!(health.status().is_success());
}

/// A pause that is not the end of the turn: the draft reply started in it
/// stays unheard, and the turn is answered once, as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_reply_stays_unheard_when_the_caller_goes_on() {
    // Smart Turn never says "finished", so only the 3 s silence ends a turn
    // and the one-second pause below always holds a draft back.
    let (state, addr) = start(|c| {
        c.call.turn_threshold = 1.0;
        c.call.turn_timeout_secs = 3.0;
    })
    .await;
    let mut audio = speech("Tell me about the planets.");
    audio.append(&Audio::silence(1.0, audio.rate));
    audio.append(&speech("And the moon, please."));
    let opts = SimOptions::new(format!("ws://{addr}/ws"), vec![SimTurn::new(audio, None)]);
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some(), "no reply");
    assert_eq!(
        r.turns[0].audio_while_speaking, 0,
        "the bot spoke before the caller finished"
    );
    let s = summary(&state, &sid).await;
    assert!(s.drafts_discarded >= 1, "no draft was made: {s:#?}");
    assert!(s.interruptions.is_empty(), "{:#?}", s.interruptions);
    let users: Vec<String> = s
        .history
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.to_lowercase())
        .collect();
    assert_eq!(users.len(), 1, "{:#?}", s.history);
    assert!(
        users[0].contains("planet") && users[0].contains("moon"),
        "{users:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypad_digits_reach_the_conversation() {
    let (state, addr) = start(|_| {}).await;
    let mut t = turn_of("What does that button do?");
    t.dtmf = Some("3".into());
    let opts = SimOptions::new(format!("ws://{addr}/ws"), vec![t]);
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        s.history
            .iter()
            .any(|m| m.role == Role::User && m.content == "[caller pressed 3]"),
        "{:#?}",
        s.history
    );
}
