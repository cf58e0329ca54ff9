//! The machine's side of a caller turn: from the VAD's first silent window
//! to a confirmed turn — the transcript, the draft reply started from it,
//! Smart Turn's verdict and the silence fallback.

use std::time::Instant;

use super::reply::Asked;
use super::words::{self, Cue};
use super::MAX_DTMF;
use super::{ms, pos_ms, turn_from, Action, TurnMachine, PRE_SPEECH_SECS, STT_PRE_SPEECH_SECS};
use crate::engines::{ChatMessage, Role, Transcript, TurnVerdict, MODEL_RATE};
use crate::events::{CallerTurn, EventKind, TurnEnd, TurnKind};
use crate::session::reply::Source;
use crate::tools::intent::{self, Intent};
use crate::tools::ToolCall;

/// A turn the caller may have finished: from the VAD's pause (or its stop)
/// until the turn is confirmed or the caller goes on.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: u64,
    /// Where the speech ended.
    end: u64,
    end_of_speech_at: Instant,
    /// Set by the VAD's stop; until then the caller may still resume.
    pub(super) vad_stop_at: Option<Instant>,
    /// The latest of Smart Turn's verdicts.
    verdict: Option<TurnVerdict>,
    /// A verdict is on its way.
    scoring: bool,
    /// The end of the audio Smart Turn last scored.
    scored_to: u64,
    /// How many times it was asked.
    scores: usize,
    transcript: Option<(Transcript, Instant)>,
    pub(super) timed_out: bool,
    pub(super) draft: Option<Draft>,
}

/// A reply started before the turn was confirmed, and the events it sent
/// meanwhile (replayed when it is adopted).
#[derive(Debug)]
pub(super) struct Draft {
    pub(super) epoch: u64,
    started: Instant,
    pub(super) early: Vec<crate::session::reply::ReplyEvent>,
}

impl TurnMachine {
    pub(super) fn on_speech_stopped(&mut self, end: u64, at: u64, now: Instant) {
        self.emit(EventKind::UserStoppedSpeaking {
            confirmed_ms: pos_ms(at),
            end_ms: pos_ms(end),
        });
        self.in_speech = false;
        self.speaking_since = None;
        self.barge_in_at = None;
        if self.segment_is_echo {
            self.segment_is_echo = false;
            return;
        }
        self.last_activity = now;
        let Some(turn_start) = self.turn_start else {
            return;
        };
        if self.pending.as_ref().is_none_or(|p| p.end != end) {
            self.begin_turn(end, at, now);
        }
        let stop_at = self.pos_time(at, now);
        if let Some(p) = self.pending.as_mut() {
            p.vad_stop_at = Some(stop_at);
        }
        self.predict(turn_start, at);
        self.maybe_complete_turn(now);
    }

    /// Asks Smart Turn about the turn's audio up to `to`.
    fn predict(&mut self, turn_start: u64, to: u64) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        p.scoring = true;
        p.scored_to = to;
        p.scores += 1;
        let id = p.id;
        self.out.push(Action::PredictTurn {
            id,
            from: turn_from(turn_start, PRE_SPEECH_SECS),
            to,
        });
    }

    /// While the caller stays silent and Smart Turn doubts the turn, asks
    /// it again on the longer silence each `rescore_secs`: one int8 verdict
    /// 200 ms into the silence flips on a hair, and a little more silence
    /// often settles it (in five demo calls, 5 of 50 turns went from
    /// 0.11–0.5 at the stop to 0.87–0.98 300 ms later).
    pub(super) fn maybe_rescore(&mut self) {
        let every = (self.rules.rescore_secs as f64 * MODEL_RATE as f64) as u64;
        let (Some(p), Some(turn_start)) = (self.pending.as_ref(), self.turn_start) else {
            return;
        };
        let doubtful = p
            .verdict
            .is_some_and(|v| !self.rules.turn_complete(v.probability));
        if every == 0
            || p.scoring
            || !doubtful
            || p.timed_out
            || self.in_speech
            || p.vad_stop_at.is_none()
            || self.position < p.scored_to + every
        {
            return;
        }
        self.predict(turn_start, self.position);
    }

    /// A turn that may have ended at `end`: transcribe what was said up to
    /// `to` while the VAD and Smart Turn make up their minds.
    pub(super) fn begin_turn(&mut self, end: u64, to: u64, now: Instant) {
        let Some(turn_start) = self.turn_start else {
            return;
        };
        let id = self.next_turn_id;
        self.next_turn_id += 1;
        self.discard_pending();
        self.pending = Some(Pending {
            id,
            end,
            end_of_speech_at: self.pos_time(end, now),
            vad_stop_at: None,
            verdict: None,
            scoring: false,
            scored_to: 0,
            scores: 0,
            transcript: None,
            timed_out: false,
            draft: None,
        });
        self.out.push(Action::Transcribe {
            id,
            from: turn_from(turn_start, STT_PRE_SPEECH_SECS),
            to,
        });
    }

    /// The caller went on (or the turn failed): the candidate turn and any
    /// draft reply for it are dropped, unheard.
    pub(super) fn discard_pending(&mut self) {
        if let Some(d) = self.pending.take().and_then(|p| p.draft) {
            self.discard_draft(d);
        }
    }

    /// A draft whose turn went on (or whose context changed): cancelled,
    /// unheard, and counted.
    pub(super) fn discard_draft(&mut self, d: Draft) {
        self.drafts_discarded += 1;
        self.cancel(d.epoch);
        tracing::debug!(call = %self.call, epoch = d.epoch, "draft reply discarded");
    }

    pub(super) fn on_verdict(&mut self, id: u64, result: crate::Result<TurnVerdict>) {
        match (result, self.pending.as_mut()) {
            (Ok(v), Some(p)) if p.id == id => {
                p.verdict = Some(v);
                p.scoring = false;
                let complete = self.rules.turn_complete(v.probability);
                self.emit(EventKind::TurnVerdict {
                    probability: v.probability,
                    complete,
                    inference_ms: v.inference_ms,
                    total_ms: v.total_ms,
                });
            }
            (Err(e), Some(p)) if p.id == id => {
                p.timed_out = true; // fall back to silence
                self.error("turn", format!("turn detection: {e}"));
            }
            _ => {}
        }
    }

    pub(super) fn on_transcript(
        &mut self,
        id: u64,
        result: crate::Result<Transcript>,
        now: Instant,
    ) {
        match (result, self.pending.as_mut()) {
            (Ok(t), Some(p)) if p.id == id => {
                let tm = &t.timings;
                tracing::debug!(call = %self.call, chars = t.text.chars().count(), ms = tm.total_ms, queued_ms = tm.queued_ms, encoder_ms = tm.encoder_ms, decoder_ms = tm.decoder_ms, fallbacks = tm.fallbacks, "transcript");
                let backchannel = words::is_backchannel(&t.text);
                p.transcript = Some((t, now));
                if self.paused().is_some() {
                    if backchannel {
                        // A listener's signal: no turn, and the bot goes on.
                        self.discard_pending();
                        self.turn_start = None;
                        self.resume_reply(now, true);
                        return;
                    }
                    self.interrupt(now);
                }
                self.maybe_draft(now);
            }
            (Err(e), Some(p)) if p.id == id => {
                self.error("stt", format!("stt: {e}"));
                // Words unknown: a paused reply goes on rather than be lost.
                self.resume_reply(now, false);
                self.discard_pending();
                self.turn_start = None;
                // The caller said something and would otherwise wait for an
                // answer that never comes.
                if self.active.is_none() {
                    self.apologise("Sorry, I didn't catch that. Could you say it again?", now);
                }
            }
            _ => {}
        }
    }

    /// With the transcript in hand, the reply can be written and synthesised
    /// while the turn is still being decided — unless a reply is playing, as
    /// a draft would then talk over it.
    pub(super) fn maybe_draft(&mut self, now: Instant) {
        if !self.rules.draft_replies || self.active.is_some() {
            return;
        }
        let Some(p) = self.pending.as_ref() else {
            return;
        };
        let Some((t, _)) = p.transcript.as_ref() else {
            return;
        };
        let text = t.text.trim().to_string();
        if p.draft.is_some() || text.is_empty() {
            return;
        }
        let mut history = self.history.clone();
        history.push(ChatMessage::new(Role::User, text));
        let epoch = self.next_epoch(Source::Turn(history), true);
        tracing::debug!(call = %self.call, epoch, "draft reply started");
        if let Some(p) = self.pending.as_mut() {
            p.draft = Some(Draft {
                epoch,
                started: now,
                early: Vec::new(),
            });
        }
    }

    /// Which rule, if any, ends the pending turn at `now`.
    fn turn_end(&self, now: Instant) -> Option<TurnEnd> {
        let p = self.pending.as_ref()?;
        let (stop, (t, _)) = (p.vad_stop_at?, p.transcript.as_ref()?);
        if p.timed_out {
            return Some(TurnEnd::Silence);
        }
        let cue = if self.rules.word_cues {
            words::turn_cue(&t.text, &self.persona.name)
        } else {
            Cue::Unclear
        };
        if cue == Cue::GoingOn {
            return None;
        }
        if p.verdict
            .is_some_and(|v| self.rules.turn_complete(v.probability))
        {
            return Some(TurnEnd::SmartTurn);
        }
        // The surer Smart Turn is that the turn goes on, the longer a
        // finished sentence waits: `sentence_wait_secs` at the threshold,
        // twice that at 0 (Whisper ends "So I wanted to ask," with a full
        // stop too).
        let threshold = self.rules.turn_threshold.max(f32::EPSILON);
        let doubt = p
            .verdict
            .map_or(1.0, |v| 1.0 - (v.probability / threshold).min(1.0));
        let wait = self.rules.sentence_wait_secs * (1.0 + doubt);
        let silence = now.saturating_duration_since(stop).as_secs_f32();
        (cue == Cue::Finished && silence >= wait).then_some(TurnEnd::Words)
    }

    pub(super) fn maybe_complete_turn(&mut self, now: Instant) {
        let Some(end) = self.turn_end(now) else {
            return;
        };
        let mut p = self.pending.take().expect("checked");
        self.turn_start = None;
        let (t, at) = p.transcript.take().expect("checked");
        let text = t.text.trim().to_string();
        if text.is_empty() {
            tracing::debug!(call = %self.call, "turn without words ignored");
            if let Some(d) = p.draft {
                self.cancel(d.epoch);
            }
            return;
        }
        // A backchannel the pause rule never saw (speech shorter than
        // `barge_in_min_secs`): the bot talks on, and it is no turn.
        let over_bot = self
            .active
            .as_ref()
            .is_some_and(|a| a.first_frame_at.is_some());
        if self.rules.backchannels && over_bot && words::is_backchannel(&text) {
            if let Some(d) = p.draft {
                self.discard_draft(d);
            }
            self.backchannels += 1;
            return;
        }
        let stt_ms = ms(at.saturating_duration_since(p.end_of_speech_at));
        self.emit(EventKind::Transcript {
            text: text.clone(),
            stt_ms,
        });
        self.emit(EventKind::TurnEnded {
            end,
            silence_ms: ms(now.saturating_duration_since(p.end_of_speech_at)),
        });
        if self.active.is_some() {
            // A reply still running (never interrupted, e.g. echo-gated): it ends now.
            self.interrupt(now);
        }
        self.history
            .push(ChatMessage::new(Role::User, text.clone()));
        let asked = Asked {
            kind: TurnKind::Turn,
            user_text: text.clone(),
            vad_stop_at: p.vad_stop_at,
            end_of_speech_at: Some(p.end_of_speech_at),
            caller: Some(CallerTurn {
                stt_ms,
                end,
                smart_turn_scores: p.scores,
                smart_turn_ms: p.verdict.as_ref().map(|v| v.total_ms),
                smart_turn_inference_ms: p.verdict.as_ref().map(|v| v.inference_ms),
                smart_turn_probability: p.verdict.as_ref().map(|v| v.probability),
            }),
        };
        let tool = self.tool_for(&text);
        match (tool, p.draft.take()) {
            (Some(tool), draft) => {
                // The persona's own words, not the LLM's, before a hang-up
                // or a transfer: what it drafted is dropped.
                if let Some(d) = draft {
                    self.discard_draft(d);
                }
                let line = match tool {
                    ToolCall::EndCall => self.persona.goodbye.clone(),
                    ToolCall::TransferCall { .. } => self.persona.transfer_message.clone(),
                    ToolCall::Http { .. } => unreachable!("tool_for gives built-in tools only"),
                };
                let turn = self.start_reply(asked, Source::Text(line), now);
                self.emit(EventKind::ToolCall {
                    turn,
                    call: tool.clone(),
                    outcome: "started",
                    ms: 0.0,
                    result: None,
                });
                if let Some(a) = self.active.as_mut() {
                    a.then = Some((tool, now));
                }
            }
            (None, Some(d)) => {
                self.out.push(Action::ReleaseReply { epoch: d.epoch });
                self.adopt(d.epoch, asked, d.started);
                for ev in d.early {
                    self.on_reply(ev, now);
                }
            }
            (None, None) => {
                let source = Source::Turn(self.history.clone());
                self.start_reply(asked, source, now);
            }
        }
    }

    /// The built-in tool a finished turn's words ask for, if the
    /// configuration offers it.
    fn tool_for(&self, text: &str) -> Option<ToolCall> {
        match intent::intent(text) {
            Intent::EndCall if self.rules.end_call => Some(ToolCall::EndCall),
            Intent::Transfer => self
                .rules
                .transfer_to
                .clone()
                .map(|to| ToolCall::TransferCall { to }),
            _ => None,
        }
    }
}

/// Turns that come without speech: a keypad digit, and the caller's silence.
impl TurnMachine {
    pub(super) fn on_dtmf(&mut self, digit: String, now: Instant) {
        // Each key becomes a line of the history and may start a reply: a
        // flood of them must not grow the prompt (and the model's work)
        // without bound. A person enters a card number, a date or a menu
        // choice in far fewer.
        if self.dtmf_taken >= MAX_DTMF {
            if self.dtmf_taken == MAX_DTMF {
                self.dtmf_taken += 1;
                let message = format!("more than {MAX_DTMF} keypad digits: the rest are ignored");
                self.error("dtmf", message);
            }
            return;
        }
        self.dtmf_taken += 1;
        let text = format!("[caller pressed {digit}]");
        self.emit(EventKind::Dtmf { digit });
        self.activity_seen = true;
        self.last_activity = now;
        if let Some(d) = self.pending.as_mut().and_then(|p| p.draft.take()) {
            // Its context no longer matches the conversation.
            self.discard_draft(d);
        }
        self.history
            .push(ChatMessage::new(Role::User, text.clone()));
        if self.active.is_none() && self.pending.is_none() {
            let source = Source::Turn(self.history.clone());
            self.start_reply(Asked::unspoken(TurnKind::Dtmf, text), source, now);
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant) {
        let timeout = self.rules.turn_timeout_secs;
        if let Some(p) = self.pending.as_mut() {
            if !p.timed_out
                && p.vad_stop_at
                    .is_some_and(|at| now.saturating_duration_since(at).as_secs_f32() >= timeout)
            {
                p.timed_out = true;
            }
        }
        // The words' rule waits on the clock; Smart Turn may be asked again.
        self.maybe_complete_turn(now);
        self.maybe_rescore();
        let idle = self.rules.idle_secs;
        if idle > 0.0
            && self.activity_seen
            && self.active.is_none()
            && self.pending.is_none()
            && !self.in_speech
            && self.turn_start.is_none()
            && now
                .saturating_duration_since(self.last_activity.max(self.bot_until))
                .as_secs_f32()
                >= idle
        {
            self.history.push(ChatMessage::new(
                Role::User,
                self.persona.idle_prompt.clone(),
            ));
            let source = Source::Llm(self.history.clone());
            let asked = Asked::unspoken(TurnKind::Idle, String::new());
            let turn = self.start_reply(asked, source, now);
            self.emit(EventKind::IdlePrompt { turn });
            self.last_activity = now;
        }
    }
}
