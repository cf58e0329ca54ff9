//! The fake's speak API: the REST endpoint and the websocket.

use super::*;

pub(super) async fn speak(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorised = authorised(&headers);
    fake.requests.lock().unwrap().push(Request {
        query: query.clone(),
        body: body.clone(),
        authorised,
    });
    let b = *fake.behaviour.lock().unwrap();
    if let Some(refused) = refusal(&headers, &b, error) {
        return refused;
    }
    let (Some(text), Some(rate)) = (
        body["text"].as_str(),
        query.get("sample_rate").and_then(|r| r.parse::<u32>().ok()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "text and sample_rate are required",
        );
    };
    if query.get("encoding").map(String::as_str) != Some("linear16")
        || query.get("container").map(String::as_str) != Some("none")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake speaks raw linear16 only",
        );
    }
    let t0 = Instant::now();
    let pcm = match fake.say(text, rate).await {
        Ok(pcm) => pcm,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "FAKE_VOICE", &e),
    };
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        tokio::time::sleep(b.first_byte.saturating_sub(t0.elapsed())).await;
        let mut sent = 0;
        for piece in bytes.chunks(b.piece) {
            match b.mode {
                Mode::DropAfter(n) if sent >= n => {
                    let _ = tx
                        .send(Err(std::io::Error::other("connection reset")))
                        .await;
                    return;
                }
                Mode::StallAfter(n) if sent >= n => std::future::pending::<()>().await,
                _ => {}
            }
            if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                return;
            }
            sent += piece.len();
            tokio::time::sleep(b.per_piece).await;
        }
    });
    streamed("audio/l16", rx)
}

/// The speak websocket: `Speak` texts gather in a buffer, which is spoken
/// as soon as it ends a sentence (Deepgram generates from its buffer
/// without waiting for more text; a client that sends a reply sentence by
/// sentence and flushes only at its end, as Pipecat does, hears the first
/// sentence at once); `Flush` speaks whatever is left and is answered with
/// `Flushed` after the audio; `Clear` drops what is still to be sent and
/// answers `Cleared`; `Close` ends it. The behaviour's modes apply as on the
/// REST endpoint, counting the connection's bytes.
pub(super) async fn speak_ws(
    State(fake): State<Arc<FakeDeepgram>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let b = *fake.behaviour.lock().unwrap();
    if let Some(refused) = refusal(&headers, &b, refuse) {
        return refused;
    }
    let rate = query.get("sample_rate").and_then(|r| r.parse::<u32>().ok());
    let (Some(rate), Some("linear16")) = (rate, query.get("encoding").map(String::as_str)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "this fake speaks linear16 with a sample_rate only",
        );
    };
    fake.speak_sockets
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ws.on_upgrade(move |socket| speak_session(fake, socket, query, rate, b))
}

enum Out {
    Audio(Bytes),
    Flushed(u64),
}

async fn speak_session(
    fake: Arc<FakeDeepgram>,
    socket: WebSocket,
    query: HashMap<String, String>,
    rate: u32,
    b: Behaviour,
) {
    use futures::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let mut text = String::new();
    let mut queue: std::collections::VecDeque<Out> = Default::default();
    let mut next_at = tokio::time::Instant::now();
    let (mut flushes, mut sent) = (0u64, 0usize);
    let mut stalled = false;
    loop {
        let sending = !queue.is_empty() && !stalled;
        tokio::select! {
            m = rx.next() => {
                let Some(Ok(m)) = m else { return };
                let t = match m {
                    Message::Text(t) => t,
                    Message::Close(_) => return,
                    _ => continue,
                };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                let kind = v["type"].as_str();
                if kind == Some("Speak") {
                    let piece = v["text"].as_str().unwrap_or_default();
                    text.push_str(piece);
                    fake.requests.lock().unwrap().push(Request {
                        query: query.clone(),
                        body: json!({"text": piece}),
                        authorised: true,
                    });
                }
                // The buffer is spoken once it ends a sentence, or at a
                // Flush; its audio joins the queue, the first piece held to
                // the first-byte latency when nothing plays.
                let due = match kind {
                    Some("Speak") => text.trim_end().ends_with(['.', '!', '?']),
                    Some("Flush") => true,
                    _ => false,
                };
                if due && !text.trim().is_empty() {
                    let asked = tokio::time::Instant::now();
                    let Ok(pcm) = fake.say(&std::mem::take(&mut text), rate).await else {
                        return;
                    };
                    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                    if queue.is_empty() {
                        next_at = asked + b.first_byte;
                    }
                    queue.extend(bytes.chunks(b.piece).map(|c| Out::Audio(Bytes::copy_from_slice(c))));
                }
                let answer = match kind {
                    Some("Speak") => None,
                    Some("Flush") => {
                        text.clear();
                        queue.push_back(Out::Flushed(flushes));
                        flushes += 1;
                        None
                    }
                    Some("Clear") => {
                        queue.clear();
                        text.clear();
                        Some(json!({"type": "Cleared", "sequence_id": flushes}))
                    }
                    Some("Close") => {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    _ => Some(json!({"type": "Warning", "description": "unknown message type", "code": "UNKNOWN_MESSAGE_TYPE"})),
                };
                if let Some(a) = answer {
                    if tx.send(Message::text(a.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_at), if sending => {
                let m = match queue.pop_front() {
                    Some(Out::Audio(piece)) => {
                        match b.mode {
                            Mode::DropAfter(n) if sent >= n => return,
                            Mode::StallAfter(n) if sent >= n => {
                                stalled = true;
                                continue;
                            }
                            _ => {}
                        }
                        sent += piece.len();
                        Message::Binary(piece)
                    }
                    Some(Out::Flushed(id)) => {
                        Message::text(json!({"type": "Flushed", "sequence_id": id}).to_string())
                    }
                    None => continue,
                };
                if tx.send(m).await.is_err() {
                    return;
                }
                next_at = tokio::time::Instant::now() + b.per_piece;
            }
        }
    }
}

/// Voiced syllables at `rate`: about one per three letters of each word,
/// a short gap between words and a longer one after a sentence's end, so
/// the audio lasts about as long as the text takes to say.
pub fn tones(text: &str, rate: u32) -> Vec<i16> {
    let n = |secs: f32| (secs * rate as f32) as usize;
    let mut out = Vec::new();
    let mut phase = 0f32;
    for (k, word) in text.split_whitespace().enumerate() {
        let letters = word.chars().filter(|c| c.is_alphanumeric()).count();
        for syllable in 0..letters.div_ceil(3).max(1) {
            let len = n(0.16);
            // A falling pitch per syllable, a different vowel each time.
            let f0 = 150.0 - 20.0 * ((k + syllable) % 3) as f32;
            for i in 0..len {
                let t = i as f32 / len as f32;
                let envelope = (std::f32::consts::PI * t).sin().powi(2);
                phase += std::f32::consts::TAU * f0 * (1.0 - 0.1 * t) / rate as f32;
                let v = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.25 * (3.0 * phase).sin();
                out.push((v * envelope * 5000.0) as i16);
            }
        }
        let pause = if word.ends_with(['.', '!', '?']) {
            0.35
        } else {
            0.05
        };
        out.resize(out.len() + n(pause), 0);
    }
    out
}
