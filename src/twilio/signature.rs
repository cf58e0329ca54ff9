//! `X-Twilio-Signature`: how a request proves it came from Twilio.
//!
//! The signature is base64(HMAC-SHA1(auth token, URL + the form's names and
//! values sorted by name)) over the URL exactly as Twilio requested it. Our
//! server often sits behind a TLS-terminating proxy or tunnel, so the URL is
//! rebuilt from the configured public URL, and — as Twilio signs HTTPS URLs
//! without the port and HTTP ones with it — both spellings of the port are
//! accepted.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name, then value (repeated names sign every value, sorted).
    sorted.sort();
    let mut m = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key");
    m.update(url.as_bytes());
    for (k, v) in sorted {
        m.update(k.as_bytes());
        m.update(v.as_bytes());
    }
    m
}

/// The signature Twilio would send for `url` and form `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of the request (compared in
/// constant time).
pub(crate) fn is_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    url_variants(url)
        .iter()
        .any(|u| mac(auth_token, u, params).verify_slice(&expected).is_ok())
}

/// `url` as given, without an explicit port, and with the scheme's default
/// port spelled out.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme {
        "https" | "wss" => "443",
        _ => "80",
    };
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    out.push(format!("{scheme}://{host}{path}"));
    out.push(format!("{scheme}://{host}:{default_port}{path}"));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_documented_vector() {
        let url = "https://example.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            sign("12345", url, &doc_params()),
            "L/OH5YylLD5NRKLltdqwSvS0BnU="
        );
        assert!(is_valid(
            "12345",
            url,
            &doc_params(),
            "L/OH5YylLD5NRKLltdqwSvS0BnU="
        ));
    }

    #[test]
    fn tampering_is_caught() {
        let url = "https://example.com/myapp.php?foo=1&bar=2";
        let good = "L/OH5YylLD5NRKLltdqwSvS0BnU=";
        let mut p = doc_params();
        p[2].1 = "9999".into();
        assert!(!is_valid("12345", url, &p, good));
        assert!(!is_valid(
            "12345",
            "https://example.com/other.php?foo=1&bar=2",
            &doc_params(),
            good
        ));
        assert!(!is_valid("54321", url, &doc_params(), good));
        assert!(!is_valid("12345", url, &doc_params(), "not base64!"));
        assert!(!is_valid("12345", url, &doc_params(), ""));
    }

    #[test]
    fn either_spelling_of_the_port_is_accepted() {
        let sig = sign("12345", "https://example.com/myapp.php", &doc_params());
        assert!(is_valid(
            "12345",
            "https://example.com:443/myapp.php",
            &doc_params(),
            &sig
        ));
        let sig = sign("12345", "https://example.com:443/myapp.php", &doc_params());
        assert!(is_valid(
            "12345",
            "https://example.com/myapp.php",
            &doc_params(),
            &sig
        ));
    }
}
