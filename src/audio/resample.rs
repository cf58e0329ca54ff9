//! Band-limited resampling between the rates the pipeline meets: Twilio's
//! 8 kHz, the models' 16 kHz, Piper's 22.05 kHz and RNNoise's 48 kHz.
//!
//! rubato's FFT resampler does the filtering; naive sample repetition would
//! alias and measurably hurt both VAD and Whisper. Two shapes are offered:
//! [`resample`] for whole buffers (delay compensated, exact output length) and
//! [`Stream`] for live audio arriving in small frames.

use rubato::{FftFixedIn, Resampler};

/// Block size for offline conversion: large blocks amortise the FFTs.
const OFFLINE_CHUNK: usize = 1024;

pub(crate) fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let expected = (input.len() as u64 * to as u64).div_ceil(from as u64) as usize;
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, OFFLINE_CHUNK, 2, 1)
        .expect("valid sample rates");
    let delay = r.output_delay();
    let mut out = Vec::with_capacity(expected + delay + OFFLINE_CHUNK * 4);
    let mut pos = 0;
    while pos + r.input_frames_next() <= input.len() {
        let n = r.input_frames_next();
        let block = r.process(&[&input[pos..pos + n]], None).expect("resample");
        out.extend_from_slice(&block[0]);
        pos += n;
    }
    let tail = &input[pos..];
    if !tail.is_empty() {
        let block = r.process_partial(Some(&[tail]), None).expect("resample");
        out.extend_from_slice(&block[0]);
    }
    // Flush the filter's delay line with silence until the whole signal is out.
    while out.len() < expected + delay {
        let block = r.process_partial::<&[f32]>(None, None).expect("resample");
        out.extend_from_slice(&block[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    out
}

/// A resampler for live audio: push any number of samples, get back whatever
/// the filter can produce so far. Its group delay (a few ms) is constant, so
/// timestamps stay comparable within a call.
pub(crate) struct Stream {
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
}

impl Stream {
    /// `frame` is the typical push size; it sets the FFT block and therefore
    /// the delay (one frame).
    pub(crate) fn new(from: u32, to: u32, frame: usize) -> Self {
        let inner = (from != to).then(|| {
            FftFixedIn::<f32>::new(from as usize, to as usize, frame, 1, 1)
                .expect("valid sample rates")
        });
        Self {
            inner,
            pending: Vec::with_capacity(frame * 2),
        }
    }

    pub(crate) fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let Some(r) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        while self.pending.len() - start >= r.input_frames_next() {
            let n = r.input_frames_next();
            let block = r
                .process(&[&self.pending[start..start + n]], None)
                .expect("resample");
            out.extend_from_slice(&block[0]);
            start += n;
        }
        self.pending.drain(..start);
    }

    /// Output samples by which this stream lags its input.
    #[cfg(test)]
    pub(crate) fn delay(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn power_at(x: &[f32], freq: f32, rate: u32) -> f32 {
        let (mut re, mut im) = (0.0f32, 0.0f32);
        for (i, s) in x.iter().enumerate() {
            let ph = 2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32;
            re += s * ph.cos();
            im += s * ph.sin();
        }
        (re * re + im * im).sqrt() / x.len() as f32
    }

    #[test]
    fn length_and_alignment_are_exact() {
        let x = sine(440.0, 8000, 1.0);
        let y = resample(&x, 8000, 16000);
        assert_eq!(y.len(), 16000);
        // Same phase after delay compensation: compare against an ideal sine.
        let ideal = sine(440.0, 16000, 1.0);
        let err: f32 = y[1000..15000]
            .iter()
            .zip(&ideal[1000..15000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.02, "max error {err}");
    }

    #[test]
    fn downsampling_removes_content_above_nyquist() {
        // 6 kHz cannot exist at 8 kHz; a naive decimator would fold it to 2 kHz.
        let x = sine(6000.0, 16000, 1.0);
        let y = resample(&x, 16000, 8000);
        assert!(power_at(&y, 2000.0, 8000) < 0.01);
    }

    #[test]
    fn stream_matches_offline_after_delay() {
        let x = sine(300.0, 8000, 0.5);
        let mut s = Stream::new(8000, 48000, 160);
        let mut out = Vec::new();
        for chunk in x.chunks(160) {
            s.push(chunk, &mut out);
        }
        let d = s.delay();
        let offline = resample(&x, 8000, 48000);
        let n = out.len() - d;
        let err: f32 = out[d + 2000..d + n - 2000]
            .iter()
            .zip(&offline[2000..n - 2000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.02, "max error {err}");
    }
}
