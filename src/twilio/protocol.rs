//! Twilio Media Streams messages (bidirectional `<Connect><Stream>`), kept
//! apart from the websocket that carries them so they can be tested and
//! fuzzed alone. Everything Twilio sends is a JSON text frame; numbers such as
//! `sequenceNumber`, `chunk` and `timestamp` arrive as strings.

use std::collections::HashMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A message from Twilio. Unknown events parse as [`Inbound::Unknown`] so a
/// protocol extension never breaks a call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum Inbound {
    Connected {
        #[serde(default)]
        protocol: Option<String>,
        #[serde(default)]
        version: Option<String>,
    },
    Start {
        #[serde(rename = "streamSid")]
        stream_sid: String,
        start: StartInfo,
    },
    Media {
        media: MediaInfo,
    },
    Mark {
        mark: MarkInfo,
    },
    Dtmf {
        dtmf: DtmfInfo,
    },
    Stop {},
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StartInfo {
    #[serde(default)]
    pub stream_sid: String,
    #[serde(default)]
    pub account_sid: String,
    #[serde(default)]
    pub call_sid: String,
    #[serde(default)]
    pub(crate) tracks: Vec<String>,
    #[serde(default)]
    pub(crate) custom_parameters: HashMap<String, String>,
    #[serde(default)]
    pub(crate) media_format: Option<MediaFormat>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MediaFormat {
    pub(crate) encoding: String,
    pub(crate) sample_rate: u32,
    pub(crate) channels: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct MediaInfo {
    #[serde(default)]
    pub(crate) track: Option<String>,
    #[serde(default)]
    pub(crate) chunk: Option<String>,
    #[serde(default)]
    pub(crate) timestamp: Option<String>,
    pub(crate) payload: String,
}

impl MediaInfo {
    /// The raw μ-law bytes.
    pub(crate) fn audio(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload)
    }

    /// Milliseconds since the stream started, by Twilio's clock.
    pub(crate) fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp.as_deref()?.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct MarkInfo {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct DtmfInfo {
    #[serde(default)]
    pub(crate) track: Option<String>,
    pub(crate) digit: String,
}

/// A key of a phone's keypad, as Twilio reports DTMF: `0`–`9`, `*`, `#`, and
/// the rarely seen `A`–`D`.
pub(crate) fn is_keypad_digit(digit: &str) -> bool {
    let mut chars = digit.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_ascii_digit() || "*#ABCDabcd".contains(c))
}

pub(crate) fn parse(text: &str) -> Result<Inbound, serde_json::Error> {
    serde_json::from_str(text)
}

/// Messages we send to Twilio.
pub fn media(stream_sid: &str, ulaw: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(ulaw);
    serde_json::json!({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})
        .to_string()
}

pub(crate) fn mark(stream_sid: &str, name: &str) -> String {
    serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
        .to_string()
}

pub(crate) fn clear(stream_sid: &str) -> String {
    serde_json::json!({"event": "clear", "streamSid": stream_sid}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_twilio_messages() {
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"direction":"inbound","token":"abc"}},"streamSid":"MZ1"}"#;
        match parse(start).unwrap() {
            Inbound::Start { stream_sid, start } => {
                assert_eq!(stream_sid, "MZ1");
                assert_eq!(start.call_sid, "CA1");
                assert_eq!(start.custom_parameters["token"], "abc");
                assert_eq!(start.media_format.unwrap().sample_rate, 8000);
            }
            other => panic!("{other:?}"),
        }
        let media = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8="},"streamSid":"MZ1"}"#;
        match parse(media).unwrap() {
            Inbound::Media { media } => {
                assert_eq!(media.audio().unwrap(), vec![0xFF, 0xFF]);
                assert_eq!(media.timestamp_ms(), Some(5));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"event":"mark","mark":{"name":"m1"}}"#).unwrap(),
            Inbound::Mark { .. }
        ));
        assert!(matches!(
            parse(r#"{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"3"}}"#).unwrap(),
            Inbound::Dtmf { dtmf } if dtmf.digit == "3"
        ));
        assert!(matches!(
            parse(r#"{"event":"stop","stop":{"callSid":"CA1"}}"#).unwrap(),
            Inbound::Stop {}
        ));
        assert!(matches!(
            parse(r#"{"event":"newfangled","x":1}"#).unwrap(),
            Inbound::Unknown
        ));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"event":"media","media":{}}"#).is_err());
    }

    #[test]
    fn builds_outbound_messages() {
        let m: serde_json::Value = serde_json::from_str(&media("MZ1", &[0xFF; 160])).unwrap();
        assert_eq!(m["event"], "media");
        assert_eq!(m["media"]["payload"].as_str().unwrap().len(), 216);
        let m: serde_json::Value = serde_json::from_str(&mark("MZ1", "s3")).unwrap();
        assert_eq!(m["mark"]["name"], "s3");
        let m: serde_json::Value = serde_json::from_str(&clear("MZ1")).unwrap();
        assert_eq!(m["event"], "clear");
    }
}
