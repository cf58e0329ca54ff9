//! Answering-machine detection on the calls we place. Twilio listens while
//! the call goes on and POSTs its verdict (`/amd`) when it knows: `human`
//! soon after someone says hello, `machine_end_beep` once a recorder's
//! greeting is over. Any container of a deployment may get that callback,
//! so what it does cannot rely on holding the call's stream:
//! - a machine: the call is redirected to a new stream of ours, told what
//!   answered, which leaves the persona's voicemail message and hangs up
//!   (the old stream, wherever it ran, ends with Twilio's `stop`);
//! - a human (or anything else): nothing changes for the call; the verdict
//!   goes to the call's summary when its stream runs here.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::session::CallInput;

/// Verdicts kept for calls whose stream has not started here (or never
/// will: it runs in another container): the oldest go first.
const EARLY: usize = 256;

/// Twilio's `AnsweredBy` values, as metric labels; anything else is
/// `other`.
pub(crate) fn label(answered_by: &str) -> &'static str {
    match answered_by {
        "human" => "human",
        "machine_start" => "machine_start",
        "machine_end_beep" => "machine_end_beep",
        "machine_end_silence" => "machine_end_silence",
        "machine_end_other" => "machine_end_other",
        "fax" => "fax",
        "unknown" => "unknown",
        _ => "other",
    }
}

/// Where a verdict goes: the live calls of this process by SID.
#[derive(Default)]
pub(crate) struct Verdicts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, mpsc::Sender<CallInput>>,
    early: VecDeque<(String, &'static str)>,
}

impl Verdicts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call's stream started here: its verdict, if one came first.
    pub(crate) fn attach(
        &self,
        call_sid: &str,
        inputs: mpsc::Sender<CallInput>,
    ) -> Option<&'static str> {
        let mut g = self.lock();
        g.live.insert(call_sid.to_string(), inputs);
        let at = g.early.iter().position(|(sid, _)| sid == call_sid)?;
        g.early.remove(at).map(|(_, v)| v)
    }

    /// The stream of `inputs` ended. A call redirected to a new stream has
    /// two under one SID for a moment, and the old one may close after the
    /// new one attached: only its own entry goes.
    pub(crate) fn detach(&self, call_sid: &str, inputs: &mpsc::Sender<CallInput>) {
        let mut g = self.lock();
        if g.live
            .get(call_sid)
            .is_some_and(|tx| tx.same_channel(inputs))
        {
            g.live.remove(call_sid);
        }
    }

    /// Hands `verdict` to the call's session when it runs here, else keeps
    /// it for a stream still to come.
    pub(crate) fn deliver(&self, call_sid: &str, verdict: &'static str) {
        let mut g = self.lock();
        if let Some(tx) = g.live.get(call_sid) {
            // Never waited on: a call too busy to take it loses a label.
            let _ = tx.try_send(CallInput::AnsweredBy(verdict.to_string()));
            return;
        }
        if g.early.len() == EARLY {
            g.early.pop_front();
        }
        g.early.push_back((call_sid.to_string(), verdict));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_reaches_a_live_call_or_waits_for_its_stream() {
        let v = Verdicts::default();
        v.deliver("CA1", label("human"));
        let (tx, mut rx) = mpsc::channel(4);
        assert_eq!(v.attach("CA1", tx.clone()), Some("human"));
        let tx_old = tx.clone();
        assert_eq!(v.attach("CA1", tx), None);
        v.deliver("CA1", label("machine_end_beep"));
        assert!(matches!(rx.try_recv(), Ok(CallInput::AnsweredBy(a)) if a == "machine_end_beep"));
        // A newer stream of the same call stays when the old one closes.
        let (newer, mut newer_rx) = mpsc::channel(4);
        v.attach("CA1", newer.clone());
        v.detach("CA1", &tx_old);
        v.deliver("CA1", label("human"));
        assert!(matches!(newer_rx.try_recv(), Ok(CallInput::AnsweredBy(a)) if a == "human"));
        v.detach("CA1", &newer);
        v.deliver("CA1", label("fax"));
        assert_eq!(
            v.attach("CA1", newer),
            Some("fax"),
            "kept for a stream to come"
        );
        for i in 0..EARLY + 10 {
            v.deliver(&format!("CA{i}x"), "unknown");
        }
        assert_eq!(v.lock().early.len(), EARLY);
        assert_eq!(label("robot"), "other");
    }
}
