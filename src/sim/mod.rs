//! A simulated Twilio caller over the real websocket.
//!
//! It plays Twilio's part: `connected` and `start`, then 20 ms μ-law frames
//! in real time — speech for its turns, silence in between — while it plays
//! the bot's audio through a simulated phone buffer: marks are echoed when
//! the audio before them has played, `clear` empties the buffer and echoes
//! every pending mark, as Twilio does. Optionally it feeds the bot's own
//! audio back, attenuated and late, like a speakerphone.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::audio::{ulaw, Audio};
use crate::twilio::twiml::StreamTarget;

const FRAME: usize = 160;

#[derive(Debug, Clone)]
pub struct SimTurn {
    /// 8 kHz speech.
    pub(crate) audio: Audio,
    /// What is said, when known (for the report).
    pub text: Option<String>,
    /// Start this turn this long after the bot's reply to the previous turn
    /// began to arrive, talking over it, instead of waiting for it to end.
    pub barge_in_after_ms: Option<u64>,
    /// Digits to press before speaking.
    pub dtmf: Option<String>,
    /// A listener's "uh-huh" over the bot (with `barge_in_after_ms`): no
    /// reply is expected, and the bot's audio that follows still answers
    /// the turn before.
    pub(crate) backchannel: bool,
}

impl SimTurn {
    pub fn new(audio: Audio, text: Option<String>) -> Self {
        Self {
            audio: audio.resampled(8000),
            text,
            barge_in_after_ms: None,
            dtmf: None,
            backchannel: false,
        }
    }

    /// `self`, spoken `after_ms` into the previous turn's reply as a
    /// backchannel.
    pub fn backchannel(mut self, after_ms: u64) -> Self {
        self.barge_in_after_ms = Some(after_ms);
        self.backchannel = true;
        self
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub url: String,
    pub call_sid: String,
    /// The Twilio account the call belongs to: in the webhook and in
    /// `start`, as stream tokens are bound to both.
    pub account_sid: String,
    pub params: HashMap<String, String>,
    pub turns: Vec<SimTurn>,
    /// Silence between the end of a reply and the next turn.
    pub(crate) pause_secs: f32,
    /// Longest wait for a reply.
    pub reply_timeout_secs: f32,
    /// Silence after the last reply before hanging up.
    pub linger_secs: f32,
    /// Hang up this long into the last turn's reply instead of hearing it
    /// out: the caller who has heard enough.
    pub hang_up_after_ms: Option<u64>,
    /// Feed the bot's audio back: (attenuation in dB, delay in ms).
    pub echo: Option<(f32, u64)>,
    /// Wait for the greeting before the first turn.
    pub(crate) expect_greeting: bool,
    /// Sign as Twilio does with this auth token: the webhook and the
    /// websocket upgrade.
    pub auth_token: Option<String>,
    /// Play Twilio's webhook first: POST the call here and open the stream
    /// with the parameters of the TwiML it answers (its one-time token
    /// included). Without it the stream starts with `params` alone.
    pub(crate) webhook: Option<String>,
    /// Open the stream the webhook's TwiML names instead of `url`: a bot
    /// known only by its webhook, as Twilio knows it.
    pub(crate) follow_twiml: bool,
    /// Told the index of each turn when it is over (answered or given up
    /// on): a benchmark's progress.
    pub(crate) progress: Option<tokio::sync::mpsc::UnboundedSender<usize>>,
    /// Ends the stream as Twilio does when the call moves on to other
    /// TwiML (a redirect): `stop`, and the report so far.
    pub stop: Option<tokio_util::sync::CancellationToken>,
}

impl SimOptions {
    pub fn new(url: impl Into<String>, turns: Vec<SimTurn>) -> Self {
        Self {
            url: url.into(),
            call_sid: call_sid(),
            account_sid: SIM_ACCOUNT.into(),
            params: HashMap::from([("direction".to_string(), "inbound".to_string())]),
            turns,
            pause_secs: 0.8,
            reply_timeout_secs: 20.0,
            linger_secs: 0.5,
            hang_up_after_ms: None,
            echo: None,
            expect_greeting: true,
            auth_token: None,
            webhook: None,
            follow_twiml: false,
            progress: None,
            stop: None,
        }
    }

    /// An incoming call as Twilio places it on a validating server: a
    /// signed `POST /` next to the websocket, then the stream with the
    /// token the TwiML issued.
    pub fn signed(mut self, auth_token: &str) -> Self {
        // An unparsable URL stays as it is, for the POST to report.
        let webhook = reqwest::Url::parse(&self.url).ok().and_then(|mut u| {
            let scheme = if u.scheme() == "wss" { "https" } else { "http" };
            u.set_scheme(scheme).ok()?;
            u.set_path("/");
            u.set_query(None);
            Some(u.to_string())
        });
        self.webhook = Some(webhook.unwrap_or_else(|| self.url.clone()));
        self.auth_token = Some(auth_token.to_string());
        self
    }

    /// A call to whatever server the TwiML webhook at `url` connects, as
    /// Twilio places it: the webhook POSTed (signed when `auth_token` is
    /// given), then the stream its `<Connect><Stream>` names.
    pub(crate) fn via_webhook(url: &str, auth_token: Option<&str>, turns: Vec<SimTurn>) -> Self {
        let mut opts = Self::new(String::new(), turns);
        opts.webhook = Some(url.to_string());
        opts.follow_twiml = true;
        opts.auth_token = auth_token.map(str::to_string);
        opts
    }
}

#[derive(Debug, Clone, Default)]
pub struct SimTurnReport {
    pub index: usize,
    pub said: Option<String>,
    /// End of the caller's speech → first bot audio received.
    pub latency_ms: Option<f64>,
    /// The bot's audio received for this turn (8 kHz).
    pub bot_audio: Vec<i16>,
    /// A `clear` arrived while this turn's reply played.
    pub cleared: bool,
    /// More of the reply came after the `clear`: the bot paused (for a
    /// backchannel) and went on.
    pub resumed: bool,
    /// Bot audio received while this turn was still being spoken (8 kHz
    /// samples): the rest of the previous reply when talking over it,
    /// otherwise a bot that did not wait for the caller to finish.
    pub audio_while_speaking: usize,
    /// A backchannel spoken over the previous reply (no reply of its own).
    pub(crate) backchannel: bool,
    /// When the bot's first audio for this turn arrived, in ms from the
    /// stream's start (the server's clock for the call starts with it, give
    /// or take the network): matches the reply to the server's record.
    pub(crate) first_audio_at_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub greeting_ms: Option<f64>,
    pub greeting_audio: Vec<i16>,
    pub turns: Vec<SimTurnReport>,
    pub clears: Vec<Duration>,
    pub marks_echoed: usize,
    pub(crate) media_messages: usize,
    /// Media payloads Twilio would not play: not base64, or empty. (Any
    /// length is played; ours are whole 20 ms frames, Pipecat's 40 ms
    /// chunks, others' whatever their TTS gave.)
    pub invalid_media: usize,
    /// Largest amount of bot audio buffered ahead of playback.
    pub max_lead_ms: f64,
    /// 20 ms ticks when the phone's buffer ran dry in the middle of a
    /// sentence (between two of its frames, before its mark): audio that
    /// came late, heard as a gap.
    pub(crate) late_frames: usize,
    pub(crate) caller_track: Vec<i16>,
    pub(crate) bot_track: Vec<i16>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Greeting,
    Pause(Instant),
    Speaking(usize, usize),
    Waiting(usize, Instant),
    Linger(Instant),
}

/// POSTs `form` to `to` with the signature Twilio gives it for
/// `signed_url`, the public URL it was told (behind a TLS-terminating proxy
/// the two differ).
pub async fn post_signed(
    auth_token: &str,
    signed_url: &str,
    to: &str,
    form: &[(String, String)],
) -> anyhow::Result<reqwest::Response> {
    let signature = crate::twilio::signature::sign(auth_token, signed_url, form);
    Ok(reqwest::Client::new()
        .post(to)
        .header("X-Twilio-Signature", signature)
        .form(form)
        .send()
        .await?)
}

/// Twilio's side of a webhook: POST `form` to `url`, signed with
/// `auth_token`, and read the stream the TwiML answer connects.
pub async fn webhook(
    url: &str,
    auth_token: &str,
    form: &[(String, String)],
) -> anyhow::Result<StreamTarget> {
    let resp = post_signed(auth_token, url, url, form).await?;
    let status = resp.status();
    let twiml = resp.text().await?;
    anyhow::ensure!(status.is_success(), "webhook answered {status}: {twiml}");
    crate::twilio::twiml::parse_stream(&twiml)
        .ok_or_else(|| anyhow::anyhow!("no stream in the TwiML: {twiml}"))
}

/// A fresh call SID of Twilio's shape (`CA` and 32 hex digits), which the
/// server requires of every stream it validates.
pub fn call_sid() -> String {
    format!("CA{:032x}", rand::random::<u128>())
}

/// The account of simulated calls.
pub const SIM_ACCOUNT: &str = "ACsim";

/// The form Twilio posts when a call to our number comes in.
pub fn incoming_form(call_sid: &str) -> Vec<(String, String)> {
    incoming_form_of(call_sid, SIM_ACCOUNT)
}

/// The same, for a call of the account `account_sid`.
pub(crate) fn incoming_form_of(call_sid: &str, account_sid: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", account_sid),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+15005550006"),
        ("To", "+15005550001"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub async fn run(mut opts: SimOptions) -> anyhow::Result<SimReport> {
    if let Some(url) = &opts.webhook {
        let token = opts.auth_token.as_deref().unwrap_or_default();
        let form = incoming_form_of(&opts.call_sid, &opts.account_sid);
        let target = webhook(url, token, &form).await?;
        opts.params.extend(target.params);
        if opts.follow_twiml {
            opts.url = target.url;
        }
    }
    let mut request = opts.url.as_str().into_client_request()?;
    if let Some(token) = &opts.auth_token {
        let sig = crate::twilio::signature::sign(token, &opts.url, &[]);
        request
            .headers_mut()
            .insert("X-Twilio-Signature", sig.parse()?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut tx, mut rx) = ws.split();
    let stream_sid = format!("MZsim{:08x}", rand::random::<u32>());
    tx.send(Message::text(
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
    ))
    .await?;
    tx.send(Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
               "start": {"streamSid": stream_sid, "accountSid": opts.account_sid, "callSid": opts.call_sid,
                         "tracks": ["inbound"], "customParameters": opts.params,
                         "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        .to_string(),
    ))
    .await?;

    let t0 = Instant::now();
    let mut report = SimReport::default();
    let mut buffer: VecDeque<i16> = VecDeque::new();
    let mut received = 0usize;
    let mut played = 0usize;
    let mut marks: VecDeque<(String, usize)> = VecDeque::new();
    let mut last_media = t0;
    // Within a sentence (media since its last mark), and for how many ticks
    // the phone has had nothing to play.
    let (mut in_piece, mut dry) = (false, 0usize);
    let mut seq = 1u64;
    let mut phase = if opts.expect_greeting {
        Phase::Greeting
    } else {
        Phase::Pause(t0)
    };
    // Which report the incoming bot audio belongs to: None = greeting.
    let mut current: Option<usize> = None;
    let mut speech_end: Option<Instant> = None;
    let mut reply_started: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);

    let stopped = opts.stop.clone().unwrap_or_default();
    // The server may close the stream while we send (the bot hung up):
    // that ends the call like its own close does.
    let played: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = stopped.cancelled(), if opts.stop.is_some() => break,
                msg = rx.next() => {
                    let Some(msg) = msg else { break };
                    let Message::Text(text) = msg? else { continue };
                    let v: serde_json::Value = serde_json::from_str(&text)?;
                    match v["event"].as_str() {
                        Some("media") => {
                            report.media_messages += 1;
                            let payload = v["media"]["payload"].as_str().unwrap_or("");
                            use base64::Engine;
                            match base64::engine::general_purpose::STANDARD.decode(payload) {
                                Ok(b) if !b.is_empty() => {
                                    let pcm = ulaw::decode(&b);
                                    // The sentence went on after a dry spell.
                                    report.late_frames += std::mem::take(&mut dry);
                                    in_piece = true;
                                    received += pcm.len();
                                    buffer.extend(pcm.iter().copied());
                                    last_media = Instant::now();
                                    match current {
                                        None => {
                                            report.greeting_ms.get_or_insert(ms(t0.elapsed()));
                                            report.greeting_audio.extend(&pcm);
                                        }
                                        Some(i) => {
                                            let r = &mut report.turns[i];
                                            if speech_end.is_none() {
                                                r.audio_while_speaking += pcm.len();
                                            }
                                            if r.latency_ms.is_none() {
                                                if let Some(end) = speech_end {
                                                    r.latency_ms = Some(ms(end.elapsed()));
                                                    r.first_audio_at_ms = Some(ms(t0.elapsed()));
                                                    reply_started = Some(Instant::now());
                                                }
                                            }
                                            r.resumed |= r.cleared;
                                            r.bot_audio.extend(&pcm);
                                        }
                                    }
                                    let lead = (received - played) as f64 / 8.0;
                                    report.max_lead_ms = report.max_lead_ms.max(lead);
                                }
                                _ => report.invalid_media += 1,
                            }
                        }
                        Some("mark") => {
                            // A sentence ended: silence after it is no gap in it.
                            (in_piece, dry) = (false, 0);
                            let name = v["mark"]["name"].as_str().unwrap_or("").to_string();
                            marks.push_back((name, received));
                        }
                        Some("clear") => {
                            (in_piece, dry) = (false, 0);
                            report.clears.push(t0.elapsed());
                            played += buffer.len();
                            received = played;
                            buffer.clear();
                            // While a barge-in is being spoken, the reply
                            // cleared is the previous turn's.
                            let barging = current.is_some_and(|i| {
                                i > 0 && speech_end.is_none() && opts.turns[i].barge_in_after_ms.is_some()
                            });
                            if let Some(i) = current {
                                report.turns[if barging { i - 1 } else { i }].cleared = true;
                            }
                            while let Some((name, _)) = marks.pop_front() {
                                send_mark(&mut tx, &stream_sid, &name).await?;
                                report.marks_echoed += 1;
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    // Play 20 ms of the bot.
                    let mut out = [0i16; FRAME];
                    for s in out.iter_mut() {
                        if let Some(v) = buffer.pop_front() {
                            *s = v;
                            played += 1;
                        }
                    }
                    if buffer.is_empty() && in_piece {
                        dry += 1;
                    }
                    report.bot_track.extend_from_slice(&out);
                    while marks.front().is_some_and(|(_, at)| *at <= played) {
                        let (name, _) = marks.pop_front().unwrap();
                        send_mark(&mut tx, &stream_sid, &name).await?;
                        report.marks_echoed += 1;
                    }
                    let idle = buffer.is_empty() && now.duration_since(last_media) > Duration::from_millis(800);

                    // The caller's next 20 ms.
                    let mut frame = [0i16; FRAME];
                    phase = match phase {
                        Phase::Greeting => {
                            if (report.greeting_ms.is_some() && idle) || now.duration_since(t0) > Duration::from_secs_f32(opts.reply_timeout_secs) {
                                Phase::Pause(now + Duration::from_secs_f32(opts.pause_secs))
                            } else { phase }
                        }
                        Phase::Pause(until) if now >= until => {
                            let i = report.turns.len();
                            if i >= opts.turns.len() {
                                Phase::Linger(now + Duration::from_secs_f32(opts.linger_secs))
                            } else {
                                start_turn(&opts, i, &mut report, &mut tx, &stream_sid, &mut current).await?;
                                if !opts.turns[i].backchannel {
                                    speech_end = None;
                                }
                                Phase::Speaking(i, 0)
                            }
                        }
                        Phase::Speaking(i, off) => {
                            let a = &opts.turns[i].audio.samples;
                            for (k, s) in frame.iter_mut().enumerate() {
                                if let Some(&v) = a.get(off + k) {
                                    *s = crate::audio::f32_to_i16(v);
                                }
                            }
                            if off + FRAME >= a.len() && opts.turns[i].backchannel {
                                // Back to listening to the reply it kept going.
                                Phase::Waiting(current.unwrap_or(i), now)
                            } else if off + FRAME >= a.len() {
                                speech_end = Some(now + Duration::from_millis(20));
                                reply_started = None;
                                Phase::Waiting(i, now)
                            } else {
                                Phase::Speaking(i, off + FRAME)
                            }
                        }
                        Phase::Waiting(i, since) => {
                            // The next turn to speak: after a backchannel, not i + 1.
                            let n = report.turns.len();
                            let next = opts.turns.get(n);
                            let barge = next.and_then(|t| t.barge_in_after_ms).zip(reply_started)
                                .is_some_and(|(after, at)| now.duration_since(at) >= Duration::from_millis(after));
                            let hang_up = n == opts.turns.len()
                                && opts.hang_up_after_ms.zip(reply_started)
                                    .is_some_and(|(after, at)| now.duration_since(at) >= Duration::from_millis(after));
                            if hang_up {
                                break;
                            }
                            let replied = report.turns[i].latency_ms.is_some() && idle;
                            let timeout = now.duration_since(since) > Duration::from_secs_f32(opts.reply_timeout_secs);
                            if barge || replied || timeout {
                                if let Some(p) = &opts.progress {
                                    let _ = p.send(i);
                                }
                            }
                            if barge {
                                start_turn(&opts, n, &mut report, &mut tx, &stream_sid, &mut current).await?;
                                if !opts.turns[n].backchannel {
                                    speech_end = None;
                                }
                                Phase::Speaking(n, 0)
                            } else if replied || timeout {
                                Phase::Pause(now + Duration::from_secs_f32(opts.pause_secs))
                            } else { phase }
                        }
                        Phase::Linger(until) if now >= until => break,
                        p => p,
                    };
                    if let Some((db, delay_ms)) = opts.echo {
                        let gain = 10f32.powf(-db / 20.0);
                        let lag = (delay_ms as usize) * 8;
                        let n = report.bot_track.len();
                        for (k, s) in frame.iter_mut().enumerate() {
                            let idx = (n - FRAME + k).checked_sub(lag);
                            if let Some(e) = idx.and_then(|j| report.bot_track.get(j)) {
                                *s = s.saturating_add((*e as f32 * gain) as i16);
                            }
                        }
                    }
                    report.caller_track.extend_from_slice(&frame);
                    seq += 1;
                    let chunk = seq - 1;
                    use base64::Engine;
                    let payload = base64::engine::general_purpose::STANDARD.encode(ulaw::encode(&frame));
                    tx.send(Message::text(json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": stream_sid,
                        "media": {"track": "inbound", "chunk": chunk.to_string(), "timestamp": (chunk * 20).to_string(), "payload": payload}}).to_string())).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = played {
        use tokio_tungstenite::tungstenite::{error::ProtocolError, Error as WsError};
        let closed = matches!(
            e.downcast_ref::<WsError>(),
            Some(
                WsError::AlreadyClosed
                    | WsError::ConnectionClosed
                    | WsError::Protocol(ProtocolError::SendAfterClosing)
            )
        );
        if !closed {
            return Err(e);
        }
    }
    seq += 1;
    let _ = tx
        .send(Message::text(
            json!({"event": "stop", "sequenceNumber": seq.to_string(), "streamSid": stream_sid,
                   "stop": {"accountSid": opts.account_sid, "callSid": opts.call_sid}})
            .to_string(),
        ))
        .await;
    let _ = tx.close().await;
    Ok(report)
}

async fn start_turn<S>(
    opts: &SimOptions,
    i: usize,
    report: &mut SimReport,
    tx: &mut S,
    stream_sid: &str,
    current: &mut Option<usize>,
) -> anyhow::Result<()>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(digits) = &opts.turns[i].dtmf {
        for d in digits.chars() {
            tx.send(Message::text(
                json!({"event": "dtmf", "streamSid": stream_sid, "sequenceNumber": "0",
                       "dtmf": {"track": "inbound_track", "digit": d.to_string()}})
                .to_string(),
            ))
            .await?;
        }
    }
    report.turns.push(SimTurnReport {
        index: i,
        said: opts.turns[i].text.clone(),
        backchannel: opts.turns[i].backchannel,
        ..Default::default()
    });
    // A backchannel's report stays empty: the bot's audio meanwhile is
    // still the reply to the turn before.
    if !opts.turns[i].backchannel {
        *current = Some(i);
    }
    Ok(())
}

async fn send_mark<S>(tx: &mut S, stream_sid: &str, name: &str) -> anyhow::Result<()>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    tx.send(Message::text(
        json!({"event": "mark", "streamSid": stream_sid, "sequenceNumber": "0", "mark": {"name": name}}).to_string(),
    ))
    .await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
