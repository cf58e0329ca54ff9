//! Whole calls through the real websocket, on the real default models, with
//! the simulated Twilio caller.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callbox::audio::Audio;
use callbox::engines::Role;
use callbox::events::{CallSummary, TurnKind};
use callbox::observe::{Event, Observer};
use callbox::sim::{self, SimOptions, SimTurn};
use common::server::*;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What the caller said, as the conversation holds it (lowercase).
fn user_messages(s: &CallSummary) -> Vec<String> {
    s.history
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.to_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_call_with_two_turns() {
    let (state, addr) = start(|_| {}).await;
    let opts = signed(
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
    let users = user_messages(&s);
    assert_eq!(users.len(), 2, "{:#?}", s.history);
    assert!(
        users[0].contains("sky") && users[1].contains("rainbow"),
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

/// A caller who asks for a long answer and talks over it 1.2 s in.
fn story_then_barge_in(addr: SocketAddr, interruption: &str) -> SimOptions {
    let mut interrupting = turn_of(interruption);
    interrupting.barge_in_after_ms = Some(1200);
    signed(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Can you tell me a long story about the ocean?"),
            interrupting,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_and_keeps_only_what_was_heard() {
    let (state, addr) = start(|c| c.llm.max_tokens = 60).await;
    let opts = story_then_barge_in(addr, "Wait, stop, I have another question.");
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

/// A caller who hangs up in the middle of a reply: that turn is still
/// reported, as interrupted, and the conversation keeps what was heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_mid_reply_keeps_what_was_heard() {
    let (state, addr) = start(|c| c.llm.max_tokens = 60).await;
    let mut opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("Can you tell me a long story about the ocean?")],
    );
    opts.hang_up_after_ms = Some(1500);
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(
        r.turns[0].latency_ms.is_some(),
        "no reply before hanging up"
    );
    let s = summary(&state, &sid).await;
    let last = s.turns.last().unwrap();
    assert!(
        last.kind != TurnKind::Greeting && last.interrupted,
        "{:#?}",
        s.turns
    );
    assert!(
        !last.heard_text.is_empty() && last.heard_text.len() < last.bot_text.len(),
        "{last:#?}"
    );
    let kept = s.history.last().unwrap();
    assert!(
        kept.role == Role::Assistant && kept.content == last.heard_text,
        "{:#?}",
        s.history
    );
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_short_bursts_do_not_interrupt() {
    let (state, addr) = start(|c| c.llm.max_tokens = 40).await;
    // A speakerphone: the bot's audio comes back 10 dB down, 100 ms late.
    let mut opts = signed(
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
    let mut opts = signed(
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
    let mut opts = signed(format!("ws://{addr}/ws"), vec![]);
    opts.linger_secs = 7.0;
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert!(
        !s.turns.iter().any(|t| t.kind == TurnKind::Idle),
        "{:#?}",
        s.turns
    );

    let mut opts = signed(
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
    // A stream our TwiML started, so that its bad input reaches a session.
    let (ws, start) = twilio_socket(addr, "CA00000000000000000000000000000bad").await;
    let (mut tx, _rx) = ws.split();
    let media = r#"{"event":"media","streamSid":"MZx","media":{"payload":"//8="}}"#;
    tx.send(Message::text(media)).await.unwrap(); // media before start
    tx.send(Message::text("this is not json")).await.unwrap();
    tx.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    tx.send(start).await.unwrap();
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
        let mut opts = signed(format!("ws://{addr}/ws"), vec![turn_of(q)]);
        // Four calls at once beside another test on two shared cores can
        // take longer than a caller's usual patience; this test is about
        // every call being answered, not how fast.
        opts.reply_timeout_secs = 120.0;
        calls.push((opts.call_sid.clone(), tokio::spawn(sim::run(opts))));
    }
    misbehave(addr).await;
    for (sid, c) in calls {
        let r = c.await.unwrap().unwrap();
        let s = summary(&state, &sid).await;
        assert!(
            r.turns[0].latency_ms.is_some(),
            "call {sid} got no reply; the server saw turns {:#?}, history {:#?}, {} caller frames dropped, ended by {}",
            s.turns,
            s.history,
            s.frames_dropped,
            s.ended_by
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    let bad = summary(&state, "CA00000000000000000000000000000bad").await;
    assert!(
        bad.turns.iter().all(|t| t.kind == TurnKind::Greeting),
        "{:#?}",
        bad.turns
    );
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert!(health.status().is_success());
}

/// Continuous batching over the real websocket: three calls at once share
/// one llama.cpp context (a sequence each), every caller is answered, and
/// each reply was written for that caller's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_once_share_one_batched_llm_context() {
    use callbox::engines::local::llama::{LlamaEngine, LlamaOptions};
    let llm = Arc::new(
        LlamaEngine::load(
            &paths().llm,
            LlamaOptions {
                parallel: 3,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mut engines = engines();
    engines.llm = llm.clone();
    let (state, addr) = start_on(engines, |c| c.server.max_calls = 3, Vec::new()).await;
    let questions = ["What is rain?", "Why do dogs bark?", "What is snow?"];
    let mut calls = Vec::new();
    for q in questions {
        let mut opts = signed(format!("ws://{addr}/ws"), vec![turn_of(q)]);
        opts.reply_timeout_secs = 120.0;
        calls.push((q, opts.call_sid.clone(), tokio::spawn(sim::run(opts))));
    }
    for (q, sid, c) in calls {
        let r = c.await.unwrap().unwrap();
        let s = summary(&state, &sid).await;
        assert!(
            r.turns[0].latency_ms.is_some(),
            "{sid}: no reply; {:#?}",
            s.turns
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let heard = user_messages(&s);
        assert!(
            heard.len() == 1 && callbox::text::wer::wer(q, &heard[0]) <= 0.4,
            "{sid} asked {q:?}, the LLM was given {heard:?}"
        );
        // The reply follows the caller's words in the conversation.
        let asked = s.history.iter().position(|m| m.role == Role::User);
        let reply = asked.and_then(|i| s.history.get(i + 1));
        assert!(
            reply.is_some_and(|m| m.role == Role::Assistant && !m.content.trim().is_empty()),
            "{:#?}",
            s.history
        );
    }
    let stats = llm.batch_stats().unwrap();
    assert!(stats.steps > 0 && stats.tokens > 0, "{stats:?}");
}

/// A pause that is not the end of the turn: the draft reply started in it
/// stays unheard, and the turn is answered once, as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_reply_stays_unheard_when_the_caller_goes_on() {
    // Smart Turn never says "finished" and the words are not read, so only
    // the 3 s silence ends a turn and the one-second pause below always
    // holds a draft back.
    let (state, addr) = start(|c| {
        c.call.turn_threshold = 1.0;
        c.call.turn_timeout_secs = 3.0;
        c.call.word_cues = false;
    })
    .await;
    let mut audio = speech("Tell me about the planets.");
    audio.append(&Audio::silence(1.0, audio.rate));
    audio.append(&speech("And the moon, please."));
    let opts = signed(format!("ws://{addr}/ws"), vec![SimTurn::new(audio, None)]);
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
    let users = user_messages(&s);
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
    let opts = signed(format!("ws://{addr}/ws"), vec![t]);
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

/// The numbers of the LATENCY BREAKDOWN table, by turn: the columns Total,
/// STT, Smart Turn, LLM, TTS and End-of-speech (None for "-").
fn table_rows(table: &str) -> Vec<(usize, Vec<Option<f64>>)> {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.trim_start().starts_with("Avg"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let num = |c: &str| c.trim_end_matches("ms").parse::<f64>().ok();
            let turn = cells[0].parse().unwrap();
            let v = [1, 2, 3, 4, 5, 8].iter().map(|&i| num(cells[i])).collect();
            (turn, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_traces_and_the_table_tell_the_same_story() {
    let (state, addr) = start(|c| c.llm.max_tokens = 60).await;
    let before = scrape(addr).await;
    let opts = story_then_barge_in(addr, "Wait, stop. What is a whale?");
    let sid = opts.call_sid.clone();
    let call = tokio::spawn(sim::run(opts));
    // Scraped while the call is on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = scrape(addr).await;
    assert_eq!(sample(&during, "callbox_active_calls", &[]), 1.0);
    call.await.unwrap().unwrap();
    let s = summary(&state, &sid).await;

    // The trace: written by its observer shortly after the call.
    let path = state
        .cfg
        .observe
        .traces_dir
        .as_ref()
        .unwrap()
        .join(format!("{sid}.json"));
    let mut text = None;
    for _ in 0..100 {
        if let Ok(t) = std::fs::read_to_string(&path) {
            text = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trace: serde_json::Value = serde_json::from_str(&text.expect("a trace file")).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(callbox::observe::trace::SCHEMA_JSON).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&trace)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let turns = trace["turns"].as_array().unwrap();
    let cut = turns
        .iter()
        .find(|t| t["interrupted"] == true)
        .expect("an interrupted turn in the trace");
    let (heard, said) = (
        cut["heard_text"].as_str().unwrap(),
        cut["bot_text"].as_str().unwrap(),
    );
    assert!(heard.len() < said.len(), "heard {heard:?} of {said:?}");
    assert!(trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "interruption"));
    assert!(!trace["call"]["params"]
        .as_object()
        .unwrap()
        .contains_key("stream_token"));

    // The table and the trace: the same numbers.
    let rows = table_rows(&callbox::observe::table::latency_table(&s.turns));
    assert!(!rows.is_empty());
    let keys = [
        "total_ms",
        "stt_ms",
        "smart_turn_ms",
        "llm_ttfb_ms",
        "tts_ttfb_ms",
        "end_of_speech_ms",
    ];
    for (turn, cells) in &rows {
        let t = turns
            .iter()
            .find(|t| t["index"].as_u64() == Some(*turn as u64))
            .unwrap();
        for (k, cell) in keys.iter().zip(cells) {
            match (t[k].as_f64(), cell) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1.0, "turn {turn} {k}: {a} vs {b}"),
                (None, None) => {}
                (a, b) => panic!("turn {turn} {k}: trace {a:?}, table {b:?}"),
            }
        }
    }
    // Consistency of every answered turn.
    for t in s.turns.iter().filter(|t| t.kind == TurnKind::Turn) {
        let stages = [
            t.stt_ms,
            t.smart_turn_ms,
            t.llm_ttfb_ms,
            t.tts_ttfb_ms,
            t.total_ms,
        ];
        assert!(stages.iter().flatten().all(|v| *v >= 0.0), "{t:#?}");
        if let (Some(eos), Some(stt), Some(llm), Some(tts)) =
            (t.end_of_speech_ms, t.stt_ms, t.llm_ttfb_ms, t.tts_ttfb_ms)
        {
            assert!(stt + llm + tts <= eos, "{t:#?}");
            assert!(t.total_ms.unwrap() <= eos, "{t:#?}");
        }
    }

    // Metrics moved.
    let after = scrape(addr).await;
    assert_eq!(sample(&after, "callbox_active_calls", &[]), 0.0);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(moved("callbox_calls_total", &[("outcome", "completed")]) >= 1.0);
    assert!(moved("callbox_interruptions_total", &[]) >= 1.0);
    assert!(moved("callbox_turns_total", &[]) >= 1.0);
    assert!(moved("callbox_turn_latency_seconds", &[("measure", "total")]) >= 1.0);
    assert!(moved("callbox_stage_seconds", &[("stage", "stt")]) >= 1.0);
    assert!(moved("callbox_greeting_seconds", &[]) >= 1.0);
    assert!(
        sample(
            &after,
            "callbox_llm_tokens_total",
            &[("kind", "completion")]
        ) > 0.0
    );
}

/// Sleeps on every event: a bus that waited for it would stall the call.
struct Sluggish;

impl Observer for Sluggish {
    fn on_event(&mut self, _: &Event) {
        std::thread::sleep(Duration::from_secs(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_observer_loses_events_but_never_delays_the_bot() {
    let (state, addr) = start_with(
        |c| c.observe.queue = 2,
        vec![(
            "sluggish".to_string(),
            Box::new(Sluggish) as Box<dyn Observer>,
        )],
    )
    .await;
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("Why is the grass green?")],
    );
    let r = sim::run(opts).await.unwrap();
    // Each event would cost the call 30 s if publishing waited.
    assert!(r.greeting_ms.unwrap() < 10_000.0, "{:?}", r.greeting_ms);
    let latency = r.turns[0].latency_ms.expect("a reply");
    assert!(latency < 10_000.0, "{latency} ms");
    let m = scrape(addr).await;
    assert!(
        sample(
            &m,
            "callbox_observer_events_dropped_total",
            &[("observer", "sluggish")]
        ) > 0.0
    );
    drop(state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    let (collector, spans) = common::otlp::collector().await;
    let (_state, addr) = start(|c| {
        c.observe.otlp_endpoint = Some(format!("http://{collector}/v1/traces"));
    })
    .await;
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("What is a rainbow?")],
    );
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        got = spans.lock().unwrap().clone();
        if got.iter().any(|s| s.name == "call") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = got
        .iter()
        .find(|s| {
            s.name == "call"
                && s.attributes
                    .iter()
                    .any(|a| a.key == "callbox.call_sid" && format!("{:?}", a.value).contains(&sid))
        })
        .expect("a call span");
    let turns: Vec<_> = got
        .iter()
        .filter(|s| s.name.starts_with("turn ") && s.parent_span_id == call.span_id)
        .collect();
    assert!(turns.len() >= 2, "greeting and answer: {got:#?}");
    // The answered turn has all four stages inside it.
    let answered = turns
        .iter()
        .find(|t| got.iter().filter(|s| s.parent_span_id == t.span_id).count() == 4)
        .expect("a turn with four stage spans");
    for s in got.iter().filter(|s| s.parent_span_id == answered.span_id) {
        assert!(
            ["stt", "smart_turn", "llm_ttfb", "tts_ttfb"].contains(&s.name.as_str()),
            "{s:#?}"
        );
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
        assert!(
            s.start_time_unix_nano >= answered.start_time_unix_nano,
            "{s:#?}"
        );
        assert!(
            s.end_time_unix_nano <= answered.end_time_unix_nano,
            "{s:#?}"
        );
    }
    assert!(answered.start_time_unix_nano >= call.start_time_unix_nano);
    assert!(answered.end_time_unix_nano <= call.end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_twilio_signed_webhooks_and_issued_streams_get_in() {
    let (state, addr) = start(|_| {}).await;
    let form: Vec<(String, String)> = vec![
        (
            "CallSid".into(),
            "CA00000000000000000000000000000001".into(),
        ),
        ("From".into(), "+15005550006".into()),
        ("CallStatus".into(), "completed".into()),
    ];
    let post = |url: String, sig: Option<String>, form: Vec<(String, String)>| async move {
        let mut r = reqwest::Client::new().post(&url).form(&form);
        if let Some(s) = sig {
            r = r.header("X-Twilio-Signature", s);
        }
        r.send().await.unwrap().status().as_u16()
    };
    // The incoming call, the answered outbound call, the status callback.
    for path in ["/", "/twiml", "/status"] {
        let url = format!("http://{addr}{path}");
        let good = callbox::twilio::signature::sign(AUTH_TOKEN, &url, &form);
        let status = post(url.clone(), Some(good.clone()), form.clone()).await;
        assert!((200..300).contains(&status), "{path}: {status}");
        assert_eq!(
            post(url.clone(), None, form.clone()).await,
            403,
            "{path}: missing signature"
        );
        let mut tampered = form.clone();
        tampered[1].1 = "+15005550009".into();
        assert_eq!(
            post(url.clone(), Some(good), tampered).await,
            403,
            "{path}: tampered parameter"
        );
        let wrong_url = callbox::twilio::signature::sign(AUTH_TOKEN, &format!("{url}other"), &form);
        assert_eq!(
            post(url, Some(wrong_url), form.clone()).await,
            403,
            "{path}: wrong URL"
        );
    }
    let url = format!("http://{addr}/");

    // A websocket upgrade that carries a signature must carry the right one.
    let ws_url = format!("ws://{addr}/ws");
    let mut forged = ws_url.as_str().into_client_request().unwrap();
    forged.headers_mut().insert(
        "X-Twilio-Signature",
        "bm90IGEgc2lnbmF0dXJl".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(forged).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a forged upgrade signature was not refused: {other:?}"),
    }
    let mut good = ws_url.as_str().into_client_request().unwrap();
    let sig = callbox::twilio::signature::sign(AUTH_TOKEN, &ws_url, &[]);
    good.headers_mut()
        .insert("X-Twilio-Signature", sig.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(good).await.is_ok());

    // Streams: an issued token works once; none, a forged or a reused one never.
    let calls_before = state.finished.lock().unwrap().len();
    let issued = sim::webhook(
        &url,
        AUTH_TOKEN,
        &sim::incoming_form("CA00000000000000000000000000000002"),
    )
    .await
    .unwrap();
    let params = serde_json::to_value(&issued.params).unwrap();
    let call = "CA00000000000000000000000000000002";
    assert!(!stream_accepted(addr, call, &serde_json::json!({})).await);
    assert!(!stream_accepted(addr, call, &serde_json::json!({"stream_token": "0123"})).await);
    assert!(stream_accepted(addr, call, &params).await);
    assert!(
        !stream_accepted(addr, call, &params).await,
        "a token works once"
    );
    // Only the accepted stream became a call.
    settle(&state).await;
    assert!(state.finished.lock().unwrap().len() <= calls_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_public_url_is_what_twilio_signed() {
    let (_state, addr) = start(|c| {
        c.server.public_url = Some("https://agent.example.com".into());
    })
    .await;
    let form: Vec<(String, String)> = vec![(
        "CallSid".into(),
        "CA00000000000000000000000000000009".into(),
    )];
    let send = |signed_url: &str| {
        let sig = callbox::twilio::signature::sign(AUTH_TOKEN, signed_url, &form);
        let req = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .header("X-Twilio-Signature", sig)
            .form(&form);
        async move { req.send().await.unwrap() }
    };
    let ok = send("https://agent.example.com/").await;
    assert_eq!(ok.status().as_u16(), 200);
    let twiml = ok.text().await.unwrap();
    assert!(
        twiml.contains(r#"url="wss://agent.example.com/ws""#),
        "{twiml}"
    );
    // The address the proxy forwarded to is not what Twilio signed.
    assert_eq!(
        send(&format!("http://{addr}/")).await.status().as_u16(),
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_line_limit_callers_are_turned_away_politely_and_huge_messages_refused() {
    let (state, addr) = start(|c| c.server.max_calls = 1).await;
    // One call holds the only line.
    let url = format!("http://{addr}/");
    let issued = sim::webhook(
        &url,
        AUTH_TOKEN,
        &sim::incoming_form("CA00000000000000000000000000000001"),
    )
    .await
    .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let start = serde_json::json!({"event": "start", "streamSid": "MZ1",
        "start": {"callSid": "CA00000000000000000000000000000001", "accountSid": sim::SIM_ACCOUNT,
                  "customParameters": issued.params}});
    tx.send(Message::text(start.to_string())).await.unwrap();
    assert!(
        matches!(rx.next().await, Some(Ok(Message::Text(_)))),
        "the call is up"
    );

    // The next caller, inbound or outbound, hears an apology, not a stream.
    for (path, direction) in [("/", "inbound"), ("/twiml", "outbound")] {
        let u = format!("http://{addr}{path}");
        let form = sim::incoming_form("CA00000000000000000000000000000002");
        let sig = callbox::twilio::signature::sign(AUTH_TOKEN, &u, &form);
        let twiml = reqwest::Client::new()
            .post(&u)
            .header("X-Twilio-Signature", sig)
            .form(&form)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            twiml.contains("<Say>") && twiml.contains("<Hangup/>"),
            "{twiml}"
        );
        assert!(callbox::twilio::twiml::parse_stream(&twiml).is_none());
        let m = scrape(addr).await;
        assert_eq!(
            sample(
                &m,
                "callbox_calls_total",
                &[("direction", direction), ("outcome", "rejected")]
            ),
            1.0
        );
    }

    // A message far beyond Twilio's size ends that socket, nothing else.
    let huge = format!(
        r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{}"}}}}"#,
        "A".repeat(200_000)
    );
    let _ = tx.send(Message::text(huge)).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket stayed open");
    let health: serde_json::Value = reqwest::get(format!("http://{addr}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    settle(&state).await;
}

/// Recordings and traces that cannot be written (a full disk, a folder that
/// is not one): the call is answered as usual, and the failures are
/// recorded in the call's summary and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_recordings_and_traces_do_not_disturb_the_call() {
    let blocker = std::env::temp_dir().join(format!("callbox-not-a-dir-{}", std::process::id()));
    std::fs::write(&blocker, b"a file where folders should go").unwrap();
    let (rec, traces) = (blocker.join("recordings"), blocker.join("traces"));
    let (state, addr) = start(|c| {
        c.call.recordings_dir = Some(rec);
        c.observe.traces_dir = Some(traces);
    })
    .await;
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("What do cows eat?")],
    );
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.greeting_ms.is_some(), "no greeting");
    assert!(r.turns[0].latency_ms.is_some(), "the question got no reply");

    let s = summary(&state, &sid).await;
    assert!(s.recording.is_none());
    assert!(
        s.errors.iter().any(|e| e.contains("recording not written")),
        "{:?}",
        s.errors
    );
    // The trace is written by its observer after the call ends.
    let mut counted = (0.0, 0.0);
    for _ in 0..100 {
        let m = scrape(addr).await;
        counted = (
            sample(&m, "callbox_errors_total", &[("kind", "recording")]),
            sample(&m, "callbox_errors_total", &[("kind", "trace")]),
        );
        if counted.0 >= 1.0 && counted.1 >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, (1.0, 1.0), "errors counted (recording, trace)");
    settle(&state).await;
    let _ = std::fs::remove_file(&blocker);
}
