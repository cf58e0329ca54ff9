//! Twilio's REST API, the three calls a phone agent needs: place a call,
//! record it, hang it up.
//!
//! Call control must never hurt the conversation, so every request has a
//! timeout, transient failures (429, 5xx, an unreachable API) are retried
//! with backoff, and the result is a typed error the caller logs and counts
//! rather than propagates into the call.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Secret, TwilioConfig};

/// Twilio's code for "the requested resource was not found": a call that
/// already ended and was purged, or never existed.
const NOT_FOUND: u64 = 20404;
/// "Call is not in-progress. Cannot redirect": hanging up a call that has
/// already ended.
const NOT_IN_PROGRESS: u64 = 21220;
/// First retry delay; doubled per retry, capped at [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// `+` and 2 to 15 digits, the first not 0: what Twilio dials.
pub(crate) fn is_e164(n: &str) -> bool {
    n.strip_prefix('+').is_some_and(|d| {
        (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestError {
    /// Twilio answered with an error; `code` is Twilio's own error code.
    #[error("Twilio refused ({status}{}): {message}", code.map(|c| format!(", code {c}")).unwrap_or_default())]
    Refused {
        status: u16,
        code: Option<u64>,
        message: String,
    },
    /// No answer: connection failure or timeout.
    #[error("Twilio unreachable: {0}")]
    Unreachable(String),
}

impl RestError {
    /// The error without Twilio's own words (which may quote a phone
    /// number): for logs.
    pub(crate) fn brief(&self) -> String {
        match self {
            RestError::Refused { status, code, .. } => format!(
                "Twilio refused ({status}{})",
                code.map(|c| format!(", code {c}")).unwrap_or_default()
            ),
            RestError::Unreachable(e) => format!("Twilio unreachable: {e}"),
        }
    }
}

/// How a hang-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HangUp {
    Completed,
    /// Twilio no longer knows the call as live (404 / 20404 / 21220).
    AlreadyEnded,
}

/// What we keep of a call resource.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CallResource {
    pub(crate) sid: String,
}

/// What we keep of a recording resource.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RecordingResource {
    pub(crate) sid: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<u64>,
    message: Option<String>,
}

/// A client for one account. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    /// `{api_base}/2010-04-01/Accounts/{sid}`.
    account_url: String,
    user: String,
    password: Secret,
    retries: u32,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest")
            .field("account_url", &self.account_url)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Whether a request may be sent again, and after how long at least.
enum Retry {
    No,
    After(Option<Duration>),
}

impl TwilioRest {
    /// `None` when no account or credentials are configured.
    pub(crate) fn from_config(cfg: &TwilioConfig) -> Option<Self> {
        let account = cfg.account_sid()?;
        let (user, password) = cfg.rest_login()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f32(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs_f32(cfg.timeout_secs.min(5.0)))
            .user_agent(concat!("callbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Self {
            http,
            account_url: format!(
                "{}/2010-04-01/Accounts/{account}",
                cfg.api_base.trim_end_matches('/')
            ),
            user,
            password,
            retries: cfg.retries,
        })
    }

    /// Asks Twilio to dial `to` from `from`; when the callee answers Twilio
    /// POSTs to `twiml_url` for instructions, and reports the call's
    /// progress to `status_callback`. With `amd_callback`, Twilio listens
    /// for an answering machine while the call goes on, until its greeting
    /// ends (`DetectMessageEnd`), and POSTs what answered there.
    pub(crate) async fn create_call(
        &self,
        to: &str,
        from: &str,
        twiml_url: &str,
        status_callback: &str,
        amd_callback: Option<&str>,
    ) -> Result<CallResource, RestError> {
        let mut form = vec![
            ("To", to),
            ("From", from),
            ("Url", twiml_url),
            ("Method", "POST"),
            ("StatusCallback", status_callback),
            ("StatusCallbackMethod", "POST"),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
            ("StatusCallbackEvent", "completed"),
        ];
        if let Some(url) = amd_callback {
            form.extend([
                ("MachineDetection", "DetectMessageEnd"),
                ("AsyncAmd", "true"),
                ("AsyncAmdStatusCallback", url),
                ("AsyncAmdStatusCallbackMethod", "POST"),
            ]);
        }
        // Not idempotent: a request that timed out may still have placed the
        // call, so only answers that say it was not taken are retried.
        let resp = self.post("Calls.json", &form, false).await?;
        json(resp).await
    }

    /// Starts recording a live call, each party on its own channel.
    pub(crate) async fn start_recording(
        &self,
        call_sid: &str,
    ) -> Result<RecordingResource, RestError> {
        let path = format!("Calls/{}/Recordings.json", segment(call_sid));
        let resp = self
            .post(&path, &[("RecordingChannels", "dual")], false)
            .await?;
        json(resp).await
    }

    /// Ends a call; a call Twilio already considers over is not an error.
    pub(crate) async fn hang_up(&self, call_sid: &str) -> Result<HangUp, RestError> {
        let path = format!("Calls/{}.json", segment(call_sid));
        match self.post(&path, &[("Status", "completed")], true).await {
            Ok(_) => Ok(HangUp::Completed),
            Err(RestError::Refused { status, code, .. })
                if status == 404 || matches!(code, Some(NOT_FOUND | NOT_IN_PROGRESS)) =>
            {
                Ok(HangUp::AlreadyEnded)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces what a live call is doing with `twiml` (its stream ends):
    /// how a call is handed on. Not retried after a timeout: it may have
    /// been carried out.
    pub(crate) async fn redirect(&self, call_sid: &str, twiml: &str) -> Result<(), RestError> {
        let path = format!("Calls/{}.json", segment(call_sid));
        self.post(&path, &[("Twiml", twiml)], false).await?;
        Ok(())
    }

    /// POSTs a form under the account, retrying what Twilio asks us to
    /// retry; `idempotent` requests are also retried after a timeout.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idempotent: bool,
    ) -> Result<reqwest::Response, RestError> {
        let url = format!("{}/{path}", self.account_url);
        let mut attempt = 0u32;
        loop {
            let sent = self
                .http
                .post(&url)
                .basic_auth(&self.user, Some(&self.password.0))
                .form(form)
                .send()
                .await;
            let (err, retry) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let after = retry_after(&resp);
                    let body: Option<ErrorBody> = resp.json().await.ok();
                    let err = RestError::Refused {
                        status,
                        code: body.as_ref().and_then(|b| b.code),
                        message: body
                            .and_then(|b| b.message)
                            .unwrap_or_else(|| format!("HTTP {status}")),
                    };
                    let retry = if status == 429 || status >= 500 {
                        Retry::After(after)
                    } else {
                        Retry::No
                    };
                    (err, retry)
                }
                Err(e) => {
                    // A refused connection never reached Twilio; a timeout
                    // may have.
                    let retry = if e.is_connect() || (idempotent && e.is_timeout()) {
                        Retry::After(None)
                    } else {
                        Retry::No
                    };
                    // Without the URL: it holds the account SID, which is
                    // not a secret but need not be in every log line.
                    (RestError::Unreachable(e.without_url().to_string()), retry)
                }
            };
            match retry {
                Retry::After(after) if attempt < self.retries => {
                    let backoff = backoff(attempt);
                    let wait = after.map_or(backoff, |a| a.clamp(backoff, MAX_BACKOFF));
                    // Not Twilio's message: it may quote the number dialled.
                    tracing::warn!(
                        path,
                        attempt = attempt + 1,
                        "Twilio request failed, retrying in {wait:?}: {}",
                        err.brief()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(err),
            }
        }
    }
}

/// The wait before retry `attempt + 1`: doubling from [`BACKOFF`], never
/// past [`MAX_BACKOFF`] (nor wrapping to nothing after 32 doublings).
fn backoff(attempt: u32) -> Duration {
    BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// `value` as one path segment: a SID that came from outside (a `start`
/// message) cannot reach another resource with `/`, `..` or `?`.
fn segment(value: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
}

/// Twilio's `Retry-After` on a 429, in seconds.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: f32 = v.to_str().ok()?.trim().parse().ok()?;
    // Refuses NaN, negatives and more seconds than a Duration holds.
    Duration::try_from_secs_f32(secs).ok()
}

async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, RestError> {
    let status = resp.status().as_u16();
    resp.json().await.map_err(|e| RestError::Refused {
        status,
        code: None,
        message: format!("unreadable answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_never_wraps() {
        assert_eq!(backoff(0), BACKOFF);
        assert_eq!(backoff(1), BACKOFF * 2);
        for attempt in [5, 31, 32, 33, u32::MAX] {
            assert_eq!(backoff(attempt), MAX_BACKOFF, "{attempt}");
        }
    }

    #[test]
    fn sids_stay_one_path_segment() {
        assert_eq!(segment("CA0123abc").to_string(), "CA0123abc");
        assert_eq!(
            segment("CA1/../../Messages.json?x").to_string(),
            "CA1%2F%2E%2E%2F%2E%2E%2FMessages%2Ejson%3Fx"
        );
    }

    #[test]
    fn e164_numbers() {
        for good in ["+14155550100", "+442071838750", "+12"] {
            assert!(is_e164(good), "{good}");
        }
        for bad in [
            "",
            "+",
            "14155550100",
            "+0123456",
            "+1 415 555 0100",
            "+1415555010012345",
            "+1-415",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
