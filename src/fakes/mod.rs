//! Local stand-ins for the API stack's providers — Groq's OpenAI-compatible
//! chat API and Deepgram's listen and speak APIs — speaking their real wire
//! protocols, with the providers' latencies set by hand. They let the API
//! backends be tested offline and the A/B benchmark run with no account:
//! `callbox fake-apis` serves them, `callbox bench --fake-apis` starts them
//! in-process. They stand at the network edge only; everything on our side
//! of the socket is the real client.

pub mod deepgram;
pub mod openai;

use std::sync::Arc;
use std::time::Duration;

use crate::engines::Stt;

/// What a fake provider sends, piece by piece; an `Err` cuts the connection.
pub(crate) type Pieces =
    tokio::sync::mpsc::Receiver<std::result::Result<axum::body::Bytes, std::io::Error>>;

/// A response whose body streams `pieces` as a provider does, so that a
/// client reading it sees each piece when it is sent.
pub(crate) fn streamed(content_type: &str, pieces: Pieces) -> axum::response::Response {
    let stream = futures::stream::unfold(pieces, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = axum::response::Response::new(axum::body::Body::from_stream(stream));
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert("content-type", v);
    }
    h.insert(
        "cache-control",
        axum::http::HeaderValue::from_static("no-cache"),
    );
    r
}

/// The providers' answer times, each from the request to its first result,
/// and the network's round trip on top.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Latency {
    /// `Finalize` → final transcript.
    pub stt_ms: u64,
    /// Request → first token.
    pub(crate) llm_ms: u64,
    /// Between tokens.
    pub(crate) llm_token_ms: u64,
    /// Request → first byte of audio.
    pub(crate) tts_ms: u64,
    /// Added to each of the above: a hop to the provider and back that
    /// the figures above do not hold already.
    pub(crate) network_ms: u64,
}

impl Latency {
    /// What the API stack measured per stage (Deepgram nova-3 195 ms,
    /// Groq llama-3.3-70b 268 ms to the first token and about 250 tokens a
    /// second after it, Deepgram aura-2 23 ms to the first byte). Those are
    /// Pipecat's time-to-first-byte metrics, taken on the bot's side of
    /// each connection, so the round trip to the provider is already in
    /// them: no network time is added. (It once was, 40 ms a hop, and the
    /// Pipecat peer's calibration showed every stage 40–50 ms above the
    /// seed's table; README, "Against the Pipecat bot".)
    pub(crate) fn api_stack() -> Self {
        Self {
            stt_ms: 195,
            llm_ms: 268,
            llm_token_ms: 4,
            tts_ms: 23,
            network_ms: 0,
        }
    }
}

/// The LLM's reply when none is given: two sentences of a phone answer.
pub(crate) const REPLY: &str = "That's a great question! The short answer is that light \
    bounces around in the air, and blue light bounces the most. What else would you like to know?";

/// The API stack's three providers, faked.
pub(crate) struct ApiStack {
    pub llm: Arc<openai::FakeOpenAi>,
    pub deepgram: Arc<deepgram::FakeDeepgram>,
    pub(crate) latency: Latency,
}

impl ApiStack {
    /// Both fakes on `host` (ports chosen by the system when 0). `ears`
    /// recognises the caller on the listen socket; replies are `reply`,
    /// spoken by `voice`.
    pub(crate) async fn start(
        host: &str,
        ports: (u16, u16),
        latency: Latency,
        (ears, voice): (Arc<dyn Stt>, deepgram::Voice),
        reply: &str,
    ) -> std::io::Result<Self> {
        let ms = |v: u64| Duration::from_millis(v + latency.network_ms);
        let llm = openai::FakeOpenAi::bind(
            &format!("{host}:{}", ports.0),
            openai::Behaviour {
                mode: openai::Mode::Reply,
                reply: reply.to_string(),
                first_token: ms(latency.llm_ms),
                per_token: Duration::from_millis(latency.llm_token_ms),
                tool_call: None,
            },
        )
        .await?;
        let deepgram = deepgram::FakeDeepgram::bind(
            &format!("{host}:{}", ports.1),
            deepgram::Behaviour {
                first_byte: ms(latency.tts_ms),
                // Aura streams far faster than real time.
                piece: 1600,
                per_piece: Duration::from_millis(2),
                ..deepgram::Behaviour::default()
            },
            voice,
            Some(ears),
        )
        .await?;
        deepgram.set_listen(deepgram::ListenBehaviour {
            finalize_latency: ms(latency.stt_ms),
            ..deepgram::ListenBehaviour::default()
        });
        Ok(Self {
            llm,
            deepgram,
            latency,
        })
    }

    /// The environment that points a server's API backends at these fakes
    /// (whichever backends its configuration chooses), keys included.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        [
            ("GROQ_API_KEY", openai::API_KEY.to_string()),
            ("DEEPGRAM_API_KEY", deepgram::API_KEY.to_string()),
            ("CALLBOX_STT__DEEPGRAM__BASE_URL", self.deepgram.ws_url()),
            ("CALLBOX_LLM__API__BASE_URL", self.llm.base_url()),
            ("CALLBOX_TTS__DEEPGRAM__BASE_URL", self.deepgram.base_url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The configuration a server needs to use these fakes, as TOML.
    pub(crate) fn toml(&self) -> String {
        format!(
            "# The API stack, faked locally. Keys: GROQ_API_KEY={} DEEPGRAM_API_KEY={}\n\
             [stt]\nbackend = \"deepgram\"\n[stt.deepgram]\nbase_url = \"{}\"\n\n\
             [llm]\nbackend = \"openai\"\n[llm.api]\nbase_url = \"{}\"\n\n\
             [tts]\nbackend = \"deepgram\"\n[tts.deepgram]\nbase_url = \"{}\"\n",
            openai::API_KEY,
            deepgram::API_KEY,
            self.deepgram.ws_url(),
            self.llm.base_url(),
            self.deepgram.base_url(),
        )
    }
}
