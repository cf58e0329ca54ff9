//! Turn-taking on real speech: a pause inside a turn is not its end, a
//! doubtful verdict is asked again, a finished sentence does not wait the
//! whole fallback, a backchannel does not stop the bot, and a reply that
//! overtook the caller is counted.

use super::*;
use crate::events::TurnEnd;

/// Starts of replies released (drafts) or started at once (no draft).
fn answers(c: &Call) -> usize {
    c.count(|a| {
        matches!(
            a,
            Action::ReleaseReply { .. } | Action::StartReply { draft: false, .. }
        )
    })
}

fn turn_end(c: &Call) -> Option<TurnEnd> {
    c.records().last().and_then(|r| r.turn_end)
}

#[test]
fn a_greeting_then_a_pause_waits_for_the_question() {
    let mut c = Call::new(rules());
    // "Hi Miss Harper!" (100–1000 ms), 600 ms of silence, the question.
    c.utterance(100, 1000);
    c.transcript("Hi Miss Harper!");
    let draft = c.last_reply();
    c.verdict(0.93); // Smart Turn is sure the greeting is a whole turn
    c.until(1600);
    assert_eq!(answers(&c), 0, "nothing plays in the pause");
    c.loud_speech(1600, 1800);
    assert_eq!(
        c.count(|a| matches!(a, Action::CancelReply { epoch } if *epoch == draft)),
        1,
        "the greeting's draft is dropped unheard"
    );
    c.vad(3032, VadEvent::Paused { end: 3000 * PER_MS });
    c.transcript("Hi Miss Harper! Why is the sky blue?");
    c.vad(
        3200,
        VadEvent::Stopped {
            end: 3000 * PER_MS,
            at: 3200 * PER_MS,
        },
    );
    c.verdict(0.9);
    assert_eq!(answers(&c), 1, "one answer, to the whole line");
    assert_eq!(c.records().len(), 1);
    assert_eq!(
        c.records()[0].user_text,
        "Hi Miss Harper! Why is the sky blue?"
    );
    assert_eq!(turn_end(&c), Some(TurnEnd::SmartTurn));
}

#[test]
fn a_greeting_alone_is_answered_at_the_fallback() {
    let mut c = Call::new(rules());
    c.utterance(100, 1000); // VAD stop at 1200 ms
    c.transcript("Hello there.");
    c.verdict(0.9);
    c.until(1200 + 1999);
    assert_eq!(answers(&c), 0);
    c.until(1200 + 2000);
    assert_eq!(answers(&c), 1);
    assert_eq!(turn_end(&c), Some(TurnEnd::Silence));
}

#[test]
fn a_trailing_conjunction_waits_for_the_fallback() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500); // VAD stop at 1700 ms
    c.transcript("I like cats and");
    c.verdict(0.8);
    c.until(1700 + 1999);
    assert_eq!(answers(&c), 0);
    c.until(1700 + 2000);
    assert_eq!(answers(&c), 1);
}

#[test]
fn a_finished_sentence_ends_the_turn_after_the_sentence_wait() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500); // VAD stop at 1700 ms
    c.transcript("What makes a rainbow?");
    c.verdict(0.25); // Smart Turn doubts a complete question
                     // Half way to the threshold: 1.5 × sentence_wait_secs.
    c.until(1700 + 740);
    assert_eq!(answers(&c), 0);
    c.until(1700 + 750);
    assert_eq!(answers(&c), 1);
    assert_eq!(turn_end(&c), Some(TurnEnd::Words));
    // Smart Turn sure it is not over: twice the wait.
    let mut c = Call::new(CallConfig {
        rescore_secs: 0.0,
        ..rules()
    });
    c.utterance(100, 1500);
    c.transcript("So I wanted to ask.");
    c.verdict(0.0);
    c.until(1700 + 990);
    assert_eq!(answers(&c), 0);
    c.until(1700 + 1000);
    assert_eq!(turn_end(&c), Some(TurnEnd::Words));
    // The words' rule off: the question waits for the fallback.
    let mut c = Call::new(CallConfig {
        word_cues: false,
        rescore_secs: 0.0,
        ..rules()
    });
    c.utterance(100, 1500);
    c.transcript("What makes a rainbow?");
    c.verdict(0.12);
    c.until(1700 + 1999);
    assert_eq!(answers(&c), 0);
    c.until(1700 + 2000);
    assert_eq!(turn_end(&c), Some(TurnEnd::Silence));
}

#[test]
fn smart_turn_is_asked_again_as_the_silence_grows() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500); // VAD stop at 1700 ms
    c.transcript("so I was thinking");
    c.verdict(0.2);
    let predictions = |c: &Call| -> Vec<u64> {
        c.log
            .iter()
            .filter_map(|a| match a {
                Action::PredictTurn { to, .. } => Some(to / PER_MS),
                _ => None,
            })
            .collect()
    };
    c.until(1990);
    assert_eq!(predictions(&c), [1700]);
    // 300 ms more silence: asked again on the audio up to now.
    c.until(2000);
    assert_eq!(predictions(&c), [1700, 2000]);
    // Not again while that verdict is on its way.
    c.until(2400);
    assert_eq!(predictions(&c).len(), 2);
    c.verdict(0.7);
    assert_eq!(answers(&c), 1);
    assert_eq!(turn_end(&c), Some(TurnEnd::SmartTurn));
    let r = c.records().remove(0);
    assert_eq!(r.smart_turn_scores, 2);
    assert_eq!(r.smart_turn_probability, Some(0.7));
}

#[test]
fn speech_after_the_stop_drops_the_turn_and_stops_rescoring() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500);
    c.transcript("so I was thinking");
    c.verdict(0.2);
    // Speech again from 1900 ms, which the VAD confirms at 2100: Smart
    // Turn was asked again at 2000, and not after.
    c.loud_speech(1900, 2100);
    c.until(3000);
    assert_eq!(c.count(|a| matches!(a, Action::PredictTurn { .. })), 2);
    c.verdict(0.9);
    assert_eq!(answers(&c), 0, "the verdict is for a turn that went on");
}

/// A reply of two pieces playing from 1900 ms, the second from 2900 ms.
fn bot_talking(c: &mut Call) -> u64 {
    let epoch = answered_turn(c, 100, 1500, "Tell me about the moon.");
    c.until(1900);
    c.reply_plays(
        epoch,
        &[
            ("The moon is far away.", 1.0),
            ("It has no air at all.", 1.0),
        ],
    );
    epoch
}

#[test]
fn a_backchannel_over_the_bot_pauses_it_and_it_goes_on() {
    let mut c = Call::new(rules());
    let epoch = bot_talking(&mut c);
    c.until(2500);
    // "Uh-huh" over the first piece (onset 2500, confirmed 2700).
    let acts = c.speech(2500, 2700, -20.0, -20.0 - 3.0);
    assert!(acts.contains(&"pause".to_string()), "{acts:?}");
    assert_eq!(c.clears(), 0, "paused, not cleared");
    // The pause took back the second piece, sent but unplayed: the
    // transport returns its mark at once, which is no acknowledgement.
    c.feed(Input::Paused {
        epoch,
        marks: vec![format!("{epoch}:2")],
    });
    c.marks(epoch, 2);
    c.vad(2832, VadEvent::Paused { end: 2800 * PER_MS });
    let acts = c.transcript("Uh-huh.");
    assert!(acts.contains(&"resume".to_string()), "{acts:?}");
    assert!(!acts.iter().any(|a| a.starts_with("start")), "{acts:?}");
    c.vad(
        3000,
        VadEvent::Stopped {
            end: 2800 * PER_MS,
            at: 3000 * PER_MS,
        },
    );
    c.verdict(0.9);
    assert!(c.finished_turns().is_empty(), "still playing");
    // The rest plays to its end.
    c.until(3600);
    c.feed(Input::Mark(format!("{epoch}:2")));
    let turns = c.finished_turns();
    assert_eq!(turns.len(), 1);
    assert!(!turns[0].interrupted);
    assert_eq!(
        turns[0].heard_text,
        "The moon is far away. It has no air at all."
    );
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.backchannels, 1);
    assert!(ended.interruptions.is_empty());
    assert!(!ended.history.iter().any(|m| m.content.contains("Uh-huh")));
}

#[test]
fn words_that_are_not_a_backchannel_interrupt() {
    let mut c = Call::new(rules());
    bot_talking(&mut c);
    // "Wait, stop." at 2500 ms, confirmed at 2700: the bot stops then.
    let acts = c.speech(2500, 2700, -20.0, -23.0);
    assert!(acts.contains(&"pause".to_string()), "{acts:?}");
    c.vad(3132, VadEvent::Paused { end: 3100 * PER_MS });
    let acts = c.transcript("Wait, stop.");
    assert!(acts.contains(&"clear".to_string()), "{acts:?}");
    assert!(acts.contains(&"start draft=true".to_string()), "{acts:?}");
    let turns = c.finished_turns();
    assert!(turns[0].interrupted);
    // Heard up to the pause: 0.8 s of the first 1 s piece, 4 of 5 words.
    assert_eq!(turns[0].heard_text, "The moon is far…");
    let (_, ended) = c.m.finish(c.now);
    let i = &ended.interruptions[0];
    assert_eq!(i.turn, 0);
    assert_eq!(i.onset_to_clear_ms.round(), 200.0, "onset → the pause");
    assert!(!i.cut_off, "600 ms after the bot began: a reaction");
}

#[test]
fn speech_over_the_bot_longer_than_a_backchannel_interrupts() {
    let mut c = Call::new(rules());
    bot_talking(&mut c);
    c.loud_speech(2300, 2500);
    c.until(2300 + 1500);
    assert_eq!(c.clears(), 0);
    c.until(2300 + 1510);
    assert_eq!(c.clears(), 1, "no words needed past backchannel_max_secs");
}

#[test]
fn a_reply_that_overtakes_the_caller_is_a_cut_off() {
    let mut c = Call::new(rules());
    bot_talking(&mut c); // first frame at 1900 ms
                         // The caller goes on 100 ms after the bot began.
    c.loud_speech(2000, 2200);
    c.vad(2632, VadEvent::Paused { end: 2600 * PER_MS });
    c.transcript("and what is it made of?");
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.interruptions.len(), 1);
    assert!(ended.interruptions[0].cut_off);
}

#[test]
fn a_backchannel_in_two_breaths_is_heard_out_twice() {
    let mut c = Call::new(rules());
    bot_talking(&mut c);
    // "Okay," … "yeah." in one VAD segment with a pause inside.
    c.speech(2500, 2700, -20.0, -23.0);
    c.vad(2832, VadEvent::Paused { end: 2800 * PER_MS });
    let acts = c.transcript("Okay,");
    assert!(acts.contains(&"resume".to_string()), "{acts:?}");
    let acts = {
        c.until(2950);
        c.feed(Input::SpeechResumed { at: 2950 * PER_MS })
    };
    assert!(acts.contains(&"pause".to_string()), "{acts:?}");
    c.vad(3232, VadEvent::Paused { end: 3200 * PER_MS });
    let acts = c.transcript("yeah.");
    assert!(acts.contains(&"resume".to_string()), "{acts:?}");
    c.vad(
        3400,
        VadEvent::Stopped {
            end: 3200 * PER_MS,
            at: 3400 * PER_MS,
        },
    );
    c.until(4000);
    assert_eq!(c.clears(), 0);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.backchannels, 2);
    assert!(ended.interruptions.is_empty());
}

#[test]
fn marks_a_pause_returns_early_are_ignored_even_after_the_resume() {
    let mut c = Call::new(rules());
    let epoch = bot_talking(&mut c);
    c.speech(2500, 2700, -20.0, -23.0);
    c.feed(Input::Paused {
        epoch,
        marks: vec![format!("{epoch}:2")],
    });
    c.vad(2832, VadEvent::Paused { end: 2800 * PER_MS });
    c.transcript("Yeah.");
    // The transport's early report comes after the resume (a slow link).
    c.marks(epoch, 1);
    c.feed(Input::Mark(format!("{epoch}:2")));
    assert!(c.finished_turns().is_empty(), "the second piece is unheard");
    c.until(3800);
    c.feed(Input::Mark(format!("{epoch}:2")));
    assert_eq!(c.finished_turns().len(), 1);
}
