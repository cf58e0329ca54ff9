//! Configuration: built-in defaults, then a TOML file, then `CALLBOX_*`
//! environment variables (nested keys with `__`, e.g.
//! `CALLBOX_CALL__IDLE_SECS=8`), merged by figment and validated once.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::engines::device::Devices;
use crate::engines::silero::VadParams;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub call: CallConfig,
    pub vad: VadParams,
    pub stt: SttConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    pub personas: Personas,
    pub observe: ObserveConfig,
    pub twilio: TwilioConfig,
    /// Where each engine runs (CPU or a CUDA GPU).
    pub devices: Devices,
}

/// The Twilio account: the key of its webhook signatures and the REST
/// credentials for dial-out, recordings and hang-ups. Each secret falls back
/// to Twilio's usual environment variable, so none needs to be in a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioConfig {
    /// `AC…` (else `TWILIO_ACCOUNT_SID`).
    pub account_sid: Option<String>,
    /// Signs Twilio's webhooks and, without an API key, authenticates our
    /// REST requests (else `TWILIO_AUTH_TOKEN`).
    pub auth_token: Option<Secret>,
    /// An API key (`SK…`, else `TWILIO_API_KEY`) and its secret (else
    /// `TWILIO_API_SECRET`): REST credentials that can be revoked without
    /// rotating the auth token.
    pub api_key: Option<String>,
    pub api_secret: Option<Secret>,
    /// Caller ID for dial-out when the request names none (else
    /// `TWILIO_PHONE_NUMBER`).
    pub from_number: Option<String>,
    /// REST API base URL (regional edges; a local fake in tests).
    pub api_base: String,
    /// Start a dual-channel Twilio recording of each call as its stream starts.
    pub record_calls: bool,
    /// Per-request timeout.
    pub timeout_secs: f32,
    /// Retries after a 429, a 5xx or an unreachable API, with backoff.
    pub retries: u32,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        Self {
            account_sid: None,
            auth_token: None,
            api_key: None,
            api_secret: None,
            from_number: None,
            api_base: "https://api.twilio.com".into(),
            record_calls: true,
            timeout_secs: 10.0,
            retries: 3,
        }
    }
}

/// A setting from the configuration, else from the environment variable;
/// empty counts as unset.
fn setting(value: Option<&str>, var: &str) -> Option<String> {
    value
        .map(str::to_string)
        .or_else(|| std::env::var(var).ok())
        .filter(|v| !v.trim().is_empty())
}

impl TwilioConfig {
    /// The auth token that signs Twilio's requests, if any is configured.
    pub fn auth_token(&self) -> Option<String> {
        setting(
            self.auth_token.as_ref().map(|s| s.0.as_str()),
            "TWILIO_AUTH_TOKEN",
        )
    }

    pub fn account_sid(&self) -> Option<String> {
        setting(self.account_sid.as_deref(), "TWILIO_ACCOUNT_SID")
    }

    /// REST credentials (user, password): the API key when one is set, else
    /// the account's auth token.
    pub fn rest_login(&self) -> Option<(String, Secret)> {
        let key = setting(self.api_key.as_deref(), "TWILIO_API_KEY");
        let secret = setting(
            self.api_secret.as_ref().map(|s| s.0.as_str()),
            "TWILIO_API_SECRET",
        );
        match (key, secret) {
            (Some(k), Some(s)) => Some((k, Secret(s))),
            _ => Some((self.account_sid()?, Secret(self.auth_token()?))),
        }
    }

    pub fn from_number(&self) -> Option<String> {
        setting(self.from_number.as_deref(), "TWILIO_PHONE_NUMBER")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObserveConfig {
    /// Folder for per-call JSON traces (`docs/trace.schema.json`); empty
    /// disables.
    pub traces_dir: Option<PathBuf>,
    /// Events each observer may have queued before it starts losing them.
    pub queue: usize,
    /// Export spans over OTLP/HTTP (also on when an `OTEL_EXPORTER_OTLP_*`
    /// endpoint variable is set); the standard `OTEL_*` variables apply.
    pub otlp: bool,
    /// Full traces URL (e.g. `http://collector:4318/v1/traces`), overriding
    /// the `OTEL_*` endpoint variables.
    pub otlp_endpoint: Option<String>,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            traces_dir: Some(PathBuf::from("traces")),
            queue: 4096,
            otlp: false,
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// Public base URL Twilio reaches us at (behind tunnels and proxies), e.g.
    /// `https://agent.example.com`; else the request's Host header is used.
    pub public_url: Option<String>,
    /// Most calls served at once; more are turned away politely.
    pub max_calls: usize,
    /// Check `X-Twilio-Signature` on webhooks and the one-time stream token
    /// on the websocket. Turn off for local development only: anyone who can
    /// reach the server can then talk to the model.
    pub validate_signatures: bool,
    /// Bearer token for the owner's API (`POST /dialout`), else
    /// `CALLBOX_API_TOKEN`; without one dial-out is disabled.
    pub api_token: Option<Secret>,
    /// Largest websocket message or request body accepted (Twilio's are
    /// under a kilobyte).
    pub max_message_bytes: usize,
    /// On SIGTERM or SIGINT, how long calls in progress may go on while no
    /// new call is taken; those still running then are ended.
    pub drain_secs: u64,
    /// Who may open the browser demo (`GET /demo`) and talk to the bot
    /// through it: `local` (browsers on this machine), `anyone`, or `off`.
    /// Every demo call runs the models, so a public server keeps it off or
    /// local.
    pub demo: DemoAccess,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DemoAccess {
    #[default]
    Local,
    Anyone,
    Off,
}

/// A credential: serialised as itself, printed as `***`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl ServerConfig {
    /// The bearer token of `/dialout`, if dial-out is enabled.
    pub fn api_token(&self) -> Option<String> {
        setting(
            self.api_token.as_ref().map(|s| s.0.as_str()),
            "CALLBOX_API_TOKEN",
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// RNNoise on the caller's audio.
    pub denoise: bool,
    /// The bot greets the caller when the stream starts.
    pub greet: bool,
    /// Seconds of caller silence after the bot finished before it carries on
    /// by itself (0 disables).
    pub idle_secs: f32,
    /// Silence that ends a turn even when Smart Turn thinks it incomplete.
    pub turn_timeout_secs: f32,
    /// Smart Turn probability above which a turn is complete.
    pub turn_threshold: f32,
    /// Start a held-back draft reply as soon as the transcript is ready
    /// (STT itself starts at the VAD's first silent window), so the stop
    /// window and the turn decision overlap the reply's work. Costs CPU
    /// whenever the caller only paused.
    pub draft_replies: bool,
    /// Caller speech (beyond the VAD's start window) needed to interrupt the bot.
    pub barge_in_min_secs: f32,
    /// Caller audio quieter than the bot's own recent audio by this many dB
    /// is taken for echo, not barge-in.
    pub echo_margin_db: f32,
    /// How far ahead of real time outbound audio may run.
    pub max_lead_ms: u64,
    /// Longest call, after which it is ended.
    pub max_call_secs: u64,
    /// Folder for stereo call recordings (left caller, right bot); empty disables.
    pub recordings_dir: Option<PathBuf>,
}

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
    pub fn groq() -> Self {
        Self {
            base_url: "https://api.groq.com/openai/v1".into(),
            model: "llama-3.3-70b-versatile".into(),
            api_key_env: "GROQ_API_KEY".into(),
            timeout_secs: 10.0,
        }
    }

    /// Deepgram's streaming listen API with the API stack's model.
    pub fn deepgram_listen() -> Self {
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
    pub parallel: usize,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Personas {
    pub inbound: Persona,
    pub outbound: Persona,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub system: String,
    pub greeting: String,
    /// What the bot is told when the caller has been silent for `idle_secs`.
    pub idle_prompt: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:8765".into(),
            public_url: None,
            max_calls: 16,
            validate_signatures: true,
            api_token: None,
            max_message_bytes: 64 * 1024,
            drain_secs: 30,
            demo: DemoAccess::Local,
        }
    }
}

impl CallConfig {
    /// Smart Turn's verdict: is a turn with this probability finished?
    pub fn turn_complete(&self, probability: f32) -> bool {
        probability > self.turn_threshold
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            denoise: true,
            greet: true,
            idle_secs: 5.0,
            turn_timeout_secs: 2.0,
            turn_threshold: crate::engines::TURN_THRESHOLD,
            draft_replies: true,
            barge_in_min_secs: 0.0,
            echo_margin_db: 6.0,
            max_lead_ms: 200,
            max_call_secs: 1800,
            recordings_dir: Some(PathBuf::from("recordings")),
        }
    }
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

impl Default for Personas {
    fn default() -> Self {
        Self {
            inbound: Persona {
                system: crate::persona::TEACHER.into(),
                greeting: crate::persona::TEACHER_GREETING.into(),
                idle_prompt: "(The child has been quiet for a few seconds. Carry on teaching with one short, \
                              interesting fact about what you were discussing, then ask a simple question.)"
                    .into(),
            },
            outbound: Persona {
                system: crate::persona::ASSISTANT.into(),
                greeting: crate::persona::ASSISTANT_GREETING.into(),
                idle_prompt: "(The person has been quiet for a few seconds. Briefly check that they are still \
                              there.)"
                    .into(),
            },
        }
    }
}

/// The longest duration a setting may name: longer is a typo, and far
/// longer would overflow the clock.
const MAX_SECS: f32 = 86_400.0;

impl Config {
    /// Defaults ← `file` (if any) ← `CALLBOX_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.is_file() {
                return Err(Error::Config(format!(
                    "configuration file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only nested keys: single-level CALLBOX_* variables (CALLBOX_MODELS,
        // CALLBOX_LOG, …) belong to the command line.
        fig = fig.merge(
            Env::prefixed("CALLBOX_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        Self::extract(fig)
    }

    /// Defaults ← a TOML document, without the environment: what a
    /// configuration file alone means.
    pub fn from_toml_str(toml: &str) -> Result<Self> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
        )
    }

    fn extract(fig: Figment) -> Result<Self> {
        let mut cfg: Config = fig.extract().map_err(|e| Error::Config(e.to_string()))?;
        // An empty folder means "off".
        for dir in [&mut cfg.call.recordings_dir, &mut cfg.observe.traces_dir] {
            if dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
                *dir = None;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let c = &self.call;
        if !(0.0..=1.0).contains(&self.vad.confidence) {
            return bad(format!(
                "vad.confidence must be in [0, 1], not {}",
                self.vad.confidence
            ));
        }
        // Every duration becomes a `Duration` somewhere, which refuses NaN,
        // infinities and negatives by panicking: they stop here instead.
        let durations = [
            ("vad.start_secs", self.vad.start_secs, false),
            ("vad.stop_secs", self.vad.stop_secs, false),
            ("call.idle_secs", c.idle_secs, true),
            ("call.turn_timeout_secs", c.turn_timeout_secs, false),
            ("call.barge_in_min_secs", c.barge_in_min_secs, true),
            ("twilio.timeout_secs", self.twilio.timeout_secs, false),
            ("llm.api.timeout_secs", self.llm.api.timeout_secs, false),
            (
                "tts.deepgram.timeout_secs",
                self.tts.deepgram.timeout_secs,
                false,
            ),
            ("server.drain_secs", self.server.drain_secs as f32, true),
            ("call.max_call_secs", c.max_call_secs as f32, false),
        ];
        for (name, v, zero_ok) in durations {
            let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
            if !(low_ok && v <= MAX_SECS) {
                let low = if zero_ok { "0" } else { "above 0" };
                return bad(format!(
                    "{name} must be {low} and at most {MAX_SECS} s (one day), not {v}"
                ));
            }
        }
        let ranges = [
            ("vad.min_volume", self.vad.min_volume, 0.0, 1.0),
            ("call.echo_margin_db", c.echo_margin_db, -60.0, 60.0),
            ("llm.temperature", self.llm.temperature, 0.0, 2.0),
            ("llm.repeat_penalty", self.llm.repeat_penalty, 0.5, 10.0),
        ];
        for (name, v, low, high) in ranges {
            // `contains` is false for NaN.
            if !(low..=high).contains(&v) {
                return bad(format!("{name} must be in [{low}, {high}], not {v}"));
            }
        }
        if !(0.0..=1.0).contains(&c.turn_threshold) {
            return bad(format!(
                "call.turn_threshold must be in [0, 1], not {}",
                c.turn_threshold
            ));
        }
        if c.max_lead_ms > 500 {
            return bad(format!(
                "call.max_lead_ms is at most 500, not {}",
                c.max_lead_ms
            ));
        }
        if self.server.max_calls == 0 {
            return bad("server.max_calls must be at least 1".into());
        }
        if self.llm.batch && self.server.max_calls > 256 {
            return bad(format!(
                "with llm.batch, server.max_calls is at most 256 (llama.cpp's limit on sequences), not {}",
                self.server.max_calls
            ));
        }
        if !(256..=1 << 20).contains(&self.llm.context_tokens) {
            return bad(format!(
                "llm.context_tokens must be in [256, 1048576], not {}",
                self.llm.context_tokens
            ));
        }
        self.devices.validate()?;
        if self.server.max_message_bytes < 1024 {
            return bad("server.max_message_bytes must be at least 1024".into());
        }
        let urls = [
            ("llm.api.base_url", &self.llm.api.base_url),
            ("twilio.api_base", &self.twilio.api_base),
        ];
        let speak = &self.tts.deepgram.base_url;
        if !["https://", "http://", "wss://", "ws://"]
            .iter()
            .any(|s| speak.starts_with(s))
        {
            return bad(format!(
                "tts.deepgram.base_url must start with https:// or http:// (the REST API) or wss:// or ws:// (the websocket), not {speak:?}"
            ));
        }
        let listen = &self.stt.deepgram.base_url;
        if !(listen.starts_with("wss://") || listen.starts_with("ws://")) {
            return bad(format!(
                "stt.deepgram.base_url must start with wss:// or ws://, not {listen:?}"
            ));
        }
        for (name, url) in urls {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return bad(format!(
                    "{name} must start with https:// or http://, not {url:?}"
                ));
            }
        }
        let api = &self.llm.api;
        if self.llm.backend == LlmBackend::OpenAi && api.model.trim().is_empty() {
            return bad("llm.api.model must name a model when llm.backend is \"openai\"".into());
        }
        let t = &self.twilio;
        if let Some(n) = &t.from_number {
            if !crate::twilio::rest::is_e164(n) {
                return bad(format!(
                    "twilio.from_number must be an E.164 number like +14155550100, not {n:?}"
                ));
            }
        }
        if let Some(u) = &self.server.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return bad(format!(
                    "server.public_url must start with https:// or http://, not {u:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_and_environment_override_defaults() {
        let dir = std::env::temp_dir().join(format!("callbox-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("callbox.toml");
        std::fs::write(&f, "[call]\nidle_secs = 7.5\n[vad]\nconfidence = 0.6\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("CALLBOX_SERVER__MAX_CALLS", "3");
            jail.set_env("CALLBOX_MODELS", "/somewhere");
            let c = Config::load(Some(&f)).unwrap();
            assert_eq!(c.call.idle_secs, 7.5);
            assert_eq!(c.vad.confidence, 0.6);
            assert_eq!(c.server.max_calls, 3);
            assert!(c.call.denoise);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_documented_example_is_the_default() {
        // In a jail: figment's jails serialise the tests that touch the environment.
        figment::Jail::expect_with(|_| {
            let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/callbox.example.toml"));
            assert_eq!(Config::load(Some(example)).unwrap(), Config::default());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn an_empty_folder_turns_recordings_and_traces_off() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CALLBOX_CALL__RECORDINGS_DIR", "");
            jail.set_env("CALLBOX_OBSERVE__TRACES_DIR", "");
            let c = Config::load(None).unwrap();
            assert_eq!(c.call.recordings_dir, None);
            assert_eq!(c.observe.traces_dir, None);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn bad_values_are_explained() {
        let dir = std::env::temp_dir().join(format!("callbox-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[call]\nturn_threshold = 2.0\n").unwrap();
        assert!(Config::load(Some(&f))
            .unwrap_err()
            .to_string()
            .contains("turn_threshold"));
        std::fs::write(&f, "[call]\nnot_a_key = 1\n").unwrap();
        assert!(Config::load(Some(&f))
            .unwrap_err()
            .to_string()
            .contains("not_a_key"));
        assert!(Config::load(Some(Path::new("/nope.toml")))
            .unwrap_err()
            .to_string()
            .contains("/nope.toml"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn rest_credentials_prefer_an_api_key_and_secrets_never_print() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TWILIO_ACCOUNT_SID", "ACenv");
            jail.set_env("TWILIO_AUTH_TOKEN", "env-token");
            let mut t = TwilioConfig::default();
            let login = |t: &TwilioConfig| t.rest_login().map(|(u, p)| (u, p.0));
            assert_eq!(login(&t), Some(("ACenv".into(), "env-token".into())));
            t.api_key = Some("SKkey".into());
            assert_eq!(login(&t).unwrap().0, "ACenv", "a key without its secret");
            t.api_secret = Some(Secret("key-secret".into()));
            assert_eq!(login(&t), Some(("SKkey".into(), "key-secret".into())));
            let mut c = Config {
                twilio: t,
                ..Default::default()
            };
            c.server.api_token = Some(Secret("owner-token".into()));
            let shown = format!("{c:?}");
            assert!(!shown.contains("key-secret") && !shown.contains("owner-token"));
            Ok(())
        });
    }
}
