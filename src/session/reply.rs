//! One reply: LLM → pieces of text → Piper → 8 kHz audio for the output.
//!
//! The LLM and TTS each run on a thread of their own, connected by a channel,
//! so Piper speaks the first clause while the LLM writes the next. A shared
//! flag cancels both between tokens and between pieces; the epoch on every
//! audio command lets the output drop whatever was already in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::output::OutCmd;
use crate::audio::Audio;
use crate::engines::{ChatMessage, Generation, GenerationOptions, LlmSession, Tts};
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
    /// Piper's first audio, `ms` after it got the first text.
    FirstAudio {
        epoch: u64,
        ms: f64,
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

pub struct Reply {
    pub epoch: u64,
    pub cancel: Arc<AtomicBool>,
}

pub fn spawn(
    epoch: u64,
    source: Source,
    llm: Arc<Mutex<Box<dyn LlmSession>>>,
    options: GenerationOptions,
    tts: Arc<dyn Tts>,
    out: mpsc::Sender<OutCmd>,
    events: mpsc::Sender<ReplyEvent>,
) -> Reply {
    let cancel = Arc::new(AtomicBool::new(false));
    let (piece_tx, piece_rx) = std_mpsc::channel::<String>();

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
                    let t0 = Instant::now();
                    let result = session.generate(&history, &options, &cancel, &mut |text| {
                        if first {
                            first = false;
                            let _ = events.blocking_send(ReplyEvent::FirstToken {
                                epoch,
                                ms: t0.elapsed().as_secs_f64() * 1e3,
                            });
                        }
                        for p in agg.push(text) {
                            if piece_tx.send(p).is_err() {
                                return false;
                            }
                        }
                        true
                    });
                    if !cancel.load(Ordering::Relaxed) {
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
    std::thread::Builder::new()
        .name("callbox-tts".into())
        .spawn(move || {
            let mut seg = 0;
            let mut characters = 0;
            let mut first_audio = true;
            while let Ok(text) = piece_rx.recv() {
                if tts_cancel.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let mut secs = 0.0;
                let r = tts.synthesize(&text, &mut |audio: Audio| {
                    if tts_cancel.load(Ordering::Relaxed) {
                        return false;
                    }
                    if first_audio {
                        first_audio = false;
                        let _ = events.blocking_send(ReplyEvent::FirstAudio {
                            epoch,
                            ms: t0.elapsed().as_secs_f64() * 1e3,
                        });
                    }
                    let narrow = audio.resampled(8000);
                    secs += narrow.duration_secs() as f64;
                    out.blocking_send(OutCmd::Audio {
                        epoch,
                        samples: narrow.to_i16(),
                    })
                    .is_ok()
                });
                if let Err(e) = r {
                    let _ = events.blocking_send(ReplyEvent::Failed {
                        epoch,
                        error: e.to_string(),
                    });
                    break;
                }
                if tts_cancel.load(Ordering::Relaxed) {
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

    Reply { epoch, cancel }
}
