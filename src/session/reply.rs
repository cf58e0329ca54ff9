//! A call's replies: LLM → pieces of text → Piper → 8 kHz audio for the
//! output.
//!
//! Each call has two long-lived workers ([`Workers`]), one for the LLM and
//! one for Piper, each taking jobs in order from a bounded queue; a reply is
//! one job on each, connected by a bounded channel of text pieces, so Piper
//! speaks the first clause while the LLM writes the next — except
//! while Piper synthesises the first clause: that is the one moment the
//! caller waits for, so the LLM pauses and leaves the CPU to Piper (on a
//! small machine the two would otherwise slow each other down). A shared
//! flag cancels both between tokens and between pieces; the epoch on every
//! audio command lets the output drop whatever was already in flight.
//!
//! A reply may start as a draft, before anyone knows the caller has finished:
//! it thinks and synthesises as usual, but its audio waits behind a gate that
//! the session opens once the turn is confirmed (or the draft is cancelled,
//! having cost some CPU and nothing the caller can hear). A held draft keeps
//! the Piper worker waiting at its gate — and the LLM worker too when the
//! draft chose one of the owner's tools, which is called only once the turn
//! is confirmed; the turn machine never starts another reply before it has
//! released or cancelled the draft.
//!
//! The LLM worker owns the call's LLM session, so prefilling the next prompt
//! is a job on it too: nothing else ever touches the session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::output::OutCmd;
use crate::audio::Audio;
use crate::engines::{contained, ChatMessage, Generation, GenerationOptions, LlmSession, Tts};
use crate::text::sentence::SentenceAggregator;
use crate::tools::http::{ToolResult, ToolUse};

mod tool;
use tool::Speaker;
pub(crate) use tool::ToolLines;

#[derive(Debug)]
pub(crate) enum Source {
    /// Fixed text (the greeting).
    Text(String),
    /// The LLM's answer to this conversation.
    Llm(Vec<ChatMessage>),
    /// The LLM's answer to a caller's turn: the owner's tools are offered.
    Turn(Vec<ChatMessage>),
}

#[derive(Debug)]
pub(crate) enum ReplyEvent {
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
    /// The owner's tool `call` ran, `ms` long.
    Tool {
        epoch: u64,
        call: ToolUse,
        result: ToolResult,
        ms: f64,
        /// What the conversation keeps of the result for later turns: the
        /// message the LLM answered from. A templated answer is in the
        /// reply itself (and a small model reads such a message back
        /// aloud).
        remember: Option<String>,
    },
}

impl ReplyEvent {
    pub(crate) fn epoch(&self) -> u64 {
        match self {
            ReplyEvent::FirstToken { epoch, .. }
            | ReplyEvent::FirstAudio { epoch, .. }
            | ReplyEvent::Piece { epoch, .. }
            | ReplyEvent::Generated { epoch, .. }
            | ReplyEvent::Spoken { epoch, .. }
            | ReplyEvent::Failed { epoch, .. }
            | ReplyEvent::Tool { epoch, .. } => *epoch,
        }
    }
}

/// Pieces of LLM text waiting for Piper; a full queue pauses the LLM.
const PIECE_QUEUE: usize = 16;
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

/// The session's handle on a reply it started: to release or cancel it.
pub(crate) struct Reply {
    cancel: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

impl Reply {
    /// Stops the LLM and TTS at their next token or piece; nothing more of
    /// this reply reaches the output.
    pub(crate) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.gate.wake();
    }

    /// Lets a draft's audio out.
    pub(crate) fn release(&self) {
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

/// What one reply is to say, and how.
pub(crate) struct Job {
    pub(crate) epoch: u64,
    pub(crate) source: Source,
    /// Hold the audio until [`Reply::release`].
    pub(crate) draft: bool,
    pub(crate) options: GenerationOptions,
}

/// Jobs waiting for a worker. A call has at most a reply playing, a draft
/// and a prefill at once, plus cancelled ones that end at once: more is a
/// bug, answered with the reply failing rather than memory growing.
const JOB_QUEUE: usize = 8;

enum LlmJob {
    Reply(LlmPart),
    Prefill {
        messages: Vec<ChatMessage>,
        then: Box<dyn FnOnce(crate::Result<usize>) + Send>,
    },
}

/// The LLM's half of a reply.
struct LlmPart {
    epoch: u64,
    history: Vec<ChatMessage>,
    options: GenerationOptions,
    cancel: Arc<AtomicBool>,
    /// A draft's gate: its tool is called only once it opens.
    gate: Arc<Gate>,
    pieces: std_mpsc::SyncSender<String>,
    /// Closed by Piper once the first piece is synthesised.
    spoken: std_mpsc::Receiver<()>,
}

/// Piper's half of a reply.
struct TtsPart {
    epoch: u64,
    pieces: std_mpsc::Receiver<String>,
    cancel: Arc<AtomicBool>,
    gate: Arc<Gate>,
    spoken: std_mpsc::SyncSender<()>,
}

/// The two threads that speak a call's replies. Dropping this ends them
/// once their queued jobs are done.
pub(crate) struct Workers {
    llm: std_mpsc::SyncSender<LlmJob>,
    tts: std_mpsc::SyncSender<TtsPart>,
    events: mpsc::Sender<ReplyEvent>,
}

impl Workers {
    /// Starts the workers of a call: `llm` is its session, `out` takes the
    /// audio, `events` the replies' progress.
    pub(crate) fn spawn(
        mut llm: Box<dyn LlmSession>,
        tts: Arc<dyn Tts>,
        out: mpsc::Sender<OutCmd>,
        events: mpsc::Sender<ReplyEvent>,
        lines: ToolLines,
    ) -> Self {
        let (llm_tx, llm_rx) = std_mpsc::sync_channel::<LlmJob>(JOB_QUEUE);
        let (tts_tx, tts_rx) = std_mpsc::sync_channel::<TtsPart>(JOB_QUEUE);
        let llm_events = events.clone();
        std::thread::Builder::new()
            .name("callbox-llm".into())
            .spawn(move || {
                while let Ok(job) = llm_rx.recv() {
                    match job {
                        LlmJob::Reply(part) => part.run(llm.as_mut(), &llm_events, &lines),
                        LlmJob::Prefill { messages, then } => {
                            then(contained("llm", || llm.prefill(&messages)))
                        }
                    }
                }
            })
            .expect("spawning the LLM worker");
        let tts_events = events.clone();
        std::thread::Builder::new()
            .name("callbox-tts".into())
            .spawn(move || {
                while let Ok(part) = tts_rx.recv() {
                    part.run(tts.as_ref(), &out, &tts_events);
                }
            })
            .expect("spawning the TTS worker");
        Self {
            llm: llm_tx,
            tts: tts_tx,
            events,
        }
    }

    /// Brings the LLM's context up to `messages` ahead of the next reply;
    /// `then` gets the number of tokens evaluated.
    pub(crate) fn prefill(
        &self,
        messages: Vec<ChatMessage>,
        then: impl FnOnce(crate::Result<usize>) + Send + 'static,
    ) {
        let job = LlmJob::Prefill {
            messages,
            then: Box::new(then),
        };
        let refused = match self.llm.try_send(job) {
            Ok(()) => return,
            Err(std_mpsc::TrySendError::Full(job) | std_mpsc::TrySendError::Disconnected(job)) => {
                job
            }
        };
        if let LlmJob::Prefill { then, .. } = refused {
            then(Err(crate::Error::engine(
                "llm",
                "the LLM worker is overloaded",
            )));
        }
    }

    /// Starts a reply; a draft holds its audio until [`Reply::release`].
    pub(crate) fn start(&self, job: Job) -> Reply {
        let Job {
            epoch,
            source,
            draft,
            options,
        } = job;
        let cancel = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::new(!draft));
        // Dropped by Piper once the first piece is synthesised (or when it
        // ends), which wakes the paused LLM.
        let (spoken_tx, spoken_rx) = std_mpsc::sync_channel::<()>(0);
        let reply = Reply {
            cancel: cancel.clone(),
            gate: gate.clone(),
        };
        let (piece_tx, piece_rx) = match source {
            Source::Text(text) => {
                // Split at once, with room for every piece.
                let mut agg = SentenceAggregator::new();
                let pieces: Vec<String> = agg.push(&text).into_iter().chain(agg.flush()).collect();
                let (tx, rx) = std_mpsc::sync_channel(pieces.len().max(1));
                for p in pieces {
                    let _ = tx.send(p);
                }
                (None, rx)
            }
            Source::Llm(history) | Source::Turn(history) => {
                // Bounded: a full queue holds the LLM back when Piper is far
                // behind.
                let (tx, rx) = std_mpsc::sync_channel(PIECE_QUEUE);
                (Some((tx, history)), rx)
            }
        };
        let tts = TtsPart {
            epoch,
            pieces: piece_rx,
            cancel: cancel.clone(),
            gate: gate.clone(),
            spoken: spoken_tx,
        };
        let queued = self.tts.try_send(tts).is_ok()
            && piece_tx.is_none_or(|(pieces, history)| {
                let part = LlmPart {
                    epoch,
                    history,
                    options,
                    cancel,
                    gate,
                    pieces,
                    spoken: spoken_rx,
                };
                self.llm.try_send(LlmJob::Reply(part)).is_ok()
            });
        if !queued {
            reply.cancel();
            let error = "the reply workers are overloaded".to_string();
            let _ = self.events.try_send(ReplyEvent::Failed { epoch, error });
        }
        reply
    }
}

impl LlmPart {
    fn run(self, llm: &mut dyn LlmSession, events: &mpsc::Sender<ReplyEvent>, lines: &ToolLines) {
        if self.cancel.load(Ordering::Relaxed) {
            return; // dropped unheard before it began
        }
        let mut out = Speaker {
            epoch: self.epoch,
            pieces: &self.pieces,
            spoken: &self.spoken,
            events,
            agg: SentenceAggregator::new(),
            count: 0,
            first: true,
            t0: Instant::now(),
        };
        let cancel = &self.cancel;
        let result = contained("llm", || {
            let g = llm.generate(&self.history, &self.options, cancel, &mut |t| out.text(t))?;
            match g.tool_use.clone() {
                Some(call) => Ok(self.use_tool(llm, call, g, &mut out, lines)),
                None => Ok(g),
            }
        });
        // A sentence cut off by the token limit is not spoken unless it is
        // all there is.
        let cut_off = result.as_ref().is_ok_and(|g| !g.finished) && out.count > 0;
        if !cancel.load(Ordering::Relaxed) && !cut_off {
            if let Some(p) = out.agg.flush() {
                let _ = self.pieces.send(p);
            }
        }
        let epoch = self.epoch;
        drop(self);
        let _ = match result {
            Ok(generation) => events.blocking_send(ReplyEvent::Generated { epoch, generation }),
            Err(e) => events.blocking_send(ReplyEvent::Failed {
                epoch,
                error: e.to_string(),
            }),
        };
    }
}

impl TtsPart {
    fn run(self, tts: &dyn Tts, out: &mpsc::Sender<OutCmd>, events: &mpsc::Sender<ReplyEvent>) {
        let TtsPart {
            epoch,
            pieces,
            cancel,
            gate,
            spoken,
        } = self;
        let mut spoken = Some(spoken);
        let mut seg = 0;
        let mut characters = 0;
        let mut first_audio = true;
        // A draft's audio, synthesised but not yet let out.
        let mut held: Vec<Vec<i16>> = Vec::new();
        let send = |held: &mut Vec<Vec<i16>>| {
            held.drain(..)
                .all(|samples| out.blocking_send(OutCmd::Audio { epoch, samples }).is_ok())
        };
        while let Ok(text) = pieces.recv() {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let mut secs = 0.0;
            let r = contained("tts", || {
                // Said as a person would say it; the history keeps `text`.
                let said = crate::text::spoken::spoken(&text);
                tts.synthesize(&said, &mut |audio: Audio| {
                    if cancel.load(Ordering::Relaxed) {
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
                    !gate.is_open() || send(&mut held)
                })
            });
            // The LLM may write on.
            drop(spoken.take());
            if let Err(e) = r {
                let _ = events.blocking_send(ReplyEvent::Failed {
                    epoch,
                    error: e.to_string(),
                });
                break;
            }
            if !gate.wait(&cancel) || !send(&mut held) {
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
    }
}
