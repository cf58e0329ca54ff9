//! The machine's side of a reply: the events that make its record, the
//! pieces the caller has heard, and how it ends — played to its last mark,
//! interrupted, or failed.

use std::time::Instant;

use super::{ms, Action, TurnMachine};
use crate::engines::{ChatMessage, Role};
use crate::events::{CallerTurn, EventKind, Interruption, TurnKind};
use crate::session::reply::{ReplyEvent, Source};
use crate::tools::http::ToolResult;
use crate::tools::ToolCall;
use std::collections::HashMap;
use std::time::Duration;

/// A piece of a reply queued for playback, followed by its mark.
#[derive(Debug)]
pub(super) struct Piece {
    name: String,
    text: String,
    secs: f64,
    acked: bool,
}

/// Too soon after the bot started for the caller's speech to answer what
/// it said (people need about half a second to react to speech): they were
/// going on with their turn, and the reply cut them off.
const REACTION_SECS: f64 = 0.5;

/// What a reply answers: its kind, the caller's words, and for a caller's
/// turn when it ended and how it was heard.
#[derive(Debug)]
pub(super) struct Asked {
    pub(super) kind: TurnKind,
    pub(super) user_text: String,
    pub(super) vad_stop_at: Option<Instant>,
    pub(super) end_of_speech_at: Option<Instant>,
    pub(super) caller: Option<CallerTurn>,
}

impl Asked {
    /// A reply no speech asked for (the greeting, an idle prompt, an
    /// apology), or one that answers `user_text` typed on the keypad.
    pub(super) fn unspoken(kind: TurnKind, user_text: String) -> Self {
        Self {
            kind,
            user_text,
            vad_stop_at: None,
            end_of_speech_at: None,
            caller: None,
        }
    }
}

/// The reply playing (or about to).
#[derive(Debug)]
pub(super) struct Active {
    pub(super) epoch: u64,
    /// Its number in the call, as events and records name it.
    pub(super) turn: usize,
    kind: TurnKind,
    vad_stop_at: Option<Instant>,
    end_of_speech_at: Option<Instant>,
    pieces: Vec<Piece>,
    /// When its first frame was written, moved on by pauses (what the
    /// caller heard is counted from it) …
    pub(super) first_frame_at: Option<Instant>,
    /// … and as it was (whether the caller's speech came too soon after it
    /// to answer it).
    began: Option<Instant>,
    last_ack_at: Option<Instant>,
    spoken: bool,
    generated: Option<String>,
    /// Since when the caller's speech over it has it paused.
    pub(super) paused_at: Option<Instant>,
    /// Marks a pause took back unplayed, and how many early reports of each
    /// (a `clear` returns every pending mark at once) are still to come:
    /// those are not acknowledgements, whenever they arrive.
    early: HashMap<String, u32>,
    /// The tool to use once it has played to its end, and since when.
    pub(super) then: Option<(ToolCall, Instant)>,
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

    /// What was written of it, heard or not: the LLM's whole text (or the
    /// script) once known, else the pieces queued so far.
    fn written(&self) -> String {
        match &self.generated {
            Some(t) if !t.is_empty() => t.clone(),
            _ => self.joined(),
        }
    }
}

impl TurnMachine {
    /// Starts a reply that plays at once; returns its number.
    pub(super) fn start_reply(&mut self, asked: Asked, source: Source, now: Instant) -> usize {
        let text = match &source {
            Source::Text(t) => Some(t.clone()),
            Source::Llm(_) | Source::Turn(_) => None,
        };
        let epoch = self.next_epoch(source, false);
        let turn = self.adopt(epoch, asked, now);
        if let Some(t) = text {
            // Written already: it is over once spoken and played.
            if let Some(a) = self.active.as_mut() {
                a.generated = Some(t);
            }
        }
        turn
    }

    /// Makes reply `epoch` (asked for at `started`) the one playing;
    /// returns its number.
    pub(super) fn adopt(&mut self, epoch: u64, asked: Asked, started: Instant) -> usize {
        let turn = self.replies;
        self.replies += 1;
        self.emit(EventKind::ReplyStarted {
            turn,
            kind: asked.kind,
            user_text: asked.user_text,
            started_at_ms: ms(started.saturating_duration_since(self.start)),
            caller: asked.caller,
        });
        self.active = Some(Active {
            epoch,
            turn,
            kind: asked.kind,
            vad_stop_at: asked.vad_stop_at,
            end_of_speech_at: asked.end_of_speech_at,
            pieces: Vec::new(),
            first_frame_at: None,
            began: None,
            last_ack_at: None,
            spoken: false,
            generated: None,
            paused_at: None,
            early: HashMap::new(),
            then: None,
        });
        turn
    }

    /// When the reply playing was paused by speech over it.
    pub(super) fn paused(&self) -> Option<Instant> {
        self.active.as_ref().and_then(|a| a.paused_at)
    }

    /// Speech over the bot: silence it at once, keeping the rest, until the
    /// words say whether it goes on.
    pub(super) fn pause_reply(&mut self, now: Instant) {
        let Some(a) = self.active.as_mut().filter(|a| a.paused_at.is_none()) else {
            return;
        };
        a.paused_at = Some(now);
        let (epoch, turn) = (a.epoch, a.turn);
        self.out.push(Action::PauseReply { epoch });
        self.bot_until = now;
        self.emit(EventKind::BotPaused { turn });
    }

    /// The output's report of a pause: these marks come back early.
    pub(super) fn on_paused(&mut self, epoch: u64, marks: &[String]) {
        let Some(a) = self.active.as_mut().filter(|a| a.epoch == epoch) else {
            return;
        };
        for name in marks {
            *a.early.entry(name.clone()).or_default() += 1;
            if let Some(p) = a.pieces.iter_mut().find(|p| &p.name == name) {
                p.acked = false;
            }
        }
    }

    /// The speech over the bot was a backchannel (or its words could not
    /// be known: `backchannel` false): it goes on where it stopped, its clock
    /// moved on by the pause.
    pub(super) fn resume_reply(&mut self, now: Instant, backchannel: bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(since) = a.paused_at.take() else {
            return;
        };
        let paused = now.saturating_duration_since(since);
        let shift = |t: &mut Option<Instant>| *t = t.map(|t| t + paused);
        shift(&mut a.first_frame_at);
        shift(&mut a.last_ack_at);
        let (epoch, turn) = (a.epoch, a.turn);
        self.out.push(Action::ResumeReply { epoch });
        if backchannel {
            self.backchannels += 1;
            self.emit(EventKind::Backchannel {
                turn,
                paused_ms: ms(paused),
            });
        }
        self.maybe_finish_reply(now);
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
        let turn = a.turn;
        let event = match ev {
            ReplyEvent::FirstToken { ms, .. } => EventKind::LlmFirstToken { turn, ms },
            ReplyEvent::FirstAudio { ms, at, .. } => EventKind::TtsFirstAudio {
                turn,
                ms,
                audio_at_ms: super::ms(at.saturating_duration_since(self.start)),
            },
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
                a.generated = Some(generation.text.trim().to_string());
                EventKind::LlmUsage {
                    turn,
                    prompt_tokens: generation.prompt_tokens,
                    prefilled_tokens: generation.prefilled_tokens,
                    completion_tokens: generation.completion_tokens,
                }
            }
            ReplyEvent::Spoken { characters, .. } => {
                a.spoken = true;
                EventKind::TtsUsage { turn, characters }
            }
            ReplyEvent::Tool {
                call,
                result,
                ms,
                remember,
                ..
            } => {
                if let Some(seen) = remember {
                    // Later turns may ask about it ("when does it arrive?").
                    self.history.push(ChatMessage::new(Role::System, seen));
                }
                EventKind::ToolCall {
                    turn,
                    call: ToolCall::Http {
                        name: call.name,
                        arguments: call.arguments,
                    },
                    outcome: result.outcome(),
                    ms,
                    result: match &result {
                        ToolResult::Ok(body) => Some(crate::tools::http::kept(body)),
                        ToolResult::Failed(why) => Some(why.clone()),
                        ToolResult::Timeout | ToolResult::Cancelled => None,
                    },
                }
            }
            ReplyEvent::Failed { error, .. } => {
                let a = self.active.take().expect("matched above");
                if a.paused_at.is_some() {
                    // The output holds its rest: let it go.
                    self.out.push(Action::Clear { upto: epoch });
                }
                if let Some((tool, since)) = &a.then {
                    self.tool_used(&a, tool, "cancelled", *since, now);
                }
                self.cancel(epoch);
                // Its record keeps what was written of it; the caller's
                // answer is the apology, and the history never had it.
                self.emit(EventKind::ReplyEnded {
                    turn: a.turn,
                    bot_text: a.written(),
                    heard_text: String::new(),
                    interrupted: false,
                    failed: true,
                });
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
        a.began = Some(at);
        let since = |from: Instant| ms(at.saturating_duration_since(from));
        let event = EventKind::BotStartedSpeaking {
            turn: a.turn,
            kind: a.kind,
            total_ms: a.vad_stop_at.map(since),
            end_of_speech_ms: a.end_of_speech_at.map(since),
            since_call_start_ms: (a.kind == TurnKind::Greeting).then(|| since(self.start)),
            frame_at_ms: since(self.start),
        };
        self.emit(event);
    }

    pub(super) fn on_mark(&mut self, name: &str, now: Instant) {
        if let Some(a) = self.active.as_mut() {
            if let Some(n) = a.early.get_mut(name).filter(|n| **n > 0) {
                *n -= 1; // a pause's `clear` returning it, unplayed
                return;
            }
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
            let generated = a.generated.is_some() || a.kind == TurnKind::Greeting;
            a.spoken && generated && a.paused_at.is_none() && a.pieces.iter().all(|p| p.acked)
        });
        if !done {
            return;
        }
        let a = self.active.take().expect("checked");
        self.cancel(a.epoch); // a no-op for the reply; the driver forgets it
        let heard = a.joined();
        self.close_reply(&a, heard, false);
        self.last_activity = now;
        if let Some((tool, since)) = &a.then {
            // Said and heard to the end: now the call is ended or handed on.
            self.tool_used(&a, tool, "ok", *since, now);
            self.out.push(Action::Act(tool.clone()));
            return;
        }
        // The caller is listening to the end of it: time enough to evaluate
        // the reply as it will appear in the next prompt.
        if self.pending.is_none() {
            self.out.push(Action::Prefill(self.history.clone()));
        }
    }

    /// Reports what the caller heard of reply `a` and keeps exactly that in
    /// the conversation (the greeting is already part of the prefix).
    pub(super) fn close_reply(&mut self, a: &Active, heard: String, interrupted: bool) {
        if a.kind != TurnKind::Greeting && !heard.is_empty() {
            self.history
                .push(ChatMessage::new(Role::Assistant, heard.clone()));
        }
        let turn = a.turn;
        if a.first_frame_at.is_some() {
            self.emit(EventKind::BotStoppedSpeaking { turn, interrupted });
        }
        self.emit(EventKind::ReplyEnded {
            turn,
            bot_text: a.written(),
            heard_text: heard,
            interrupted,
            failed: false,
        });
    }

    /// Barge-in (or a new turn): stop the reply, flush what the transport
    /// buffered, and keep in the history only what the caller heard (up to
    /// the pause, if speech over it paused it first).
    pub(super) fn interrupt(&mut self, now: Instant) {
        let Some(a) = self.active.take() else { return };
        self.cancel(a.epoch);
        self.out.push(Action::Clear { upto: a.epoch });
        let stopped = a.paused_at.unwrap_or(now);
        self.bot_until = stopped;
        if let Some((tool, since)) = &a.then {
            // The caller went on: they were not done after all.
            self.tool_used(&a, tool, "cancelled", *since, now);
        }
        let onset = self.pos_time(self.segment_onset, now);
        let heard = a.heard_by(stopped);
        // A reply the caller never heard was abandoned, not interrupted.
        let spoke = a.first_frame_at.is_some();
        self.close_reply(&a, heard, spoke);
        if !spoke {
            return;
        }
        let turn = a.turn;
        let reaction = Duration::from_secs_f64(REACTION_SECS);
        let cut_off =
            a.kind == TurnKind::Turn && a.began.is_some_and(|first| onset < first + reaction);
        let onset_to_clear_ms = ms(stopped.saturating_duration_since(onset));
        self.emit(EventKind::Interruption {
            turn,
            onset_to_clear_ms,
            cut_off,
        });
        self.interruptions.push(Interruption {
            turn,
            onset_to_clear_ms,
            cut_off,
        });
    }

    /// Reports what became of reply `a`'s tool.
    pub(super) fn tool_used(
        &mut self,
        a: &Active,
        tool: &ToolCall,
        outcome: &'static str,
        since: Instant,
        now: Instant,
    ) {
        self.emit(EventKind::ToolCall {
            turn: a.turn,
            call: tool.clone(),
            outcome,
            ms: ms(now.saturating_duration_since(since)),
            result: None,
        });
    }
}
