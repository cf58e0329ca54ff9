//! The built-in tools: a goodbye ends the call once it has been heard, a
//! request for a person is handed on, and a caller who goes on cancels
//! either.

use super::*;
use crate::tools::ToolCall;

/// A finished turn saying `text`, from speech to the machine's decision.
fn says(c: &mut Call, text: &str) -> Vec<String> {
    c.utterance(100, 1500);
    c.transcript(text);
    c.verdict(0.9)
}

fn acts(c: &Call) -> Vec<&ToolCall> {
    c.log
        .iter()
        .filter_map(|a| match a {
            Action::Act(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn tool_outcomes(c: &Call) -> Vec<&'static str> {
    c.events()
        .into_iter()
        .filter_map(|e| match e {
            EventKind::ToolCall { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect()
}

#[test]
fn a_goodbye_is_said_heard_then_the_call_ends() {
    let mut c = Call::new(rules());
    let acts_now = says(&mut c, "Thanks, that's all, goodbye.");
    // The persona's goodbye, not an LLM reply (the draft is dropped).
    assert!(matches!(
        c.log.iter().rev().find(|a| matches!(a, Action::StartReply { .. })),
        Some(Action::StartReply { source: Source::Text(t), draft: false, .. }) if t == "Goodbye!"
    ));
    assert!(acts_now.iter().any(|a| a == "cancel"), "{acts_now:?}");
    let epoch = c.last_reply();
    c.until(1900);
    c.reply_plays(epoch, &[("Goodbye!", 0.6)]);
    assert!(acts(&c).is_empty(), "not before it is heard");
    c.until(2500);
    c.marks(epoch, 1);
    assert_eq!(acts(&c), [&ToolCall::EndCall]);
    assert_eq!(tool_outcomes(&c), ["started", "ok"]);
    assert_eq!(c.history().last().unwrap().1, "Goodbye!");
}

#[test]
fn a_caller_who_goes_on_cancels_the_goodbye() {
    let mut c = Call::new(CallConfig {
        backchannels: false,
        ..rules()
    });
    says(&mut c, "Okay, bye.");
    let epoch = c.last_reply();
    c.until(1900);
    c.reply_plays(epoch, &[("Goodbye!", 0.6)]);
    c.loud_speech(2100, 2300);
    c.marks(epoch, 1);
    assert!(acts(&c).is_empty());
    assert_eq!(tool_outcomes(&c), ["started", "cancelled"]);
}

#[test]
fn a_request_for_a_person_is_transferred_when_a_number_is_configured() {
    let mut c = Call::new(CallConfig {
        transfer_to: Some("+14155550199".into()),
        ..rules()
    });
    says(&mut c, "Can I speak to a person?");
    let epoch = c.last_reply();
    assert!(matches!(
        c.log.iter().rev().find(|a| matches!(a, Action::StartReply { .. })),
        Some(Action::StartReply { source: Source::Text(t), .. }) if t == "Putting you through."
    ));
    c.until(1900);
    c.reply_plays(epoch, &[("Putting you through.", 1.0)]);
    c.until(2900);
    c.marks(epoch, 1);
    assert_eq!(
        acts(&c),
        [&ToolCall::TransferCall {
            to: "+14155550199".into()
        }]
    );
    // Without a number, the same line is an ordinary turn.
    let mut c = Call::new(rules());
    let acts_now = says(&mut c, "Can I speak to a person?");
    assert!(acts_now.contains(&"release".to_string()), "{acts_now:?}");
    assert!(tool_outcomes(&c).is_empty());
}

#[test]
fn end_call_off_leaves_goodbyes_to_the_llm() {
    let mut c = Call::new(CallConfig {
        end_call: false,
        ..rules()
    });
    let acts_now = says(&mut c, "Goodbye!");
    assert!(acts_now.contains(&"release".to_string()), "{acts_now:?}");
    assert!(tool_outcomes(&c).is_empty());
}
