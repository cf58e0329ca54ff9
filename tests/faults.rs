//! Faults inside one call stay inside it: an engine that errors or panics,
//! a caller who vanishes mid-sentence or mid-reply. The engines are the real
//! default models; where a fault is injected, a wrapper around the real
//! engine fails on a word the caller really said (as Whisper heard it).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox::audio::{ulaw, Audio};
use callbox::engines::{
    ChatMessage, Generation, GenerationOptions, Llm, LlmSession, Role, Stt, Transcript,
};
use callbox::events::{EndedBy, TurnKind};
use callbox::session::AHEAD_SLACK_SECS;
use callbox::sim;
use callbox::twilio::protocol;
use common::server::*;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Whisper, which panics whenever it hears "banana".
struct PanickyStt(Arc<dyn Stt>);

impl Stt for PanickyStt {
    fn transcribe(&self, audio: &Audio) -> callbox::Result<Transcript> {
        let t = self.0.transcribe(audio)?;
        if t.text.to_lowercase().contains("banana") {
            panic!("injected STT fault on {:?}", t.text);
        }
        Ok(t)
    }
}

/// The LLM, whose sessions fail when the caller's last words mention the
/// weather (an error) or pizza (a panic).
struct FaultyLlm(Arc<dyn Llm>);

impl Llm for FaultyLlm {
    fn session(&self) -> callbox::Result<Box<dyn LlmSession>> {
        Ok(Box::new(FaultySession(self.0.session()?)))
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

struct FaultySession(Box<dyn LlmSession>);

impl LlmSession for FaultySession {
    fn prefill(&mut self, messages: &[ChatMessage]) -> callbox::Result<usize> {
        self.0.prefill(messages)
    }

    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerationOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> callbox::Result<Generation> {
        let last = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.to_lowercase())
            .unwrap_or_default();
        if last.contains("weather") {
            return Err(callbox::Error::engine("llm", "injected LLM fault"));
        }
        if last.contains("pizza") {
            panic!("injected LLM panic");
        }
        self.0.generate(messages, options, cancel, on_text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_fails_or_panics_costs_one_turn_of_one_call() {
    let mut engines = engines();
    engines.stt = Arc::new(PanickyStt(engines.stt.clone()));
    engines.llm = Arc::new(FaultyLlm(engines.llm.clone()));
    let (state, addr) = start_on(engines, |c| c.server.max_calls = 4, Vec::new()).await;
    let url = format!("ws://{addr}/ws");
    // Each faulty turn is followed by one that must be answered as usual.
    let faulty = signed(
        &url,
        vec![
            turn_of("I really like bananas."),
            turn_of("What is the weather like today?"),
            turn_of("Do you like pizza?"),
            turn_of("What is the capital of France?"),
        ],
    );
    let healthy = signed(
        &url,
        vec![
            turn_of("What do cows eat?"),
            turn_of("How many legs does a spider have?"),
        ],
    );
    let (faulty_sid, healthy_sid) = (faulty.call_sid.clone(), healthy.call_sid.clone());
    let (f, h) = tokio::join!(sim::run(faulty), sim::run(healthy));
    let (f, h) = (f.unwrap(), h.unwrap());

    // Every turn of both calls was answered: the faulty ones by an apology.
    for (name, r) in [("faulty", &f), ("healthy", &h)] {
        for t in &r.turns {
            assert!(
                t.latency_ms.is_some() && !t.bot_audio.is_empty(),
                "{name} call: turn {} ({:?}) got no answer",
                t.index,
                t.said
            );
        }
    }
    let fs = summary(&state, &faulty_sid).await;
    let hs = summary(&state, &healthy_sid).await;
    assert_eq!(fs.ended_by, EndedBy::Stop);
    let errors = fs.errors.join("\n");
    for expected in [
        "stt failed: panicked: injected STT fault",
        "injected LLM fault",
        "llm failed: panicked: injected LLM panic",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in {errors}");
    }
    let spoken: Vec<&str> = fs
        .turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn)
        .map(|t| t.bot_text.as_str())
        .collect();
    assert_eq!(
        spoken.iter().filter(|t| t.starts_with("Sorry")).count(),
        3,
        "three apologies: {spoken:?}"
    );
    // The turn after the faults was the model's own answer, in context.
    let last = fs.turns.last().unwrap();
    assert!(last.user_text.to_lowercase().contains("france"), "{last:?}");
    assert!(!last.bot_text.starts_with("Sorry") && !last.bot_text.is_empty());
    // The other call never noticed.
    assert!(hs.errors.is_empty(), "{:?}", hs.errors);
    assert!(hs
        .turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn)
        .all(|t| !t.bot_text.is_empty() && !t.bot_text.starts_with("Sorry")));
    let m = scrape(addr).await;
    assert_eq!(sample(&m, "callbox_errors_total", &[("kind", "stt")]), 1.0);
    assert_eq!(
        sample(&m, "callbox_errors_total", &[("kind", "reply")]),
        2.0
    );
    settle(&state).await;
}

enum Vanish {
    /// Halfway through the caller's sentence.
    MidUtterance,
    /// As soon as the bot's reply starts to arrive.
    MidReply,
}

/// Plays Twilio's part for one sentence, then drops the connection without
/// a `stop` or a close frame, as a dropped mobile call does. Returns the
/// seconds of audio it sent.
async fn call_then_vanish(addr: SocketAddr, call_sid: &str, text: &str, when: Vanish) -> f64 {
    let (ws, start) = twilio_socket(addr, call_sid).await;
    let (mut tx, mut rx) = ws.split();
    tx.send(start).await.unwrap();
    let speech = ulaw::encode(&speech(text).resampled(8000).to_i16());
    let frames: Vec<&[u8]> = speech.chunks(160).collect();
    let limit = match when {
        Vanish::MidUtterance => frames.len() / 2,
        // The sentence, then silence until the reply comes.
        Vanish::MidReply => frames.len() + 20 * 50,
    };
    let silence = [0xFFu8; 160];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..limit {
        tick.tick().await;
        let payload = frames.get(i).copied().unwrap_or(&silence);
        let media = protocol::media(&format!("MZ{call_sid}"), payload);
        tx.send(Message::text(media)).await.unwrap();
        // Whatever the bot sent meanwhile (no greeting: any media is the reply).
        while let Some(Some(Ok(m))) = futures::FutureExt::now_or_never(rx.next()) {
            let is_media = m
                .to_text()
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .is_some_and(|v| v["event"] == "media");
            if is_media && matches!(when, Vanish::MidReply) {
                // Dropping both halves: no close frame.
                return (i + 1) as f64 * 0.02;
            }
        }
    }
    assert!(
        matches!(when, Vanish::MidUtterance),
        "no reply came within 20 s of silence"
    );
    limit as f64 * 0.02
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_vanishes_mid_sentence_or_mid_reply_leaves_a_clean_call() {
    let traces = std::env::temp_dir().join(format!("callbox-vanish-{}", std::process::id()));
    let dir = traces.clone();
    let (state, addr) = start(move |c| {
        c.call.greet = false;
        c.observe.traces_dir = Some(dir);
    })
    .await;
    let question = "Could you tell me a very long story about the history of sailing ships";
    let sent_half = call_then_vanish(
        addr,
        "CA000000000000000000000000000000a1",
        question,
        Vanish::MidUtterance,
    )
    .await;
    let began = Instant::now();
    let sent_whole = call_then_vanish(
        addr,
        "CA000000000000000000000000000000a2",
        question,
        Vanish::MidReply,
    )
    .await;
    let cut_after = began.elapsed().as_secs_f64();

    let mid_sentence = summary(&state, "CA000000000000000000000000000000a1").await;
    let mid_reply = summary(&state, "CA000000000000000000000000000000a2").await;
    for (s, sent) in [(&mid_sentence, sent_half), (&mid_reply, sent_whole)] {
        assert_eq!(s.ended_by, EndedBy::TransportClosed, "{}", s.info.call_sid);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let t = trace(&traces, &s.info.call_sid).await;
        assert_eq!(t["call"]["ended_by"], "transport closed");
        // All the caller's audio is in the recording, which ends with the
        // call (the caller's frames may have come slower than real time on
        // a busy machine, so the call can be the longer).
        let (secs, call) = recording_and_call_secs(&t);
        assert!(
            secs >= sent - 0.05 && secs <= call + 1.0,
            "recording {secs} s, caller sent {sent} s, call {call} s"
        );
    }
    // The half sentence was never answered.
    assert!(
        mid_sentence
            .turns
            .iter()
            .all(|t| t.kind != TurnKind::Turn || t.heard_text.is_empty()),
        "{:?}",
        mid_sentence.turns
    );
    // The whole one was heard and its reply begun, then stopped with the
    // line: the call ended with the caller, not after the whole reply.
    let turn = mid_reply
        .turns
        .iter()
        .find(|t| t.kind == TurnKind::Turn)
        .expect("the question became a turn");
    assert!(
        turn.user_text.to_lowercase().contains("sailing"),
        "{turn:?}"
    );
    assert!(
        mid_reply.duration_secs < cut_after + 2.0,
        "the call lasted {} s after a caller who left at {cut_after} s",
        mid_reply.duration_secs
    );
    // Every thread of both calls has ended, and the server takes the next.
    settle(&state).await;
    let next = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("What do cows eat?")],
    );
    let r = sim::run(next).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some());
    settle(&state).await;
    let _ = std::fs::remove_dir_all(&traces);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_faster_than_real_time_is_held_to_the_clock() {
    let (state, addr) = start(|c| c.call.greet = false).await;
    let call_sid = "CA000000000000000000000000000f100d";
    let (mut ws, start) = twilio_socket(addr, call_sid).await;
    ws.send(start).await.unwrap();
    // Sixty seconds of audio as fast as the socket takes it.
    let noise = ulaw::encode(&white_noise(60.0, -30.0, 8000, 7).to_i16());
    for frame in noise.chunks(160) {
        ws.send(Message::text(protocol::media("MZflood", frame)))
            .await
            .unwrap();
    }
    ws.send(Message::text(r#"{"event":"stop"}"#)).await.unwrap();
    let s = summary(&state, call_sid).await;
    assert_eq!(s.ended_by, EndedBy::Stop);
    // Kept: what the clock allows (the call's seconds plus the slack);
    // the rest dropped and counted.
    let kept = 3000 - s.frames_dropped;
    assert!(
        (kept as f64) * 0.02 <= s.duration_secs + AHEAD_SLACK_SECS + 0.02,
        "{kept} frames kept in a call of {} s",
        s.duration_secs
    );
    assert!(s.frames_dropped > 1500, "{} dropped", s.frames_dropped);
    let w = hound::WavReader::open(s.recording.as_ref().unwrap()).unwrap();
    assert!(w.duration() as f64 / 8000.0 <= s.duration_secs + AHEAD_SLACK_SECS + 0.1);
    settle(&state).await;
}
