//! Where the time goes: typed events from every stage of a call, delivered
//! to observers (logs, Prometheus, per-call traces) that can never hold the
//! call up.
//!
//! A call publishes [`Event`]s through its [`Publisher`]. Each observer runs
//! on a thread of its own behind a bounded queue; publishing is a
//! `try_send` per observer, so an observer that falls behind loses events —
//! counted in `callbox_observer_events_dropped_total` — and the audio path
//! never waits for it.
//!
//! Latency definitions (the same in logs, the table, metrics and traces):
//! - **Total**: the VAD's "user stopped speaking" event (after its stop
//!   window) → the first bot audio frame written to the transport; the API
//!   stack's definition.
//! - **End-of-speech**: the end of the caller's speech (the start of the
//!   stop window) → the same frame; Total plus the stop window.
//! - **STT**: end of speech → final transcript. **Smart Turn**: the VAD stop
//!   → verdict (and the model's own inference time). **LLM TTFB**: request →
//!   first token. **TTS TTFB**: first text → first audio.
//!
//! Stages may start before the VAD stop (STT and a draft reply begin at the
//! first silent window), so Total can be smaller than the sum of the stages;
//! End-of-speech never is.

pub(crate) mod live;
pub mod log;
pub(crate) mod metrics;
pub(crate) mod otel;
pub mod table;
pub mod trace;
pub(crate) mod turns;

use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::events::{Event, EventKind};

/// Something that watches calls. It runs on its own thread and may take its
/// time; it only risks missing events.
pub trait Observer: Send + 'static {
    fn on_event(&mut self, event: &Event);
}

impl Observer for Box<dyn Observer> {
    fn on_event(&mut self, event: &Event) {
        (**self).on_event(event)
    }
}

enum Queued {
    Event(Arc<Event>),
    /// Answered once everything queued before it was observed.
    Flush(Sender<()>),
}

struct Subscriber {
    name: String,
    tx: SyncSender<Queued>,
}

/// The fan-out from calls to observers, built once at startup.
pub(crate) struct Bus {
    subscribers: Vec<Subscriber>,
    dropped: prometheus::IntCounterVec,
    /// Applied to every event before any observer sees it: one place, so
    /// no observer (or a new one) can forget it.
    redact: crate::events::Redact,
}

impl Bus {
    /// `dropped` counts the events each observer missed (by name).
    pub(crate) fn new(dropped: prometheus::IntCounterVec) -> Self {
        Self {
            subscribers: Vec::new(),
            dropped,
            redact: crate::events::Redact::Off,
        }
    }

    /// Observers see events masked as `mode` says (`observe.redact`).
    pub(crate) fn redact(&mut self, mode: crate::events::Redact) {
        self.redact = mode;
    }

    /// Runs `observer` on a thread of its own with room for `queue` events.
    pub(crate) fn subscribe(&mut self, name: &str, queue: usize, mut observer: impl Observer) {
        let (tx, rx) = sync_channel::<Queued>(queue);
        std::thread::Builder::new()
            .name(format!("callbox-observer-{name}"))
            .spawn(move || {
                while let Ok(q) = rx.recv() {
                    match q {
                        Queued::Event(e) => observer.on_event(&e),
                        Queued::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawning an observer thread");
        self.subscribers.push(Subscriber {
            name: name.to_string(),
            tx,
        });
    }

    pub(crate) fn publish(&self, event: Event) {
        let event = Arc::new(self.redact.event(&event).unwrap_or(event));
        for s in &self.subscribers {
            match s.tx.try_send(Queued::Event(event.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.with_label_values(&[s.name.as_str()]).inc();
                }
            }
        }
    }

    /// Blocks until every observer has handled the events published so far
    /// (a process that exits must not lose the last calls' traces), or
    /// `limit` has passed; returns whether all of them caught up.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        // At most one answer per observer.
        let (done_tx, done_rx) = channel();
        // A full queue is waited on, but not past the deadline.
        let queued = self
            .subscribers
            .iter()
            .filter(|s| {
                let mut marker = Queued::Flush(done_tx.clone());
                loop {
                    match s.tx.try_send(marker) {
                        Ok(()) => return true,
                        Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                            marker = m;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => return false,
                    }
                }
            })
            .count();
        let answered = (0..queued).all(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            done_rx.recv_timeout(left).is_ok()
        });
        answered && queued == self.subscribers.len()
    }
}

/// One call's handle on the bus, and the records its events add up to.
#[derive(Clone)]
pub(crate) struct Publisher {
    bus: Arc<Bus>,
    call_sid: Arc<str>,
    start: Instant,
    /// Shared by the publisher's clones. Held while an event is folded and
    /// published, so that the log sees events in the order observers do and
    /// a finished record follows its `ReplyEnded` at once; never held for
    /// long (a fold and a `try_send` per observer).
    turns: Arc<Mutex<turns::TurnLog>>,
}

impl Publisher {
    pub(crate) fn new(bus: Arc<Bus>, call_sid: &str, start: Instant) -> Self {
        Self {
            bus,
            call_sid: call_sid.into(),
            start,
            turns: Default::default(),
        }
    }

    pub(crate) fn emit(&self, kind: EventKind) {
        let mut log = self.turn_log();
        let finished = log.on(&kind);
        self.publish(kind);
        if let Some(record) = finished {
            self.publish(EventKind::TurnFinished { record });
        }
    }

    /// The call's per-turn records so far (for its summary), taken.
    pub(crate) fn take_turns(&self) -> Vec<crate::events::TurnRecord> {
        self.turn_log().take()
    }

    fn turn_log(&self) -> std::sync::MutexGuard<'_, turns::TurnLog> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, kind: EventKind) {
        self.bus.publish(Event {
            call_sid: self.call_sid.clone(),
            at_ms: self.start.elapsed().as_secs_f64() * 1e3,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Slow(Arc<AtomicUsize>, Duration);

    impl Observer for Slow {
        fn on_event(&mut self, _: &Event) {
            std::thread::sleep(self.1);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn bus(seen: &Arc<AtomicUsize>, each: Duration) -> Bus {
        let dropped = prometheus::IntCounterVec::new(
            prometheus::Opts::new("dropped", "events dropped"),
            &["observer"],
        )
        .unwrap();
        let mut bus = Bus::new(dropped);
        bus.subscribe("slow", 16, Slow(seen.clone(), each));
        bus
    }

    fn dtmf() -> Event {
        Event {
            call_sid: "CA1".into(),
            at_ms: 0.0,
            kind: EventKind::Dtmf { digit: "1".into() },
        }
    }

    #[test]
    fn flush_returns_once_every_event_is_observed() {
        let seen = Arc::new(AtomicUsize::new(0));
        let bus = bus(&seen, Duration::from_millis(20));
        for _ in 0..5 {
            bus.publish(dtmf());
        }
        assert!(bus.flush(Duration::from_secs(10)));
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn flush_gives_up_at_its_limit() {
        let seen = Arc::new(AtomicUsize::new(0));
        let bus = bus(&seen, Duration::from_millis(500));
        bus.publish(dtmf());
        bus.publish(dtmf());
        assert!(!bus.flush(Duration::from_millis(100)));
    }
}
