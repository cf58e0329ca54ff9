//! Configuration: built-in defaults, then a TOML file, then `CALLBOX_*`
//! environment variables (nested keys with `__`, e.g.
//! `CALLBOX_CALL__IDLE_SECS=8`), merged by figment and validated once.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod engines;
mod validate;

pub use engines::{ApiConfig, LlmBackend, LlmConfig, SttBackend, SttConfig, TtsBackend, TtsConfig};

pub(crate) use validate::is_loopback_host;

use crate::engines::device::Devices;
use crate::error::{Error, Result};
pub use crate::events::Redact;

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
    pub(crate) devices: Devices,
    /// The owner's tools (`[[tools]]`): HTTP endpoints the bot may call.
    pub tools: Vec<crate::tools::http::HttpTool>,
}

/// Silero VAD's settings, per call: when speech counts as started and as
/// stopped. Owned here, not by the engine, because they are the call's
/// rules (any VAD behind the trait takes them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadParams {
    /// Speech probability at or above which a window counts as speech.
    pub(crate) confidence: f32,
    /// Speech needed before the caller counts as speaking.
    pub(crate) start_secs: f32,
    /// Silence needed before the caller counts as stopped (the stop window).
    pub(crate) stop_secs: f32,
    /// Smoothed loudness (0–1, as Pipecat scales it) a window also needs to
    /// count as speech: quiet voices in the background stay silence.
    pub(crate) min_volume: f32,
}

impl Default for VadParams {
    fn default() -> Self {
        // Pipecat's defaults (stop_secs 0.2 since February 2026).
        Self {
            confidence: 0.7,
            start_secs: 0.2,
            stop_secs: 0.2,
            min_volume: 0.6,
        }
    }
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
    pub(crate) api_key: Option<String>,
    pub(crate) api_secret: Option<Secret>,
    /// Caller ID for dial-out when the request names none (else
    /// `TWILIO_PHONE_NUMBER`).
    pub(crate) from_number: Option<String>,
    /// REST API base URL (regional edges; a local fake in tests).
    pub api_base: String,
    /// Start a dual-channel Twilio recording of each call as its stream starts.
    pub record_calls: bool,
    /// Per-request timeout.
    pub timeout_secs: f32,
    /// Retries after a 429, a 5xx or an unreachable API, with backoff (at
    /// most 10).
    pub retries: u32,
    /// The numbers `POST /dialout` may call: E.164 prefixes such as `"+1"` or
    /// `"+44"`. Unset, only numbers in the country of the caller ID
    /// (`from_number`): a leaked API token must not ring premium numbers
    /// abroad on the owner's bill. `["+"]` allows every number.
    pub(crate) dialout_prefixes: Option<Vec<String>>,
    /// Ask Twilio for answering-machine detection on dial-out (billed per
    /// call by Twilio): on a machine the bot waits for the beep, leaves the
    /// persona's `voicemail` message and hangs up. A dial-out's
    /// `machine_detection` overrides it.
    pub(crate) machine_detection: bool,
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
            dialout_prefixes: None,
            machine_detection: false,
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
    pub(crate) fn rest_login(&self) -> Option<(String, Secret)> {
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

    pub(crate) fn caller_id(&self) -> Option<String> {
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
    pub(crate) otlp: bool,
    /// Full traces URL (e.g. `http://collector:4318/v1/traces`), overriding
    /// the `OTEL_*` endpoint variables.
    pub otlp_endpoint: Option<String>,
    /// What of the caller's personal data observers may see (logs, OTLP,
    /// traces, `/calls`, the demo page): everything (`off`), everything but
    /// digits — DTMF keys, phone and card numbers (`digits`) — or nothing of
    /// what the caller said or pressed (`text`). The conversation itself
    /// is untouched: the model still hears the caller.
    pub redact: Redact,
    /// Write what the caller and the bot said to the log at INFO. Off, the
    /// lines are at DEBUG: transcripts are personal data, and a log is
    /// read by more people than a trace.
    pub(crate) log_transcripts: bool,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            traces_dir: Some(PathBuf::from("traces")),
            queue: 4096,
            otlp: false,
            otlp_endpoint: None,
            redact: Redact::Off,
            log_transcripts: false,
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
    /// The owner's bearer token (else `CALLBOX_API_TOKEN`, at least 32
    /// characters): `POST /dialout`, `GET /calls` and, unless
    /// `metrics_public`, `GET /metrics`. Without one those are closed.
    pub api_token: Option<Secret>,
    /// Serve `GET /metrics` without the owner's token (a scraper on a
    /// private network that cannot send one). Metrics hold no transcripts,
    /// but they tell anyone how busy the line is.
    pub metrics_public: bool,
    /// The key of the stream tokens the TwiML hands Twilio (else
    /// `CALLBOX_STREAM_SECRET`, else derived from Twilio's auth token).
    /// Every container of one deployment must share it: a token issued by
    /// one is accepted by the others.
    pub(crate) stream_secret: Option<Secret>,
    /// Largest websocket message or request body accepted (Twilio's are
    /// under a kilobyte).
    pub(crate) max_message_bytes: usize,
    /// On SIGTERM or SIGINT, how long calls in progress may go on while no
    /// new call is taken; those still running then are ended.
    pub(crate) drain_secs: u64,
    /// Who may open the browser demo (`GET /demo`) and talk to the bot
    /// through it: `local` (a browser on this machine talking to the server
    /// directly, not through a proxy), `anyone`, or `off`. Every demo call
    /// runs the models, so a public server keeps it off or local.
    pub demo: DemoAccess,
    /// Demo calls at once: their own lines, never the phone's.
    pub demo_max_calls: usize,
    /// How long a media websocket may stay open before Twilio's `start`
    /// (Twilio sends it at once; an idle socket is somebody else).
    pub start_timeout_secs: f32,
    /// Media websockets waiting for `start`, in all and from one address:
    /// more are refused with 503 until some start or time out.
    pub(crate) max_pending_streams: usize,
    pub max_pending_streams_per_address: usize,
    /// Behind a reverse proxy every peer is the proxy: count waiting media
    /// websockets by the last address in `X-Forwarded-For` (the one the
    /// proxy itself added) instead. Only behind a proxy that always sets
    /// it; otherwise a client could name any address.
    pub(crate) trust_forwarded_for: bool,
    /// How long a client may take to send a request's headers, and an idle
    /// keep-alive connection may stay open (slow-loris clients hold a
    /// descriptor each).
    pub header_timeout_secs: f32,
    /// Calls `POST /dialout` may place per minute (each costs money).
    pub dialout_per_minute: u32,
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
    /// The owner's bearer token, if one is configured.
    pub fn api_token(&self) -> Option<String> {
        setting(
            self.api_token.as_ref().map(|s| s.0.as_str()),
            "CALLBOX_API_TOKEN",
        )
    }

    /// Demo calls the server may hold at once (none when the demo is off).
    pub(crate) fn demo_lines(&self) -> usize {
        match self.demo {
            DemoAccess::Off => 0,
            _ => self.demo_max_calls,
        }
    }

    /// The configured key of stream tokens, if any.
    pub(crate) fn stream_secret(&self) -> Option<String> {
        setting(
            self.stream_secret.as_ref().map(|s| s.0.as_str()),
            "CALLBOX_STREAM_SECRET",
        )
    }
}

/// The shortest owner token or stream secret accepted: 32 characters (128
/// bits of hex) cannot be guessed over the network.
pub(crate) const MIN_SECRET_CHARS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// RNNoise on the caller's audio.
    pub(crate) denoise: bool,
    /// The bot greets the caller when the stream starts.
    pub greet: bool,
    /// Seconds of caller silence after the bot finished before it carries on
    /// by itself (0 disables).
    pub idle_secs: f32,
    /// Silence after the VAD's stop that ends a turn whatever Smart Turn
    /// and the words say.
    pub turn_timeout_secs: f32,
    /// Smart Turn probability above which a turn is complete.
    pub turn_threshold: f32,
    /// While the caller stays silent after a doubtful verdict, Smart Turn is
    /// asked again each time this much more silence has passed, on the audio
    /// up to then: one int8 verdict at the VAD's stop is too fragile to bet
    /// the turn on (0 asks once).
    pub(crate) rescore_secs: f32,
    /// Read the transcript for what Smart Turn cannot hear: a greeting on
    /// its own or a trailing "and" waits for more (up to
    /// `turn_timeout_secs`); a finished sentence ends the turn after
    /// `sentence_wait_secs` even when Smart Turn doubts it.
    pub word_cues: bool,
    /// Silence after the VAD's stop after which a turn whose words finish a
    /// sentence is complete ([`Self::word_cues`]) while Smart Turn's verdict
    /// is just under the threshold; up to twice that as it nears 0.
    pub(crate) sentence_wait_secs: f32,
    /// Speech over the bot pauses it rather than cutting it off until its
    /// words are known: "uh-huh", "yeah", "okay" let it carry on where it
    /// stopped; anything else interrupts it.
    pub backchannels: bool,
    /// Speech over the bot that lasts longer than this interrupts it
    /// whatever its words (no backchannel is that long).
    pub(crate) backchannel_max_secs: f32,
    /// The bot may end the call: a caller who says goodbye hears the
    /// persona's `goodbye`, then the call is hung up.
    pub(crate) end_call: bool,
    /// Where a caller who asks for a person is transferred (E.164, with
    /// TwiML `<Dial>`): the only number a transfer may reach. None: no
    /// transfers.
    pub transfer_to: Option<String>,
    /// Start a held-back draft reply as soon as the transcript is ready
    /// (STT itself starts at the VAD's first silent window), so the stop
    /// window and the turn decision overlap the reply's work. Costs CPU
    /// whenever the caller only paused.
    pub(crate) draft_replies: bool,
    /// Caller speech (beyond the VAD's start window) needed to interrupt the bot.
    pub(crate) barge_in_min_secs: f32,
    /// Caller audio quieter than the bot's own recent audio by this many dB
    /// is taken for echo, not barge-in.
    pub(crate) echo_margin_db: f32,
    /// How far ahead of real time outbound audio may run.
    pub max_lead_ms: u64,
    /// Longest call, after which it is ended.
    pub(crate) max_call_secs: u64,
    /// Folder for stereo call recordings (left caller, right bot); empty disables.
    pub recordings_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Personas {
    pub(crate) inbound: Persona,
    pub outbound: Persona,
    /// More personas for dial-out, chosen per call by `POST /dialout`'s
    /// `persona` (`[personas.named.reminder]`).
    #[serde(default)]
    pub named: std::collections::BTreeMap<String, Persona>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// What callers call the bot ("Miss Harper"): a short line that only
    /// greets it by name is taken for the start of a turn, not all of it.
    #[serde(default)]
    pub name: String,
    pub system: String,
    pub greeting: String,
    /// What the bot is told when the caller has been silent for `idle_secs`.
    pub idle_prompt: String,
    /// The last words before the bot hangs up (`call.end_call`).
    #[serde(default = "default_goodbye")]
    pub goodbye: String,
    /// What the bot says before a transfer (`call.transfer_to`).
    #[serde(default = "default_transfer_message")]
    pub transfer_message: String,
    /// Said while a slow tool runs (a tool's own `filler` wins).
    #[serde(default = "default_tool_filler")]
    pub tool_filler: String,
    /// Said when a tool fails or runs out of time; the call goes on.
    #[serde(default = "default_tool_apology")]
    pub tool_apology: String,
    /// Left on an answering machine after its beep (dial-out with
    /// `twilio.machine_detection`); the call then hangs up.
    #[serde(default = "default_voicemail")]
    pub voicemail: String,
}

fn default_goodbye() -> String {
    crate::persona::GOODBYE.into()
}

fn default_transfer_message() -> String {
    crate::persona::TRANSFER_MESSAGE.into()
}

fn default_tool_filler() -> String {
    crate::persona::TOOL_FILLER.into()
}

fn default_tool_apology() -> String {
    crate::persona::TOOL_APOLOGY.into()
}

fn default_voicemail() -> String {
    crate::persona::VOICEMAIL.into()
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
            metrics_public: false,
            stream_secret: None,
            demo_max_calls: 2,
            start_timeout_secs: 5.0,
            max_pending_streams: 128,
            max_pending_streams_per_address: 16,
            trust_forwarded_for: false,
            header_timeout_secs: 10.0,
            dialout_per_minute: 10,
        }
    }
}

impl CallConfig {
    /// Smart Turn's verdict: is a turn with this probability finished?
    pub(crate) fn turn_complete(&self, probability: f32) -> bool {
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
            rescore_secs: 0.3,
            word_cues: true,
            sentence_wait_secs: 0.5,
            backchannels: true,
            backchannel_max_secs: 1.5,
            end_call: true,
            transfer_to: None,
            draft_replies: true,
            barge_in_min_secs: 0.0,
            echo_margin_db: 6.0,
            max_lead_ms: 200,
            max_call_secs: 1800,
            recordings_dir: Some(PathBuf::from("recordings")),
        }
    }
}

impl Default for Personas {
    fn default() -> Self {
        Self {
            inbound: Persona {
                name: crate::persona::TEACHER_NAME.into(),
                goodbye: crate::persona::TEACHER_GOODBYE.into(),
                transfer_message: crate::persona::TRANSFER_MESSAGE.into(),
                tool_filler: crate::persona::TOOL_FILLER.into(),
                tool_apology: crate::persona::TOOL_APOLOGY.into(),
                voicemail: crate::persona::VOICEMAIL.into(),
                system: crate::persona::TEACHER.into(),
                greeting: crate::persona::TEACHER_GREETING.into(),
                idle_prompt: "(The child has been quiet for a few seconds. Carry on teaching with one short, \
                              interesting fact about what you were discussing, then ask a simple question.)"
                    .into(),
            },
            outbound: Persona {
                name: crate::persona::ASSISTANT_NAME.into(),
                goodbye: crate::persona::GOODBYE.into(),
                transfer_message: crate::persona::TRANSFER_MESSAGE.into(),
                tool_filler: crate::persona::TOOL_FILLER.into(),
                tool_apology: crate::persona::TOOL_APOLOGY.into(),
                voicemail: crate::persona::VOICEMAIL.into(),
                system: crate::persona::ASSISTANT.into(),
                greeting: crate::persona::ASSISTANT_GREETING.into(),
                idle_prompt: "(The person has been quiet for a few seconds. Briefly check that they are still \
                              there.)"
                    .into(),
            },
            named: Default::default(),
        }
    }
}

impl Config {
    /// Defaults ← `file` (if any) ← `CALLBOX_*` environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self> {
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
}

#[cfg(test)]
mod tests;
