//! Whisper speech-to-text on candle, tuned for phone turns.
//!
//! The stock recipe pads every utterance to 30 s and costs ~950 ms per turn
//! for tiny.en on two cores. A turn is a few seconds, so we encode only the
//! audio plus one second of silence (rounded up to whole seconds), compute
//! the log-mel for just those frames, and decode greedily with cached
//! keys/values: ~100 ms per turn.
//!
//! A shortened encoder context makes Whisper less sure where the speech
//! ends: it may start the sentence over instead of emitting end-of-text,
//! sometimes with different punctuation. Three guards stop that: a finished
//! sentence followed by the utterance's own first two tokens ends the
//! decoding there (the usual case, and the text before it is right), a cap
//! of 8 tokens per second of audio, and a repetition stop that cuts the
//! output where a run of six tokens (not all the same) recurs. Genuine
//! repetitions such as "no no no no" repeat a single token and are kept.

pub(crate) mod model;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::audio::mel::{whisper_normalise, LogMel, MelFilters, HOP};
use crate::audio::Audio;
use crate::engines::{Stt, SttTimings, Transcript, MODEL_RATE};
use crate::error::{Error, Result};
use model::{argmax, Config, Model};

/// Frames per second of audio in the mel (16,000 / 160).
const FRAMES_PER_SEC: usize = 100;
/// Whisper's full context: 30 s.
const MAX_FRAMES: usize = 3000;
const TOKENS_PER_SEC: f32 = 8.0;

#[derive(Debug, Clone)]
pub(crate) struct WhisperOptions {
    /// Shorten the encoder context to the audio (the default); `false` runs
    /// the stock 30 s context, for comparison.
    pub(crate) short_context: bool,
    /// Trailing silence added to the context, in seconds.
    pub(crate) padding_secs: f32,
    pub(crate) device: Device,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        Self {
            short_context: true,
            padding_secs: 1.0,
            device: Device::Cpu,
        }
    }
}

pub(crate) struct Whisper {
    model: Model,
    tokenizer: Tokenizer,
    mel: LogMel,
    options: WhisperOptions,
    /// Tokens that start every transcription.
    prompt: Vec<u32>,
    eot: u32,
    /// `true` at every step: special tokens and the configured list.
    suppress: Vec<bool>,
    /// Also suppressed at the first step (blank, end-of-text).
    suppress_begin: Vec<u32>,
    /// Tokens that end with a sentence's final punctuation.
    sentence_end: Vec<bool>,
    dtype: DType,
}

impl Whisper {
    /// Loads a model directory (`model.safetensors`, `config.json`,
    /// `tokenizer.json`) and the mel filter bank.
    pub(crate) fn load(dir: &Path, mel_filters: &Path, options: WhisperOptions) -> Result<Self> {
        let what = "Whisper model";
        let weights = dir.join("model.safetensors");
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            crate::models::require(what, &dir.join(f))?;
        }
        let cfg: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .map_err(|e| Error::corrupt(what, dir.join("config.json"), e))?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| Error::corrupt(what, dir.join("tokenizer.json"), e))?;
        let dtype = if options.device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        };
        // SAFETY: the file is only read; it must not change while mapped, and
        // it lives in our model cache.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, &options.device) }
                .map_err(|e| Error::corrupt(what, &weights, e))?;
        let model = Model::load(&cfg, vb).map_err(|e| Error::corrupt(what, &weights, e))?;
        let mel = LogMel::new(MelFilters::load_npz(mel_filters, cfg.num_mel_bins)?);

        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                Error::corrupt(what, dir.join("tokenizer.json"), format!("no token {t}"))
            })
        };
        let sot = id("<|startoftranscript|>")?;
        let eot = id("<|endoftext|>")?;
        let no_timestamps = id("<|notimestamps|>")?;
        // English-only checkpoints have 51,864 tokens and take no language or
        // task token.
        let multilingual = cfg.vocab_size >= 51865;
        let prompt = if multilingual {
            vec![sot, id("<|en|>")?, id("<|transcribe|>")?, no_timestamps]
        } else {
            vec![sot, no_timestamps]
        };
        let mut suppress = vec![false; cfg.vocab_size];
        for &t in &cfg.suppress_tokens {
            if let Some(s) = suppress.get_mut(t as usize) {
                *s = true;
            }
        }
        // Everything after end-of-text is a control or timestamp token.
        for s in suppress.iter_mut().skip(eot as usize + 1) {
            *s = true;
        }
        let suppress_begin = if cfg.begin_suppress_tokens.is_empty() {
            vec![id("Ġ").unwrap_or(220), eot]
        } else {
            cfg.begin_suppress_tokens.clone()
        };
        let sentence_end = (0..cfg.vocab_size as u32)
            .map(|t| {
                tokenizer
                    .id_to_token(t)
                    .is_some_and(|s| s.ends_with(['.', '?', '!']))
            })
            .collect();
        Ok(Self {
            model,
            tokenizer,
            mel,
            options,
            prompt,
            eot,
            suppress,
            suppress_begin,
            sentence_end,
            dtype,
        })
    }

    /// The first transcription is several times slower than later ones
    /// (allocations, page faults on the mapped weights): pay that at startup.
    pub(crate) fn warm_up(&self) -> Result<()> {
        let tone: Vec<f32> = (0..MODEL_RATE as usize)
            .map(|i| 0.1 * (i as f32 * 0.05).sin())
            .collect();
        self.transcribe(&Audio::new(tone, MODEL_RATE)).map(|_| ())
    }

    /// Decodes one segment of at most 29 s. A short context that yields an
    /// unconfident or looping result is decoded again with more silence
    /// after the audio, as Whisper's own fallback does for low
    /// log-probabilities: rare, and it recovers the accuracy of the stock
    /// 30 s recipe at a fraction of its cost.
    fn segment(&self, samples: &[f32], timings: &mut SttTimings) -> candle_core::Result<Vec<u32>> {
        if !self.options.short_context {
            return Ok(self.decode(samples, None, timings)?.tokens);
        }
        let first = self.decode(samples, Some(self.options.padding_secs), timings)?;
        if first.looped || first.avg_logprob < LOGPROB_FALLBACK {
            tracing::debug!(
                looped = first.looped,
                avg_logprob = first.avg_logprob,
                tokens = first.tokens.len(),
                "short-context decoding not trusted: decoding again with more padding"
            );
            timings.fallbacks += 1;
            return Ok(self
                .decode(samples, Some(FALLBACK_PADDING_SECS), timings)?
                .tokens);
        }
        Ok(first.tokens)
    }

    /// `padding_secs`: silence after the audio in the encoder context
    /// (rounded up to whole seconds); `None` for the full 30 s.
    fn decode(
        &self,
        samples: &[f32],
        padding_secs: Option<f32>,
        timings: &mut SttTimings,
    ) -> candle_core::Result<Decoded> {
        let t0 = Instant::now();
        let audio_frames = samples.len().div_ceil(HOP);
        let n_frames = match padding_secs {
            Some(secs) => {
                let pad = (secs * FRAMES_PER_SEC as f32) as usize;
                ((audio_frames + pad).div_ceil(FRAMES_PER_SEC) * FRAMES_PER_SEC).min(MAX_FRAMES)
            }
            None => MAX_FRAMES,
        };
        let mut padded = samples.to_vec();
        padded.resize(n_frames * HOP, 0.0);
        let mut mel = self.mel.log_mel(&padded, n_frames);
        whisper_normalise(&mut mel);
        let mel = Tensor::from_vec(mel, (1, self.mel.n_mels(), n_frames), &self.options.device)?
            .to_dtype(self.dtype)?;
        let t1 = Instant::now();
        timings.features_ms += (t1 - t0).as_secs_f64() * 1e3;

        let features = self.model.encoder.forward(&mel)?;
        let t2 = Instant::now();
        timings.encoder_ms += (t2 - t1).as_secs_f64() * 1e3;

        let secs = samples.len() as f32 / MODEL_RATE as f32;
        let cap =
            ((secs * TOKENS_PER_SEC).ceil() as usize + 4).min(self.model.decoder.max_len() / 2);
        let mut state = self.model.decoder.start(&features)?;
        let mut logits = self.model.decoder.step(&self.prompt, &mut state)?;
        let mut out: Vec<u32> = Vec::new();
        let mut logprob = 0.0f64;
        let mut looped = false;
        while out.len() < cap {
            for (l, &s) in logits.iter_mut().zip(&self.suppress) {
                if s {
                    *l = f32::NEG_INFINITY;
                }
            }
            if out.is_empty() {
                for &t in &self.suppress_begin {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let next = argmax(&logits);
            logprob += log_softmax_at(&logits, next);
            if next == self.eot {
                break;
            }
            out.push(next);
            let ends = |t: u32| self.sentence_end.get(t as usize).copied().unwrap_or(false);
            if let Some(cut) = restarted(&out, ends) {
                out.truncate(out.len() - cut);
                break;
            }
            if let Some(cut) = repeated_phrase(&out) {
                out.truncate(out.len() - cut);
                looped = true;
                break;
            }
            logits = self.model.decoder.step(&[next], &mut state)?;
        }
        timings.decoder_ms += t2.elapsed().as_secs_f64() * 1e3;
        timings.tokens += out.len();
        // Hitting the cap is a loop that the phrase check did not catch.
        looped |= out.len() >= cap;
        let avg_logprob = logprob / (out.len() + 1) as f64;
        Ok(Decoded {
            tokens: out,
            avg_logprob,
            looped,
        })
    }
}

/// Whisper's own threshold for "this decoding is not trustworthy".
const LOGPROB_FALLBACK: f64 = -1.0;
/// Trailing silence of the second attempt: enough, on the LibriVox clips,
/// for every short-context failure to match the stock result.
const FALLBACK_PADDING_SECS: f32 = 5.0;

struct Decoded {
    tokens: Vec<u32>,
    /// Mean log-probability of the chosen tokens (end-of-text included).
    avg_logprob: f64,
    looped: bool,
}

/// `log softmax(logits)[i]`, ignoring suppressed (−∞) entries.
fn log_softmax_at(logits: &[f32], i: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[i as usize] as f64 - max - sum.ln()
}

/// Tokens in a run whose recurrence marks a decoding loop.
const LOOP_RUN: usize = 6;

/// Tokens of a restart that must match the utterance's beginning.
const RESTART_RUN: usize = 2;

/// If the output has just started over — a sentence end followed by the
/// utterance's first [`RESTART_RUN`] tokens — the number of tokens to drop.
pub(crate) fn restarted(tokens: &[u32], ends_sentence: impl Fn(u32) -> bool) -> Option<usize> {
    let n = tokens.len();
    let k = RESTART_RUN;
    (n > 2 * k && tokens[n - k..] == tokens[..k] && ends_sentence(tokens[n - k - 1])).then_some(k)
}

/// If the last [`LOOP_RUN`] tokens (not all the same token) already occurred
/// earlier in `tokens`, the number of tokens to drop: the recurrence.
pub(crate) fn repeated_phrase(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    if n < 2 * LOOP_RUN {
        return None;
    }
    let tail = &tokens[n - LOOP_RUN..];
    if tail.iter().all(|&t| t == tail[0]) {
        return None;
    }
    tokens[..n - LOOP_RUN]
        .windows(LOOP_RUN)
        .any(|w| w == tail)
        .then_some(LOOP_RUN)
}

impl Stt for Whisper {
    fn transcribe(&self, audio: &Audio) -> Result<Transcript> {
        let t0 = Instant::now();
        let audio = if audio.rate == MODEL_RATE {
            audio.clone()
        } else {
            audio.resampled(MODEL_RATE)
        };
        let mut timings = SttTimings::default();
        // Keep one padding second inside the 30 s window.
        let max = (MAX_FRAMES / FRAMES_PER_SEC - 1) * MODEL_RATE as usize;
        let mut tokens = Vec::new();
        for chunk in audio.samples.chunks(max) {
            if chunk.len() < MODEL_RATE as usize / 10 {
                continue;
            }
            tokens.extend(
                self.segment(chunk, &mut timings)
                    .map_err(|e| Error::engine("whisper", e))?,
            );
        }
        let text = self
            .tokenizer
            .decode(&tokens, true)
            .map_err(|e| Error::engine("whisper", e))?
            .trim()
            .to_string();
        timings.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Transcript { text, timings })
    }
}

#[cfg(test)]
mod tests {
    use super::{repeated_phrase, restarted};

    #[test]
    fn a_restart_after_a_sentence_end_is_cut() {
        // 9 = ".", 8 = "?": sentence ends.
        let ends = |t: u32| t == 9 || t == 8;
        let out = [1, 2, 3, 4, 8, 1, 2];
        assert_eq!(restarted(&out, ends), Some(2));
        // Not after a sentence end: a phrase can repeat mid-sentence.
        assert_eq!(restarted(&[1, 2, 3, 4, 1, 2], ends), None);
        // One matching token is not yet a restart.
        assert_eq!(restarted(&[1, 2, 3, 9, 1], ends), None);
        // Too short to tell.
        assert_eq!(restarted(&[1, 9, 1, 2], ends), None);
    }

    #[test]
    fn repeated_phrases_are_found_but_stutters_kept() {
        let first = [1, 2, 3, 4, 5, 6, 7];
        // The sentence starts over (after a different ending).
        let looped: Vec<u32> = first
            .iter()
            .chain(&[8])
            .chain(&first[..6])
            .copied()
            .collect();
        assert_eq!(repeated_phrase(&looped), Some(6));
        // Checked after every token, so the cut leaves the first copy whole.
        let kept = looped.len() - 6;
        assert_eq!(&looped[..kept], &[1, 2, 3, 4, 5, 6, 7, 8]);
        // "no no no no no no no no" is speech, not a loop.
        assert_eq!(repeated_phrase(&[7; 16]), None);
        assert_eq!(repeated_phrase(&[1, 2, 3, 1, 2, 3, 1, 2, 3]), None);
        assert_eq!(
            repeated_phrase(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
            None
        );
    }
}
