//! The last seconds of the caller's 16 kHz audio, addressed by stream
//! position: what Smart Turn and STT read a turn from.

use crate::engines::MODEL_RATE;

/// Seconds of 16 kHz audio kept for turn detection and STT.
const TURN_BUFFER_SECS: usize = 30;

#[derive(Default)]
pub(crate) struct TurnBuffer {
    samples: Vec<f32>,
    /// Stream position of `samples[0]`.
    start: u64,
    /// Stream position just after the last sample.
    position: u64,
}

impl TurnBuffer {
    /// Appends audio that ends at stream position `end`. The buffer keeps
    /// [`TURN_BUFFER_SECS`] and trims a second at a time, not every frame.
    pub(crate) fn push(&mut self, samples: &[f32], end: u64) {
        self.samples.extend_from_slice(samples);
        self.position = end;
        self.start = end - self.samples.len() as u64;
        let keep = TURN_BUFFER_SECS * MODEL_RATE as usize;
        if self.samples.len() > keep + MODEL_RATE as usize {
            let cut = self.samples.len() - keep;
            self.samples.drain(..cut);
            self.start += cut as u64;
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The audio between two stream positions, as much of it as is kept.
    pub(crate) fn slice(&self, from: u64, to: u64) -> &[f32] {
        let a = from.saturating_sub(self.start) as usize;
        let b = (to.saturating_sub(self.start) as usize).min(self.samples.len());
        &self.samples[a.min(b)..b]
    }

    /// [`Self::slice`], owned: for work on another thread.
    pub(crate) fn between(&self, from: u64, to: u64) -> Vec<f32> {
        self.slice(from, to).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_seconds_by_position() {
        let mut b = TurnBuffer::default();
        let second = MODEL_RATE as usize;
        for i in 0..(TURN_BUFFER_SECS + 3) {
            let end = ((i + 1) * second) as u64;
            b.push(&vec![i as f32; second], end);
        }
        assert_eq!(b.position(), ((TURN_BUFFER_SECS + 3) * second) as u64);
        // The oldest seconds are gone: asking for them yields what is kept.
        let all = b.between(0, b.position());
        assert!(all.len() <= (TURN_BUFFER_SECS + 1) * second);
        assert_eq!(*all.last().unwrap(), (TURN_BUFFER_SECS + 2) as f32);
        let s = (5 * second) as u64;
        assert_eq!(b.between(s, s + 10), vec![5.0; 10]);
        assert!(b.between(s + 10, s).is_empty());
    }
}
