//! What a call is and what happens in it: the data the session produces and
//! the observers consume. It sits below both, so that neither has to know the
//! other: the session publishes [`EventKind`]s, observers read them, and the
//! records ([`TurnRecord`], [`CallSummary`]) travel inside the events.

mod record;
mod redact;

pub use record::{CallSummary, CallerTurn, Interruption, ToolRecord, TurnEnd, TurnRecord};
pub use redact::Redact;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Persona;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// As serialised: for metric labels and span attributes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    pub call_sid: String,
    pub stream_sid: String,
    pub direction: Direction,
    pub params: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnKind {
    Greeting,
    Turn,
    Idle,
    Dtmf,
}

impl TurnKind {
    /// As serialised: for span attributes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TurnKind::Greeting => "greeting",
            TurnKind::Turn => "turn",
            TurnKind::Idle => "idle",
            TurnKind::Dtmf => "dtmf",
        }
    }
}

/// Why a call ended. Serialised as the words traces and `/calls` have always
/// used ([`EndedBy::as_str`]), so readers of old traces and of new ones see
/// the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum EndedBy {
    /// Twilio's `stop`: the caller or Twilio hung up cleanly.
    Stop,
    /// The websocket went away without a `stop`.
    TransportClosed,
    /// `call.max_call_secs` passed.
    MaxDuration,
    /// The server shut down and the drain time ran out.
    ServerShutdown,
    /// The far end stopped reading what we sent (a stalled socket).
    StoppedReading,
    /// The caller's audio could not be processed (the VAD failed).
    InputFailed,
    /// The call could not start (no LLM session).
    Error,
    /// The bot hung up after its goodbye (the `end_call` tool).
    Bot,
    /// The bot handed the call to a person (the `transfer_call` tool).
    Transferred,
}

impl From<EndedBy> for &'static str {
    fn from(e: EndedBy) -> Self {
        e.as_str()
    }
}

impl EndedBy {
    /// As serialised: for logs and span attributes.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndedBy::Stop => "stop",
            EndedBy::TransportClosed => "transport closed",
            EndedBy::MaxDuration => "maximum duration",
            EndedBy::ServerShutdown => "server shutdown",
            EndedBy::StoppedReading => "caller stopped reading",
            EndedBy::InputFailed => "input failed",
            EndedBy::Error => "error",
            EndedBy::Bot => "bot",
            EndedBy::Transferred => "transferred",
        }
    }

    /// How the call ended, as a metric label.
    pub fn outcome(self) -> &'static str {
        match self {
            EndedBy::Stop | EndedBy::Bot => "completed",
            EndedBy::Transferred => "transferred",
            EndedBy::TransportClosed => "hung_up",
            EndedBy::MaxDuration => "max_duration",
            _ => "failed",
        }
    }
}

impl std::fmt::Display for EndedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, with the figures each stage measured. Times are ms.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    CallStarted {
        info: CallInfo,
        persona: Persona,
    },
    /// VAD timestamps are positions in the caller's audio, in ms from the
    /// start of the call.
    UserStartedSpeaking {
        confirmed_ms: f64,
        onset_ms: f64,
    },
    UserStoppedSpeaking {
        confirmed_ms: f64,
        end_ms: f64,
    },
    TurnVerdict {
        probability: f32,
        complete: bool,
        inference_ms: f64,
        total_ms: f64,
    },
    Transcript {
        text: String,
        stt_ms: f64,
    },
    /// The caller's turn is over, by `end`'s rule, after `silence_ms` of
    /// silence since their speech ended.
    TurnEnded {
        end: TurnEnd,
        silence_ms: f64,
    },
    /// Reply `turn` was asked for at `started_at_ms` (a draft's start, for a
    /// draft the turn adopted) and is now the one that plays; for a caller's
    /// turn, how that turn was heard and ended.
    ReplyStarted {
        turn: usize,
        kind: TurnKind,
        user_text: String,
        started_at_ms: f64,
        caller: Option<CallerTurn>,
    },
    LlmFirstToken {
        turn: usize,
        ms: f64,
    },
    LlmUsage {
        turn: usize,
        prompt_tokens: usize,
        prefilled_tokens: usize,
        completion_tokens: usize,
    },
    TtsFirstAudio {
        turn: usize,
        ms: f64,
        /// When that audio was ready, since the start of the call.
        audio_at_ms: f64,
    },
    TtsUsage {
        turn: usize,
        characters: usize,
    },
    BotStartedSpeaking {
        turn: usize,
        kind: TurnKind,
        /// For caller turns.
        total_ms: Option<f64>,
        end_of_speech_ms: Option<f64>,
        /// For the greeting: from the start of the call.
        since_call_start_ms: Option<f64>,
        /// When the frame was written, since the start of the call.
        frame_at_ms: f64,
    },
    BotStoppedSpeaking {
        turn: usize,
        interrupted: bool,
    },
    Interruption {
        turn: usize,
        onset_to_clear_ms: f64,
        cut_off: bool,
    },
    /// The caller spoke over reply `turn`: it paused while the words were
    /// heard out.
    BotPaused {
        turn: usize,
    },
    /// What the caller said over reply `turn` was only a backchannel: it
    /// goes on where it stopped.
    Backchannel {
        turn: usize,
        paused_ms: f64,
    },
    IdlePrompt {
        turn: usize,
    },
    /// Reply `turn` was said for a tool: `started` with it, then `ok` once
    /// heard to its end (the tool is used) or `cancelled` when the caller
    /// went on; `ms` since it was chosen.
    ToolCall {
        turn: usize,
        call: crate::tools::ToolCall,
        outcome: &'static str,
        ms: f64,
        /// What an owner's endpoint answered (cut at 2,000 characters), or
        /// why it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    Dtmf {
        digit: String,
    },
    Error {
        kind: String,
        message: String,
    },
    /// Reply `turn` is over: played to its end, interrupted, abandoned
    /// before a frame of it was heard, or `failed` (its LLM or TTS broke
    /// off: the caller gets an apology instead); `heard_text` is what the
    /// caller heard. Every `ReplyStarted` gets one.
    ReplyEnded {
        turn: usize,
        bot_text: String,
        heard_text: String,
        interrupted: bool,
        failed: bool,
    },
    /// A reply's complete record, once it has been played or interrupted
    /// (not for a failed one, whose record only the summary keeps):
    /// folded from the reply's events by the call's
    /// [`TurnLog`](crate::observe::turns::TurnLog), which publishes it right
    /// after the `ReplyEnded` that completes it.
    TurnFinished {
        record: TurnRecord,
    },
    CallEnded {
        summary: Box<CallSummary>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub call_sid: Arc<str>,
    /// Since the start of the call.
    pub(crate) at_ms: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// `s` with everything but ASCII letters, digits, `-` and `_` replaced, for
/// file names made from call ids.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::EndedBy;

    #[test]
    fn ended_by_serialises_as_its_words() {
        for (e, words) in [
            (EndedBy::Stop, "stop"),
            (EndedBy::TransportClosed, "transport closed"),
            (EndedBy::ServerShutdown, "server shutdown"),
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), words);
            assert_eq!(e.to_string(), words);
        }
    }
}
