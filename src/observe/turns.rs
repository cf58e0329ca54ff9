//! The per-turn records of one call, folded from its events.
//!
//! The turn machine says what happens (a reply started, its first token,
//! its first frame, what the caller heard of it) and keeps only what its
//! rules need; the bookkeeping of every figure a reply leaves behind lives
//! here. The call's [`Publisher`](super::Publisher) feeds each event it
//! publishes through one `TurnLog`, publishes the finished record after the
//! `ReplyEnded` that completes it, and hands the records to the call's
//! summary — so the records, the summary, the trace and the latency table
//! all come from the same events that observers see.

use crate::events::{EventKind, ToolRecord, TurnRecord};
use crate::tools::ToolCall;

#[derive(Debug, Default)]
pub(crate) struct TurnLog {
    records: Vec<TurnRecord>,
}

impl TurnLog {
    /// Folds `event` into the record of its reply; returns that record once
    /// the reply has ended.
    pub(crate) fn on(&mut self, event: &EventKind) -> Option<TurnRecord> {
        match event {
            EventKind::ReplyStarted {
                turn,
                kind,
                user_text,
                started_at_ms,
                caller,
            } => {
                let mut r = TurnRecord::new(*turn, *kind, user_text.clone(), *started_at_ms);
                if let Some(c) = caller {
                    r.stt_ms = Some(c.stt_ms);
                    r.turn_end = Some(c.end);
                    r.smart_turn_scores = c.smart_turn_scores;
                    r.smart_turn_ms = c.smart_turn_ms;
                    r.smart_turn_inference_ms = c.smart_turn_inference_ms;
                    r.smart_turn_probability = c.smart_turn_probability;
                }
                self.records.push(r);
            }
            EventKind::LlmFirstToken { turn, ms } => self.get(*turn)?.llm_ttfb_ms = Some(*ms),
            EventKind::LlmUsage {
                turn,
                prompt_tokens,
                prefilled_tokens,
                completion_tokens,
            } => {
                let r = self.get(*turn)?;
                r.prompt_tokens = *prompt_tokens;
                r.prefilled_tokens = *prefilled_tokens;
                r.completion_tokens = *completion_tokens;
            }
            EventKind::TtsFirstAudio {
                turn,
                ms,
                audio_at_ms,
            } => {
                let r = self.get(*turn)?;
                r.tts_ttfb_ms = Some(*ms);
                r.first_audio_at_ms = Some(*audio_at_ms);
            }
            EventKind::TtsUsage { turn, characters } => {
                self.get(*turn)?.tts_characters = *characters
            }
            EventKind::BotStartedSpeaking {
                turn,
                total_ms,
                end_of_speech_ms,
                since_call_start_ms,
                frame_at_ms,
                ..
            } => {
                let r = self.get(*turn)?;
                // The greeting's Total is counted from the start of the call.
                r.total_ms = total_ms.or(*since_call_start_ms);
                r.end_of_speech_ms = *end_of_speech_ms;
                r.first_frame_at_ms = Some(*frame_at_ms);
            }
            // An owner's endpoint; the built-in tools (ending or handing on
            // the call) leave no tool record.
            EventKind::ToolCall {
                turn,
                call: ToolCall::Http { name, arguments },
                outcome,
                ms,
                result,
            } => {
                self.get(*turn)?.tool = Some(ToolRecord {
                    name: name.clone(),
                    arguments: arguments.clone(),
                    outcome: (*outcome).into(),
                    result: result.clone(),
                    ms: *ms,
                });
            }
            EventKind::ReplyEnded {
                turn,
                bot_text,
                heard_text,
                interrupted,
                failed,
            } => {
                let r = self.get(*turn)?;
                r.bot_text = bot_text.clone();
                r.heard_text = heard_text.clone();
                r.interrupted = *interrupted;
                return (!failed).then(|| r.clone());
            }
            _ => {}
        }
        None
    }

    /// The records so far, in the order their replies started.
    pub(crate) fn take(&mut self) -> Vec<TurnRecord> {
        std::mem::take(&mut self.records)
    }

    fn get(&mut self, turn: usize) -> Option<&mut TurnRecord> {
        // Replies are numbered in order: the one asked about is nearly
        // always the last.
        self.records.iter_mut().rev().find(|r| r.index == turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CallerTurn, TurnEnd, TurnKind};

    fn started(turn: usize, kind: TurnKind, caller: Option<CallerTurn>) -> EventKind {
        EventKind::ReplyStarted {
            turn,
            kind,
            user_text: if caller.is_some() {
                "hi".into()
            } else {
                String::new()
            },
            started_at_ms: 100.0 * turn as f64,
            caller,
        }
    }

    fn ended(turn: usize, heard: &str, interrupted: bool) -> EventKind {
        EventKind::ReplyEnded {
            turn,
            bot_text: "Hello there. How are you?".into(),
            heard_text: heard.into(),
            interrupted,
            failed: false,
        }
    }

    #[test]
    fn a_reply_s_events_make_its_record_and_it_is_published_when_it_ends() {
        let mut log = TurnLog::default();
        let caller = CallerTurn {
            stt_ms: 120.0,
            end: TurnEnd::SmartTurn,
            smart_turn_scores: 2,
            smart_turn_ms: Some(30.0),
            smart_turn_inference_ms: Some(12.0),
            smart_turn_probability: Some(0.9),
        };
        assert!(log.on(&started(0, TurnKind::Greeting, None)).is_none());
        log.on(&EventKind::BotStartedSpeaking {
            turn: 0,
            kind: TurnKind::Greeting,
            total_ms: None,
            end_of_speech_ms: None,
            since_call_start_ms: Some(400.0),
            frame_at_ms: 400.0,
        });
        let greeting = log
            .on(&ended(0, "Hello there. How are you?", false))
            .unwrap();
        assert_eq!(
            greeting.total_ms,
            Some(400.0),
            "counted from the call's start"
        );
        assert!(greeting.stt_ms.is_none());

        log.on(&started(1, TurnKind::Turn, Some(caller.clone())));
        for e in [
            EventKind::LlmFirstToken { turn: 1, ms: 80.0 },
            EventKind::TtsFirstAudio {
                turn: 1,
                ms: 60.0,
                audio_at_ms: 950.0,
            },
            EventKind::LlmUsage {
                turn: 1,
                prompt_tokens: 50,
                prefilled_tokens: 40,
                completion_tokens: 9,
            },
            EventKind::TtsUsage {
                turn: 1,
                characters: 25,
            },
            EventKind::BotStartedSpeaking {
                turn: 1,
                kind: TurnKind::Turn,
                total_ms: Some(300.0),
                end_of_speech_ms: Some(500.0),
                since_call_start_ms: None,
                frame_at_ms: 1000.0,
            },
            EventKind::ToolCall {
                turn: 1,
                call: ToolCall::EndCall,
                outcome: "started",
                ms: 0.0,
                result: None,
            },
        ] {
            assert!(log.on(&e).is_none());
        }
        let r = log.on(&ended(1, "Hello there…", true)).unwrap();
        assert_eq!((r.index, r.kind), (1, TurnKind::Turn));
        assert_eq!(r.user_text, "hi");
        assert_eq!(r.reply_started_at_ms, 100.0);
        assert_eq!(r.stt_ms, Some(120.0));
        assert_eq!(r.turn_end, Some(TurnEnd::SmartTurn));
        assert_eq!(r.smart_turn_scores, 2);
        assert_eq!(r.smart_turn_probability, Some(0.9));
        assert_eq!(r.llm_ttfb_ms, Some(80.0));
        assert_eq!(
            (r.tts_ttfb_ms, r.first_audio_at_ms),
            (Some(60.0), Some(950.0))
        );
        assert_eq!(
            (r.prompt_tokens, r.prefilled_tokens, r.completion_tokens),
            (50, 40, 9)
        );
        assert_eq!(r.tts_characters, 25);
        assert_eq!((r.total_ms, r.end_of_speech_ms), (Some(300.0), Some(500.0)));
        assert_eq!(r.first_frame_at_ms, Some(1000.0));
        assert!(r.tool.is_none(), "a built-in tool leaves no tool record");
        assert_eq!(r.bot_text, "Hello there. How are you?");
        assert_eq!(r.heard_text, "Hello there…");
        assert!(r.interrupted);
        assert_eq!(log.take().len(), 2);
        assert!(log.take().is_empty());
    }

    #[test]
    fn an_owner_s_tool_is_recorded_with_its_answer() {
        let mut log = TurnLog::default();
        log.on(&started(3, TurnKind::Turn, None));
        log.on(&EventKind::ToolCall {
            turn: 3,
            call: ToolCall::Http {
                name: "order_status".into(),
                arguments: serde_json::json!({"order_number": "4512"}),
            },
            outcome: "ok",
            ms: 42.0,
            result: Some("shipped".into()),
        });
        // Events about a reply it never saw start are not an error.
        assert!(log
            .on(&EventKind::LlmFirstToken { turn: 9, ms: 1.0 })
            .is_none());
        assert!(log.on(&ended(9, "", false)).is_none());
        let r = log.on(&ended(3, "It shipped.", false)).unwrap();
        let tool = r.tool.unwrap();
        assert_eq!(tool.name, "order_status");
        assert_eq!(tool.outcome, "ok");
        assert_eq!(tool.result.as_deref(), Some("shipped"));
        assert_eq!(tool.ms, 42.0);
    }

    #[test]
    fn a_failed_reply_keeps_its_text_in_the_records_but_is_not_published_as_finished() {
        let mut log = TurnLog::default();
        log.on(&started(0, TurnKind::Turn, None));
        let failed = EventKind::ReplyEnded {
            turn: 0,
            bot_text: "The moon is".into(),
            heard_text: String::new(),
            interrupted: false,
            failed: true,
        };
        assert!(log.on(&failed).is_none());
        let records = log.take();
        assert_eq!(records[0].bot_text, "The moon is");
        assert_eq!(records[0].heard_text, "");
    }
}
