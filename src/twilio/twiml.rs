//! TwiML that connects a call to our media websocket.

/// Escapes text for an XML attribute. Tabs and line breaks become
/// character references, since an XML parser (Twilio's, or ours reading
/// another server's TwiML) turns literal ones in an attribute into spaces;
/// characters XML cannot hold at all (most control characters) become
/// U+FFFD, as [`xml_safe`] says.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(xml_safe(c)),
        }
    }
    out
}

/// `c`, or U+FFFD where XML 1.0 allows no such character, not even
/// escaped.
pub(crate) fn xml_safe(c: char) -> char {
    match c {
        '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => c,
        _ => '\u{FFFD}',
    }
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
pub(crate) fn dial(number: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{}</Dial></Response>"#,
        escape(number)
    )
}

/// A polite refusal (busy, draining).
pub(crate) fn say_and_hang_up(text: &str) -> String {
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

    #[test]
    fn any_text_survives_the_round_trip_through_our_twiml() {
        let odd = "a\tb\nc\rd \u{1}e\u{FFFF}f \"'<&>";
        let s = parse_stream(&connect_stream("wss://h/ws?x=\u{0}", &[("k\n", odd)])).unwrap();
        assert_eq!(s.url, "wss://h/ws?x=\u{FFFD}");
        let safe: String = odd.chars().map(xml_safe).collect();
        assert_eq!(s.params["k\n"], safe);
        assert_eq!(safe, "a\tb\nc\rd \u{FFFD}e\u{FFFD}f \"'<&>");
    }
}
