//! Deepgram's Aura over its `/v1/speak` websocket: the same voice as the
//! REST endpoint (`deepgram.rs`) without a request per sentence. Chosen by
//! a `wss://` (or `ws://`) base URL in `[tts.deepgram]`.
//!
//! A sentence is `Speak` then `Flush`; its audio streams back as binary
//! frames until `Flushed`. A caller who talks over the bot stops the
//! sentence with `Clear` (answered by `Cleared`), so the connection stays
//! usable. Connections are kept in a small pool shared by all calls: one
//! sentence at a time per connection, as the protocol requires, and none
//! opened twice when one is idle. A pooled connection the service has since
//! closed is replaced once, transparently; every other failure fails the
//! sentence with the service's reason, within the endpoint's timeout.

use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::deepgram_tts::{close_reason, refusal, sentence_stats, ws_request, Pcm16};
use super::http::Endpoint;
use crate::audio::Audio;
use crate::engines::{SynthesisStats, Tts};
use crate::error::{Error, Result};

const ENGINE: &str = "deepgram-tts";

/// The phone's own rate, as for the REST endpoint.
const RATE: u32 = 8000;

/// Idle connections kept for the next sentence.
const POOL: usize = 16;

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

pub struct DeepgramSpeakWs {
    endpoint: Endpoint,
    idle: Mutex<Vec<Socket>>,
}

impl DeepgramSpeakWs {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn connect(&self) -> Result<Socket> {
        let e = &self.endpoint;
        let url = format!(
            "{}?model={}&encoding=linear16&sample_rate={RATE}",
            e.url("/v1/speak"),
            e.model
        );
        let err = |m: String| Error::engine(ENGINE, format!("{url}: {m}"));
        let request = ws_request(&url, e.api_key.as_deref()).map_err(err)?;
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let secure = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|x| err(format!("cannot resolve: {x}")))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let tcp = TcpStream::connect_timeout(&addr, e.timeout)
            .map_err(|x| err(format!("cannot connect: {x}")))?;
        // Bounds every later read and write: a stalled service fails the
        // sentence instead of holding the call.
        tcp.set_read_timeout(Some(e.timeout))
            .and_then(|_| tcp.set_write_timeout(Some(e.timeout)))
            .and_then(|_| tcp.set_nodelay(true))
            .map_err(|x| err(x.to_string()))?;
        match tungstenite::client_tls(request, tcp) {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                Err(err(refusal(&r)))
            }
            Err(x) => Err(err(format!("handshake failed: {x}"))),
        }
    }

    /// One sentence on `socket`. `Ok(None)`: the socket turned out to be
    /// closed before anything was heard, so the sentence may be retried on a
    /// fresh one.
    fn speak_on(
        &self,
        socket: &mut Socket,
        text: &str,
        on_audio: &mut dyn FnMut(Audio) -> bool,
        stats: &mut SynthesisStats,
        t0: Instant,
    ) -> Result<Option<()>> {
        let err = |m: String| Error::engine(ENGINE, m);
        let sent = socket
            .send(Message::text(
                json!({"type": "Speak", "text": text}).to_string(),
            ))
            .and_then(|_| socket.send(Message::text(r#"{"type":"Flush"}"#)));
        match sent {
            Err(x) if closed(&x) => return Ok(None),
            Err(x) => return Err(err(format!("sending the text: {x}"))),
            Ok(()) => {}
        }
        let mut pcm = Pcm16::default();
        let mut heard_any = false;
        let mut clearing = false;
        loop {
            let msg = match socket.read() {
                Ok(m) => m,
                Err(x) if !heard_any && closed(&x) => return Ok(None),
                Err(tungstenite::Error::Io(x))
                    if matches!(
                        x.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(err(format!(
                        "nothing sent in time ({:.1} s)",
                        self.endpoint.timeout.as_secs_f64()
                    )))
                }
                Err(x) => return Err(err(format!("reading the audio: {x}"))),
            };
            heard_any = true;
            match msg {
                Message::Binary(b) if !clearing => {
                    let more = pcm.hand_on(&b, stats, t0, on_audio);
                    if !more {
                        // Stop the rest of the sentence; the connection stays.
                        clearing = true;
                        socket
                            .send(Message::text(r#"{"type":"Clear"}"#))
                            .map_err(|x| err(format!("sending Clear: {x}")))?;
                    }
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("Flushed") if !clearing => return Ok(Some(())),
                        Some("Cleared") => return Ok(Some(())),
                        Some("Warning") => tracing::warn!("deepgram: {t:.300}"),
                        _ => {}
                    }
                }
                Message::Close(frame) => return Err(err(close_reason(frame))),
                _ => {}
            }
        }
    }
}

impl Tts for DeepgramSpeakWs {
    fn sample_rate(&self) -> u32 {
        RATE
    }

    fn synthesize(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(Audio) -> bool,
    ) -> Result<SynthesisStats> {
        let t0 = Instant::now();
        let mut stats = sentence_stats(text);
        if text.trim().is_empty() {
            return Ok(stats);
        }
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let fresh = pooled.is_none();
        let mut socket = match pooled {
            Some(s) => s,
            None => self.connect()?,
        };
        let mut spoken = self.speak_on(&mut socket, text, on_audio, &mut stats, t0)?;
        if spoken.is_none() && !fresh {
            // The service closed this pooled connection while it was idle.
            socket = self.connect()?;
            spoken = self.speak_on(&mut socket, text, on_audio, &mut stats, t0)?;
        }
        if spoken.is_none() {
            return Err(Error::engine(
                ENGINE,
                "the connection closed before any answer",
            ));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL {
            idle.push(socket);
        }
        stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }
}

/// The connection is gone (as opposed to slow or refusing).
fn closed(e: &tungstenite::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => true,
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => true,
        tungstenite::Error::Io(x) => matches!(
            x.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        _ => false,
    }
}
