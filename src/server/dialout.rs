//! `POST /dialout`: the owner asks the bot to call someone.
//!
//! Anyone who can reach this route could spend the owner's money, so it
//! takes a bearer token (compared in constant time) and is disabled when
//! none is configured. Twilio then dials and, when the person answers,
//! fetches `POST /twiml`, which connects the call to the usual websocket.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{error, unless_owner};
use super::AppState;
use crate::config::Config;
use crate::events::Direction;
use crate::persona::VARIABLE_PREFIX;
use crate::twilio::rest::{is_e164, RestError, TwilioRest};

/// Twilio's final statuses of a call: its line is free again.
pub(crate) const ENDED: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// How long a placed call may hold its line without streaming or a final
/// status: Twilio rings for 60 s unless told otherwise, and a status
/// callback that never arrives (a wrong public URL) must not cost a line
/// for ever.
const HOLD: Duration = Duration::from_secs(90);

/// Lines held for the calls we placed, from the moment we ask Twilio until
/// the call streams (the line becomes the call's) or ends unanswered. A
/// burst of dial-outs thus places no more calls than there are lines.
#[derive(Default)]
pub(crate) struct Reservations(Mutex<HashMap<String, (Slot, Instant)>>);

/// A placed call's entry, kept at most [`HOLD`].
enum Slot {
    /// Its line, until it streams or ends.
    Held(OwnedSemaphorePermit),
    /// Its final status came before its line was stored (Twilio can answer
    /// "failed" before our request returns): the line is never held.
    Ended,
}

impl Reservations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Slot, Instant)>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (_, since)| since.elapsed() < HOLD);
        m
    }

    fn hold(self: &Arc<Self>, call_sid: &str, line: OwnedSemaphorePermit) {
        {
            let mut m = self.lock();
            if let Some((Slot::Ended, _)) = m.remove(call_sid) {
                return;
            }
            m.insert(call_sid.to_string(), (Slot::Held(line), Instant::now()));
        }
        // Released at `HOLD` even if nothing else looks at the map again:
        // `lock` sweeps what has been held that long.
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            if let Some(me) = me.upgrade() {
                drop(me.lock());
            }
        });
    }

    /// Whether a line is held for `call_sid`.
    pub(crate) fn holds(&self, call_sid: &str) -> bool {
        matches!(self.lock().get(call_sid), Some((Slot::Held(_), _)))
    }

    /// The line held for `call_sid`, now the call's own.
    pub(crate) fn take(&self, call_sid: &str) -> Option<OwnedSemaphorePermit> {
        let mut m = self.lock();
        match m.remove(call_sid)? {
            (Slot::Held(line), _) => Some(line),
            ended => {
                m.insert(call_sid.to_string(), ended);
                None
            }
        }
    }

    /// Frees the line of a call that ended without streaming (or, if its
    /// line is not stored yet, sees that it never is).
    pub(crate) fn release(&self, call_sid: &str) {
        self.lock()
            .insert(call_sid.to_string(), (Slot::Ended, Instant::now()));
    }
}

/// The E.164 country calling code `number` starts with (`+1`, `+44`,
/// `+353`): ITU's plan, in which 1 and 7 stand alone, these two-digit codes
/// are assigned, and every other code has three digits.
pub(crate) fn country_code(number: &str) -> Option<&str> {
    const TWO: [&str; 43] = [
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95",
    ];
    let digits = number.strip_prefix('+')?;
    let len = match digits.as_bytes().first()? {
        b'1' | b'7' => 1,
        _ if digits.len() >= 2 && (TWO.contains(&&digits[..2]) || &digits[..2] == "98") => 2,
        _ => 3,
    };
    (digits.len() > len).then(|| &number[..=len])
}

/// Whether the configuration lets dial-out call `to` from `from`. Without
/// `twilio.dialout_prefixes`, the country of the configured caller ID — a
/// request cannot widen it by naming a caller ID abroad — or, with none
/// configured, of the request's.
fn allowed_destination(cfg: &Config, to: &str, from: &str) -> Result<(), String> {
    let prefixes: Vec<String> = match &cfg.twilio.dialout_prefixes {
        Some(p) => p.clone(),
        None => {
            let home = cfg.twilio.caller_id().unwrap_or_else(|| from.to_string());
            country_code(&home)
                .map(str::to_string)
                .into_iter()
                .collect()
        }
    };
    if prefixes.iter().any(|p| to.starts_with(p.as_str())) {
        return Ok(());
    }
    Err(format!(
        "dial-out may not call that number: twilio.dialout_prefixes allows {}",
        if prefixes.is_empty() {
            "nothing".to_string()
        } else {
            prefixes.join(", ")
        }
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DialRequest {
    pub(crate) to_number: Option<String>,
    pub(crate) from_number: Option<String>,
    /// Values for the persona's `{{name}}` placeholders, for this call.
    #[serde(default)]
    pub(crate) variables: BTreeMap<String, String>,
    /// One of `personas.named`, instead of the outbound persona.
    #[serde(default)]
    pub(crate) persona: Option<String>,
    /// Answering-machine detection for this call (else
    /// `twilio.machine_detection`).
    #[serde(default)]
    pub(crate) machine_detection: Option<bool>,
}

/// Variables one call may carry, and the longest value: they ride in the
/// TwiML URL Twilio fetches (at most 4,000 characters) and on to the
/// stream's parameters.
pub(crate) const MAX_VARIABLES: usize = 16;
pub(crate) const MAX_VALUE_CHARS: usize = 200;

/// A dial-out's context, checked: the named persona exists, the variables
/// are few, named and short, and together with the call's own values they
/// fill every placeholder of the persona (a missing one is the caller's
/// 400, not a blank in the greeting). The result is the `/twiml` query.
pub(crate) fn context(cfg: &Config, req: &DialRequest) -> Result<Vec<(String, String)>, DialError> {
    let bad = |m: String| Err(DialError::BadRequest(m));
    let persona = match &req.persona {
        None => &cfg.personas.outbound,
        Some(name) => match cfg.personas.named.get(name) {
            Some(p) => p,
            None => {
                return bad(format!(
                    "persona {name:?} is not configured (personas.named has {})",
                    cfg.personas
                        .named
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    };
    if req.variables.len() > MAX_VARIABLES {
        return bad(format!("at most {MAX_VARIABLES} variables"));
    }
    for (k, v) in &req.variables {
        if !crate::persona::is_variable_name(k) {
            return bad(format!(
                "variable {k:?}: names are lower-case letters, digits and _, at most 32"
            ));
        }
        if crate::persona::CALL_VARIABLES.contains(&k.as_str()) {
            return bad(format!("variable {k:?} is the call's own"));
        }
        if v.chars().count() > MAX_VALUE_CHARS || v.chars().any(char::is_control) {
            return bad(format!(
                "variable {k:?}: at most {MAX_VALUE_CHARS} characters, no control characters"
            ));
        }
    }
    let names = persona
        .placeholders()
        .map_err(|e| DialError::BadRequest(format!("the persona: {e}")))?;
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| !crate::persona::CALL_VARIABLES.contains(n) && !req.variables.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return bad(format!(
            "the persona needs variables {}",
            missing.join(", ")
        ));
    }
    let mut query: Vec<(String, String)> = req
        .persona
        .iter()
        .map(|p| ("persona".to_string(), p.clone()))
        .collect();
    query.extend(
        req.variables
            .iter()
            .map(|(k, v)| (format!("{VARIABLE_PREFIX}{k}"), v.clone())),
    );
    Ok(query)
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Dialed {
    pub call_sid: String,
    pub(crate) status: String,
    pub(crate) to_number: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("{0}")]
    BadRequest(String),
    /// A destination the configuration does not allow.
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "Twilio credentials are not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN \
         (or TWILIO_API_KEY and TWILIO_API_SECRET)"
    )]
    NoCredentials,
    #[error("Twilio did not place the call: {0}")]
    Twilio(#[from] RestError),
}

/// Places a call that Twilio connects back to the server at `base_url`
/// (its public `https://` URL): the TwiML webhook and status callbacks.
/// Shared by the route and `callbox dial`.
pub(crate) async fn dial(
    cfg: &Config,
    rest: Option<&TwilioRest>,
    req: &DialRequest,
    base_url: &str,
) -> Result<Dialed, DialError> {
    let (to, from) = numbers(cfg, req)?;
    let query = context(cfg, req)?;
    let rest = rest.ok_or(DialError::NoCredentials)?;
    let base = base_url.trim_end_matches('/');
    // The context travels in the URL Twilio fetches when the callee
    // answers: signed by Twilio, and the same whichever container takes it.
    let with_context = |path: &str| {
        if query.is_empty() {
            format!("{base}{path}")
        } else {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&query)
                .finish();
            format!("{base}{path}?{q}")
        }
    };
    let twiml = with_context("/twiml");
    // The machine's answer comes with the same context: the voicemail
    // message is filled from it, by whichever container takes it.
    let amd = req
        .machine_detection
        .unwrap_or(cfg.twilio.machine_detection)
        .then(|| with_context("/amd"));
    let call = rest
        .create_call(
            &to,
            &from,
            &twiml,
            &format!("{base}/status"),
            amd.as_deref(),
        )
        .await?;
    Ok(Dialed {
        call_sid: call.sid,
        status: "call_initiated".into(),
        to_number: to,
    })
}

/// The numbers to dial to and from, checked: a malformed request is refused
/// before Twilio is asked (and charged) anything.
pub(crate) fn numbers(cfg: &Config, req: &DialRequest) -> Result<(String, String), DialError> {
    let to = req
        .to_number
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DialError::BadRequest("to_number is required".into()))?;
    let from = req
        .from_number
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| cfg.twilio.caller_id())
        .ok_or_else(|| {
            DialError::BadRequest(
                "from_number is required (or configure twilio.from_number / TWILIO_PHONE_NUMBER)"
                    .into(),
            )
        })?;
    for (name, n) in [("to_number", to), ("from_number", from.as_str())] {
        if !is_e164(n) {
            return Err(DialError::BadRequest(format!(
                "{name} must be an E.164 number like +14155550100, not {n:?}"
            )));
        }
    }
    allowed_destination(cfg, to, &from).map_err(DialError::Forbidden)?;
    Ok((to.to_string(), from))
}

pub(super) async fn dialout(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(refused) = unless_owner(&app, &headers, "dial-out") {
        return refused;
    }
    let body = match super::read_body(&app, body).await {
        Ok(b) => b,
        Err(status) => return error(status, "the body was too large or too slow"),
    };
    let req: DialRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be JSON {{\"to_number\", \"from_number\", \"variables\", \"persona\"}}: {e}"),
            )
        }
    };
    // Checked before a line or the minute's budget is spent on it.
    if let Err(e) = numbers(&app.cfg, &req).and_then(|_| context(&app.cfg, &req)) {
        return dial_error(&app, e);
    }
    // The line first: a burst places no more calls than there are lines.
    if let Some(refusal) = app.turn_away(Direction::Outbound, None) {
        return error(StatusCode::SERVICE_UNAVAILABLE, refusal.reason());
    }
    let Some(line) = app.free_line(Direction::Outbound) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            super::Refusal::Busy.reason(),
        );
    };
    // One token today, but keyed by it so that more owners stay apart.
    let key = app.cfg.server.api_token().unwrap_or_default();
    if let Err(wait) = app.dial_rate.take(&key, Instant::now()) {
        app.metrics
            .refused
            .with_label_values(&["dialout_rate"])
            .inc();
        tracing::warn!("dial-out refused: over server.dialout_per_minute");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "at most {} calls a minute (server.dialout_per_minute)",
                app.cfg.server.dialout_per_minute
            ),
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    }
    let base = super::webhooks::public_base(&app.cfg, &headers);
    match dial(&app.cfg, app.twilio.as_ref(), &req, &base).await {
        Ok(d) => {
            app.reservations.hold(&d.call_sid, line);
            app.metrics.twilio_request("create_call", "ok");
            let to = crate::events::Redact::Digits.number(&d.to_number);
            tracing::info!(call = %d.call_sid, %to, "dialling");
            Json(d).into_response()
        }
        Err(e) => dial_error(&app, e),
    }
}

/// The answer to a dial-out that failed, logged and counted.
fn dial_error(app: &AppState, e: DialError) -> Response {
    match e {
        e @ DialError::BadRequest(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        e @ DialError::Forbidden(_) => {
            tracing::warn!("dial-out refused: {e}");
            error(StatusCode::FORBIDDEN, e.to_string())
        }
        e @ DialError::NoCredentials => {
            tracing::error!("dial-out: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        DialError::Twilio(e) => {
            app.metrics.twilio_request("create_call", "failed");
            // The owner's answer keeps Twilio's words; the log does not
            // (they may quote the number).
            tracing::error!("dial-out: {}", e.brief());
            error(StatusCode::BAD_GATEWAY, DialError::Twilio(e).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_follow_the_numbering_plan() {
        for (number, code) in [
            ("+14155550100", "+1"),
            ("+79161234567", "+7"),
            ("+442071838750", "+44"),
            ("+33142685300", "+33"),
            ("+353123456789", "+353"),
            ("+861012345678", "+86"),
            ("+97143999999", "+971"),
        ] {
            assert_eq!(country_code(number), Some(code), "{number}");
        }
        assert_eq!(country_code("14155550100"), None);
        assert_eq!(country_code("+44"), None);
    }

    #[tokio::test]
    async fn a_line_is_held_until_the_call_streams_or_ends_even_if_the_end_comes_first() {
        let lines = Arc::new(tokio::sync::Semaphore::new(2));
        let r = Arc::new(Reservations::default());
        r.hold("CA1", lines.clone().try_acquire_owned().unwrap());
        assert!(r.holds("CA1"));
        assert_eq!(lines.available_permits(), 1);
        r.release("CA1");
        assert_eq!(lines.available_permits(), 2);
        // Twilio's "failed" before our request returned.
        r.release("CA2");
        r.hold("CA2", lines.clone().try_acquire_owned().unwrap());
        assert!(!r.holds("CA2"));
        assert_eq!(lines.available_permits(), 2);
        // The stream takes the line over.
        r.hold("CA3", lines.clone().try_acquire_owned().unwrap());
        let line = r.take("CA3").expect("held");
        assert!(r.take("CA3").is_none());
        drop(line);
        assert_eq!(lines.available_permits(), 2);
    }

    #[test]
    fn destinations_default_to_the_caller_ids_country() {
        let mut cfg = Config::default();
        assert!(allowed_destination(&cfg, "+14155550123", "+14155550100").is_ok());
        assert!(allowed_destination(&cfg, "+442071838750", "+14155550100").is_err());
        // A configured caller ID fixes the country, whatever the request names.
        cfg.twilio.from_number = Some("+14155550100".into());
        assert!(allowed_destination(&cfg, "+442071838750", "+442071838700").is_err());
        cfg.twilio.dialout_prefixes = Some(vec!["+44".into(), "+1415".into()]);
        assert!(allowed_destination(&cfg, "+442071838750", "+14155550100").is_ok());
        assert!(allowed_destination(&cfg, "+12125550123", "+14155550100").is_err());
    }
}
