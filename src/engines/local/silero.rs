//! Silero VAD (ONNX) with Pipecat's hysteresis, so that "user stopped
//! speaking" means the same thing as in the stack we compare against.
//!
//! The model scores 512-sample windows at 16 kHz, each prefixed by the last
//! 64 samples of the previous input (leaving that context out still runs, but
//! scores differently). A window counts as speech when the score reaches
//! `confidence` and the rolling loudness reaches `min_volume`; `start_secs`
//! of consecutive speech windows start a turn and `stop_secs` of non-speech
//! end it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ebur128::{EbuR128, Mode};
use ort::session::Session;
use ort::value::Tensor;

use super::onnx::{self, Shapes};
use crate::config::VadParams;
use crate::engines::device::Device;
use crate::engines::{Vad, VadEvent, VadStream, MODEL_RATE};
use crate::error::{Error, Result};

pub const WINDOW: usize = 512;
pub const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;

/// Model windows in `secs` (at least one).
fn windows(secs: f32) -> u32 {
    ((secs * MODEL_RATE as f32 / WINDOW as f32).round() as u32).max(1)
}

pub struct SileroVad {
    session: Arc<Mutex<Session>>,
    params: VadParams,
}

impl SileroVad {
    pub fn load(ort_lib: &Path, model: &Path, params: VadParams) -> Result<Self> {
        Self::load_on(ort_lib, model, params, Device::Cpu)
    }

    pub(crate) fn load_on(
        ort_lib: &Path,
        model: &Path,
        params: VadParams,
        device: Device,
    ) -> Result<Self> {
        let session = onnx::session(ort_lib, model, "Silero VAD model", 1, Shapes::Fixed, device)?;
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
            params,
        })
    }

    /// One raw model call: the probability for `input` (context + window)
    /// and the next recurrent state. Exposed for the golden-value test.
    pub fn score(&self, input: &[f32], state: &[f32]) -> Result<(f32, Vec<f32>)> {
        score(&self.session, input, state)
    }
}

fn score(session: &Mutex<Session>, input: &[f32], state: &[f32]) -> Result<(f32, Vec<f32>)> {
    let err = |e: ort::Error| Error::engine("vad", e);
    let x = Tensor::from_array(([1usize, input.len()], input.to_vec())).map_err(err)?;
    let s = Tensor::from_array(([2usize, 1, 128], state.to_vec())).map_err(err)?;
    let sr = Tensor::from_array(([1usize], vec![MODEL_RATE as i64])).map_err(err)?;
    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
    let out = session
        .run(ort::inputs!["input" => x, "state" => s, "sr" => sr])
        .map_err(err)?;
    let (_, p) = out["output"].try_extract_tensor::<f32>().map_err(err)?;
    let (_, next) = out["stateN"].try_extract_tensor::<f32>().map_err(err)?;
    Ok((p[0], next.to_vec()))
}

impl Vad for SileroVad {
    fn stream(&self) -> Box<dyn VadStream> {
        Box::new(SileroStream::new(self.session.clone(), self.params))
    }

    fn window(&self) -> usize {
        WINDOW
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Quiet,
    Starting(u32),
    Speaking,
    Stopping(u32),
}

/// One call's VAD: model state, loudness meter and hysteresis.
pub(crate) struct SileroStream {
    session: Arc<Mutex<Session>>,
    params: VadParams,
    start_windows: u32,
    stop_windows: u32,
    pending: Vec<f32>,
    input: Vec<f32>,
    state: Vec<f32>,
    meter: EbuR128,
    volume: f32,
    confidence: f32,
    fsm: State,
    /// Start of the current speech run.
    onset: u64,
    /// Start of the current run of windows the model scores as speech.
    voiced_since: u64,
    voiced_run: bool,
    /// Start of the current run of non-speech windows while speaking: the end
    /// of speech once the stop window confirms it.
    speech_end: u64,
    position: u64,
    since_reset: u64,
    recent_low: u32,
}

impl SileroStream {
    fn new(session: Arc<Mutex<Session>>, params: VadParams) -> Self {
        Self {
            session,
            params,
            start_windows: windows(params.start_secs),
            stop_windows: windows(params.stop_secs),
            pending: Vec::with_capacity(WINDOW * 2),
            input: vec![0.0; CONTEXT + WINDOW],
            state: vec![0.0; STATE_LEN],
            meter: EbuR128::new(1, MODEL_RATE, Mode::M).expect("valid loudness meter"),
            volume: 0.0,
            confidence: 0.0,
            fsm: State::Quiet,
            onset: 0,
            voiced_since: 0,
            voiced_run: false,
            speech_end: 0,
            position: 0,
            since_reset: 0,
            recent_low: 0,
        }
    }

    fn window(&mut self, window: &[f32]) -> Result<Option<VadEvent>> {
        // The new input is the previous input's last 64 samples + this window.
        self.input.copy_within(WINDOW.., 0);
        self.input[CONTEXT..].copy_from_slice(window);
        let (p, next) = score(&self.session, &self.input, &self.state)?;
        self.state.copy_from_slice(&next);
        self.confidence = p;
        let start = self.position;
        self.position += WINDOW as u64;
        self.since_reset += WINDOW as u64;

        // Loudness per ITU-R BS.1770 over the last 400 ms (EBU "momentary"),
        // mapped from [-110, -10] LUFS to [0, 1] and smoothed, as Pipecat does.
        let _ = self.meter.add_frames_f32(window);
        let lufs = if self.position >= (MODEL_RATE as u64 * 4 / 10) {
            self.meter.loudness_momentary().unwrap_or(f64::NEG_INFINITY)
        } else {
            f64::NEG_INFINITY
        };
        let raw = if lufs.is_finite() {
            (((lufs + 110.0) / 100.0) as f32).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.volume += 0.2 * (raw - self.volume);

        // Boundaries come from the model alone: the smoothed loudness lags
        // the onset of speech by a window or more.
        let voiced = p >= self.params.confidence;
        if voiced && !self.voiced_run {
            self.voiced_since = start;
        }
        self.voiced_run = voiced;
        let speech = voiced && self.volume >= self.params.min_volume;
        let event = match (self.fsm, speech) {
            (State::Quiet, true) => {
                self.onset = self.voiced_since;
                self.enter_starting(1)
            }
            (State::Quiet, false) => None,
            (State::Starting(n), true) => self.enter_starting(n + 1),
            (State::Starting(_), false) => {
                self.fsm = State::Quiet;
                None
            }
            (State::Speaking, true) => None,
            (State::Speaking, false) => {
                self.speech_end = start;
                self.enter_stopping(1)
                    .or(Some(VadEvent::Paused { end: start }))
            }
            (State::Stopping(_), true) => {
                self.fsm = State::Speaking;
                Some(VadEvent::Resumed { at: start })
            }
            (State::Stopping(n), false) => self.enter_stopping(n + 1),
        };

        // Long-running recurrent state drifts: reset it during clear silence.
        self.recent_low = if p < 0.1 { self.recent_low + 1 } else { 0 };
        if self.fsm == State::Quiet
            && self.since_reset >= 2 * MODEL_RATE as u64
            && self.recent_low >= 5
        {
            self.state.iter_mut().for_each(|v| *v = 0.0);
            self.input.iter_mut().for_each(|v| *v = 0.0);
            self.since_reset = 0;
        }
        Ok(event)
    }

    fn enter_starting(&mut self, n: u32) -> Option<VadEvent> {
        if n >= self.start_windows {
            self.fsm = State::Speaking;
            Some(VadEvent::Started {
                at: self.position,
                onset: self.onset,
            })
        } else {
            self.fsm = State::Starting(n);
            None
        }
    }

    fn enter_stopping(&mut self, n: u32) -> Option<VadEvent> {
        if n >= self.stop_windows {
            self.fsm = State::Quiet;
            Some(VadEvent::Stopped {
                at: self.position,
                end: self.speech_end,
            })
        } else {
            self.fsm = State::Stopping(n);
            None
        }
    }
}

impl VadStream for SileroStream {
    fn push(&mut self, samples: &[f32]) -> Result<Vec<VadEvent>> {
        self.pending.extend_from_slice(samples);
        let mut events = Vec::new();
        let mut start = 0;
        while self.pending.len() - start >= WINDOW {
            let w: [f32; WINDOW] = self.pending[start..start + WINDOW]
                .try_into()
                .expect("window");
            if let Some(e) = self.window(&w)? {
                events.push(e);
            }
            start += WINDOW;
        }
        self.pending.drain(..start);
        Ok(events)
    }

    fn confidence(&self) -> f32 {
        self.confidence
    }

    fn speaking(&self) -> bool {
        matches!(self.fsm, State::Speaking | State::Stopping(_))
    }

    fn position(&self) -> u64 {
        self.position
    }
}
