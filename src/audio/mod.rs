//! Audio primitives shared by every engine: a mono buffer that carries its
//! sample rate (rate mistakes are silent otherwise), G.711 μ-law, resampling,
//! the Whisper-style log-mel front end and WAV I/O.

pub mod mel;
pub(crate) mod resample;
pub mod ulaw;
pub mod wav;

/// Mono PCM in [-1, 1] at a known rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub rate: u32,
}

impl Audio {
    pub fn new(samples: Vec<f32>, rate: u32) -> Self {
        Self { samples, rate }
    }

    pub fn silence(secs: f32, rate: u32) -> Self {
        Self::new(vec![0.0; (secs * rate as f32).round() as usize], rate)
    }

    pub fn from_i16(samples: &[i16], rate: u32) -> Self {
        Self::new(samples.iter().map(|&s| s as f32 / 32768.0).collect(), rate)
    }

    pub fn to_i16(&self) -> Vec<i16> {
        self.samples.iter().map(|&s| f32_to_i16(s)).collect()
    }

    pub fn duration_secs(&self) -> f32 {
        self.samples.len() as f32 / self.rate.max(1) as f32
    }

    /// Converts to `rate`, borrowing nothing; a no-op copy when the rate matches.
    pub fn resampled(&self, rate: u32) -> Audio {
        Audio::new(resample::resample(&self.samples, self.rate, rate), rate)
    }

    pub fn append(&mut self, other: &Audio) {
        assert_eq!(self.rate, other.rate, "appending audio of another rate");
        self.samples.extend_from_slice(&other.samples);
    }
}

/// Caller audio as a transport hands it to a call: 16-bit PCM, its rate,
/// and where it belongs on the caller's stream. Transports decode their own
/// wire format (Twilio's μ-law, the browser's PCM), so everything after them
/// sees one type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub(crate) pcm: Vec<i16>,
    pub rate: u32,
    /// Milliseconds from the start of the stream by the sender's clock
    /// (Twilio's media `timestamp`); `None` when the transport has no clock.
    pub(crate) at_ms: Option<u64>,
}

pub(crate) fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Where the audio louder than `dbfs` (RMS over frames of `frame_ms`)
/// begins and ends, in samples; `None` when none of it is.
pub fn loud_extent(samples: &[f32], rate: u32, dbfs: f32, frame_ms: u32) -> Option<(usize, usize)> {
    let frame = (rate as usize * frame_ms as usize / 1000).max(1);
    let loud: Vec<bool> = samples.chunks(frame).map(|c| rms_dbfs(c) > dbfs).collect();
    let first = loud.iter().position(|&l| l)?;
    let last = loud.iter().rposition(|&l| l)?;
    Some((first * frame, ((last + 1) * frame).min(samples.len())))
}

pub fn rms_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return f32::NEG_INFINITY;
    }
    let mean_sq = samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32;
    10.0 * mean_sq.log10()
}
