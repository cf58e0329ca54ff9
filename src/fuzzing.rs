//! The checks behind the fuzz targets in `fuzz/`: one function per kind of
//! input that reaches us from outside, taking arbitrary bytes. Each panics
//! only when one of our own promises is broken — a parser may refuse its
//! input, never crash on it or accept something it cannot hand back intact.
//!
//! They live in the library, not in the fuzz crate, so that the default test
//! run replays the whole corpus through them on stable Rust
//! (`tests/fuzz_corpus.rs`): a crash the fuzzer once found stays fixed.

use crate::config::Config;
use crate::server::dialout::{self, DialRequest};
use crate::server::media_ws::call_input;
use crate::session::CallInput;
use crate::twilio::{protocol, signature, twiml};

/// One websocket text frame from "Twilio", before or during a call.
pub fn twilio_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // Not a text frame: the websocket layer refuses it before us.
        return;
    };
    match call_input(text) {
        Ok(Some(CallInput::Audio(frame))) => {
            assert!(
                !frame.pcm.is_empty(),
                "an empty media payload reached the call"
            );
            assert_eq!(frame.rate, 8000, "Twilio's audio is 8 kHz");
        }
        Ok(Some(CallInput::Dtmf(d))) => {
            assert!(protocol::is_keypad_digit(&d), "DTMF {d:?} reached the call");
        }
        Ok(Some(CallInput::Mark(name))) => {
            assert!(name.len() <= text.len());
        }
        Ok(_) | Err(_) => {}
    }
}

/// A webhook's form body: the signature over it and the TwiML that echoes
/// its fields back as stream parameters.
///
/// The first line of the input is the URL Twilio requested; the rest is
/// the form body.
pub fn webhook(data: &[u8]) {
    let (url, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let url = String::from_utf8_lossy(url);
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();

    // Our signature of a request is always accepted, by every spelling of
    // its URL that Twilio might have used; garbage never is, nor panics.
    const TOKEN: &str = "fuzz-auth-token";
    let sig = signature::sign(TOKEN, &url, &form);
    assert!(signature::is_valid(TOKEN, &url, &form, &sig));
    assert!(!signature::is_valid("another-token", &url, &form, &sig));
    let garbage = String::from_utf8_lossy(body);
    let _ = signature::is_valid(TOKEN, &url, &form, &garbage);

    // Whatever a form holds, the TwiML built from it is XML and parses back
    // to the same stream URL and parameters (no field can break out of its
    // attribute or add a parameter), bar the characters XML cannot hold,
    // which become U+FFFD.
    let params: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let xml = twiml::connect_stream(&url, &params);
    let target = twiml::parse_stream(&xml).expect("our TwiML starts a stream");
    let safe = |s: &str| s.chars().map(twiml::xml_safe).collect::<String>();
    assert_eq!(target.url, safe(&url));
    let expected: std::collections::HashMap<String, String> =
        form.iter().map(|(k, v)| (safe(k), safe(v))).collect();
    assert_eq!(target.params, expected);
}

/// The JSON body of `POST /dialout`.
pub fn dialout_body(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<DialRequest>(data) else {
        return;
    };
    if let Ok((to, from)) = dialout::numbers(&Config::default(), &req) {
        assert!(crate::twilio::rest::is_e164(&to) && crate::twilio::rest::is_e164(&from));
    }
}

/// A configuration file.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml_str(text) {
        // Whatever loads has been validated, and survives a round trip
        // through its own TOML.
        cfg.validate().expect("a loaded configuration is valid");
        let again = toml::to_string(&cfg).expect("a configuration serialises");
        Config::from_toml_str(&again).expect("a saved configuration loads again");
    }
}
