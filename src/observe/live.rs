//! Events of one call, live, for whoever watches that call as it happens
//! (the browser demo draws its transcript and waterfall from them).
//!
//! The feed is an ordinary observer on the bus, so it has the same
//! guarantee as the others: it never holds a call up. A watcher that reads
//! too slowly misses events rather than queueing them without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Event, Observer};

/// Events waiting for a slow watcher; beyond this they are dropped.
const WATCH_QUEUE: usize = 256;

type Watchers = Arc<Mutex<HashMap<Arc<str>, mpsc::Sender<Arc<Event>>>>>;

/// The calls being watched. Cloned into the server state; its
/// [`LiveFeed::observer`] goes on the bus.
#[derive(Clone, Default)]
pub(crate) struct LiveFeed {
    watchers: Watchers,
}

impl LiveFeed {
    /// The observer that hands each event to its call's watcher, if any.
    pub(crate) fn observer(&self) -> impl Observer {
        Forward {
            watchers: self.watchers.clone(),
        }
    }

    /// Starts watching `call_sid`: its events from now on, until the
    /// returned [`Watch`] is dropped. A second watch of the same call
    /// replaces the first.
    pub(crate) fn watch(&self, call_sid: &str) -> Watch {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let key: Arc<str> = call_sid.into();
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), tx.clone());
        Watch {
            events: rx,
            key,
            tx,
            watchers: self.watchers.clone(),
        }
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// One call's events; unregisters itself when dropped.
pub(crate) struct Watch {
    pub(crate) events: mpsc::Receiver<Arc<Event>>,
    key: Arc<str>,
    /// Its own queue, to tell its registration from a newer watch's.
    tx: mpsc::Sender<Arc<Event>>,
    watchers: Watchers,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        // Only our own registration: a newer watch of the call stays.
        if w.get(&self.key).is_some_and(|tx| tx.same_channel(&self.tx)) {
            w.remove(&self.key);
        }
    }
}

struct Forward {
    watchers: Watchers,
}

impl Observer for Forward {
    fn on_event(&mut self, event: &Event) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = w.get(&event.call_sid) {
            // Full: the watcher is behind and loses this one.
            let _ = tx.try_send(Arc::new(event.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::EventKind;

    fn event(call: &str, digit: &str) -> Event {
        Event {
            call_sid: call.into(),
            at_ms: 0.0,
            kind: EventKind::Dtmf {
                digit: digit.into(),
            },
        }
    }

    #[test]
    fn a_watcher_sees_its_call_only_and_a_slow_one_holds_nothing_up() {
        let feed = LiveFeed::default();
        let replaced = feed.watch("CA1");
        let mut forward = feed.observer();
        let mut watch = feed.watch("CA1");
        drop(replaced);
        forward.on_event(&event("CA2", "1"));
        forward.on_event(&event("CA1", "2"));
        let got = watch.events.try_recv().unwrap();
        assert!(matches!(&got.kind, EventKind::Dtmf { digit } if digit == "2"));
        assert!(
            watch.events.try_recv().is_err(),
            "another call's event leaked"
        );
        // Nobody reads: the queue fills and further events are dropped at
        // once instead of blocking the observer.
        for _ in 0..WATCH_QUEUE * 2 {
            forward.on_event(&event("CA1", "3"));
        }
        assert_eq!(watch.events.len(), WATCH_QUEUE);
        drop(watch);
        assert_eq!(feed.watched(), 0, "the watch unregistered");
        forward.on_event(&event("CA1", "4"));
    }
}
