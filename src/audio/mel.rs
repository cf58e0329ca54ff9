//! The log-mel front end shared by Whisper and Smart Turn.
//!
//! Both models were trained on the same Whisper features: a 400-point STFT
//! with a periodic Hann window, hop 160, `center=True` reflect padding, power
//! spectrum, Slaney mel filters and `log10`. The FFT comes from `realfft`; the
//! filter bank is OpenAI's own `mel_filters.npz`, fetched with the models, so
//! the features match the reference bit for bit in everything but rounding.
//!
//! Only the frames that are needed are computed: candle's stock `pcm_to_mel`
//! pads every utterance to 30 s, which costs ~120 ms per turn on two cores.

use std::path::Path;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};

pub(crate) const N_FFT: usize = 400;
pub(crate) const HOP: usize = 160;
pub(crate) const N_FREQS: usize = N_FFT / 2 + 1;

/// A mel filter bank, `n_mels × 201`, row-major.
#[derive(Clone)]
pub(crate) struct MelFilters {
    pub(crate) n_mels: usize,
    weights: Vec<f32>,
    /// First and one-past-last non-zero bin of each filter: the bank is ~95%
    /// zeros, and skipping them makes the projection ten times cheaper.
    spans: Vec<(usize, usize)>,
}

impl MelFilters {
    /// Loads `mel_<n_mels>` from OpenAI's `mel_filters.npz`.
    pub(crate) fn load_npz(path: &Path, n_mels: usize) -> Result<Self> {
        if !path.exists() {
            return Err(Error::missing("mel filter bank", path));
        }
        let key = format!("mel_{n_mels}");
        let arrays = candle_core::Tensor::read_npz(path)
            .map_err(|e| Error::corrupt("mel filter bank", path, e))?;
        let (_, t) = arrays
            .into_iter()
            .find(|(k, _)| *k == key)
            .ok_or_else(|| Error::corrupt("mel filter bank", path, format!("no array {key}")))?;
        let dims = t.dims().to_vec();
        if dims != [n_mels, N_FREQS] {
            return Err(Error::corrupt(
                "mel filter bank",
                path,
                format!("shape {dims:?}"),
            ));
        }
        let weights = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::corrupt("mel filter bank", path, e))?;
        Ok(Self::from_weights(n_mels, weights))
    }

    pub(crate) fn from_weights(n_mels: usize, weights: Vec<f32>) -> Self {
        let spans = weights
            .chunks(N_FREQS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (first, last.max(first))
            })
            .collect();
        Self {
            n_mels,
            weights,
            spans,
        }
    }
}

/// Computes `log10` mel power spectrograms.
#[derive(Clone)]
pub(crate) struct LogMel {
    filters: MelFilters,
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
}

impl LogMel {
    pub(crate) fn new(filters: MelFilters) -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        // Periodic Hann, as torch.hann_window(400) computes it.
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos())
            .collect();
        Self {
            filters,
            fft,
            window,
        }
    }

    pub(crate) fn n_mels(&self) -> usize {
        self.filters.n_mels
    }

    /// `log10(max(mel, 1e-10))` for the first `n_frames` STFT frames of
    /// `samples` (16 kHz), with `center=True` reflect padding. Frame `t` is
    /// centred on sample `t * 160`. Returns `n_mels × n_frames`, row-major.
    pub(crate) fn log_mel(&self, samples: &[f32], n_frames: usize) -> Vec<f32> {
        let n_mels = self.filters.n_mels;
        let mut out = vec![0f32; n_mels * n_frames];
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; N_FREQS];
        let pad = (N_FFT / 2) as isize;
        let n = samples.len() as isize;
        for t in 0..n_frames {
            let start = (t * HOP) as isize - pad;
            for (i, (slot, w)) in frame.iter_mut().zip(&self.window).enumerate() {
                *slot = w * sample_reflected(samples, n, start + i as isize);
            }
            self.fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .expect("fft sizes are fixed");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for m in 0..n_mels {
                let (a, b) = self.filters.spans[m];
                let row = &self.filters.weights[m * N_FREQS..(m + 1) * N_FREQS];
                let e: f32 = row[a..b].iter().zip(&power[a..b]).map(|(w, p)| w * p).sum();
                out[m * n_frames + t] = e.max(1e-10).log10();
            }
        }
        out
    }
}

/// numpy's `reflect` padding (the edge sample is not repeated); zero outside
/// a signal too short to reflect.
fn sample_reflected(x: &[f32], n: isize, i: isize) -> f32 {
    if n == 0 {
        return 0.0;
    }
    let mut j = i;
    if j < 0 {
        j = -j;
    }
    if j >= n {
        j = 2 * (n - 1) - j;
    }
    if (0..n).contains(&j) {
        x[j as usize]
    } else {
        0.0
    }
}

/// Whisper's dynamic-range clamp and scaling: `max(x, max - 8)`, then
/// `(x + 4) / 4`.
pub(crate) fn whisper_normalise(log_mel: &mut [f32]) {
    let max = log_mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in log_mel.iter_mut() {
        *v = (v.max(max - 8.0) + 4.0) / 4.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A triangular test bank (not Slaney, but the code path is the same).
    fn toy_filters() -> MelFilters {
        let mut w = vec![0f32; 4 * N_FREQS];
        for m in 0..4 {
            for k in 0..N_FREQS {
                let centre = 20.0 + 40.0 * m as f32;
                w[m * N_FREQS + k] = (1.0 - ((k as f32 - centre).abs() / 20.0)).max(0.0);
            }
        }
        MelFilters::from_weights(4, w)
    }

    #[test]
    fn reflect_padding_matches_numpy() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let got: Vec<f32> = (-3..7).map(|i| sample_reflected(&x, 4, i)).collect();
        // np.pad([1,2,3,4], 3, mode="reflect") = [4,3,2,1,2,3,4,3,2,1]
        assert_eq!(got, [4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn a_tone_lands_in_its_band() {
        // Bin k is k × 40 Hz; filter m is centred on bin 20 + 40 m.
        let tone: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 2400.0 * i as f32 / 16000.0).sin())
            .collect();
        let mel = LogMel::new(toy_filters());
        let out = mel.log_mel(&tone, 50);
        let at = |m: usize| out[m * 50 + 25];
        // 2,400 Hz = bin 60 = centre of filter 1.
        assert!(
            at(1) > at(0) + 3.0 && at(1) > at(2) + 3.0,
            "{:?}",
            (at(0), at(1), at(2))
        );
    }

    #[test]
    fn silence_hits_the_floor() {
        let mel = LogMel::new(toy_filters());
        let out = mel.log_mel(&vec![0.0; 1600], 10);
        assert!(out.iter().all(|&v| v == -10.0));
    }
}
