//! Fair turns at a shared engine.
//!
//! Every call's transcription goes to the one loaded Whisper. On a GPU two
//! transcriptions at once only interleave their kernels on the device, each
//! finishing later than if it had run alone, and a lock would let a call that
//! asked later overtake one that asked first. [`FairStt`] runs at most
//! `permits` transcriptions at once and starts waiting ones strictly in the
//! order they asked; the wait is reported in the transcript's timings, so
//! the latency table shows queueing as queueing, not as a slow model.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{Stt, SttStream, Transcript};
use crate::audio::Audio;
use crate::error::Result;

/// A first-come, first-served gate with `permits` places.
pub(crate) struct FifoGate {
    permits: usize,
    state: Mutex<GateState>,
    turn: Condvar,
}

#[derive(Default)]
struct GateState {
    next_ticket: u64,
    waiting: VecDeque<u64>,
    running: usize,
}

/// A place at the gate; dropping it lets the next in line through.
pub(crate) struct Pass<'a>(&'a FifoGate);

impl FifoGate {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            permits: permits.max(1),
            state: Mutex::new(GateState::default()),
            turn: Condvar::new(),
        }
    }

    /// Blocks until every earlier caller has been let through and a place
    /// is free.
    pub(crate) fn enter(&self) -> Pass<'_> {
        let mut s = self.state.lock().expect("gate");
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(ticket);
        while !(s.waiting.front() == Some(&ticket) && s.running < self.permits) {
            s = self.turn.wait(s).expect("gate");
        }
        s.waiting.pop_front();
        s.running += 1;
        drop(s);
        // The next in line may fit too.
        self.turn.notify_all();
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("gate").running -= 1;
        self.0.turn.notify_all();
    }
}

/// A speech recogniser behind a [`FifoGate`].
pub(crate) struct FairStt {
    inner: Arc<dyn Stt>,
    gate: FifoGate,
}

impl FairStt {
    pub(crate) fn new(inner: Arc<dyn Stt>, permits: usize) -> Self {
        Self {
            inner,
            gate: FifoGate::new(permits),
        }
    }
}

impl Stt for FairStt {
    fn transcribe(&self, audio: &Audio) -> Result<Transcript> {
        let t0 = Instant::now();
        let pass = self.gate.enter();
        let queued_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut transcript = self.inner.transcribe(audio)?;
        drop(pass);
        transcript.timings.queued_ms = queued_ms;
        transcript.timings.total_ms += queued_ms;
        Ok(transcript)
    }

    fn listen(&self) -> Result<Option<Arc<dyn SttStream>>> {
        self.inner.listen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Callers queued behind a busy gate get through in the order they
    /// arrived, never more than `permits` at once.
    #[test]
    fn the_gate_is_first_come_first_served() {
        let gate = Arc::new(FifoGate::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let inside = Arc::new(AtomicUsize::new(0));
        let first = gate.enter();
        let mut threads = Vec::new();
        for i in 0..6 {
            let (g, order, inside) = (gate.clone(), order.clone(), inside.clone());
            threads.push(std::thread::spawn(move || {
                let _pass = g.enter();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two inside at once"
                );
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(2));
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
            // Arrive one after another: the queue's order is known.
            while gate.state.lock().unwrap().waiting.len() < i + 1 {
                std::thread::yield_now();
            }
        }
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn several_places_let_several_through() {
        let gate = FifoGate::new(2);
        let a = gate.enter();
        let b = gate.enter();
        assert_eq!(gate.state.lock().unwrap().running, 2);
        drop(a);
        let _c = gate.enter();
        drop(b);
        assert_eq!(gate.state.lock().unwrap().running, 1);
    }
}
