//! Shared test setup: provisions the real default models (and the test
//! speech clips) through the same code path as `callbox models fetch`, once
//! per test binary, then hands out engines loaded once and shared by every
//! test — as the server shares them between calls.
#![allow(dead_code)]

pub mod fake_twilio;
pub mod otlp;
pub mod server;

use std::sync::{Arc, OnceLock};

use callbox::audio::Audio;
use callbox::engines::{Llm, Stt, Tts, TurnDetector, Vad, MODEL_RATE};
use callbox::models::fetch::{fetch, FetchOptions};
use callbox::models::{ModelPaths, ModelStore};
use callbox::stack::{self, LoadTimes};

pub fn store() -> &'static ModelStore {
    static STORE: OnceLock<ModelStore> = OnceLock::new();
    STORE.get_or_init(|| {
        // A thread of its own: async tests call this from inside a runtime.
        std::thread::spawn(|| {
            let store = ModelStore::open(None, None).expect("manifest");
            let rt = tokio::runtime::Runtime::new().unwrap();
            for set in ["default", "testdata"] {
                rt.block_on(fetch(&store, &FetchOptions::new(set)))
                    .unwrap_or_else(|e| panic!("provisioning model set {set}: {e}"));
            }
            store
        })
        .join()
        .expect("model provisioning")
    })
}

pub fn paths() -> ModelPaths {
    store().paths("default").unwrap()
}

macro_rules! shared {
    ($name:ident, $ty:ty, $load:expr) => {
        pub fn $name() -> $ty {
            static CELL: OnceLock<$ty> = OnceLock::new();
            CELL.get_or_init(|| {
                let p = paths();
                let mut t = LoadTimes::default();
                #[allow(clippy::redundant_closure_call)]
                ($load)(&p, &mut t).expect(concat!("loading ", stringify!($name)))
            })
            .clone()
        }
    };
}

shared!(vad, Arc<dyn Vad>, |p: &ModelPaths, t: &mut LoadTimes| {
    stack::vad(p, Default::default(), t)
});
shared!(
    turn,
    Arc<dyn TurnDetector>,
    |p: &ModelPaths, t: &mut LoadTimes| stack::turn(p, t)
);
shared!(stt, Arc<dyn Stt>, |p: &ModelPaths, t: &mut LoadTimes| {
    stack::stt(p, t)
});
shared!(llm, Arc<dyn Llm>, |p: &ModelPaths, t: &mut LoadTimes| {
    stack::llm(p, t)
});
shared!(tts, Arc<dyn Tts>, |p: &ModelPaths, t: &mut LoadTimes| {
    stack::tts(p, t)
});

shared!(caller, Arc<dyn Tts>, |p: &ModelPaths, t: &mut LoadTimes| {
    stack::caller_voice(p, t)
});

/// A simulated caller saying `text` (our voice without its random variation:
/// the same audio on every run), at 16 kHz.
pub fn speech(text: &str) -> Audio {
    callbox::engines::speak(caller().as_ref(), text)
        .unwrap()
        .resampled(MODEL_RATE)
}

/// Deterministic white noise at `dbfs` RMS.
pub fn white_noise(secs: f32, dbfs: f32, rate: u32, seed: u64) -> Audio {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = (secs * rate as f32) as usize;
    // Uniform in [-1, 1) has RMS 1/sqrt(3).
    let scale = 10f32.powf(dbfs / 20.0) * 3f32.sqrt();
    let samples = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            (u * 2.0 - 1.0) * scale
        })
        .collect();
    Audio::new(samples, rate)
}

/// Start and end (in samples) of the region louder than -50 dBFS (soft
/// final fricatives included), by 10 ms frames.
pub fn speech_extent(a: &Audio) -> (usize, usize) {
    callbox::audio::loud_extent(&a.samples, a.rate, -50.0, 10).expect("some speech")
}

/// The five LibriVox clips and their reference transcripts.
pub fn librivox() -> Vec<(Audio, String)> {
    let dir = store().root.join("testdata/librivox");
    let refs = std::fs::read_to_string(dir.join("transcription")).unwrap();
    refs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (text, id) = l.rsplit_once('(').unwrap();
            let id = id.trim_end_matches(')').trim();
            let text = text
                .replace("<s>", "")
                .replace("</s>", "")
                .trim()
                .to_string();
            (
                callbox::audio::wav::read(&dir.join(format!("{id}.wav"))).unwrap(),
                text,
            )
        })
        .collect()
}
