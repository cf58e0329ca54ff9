//! Deepgram's Aura text to speech, the TTS of the API stack callbox is
//! measured against, over its REST endpoint: the text of a reply's sentence
//! goes up, raw 16-bit audio streams back at the phone's own rate, and each
//! piece is handed on as it arrives so the caller hears the first words
//! before the rest exists.

use std::io::Read;
use std::time::Instant;

use serde_json::{json, Value};

use super::http::{describe_io, send, Endpoint, LazyClient};
use crate::audio::Audio;
use crate::engines::{SynthesisStats, Tts};
use crate::error::{Error, Result};

pub struct DeepgramTts {
    /// An Aura voice as the model, e.g. `aura-2-thalia-en`; the base URL is
    /// scheme and host, e.g. `https://api.deepgram.com`.
    endpoint: Endpoint,
    client: LazyClient,
}

impl DeepgramTts {
    pub fn new(endpoint: Endpoint) -> Self {
        let client = LazyClient::new(endpoint.timeout);
        Self { endpoint, client }
    }
}

/// Audio is asked for at the phone's own rate: nothing is resampled (which,
/// done piece by piece as the audio streams in, would click at every seam)
/// and the least is sent.
const RATE: u32 = 8000;

/// Bytes read from the stream at a time: 20 ms of 8 kHz audio, so the
/// first words go on as soon as Deepgram sends them.
const READ_BYTES: usize = 320;

impl Tts for DeepgramTts {
    fn sample_rate(&self) -> u32 {
        RATE
    }

    fn synthesize(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(Audio) -> bool,
    ) -> Result<SynthesisStats> {
        let t0 = Instant::now();
        let o = &self.endpoint;
        let err = |e: &dyn std::fmt::Display| Error::engine("deepgram", e);
        let mut stats = sentence_stats(text);
        if text.trim().is_empty() {
            return Ok(stats);
        }
        let url = o.url("/v1/speak");
        let mut request = self
            .client
            .get("deepgram")?
            .post(&url)
            .query(&[
                ("model", o.model.as_str()),
                ("encoding", "linear16"),
                ("container", "none"),
                ("sample_rate", &RATE.to_string()),
            ])
            .json(&json!({ "text": text }));
        if let Some(key) = &o.api_key {
            request = request.header("authorization", format!("Token {key}"));
        }
        let mut response = send("deepgram", &url, request, api_error)?;
        let mut buf = [0u8; READ_BYTES];
        let mut pcm = Pcm16::default();
        loop {
            let n = response
                .read(&mut buf)
                .map_err(|e| err(&format!("reading the audio: {}", describe_io(&e))))?;
            if n == 0 || !pcm.hand_on(&buf[..n], &mut stats, t0, on_audio) {
                break;
            }
        }
        stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }
}

/// The stats of one sentence before any audio.
pub(super) fn sentence_stats(text: &str) -> SynthesisStats {
    SynthesisStats {
        characters: text.chars().count(),
        sentences: 1,
        ..SynthesisStats::default()
    }
}

/// Raw 16-bit little-endian audio at [`RATE`] as it streams in, in pieces
/// that may split a sample: a split sample waits for its other byte.
#[derive(Default)]
pub(super) struct Pcm16 {
    odd: Option<u8>,
    samples: usize,
}

impl Pcm16 {
    /// Hands the whole samples of `bytes` to `on_audio`, keeping `stats`
    /// (first audio after `t0`, seconds of audio); `false` when `on_audio`
    /// wants no more.
    pub(super) fn hand_on(
        &mut self,
        bytes: &[u8],
        stats: &mut SynthesisStats,
        t0: Instant,
        on_audio: &mut dyn FnMut(Audio) -> bool,
    ) -> bool {
        let mut all: Vec<u8> = self.odd.take().into_iter().collect();
        all.extend_from_slice(bytes);
        if all.len() % 2 == 1 {
            self.odd = all.pop();
        }
        let pcm: Vec<i16> = all
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        if pcm.is_empty() {
            return true;
        }
        stats
            .first_audio_ms
            .get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
        self.samples += pcm.len();
        stats.audio_secs = self.samples as f64 / RATE as f64;
        on_audio(Audio::from_i16(&pcm, RATE))
    }
}

/// An upgrade request for one of Deepgram's websockets at `url`, with the
/// key as Deepgram takes it.
pub(super) fn ws_request(
    url: &str,
    key: Option<&str>,
) -> std::result::Result<tungstenite::handshake::client::Request, String> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(key) = key {
        let value = format!("Token {key}")
            .parse()
            .map_err(|_| "the API key is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Why Deepgram refused a websocket upgrade: its status, and its reason
/// from the `dg-error` header, else from the error body.
pub(super) fn refusal(r: &tungstenite::handshake::client::Response) -> String {
    let why = r
        .headers()
        .get("dg-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| Some(api_error(&String::from_utf8_lossy(r.body().as_ref()?))))
        .unwrap_or_default();
    format!("HTTP {}: {why}", r.status())
}

/// Why Deepgram closed a websocket, from its close frame.
pub(super) fn close_reason(frame: Option<tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!(
            "Deepgram closed the connection ({}): {}",
            u16::from(f.code),
            f.reason
        ),
        None => "Deepgram closed the connection without a reason".to_string(),
    }
}

/// Deepgram's error body is `{"err_code", "err_msg", "request_id"}`.
pub(super) fn api_error(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v["err_msg"].is_string() => format!(
            "{} ({})",
            v["err_msg"].as_str().unwrap_or_default(),
            v["err_code"].as_str().unwrap_or("no code")
        ),
        _ => format!("{:.300}", body.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_for_their_message() {
        assert_eq!(
            api_error(
                r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"x"}"#
            ),
            "Invalid credentials. (INVALID_AUTH)"
        );
        assert_eq!(api_error("upstream timeout"), "upstream timeout");
    }
}
