//! Smart Turn v3 end-of-turn detection (ONNX, a Whisper-tiny encoder with a
//! classifier head), with exactly the preprocessing it was trained on: the
//! last 8 s of 16 kHz audio, zero-padded on the left, normalised to zero mean
//! and unit variance over the whole padded buffer, Whisper log-mel, 800
//! frames. The output is already a probability.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;

use super::onnx::{self, Optimisation, Shapes};
use crate::audio::mel::{whisper_normalise, LogMel, MelFilters};
use crate::engines::device::Device;
use crate::engines::{TurnDetector, TurnVerdict, MODEL_RATE};
use crate::error::{Error, Result};

pub(crate) const SECONDS: usize = 8;
pub(crate) const SAMPLES: usize = SECONDS * MODEL_RATE as usize;
pub const FRAMES: usize = SAMPLES / crate::audio::mel::HOP;

pub struct SmartTurn {
    session: Mutex<Session>,
    mel: LogMel,
}

impl SmartTurn {
    pub fn load(ort_lib: &Path, model: &Path, mel_filters: &Path) -> Result<Self> {
        Self::load_on(ort_lib, model, mel_filters, Device::Cpu)
    }

    pub(crate) fn load_on(
        ort_lib: &Path,
        model: &Path,
        mel_filters: &Path,
        device: Device,
    ) -> Result<Self> {
        Self::open(ort_lib, model, mel_filters, device, Optimisation::Full)
    }

    /// The model with ONNX Runtime's graph optimisations off, on the CPU:
    /// each quantize/dequantize node runs as written instead of the fused
    /// integer kernels ONNX Runtime picks per instruction set, so the scores
    /// are the reference implementation's (the golden values were taken this
    /// way) on every x86-64 CPU with FMA3, and at most one output step away
    /// on older ones (tests/engines.rs). About twice as slow; for tests and
    /// checks, not for calls.
    pub fn load_reference(ort_lib: &Path, model: &Path, mel_filters: &Path) -> Result<Self> {
        Self::open(ort_lib, model, mel_filters, Device::Cpu, Optimisation::Off)
    }

    fn open(
        ort_lib: &Path,
        model: &Path,
        mel_filters: &Path,
        device: Device,
        optimisation: Optimisation,
    ) -> Result<Self> {
        let session = onnx::session_with(
            ort_lib,
            model,
            "Smart Turn model",
            1,
            Shapes::Fixed,
            device,
            optimisation,
        )?;
        let mel = LogMel::new(MelFilters::load_npz(mel_filters, 80)?);
        Ok(Self {
            session: Mutex::new(session),
            mel,
        })
    }

    /// The model's input for `audio`: `80 × 800` normalised log-mel.
    pub fn features(&self, audio: &[f32]) -> Vec<f32> {
        let tail = &audio[audio.len().saturating_sub(SAMPLES)..];
        let mut buf = vec![0f32; SAMPLES];
        buf[SAMPLES - tail.len()..].copy_from_slice(tail);
        let n = SAMPLES as f64;
        let mean = buf.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = buf.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let scale = 1.0 / (var + 1e-7).sqrt();
        for x in buf.iter_mut() {
            *x = ((*x as f64 - mean) * scale) as f32;
        }
        // center=True yields 801 frames for 8 s; the last one is dropped.
        let mut mel = self.mel.log_mel(&buf, FRAMES);
        whisper_normalise(&mut mel);
        mel
    }
}

impl TurnDetector for SmartTurn {
    fn predict(&self, audio: &[f32]) -> Result<TurnVerdict> {
        let t0 = Instant::now();
        let features = self.features(audio);
        let err = |e: ort::Error| Error::engine("smart-turn", e);
        let input = Tensor::from_array(([1usize, 80, FRAMES], features)).map_err(err)?;
        let t1 = Instant::now();
        let probability = {
            let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
            let out = s
                .run(ort::inputs!["input_features" => input])
                .map_err(err)?;
            let (_, p) = out["logits"].try_extract_tensor::<f32>().map_err(err)?;
            p[0]
        };
        let inference_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(TurnVerdict {
            probability,
            inference_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }
}
