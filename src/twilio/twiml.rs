//! TwiML that connects a call to our media websocket.

/// Escapes text for an XML attribute.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A stream that TwiML connects: where Twilio opens the websocket, and the
/// `<Parameter>`s it hands back in `start.customParameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTarget {
    pub url: String,
    pub params: std::collections::HashMap<String, String>,
}

/// The stream that TwiML connects the call to, or `None` when it connects
/// none (a refusal, a `<Say>`). Any server's TwiML, not only ours, so it is
/// read as XML: attributes in any order and either quote, entities decoded.
/// A `<Start><Stream>` only forks a copy of the audio and is not the call's
/// stream.
pub fn parse_stream(xml: &str) -> Option<StreamTarget> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let stream = doc.descendants().find(|n| {
        n.has_tag_name("Stream") && n.parent().is_some_and(|p| p.has_tag_name("Connect"))
    })?;
    Some(StreamTarget {
        url: stream.attribute("url")?.to_string(),
        params: stream
            .children()
            .filter(|n| n.has_tag_name("Parameter"))
            .filter_map(|p| Some((p.attribute("name")?.into(), p.attribute("value")?.into())))
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

    #[test]
    fn another_servers_twiml_is_read_as_xml() {
        let x = "<?xml version='1.0'?>\n<Response>\n  <Start><Stream url='wss://fork.example/'/></Start>\n  \
                 <Connect>\n    <Stream name='bot' url='ws://127.0.0.1:8765/ws?a=1&amp;b=2'>\n      \
                 <Parameter value='x &lt; y' name='note'/>\n    </Stream>\n  </Connect>\n</Response>";
        let s = parse_stream(x).unwrap();
        assert_eq!(s.url, "ws://127.0.0.1:8765/ws?a=1&b=2");
        assert_eq!(s.params.len(), 1);
        assert_eq!(s.params["note"], "x < y");
        assert_eq!(
            parse_stream("<Response><Connect><Stream/></Connect></Response>"),
            None
        );
        assert_eq!(parse_stream("not xml"), None);
    }
}
