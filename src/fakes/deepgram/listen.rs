//! The fake's listen websocket: audio up, `Results` down.

use super::*;

pub(super) async fn listen(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let log = Arc::new(Mutex::new(ListenLog {
        query: query.clone(),
        authorised: authorised(&headers),
        ..ListenLog::default()
    }));
    fake.connections.lock().unwrap().push(log.clone());
    if !authorised(&headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTH",
            "Invalid credentials.",
        );
    }
    let b = *fake.listen.lock().unwrap();
    if let ListenMode::Refuse(code, why) = b.mode {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return refuse(code, "REFUSED", why);
    }
    let rate = query.get("sample_rate").and_then(|r| r.parse::<u32>().ok());
    let (Some(ears), Some(rate), Some("linear16")) = (
        fake.ears.clone(),
        rate,
        query.get("encoding").map(String::as_str),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake hears linear16 with a sample_rate only",
        );
    };
    ws.on_upgrade(move |socket| async move {
        let _ = Listener::new(ears, rate, b, log).run(socket).await;
    })
}

/// One listen connection: the audio so far and how much of it is final.
struct Listener {
    ears: Arc<dyn Stt>,
    rate: u32,
    behaviour: ListenBehaviour,
    log: Arc<Mutex<ListenLog>>,
    audio: Vec<i16>,
    /// Samples already covered by final results.
    finalised: usize,
    /// Samples when the last interim was sent.
    interim_at: usize,
}

/// Deepgram closes a stream that sends nothing for this long.
const IDLE: Duration = Duration::from_secs(10);

impl Listener {
    fn new(
        ears: Arc<dyn Stt>,
        rate: u32,
        behaviour: ListenBehaviour,
        log: Arc<Mutex<ListenLog>>,
    ) -> Self {
        Self {
            ears,
            rate,
            behaviour,
            log,
            audio: Vec::new(),
            finalised: 0,
            interim_at: 0,
        }
    }

    fn secs(&self, samples: usize) -> f64 {
        samples as f64 / self.rate as f64
    }

    async fn run(mut self, mut socket: WebSocket) -> Result<(), axum::Error> {
        loop {
            let msg = match tokio::time::timeout(IDLE, socket.recv()).await {
                Err(_) => {
                    return close(socket, "NET-0001: no audio received within the timeout").await
                }
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Binary(bytes) => {
                    self.audio.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]])),
                    );
                    let heard = self.secs(self.audio.len());
                    self.log.lock().unwrap().audio_secs = heard;
                    match self.behaviour.mode {
                        ListenMode::DropAfter(s) if heard >= s as f64 => return Ok(()),
                        ListenMode::CloseAfter(s) if heard >= s as f64 => {
                            return close(socket, "DATA-0000: the audio could not be decoded").await
                        }
                        _ => {}
                    }
                    if let Some(every) = self.behaviour.interim_every {
                        let step = (every.as_secs_f64() * self.rate as f64) as usize;
                        if self.audio.len() >= self.interim_at + step {
                            self.interim_at = self.audio.len();
                            let r = self.result(false, false).await;
                            socket.send(Message::text(r.to_string())).await?;
                        }
                    }
                }
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("KeepAlive") => self.log.lock().unwrap().keepalives += 1,
                        Some("Finalize") => {
                            self.log.lock().unwrap().finalizes += 1;
                            if matches!(self.behaviour.mode, ListenMode::IgnoreFinalize) {
                                continue;
                            }
                            let asked = Instant::now();
                            let r = self.result(true, true).await;
                            let wait = self
                                .behaviour
                                .finalize_latency
                                .saturating_sub(asked.elapsed());
                            tokio::time::sleep(wait).await;
                            socket.send(Message::text(r.to_string())).await?;
                        }
                        Some("CloseStream") => {
                            self.log.lock().unwrap().close_stream = true;
                            if self.audio.len() > self.finalised {
                                let r = self.result(true, false).await;
                                socket.send(Message::text(r.to_string())).await?;
                            }
                            let meta = json!({"type": "Metadata", "request_id": "00000000-fake",
                                "duration": self.secs(self.audio.len()), "channels": 1});
                            socket.send(Message::text(meta.to_string())).await?;
                            return socket.send(Message::Close(None)).await;
                        }
                        _ => {
                            return close(
                                socket,
                                "DATA-0000: a text message that is not a control message",
                            )
                            .await
                        }
                    }
                }
                Message::Close(_) => return Ok(()),
                _ => {}
            }
        }
    }

    /// A `Results` message for the audio not yet final: final ones cover it
    /// for good, interim ones only say what has been heard so far.
    async fn result(&mut self, is_final: bool, from_finalize: bool) -> Value {
        let (from, to) = (self.finalised, self.audio.len());
        let text = self.recognise(from, to).await;
        if is_final {
            self.finalised = to;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let (start, duration) = (self.secs(from), self.secs(to - from));
        let step = duration / words.len().max(1) as f64;
        let words: Vec<Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let bare: String = w
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .collect();
                json!({"word": bare.to_lowercase(), "punctuated_word": w, "confidence": 0.99,
                       "start": start + step * i as f64, "end": start + step * (i + 1) as f64})
            })
            .collect();
        {
            let mut log = self.log.lock().unwrap();
            if is_final {
                log.finals.push(text.clone());
            } else {
                log.interims.push(text.clone());
            }
        }
        json!({
            "type": "Results", "channel_index": [0, 1], "start": start, "duration": duration,
            "is_final": is_final, "speech_final": is_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": words}]},
            "metadata": {"request_id": "00000000-fake", "model_uuid": "fake", "model_info": {"name": "fake", "version": "0", "arch": "fake"}}
        })
    }

    /// What was said between two positions: the speech in it (by energy;
    /// silence alone is no words) through our STT.
    async fn recognise(&self, from: usize, to: usize) -> String {
        let audio = Audio::from_i16(&self.audio[from..to], self.rate);
        let Some((first, last)) = crate::audio::loud_extent(&audio.samples, self.rate, -45.0, 20)
        else {
            return String::new();
        };
        let pad = (self.rate as usize) / 4;
        let a = first.saturating_sub(pad);
        let b = (last + pad).min(audio.samples.len());
        let speech = Audio::new(audio.samples[a..b].to_vec(), self.rate);
        let ears = self.ears.clone();
        match tokio::task::spawn_blocking(move || ears.transcribe(&speech)).await {
            Ok(Ok(t)) => t.text.trim().to_string(),
            _ => String::new(),
        }
    }
}

/// Ends a listen connection the way Deepgram does when something is wrong:
/// a close frame with code 1011 and the reason.
async fn close(mut socket: WebSocket, reason: &str) -> Result<(), axum::Error> {
    socket
        .send(Message::Close(Some(CloseFrame {
            code: 1011,
            reason: reason.into(),
        })))
        .await
}
