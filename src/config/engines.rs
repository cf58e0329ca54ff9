//! Which backend each engine uses and how: the local models or a provider's
//! API (the stack callbox is compared with), and the LLM's sampling. Kept
//! apart from the server and call settings because it is what an A/B
//! between stacks changes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    pub max_tokens: usize,
    pub temperature: f32,
    pub repeat_penalty: f32,
    /// Who writes the replies: the model set's GGUF in-process, or an
    /// OpenAI-compatible API (`[llm.api]`), e.g. to A/B against Groq.
    pub backend: LlmBackend,
    pub api: ApiConfig,
    /// Continuous batching: every call's LLM work shares one llama.cpp
    /// context, each call a sequence of it (`server.max_calls` of them),
    /// decoded together in one batch per step. Off, every call gets a
    /// context of its own, which suits a small CPU; on a GPU a step for 32
    /// calls costs little more than a step for one. On by default in CUDA
    /// builds.
    pub batch: bool,
    /// Context per call, in tokens.
    pub context_tokens: u32,
}

impl LlmConfig {
    /// How every reply is sampled.
    pub(crate) fn generation(&self) -> crate::engines::GenerationOptions {
        crate::engines::GenerationOptions {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            repeat_penalty: self.repeat_penalty,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackend {
    /// llama.cpp in this process.
    #[default]
    Local,
    /// Any OpenAI-compatible chat API (Groq, OpenAI, vLLM, llama.cpp's server).
    OpenAi,
}

/// An API backend's endpoint. Its defaults depend on which backend it
/// serves (see `Config::default`): a partial table in a file is merged over
/// them, so `[tts.deepgram] model = "…"` keeps Deepgram's URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Scheme, host and any leading path (up to the API's version).
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the key (kept out of config files);
    /// empty for a server that wants none.
    pub api_key_env: String,
    /// For connecting, the first byte, and each later read of the stream.
    pub timeout_secs: f32,
}

impl ApiConfig {
    /// Groq's OpenAI-compatible chat API with the API stack's model.
    pub(crate) fn groq() -> Self {
        Self {
            base_url: "https://api.groq.com/openai/v1".into(),
            model: "llama-3.3-70b-versatile".into(),
            api_key_env: "GROQ_API_KEY".into(),
            timeout_secs: 10.0,
        }
    }

    /// Deepgram's streaming listen API with the API stack's model.
    pub(crate) fn deepgram_listen() -> Self {
        Self {
            base_url: "wss://api.deepgram.com".into(),
            model: "nova-3".into(),
            ..Self::deepgram()
        }
    }

    /// Deepgram's speak API with the API stack's voice.
    pub fn deepgram() -> Self {
        Self {
            base_url: "https://api.deepgram.com".into(),
            model: "aura-2-thalia-en".into(),
            api_key_env: "DEEPGRAM_API_KEY".into(),
            timeout_secs: 10.0,
        }
    }
}

/// Who hears the caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SttConfig {
    /// The model set's Whisper in-process (each turn once it ends), or
    /// Deepgram's streaming API (`[stt.deepgram]`), which hears the caller
    /// as they speak.
    pub backend: SttBackend,
    pub deepgram: ApiConfig,
    /// Transcriptions run at once by the local Whisper; more wait their
    /// turn in the order they asked. 0: as many as ask on the CPU (they
    /// share its cores), one at a time on a GPU, where a second stream of
    /// kernels only interleaves with the first.
    pub(crate) parallel: usize,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            backend: SttBackend::Local,
            deepgram: ApiConfig::deepgram_listen(),
            parallel: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SttBackend {
    /// Whisper in this process.
    #[default]
    Local,
    Deepgram,
}

/// Who speaks the replies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    /// The model set's Piper voice in-process, or Deepgram's Aura over its
    /// REST API (`[tts.deepgram]`), e.g. to A/B against the API stack.
    pub backend: TtsBackend,
    pub deepgram: ApiConfig,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            backend: TtsBackend::Local,
            deepgram: ApiConfig::deepgram(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TtsBackend {
    /// Piper in this process.
    #[default]
    Local,
    Deepgram,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            max_tokens: 80,
            temperature: 0.0,
            repeat_penalty: 1.15,
            backend: LlmBackend::Local,
            api: ApiConfig::groq(),
            batch: crate::engines::device::CUDA_BUILD,
            context_tokens: 4096,
        }
    }
}
