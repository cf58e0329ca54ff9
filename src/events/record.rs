//! The records a call leaves behind: one per bot reply, and the summary.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CallInfo, EndedBy, TurnKind};
use crate::engines::ChatMessage;

/// Everything measured about one bot reply. Times are milliseconds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TurnRecord {
    pub index: usize,
    pub kind: TurnKind,
    pub user_text: String,
    /// What the LLM generated (or the greeting).
    pub bot_text: String,
    /// What the caller heard: differs from `bot_text` after an interruption.
    pub heard_text: String,
    pub interrupted: bool,
    /// VAD "user stopped speaking" → first bot audio frame written.
    pub total_ms: Option<f64>,
    /// End of the caller's speech (stop event minus the stop window) → same frame.
    pub end_of_speech_ms: Option<f64>,
    /// End of speech → transcript.
    pub stt_ms: Option<f64>,
    pub smart_turn_ms: Option<f64>,
    pub(crate) smart_turn_inference_ms: Option<f64>,
    /// Of the last verdict, when Smart Turn was asked again as the silence
    /// grew.
    pub(crate) smart_turn_probability: Option<f32>,
    /// How many times Smart Turn was asked about this turn.
    #[serde(default)]
    pub(crate) smart_turn_scores: usize,
    /// What ended the caller's turn (caller turns only).
    #[serde(default)]
    pub(crate) turn_end: Option<TurnEnd>,
    pub llm_ttfb_ms: Option<f64>,
    /// The owner's tool the reply used.
    #[serde(default)]
    pub tool: Option<ToolRecord>,
    pub tts_ttfb_ms: Option<f64>,
    pub prompt_tokens: usize,
    pub prefilled_tokens: usize,
    pub completion_tokens: usize,
    pub(crate) tts_characters: usize,
    /// Anchors in ms from the call's start, to place the stages on a
    /// timeline (traces, spans): the LLM request (a draft's start for
    /// drafts), Piper's first audio, the first frame written.
    pub(crate) reply_started_at_ms: f64,
    pub(crate) first_audio_at_ms: Option<f64>,
    pub(crate) first_frame_at_ms: Option<f64>,
}

impl TurnRecord {
    /// A record for a reply that has only just been asked for.
    pub(crate) fn new(index: usize, kind: TurnKind, user_text: String, started_at_ms: f64) -> Self {
        Self {
            index,
            kind,
            user_text,
            bot_text: String::new(),
            heard_text: String::new(),
            interrupted: false,
            total_ms: None,
            end_of_speech_ms: None,
            stt_ms: None,
            smart_turn_ms: None,
            smart_turn_inference_ms: None,
            smart_turn_probability: None,
            smart_turn_scores: 0,
            turn_end: None,
            llm_ttfb_ms: None,
            tool: None,
            tts_ttfb_ms: None,
            prompt_tokens: 0,
            prefilled_tokens: 0,
            completion_tokens: 0,
            tts_characters: 0,
            reply_started_at_ms: started_at_ms,
            first_audio_at_ms: None,
            first_frame_at_ms: None,
        }
    }
}

/// How a caller's turn was heard and ended: the measures of the turn a
/// reply answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallerTurn {
    /// End of speech → transcript.
    pub stt_ms: f64,
    pub end: TurnEnd,
    /// How many times Smart Turn was asked about the turn.
    pub smart_turn_scores: usize,
    /// Of the last verdict: VAD stop → verdict, the model alone, and its
    /// probability.
    pub smart_turn_ms: Option<f64>,
    pub smart_turn_inference_ms: Option<f64>,
    pub smart_turn_probability: Option<f32>,
}

/// One use of an owner's tool within a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub name: String,
    pub arguments: serde_json::Value,
    /// `ok`, `timeout`, `failed` or `cancelled`.
    pub outcome: String,
    /// What the endpoint answered (cut at 2,000 characters), or why it
    /// failed.
    pub(crate) result: Option<String>,
    /// From the request to its answer (or to giving up).
    pub(crate) ms: f64,
}

/// What ended a caller's turn: the rule that let the bot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEnd {
    /// Smart Turn's verdict, at the VAD's stop or asked again later.
    SmartTurn,
    /// The words finished a sentence and `call.sentence_wait_secs` of
    /// silence passed while Smart Turn still doubted it.
    Words,
    /// The silence fallback, `call.turn_timeout_secs`: the caller waited
    /// the longest.
    Silence,
}

impl TurnEnd {
    /// As serialised: for metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TurnEnd::SmartTurn => "smart_turn",
            TurnEnd::Words => "words",
            TurnEnd::Silence => "silence",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Interruption {
    /// Reply interrupted.
    pub turn: usize,
    /// The caller's speech onset → `clear` sent, measured here.
    pub onset_to_clear_ms: f64,
    /// The caller was not interrupting but going on with the turn the reply
    /// answered (speech again within `call.turn_timeout_secs` of its end):
    /// the bot spoke too early.
    pub(crate) cut_off: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub info: CallInfo,
    pub duration_secs: f64,
    pub history: Vec<ChatMessage>,
    pub turns: Vec<TurnRecord>,
    pub interruptions: Vec<Interruption>,
    pub(crate) echo_segments_ignored: usize,
    /// Draft replies dropped unheard because the caller went on.
    pub drafts_discarded: usize,
    /// Speech over the bot that was only "uh-huh", "yeah", "okay": the bot
    /// paused and went on.
    pub backchannels: usize,
    pub frames_dropped: usize,
    pub recording: Option<PathBuf>,
    pub ended_by: EndedBy,
    /// Where the call was handed on to (`EndedBy::Transferred`).
    pub transferred_to: Option<String>,
    /// What answered a call we placed, as Twilio's answering-machine
    /// detection heard it (`human`, `machine_end_beep`, …).
    pub answered_by: Option<String>,
    pub errors: Vec<String>,
}

impl CallSummary {
    /// The summary of a call that could not start.
    pub(crate) fn failed(info: CallInfo, error: String) -> Self {
        Self {
            info,
            duration_secs: 0.0,
            history: Vec::new(),
            turns: Vec::new(),
            interruptions: Vec::new(),
            echo_segments_ignored: 0,
            drafts_discarded: 0,
            backchannels: 0,
            frames_dropped: 0,
            recording: None,
            ended_by: EndedBy::Error,
            transferred_to: None,
            answered_by: None,
            errors: vec![error],
        }
    }

    /// How the call ended, as a metric label.
    pub fn outcome(&self) -> &'static str {
        self.ended_by.outcome()
    }
}
