//! One reply: LLM → pieces of text → Piper → 8 kHz audio for the output.
//!
//! The LLM and TTS each run on a thread of their own, connected by a channel,
//! so Piper speaks the first clause while the LLM writes the next — except
//! while Piper synthesises the first clause: that is the one moment the
//! caller waits for, so the LLM pauses and leaves the CPU to Piper (on a
//! small machine the two would otherwise slow each other down). A shared
//! flag cancels both between tokens and between pieces; the epoch on every
//! audio command lets the output drop whatever was already in flight.
//!
//! A reply may start as a draft, before anyone knows the caller has finished:
//! it thinks and synthesises as usual, but its audio waits behind a gate that
//! the session opens once the turn is confirmed (or the draft is cancelled,
//! having cost some CPU and nothing the caller can hear).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::output::OutCmd;
use crate::audio::Audio;
use crate::engines::{contained, ChatMessage, Generation, GenerationOptions, LlmSession, Tts};
use crate::text::sentence::SentenceAggregator;

pub enum Source {
    /// Fixed text (the greeting).
    Text(String),
    /// The LLM's answer to this conversation.
    Llm(Vec<ChatMessage>),
}

#[derive(Debug)]
pub enum ReplyEvent {
    /// The LLM's first token, `ms` after the request.
    FirstToken {
        epoch: u64,
        ms: f64,
    },
    /// Piper's first audio, `ms` after it got the first text, made `at`.
    FirstAudio {
        epoch: u64,
        ms: f64,
        at: Instant,
    },
    /// A piece was queued for playback, followed by mark `name`.
    Piece {
        epoch: u64,
        name: String,
        text: String,
        secs: f64,
    },
    Generated {
        epoch: u64,
        generation: Generation,
    },
    /// All pieces are queued (or the reply was cancelled).
    Spoken {
        epoch: u64,
        characters: usize,
    },
    Failed {
        epoch: u64,
        error: String,
    },
}

impl ReplyEvent {
    pub fn epoch(&self) -> u64 {
        match self {
            ReplyEvent::FirstToken { epoch, .. }
            | ReplyEvent::FirstAudio { epoch, .. }
            | ReplyEvent::Piece { epoch, .. }
            | ReplyEvent::Generated { epoch, .. }
            | ReplyEvent::Spoken { epoch, .. }
            | ReplyEvent::Failed { epoch, .. } => *epoch,
        }
    }
}

/// Longest the LLM waits for Piper's first clause before writing on.
const FIRST_PIECE_PAUSE: Duration = Duration::from_secs(1);

/// Whether a reply's audio may go out yet.
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn new(open: bool) -> Self {
        Self {
            open: Mutex::new(open),
            changed: Condvar::new(),
        }
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Wakes a waiting thread to look at the cancel flag. Taking the lock
    /// first means the waiter is either before its check or inside `wait`:
    /// the notification cannot fall between the two.
    fn wake(&self) {
        drop(self.open.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// Blocks until the gate opens (true) or the reply is cancelled (false).
    fn wait(&self, cancel: &AtomicBool) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open && !cancel.load(Ordering::Relaxed) {
            open = self.changed.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        !cancel.load(Ordering::Relaxed)
    }
}

pub struct Reply {
    pub epoch: u64,
    /// When the reply was asked for (a draft's start, for drafts).
    pub started: Instant,
    cancel: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

impl Reply {
    /// Stops the LLM and TTS at their next token or piece; nothing more of
    /// this reply reaches the output.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.gate.wake();
    }

    /// Lets a draft's audio out.
    pub fn release(&self) {
        self.gate.set_open();
    }
}

/// A reply nobody holds can no longer be tracked or interrupted: stop it.
/// (After a reply has finished this is a no-op.)
impl Drop for Reply {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Starts a reply; a `draft` holds its audio until [`Reply::release`].
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    epoch: u64,
    source: Source,
    draft: bool,
    llm: Arc<Mutex<Box<dyn LlmSession>>>,
    options: GenerationOptions,
    tts: Arc<dyn Tts>,
    out: mpsc::Sender<OutCmd>,
    events: mpsc::Sender<ReplyEvent>,
) -> Reply {
    let started = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Gate::new(!draft));
    let (piece_tx, piece_rx) = std_mpsc::channel::<String>();
    // Dropped by the TTS thread once the first piece is synthesised (or when
    // it ends), which wakes the paused LLM.
    let (spoken_tx, spoken_rx) = std_mpsc::sync_channel::<()>(0);

    match source {
        Source::Text(text) => {
            let mut agg = SentenceAggregator::new();
            for p in agg.push(&text).into_iter().chain(agg.flush()) {
                let _ = piece_tx.send(p);
            }
            drop(piece_tx);
        }
        Source::Llm(history) => {
            let cancel = cancel.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name("callbox-llm".into())
                .spawn(move || {
                    let mut session = llm.lock().unwrap_or_else(|p| p.into_inner());
                    let mut agg = SentenceAggregator::new();
                    let mut first = true;
                    let mut pieces = 0;
                    let t0 = Instant::now();
                    let result = contained("llm", || {
                        session.generate(&history, &options, &cancel, &mut |text| {
                            if first {
                                first = false;
                                let _ = events.blocking_send(ReplyEvent::FirstToken {
                                    epoch,
                                    ms: t0.elapsed().as_secs_f64() * 1e3,
                                });
                            }
                            for p in agg.push(text) {
                                pieces += 1;
                                if piece_tx.send(p).is_err() {
                                    return false;
                                }
                                if pieces == 1 {
                                    let _ = spoken_rx.recv_timeout(FIRST_PIECE_PAUSE);
                                }
                            }
                            true
                        })
                    });
                    // A sentence cut off by the token limit is not spoken
                    // unless it is all there is.
                    let cut_off = result.as_ref().is_ok_and(|g| !g.finished) && pieces > 0;
                    if !cancel.load(Ordering::Relaxed) && !cut_off {
                        if let Some(p) = agg.flush() {
                            let _ = piece_tx.send(p);
                        }
                    }
                    drop(piece_tx);
                    let _ = match result {
                        Ok(generation) => {
                            events.blocking_send(ReplyEvent::Generated { epoch, generation })
                        }
                        Err(e) => events.blocking_send(ReplyEvent::Failed {
                            epoch,
                            error: e.to_string(),
                        }),
                    };
                })
                .expect("spawning the LLM thread");
        }
    }

    let tts_cancel = cancel.clone();
    let tts_gate = gate.clone();
    std::thread::Builder::new()
        .name("callbox-tts".into())
        .spawn(move || {
            let mut spoken_tx = Some(spoken_tx);
            let mut seg = 0;
            let mut characters = 0;
            let mut first_audio = true;
            // A draft's audio, synthesised but not yet let out.
            let mut held: Vec<Vec<i16>> = Vec::new();
            let send = |held: &mut Vec<Vec<i16>>| {
                held.drain(..)
                    .all(|samples| out.blocking_send(OutCmd::Audio { epoch, samples }).is_ok())
            };
            while let Ok(text) = piece_rx.recv() {
                if tts_cancel.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let mut secs = 0.0;
                let r = contained("tts", || {
                    tts.synthesize(&text, &mut |audio: Audio| {
                        if tts_cancel.load(Ordering::Relaxed) {
                            return false;
                        }
                        if first_audio {
                            first_audio = false;
                            let _ = events.blocking_send(ReplyEvent::FirstAudio {
                                epoch,
                                ms: t0.elapsed().as_secs_f64() * 1e3,
                                at: Instant::now(),
                            });
                        }
                        let narrow = audio.resampled(8000);
                        secs += narrow.duration_secs() as f64;
                        held.push(narrow.to_i16());
                        !tts_gate.is_open() || send(&mut held)
                    })
                });
                // The LLM may write on.
                drop(spoken_tx.take());
                if let Err(e) = r {
                    let _ = events.blocking_send(ReplyEvent::Failed {
                        epoch,
                        error: e.to_string(),
                    });
                    break;
                }
                if !tts_gate.wait(&tts_cancel) || !send(&mut held) {
                    break;
                }
                seg += 1;
                characters += text.chars().count();
                let name = format!("{epoch}:{seg}");
                if out
                    .blocking_send(OutCmd::Mark {
                        epoch,
                        name: name.clone(),
                    })
                    .is_err()
                {
                    break;
                }
                let _ = events.blocking_send(ReplyEvent::Piece {
                    epoch,
                    name,
                    text,
                    secs,
                });
            }
            let _ = events.blocking_send(ReplyEvent::Spoken { epoch, characters });
        })
        .expect("spawning the TTS thread");

    Reply {
        epoch,
        started,
        cancel,
        gate,
    }
}
