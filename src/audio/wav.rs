//! WAV files in and out (hound). Everything inside callbox is mono f32 in
//! [-1, 1] with an explicit rate; this is the only place that sees integer
//! WAV layouts and channel counts.

use std::path::Path;

use crate::error::{Error, Result};

use super::Audio;

pub fn read(path: &Path) -> Result<Audio> {
    let mut reader = hound::WavReader::open(path)
        .map_err(|e| Error::Audio(format!("cannot read WAV {}: {e}", path.display())))?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Audio(format!("{}: {e}", path.display())))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Audio(format!("{}: {e}", path.display())))?
        }
    };
    let samples = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok(Audio::new(samples, spec.sample_rate))
}

/// Writes 16-bit PCM, mono or interleaved stereo. The file is private to
/// the server's user ([`crate::private_files`]): the WAVs we write are calls.
pub(crate) fn write_i16(path: &Path, rate: u32, channels: u16, samples: &[i16]) -> Result<()> {
    let file = crate::private_files::create(path)?;
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::new(std::io::BufWriter::new(file), spec)
        .map_err(|e| Error::Audio(format!("cannot write {}: {e}", path.display())))?;
    for &s in samples {
        w.write_sample(s)
            .map_err(|e| Error::Audio(format!("{}: {e}", path.display())))?;
    }
    w.finalize()
        .map_err(|e| Error::Audio(format!("{}: {e}", path.display())))
}

/// Two tracks side by side (left, right), the shorter padded with silence.
pub(crate) fn write_stereo(path: &Path, rate: u32, left: &[i16], right: &[i16]) -> Result<()> {
    let n = left.len().max(right.len());
    let mut interleaved = Vec::with_capacity(2 * n);
    for i in 0..n {
        interleaved.push(left.get(i).copied().unwrap_or(0));
        interleaved.push(right.get(i).copied().unwrap_or(0));
    }
    write_i16(path, rate, 2, &interleaved)
}

pub fn write(path: &Path, audio: &Audio) -> Result<()> {
    write_i16(path, audio.rate, 1, &audio.to_i16())
}
