//! The machine's side of a reply: its record, the pieces the caller has
//! heard, and how it ends — played to its last mark, interrupted, or failed.

use std::time::Instant;

use super::{ms, Action, TurnMachine};
use crate::engines::{ChatMessage, Role};
use crate::events::{EventKind, Interruption, TurnKind, TurnRecord};
use crate::session::reply::{ReplyEvent, Source};

/// A piece of a reply queued for playback, followed by its mark.
#[derive(Debug)]
pub(super) struct Piece {
    name: String,
    text: String,
    secs: f64,
    acked: bool,
}

/// The reply playing (or about to).
#[derive(Debug)]
pub(super) struct Active {
    pub(super) epoch: u64,
    record: usize,
    vad_stop_at: Option<Instant>,
    end_of_speech_at: Option<Instant>,
    pieces: Vec<Piece>,
    pub(super) first_frame_at: Option<Instant>,
    last_ack_at: Option<Instant>,
    spoken: bool,
    generated: Option<String>,
}

impl Active {
    /// What the caller heard by `now`: every acknowledged piece, and of the
    /// one playing, the share of its words its playing time covers.
    pub(super) fn heard_by(&self, now: Instant) -> String {
        let mut heard: Vec<String> = Vec::new();
        let mut playing_since = self.first_frame_at;
        for p in &self.pieces {
            if p.acked {
                heard.push(p.text.clone());
                playing_since = self.last_ack_at;
                continue;
            }
            if let Some(since) = playing_since {
                let played = now.saturating_duration_since(since).as_secs_f64();
                let frac = (played / p.secs.max(0.01)).min(1.0);
                let words: Vec<&str> = p.text.split_whitespace().collect();
                let n = (words.len() as f64 * frac).floor() as usize;
                if n > 0 {
                    heard.push(format!("{}…", words[..n].join(" ")));
                }
            }
            break;
        }
        heard.join(" ")
    }

    fn joined(&self) -> String {
        self.pieces
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl TurnMachine {
    /// Starts a reply that plays at once, with a record of its own.
    pub(super) fn start_reply(
        &mut self,
        kind: TurnKind,
        source: Source,
        user_text: String,
        vad_stop_at: Option<Instant>,
        end_of_speech_at: Option<Instant>,
        now: Instant,
    ) -> usize {
        let bot_text = match &source {
            Source::Text(t) => t.clone(),
            Source::Llm(_) => String::new(),
        };
        let epoch = self.next_epoch(source, false);
        let index = self.adopt(epoch, kind, user_text, vad_stop_at, end_of_speech_at, now);
        self.records[index].bot_text = bot_text;
        index
    }

    /// Makes reply `epoch` (asked for at `started`) the one playing.
    pub(super) fn adopt(
        &mut self,
        epoch: u64,
        kind: TurnKind,
        user_text: String,
        vad_stop_at: Option<Instant>,
        end_of_speech_at: Option<Instant>,
        started: Instant,
    ) -> usize {
        let index = self.records.len();
        let started_ms = ms(started.saturating_duration_since(self.start));
        self.records
            .push(TurnRecord::new(index, kind, user_text, started_ms));
        self.active = Some(Active {
            epoch,
            record: index,
            vad_stop_at,
            end_of_speech_at,
            pieces: Vec::new(),
            first_frame_at: None,
            last_ack_at: None,
            spoken: false,
            generated: None,
        });
        index
    }

    pub(super) fn on_reply(&mut self, ev: ReplyEvent, now: Instant) {
        let epoch = ev.epoch();
        if let Some(d) = self
            .pending
            .as_mut()
            .and_then(|p| p.draft.as_mut())
            .filter(|d| d.epoch == epoch)
        {
            d.early.push(ev);
            return;
        }
        let Some(a) = self.active.as_mut().filter(|a| a.epoch == epoch) else {
            return;
        };
        let r = &mut self.records[a.record];
        let turn = r.index;
        let event = match ev {
            ReplyEvent::FirstToken { ms, .. } => {
                r.llm_ttfb_ms = Some(ms);
                EventKind::LlmFirstToken { turn, ms }
            }
            ReplyEvent::FirstAudio { ms, at, .. } => {
                r.tts_ttfb_ms = Some(ms);
                r.first_audio_at_ms = Some(super::ms(at.saturating_duration_since(self.start)));
                EventKind::TtsFirstAudio { turn, ms }
            }
            ReplyEvent::Piece {
                name, text, secs, ..
            } => {
                a.pieces.push(Piece {
                    name,
                    text,
                    secs,
                    acked: false,
                });
                return self.maybe_finish_reply(now);
            }
            ReplyEvent::Generated { generation, .. } => {
                r.prompt_tokens = generation.prompt_tokens;
                r.prefilled_tokens = generation.prefilled_tokens;
                r.completion_tokens = generation.completion_tokens;
                r.bot_text = generation.text.trim().to_string();
                a.generated = Some(r.bot_text.clone());
                EventKind::LlmUsage {
                    turn,
                    prompt_tokens: generation.prompt_tokens,
                    prefilled_tokens: generation.prefilled_tokens,
                    completion_tokens: generation.completion_tokens,
                }
            }
            ReplyEvent::Spoken { characters, .. } => {
                r.tts_characters = characters;
                a.spoken = true;
                EventKind::TtsUsage { turn, characters }
            }
            ReplyEvent::Failed { error, .. } => {
                self.active = None;
                self.cancel(epoch);
                self.error("reply", format!("reply failed: {error}"));
                if epoch != self.apology_epoch {
                    // Say something rather than go silent.
                    self.apologise(
                        "Sorry, I had a problem there. Could you say that again?",
                        now,
                    );
                }
                return;
            }
        };
        self.emit(event);
        self.maybe_finish_reply(now);
    }

    pub(super) fn on_first_frame(&mut self, epoch: u64, at: Instant) {
        let Some(a) = self.active.as_mut().filter(|a| a.epoch == epoch) else {
            return;
        };
        a.first_frame_at = Some(at);
        let r = &mut self.records[a.record];
        r.first_frame_at_ms = Some(ms(at.saturating_duration_since(self.start)));
        let mut since_call_start_ms = None;
        if let Some(stop) = a.vad_stop_at {
            r.total_ms = Some(ms(at.saturating_duration_since(stop)));
        } else if r.kind == TurnKind::Greeting {
            r.total_ms = Some(ms(at.saturating_duration_since(self.start)));
            since_call_start_ms = r.total_ms;
        }
        if let Some(eos) = a.end_of_speech_at {
            r.end_of_speech_ms = Some(ms(at.saturating_duration_since(eos)));
        }
        let event = EventKind::BotStartedSpeaking {
            turn: r.index,
            kind: r.kind,
            total_ms: a.vad_stop_at.and(r.total_ms),
            end_of_speech_ms: r.end_of_speech_ms,
            since_call_start_ms,
        };
        self.emit(event);
    }

    pub(super) fn on_mark(&mut self, name: &str, now: Instant) {
        if let Some(a) = self.active.as_mut() {
            if let Some(p) = a.pieces.iter_mut().find(|p| p.name == name) {
                p.acked = true;
                a.last_ack_at = Some(now);
            }
        }
        self.maybe_finish_reply(now);
    }

    /// A reply is over when all of it was generated, queued and played.
    fn maybe_finish_reply(&mut self, now: Instant) {
        let done = self.active.as_ref().is_some_and(|a| {
            let generated =
                a.generated.is_some() || self.records[a.record].kind == TurnKind::Greeting;
            a.spoken && generated && a.pieces.iter().all(|p| p.acked)
        });
        if !done {
            return;
        }
        let a = self.active.take().expect("checked");
        self.cancel(a.epoch); // a no-op for the reply; the driver forgets it
        let heard = a.joined();
        self.close_reply(&a, heard, false);
        self.last_activity = now;
        // The caller is listening to the end of it: time enough to evaluate
        // the reply as it will appear in the next prompt.
        if self.pending.is_none() {
            self.out.push(Action::Prefill(self.history.clone()));
        }
    }

    /// Records what the caller heard of reply `a` and keeps exactly that in
    /// the conversation (the greeting is already part of the prefix).
    pub(super) fn close_reply(&mut self, a: &Active, heard: String, interrupted: bool) {
        let r = &mut self.records[a.record];
        r.interrupted = interrupted;
        if r.bot_text.is_empty() {
            r.bot_text = a.joined();
        }
        r.heard_text = heard;
        if r.kind != TurnKind::Greeting && !r.heard_text.is_empty() {
            self.history
                .push(ChatMessage::new(Role::Assistant, r.heard_text.clone()));
        }
        let (turn, record) = (r.index, r.clone());
        if a.first_frame_at.is_some() {
            self.emit(EventKind::BotStoppedSpeaking { turn, interrupted });
        }
        self.emit(EventKind::TurnFinished { record });
    }

    /// Barge-in (or a new turn): stop the reply, flush what the transport
    /// buffered, and keep in the history only what the caller heard.
    pub(super) fn interrupt(&mut self, now: Instant) {
        let Some(a) = self.active.take() else { return };
        self.cancel(a.epoch);
        self.out.push(Action::Clear { upto: a.epoch });
        self.bot_until = now;
        let onset = self.pos_time(self.segment_onset, now);
        let heard = a.heard_by(now);
        // A reply the caller never heard was abandoned, not interrupted.
        let spoke = a.first_frame_at.is_some();
        self.close_reply(&a, heard, spoke);
        if !spoke {
            return;
        }
        let turn = self.records[a.record].index;
        let onset_to_clear_ms = ms(now.saturating_duration_since(onset));
        self.emit(EventKind::Interruption {
            turn,
            onset_to_clear_ms,
        });
        self.interruptions.push(Interruption {
            turn,
            onset_to_clear_ms,
        });
    }
}
