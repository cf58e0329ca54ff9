//! TwiML that connects a call to our media websocket.

use std::sync::LazyLock;

use regex::Regex;

/// Escapes text for an XML attribute.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The inverse of [`escape`].
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A stream that TwiML connects: where Twilio opens the websocket, and the
/// `<Parameter>`s it hands back in `start.customParameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTarget {
    pub url: String,
    pub params: std::collections::HashMap<String, String>,
}

/// The stream of TwiML as [`connect_stream`] writes it, or `None` when it
/// starts no stream (a refusal).
pub fn parse_stream(xml: &str) -> Option<StreamTarget> {
    // Compiled once: a simulated caller parses TwiML on every call.
    static STREAM: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"<Stream url="([^"]*)""#).expect("a valid pattern"));
    static PARAMETER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"<Parameter name="([^"]*)" value="([^"]*)"/>"#).expect("a valid pattern")
    });
    let url = STREAM.captures(xml)?;
    Some(StreamTarget {
        url: unescape(&url[1]),
        params: PARAMETER
            .captures_iter(xml)
            .map(|c| (unescape(&c[1]), unescape(&c[2])))
            .collect(),
    })
}

/// `<Connect><Stream url="wss://HOST/ws">` with `<Parameter>`s, which Twilio
/// hands back in `start.customParameters` (query strings are not supported).
pub fn connect_stream(ws_url: &str, params: &[(&str, &str)]) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>"#);
    xml.push_str(&format!(r#"<Stream url="{}">"#, escape(ws_url)));
    for (k, v) in params {
        xml.push_str(&format!(
            r#"<Parameter name="{}" value="{}"/>"#,
            escape(k),
            escape(v)
        ));
    }
    xml.push_str("</Stream></Connect></Response>");
    xml
}

/// A cold transfer: the live call dials `number` (what a call update with
/// this TwiML does to a call whose stream it replaces).
pub fn dial(number: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{}</Dial></Response>"#,
        escape(number)
    )
}

/// A polite refusal (busy, draining).
pub fn say_and_hang_up(text: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>{}</Say><Hangup/></Response>"#,
        escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_twiml_escapes_and_carries_parameters() {
        let x = connect_stream(
            "wss://a.example/ws",
            &[("direction", "inbound"), ("token", "a&b")],
        );
        assert!(x.contains(r#"<Stream url="wss://a.example/ws">"#));
        assert!(x.contains(r#"<Parameter name="token" value="a&amp;b"/>"#));
        let s = parse_stream(&x).unwrap();
        assert_eq!(s.url, "wss://a.example/ws");
        assert_eq!(s.params["token"], "a&b");
        assert_eq!(s.params["direction"], "inbound");
        assert_eq!(parse_stream(&say_and_hang_up("Busy.")), None);
    }
}
