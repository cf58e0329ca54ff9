//! The bot's audio on its way out: 20 ms μ-law frames, paced to real time
//! with a bounded lead, a mark after each spoken piece, and `clear` on
//! barge-in — or on a pause, which keeps what was cleared (the frames the
//! transport had not played yet included) to play when the reply resumes.
//!
//! Twilio plays whatever it has buffered until told to `clear`, so sending a
//! whole reply at once would make interruptions slow to take effect; keeping
//! only `max_lead` ahead bounds both what a `clear` has to throw away and the
//! memory a slow connection can hold.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::audio::ulaw;

pub(crate) const FRAME: usize = 160;
const FRAME_DUR: Duration = Duration::from_millis(20);

/// Commands from the session. `epoch` identifies the reply; everything of an
/// epoch at or below the last cleared one is dropped, including items still
/// in flight from a cancelled reply.
#[derive(Debug)]
pub(crate) enum OutCmd {
    /// 8 kHz PCM.
    Audio {
        epoch: u64,
        samples: Vec<i16>,
    },
    Mark {
        epoch: u64,
        name: String,
    },
    Clear {
        upto: u64,
    },
    /// Silence reply `epoch` now, keeping its unplayed audio.
    Pause {
        epoch: u64,
    },
    /// Play the rest of paused reply `epoch`.
    Resume {
        epoch: u64,
    },
}

/// What goes on the wire (the transport adds the stream id).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Wire {
    Media(Vec<u8>),
    Mark(String),
    Clear,
}

#[derive(Debug, Clone)]
pub(crate) enum OutEvent {
    /// The first frame of a reply was written to the transport.
    FirstFrame { epoch: u64, at: Instant },
    /// Everything queued has been sent; playback ends at `until`.
    Drained { until: Instant },
    /// Reply `epoch` is paused; these marks were sent but not played, and
    /// the transport returns them at once on `clear`.
    Paused { epoch: u64, marks: Vec<String> },
}

/// The bot's side of the call as played, at 8 kHz from the call's start:
/// the right channel of the recording and the reference for echo detection.
#[derive(Clone, Default)]
pub(crate) struct BotTrack(Arc<Mutex<Vec<i16>>>);

impl BotTrack {
    fn write(&self, at: usize, samples: &[i16]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() < at + samples.len() {
            t.resize(at + samples.len(), 0);
        }
        t[at..at + samples.len()].copy_from_slice(samples);
    }

    fn truncate(&self, len: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(len);
    }

    /// Loudest 20 ms RMS (dBFS) in `[from, to)` samples.
    pub(crate) fn peak_dbfs(&self, from: usize, to: usize) -> f32 {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let to = to.min(t.len());
        if from >= to {
            return f32::NEG_INFINITY;
        }
        t[from..to]
            .chunks(FRAME)
            .map(|c| {
                let ms =
                    c.iter().map(|&s| (s as f32 / 32768.0).powi(2)).sum::<f32>() / c.len() as f32;
                10.0 * ms.log10()
            })
            .fold(f32::NEG_INFINITY, f32::max)
    }

    pub(crate) fn snapshot(&self) -> Vec<i16> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

enum Item {
    Frame { epoch: u64, pcm: Vec<i16> },
    Mark { epoch: u64, name: String },
}

/// A reply held by a pause: its unplayed items, in order, and where new
/// ones of it go meanwhile. It holds at most the rest of one reply (the
/// LLM's `max_tokens` of speech).
struct Held {
    epoch: u64,
    items: VecDeque<Item>,
}

impl Item {
    fn epoch(&self) -> u64 {
        match self {
            Item::Frame { epoch, .. } | Item::Mark { epoch, .. } => *epoch,
        }
    }
}

pub(crate) fn spawn(
    call_start: Instant,
    max_lead: Duration,
    track: BotTrack,
    wire: mpsc::Sender<Wire>,
    events: mpsc::Sender<OutEvent>,
) -> mpsc::Sender<OutCmd> {
    let (tx, mut rx) = mpsc::channel::<OutCmd>(256);
    tokio::spawn(async move {
        let mut queue: VecDeque<Item> = VecDeque::new();
        let mut cleared_upto = 0u64;
        let mut reported = 0u64;
        let mut next_play = Instant::now();
        let mut partial: Vec<i16> = Vec::new();
        let mut partial_epoch = 0;
        // What went out within the lead, with when it plays: a pause takes
        // back what has not played yet.
        let mut sent: VecDeque<(Instant, Item)> = VecDeque::new();
        let mut held: Option<Held> = None;
        loop {
            // Send what the lead allows.
            let now = Instant::now();
            let mut had_frames = false;
            while let Some(front) = queue.front() {
                let start = next_play.max(now);
                // Marks go out at once; frames only within the lead.
                if matches!(front, Item::Frame { .. }) && start > now + max_lead {
                    break;
                }
                match queue.pop_front().expect("non-empty") {
                    Item::Mark { epoch, name } => {
                        if wire.send(Wire::Mark(name.clone())).await.is_err() {
                            return;
                        }
                        sent.push_back((next_play, Item::Mark { epoch, name }));
                    }
                    Item::Frame { epoch, pcm } => {
                        if wire.send(Wire::Media(ulaw::encode(&pcm))).await.is_err() {
                            return;
                        }
                        if epoch > reported {
                            reported = epoch;
                            let _ = events.try_send(OutEvent::FirstFrame {
                                epoch,
                                at: Instant::now(),
                            });
                        }
                        let pos = (start.saturating_duration_since(call_start).as_secs_f64()
                            * 8000.0) as usize;
                        track.write(pos, &pcm);
                        next_play = start + FRAME_DUR;
                        had_frames = true;
                        sent.push_back((start, Item::Frame { epoch, pcm }));
                    }
                }
            }
            while sent.front().is_some_and(|(at, _)| *at + FRAME_DUR <= now) {
                sent.pop_front();
            }
            if had_frames && queue.is_empty() {
                let _ = events.try_send(OutEvent::Drained { until: next_play });
            }
            let wake = (!queue.is_empty()).then(|| next_play - max_lead);
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(OutCmd::Pause { epoch }) if epoch > cleared_upto && held.is_none() => {
                        let now = Instant::now();
                        // Unplayed: what plays from now on. A frame under
                        // way is lost to the clear.
                        let mut items: VecDeque<Item> = sent
                            .drain(..)
                            .filter(|(at, i)| *at >= now && i.epoch() == epoch)
                            .map(|(_, i)| i)
                            .collect();
                        let marks = items
                            .iter()
                            .filter_map(|i| match i {
                                Item::Mark { name, .. } => Some(name.clone()),
                                Item::Frame { .. } => None,
                            })
                            .collect();
                        let (own, rest): (VecDeque<Item>, VecDeque<Item>) =
                            queue.drain(..).partition(|i| i.epoch() == epoch);
                        items.extend(own);
                        queue = rest;
                        held = Some(Held { epoch, items });
                        // Before the clear: the marks it returns must find
                        // the machine told. Awaited, not dropped: without
                        // it they would count as heard.
                        if events.send(OutEvent::Paused { epoch, marks }).await.is_err() {
                            return;
                        }
                        track.truncate((now.saturating_duration_since(call_start).as_secs_f64() * 8000.0) as usize);
                        next_play = now;
                        if wire.send(Wire::Clear).await.is_err() {
                            return;
                        }
                    }
                    Some(OutCmd::Resume { epoch }) if held.as_ref().is_some_and(|h| h.epoch == epoch) => {
                        let mut items = held.take().expect("checked").items;
                        items.extend(queue.drain(..));
                        queue = items;
                    }
                    Some(OutCmd::Audio { epoch, samples }) if epoch > cleared_upto => {
                        if epoch != partial_epoch {
                            partial.clear();
                            partial_epoch = epoch;
                        }
                        partial.extend_from_slice(&samples);
                        let whole = partial.len() / FRAME * FRAME;
                        let to = match held.as_mut() {
                            Some(h) if h.epoch == epoch => &mut h.items,
                            _ => &mut queue,
                        };
                        for f in partial[..whole].chunks(FRAME) {
                            to.push_back(Item::Frame { epoch, pcm: f.to_vec() });
                        }
                        partial.drain(..whole);
                    }
                    Some(OutCmd::Mark { epoch, name }) if epoch > cleared_upto => {
                        let to = match held.as_mut() {
                            Some(h) if h.epoch == epoch => &mut h.items,
                            _ => &mut queue,
                        };
                        // A piece ends on a whole frame: pad its tail with silence.
                        if epoch == partial_epoch && !partial.is_empty() {
                            let mut pcm = std::mem::take(&mut partial);
                            pcm.resize(FRAME, 0);
                            to.push_back(Item::Frame { epoch, pcm });
                        }
                        to.push_back(Item::Mark { epoch, name });
                    }
                    Some(OutCmd::Clear { upto }) => {
                        cleared_upto = cleared_upto.max(upto);
                        queue.retain(|i| i.epoch() > cleared_upto);
                        if held.as_ref().is_some_and(|h| h.epoch <= cleared_upto) {
                            held = None;
                        }
                        sent.clear();
                        partial.clear();
                        let now = Instant::now();
                        // Twilio drops what it had buffered: so does the record.
                        track.truncate((now.saturating_duration_since(call_start).as_secs_f64() * 8000.0) as usize);
                        next_play = now;
                        if wire.send(Wire::Clear).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {} // stale epoch
                },
                _ = sleep_until(wake.unwrap_or(next_play).into()), if wake.is_some() => {}
            }
        }
    });
    tx
}
