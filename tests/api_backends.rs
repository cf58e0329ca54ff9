//! The API backends against local fakes of the providers' wire protocols:
//! streamed tokens, usage, server errors, dropped and stalled connections,
//! and a whole call answered through the same pipeline as the local model.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callbox::audio::Audio;
use callbox::config::{LlmBackend, LlmConfig, SttBackend, TtsBackend, TtsConfig};
use callbox::engines::api::deepgram_stt::DeepgramStt;
use callbox::engines::api::deepgram_tts::DeepgramTts;
use callbox::engines::api::deepgram_tts_ws::DeepgramSpeakWs;
use callbox::engines::api::http::Endpoint;
use callbox::engines::api::openai::OpenAiChat;
use callbox::engines::device::Device;
use callbox::engines::{
    ChatMessage, Generation, GenerationOptions, Llm, Role, Stt, SttStream, SynthesisStats, Tts,
};
use callbox::fakes::deepgram::{self as dg, FakeDeepgram};
use callbox::fakes::openai::{Behaviour, FakeOpenAi, Mode, API_KEY};
use callbox::sim;
use callbox::stack::{self, Engines, LoadTimes};
use callbox::text::wer::wer;
use common::server::*;
use serde_json::json;

/// Deepgram's fake with our own voice and ears, so what it says and hears
/// is real speech.
async fn voice_fake() -> Arc<FakeDeepgram> {
    let (voice, ears) = (dg::Voice::Tts(common::tts()), Some(common::stt()));
    FakeDeepgram::start(dg::Behaviour::default(), voice, ears)
        .await
        .unwrap()
}

fn chat(fake: &FakeOpenAi, timeout: Duration) -> OpenAiChat {
    chat_at(fake.base_url(), Some(API_KEY), timeout)
}

fn chat_at(base_url: String, api_key: Option<&str>, timeout: Duration) -> OpenAiChat {
    OpenAiChat::new(Endpoint {
        base_url,
        model: "llama-3.3-70b-versatile".into(),
        api_key: api_key.map(str::to_string),
        timeout,
    })
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful phone agent."),
        ChatMessage::new(Role::User, "What is rain?"),
    ]
}

/// Runs one reply on a thread of its own, as the session does, collecting
/// each piece of text as it arrives; `stop_after` pieces sets the cancel flag.
async fn generate(
    llm: Arc<OpenAiChat>,
    stop_after: Option<usize>,
) -> (callbox::Result<Generation>, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let mut session = llm.session().unwrap();
        let cancel = AtomicBool::new(false);
        let mut pieces = Vec::new();
        let r = session.generate(
            &conversation(),
            &GenerationOptions::default(),
            &cancel,
            &mut |t| {
                pieces.push(t.to_string());
                if stop_after == Some(pieces.len()) {
                    cancel.store(true, Ordering::Relaxed);
                }
                true
            },
        );
        (r, pieces)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tokens_stream_in_order_with_usage_and_the_request_is_groqs() {
    let fake = FakeOpenAi::start(Behaviour::default()).await.unwrap();
    let (r, pieces) = generate(Arc::new(chat(&fake, Duration::from_secs(10))), None).await;
    let g = r.unwrap();
    assert_eq!(g.text, "Rain is water falling from clouds.");
    assert_eq!(pieces.len(), 6, "{pieces:?}");
    assert_eq!(pieces.concat(), g.text);
    assert!(g.finished && !g.cancelled);
    assert_eq!(g.completion_tokens, 6);
    assert!(g.prompt_tokens > 0 && g.prefilled_tokens == g.prompt_tokens);
    let first = g.first_token_ms.unwrap();
    assert!(first <= g.total_ms, "{first} > {}", g.total_ms);

    let (body, authorised) = fake.requests().pop().unwrap();
    assert!(authorised);
    assert_eq!(body["model"], "llama-3.3-70b-versatile");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "What is rain?");
    assert_eq!(body["max_tokens"], GenerationOptions::default().max_tokens);
}

/// The owner's tools go out in OpenAI's `tools` field; a streamed call
/// comes back as the generation's tool use, and the tool's result, as the
/// last message, gets a spoken answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_go_in_the_tools_field_and_a_call_comes_back_whole() {
    let fake = FakeOpenAi::start(Behaviour {
        reply: "Your order is on its way.".into(),
        tool_call: Some((
            "order_status".into(),
            serde_json::json!({"order_number": "4512"}),
        )),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let tools = callbox::tools::http::ToolSet::new(&[callbox::tools::http::HttpTool {
        name: "order_status".into(),
        description: "Look up an order".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"order_number": {"type": "string"}}}),
        triggers: Vec::new(),
        url: "http://127.0.0.1:9/orders".into(),
        timeout_secs: 1.0,
        filler: None,
        filler_after_secs: 0.5,
        say: None,
    }]);
    let llm = chat(&fake, Duration::from_secs(10));
    let options = GenerationOptions {
        tools,
        ..GenerationOptions::default()
    };
    let run = |messages: Vec<ChatMessage>, options: GenerationOptions| {
        let mut session = llm.session().unwrap();
        session
            .generate(&messages, &options, &AtomicBool::new(false), &mut |_| true)
            .unwrap()
    };
    let g = tokio::task::block_in_place(|| run(conversation(), options.clone()));
    let call = g.tool_use.clone().expect("a tool call");
    assert_eq!(
        (call.name.as_str(), call.arguments),
        ("order_status", serde_json::json!({"order_number": "4512"}))
    );
    assert!(g.text.is_empty(), "{g:?}");
    let (body, _) = fake.requests().pop().unwrap();
    assert_eq!(body["tools"][0]["function"]["name"], "order_status");
    assert_eq!(body["tool_choice"], "auto");
    // With the result as the last message, the model answers.
    let mut after = conversation();
    after.push(ChatMessage::new(
        Role::System,
        "(order_status answered: on its way)",
    ));
    let plain = GenerationOptions::default();
    let g = tokio::task::block_in_place(|| run(after, plain));
    assert_eq!(
        (g.text.as_str(), g.tool_use),
        ("Your order is on its way.", None)
    );
    let (body, _) = fake.requests().pop().unwrap();
    assert!(body.get("tools").is_none());
}

#[tokio::test]
async fn server_errors_and_a_wrong_key_fail_the_reply_with_the_providers_words() {
    let fake = FakeOpenAi::start(Behaviour {
        mode: Mode::Status(503, "Service Unavailable: over capacity"),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (r, pieces) = generate(Arc::new(chat(&fake, Duration::from_secs(10))), None).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("503") && e.contains("over capacity"), "{e}");
    assert!(pieces.is_empty());

    fake.set(Behaviour::default());
    let wrong = chat_at(fake.base_url(), Some("gsk_wrong"), Duration::from_secs(10));
    let (r, _) = generate(Arc::new(wrong), None).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("Invalid API Key"), "{e}");
}

#[tokio::test]
async fn a_dropped_stalled_or_failing_stream_is_an_error_never_a_hang() {
    let fake = FakeOpenAi::start(Behaviour {
        mode: Mode::DropAfter(2),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let llm = Arc::new(chat(&fake, Duration::from_secs(2)));
    let (r, pieces) = generate(llm.clone(), None).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("stream"), "{e}");
    // Words in flight when the connection is reset may be lost with it.
    let got = pieces.concat();
    assert!(
        pieces.len() <= 2 && "Rain is water falling from clouds.".starts_with(&got),
        "{pieces:?}"
    );

    fake.set(Behaviour {
        mode: Mode::StallAfter(3),
        ..Behaviour::default()
    });
    let (r, pieces) = generate(llm.clone(), None).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("in time"), "{e}");
    assert_eq!(pieces.len(), 3);

    fake.set(Behaviour {
        mode: Mode::ErrorAfter(1),
        ..Behaviour::default()
    });
    let (r, _) = generate(llm.clone(), None).await;
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("mid-reply") && e.contains("over capacity"),
        "{e}"
    );

    // A provider nobody listens on.
    let nowhere = chat_at(
        "http://127.0.0.1:9/openai/v1".into(),
        None,
        Duration::from_secs(2),
    );
    let (r, _) = generate(Arc::new(nowhere), None).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn a_cancelled_reply_stops_reading() {
    let fake = FakeOpenAi::start(Behaviour {
        per_token: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let (r, pieces) = generate(Arc::new(chat(&fake, Duration::from_secs(10))), Some(2)).await;
    let g = r.unwrap();
    assert!(g.cancelled && !g.finished);
    assert_eq!(pieces.len(), 2);
    assert_eq!(g.text, "Rain is ");
}

#[test]
fn the_configuration_chooses_the_backend_and_a_missing_key_stops_the_start() {
    let mut cfg = LlmConfig {
        backend: LlmBackend::OpenAi,
        ..LlmConfig::default()
    };
    cfg.api.api_key_env = "CALLBOX_TEST_MISSING_KEY".into();
    let e = stack::llm_for(
        &cfg,
        Device::Cpu,
        0,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .err()
    .expect("a missing key must be refused")
    .to_string();
    assert!(e.contains("CALLBOX_TEST_MISSING_KEY"), "{e}");

    cfg.api.api_key_env = String::new();
    cfg.api.model = "llama-3.3-70b-versatile".into();
    let llm = stack::llm_for(
        &cfg,
        Device::Cpu,
        0,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .unwrap();
    assert!(
        llm.name().contains("llama-3.3-70b-versatile"),
        "{}",
        llm.name()
    );

    let toml = "[llm]\nbackend = \"openai\"\n[llm.api]\nmodel = \"llama-3.1-8b-instant\"\n";
    let c = callbox::config::Config::from_toml_str(toml).unwrap();
    assert_eq!(c.llm.backend, LlmBackend::OpenAi);
    assert_eq!(c.llm.api.base_url, "https://api.groq.com/openai/v1");
    assert!(callbox::config::Config::from_toml_str("[llm]\nbackend = \"magic\"\n").is_err());
    assert!(
        callbox::config::Config::from_toml_str("[llm.api]\nbase_url = \"groq.com\"\n").is_err()
    );
}

/// A whole call with the API stack's STT, LLM and TTS: the caller is heard
/// by the STT provider as they speak and answered with the LLM provider's
/// words in the TTS provider's audio, through the same session as the
/// local engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_answered_through_the_api() {
    let fake = FakeOpenAi::start(Behaviour {
        reply: "The sky looks blue because air scatters blue light.".into(),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let voice = voice_fake().await;
    let engines = Engines {
        stt: Arc::new(listener(&voice, Some(dg::API_KEY), Duration::from_secs(10))),
        llm: Arc::new(chat(&fake, Duration::from_secs(10))),
        tts: Arc::new(deepgram(&voice, Some(dg::API_KEY), Duration::from_secs(10))),
        ..engines()
    };
    let (state, addr) = start_on(engines, |_| {}, Vec::new()).await;
    let mut opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("Why is the sky blue?")],
    );
    opts.reply_timeout_secs = 120.0;
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some(), "no reply");
    let s = summary(&state, &sid).await;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let replies: Vec<&str> = s
        .history
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    assert!(
        replies.contains(&"The sky looks blue because air scatters blue light."),
        "{replies:?}"
    );
    // The STT provider heard the call as it went, and was asked to finalise
    // at the end of the turn.
    let heard = voice.connections();
    assert_eq!(heard.len(), 1, "one stream for the call");
    assert!(
        heard[0].audio_secs > 2.0 && heard[0].finalizes >= 1,
        "{heard:?}"
    );
    // The LLM provider saw the caller's words, as the STT provider gave them.
    let (body, _) = fake.requests().pop().unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    let said = last["content"].as_str().unwrap();
    let finals = heard[0].finals.join(" ");
    assert_eq!(
        wer(&finals, said),
        0.0,
        "{said:?} vs the provider's {finals:?}"
    );
    assert!(wer("Why is the sky blue?", said) <= 0.4, "{said:?}");
    // Each sentence went to Deepgram as it was written.
    let spoken: Vec<String> = voice
        .requests()
        .iter()
        .filter_map(|r| r.body["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        spoken.iter().any(|t| t.contains("air scatters blue light")),
        "{spoken:?}"
    );
    // And the caller heard them.
    let heard = common::stt()
        .transcribe(&callbox::audio::Audio::from_i16(
            &r.turns[0].bot_audio,
            8000,
        ))
        .unwrap()
        .text
        .to_lowercase();
    assert!(heard.contains("blue") && heard.contains("light"), "{heard}");

    // The provider failing: that turn is apologised for, the call goes on.
    fake.set(Behaviour {
        mode: Mode::Status(503, "Service Unavailable: over capacity"),
        ..Behaviour::default()
    });
    let mut opts = signed(format!("ws://{addr}/ws"), vec![turn_of("What is snow?")]);
    opts.reply_timeout_secs = 120.0;
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    assert!(r.turns[0].latency_ms.is_some(), "no apology");
    let s = summary(&state, &sid).await;
    assert_eq!(s.ended_by, callbox::events::EndedBy::Stop);
    assert!(
        s.errors
            .iter()
            .any(|e| e.contains("503") && e.contains("over capacity")),
        "{:?}",
        s.errors
    );
    let spoken = &s.turns.last().unwrap().bot_text;
    assert!(spoken.starts_with("Sorry"), "{spoken:?}");
}

fn listener(fake: &FakeDeepgram, key: Option<&str>, timeout: Duration) -> DeepgramStt {
    DeepgramStt::new(Endpoint {
        base_url: fake.ws_url(),
        model: "nova-3".into(),
        api_key: key.map(str::to_string),
        timeout,
    })
}

/// `text` spoken by our voice at 16 kHz, then `silence` seconds of quiet.
fn spoken(text: &str, silence: f32) -> Vec<f32> {
    let mut a = common::speech(text).samples;
    a.resize(a.len() + (silence * 16_000.0) as usize, 0.0);
    a
}

/// Pushes `audio` in 20 ms pieces, as a call does (faster than real time:
/// the provider does not care).
fn push(stream: &dyn SttStream, audio: &[f32]) {
    for piece in audio.chunks(320) {
        stream.push(piece);
    }
}

/// `audio` through a new stream of `stt`, on a thread of its own as the
/// session does: its transcript.
async fn hear(stt: DeepgramStt, audio: Vec<f32>) -> callbox::Result<callbox::engines::Transcript> {
    tokio::task::spawn_blocking(move || {
        let s = stt.listen().unwrap().expect("a streaming engine");
        push(s.as_ref(), &audio);
        s.transcript(0, audio.len() as u64)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_streaming_hears_each_turn_once_and_ignores_interims() {
    let fake = voice_fake().await;
    fake.set_listen(dg::ListenBehaviour {
        interim_every: Some(Duration::from_millis(700)),
        ..dg::ListenBehaviour::default()
    });
    let stt = listener(&fake, Some(dg::API_KEY), Duration::from_secs(20));
    let (first, second) = tokio::task::spawn_blocking(move || {
        let stream = stt.listen().unwrap().expect("a streaming engine");
        let one = spoken("What makes a rainbow?", 1.0);
        push(stream.as_ref(), &one);
        let first = stream.transcript(0, one.len() as u64).unwrap();
        let two = spoken("How do bees make honey?", 1.0);
        push(stream.as_ref(), &two);
        let (from, to) = (one.len() as u64, (one.len() + two.len()) as u64);
        let second = stream.transcript(from, to).unwrap();
        (first, second)
    })
    .await
    .unwrap();
    let (a, b) = (first.text.to_lowercase(), second.text.to_lowercase());
    assert!(a.contains("rainbow"), "{a}");
    assert!(b.contains("honey") && !b.contains("rainbow"), "{b}");
    assert!(first.timings.total_ms > 0.0);
    // One connection, asked as Deepgram wants, with interims along the way
    // that never doubled the final words.
    let c = fake.connections();
    assert_eq!(c.len(), 1, "{c:?}");
    let c = &c[0];
    assert!(c.authorised);
    assert_eq!(c.query["model"], "nova-3");
    assert_eq!(c.query["encoding"], "linear16");
    assert_eq!(c.query["sample_rate"], "16000");
    assert_eq!(c.query["interim_results"], "true");
    assert_eq!(c.finalizes, 2);
    assert!(!c.interims.is_empty(), "{c:?}");
    assert_eq!(a.matches("rainbow").count(), 1, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_streaming_failures_are_clear_and_the_stream_reconnects() {
    let fake = voice_fake().await;
    let turn = spoken("What makes a rainbow?", 0.5);

    // A wrong key: refused at the upgrade, with Deepgram's reason.
    let wrong = listener(&fake, Some("dg_wrong"), Duration::from_secs(5));
    let e = hear(wrong, turn.clone()).await.unwrap_err().to_string();
    assert!(
        e.contains("401") && e.contains("Invalid credentials"),
        "{e}"
    );

    // The service closes the stream with an error, then cuts one: the turn
    // waiting fails with the reason; the audio after it opens a new
    // connection that works.
    for mode in [
        dg::ListenMode::CloseAfter(0.5),
        dg::ListenMode::DropAfter(0.5),
    ] {
        fake.set_listen(dg::ListenBehaviour {
            mode,
            ..dg::ListenBehaviour::default()
        });
        let stt = listener(&fake, Some(dg::API_KEY), Duration::from_secs(10));
        let (audio, f) = (turn.clone(), fake.clone());
        let (failed, recovered) = tokio::task::spawn_blocking(move || {
            let s = stt.listen().unwrap().unwrap();
            push(s.as_ref(), &audio);
            std::thread::sleep(Duration::from_millis(300));
            let failed = s.transcript(0, audio.len() as u64);
            f.set_listen(dg::ListenBehaviour::default());
            // The reconnection waits out a short back-off.
            std::thread::sleep(Duration::from_millis(600));
            let n = audio.len() as u64;
            push(s.as_ref(), &audio);
            (failed, s.transcript(n, 2 * n))
        })
        .await
        .unwrap();
        let e = failed.unwrap_err().to_string();
        match mode {
            dg::ListenMode::CloseAfter(_) => {
                assert!(e.contains("1011") && e.contains("DATA-0000"), "{e}")
            }
            // A cut says what the socket saw: reset, broken pipe, closed.
            _ => assert!(e.contains("lost, reconnecting"), "{e}"),
        }
        let text = recovered.unwrap().text.to_lowercase();
        assert!(text.contains("rainbow"), "{mode:?}: {text}");
    }

    // A service that never answers Finalize: the turn fails after the
    // endpoint's timeout, never hangs.
    fake.set_listen(dg::ListenBehaviour {
        mode: dg::ListenMode::IgnoreFinalize,
        ..dg::ListenBehaviour::default()
    });
    let stt = listener(&fake, Some(dg::API_KEY), Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    let e = hear(stt, turn).await.unwrap_err().to_string();
    assert!(e.contains("no final transcript"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30));
}

fn deepgram(fake: &FakeDeepgram, key: Option<&str>, timeout: Duration) -> DeepgramTts {
    DeepgramTts::new(Endpoint {
        base_url: fake.base_url(),
        model: "aura-2-thalia-en".into(),
        api_key: key.map(str::to_string),
        timeout,
    })
}

/// `text` spoken through `tts` on a thread of its own, stopping after
/// `keep` pieces when given (a caller talking over the bot).
async fn speak_pieces(
    tts: Arc<dyn Tts>,
    text: &'static str,
    keep: Option<usize>,
) -> (callbox::Result<SynthesisStats>, Vec<Audio>) {
    tokio::task::spawn_blocking(move || {
        let mut pieces = Vec::new();
        let r = tts.synthesize(text, &mut |a| {
            pieces.push(a);
            keep.is_none_or(|k| pieces.len() < k)
        });
        (r, pieces)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn deepgram_audio_streams_in_pieces_at_the_phones_rate() {
    let fake = voice_fake().await;
    let tts: Arc<dyn Tts> = Arc::new(deepgram(&fake, Some(dg::API_KEY), Duration::from_secs(10)));
    assert_eq!(tts.sample_rate(), 8000);
    let (r, pieces) = speak_pieces(
        tts,
        "The sky is blue because air scatters blue light.",
        None,
    )
    .await;
    let stats = r.unwrap();
    assert!(pieces.len() > 10, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|p| p.rate == 8000));
    // Every sample arrives intact, though the pieces split samples in two.
    let got: Vec<i16> = pieces.iter().flat_map(|p| p.to_i16()).collect();
    assert_eq!(got, *fake.last_audio.lock().unwrap());
    assert!((stats.audio_secs - got.len() as f64 / 8000.0).abs() < 1e-9);
    assert!(stats.first_audio_ms.unwrap() <= stats.total_ms);
    let req = fake.requests().pop().unwrap();
    assert!(req.authorised);
    assert_eq!(req.query["model"], "aura-2-thalia-en");
    assert_eq!(req.query["encoding"], "linear16");
    assert_eq!(req.query["container"], "none");
    assert_eq!(req.query["sample_rate"], "8000");
    assert_eq!(
        req.body["text"],
        "The sky is blue because air scatters blue light."
    );
}

#[tokio::test]
async fn deepgram_errors_cuts_and_stalls_fail_the_sentence_never_hang() {
    let fake = voice_fake().await;
    let wrong: Arc<dyn Tts> = Arc::new(deepgram(&fake, Some("dg_wrong"), Duration::from_secs(10)));
    let e = speak_pieces(wrong, "Hello there.", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("401") && e.contains("Invalid credentials."),
        "{e}"
    );

    let tts: Arc<dyn Tts> = Arc::new(deepgram(&fake, Some(dg::API_KEY), Duration::from_secs(2)));
    fake.set(dg::Behaviour {
        mode: dg::Mode::Status(429, "TOO_MANY_REQUESTS", "Too many requests."),
        ..dg::Behaviour::default()
    });
    let e = speak_pieces(tts.clone(), "Hello there.", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(e.contains("429") && e.contains("TOO_MANY_REQUESTS"), "{e}");

    fake.set(dg::Behaviour {
        mode: dg::Mode::DropAfter(4000),
        ..dg::Behaviour::default()
    });
    let (r, pieces) = speak_pieces(tts.clone(), "Hello there, how are you today?", None).await;
    let e = r.unwrap_err().to_string();
    assert!(e.contains("reading the audio"), "{e}");
    assert!(!pieces.is_empty(), "the audio before the cut was handed on");

    fake.set(dg::Behaviour {
        mode: dg::Mode::StallAfter(4000),
        ..dg::Behaviour::default()
    });
    let e = speak_pieces(tts.clone(), "Hello there, how are you today?", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(e.contains("in time"), "{e}");
}

fn speak_ws(fake: &FakeDeepgram, key: Option<&str>, timeout: Duration) -> DeepgramSpeakWs {
    DeepgramSpeakWs::new(Endpoint {
        base_url: fake.ws_url(),
        model: "aura-2-thalia-en".into(),
        api_key: key.map(str::to_string),
        timeout,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_websocket_speaks_sentence_after_sentence_on_one_connection() {
    let fake = voice_fake().await;
    let tts: Arc<dyn Tts> = Arc::new(speak_ws(&fake, Some(dg::API_KEY), Duration::from_secs(10)));
    assert_eq!(tts.sample_rate(), 8000);
    for text in ["The sky is blue.", "Rainbows need sunlight and rain."] {
        let (r, pieces) = speak_pieces(tts.clone(), text, None).await;
        let stats = r.unwrap();
        let got: Vec<i16> = pieces.iter().flat_map(|p| p.to_i16()).collect();
        assert_eq!(got, *fake.last_audio.lock().unwrap(), "{text}");
        assert!(pieces.len() > 5 && stats.first_audio_ms.unwrap() <= stats.total_ms);
        assert_eq!(fake.requests().last().unwrap().body["text"], text);
    }
    // Stopped after two pieces (barge-in): Clear, and the same connection
    // speaks the next sentence whole.
    let (r, pieces) = speak_pieces(
        tts.clone(),
        "This sentence is cut short by the caller.",
        Some(2),
    )
    .await;
    r.unwrap();
    assert_eq!(pieces.len(), 2);
    let (r, pieces) = speak_pieces(tts.clone(), "And this one is heard.", None).await;
    r.unwrap();
    let got: Vec<i16> = pieces.iter().flat_map(|p| p.to_i16()).collect();
    assert_eq!(got, *fake.last_audio.lock().unwrap());
    assert_eq!(
        fake.speak_sockets.load(Ordering::Relaxed),
        1,
        "one connection, reused"
    );
    let q = fake.requests().pop().unwrap().query;
    assert_eq!(
        (
            q["model"].as_str(),
            q["encoding"].as_str(),
            q["sample_rate"].as_str()
        ),
        ("aura-2-thalia-en", "linear16", "8000")
    );
}

/// Deepgram speaks its buffer once it holds a sentence, without waiting
/// for `Flush`: a client that streams a reply sentence by sentence and
/// flushes only at its end (Pipecat's) hears the first sentence at once.
/// The fake must too, or it charges such a client a whole reply of delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_speaks_a_finished_sentence_before_any_flush() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let fake = FakeDeepgram::start(dg::Behaviour::default(), dg::Voice::Tones, None)
        .await
        .unwrap();
    let mut request = format!(
        "{}/v1/speak?model=aura-2-thalia-en&encoding=linear16&sample_rate=8000",
        fake.ws_url()
    )
    .into_client_request()
    .unwrap();
    let token = format!("Token {}", dg::API_KEY).parse().unwrap();
    request.headers_mut().insert("Authorization", token);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let speak = |t: &str| Message::text(json!({"type": "Speak", "text": t}).to_string());
    // Waits for the next message; None when nothing comes in `secs`.
    async fn next(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
        secs: f32,
    ) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs_f32(secs), ws.next())
            .await
            .ok()
            .flatten()
            .map(Result::unwrap)
    }
    // Half a sentence: nothing yet.
    ws.send(speak("The sky looks blue")).await.unwrap();
    assert!(next(&mut ws, 0.5).await.is_none(), "spoke half a sentence");
    // Its end: audio, with no Flush sent.
    ws.send(speak(" because air scatters blue light. "))
        .await
        .unwrap();
    assert!(matches!(next(&mut ws, 2.0).await, Some(Message::Binary(_))));
    // The rest of the reply, then Flush: all its audio, then Flushed.
    ws.send(speak("Isn't that neat")).await.unwrap();
    ws.send(Message::text(r#"{"type":"Flush"}"#)).await.unwrap();
    let mut after = 0;
    loop {
        match next(&mut ws, 5.0).await {
            Some(Message::Binary(b)) => after += b.len(),
            Some(Message::Text(t)) => {
                assert!(t.contains("Flushed"), "{t}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let whole = dg::tones("The sky looks blue because air scatters blue light. ", 8000).len()
        + dg::tones("Isn't that neat", 8000).len();
    assert!(
        after > 0 && after < whole * 2,
        "{after} bytes after the first piece"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_websocket_failures_fail_the_sentence_never_hang() {
    let fake = voice_fake().await;
    let wrong: Arc<dyn Tts> = Arc::new(speak_ws(&fake, Some("dg_wrong"), Duration::from_secs(5)));
    let e = speak_pieces(wrong, "Hello there.", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("401") && e.contains("Invalid credentials"),
        "{e}"
    );

    fake.set(dg::Behaviour {
        mode: dg::Mode::Status(429, "TOO_MANY_REQUESTS", "Too many requests."),
        ..dg::Behaviour::default()
    });
    let tts: Arc<dyn Tts> = Arc::new(speak_ws(&fake, Some(dg::API_KEY), Duration::from_secs(2)));
    let e = speak_pieces(tts, "Hello there.", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(e.contains("429") && e.contains("Too many requests"), "{e}");

    fake.set(dg::Behaviour {
        mode: dg::Mode::DropAfter(4000),
        ..dg::Behaviour::default()
    });
    let tts: Arc<dyn Tts> = Arc::new(speak_ws(&fake, Some(dg::API_KEY), Duration::from_secs(2)));
    let (r, pieces) = speak_pieces(tts, "Hello there, how are you today?", None).await;
    assert!(r.is_err() && !pieces.is_empty(), "{r:?}");

    fake.set(dg::Behaviour {
        mode: dg::Mode::StallAfter(4000),
        ..dg::Behaviour::default()
    });
    let tts: Arc<dyn Tts> = Arc::new(speak_ws(&fake, Some(dg::API_KEY), Duration::from_secs(2)));
    let t0 = std::time::Instant::now();
    let e = speak_pieces(tts, "Hello there, how are you today?", None)
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(e.contains("in time"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn the_configuration_chooses_deepgram_for_speech() {
    let mut cfg = TtsConfig {
        backend: TtsBackend::Deepgram,
        ..TtsConfig::default()
    };
    cfg.deepgram.api_key_env = "CALLBOX_TEST_MISSING_DEEPGRAM_KEY".into();
    let e = stack::tts_for(
        &cfg,
        Device::Cpu,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .err()
    .expect("a missing key must be refused")
    .to_string();
    assert!(e.contains("CALLBOX_TEST_MISSING_DEEPGRAM_KEY"), "{e}");
    cfg.deepgram.api_key_env = String::new();
    let tts = stack::tts_for(
        &cfg,
        Device::Cpu,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .unwrap();
    assert_eq!(tts.sample_rate(), 8000);
    let c = callbox::config::Config::from_toml_str("[tts]\nbackend = \"deepgram\"\n").unwrap();
    assert_eq!(c.tts.backend, TtsBackend::Deepgram);
    assert_eq!(c.tts.deepgram.model, "aura-2-thalia-en");
    // A partial table keeps the rest of Deepgram's defaults, not Groq's.
    let partial =
        callbox::config::Config::from_toml_str("[tts.deepgram]\nmodel = \"aura-2-orion-en\"\n")
            .unwrap();
    assert_eq!(partial.tts.deepgram.model, "aura-2-orion-en");
    assert_eq!(partial.tts.deepgram.base_url, "https://api.deepgram.com");
    assert_eq!(partial.tts.deepgram.api_key_env, "DEEPGRAM_API_KEY");
    let models = stack::with_apis(stack::describe(&common::store().manifest, "default"), &c);
    let tts_model = models.iter().find(|m| m.engine == "tts").unwrap();
    assert_eq!(tts_model.file, "aura-2-thalia-en");
    // The websocket is chosen by its scheme; other schemes are refused.
    let ws =
        "[tts]\nbackend = \"deepgram\"\n[tts.deepgram]\nbase_url = \"wss://api.deepgram.com\"\n";
    assert!(callbox::config::Config::from_toml_str(ws).is_ok());
    let bad = "[tts.deepgram]\nbase_url = \"ftp://api.deepgram.com\"\n";
    assert!(callbox::config::Config::from_toml_str(bad).is_err());
}

#[test]
fn the_configuration_chooses_deepgram_for_listening() {
    let c = callbox::config::Config::from_toml_str("[stt]\nbackend = \"deepgram\"\n").unwrap();
    assert_eq!(c.stt.backend, SttBackend::Deepgram);
    assert_eq!(c.stt.deepgram.base_url, "wss://api.deepgram.com");
    assert_eq!(c.stt.deepgram.model, "nova-3");
    let http = "[stt.deepgram]\nbase_url = \"https://api.deepgram.com\"\n";
    assert!(
        callbox::config::Config::from_toml_str(http).is_err(),
        "listen is a websocket"
    );
    let mut cfg = c.stt.clone();
    cfg.deepgram.api_key_env = "CALLBOX_TEST_MISSING_DEEPGRAM_KEY".into();
    let e = stack::stt_for(
        &cfg,
        Device::Cpu,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .err()
    .expect("a missing key must be refused")
    .to_string();
    assert!(e.contains("CALLBOX_TEST_MISSING_DEEPGRAM_KEY"), "{e}");
    cfg.deepgram.api_key_env = String::new();
    let stt = stack::stt_for(
        &cfg,
        Device::Cpu,
        &common::paths(),
        &mut LoadTimes::default(),
    )
    .unwrap();
    assert!(
        stt.listen().unwrap().is_some(),
        "Deepgram listens as the caller speaks"
    );
    let models = stack::with_apis(stack::describe(&common::store().manifest, "default"), &c);
    assert_eq!(
        models.iter().find(|m| m.engine == "stt").unwrap().file,
        "nova-3"
    );
}

/// A whole utterance through Deepgram's streaming API, asked for from an
/// async task (as `callbox demo`'s report does): no panic, the words back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_transcribes_a_whole_utterance_from_any_thread() {
    let fake = voice_fake().await;
    let stt = listener(&fake, Some(dg::API_KEY), Duration::from_secs(20));
    // Longer than a 20 ms piece queue would hold: 12 s of speech and quiet.
    let mut audio = spoken("How do bees make honey?", 10.0);
    audio.extend(spoken("What makes a rainbow?", 0.5));
    let t = stt.transcribe(&Audio::new(audio, 16_000)).unwrap();
    let text = t.text.to_lowercase();
    assert!(text.contains("honey") && text.contains("rainbow"), "{text}");
}
