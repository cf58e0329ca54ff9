//! The caller's audio, frame by frame: 8 kHz PCM → 16 kHz (through RNNoise
//! at 48 kHz when enabled) → Silero VAD.
//!
//! This runs on a thread of its own per call: at ~0.3 ms per 20 ms frame it
//! is too much work for the async runtime's workers, and a stalled model call
//! must never hold up the websocket.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::audio::resample::Stream;
use crate::engines::{DenoiseStream, Denoiser, Vad, VadEvent, VadStream, MODEL_RATE};

pub(crate) const TWILIO_RATE: u32 = 8000;

#[derive(Debug)]
pub(crate) enum InputEvent {
    /// 16 kHz audio ready for the turn buffer; `end` is the stream position
    /// (in 16 kHz samples) just after it.
    Audio {
        samples: Vec<f32>,
        end: u64,
    },
    Vad(VadEvent),
    Failed(String),
}

// One per call, built once: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
enum Chain {
    Plain(Stream),
    Denoised {
        up: Stream,
        den: Box<dyn DenoiseStream>,
        down: Stream,
        buf48: Vec<f32>,
        clean48: Vec<f32>,
    },
}

pub struct InputProcessor {
    chain: Chain,
    vad: Box<dyn VadStream>,
    /// The 8 kHz frame as f32, reused.
    pcm: Vec<f32>,
    produced: u64,
}

impl InputProcessor {
    pub fn new(vad: &dyn Vad, denoiser: Option<&dyn Denoiser>) -> Self {
        let chain = match denoiser {
            Some(d) => Chain::Denoised {
                up: Stream::new(TWILIO_RATE, d.rate(), 160),
                den: d.stream(),
                down: Stream::new(d.rate(), MODEL_RATE, 960),
                buf48: Vec::with_capacity(960),
                clean48: Vec::with_capacity(960),
            },
            None => Chain::Plain(Stream::new(TWILIO_RATE, MODEL_RATE, 160)),
        };
        Self {
            chain,
            vad: vad.stream(),
            pcm: Vec::with_capacity(160),
            produced: 0,
        }
    }

    /// One inbound frame of 8 kHz PCM (decoded once, by the session); returns
    /// the 16 kHz audio it yielded and any VAD events.
    pub fn push(&mut self, frame: &[i16]) -> crate::Result<(Vec<f32>, Vec<VadEvent>)> {
        self.pcm.clear();
        self.pcm.extend(frame.iter().map(|&s| s as f32 / 32768.0));
        let mut out16 = Vec::with_capacity(2 * frame.len() + 32);
        match &mut self.chain {
            Chain::Plain(s) => s.push(&self.pcm, &mut out16),
            Chain::Denoised {
                up,
                den,
                down,
                buf48,
                clean48,
            } => {
                buf48.clear();
                clean48.clear();
                up.push(&self.pcm, buf48);
                den.process(buf48, clean48);
                down.push(clean48, &mut out16);
            }
        }
        self.produced += out16.len() as u64;
        let events = self.vad.push(&out16)?;
        Ok((out16, events))
    }

    pub(crate) fn position(&self) -> u64 {
        self.produced
    }
}

/// Starts the input thread; frames go in through the returned sender (bounded:
/// when the thread falls behind, frames are dropped and counted rather than
/// queued without limit).
pub(crate) fn spawn(
    vad: Arc<dyn Vad>,
    denoiser: Option<Arc<dyn Denoiser>>,
    events: mpsc::Sender<InputEvent>,
) -> std_mpsc::SyncSender<Vec<i16>> {
    let (tx, rx) = std_mpsc::sync_channel::<Vec<i16>>(64);
    std::thread::Builder::new()
        .name("callbox-input".into())
        .spawn(move || {
            let mut p = InputProcessor::new(vad.as_ref(), denoiser.as_deref());
            while let Ok(frame) = rx.recv() {
                match crate::engines::contained("vad", || p.push(&frame)) {
                    Ok((samples, vad_events)) => {
                        let end = p.position();
                        if events
                            .blocking_send(InputEvent::Audio { samples, end })
                            .is_err()
                        {
                            break;
                        }
                        for e in vad_events {
                            if events.blocking_send(InputEvent::Vad(e)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = events.blocking_send(InputEvent::Failed(e.to_string()));
                        break;
                    }
                }
            }
        })
        .expect("spawning the input thread");
    tx
}
