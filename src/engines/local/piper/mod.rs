//! Piper text-to-speech: espeak-ng phonemes → phoneme ids → a VITS model in
//! ONNX Runtime, one sentence at a time so the first sentence can play while
//! the rest is synthesised.

pub(crate) mod espeak;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::onnx::{self, Shapes};
use crate::audio::Audio;
use crate::engines::device::Device;
use crate::engines::{SynthesisStats, Tts};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
    #[serde(default)]
    inference: Inference,
}

#[derive(Debug, Clone, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Inference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for Inference {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PiperOptions {
    /// Silence after each sentence, in seconds.
    pub(crate) sentence_silence: f32,
    /// Speaking rate multiplier on the voice's own length scale (>1 slower).
    pub(crate) length_scale: f32,
    /// Folder that contains `espeak-ng-data` (default: the system's).
    pub(crate) espeak_data: Option<PathBuf>,
    pub(crate) threads: usize,
    /// The voice's random variation (its noise scales). Off, the same text
    /// always gives the same audio: simulated callers use that, so a test or
    /// a benchmark hears the same question on every run and a transcript
    /// that differs is the pipeline's doing, not the voice's dice.
    pub(crate) variation: bool,
    pub(crate) device: Device,
}

impl Default for PiperOptions {
    fn default() -> Self {
        Self {
            sentence_silence: 0.2,
            length_scale: 1.0,
            espeak_data: std::env::var_os("CALLBOX_ESPEAK_DATA").map(PathBuf::from),
            // Every core: the caller waits for the first clause, and the
            // reply pauses the LLM while Piper synthesises it.
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            variation: true,
            device: Device::Cpu,
        }
    }
}

pub(crate) struct Piper {
    session: Mutex<Session>,
    config: VoiceConfig,
    options: PiperOptions,
    speaker: Option<i64>,
}

impl Piper {
    /// Loads `voice.onnx` and its `voice.onnx.json`.
    pub(crate) fn load(ort_lib: &Path, model: &Path, options: PiperOptions) -> Result<Self> {
        let json = PathBuf::from(format!("{}.json", model.display()));
        crate::models::require("Piper voice config", &json)?;
        let config: VoiceConfig = serde_json::from_slice(&std::fs::read(&json)?)
            .map_err(|e| Error::corrupt("Piper voice config", &json, e))?;
        if config
            .phoneme_type
            .as_deref()
            .is_some_and(|t| t != "espeak")
        {
            return Err(Error::corrupt(
                "Piper voice config",
                &json,
                "only espeak phonemes are supported",
            ));
        }
        let session = onnx::session(
            ort_lib,
            model,
            "Piper voice",
            options.threads,
            Shapes::Varying,
            options.device,
        )?;
        let speaker = (config.num_speakers > 1).then_some(0);
        Ok(Self {
            session: Mutex::new(session),
            config,
            options,
            speaker,
        })
    }

    /// Phoneme ids for one sentence: BOS, each phoneme followed by a pad,
    /// then EOS. Unknown phonemes are skipped.
    fn ids(&self, phonemes: &str) -> Vec<i64> {
        let map = &self.config.phoneme_id_map;
        let get = |k: &str| map.get(k).cloned().unwrap_or_default();
        let pad = get("_");
        let mut ids = get("^");
        ids.extend(&pad);
        for ch in phonemes.nfd() {
            if let Some(id) = map.get(ch.encode_utf8(&mut [0u8; 4]) as &str) {
                ids.extend(id);
                ids.extend(&pad);
            }
        }
        ids.extend(get("$"));
        ids
    }

    fn run(&self, ids: Vec<i64>) -> Result<Vec<f32>> {
        let err = |e: ort::Error| Error::engine("piper", e);
        let mut inf = self.config.inference;
        if !self.options.variation {
            (inf.noise_scale, inf.noise_w) = (0.0, 0.0);
        }
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids)).map_err(err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(err)?;
        let scales = Tensor::from_array((
            [3usize],
            vec![
                inf.noise_scale,
                inf.length_scale * self.options.length_scale,
                inf.noise_w,
            ],
        ))
        .map_err(err)?;
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let out = match self.speaker {
            Some(sid) => {
                let sid = Tensor::from_array(([1usize], vec![sid])).map_err(err)?;
                s.run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales, "sid" => sid])
            }
            None => s.run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales]),
        }
        .map_err(err)?;
        let (_, audio) = out["output"].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.iter().map(|x| x.clamp(-1.0, 1.0)).collect())
    }

    /// The phoneme sentences for `text` (for tests and tools).
    pub(crate) fn phoneme_sentences(&self, text: &str) -> Result<Vec<String>> {
        let clauses = espeak::phonemize(
            text,
            &self.config.espeak.voice,
            self.options.espeak_data.as_deref(),
        )?;
        Ok(espeak::sentences(&clauses))
    }
}

impl Tts for Piper {
    fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    fn synthesize(
        &self,
        text: &str,
        on_audio: &mut dyn FnMut(Audio) -> bool,
    ) -> Result<SynthesisStats> {
        let t0 = Instant::now();
        let rate = self.sample_rate();
        let sentences = self.phoneme_sentences(text)?;
        let mut stats = SynthesisStats {
            characters: text.chars().count(),
            ..Default::default()
        };
        let n = sentences.len();
        for (i, s) in sentences.into_iter().enumerate() {
            let mut samples = self.run(self.ids(&s))?;
            if i + 1 < n {
                samples.extend(std::iter::repeat_n(
                    0.0,
                    (self.options.sentence_silence * rate as f32) as usize,
                ));
            }
            stats.sentences += 1;
            stats.audio_secs += samples.len() as f64 / rate as f64;
            stats
                .first_audio_ms
                .get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
            if !on_audio(Audio::new(samples, rate)) {
                break;
            }
        }
        stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }
}
