//! What the API backends share: a blocking HTTP client built on the thread
//! that first uses it, and error messages that say what went wrong on the
//! wire rather than reqwest's generic words.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

/// Where an API is, which of its models to use, and how long to wait.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Scheme, host and any leading path (e.g. `https://api.groq.com/openai/v1`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// See [`LazyClient::new`].
    pub timeout: Duration,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// Sends `request` to `url`; an answer other than 2xx becomes an error with
/// its status and the provider's own words (`api_error` reads them from the
/// body).
pub(crate) fn send(
    engine: &'static str,
    url: &str,
    request: reqwest::blocking::RequestBuilder,
    api_error: fn(&str) -> String,
) -> Result<reqwest::blocking::Response> {
    let response = request
        .send()
        .map_err(|e| Error::engine(engine, describe(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().unwrap_or_default();
    Err(Error::engine(
        engine,
        format!("{url}: HTTP {status}: {}", api_error(&body)),
    ))
}

/// A blocking client, built lazily: the engines run on their own threads,
/// and the blocking client starts a runtime of its own, which must not
/// happen on an async worker (where engines are constructed).
pub(crate) struct LazyClient {
    timeout: Duration,
    cell: OnceLock<std::result::Result<reqwest::blocking::Client, String>>,
}

impl LazyClient {
    /// `timeout` bounds connecting, the response's headers and each read
    /// of its body: a provider that stops sending fails the request after
    /// that long instead of holding the call.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            cell: OnceLock::new(),
        }
    }

    pub(crate) fn get(&self, engine: &'static str) -> Result<&reqwest::blocking::Client> {
        self.cell
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .connect_timeout(self.timeout)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::engine(engine, e))
    }
}

pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer in time: {e}")
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

/// A read of the body fails with an I/O error wrapping reqwest's own, whose
/// message ("error decoding response body") hides a timeout.
pub(crate) fn describe_io(e: &std::io::Error) -> String {
    let mut timed_out = e.kind() == std::io::ErrorKind::TimedOut;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(s) = source {
        timed_out |= s
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        source = s.source();
    }
    if timed_out {
        format!("nothing sent in time ({e})")
    } else {
        e.to_string()
    }
}
