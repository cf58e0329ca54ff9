//! Stream tokens: the credential our TwiML hands Twilio for the one media
//! websocket it should open.
//!
//! Twilio's websocket carries no signature over anything we can check
//! against the call, so the TwiML passes a token back to us through
//! `start.customParameters`. The token is stateless: an HMAC, under a key
//! every container of the deployment shares, over the call it was issued
//! for (CallSid and AccountSid, both from the signed webhook), the
//! direction and an expiry. Any container accepts a token any other issued
//! (behind Modal's autoscaler the webhook and the websocket rarely meet),
//! and a token is worth nothing for another call: `start` must name the
//! same CallSid, which is then safe to put into REST paths. A webhook that
//! Twilio retries gets a token of the same worth; each process serves a
//! call's stream once ([`Redeemed`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::events::Direction;

/// How long a token stays good: Twilio opens the websocket within seconds
/// of reading the TwiML.
pub(crate) const TTL: Duration = Duration::from_secs(120);

/// What the key is derived under, so that the same secret used elsewhere
/// (the auth token signs Twilio's webhooks) yields an unrelated key here.
const KEY_LABEL: &[u8] = b"callbox stream token v1";

/// Whether `sid` is a Twilio call SID: `CA` and 32 lowercase hex digits.
/// Only such a SID goes into a REST URL or a file name.
pub(crate) fn is_call_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.starts_with("CA")
        && sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key that signs and checks tokens.
#[derive(Clone)]
pub(crate) struct TokenKey([u8; 32]);

impl TokenKey {
    /// From the configured secret (a stream secret, else Twilio's auth
    /// token); without one, a key of this process alone — enough when
    /// nothing checks tokens (signature validation off).
    pub(crate) fn new(secret: Option<&str>) -> Self {
        let secret = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        let mut mac = <Hmac<Sha256>>::new_from_slice(&secret).expect("HMAC takes any key");
        mac.update(KEY_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, c: &Claims<'_>, expires: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key");
        // Length-prefixed, so that no two claims share a byte string.
        for part in [
            c.call_sid.as_bytes(),
            c.account_sid.as_bytes(),
            c.direction.as_str().as_bytes(),
            &expires.to_be_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A tag of `data` under this key for `purpose` (hex, 128 bits): a
    /// secret derived from a name, with nothing to store.
    pub(crate) fn tag(&self, purpose: &str, data: &str) -> String {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(&(purpose.len() as u64).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(data.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// A token for `claims`, good until `now` + [`TTL`].
    pub(crate) fn issue(&self, claims: &Claims<'_>, now: SystemTime) -> String {
        let expires = unix_secs(now) + TTL.as_secs();
        let tag = self.mac(claims, expires).finalize().into_bytes();
        format!("{expires}.{}", hex::encode(tag))
    }

    /// Whether `token` was issued for `claims` and is still good at `now`;
    /// the error says why not, for the log.
    pub(crate) fn check(
        &self,
        token: &str,
        claims: &Claims<'_>,
        now: SystemTime,
    ) -> Result<u64, &'static str> {
        let (expires, tag) = token.split_once('.').ok_or("not a stream token")?;
        let expires: u64 = expires.parse().map_err(|_| "not a stream token")?;
        let tag = hex::decode(tag).map_err(|_| "not a stream token")?;
        // Constant-time: the tag is compared by the MAC itself.
        self.mac(claims, expires)
            .verify_slice(&tag)
            .map_err(|_| "issued for another call (or forged)")?;
        if unix_secs(now) > expires {
            return Err("expired");
        }
        Ok(expires)
    }
}

/// What a token vouches for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claims<'a> {
    pub call_sid: &'a str,
    pub account_sid: &'a str,
    pub direction: Direction,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The calls whose stream this process has served, until their tokens
/// expire: a token (or its retried twin) opens one stream per process.
#[derive(Default)]
pub(crate) struct Redeemed(Mutex<HashMap<String, u64>>);

impl Redeemed {
    /// True the first time `call_sid` is redeemed here before `expires`.
    pub(crate) fn first(&self, call_sid: &str, expires: u64, now: SystemTime) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_secs(now);
        m.retain(|_, e| *e >= now);
        match m.entry(call_sid.to_string()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(expires);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: &str = "CA0123456789abcdef0123456789abcdef";

    fn claims(call_sid: &str) -> Claims<'_> {
        Claims {
            call_sid,
            account_sid: "AC1",
            direction: Direction::Inbound,
        }
    }

    #[test]
    fn a_token_is_good_in_any_process_with_the_key_for_its_call_only() {
        let now = SystemTime::now();
        let issuer = TokenKey::new(Some("shared-secret"));
        let token = issuer.issue(&claims(CALL), now);
        // Another process, the same configuration.
        let other = TokenKey::new(Some("shared-secret"));
        assert!(other.check(&token, &claims(CALL), now).is_ok());
        assert!(TokenKey::new(Some("other-secret"))
            .check(&token, &claims(CALL), now)
            .is_err());
        let elsewhere = "CAffffffffffffffffffffffffffffffff";
        assert!(other.check(&token, &claims(elsewhere), now).is_err());
        let outbound = Claims {
            direction: Direction::Outbound,
            ..claims(CALL)
        };
        assert!(other.check(&token, &outbound, now).is_err());
        let later = now + TTL + Duration::from_secs(2);
        assert_eq!(other.check(&token, &claims(CALL), later), Err("expired"));
        // A token moved to another expiry is another token.
        let (_, tag) = token.split_once('.').unwrap();
        let stretched = format!("{}.{tag}", unix_secs(later) + 60);
        assert!(other.check(&stretched, &claims(CALL), later).is_err());
        for junk in ["", "0123", "1.zz", "x.00"] {
            assert!(other.check(junk, &claims(CALL), now).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_call_is_served_once_per_process() {
        let r = Redeemed::default();
        let now = SystemTime::now();
        let expires = unix_secs(now) + 120;
        assert!(r.first(CALL, expires, now));
        assert!(!r.first(CALL, expires, now));
        // Forgotten once its token could no longer be used anyway.
        assert!(r.first(CALL, expires + 500, now + Duration::from_secs(200)));
    }

    #[test]
    fn call_sids() {
        assert!(is_call_sid(CALL));
        for bad in [
            "",
            "CA1",
            "CA0123456789ABCDEF0123456789abcdef",
            "CA0123456789abcdef0123456789abcde/",
            "MZ0123456789abcdef0123456789abcdef",
            "CA0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_call_sid(bad), "{bad}");
        }
    }
}
