//! The caller's personal data, masked before anyone but the call sees it.
//!
//! What callers say and press, and the numbers they call from or are called
//! at, are personal data. The conversation needs them (the model must hear
//! "my number is…"), but the log, the OTLP collector, the trace files and
//! `GET /calls` are read by more people, kept longer and shipped further.
//! So the event bus and the summaries kept for `/calls` pass through
//! [`Redact`] on their way out: the session itself never sees a mask.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{CallInfo, CallSummary, Event, EventKind, TurnRecord};
use crate::engines::{ChatMessage, Role};
use crate::persona::VARIABLE_PREFIX;

/// How much of the caller's personal data observers are shown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Redact {
    /// Everything, as said.
    #[default]
    Off,
    /// Everything but digits: DTMF keys, and every digit of what was said
    /// and of the call's phone numbers, so card numbers, phone numbers,
    /// PINs and dates of birth written as digits are masked wherever they
    /// sit in a sentence.
    Digits,
    /// Nothing of what was said or pressed: only its length. Phone numbers
    /// as in `Digits`.
    Text,
}

/// What a masked digit becomes.
const MASK: char = '*';

impl Redact {
    /// Text the caller said (a transcript, a DTMF line in the history).
    pub fn said<'a>(self, s: &'a str) -> Cow<'a, str> {
        match self {
            Redact::Off => Cow::Borrowed(s),
            Redact::Digits => mask_digits(s),
            Redact::Text => Cow::Owned(format!("[redacted: {} chars]", s.chars().count())),
        }
    }

    /// A phone number or another identifier the caller is known by.
    pub(crate) fn number<'a>(self, s: &'a str) -> Cow<'a, str> {
        match self {
            Redact::Off => Cow::Borrowed(s),
            Redact::Digits | Redact::Text => mask_digits(s),
        }
    }

    /// `event` as observers may see it; `None` when it needs no change (so
    /// that an unredacted bus copies nothing).
    pub(crate) fn event(self, event: &Event) -> Option<Event> {
        if self == Redact::Off {
            return None;
        }
        let kind = match &event.kind {
            EventKind::CallStarted { info, persona } => {
                let values = self.values(info);
                EventKind::CallStarted {
                    info: self.info(info),
                    persona: persona.map(&mut |t| masked(t, &values)),
                }
            }
            EventKind::Transcript { text, stt_ms } => EventKind::Transcript {
                text: self.said(text).into_owned(),
                stt_ms: *stt_ms,
            },
            EventKind::Dtmf { digit } => EventKind::Dtmf {
                digit: self.said(digit).into_owned(),
            },
            EventKind::ToolCall {
                turn,
                call: crate::tools::ToolCall::Http { name, arguments },
                outcome,
                ms,
                result,
            } => EventKind::ToolCall {
                turn: *turn,
                call: crate::tools::ToolCall::Http {
                    name: name.clone(),
                    arguments: self.json(arguments),
                },
                outcome,
                ms: *ms,
                result: result.as_deref().map(|s| self.said(s).into_owned()),
            },
            EventKind::ReplyStarted {
                turn,
                kind,
                user_text,
                started_at_ms,
                caller,
            } => EventKind::ReplyStarted {
                turn: *turn,
                kind: *kind,
                user_text: self.said(user_text).into_owned(),
                started_at_ms: *started_at_ms,
                caller: caller.clone(),
            },
            // The bot repeats what it was told ("so that's 4111…").
            EventKind::ReplyEnded {
                turn,
                bot_text,
                heard_text,
                interrupted,
                failed,
            } => EventKind::ReplyEnded {
                turn: *turn,
                bot_text: self.said(bot_text).into_owned(),
                heard_text: self.said(heard_text).into_owned(),
                interrupted: *interrupted,
                failed: *failed,
            },
            EventKind::TurnFinished { record } => EventKind::TurnFinished {
                record: self.record(record),
            },
            EventKind::CallEnded { summary } => EventKind::CallEnded {
                summary: Box::new(self.summary(summary)),
            },
            // An engine's or a provider's error may quote what it was given.
            EventKind::Error { kind, message } => EventKind::Error {
                kind: kind.clone(),
                message: self.number(message).into_owned(),
            },
            _ => return None,
        };
        Some(Event {
            call_sid: event.call_sid.clone(),
            at_ms: event.at_ms,
            kind,
        })
    }

    /// A finished call as observers and `/calls` may see it.
    pub(crate) fn summary(self, s: &CallSummary) -> CallSummary {
        let mut s = s.clone();
        if self == Redact::Off {
            return s;
        }
        let values = self.values(&s.info);
        s.info = self.info(&s.info);
        for (i, m) in s.history.iter_mut().enumerate() {
            *m = match m.role {
                // The persona: the owner's words, but filled with the
                // call's variables.
                Role::System if i == 0 => ChatMessage::new(m.role, masked(&m.content, &values)),
                // Later system messages carry what a tool answered about
                // the caller.
                _ => self.message(m),
            };
        }
        for t in &mut s.turns {
            *t = self.record(t);
        }
        for e in &mut s.errors {
            *e = self.number(e).into_owned();
        }
        s
    }

    fn info(self, info: &CallInfo) -> CallInfo {
        let mut info = info.clone();
        // The numbers of an outbound call, and any parameter a TwiML or a
        // dial-out request passed in: any of them may name the caller.
        for (k, v) in info.params.iter_mut() {
            *v = if k.starts_with(VARIABLE_PREFIX) {
                self.said(v).into_owned()
            } else {
                self.number(v).into_owned()
            };
        }
        info
    }

    /// A dial-out's variables (a name, an appointment) and their masks:
    /// personal data the persona was filled with, masked like what was
    /// said wherever it appears.
    fn values(self, info: &CallInfo) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = info
            .params
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .filter_map(|(k, v)| {
                let mask = if k.starts_with(VARIABLE_PREFIX) {
                    self.said(v)
                } else if crate::persona::CALL_VARIABLES.contains(&k.as_str()) {
                    // `{{from_number}}` in a persona: masked as in the params.
                    self.number(v)
                } else {
                    return None;
                };
                Some((v.clone(), mask.into_owned()))
            })
            .collect();
        // The longest first: a value inside another is masked with it.
        v.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        v
    }

    fn record(self, r: &TurnRecord) -> TurnRecord {
        let mut r = r.clone();
        r.user_text = self.said(&r.user_text).into_owned();
        // The bot repeats what it was told ("so that's 4111…").
        r.bot_text = self.said(&r.bot_text).into_owned();
        r.heard_text = self.said(&r.heard_text).into_owned();
        if let Some(t) = r.tool.as_mut() {
            t.arguments = self.json(&t.arguments);
            t.result = t.result.as_deref().map(|s| self.said(s).into_owned());
        }
        r
    }

    /// A tool's arguments: what the caller told the bot.
    fn json(self, v: &serde_json::Value) -> serde_json::Value {
        serde_json::Value::String(self.said(&v.to_string()).into_owned())
    }

    fn message(self, m: &ChatMessage) -> ChatMessage {
        ChatMessage::new(m.role, self.said(&m.content))
    }
}

/// `text` with each value replaced by its mask.
fn masked(text: &str, values: &[(String, String)]) -> String {
    values
        .iter()
        .fold(text.to_string(), |t, (v, mask)| t.replace(v.as_str(), mask))
}

fn mask_digits(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b.is_ascii_digit()) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if c.is_ascii_digit() { MASK } else { c })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Direction, EndedBy, TurnKind};
    use std::collections::HashMap;

    const CARD: &str = "4111 1111 1111 1111";
    const PHONE: &str = "+14155550123";

    fn summary() -> CallSummary {
        let info = CallInfo {
            call_sid: "CA0".into(),
            stream_sid: "MZ0".into(),
            direction: Direction::Outbound,
            params: HashMap::from([("to_number".into(), PHONE.into())]),
        };
        let mut s = CallSummary::failed(info, String::new());
        s.ended_by = EndedBy::Stop;
        s.history = vec![
            ChatMessage::new(Role::System, "You are 1 teacher."),
            ChatMessage::new(Role::User, format!("my card is {CARD}")),
            ChatMessage::new(Role::Assistant, format!("so {CARD}?")),
        ];
        let mut t = TurnRecord::new(1, TurnKind::Turn, format!("call {PHONE}"), 0.0);
        t.bot_text = format!("calling {PHONE}");
        t.heard_text = t.bot_text.clone();
        s.turns = vec![t];
        s
    }

    fn leaks(s: &CallSummary) -> bool {
        let json = serde_json::to_string(s).unwrap();
        json.contains("4111") || json.contains("5550123")
    }

    #[test]
    fn off_changes_nothing() {
        assert!(leaks(&Redact::Off.summary(&summary())));
        let e = Event {
            call_sid: "CA0".into(),
            at_ms: 0.0,
            kind: EventKind::Dtmf { digit: "4".into() },
        };
        assert!(Redact::Off.event(&e).is_none());
    }

    #[test]
    fn digits_and_text_mask_numbers_everywhere_but_the_persona() {
        for mode in [Redact::Digits, Redact::Text] {
            let s = mode.summary(&summary());
            assert!(!leaks(&s), "{mode:?}: {s:?}");
            assert_eq!(s.info.params["to_number"], "+***********");
            assert_eq!(s.history[0].content, "You are 1 teacher.");
        }
        let s = Redact::Digits.summary(&summary());
        assert_eq!(s.history[1].content, "my card is **** **** **** ****");
        let s = Redact::Text.summary(&summary());
        assert_eq!(s.history[1].content, "[redacted: 30 chars]");
    }

    #[test]
    fn a_dial_outs_variables_are_masked_where_the_persona_was_filled() {
        let mut s = summary();
        s.info
            .params
            .insert(format!("{VARIABLE_PREFIX}name"), "Alice Smith".into());
        s.history[0] = ChatMessage::new(Role::System, "You are calling Alice Smith.");
        let r = Redact::Text.summary(&s);
        assert_eq!(r.info.params["var.name"], "[redacted: 11 chars]");
        assert_eq!(
            r.history[0].content,
            "You are calling [redacted: 11 chars]."
        );
        let e = Event {
            call_sid: "CA0".into(),
            at_ms: 0.0,
            kind: EventKind::CallStarted {
                info: s.info.clone(),
                persona: crate::config::Persona {
                    name: "Sam".into(),
                    system: "Call Alice Smith.".into(),
                    greeting: "Hi Alice Smith!".into(),
                    idle_prompt: String::new(),
                    goodbye: "Bye, Alice Smith.".into(),
                    transfer_message: String::new(),
                    tool_filler: String::new(),
                    tool_apology: String::new(),
                    voicemail: String::new(),
                },
            },
        };
        let json = serde_json::to_string(&Redact::Text.event(&e).unwrap()).unwrap();
        assert!(!json.contains("Alice"), "{json}");
        // Unmasked when redaction is off.
        assert_eq!(
            Redact::Off.summary(&s).history[0].content,
            "You are calling Alice Smith."
        );
    }

    #[test]
    fn transcripts_and_keys_are_masked_on_the_bus() {
        let e = |kind| Event {
            call_sid: "CA0".into(),
            at_ms: 1.0,
            kind,
        };
        let said = e(EventKind::Transcript {
            text: format!("it is {CARD}"),
            stt_ms: 5.0,
        });
        let Some(Event {
            kind: EventKind::Transcript { text, .. },
            ..
        }) = Redact::Digits.event(&said)
        else {
            panic!("a transcript stays a transcript");
        };
        assert_eq!(text, "it is **** **** **** ****");
        let key = e(EventKind::Dtmf { digit: "7".into() });
        assert!(matches!(
            Redact::Digits.event(&key).unwrap().kind,
            EventKind::Dtmf { digit } if digit == "*"
        ));
        let timing = e(EventKind::LlmFirstToken { turn: 1, ms: 3.0 });
        assert!(Redact::Text.event(&timing).is_none());
    }
}
