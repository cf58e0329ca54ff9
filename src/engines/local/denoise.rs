//! RNNoise (the pure-Rust nnnoiseless port) at 48 kHz.
//!
//! The model is compiled into the crate, so "loading" costs nothing; each
//! call gets its own `DenoiseState` because the filter is recurrent.

use nnnoiseless::DenoiseState;

use crate::engines::{DenoiseStream, Denoiser};

pub(crate) const RATE: u32 = 48_000;
pub(crate) const FRAME: usize = DenoiseState::FRAME_SIZE;

#[derive(Default)]
pub(crate) struct Rnnoise;

impl Denoiser for Rnnoise {
    fn stream(&self) -> Box<dyn DenoiseStream> {
        Box::new(RnnoiseStream {
            state: DenoiseState::new(),
            pending: Vec::with_capacity(FRAME * 2),
            scratch_in: vec![0.0; FRAME],
            scratch_out: vec![0.0; FRAME],
            first: true,
        })
    }

    fn rate(&self) -> u32 {
        RATE
    }
}

pub(crate) struct RnnoiseStream {
    state: Box<DenoiseState<'static>>,
    pending: Vec<f32>,
    scratch_in: Vec<f32>,
    scratch_out: Vec<f32>,
    first: bool,
}

impl DenoiseStream for RnnoiseStream {
    fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.pending.extend_from_slice(input);
        let mut start = 0;
        while self.pending.len() - start >= FRAME {
            // nnnoiseless works in the i16 range, not [-1, 1].
            for (d, s) in self
                .scratch_in
                .iter_mut()
                .zip(&self.pending[start..start + FRAME])
            {
                *d = s * 32768.0;
            }
            self.state
                .process_frame(&mut self.scratch_out, &self.scratch_in);
            if self.first {
                // The first frame carries the filter's fade-in artefacts.
                self.first = false;
                out.extend(std::iter::repeat_n(0.0, FRAME));
            } else {
                out.extend(self.scratch_out.iter().map(|s| s / 32768.0));
            }
            start += FRAME;
        }
        self.pending.drain(..start);
    }
}
