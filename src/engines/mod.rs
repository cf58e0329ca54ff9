//! The engines of a voice agent, each behind a narrow trait so that a local
//! model and a remote API can stand in for each other without the pipeline
//! noticing.
//!
//! The pattern is the same for every engine: the engine value holds the
//! loaded model and is shared (`Arc`) by every call; anything that carries
//! state from one audio frame to the next — the VAD's recurrent state, the
//! denoiser's filters, the LLM's KV cache — lives in a per-call stream or
//! session object that the engine hands out.

// Engines that call a provider's API (the stack callbox is compared with).
pub mod api;
// Engines that run the models here, in this process.
pub mod local;
// What both kinds share: where an engine runs, and fair queues in front of one.
pub mod device;
pub mod queue;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::audio::Audio;
use crate::error::Result;

/// Sample rate of every model input (VAD, turn detection, STT).
pub const MODEL_RATE: u32 = 16_000;

/// A change in the caller's speech, positions in samples of the 16 kHz stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VadEvent {
    /// Speech confirmed at `at` (after the start window); it began at `onset`.
    Started { at: u64, onset: u64 },
    /// The first non-speech window after speech, at `end`: the turn may be
    /// ending. Work that needs the finished utterance (STT, a draft reply)
    /// can start now, one stop window before [`VadEvent::Stopped`] confirms.
    Paused { end: u64 },
    /// Speech again before the stop window ran out: the pause was not the end.
    Resumed { at: u64 },
    /// Silence confirmed at `at` (after the stop window); speech ended at `end`.
    Stopped { at: u64, end: u64 },
}

/// Voice activity detection.
pub trait Vad: Send + Sync {
    fn stream(&self) -> Box<dyn VadStream>;
    /// Samples per model window at 16 kHz.
    fn window(&self) -> usize;
}

pub trait VadStream: Send {
    /// Feeds 16 kHz audio of any length; returns the events it caused.
    fn push(&mut self, samples: &[f32]) -> Result<Vec<VadEvent>>;
    /// Speech probability of the latest window.
    fn confidence(&self) -> f32;
    /// Whether the detector currently considers the caller to be speaking.
    fn speaking(&self) -> bool;
    /// Samples consumed so far.
    fn position(&self) -> u64;
}

/// Smart Turn's own cut-off between "finished" and "still talking"; calls
/// use `call.turn_threshold`, which defaults to it.
pub(crate) const TURN_THRESHOLD: f32 = 0.5;

/// The turn detector's verdict on audio that ends in a pause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnVerdict {
    /// Probability that the caller has finished their turn.
    pub probability: f32,
    /// Model time alone.
    pub(crate) inference_ms: f64,
    /// Including feature extraction.
    pub total_ms: f64,
}

/// End-of-turn prediction from audio.
pub trait TurnDetector: Send + Sync {
    fn predict(&self, audio_16k: &[f32]) -> Result<TurnVerdict>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SttTimings {
    pub(crate) features_ms: f64,
    pub(crate) encoder_ms: f64,
    pub(crate) decoder_ms: f64,
    pub total_ms: f64,
    /// Of `total_ms`, the time spent waiting for other calls'
    /// transcriptions to finish (see [`queue::FairStt`]).
    pub(crate) queued_ms: f64,
    pub tokens: usize,
    /// Segments decoded a second time with the full context.
    pub(crate) fallbacks: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub timings: SttTimings,
}

/// Speech to text for one finished utterance.
pub trait Stt: Send + Sync {
    fn transcribe(&self, audio: &Audio) -> Result<Transcript>;

    /// A per-call stream for an engine that listens while the caller speaks
    /// (a streaming API), so that at the end of a turn only the last words
    /// remain to be recognised. `None`: the engine only transcribes whole
    /// utterances, and calls use [`Stt::transcribe`].
    fn listen(&self) -> Result<Option<Arc<dyn SttStream>>> {
        Ok(None)
    }
}

/// One call's audio, as it arrives, to a streaming recogniser. Positions
/// are 16 kHz samples counted from the first one pushed, the same clock as
/// the call's VAD.
pub trait SttStream: Send + Sync {
    /// Queues the next samples of the call. Never blocks: it runs on the
    /// call's event loop, and a slow connection costs audio, not the call.
    fn push(&self, samples: &[f32]);

    /// Asks for every word pushed so far to be finalised, waits for that,
    /// and returns what was said between positions `from` and `to`.
    fn transcript(&self, from: u64, to: u64) -> Result<Transcript>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Penalty on tokens of the last 64; small models loop without it.
    pub repeat_penalty: f32,
    pub seed: u32,
    /// The owner's tools the model may call instead of answering (a
    /// caller's turn only); the reply is then [`Generation::tool_use`].
    pub tools: Option<Arc<crate::tools::http::ToolSet>>,
    /// A llama.cpp grammar (GBNF, root rule `root`) the output must match:
    /// the local model's steps to a tool. An API engine ignores it (its
    /// model chooses through `tools`).
    pub grammar: Option<String>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_tokens: 120,
            temperature: 0.0,
            repeat_penalty: 1.15,
            seed: 42,
            tools: None,
            grammar: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Prompt tokens that had to be evaluated for this request.
    pub prefilled_tokens: usize,
    /// Prompt tokens reused from the session's KV cache.
    pub cached_tokens: usize,
    /// Whole prompt, in tokens.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
    pub cancelled: bool,
    /// The model ended its turn (rather than running into `max_tokens`).
    pub finished: bool,
    /// The model called one of [`GenerationOptions::tools`] rather than
    /// answering (`text` is then empty).
    pub tool_use: Option<crate::tools::http::ToolUse>,
}

/// A large language model shared by all calls.
pub trait Llm: Send + Sync {
    /// A conversation with its own context (KV cache).
    fn session(&self) -> Result<Box<dyn LlmSession>>;
    fn name(&self) -> String;
}

/// One call's conversation with the model. The prompt is always the whole
/// conversation; an implementation reuses whatever prefix it has already
/// evaluated, so a new turn pays only for its new tokens.
pub trait LlmSession: Send {
    /// Evaluates `messages` ahead of time (e.g. the system prompt while the
    /// greeting plays), and what it can of the next user message before its
    /// words are known. Returns the number of tokens evaluated.
    fn prefill(&mut self, messages: &[ChatMessage]) -> Result<usize>;

    /// Streams the assistant's reply to `messages`. `on_text` gets each piece
    /// of text as soon as it is complete UTF-8 and returns `false` to stop.
    /// `cancel` is checked between tokens.
    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerationOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthesisStats {
    pub first_audio_ms: Option<f64>,
    pub total_ms: f64,
    pub audio_secs: f64,
    pub(crate) characters: usize,
    pub(crate) sentences: usize,
}

/// Text to speech, streamed sentence by sentence.
pub trait Tts: Send + Sync {
    fn sample_rate(&self) -> u32;
    /// Calls `on_audio` with each sentence's audio (and the pause after it) as
    /// soon as it exists; `on_audio` returns `false` to stop early.
    fn synthesize(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(Audio) -> bool,
    ) -> Result<SynthesisStats>;
}

/// All of `text` spoken by `tts`, as one buffer at the voice's rate.
pub fn speak(tts: &dyn Tts, text: &str) -> Result<Audio> {
    let mut out = Audio::new(Vec::new(), tts.sample_rate());
    tts.synthesize(text, &mut |a| {
        out.append(&a);
        true
    })?;
    Ok(out)
}

/// Runs one engine call of one phone call so that a panic inside it (a bug
/// in a model's code, an assertion in a native library's bindings) becomes
/// an error of that call — its caller hears an apology, no other call
/// notices, and the thread that ran it lives on. The engines keep no state
/// across calls that a half-finished call could leave broken: what is
/// per-call (a stream, an LLM session) is checked again on its next use.
pub(crate) fn contained<T>(engine: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        tracing::error!(engine, "engine panicked: {message}");
        Err(crate::Error::engine(engine, format!("panicked: {message}")))
    })
}

/// Background-noise suppression.
pub trait Denoiser: Send + Sync {
    fn stream(&self) -> Box<dyn DenoiseStream>;
    /// The rate the stream works at.
    fn rate(&self) -> u32;
}

pub trait DenoiseStream: Send {
    /// Appends the denoised version of `input` (at [`Denoiser::rate`]) to
    /// `out`, with a constant delay.
    fn process(&mut self, input: &[f32], out: &mut Vec<f32>);
}
