//! Engine microbenchmarks (criterion), beside `callbox bench-engines`: the
//! same engines, timed with criterion's statistics, one benchmark per stage
//! a turn goes through. `cargo bench --bench engines` after
//! `callbox models fetch`; numbers only, never a test.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use callbox::audio::{ulaw, Audio};
use callbox::engines::{
    speak, ChatMessage, GenerationOptions, Llm, Role, Stt, Tts, TurnDetector, Vad, MODEL_RATE,
};
use callbox::models::ModelStore;
use callbox::session::input::InputProcessor;
use callbox::stack::{self, LoadTimes};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

struct Engines {
    vad: Arc<dyn Vad>,
    turn: Arc<dyn TurnDetector>,
    stt: Arc<dyn Stt>,
    llm: Arc<dyn Llm>,
    tts: Arc<dyn Tts>,
}

fn engines() -> Engines {
    let store = ModelStore::open(None, None).expect("the model manifest");
    let paths = store
        .paths("default")
        .expect("the default models: run `callbox models fetch` first");
    let t = &mut LoadTimes::default();
    Engines {
        vad: stack::vad(&paths, Default::default(), t).unwrap(),
        turn: stack::turn(&paths, t).unwrap(),
        stt: stack::stt(&paths, t).unwrap(),
        llm: stack::llm(&paths, t).unwrap(),
        tts: stack::tts(&paths, t).unwrap(),
    }
}

const QUESTION: &str = "Can you tell me why the sky is blue?";

fn stages(c: &mut Criterion) {
    let e = engines();
    let speech = speak(e.tts.as_ref(), QUESTION).unwrap();
    let speech16 = speech.resampled(MODEL_RATE);
    let phone: Vec<u8> = ulaw::encode(&speech.resampled(8000).to_i16());

    // What every 20 ms of the caller's audio costs: μ-law, resampling,
    // RNNoise and the VAD, as the call's input thread runs them.
    let denoiser = stack::denoiser();
    let mut input = InputProcessor::new(e.vad.as_ref(), Some(denoiser.as_ref()));
    let mut frames = phone.chunks_exact(160).cycle();
    c.bench_function(
        "inbound 20 ms frame (decode, resample, denoise, VAD)",
        |b| {
            b.iter(|| {
                let pcm = ulaw::decode(frames.next().unwrap());
                input.push(&pcm).unwrap()
            })
        },
    );

    let mut slow = c.benchmark_group("per turn");
    slow.sample_size(10);
    slow.bench_function("Smart Turn on the utterance", |b| {
        b.iter(|| e.turn.predict(&speech16.samples).unwrap())
    });
    slow.bench_function("Whisper on the utterance", |b| {
        b.iter(|| e.stt.transcribe(&speech16).unwrap())
    });
    let messages = vec![
        ChatMessage::new(
            Role::System,
            "You are a friendly teacher. Answer in one short sentence.",
        ),
        ChatMessage::new(Role::User, QUESTION),
    ];
    let first_token = GenerationOptions {
        max_tokens: 1,
        ..GenerationOptions::default()
    };
    slow.bench_function("LLM to the first token, fresh context", |b| {
        b.iter_batched(
            || e.llm.session().unwrap(),
            |mut s| {
                s.generate(
                    &messages,
                    &first_token,
                    &AtomicBool::new(false),
                    &mut |_| true,
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    slow.bench_function("Piper, one sentence", |b| {
        b.iter(|| {
            e.tts
                .synthesize(
                    "The sky is blue because air scatters blue light.",
                    &mut |a: Audio| !a.samples.is_empty(),
                )
                .unwrap()
        })
    });
    slow.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
