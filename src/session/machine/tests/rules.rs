//! The rules a call had before the words were read: drafts, the heard
//! text, echo, barge-in, the fallback, idle prompts, digits, failures.

use super::*;

#[test]
fn a_complete_verdict_releases_the_draft_and_times_the_turn() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "What time is it?");
    c.until(1900);
    c.reply_plays(epoch, &[("It is noon.", 1.0)]);
    c.until(2900);
    c.marks(epoch, 1);
    let turns = c.finished_turns();
    assert_eq!(turns.len(), 1);
    let r = &turns[0];
    assert_eq!(r.user_text, "What time is it?");
    assert_eq!(r.heard_text, "It is noon.");
    assert!(!r.interrupted);
    // The VAD stop was at 1700 ms, the end of speech at 1500, the first
    // frame at 1900.
    assert_eq!(r.total_ms.map(f64::round), Some(200.0));
    assert_eq!(r.end_of_speech_ms.map(f64::round), Some(400.0));
    assert_eq!(r.smart_turn_probability, Some(0.9));
    assert_eq!(
        c.history()[1..],
        [
            (Role::User, "What time is it?".into()),
            (Role::Assistant, "It is noon.".into())
        ]
    );
    // The finished reply is forgotten and the next prompt prefilled.
    assert!(matches!(
        c.log[c.log.len() - 1],
        Action::Prefill(ref m) if m.len() == 3
    ));
}

#[test]
fn a_pause_then_resumed_speech_drops_the_draft_unheard() {
    let mut c = Call::new(rules());
    c.loud_speech(100, 300);
    c.vad(1032, VadEvent::Paused { end: 1000 * PER_MS });
    c.transcript("Hi Miss Harper");
    let draft = c.last_reply();
    // The caller goes on before the stop window runs out.
    c.vad(1100, VadEvent::Resumed { at: 1100 * PER_MS });
    assert_eq!(
        c.count(|a| matches!(a, Action::CancelReply { epoch } if *epoch == draft)),
        1
    );
    // Its audio, had it arrived, is nobody's.
    c.feed(Input::Reply(ReplyEvent::Piece {
        epoch: draft,
        name: format!("{draft}:1"),
        text: "Hello there!".into(),
        secs: 1.0,
    }));
    c.vad(
        2000 + 200,
        VadEvent::Stopped {
            end: 2000 * PER_MS,
            at: 2200 * PER_MS,
        },
    );
    c.verdict(0.9);
    c.transcript("Hi Miss Harper, why is the sky blue?");
    // The whole line gets a draft of its own, and only that one plays.
    let reply = c.last_reply();
    assert_ne!(reply, draft);
    let released: Vec<u64> = c
        .log
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseReply { epoch } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(released, [reply]);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.drafts_discarded, 1);
    // The dropped draft left no trace in the conversation.
    assert!(!ended
        .history
        .iter()
        .any(|m| m.content.contains("Hello there")));
    assert_eq!(
        ended.history.last().unwrap().content,
        "Hi Miss Harper, why is the sky blue?"
    );
}

#[test]
fn a_hang_up_mid_reply_keeps_only_the_heard_text() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "Tell me about the moon.");
    c.until(1900);
    c.reply_plays(
        epoch,
        &[
            ("The moon is far away.", 1.0),
            ("It has no air at all.", 1.0),
        ],
    );
    c.until(2900);
    c.marks(epoch, 1);
    // Half of the second piece's time passes, then the caller hangs up.
    c.until(3400);
    let (actions, ended) = c.m.finish(c.now);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::CancelReply { epoch: e } if *e == epoch)));
    c.log.extend(actions);
    let r = c.records().remove(0);
    assert!(r.interrupted);
    assert_eq!(r.heard_text, "The moon is far away. It has no…");
    assert_eq!(
        ended.history.last().unwrap().content,
        "The moon is far away. It has no…"
    );
}

#[test]
fn echo_below_the_margin_never_interrupts() {
    // Interrupting at once, without waiting for the words.
    let mut c = Call::new(CallConfig {
        backchannels: false,
        ..rules()
    });
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    c.until(1900);
    c.reply_plays(epoch, &[("Hello, I am here to help you today.", 3.0)]);
    // The bot's voice comes back 10 dB quieter (margin 6 dB).
    c.speech(2300, 2500, -30.0, -20.0);
    c.until(3000);
    c.vad(
        3200,
        VadEvent::Stopped {
            end: 3000 * PER_MS,
            at: 3200 * PER_MS,
        },
    );
    assert_eq!(c.clears(), 0);
    assert_eq!(c.count(|a| matches!(a, Action::Transcribe { .. })), 1);
    // The same loudness as the bot is a caller, and interrupts at once.
    c.speech(3400, 3600, -21.0, -20.0);
    assert_eq!(c.clears(), 1);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.echo_segments_ignored, 1);
    assert_eq!(ended.interruptions.len(), 1);
    assert_eq!(ended.interruptions[0].onset_to_clear_ms.round(), 200.0);
}

#[test]
fn a_short_burst_never_interrupts() {
    let mut c = Call::new(CallConfig {
        barge_in_min_secs: 0.3,
        backchannels: false,
        ..rules()
    });
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    c.until(1900);
    c.reply_plays(epoch, &[("Hello, I am here to help you today.", 3.0)]);
    // 150 ms of speech past the VAD's start window, then silence.
    c.loud_speech(2300, 2500);
    c.vad(2682, VadEvent::Paused { end: 2650 * PER_MS });
    c.vad(
        2850,
        VadEvent::Stopped {
            end: 2650 * PER_MS,
            at: 2850 * PER_MS,
        },
    );
    c.until(3500);
    assert_eq!(c.clears(), 0);
    // Speech that lasts past the minimum does interrupt, at the minimum.
    c.loud_speech(3600, 3800);
    c.until(4090);
    assert_eq!(c.clears(), 0);
    c.until(4110);
    assert_eq!(c.clears(), 1);
    // 2.2 s of the 3 s piece were played: 5 of its 8 words.
    assert_eq!(c.finished_turns()[0].heard_text, "Hello, I am here to…");
}

#[test]
fn the_silence_fallback_fires_exactly_at_the_timeout() {
    let mut c = Call::new(CallConfig {
        draft_replies: false,
        ..rules()
    });
    c.utterance(100, 1500); // VAD stop at 1700 ms
    c.transcript("So I was thinking");
    c.verdict(0.2); // incomplete
    c.until(1700 + 1999);
    assert_eq!(c.started_replies(), 0);
    c.until(1700 + 2000);
    assert_eq!(c.started_replies(), 1);
    let r = c.records().remove(0);
    assert_eq!(r.user_text, "So I was thinking");
    assert_eq!(r.smart_turn_probability, Some(0.2));
}

#[test]
fn idle_prompts_come_after_idle_secs_only_once_armed() {
    let mut c = Call::new(CallConfig {
        idle_secs: 5.0,
        greet: true,
        ..rules()
    });
    // The greeting plays; the caller never speaks: no idle prompt.
    let greeting = c.last_reply();
    c.reply_plays(greeting, &[("Hello, how can I help?", 1.0)]);
    c.until(1000);
    c.marks(greeting, 1);
    c.feed(Input::Drained {
        until: c.t0 + Duration::from_millis(1000),
    });
    c.until(20_000);
    assert_eq!(c.started_replies(), 1);
    // Once the caller has spoken, silence after the answer prompts once.
    let epoch = answered_turn(&mut c, 20_100, 21_000, "Hi, how are you?");
    c.until(21_400);
    c.reply_plays(epoch, &[("Hi!", 0.5)]);
    c.until(21_900);
    c.marks(epoch, 1);
    c.feed(Input::Drained {
        until: c.t0 + Duration::from_millis(21_900),
    });
    c.until(26_890);
    assert_eq!(c.started_replies(), 2);
    c.until(26_900);
    assert_eq!(c.started_replies(), 3);
    assert!(c
        .events()
        .iter()
        .any(|e| matches!(e, EventKind::IdlePrompt { turn: 2 })));
    assert_eq!(c.history().last().unwrap().1, "[the caller is silent]");
}

#[test]
fn a_digit_is_a_turn_of_its_own() {
    let mut c = Call::new(rules());
    c.until(500);
    let acts = c.feed(Input::Dtmf("5".into()));
    assert!(acts.contains(&"start draft=false".to_string()), "{acts:?}");
    assert_eq!(c.records()[0].kind, TurnKind::Dtmf);
    assert_eq!(c.history().last().unwrap().1, "[caller pressed 5]");
}

#[test]
fn a_flood_of_digits_stops_growing_the_conversation() {
    let mut c = Call::new(rules());
    c.until(500);
    for _ in 0..super::MAX_DTMF + 500 {
        c.feed(Input::Dtmf("9".into()));
    }
    let keys = c
        .history()
        .iter()
        .filter(|(_, text)| text == "[caller pressed 9]")
        .count();
    assert_eq!(keys, super::MAX_DTMF);
    let errors = c
        .events()
        .iter()
        .filter(|e| matches!(e, EventKind::Error { kind, .. } if kind == "dtmf"))
        .count();
    assert_eq!(errors, 1, "said once, not per key");
}

#[test]
fn a_failed_transcription_is_answered_with_an_apology() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500);
    let id = c.last_id("transcribe");
    c.feed(Input::Transcript {
        id,
        result: Err(crate::Error::Engine {
            engine: "stt",
            reason: "boom".into(),
        }),
    });
    let started = c
        .log
        .iter()
        .rev()
        .find(|a| matches!(a, Action::StartReply { .. }));
    assert!(matches!(
        started,
        Some(Action::StartReply { source: Source::Text(t), .. }) if t.contains("didn't catch")
    ));
}

#[test]
fn a_failed_apology_is_not_apologised_for() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    let fail = |c: &mut Call, epoch| {
        c.feed(Input::Reply(ReplyEvent::Failed {
            epoch,
            error: "tts".into(),
        }))
    };
    fail(&mut c, epoch);
    assert_eq!(c.started_replies(), 2);
    let apology = c.last_reply();
    fail(&mut c, apology);
    assert_eq!(c.started_replies(), 2);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.errors.len(), 2);
}

#[test]
fn a_turn_without_words_is_ignored() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500);
    c.transcript("  ");
    c.verdict(0.9);
    assert_eq!(c.started_replies(), 0);
    c.utterance(2000, 3000);
    c.transcript("Hello, can you hear me?");
    c.verdict(0.9);
    assert_eq!(c.records()[0].user_text, "Hello, can you hear me?");
}
