//! The checks a configuration passes before anything starts: a bad value
//! stops the process at startup with the key's name, never a panic later.

use super::{Config, LlmBackend, MIN_SECRET_CHARS};
use crate::error::{Error, Result};

/// The longest duration a setting may name: longer is a typo, and far
/// longer would overflow the clock.
const MAX_SECS: f32 = 86_400.0;
/// The longest a request to a remote API or a client's handshake may take:
/// past two minutes a caller has hung up, and a worker held that long is
/// one a flood can exhaust.
const MAX_REQUEST_SECS: f32 = 120.0;
/// Retries of one REST request: each doubles the wait, so more would hold
/// a hang-up or a recording for minutes after the call.
const MAX_RETRIES: u32 = 10;

/// Whether `url` names this machine: plain `http://` is acceptable only
/// there (a local fake, a sidecar), never across a network with
/// credentials in it.
fn is_loopback_url(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(is_loopback_host))
        .unwrap_or(false)
}

/// Whether a host name or address (`localhost`, `127.0.0.1`, `[::1]`) is
/// this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl Config {
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
            ("call.rescore_secs", c.rescore_secs, true),
            ("call.sentence_wait_secs", c.sentence_wait_secs, true),
            ("call.backchannel_max_secs", c.backchannel_max_secs, false),
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
        let s = &self.server;
        let requests = [
            ("twilio.timeout_secs", self.twilio.timeout_secs),
            ("llm.api.timeout_secs", self.llm.api.timeout_secs),
            ("stt.deepgram.timeout_secs", self.stt.deepgram.timeout_secs),
            ("tts.deepgram.timeout_secs", self.tts.deepgram.timeout_secs),
            ("server.start_timeout_secs", s.start_timeout_secs),
            ("server.header_timeout_secs", s.header_timeout_secs),
        ];
        for (name, v) in requests {
            // `contains` is false for NaN.
            if !(v > 0.0 && v <= MAX_REQUEST_SECS) {
                return bad(format!(
                    "{name} must be above 0 and at most {MAX_REQUEST_SECS} s, not {v}"
                ));
            }
        }
        if self.twilio.retries > MAX_RETRIES {
            return bad(format!(
                "twilio.retries is at most {MAX_RETRIES}, not {}",
                self.twilio.retries
            ));
        }
        let counts = [
            ("server.demo_max_calls", s.demo_max_calls),
            ("server.max_pending_streams", s.max_pending_streams),
            (
                "server.max_pending_streams_per_address",
                s.max_pending_streams_per_address,
            ),
            ("server.dialout_per_minute", s.dialout_per_minute as usize),
        ];
        for (name, n) in counts {
            if n == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        for (name, secret) in [
            ("server.api_token (or CALLBOX_API_TOKEN)", s.api_token()),
            (
                "server.stream_secret (or CALLBOX_STREAM_SECRET)",
                s.stream_secret(),
            ),
        ] {
            if secret.is_some_and(|t| t.trim().chars().count() < MIN_SECRET_CHARS) {
                return bad(format!(
                    "{name} must be at least {MIN_SECRET_CHARS} characters: a short one can be guessed \
                     (make one with `openssl rand -hex 32`)"
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
        let sequences = self.server.max_calls + self.server.demo_lines();
        if self.llm.batch && sequences > 256 {
            return bad(format!(
                "with llm.batch, server.max_calls + server.demo_max_calls is at most 256 (llama.cpp's limit on sequences), not {sequences}"
            ));
        }
        if !(256..=1 << 20).contains(&self.llm.context_tokens) {
            return bad(format!(
                "llm.context_tokens must be in [256, 1048576], not {}",
                self.llm.context_tokens
            ));
        }
        self.devices.validate()?;
        self.validate_personas()?;
        self.validate_tools()?;
        if let Some(to) = &self.call.transfer_to {
            if !crate::twilio::rest::is_e164(to) {
                return bad(format!(
                    "call.transfer_to must be an E.164 number like +14155550100, not {to:?}"
                ));
            }
        }
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
        // Every request to it carries the account's credentials.
        let twilio = &self.twilio.api_base;
        if !twilio.starts_with("https://") && !is_loopback_url(twilio) {
            return bad(format!(
                "twilio.api_base must be https:// (plain http:// only on this machine), not {twilio:?}"
            ));
        }
        let api = &self.llm.api;
        if self.llm.backend == LlmBackend::OpenAi && api.model.trim().is_empty() {
            return bad("llm.api.model must name a model when llm.backend is \"openai\"".into());
        }
        let t = &self.twilio;
        for p in t.dialout_prefixes.iter().flatten() {
            let digits = p.strip_prefix('+').unwrap_or("x");
            if digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return bad(format!(
                    "twilio.dialout_prefixes holds E.164 prefixes like \"+1\" or \"+4420\", not {p:?}"
                ));
            }
        }
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

impl Config {
    /// Placeholders must be names; an inbound call has only the call's own
    /// values to fill them with (a dial-out brings its variables, checked
    /// per request).
    fn validate_personas(&self) -> Result<()> {
        let p = &self.personas;
        let named = p
            .named
            .iter()
            .map(|(k, v)| (format!("personas.named.{k}"), v));
        for (at, persona) in [
            ("personas.inbound".to_string(), &p.inbound),
            ("personas.outbound".to_string(), &p.outbound),
        ]
        .into_iter()
        .chain(named)
        {
            let names = persona
                .placeholders()
                .map_err(|e| Error::Config(format!("{at}: {e}")))?;
            if at == "personas.inbound" {
                let unknown: Vec<&str> = names
                    .into_iter()
                    .filter(|n| !crate::persona::CALL_VARIABLES.contains(n))
                    .collect();
                if !unknown.is_empty() {
                    return Err(Error::Config(format!(
                        "personas.inbound uses {{{{{}}}}}: an inbound call has only {}",
                        unknown.join("}}, {{"),
                        crate::persona::CALL_VARIABLES.join(", ")
                    )));
                }
            }
        }
        if let Some(bad) = p
            .named
            .keys()
            .find(|k| !crate::persona::is_variable_name(k))
        {
            return Err(Error::Config(format!(
                "personas.named.{bad}: a persona's name is lower-case letters, digits and _"
            )));
        }
        Ok(())
    }
}

/// Names the built-in tools hold.
const BUILT_IN_TOOLS: [&str; 3] = ["end_call", "transfer_call", "none"];

impl Config {
    /// Each `[[tools]]` entry: a unique name a model can write, an object
    /// schema for its arguments, an endpoint and times that make sense.
    fn validate_tools(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let mut seen = Vec::new();
        for (i, t) in self.tools.iter().enumerate() {
            let at = format!("tools[{i}] ({:?})", t.name);
            if !crate::persona::is_variable_name(&t.name)
                || BUILT_IN_TOOLS.contains(&t.name.as_str())
            {
                return bad(format!(
                    "{at}: a tool's name is lower-case letters, digits and _ (not end_call, transfer_call or none)"
                ));
            }
            if seen.contains(&&t.name) {
                return bad(format!("{at}: two tools have this name"));
            }
            seen.push(&t.name);
            if t.description.trim().is_empty() {
                return bad(format!(
                    "{at}: the description is what the model chooses by; it cannot be empty"
                ));
            }
            let p = &t.parameters;
            if p["type"] != "object"
                || !(p.get("properties").is_none() || p["properties"].is_object())
            {
                return bad(format!(
                    "{at}: parameters must be a JSON schema of an object (type = \"object\", properties = {{ … }})"
                ));
            }
            let url = &t.url;
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || reqwest::Url::parse(url).is_err()
            {
                return bad(format!(
                    "{at}: url must be an http:// or https:// URL, not {url:?}"
                ));
            }
            for (name, v) in [
                ("timeout_secs", t.timeout_secs),
                ("filler_after_secs", t.filler_after_secs),
            ] {
                if !(v > 0.0 && v <= MAX_REQUEST_SECS) {
                    return bad(format!(
                        "{at}: {name} must be above 0 and at most {MAX_REQUEST_SECS} s, not {v}"
                    ));
                }
            }
            if let Some(say) = &t.say {
                if let Err(e) = crate::persona::placeholders(say) {
                    return bad(format!("{at}: {e}"));
                }
            }
            if t.filler.as_deref().is_some_and(|f| f.contains("{{")) {
                return bad(format!(
                    "{at}: a filler is said as it is; it takes no placeholders"
                ));
            }
            if t.triggers
                .iter()
                .any(|w| crate::text::wer::normalize(w).is_empty())
            {
                return bad(format!("{at}: a trigger must hold a word"));
            }
            // The local model is held to it by a grammar llama.cpp builds
            // from it: one it cannot build is refused here, not on a call.
            let (_, schema) = crate::tools::choose::arguments(t);
            if let Err(e) = crate::engines::local::llama::grammar_of(&schema) {
                return bad(format!("{at}: parameters: {e}"));
            }
        }
        Ok(())
    }
}
