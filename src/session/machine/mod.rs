//! The rules of one call, with no threads, channels, engines or clocks: the
//! [`TurnMachine`] takes what happened ([`Input`]) with the time it happened
//! and answers with what to do ([`Action`]). The session ([`super::Session`])
//! is the driver that feeds it and carries the actions out.
//!
//! Keeping the rules here, apart from the I/O, is what lets every rule —
//! when a pause ends a turn, when the caller's voice is the bot's own echo,
//! what the history keeps of an interrupted reply — be tested with scripted
//! events and a fake clock in microseconds instead of end to end on real
//! models in real time.
//!
//! The rules, in the order a turn meets them:
//! - speech starts: unless it is the bot's echo (quieter than what the bot
//!   played a moment ago by `echo_margin_db`), it cancels a candidate turn
//!   and its draft, and while the bot speaks it interrupts after
//!   `barge_in_min_secs` of unbroken speech (a pause stops the count);
//! - the VAD's pause (its first silent window): the turn so far is sent to
//!   STT and, with the transcript, a draft reply starts, its audio held;
//! - speech resumes before the stop: the candidate and its draft are dropped;
//! - the VAD's stop: Smart Turn is asked, and asked again each
//!   `rescore_secs` of further silence while it doubts; with a transcript,
//!   the turn is complete on a verdict above the threshold, on words that
//!   finish a sentence after `sentence_wait_secs`, or after
//!   `turn_timeout_secs` of silence whatever was said — but words that go
//!   on (a lone greeting, a trailing "and") wait for that fallback
//!   ([`words`]); the draft is then released (or a reply starts);
//! - speech over the bot pauses it until its words are known: a
//!   backchannel ("uh-huh") lets it go on where it stopped, anything else
//!   (or speech longer than `backchannel_max_secs`) interrupts it;
//! - a reply is over when all of it was generated, queued and acknowledged by
//!   its marks; an interrupted one leaves in the history what the caller
//!   heard of it;
//! - `idle_secs` after the last activity (once the caller has spoken) the bot
//!   carries on by itself; a DTMF digit is a turn of its own.

mod reply;
#[cfg(test)]
mod tests;
mod turn;
pub(crate) mod words;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reply::{ReplyEvent, Source};
use super::timeline::StreamClock;
use crate::config::{CallConfig, Persona};
use crate::engines::{ChatMessage, Role, Transcript, TurnVerdict, MODEL_RATE};
use crate::events::{EventKind, Interruption, TurnKind};
use reply::{Active, Asked};
use turn::Pending;

/// Audio before the VAD's onset that Smart Turn sees (its training clips
/// start before the speech).
const PRE_SPEECH_SECS: f64 = 0.5;
/// The same for Whisper: enough for a soft first consonant, and every
/// second less is encoder time the caller does not wait for.
const STT_PRE_SPEECH_SECS: f64 = 0.2;
/// How far before the VAD's "resumed" speech is taken to start: one of
/// its 32 ms windows and then some (16 kHz samples).
const RESUME_LOOKBACK: u64 = 1600;

/// What happened on the call. Stream positions are 16 kHz samples of the
/// caller's audio since the call started.
#[derive(Debug)]
pub(crate) enum Input {
    /// The call starts: the greeting, and the prompt prefilled meanwhile.
    Start,
    /// Caller audio up to position `end` is in the driver's turn buffer.
    Audio {
        end: u64,
    },
    /// The VAD confirmed speech; `levels` say how loud it is beside what the
    /// bot played just before (for the echo rule).
    SpeechStarted {
        onset: u64,
        at: u64,
        levels: Levels,
    },
    /// The VAD's first silent window after speech at `end`: the turn may
    /// be ending.
    SpeechPaused {
        end: u64,
    },
    /// Speech again at `at`, before the VAD's stop window ran out.
    SpeechResumed {
        at: u64,
    },
    /// Silence confirmed at `at`; the speech ended at `end`.
    SpeechStopped {
        end: u64,
        at: u64,
    },
    Transcript {
        id: u64,
        result: crate::Result<Transcript>,
    },
    Verdict {
        id: u64,
        result: crate::Result<TurnVerdict>,
    },
    Prefilled(crate::Result<usize>),
    Reply(ReplyEvent),
    /// The first frame of reply `epoch` went out at `at`.
    FirstFrame {
        epoch: u64,
        at: Instant,
    },
    /// The output sent all it had; the bot's audio ends at `until`.
    Drained {
        until: Instant,
    },
    /// The transport played everything before this mark.
    Mark(String),
    /// The output paused reply `epoch`: the transport will report these
    /// marks at once (a `clear` returns every pending mark), though their
    /// audio is still to play.
    Paused {
        epoch: u64,
        marks: Vec<String>,
    },
    Dtmf(String),
    /// Time passes (the fallback and the idle rule look at the clock).
    Tick,
}

/// Loudness at a speech onset, for the echo rule (dBFS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    /// The caller's speech so far (RMS).
    pub(crate) caller: f32,
    /// The loudest 20 ms the bot played over the same stretch and the half
    /// second before it (−∞ when it played nothing).
    pub(crate) bot_peak: f32,
}

/// What the driver is to do.
// Events are the large variant; actions are few per input (none for most
// audio frames) and moved once, so boxing them would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Action {
    /// Tell the observers.
    Emit(EventKind),
    /// Transcribe the caller's audio `[from, to)` for candidate turn `id`.
    Transcribe { id: u64, from: u64, to: u64 },
    /// Ask Smart Turn about the audio `[from, to)` for candidate turn `id`.
    PredictTurn { id: u64, from: u64, to: u64 },
    /// Start reply `epoch`; a draft holds its audio until released.
    StartReply {
        epoch: u64,
        source: Source,
        draft: bool,
    },
    /// Let a draft's audio out.
    ReleaseReply { epoch: u64 },
    /// Stop reply `epoch` and forget it (also sent for replies that ended).
    CancelReply { epoch: u64 },
    /// Silence reply `epoch` at once (what the transport buffered too) but
    /// keep the rest of it, to go on with or to drop.
    PauseReply { epoch: u64 },
    /// Play the rest of paused reply `epoch` from where it stopped.
    ResumeReply { epoch: u64 },
    /// Flush what the transport buffered of replies up to `upto`.
    Clear { upto: u64 },
    /// Bring the LLM's context up to these messages ahead of the next reply.
    Prefill(Vec<ChatMessage>),
    /// Use a tool: its reply has been said and heard, and the call ends
    /// (hung up, or handed on).
    Act(crate::tools::ToolCall),
}

/// What is left of a call once it ended.
pub(crate) struct Ended {
    pub history: Vec<ChatMessage>,
    pub interruptions: Vec<Interruption>,
    pub(crate) echo_segments_ignored: usize,
    pub drafts_discarded: usize,
    pub backchannels: usize,
    pub errors: Vec<String>,
}

/// Keypad digits one call may send into the conversation.
pub(crate) const MAX_DTMF: usize = 64;

pub(crate) struct TurnMachine {
    rules: CallConfig,
    persona: Persona,
    /// For log lines only.
    call: Arc<str>,
    start: Instant,
    history: Vec<ChatMessage>,
    epoch: u64,
    /// The epoch of the last apology for a failed turn: if that fails too,
    /// the call does not apologise for its apology, round and round.
    apology_epoch: u64,
    active: Option<Active>,
    /// Replies started so far: the next one's number.
    replies: usize,
    interruptions: Vec<Interruption>,
    position: u64,
    clock: StreamClock,
    turn_start: Option<u64>,
    in_speech: bool,
    /// Where the caller's current unbroken stretch of speech began (none in
    /// a pause): how long speech over the bot has gone on.
    speaking_since: Option<u64>,
    segment_is_echo: bool,
    segment_onset: u64,
    barge_in_at: Option<Instant>,
    pending: Option<Pending>,
    next_turn_id: u64,
    activity_seen: bool,
    /// Keypad digits taken so far ([`MAX_DTMF`]).
    dtmf_taken: usize,
    last_activity: Instant,
    bot_until: Instant,
    echo_ignored: usize,
    drafts_discarded: usize,
    backchannels: usize,
    errors: Vec<String>,
    /// The actions of the input being handled.
    out: Vec<Action>,
    /// An answering machine took the call: the bot leaves its message and
    /// hears nothing.
    voicemail: bool,
}

impl TurnMachine {
    /// A call that started at `start`.
    pub(crate) fn new(rules: CallConfig, persona: Persona, call: &str, start: Instant) -> Self {
        let history = vec![ChatMessage::new(Role::System, persona.system.clone())];
        Self {
            rules,
            persona,
            call: call.into(),
            start,
            history,
            epoch: 0,
            apology_epoch: 0,
            active: None,
            replies: 0,
            interruptions: Vec::new(),
            position: 0,
            clock: StreamClock::new(MODEL_RATE),
            turn_start: None,
            in_speech: false,
            speaking_since: None,
            segment_is_echo: false,
            segment_onset: 0,
            barge_in_at: None,
            pending: None,
            next_turn_id: 0,
            activity_seen: false,
            dtmf_taken: 0,
            last_activity: start,
            bot_until: start,
            echo_ignored: 0,
            drafts_discarded: 0,
            backchannels: 0,
            errors: Vec::new(),
            out: Vec::new(),
            voicemail: false,
        }
    }

    /// Leaves the persona's voicemail message instead of the greeting
    /// (an answering machine's beep has gone), takes no turns, and hangs up
    /// once the message has played to its last mark.
    pub(crate) fn leave_voicemail(&mut self) {
        self.voicemail = true;
    }

    /// Handles one input that happened at `now`.
    pub(crate) fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        // A recorder's noise is nobody to answer or to stop for.
        if self.voicemail
            && matches!(
                input,
                Input::SpeechStarted { .. }
                    | Input::SpeechPaused { .. }
                    | Input::SpeechResumed { .. }
                    | Input::SpeechStopped { .. }
                    | Input::Dtmf(_)
                    | Input::Tick
            )
        {
            return Vec::new();
        }
        match input {
            Input::Start => self.on_start(now),
            Input::Audio { end } => self.on_audio(end, now),
            Input::SpeechStarted { onset, at, levels } => {
                self.on_speech_started(onset, at, levels, now)
            }
            Input::SpeechPaused { end } => {
                // A barge-in needs speech that lasts: a pause stops the count.
                self.barge_in_at = None;
                self.speaking_since = None;
                if !self.segment_is_echo && self.turn_start.is_some() {
                    self.begin_turn(end, self.position, now);
                }
            }
            Input::SpeechResumed { at } => {
                self.speaking_since = Some(at);
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.vad_stop_at.is_none())
                {
                    self.discard_pending();
                }
                if !self.segment_is_echo && self.turn_start.is_none() {
                    // What came before was a backchannel, and is gone:
                    // this is new speech (from a VAD window back).
                    let onset = at.saturating_sub(RESUME_LOOKBACK);
                    self.turn_start = Some(onset);
                    self.segment_onset = onset;
                }
                if !self.segment_is_echo && self.bot_speaking(now) {
                    self.arm_barge_in(now);
                }
            }
            Input::SpeechStopped { end, at } => self.on_speech_stopped(end, at, now),
            Input::Transcript { id, result } => {
                self.on_transcript(id, result, now);
                self.maybe_complete_turn(now);
            }
            Input::Verdict { id, result } => {
                self.on_verdict(id, result);
                self.maybe_complete_turn(now);
            }
            Input::Prefilled(r) => match r {
                Ok(n) => tracing::debug!(call = %self.call, tokens = n, "LLM context prefilled"),
                Err(e) => self.error("llm", format!("prefill: {e}")),
            },
            Input::Reply(ev) => self.on_reply(ev, now),
            Input::FirstFrame { epoch, at } => self.on_first_frame(epoch, at),
            Input::Drained { until } => self.bot_until = until,
            Input::Mark(name) => self.on_mark(&name, now),
            Input::Paused { epoch, marks } => self.on_paused(epoch, &marks),
            Input::Dtmf(digit) => self.on_dtmf(digit, now),
            Input::Tick => self.on_tick(now),
        }
        std::mem::take(&mut self.out)
    }

    /// The call is over at `now`: a reply still playing ends like a barge-in
    /// (its events and the history keep what the caller heard of it). The
    /// machine is spent afterwards.
    pub(crate) fn finish(&mut self, now: Instant) -> (Vec<Action>, Ended) {
        if let Some(a) = self.active.take() {
            self.cancel(a.epoch);
            if let Some((tool, since)) = &a.then {
                self.tool_used(&a, tool, "cancelled", *since, now);
            }
            let heard = a.heard_by(a.paused_at.unwrap_or(now));
            let spoke = a.first_frame_at.is_some();
            self.close_reply(&a, heard, spoke);
        }
        if let Some(d) = self.pending.take().and_then(|p| p.draft) {
            self.cancel(d.epoch);
        }
        let ended = Ended {
            history: std::mem::take(&mut self.history),
            interruptions: std::mem::take(&mut self.interruptions),
            echo_segments_ignored: self.echo_ignored,
            drafts_discarded: self.drafts_discarded,
            backchannels: self.backchannels,
            errors: std::mem::take(&mut self.errors),
        };
        (std::mem::take(&mut self.out), ended)
    }

    /// The conversation so far, as the LLM sees it.
    #[cfg(test)]
    pub(crate) fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// An error of this call: kept for its summary and reported to observers.
    pub(crate) fn error(&mut self, kind: &str, message: String) {
        self.errors.push(message.clone());
        self.emit(EventKind::Error {
            kind: kind.to_string(),
            message,
        });
    }

    fn emit(&mut self, kind: EventKind) {
        self.out.push(Action::Emit(kind));
    }

    fn cancel(&mut self, epoch: u64) {
        self.out.push(Action::CancelReply { epoch });
    }

    /// Greets while the system prompt is prefilled: the caller's first turn
    /// then pays only for its own tokens.
    fn on_start(&mut self, now: Instant) {
        if self.voicemail {
            let message = self.persona.voicemail.clone();
            let asked = Asked::unspoken(TurnKind::Greeting, String::new());
            self.start_reply(asked, Source::Text(message), now);
            if let Some(a) = self.active.as_mut() {
                a.then = Some((crate::tools::ToolCall::EndCall, now));
            }
            return;
        }
        let mut prefix = self.history.clone();
        if self.rules.greet && !self.persona.greeting.is_empty() {
            let greeting = self.persona.greeting.clone();
            prefix.push(ChatMessage::new(Role::Assistant, greeting.clone()));
            let asked = Asked::unspoken(TurnKind::Greeting, String::new());
            self.start_reply(asked, Source::Text(greeting), now);
        }
        self.out.push(Action::Prefill(prefix));
    }

    /// When stream position `pos` was spoken.
    fn pos_time(&self, pos: u64, now: Instant) -> Instant {
        self.clock.time_of(pos, now)
    }

    fn on_audio(&mut self, end: u64, now: Instant) {
        self.position = end;
        self.clock.arrived(end, now);
        if let Some(at) = self.barge_in_at {
            if now >= at && self.in_speech {
                self.barge_in_at = None;
                self.barge_in(now);
            }
        }
        // No backchannel lasts this long: whatever the words, it is an
        // interruption.
        let max = (self.rules.backchannel_max_secs as f64 * MODEL_RATE as f64) as u64;
        if self.paused().is_some()
            && self
                .speaking_since
                .is_some_and(|since| end.saturating_sub(since) > max)
        {
            self.interrupt(now);
        }
    }

    fn bot_speaking(&self, now: Instant) -> bool {
        self.active.is_some() || now < self.bot_until
    }

    fn on_speech_started(&mut self, onset: u64, at: u64, levels: Levels, now: Instant) {
        self.emit(EventKind::UserStartedSpeaking {
            confirmed_ms: pos_ms(at),
            onset_ms: pos_ms(onset),
        });
        self.in_speech = true;
        self.speaking_since = Some(onset);
        self.segment_onset = onset;
        // Echo is quieter than what we played a moment earlier; a caller
        // talking over the bot is not.
        let margin = self.rules.echo_margin_db;
        self.segment_is_echo = self.bot_speaking(now)
            && levels.bot_peak.is_finite()
            && levels.caller < levels.bot_peak - margin;
        if self.segment_is_echo {
            self.echo_ignored += 1;
            tracing::debug!(call = %self.call, "speech ignored as echo of the bot");
            return;
        }
        self.activity_seen = true;
        self.last_activity = now;
        self.discard_pending(); // the caller goes on: the turn is not over
        self.turn_start.get_or_insert(onset);
        if self.bot_speaking(now) {
            self.arm_barge_in(now);
        }
    }

    /// The caller talks over the bot: interrupt it now, or once the speech
    /// has lasted `barge_in_min_secs` (see [`Self::on_audio`]).
    fn arm_barge_in(&mut self, now: Instant) {
        let min = self.rules.barge_in_min_secs;
        if min <= 0.0 {
            self.barge_in(now);
        } else {
            self.barge_in_at = Some(now + Duration::from_secs_f32(min));
        }
    }

    /// Speech over the bot: it stops at once either way; with
    /// `backchannels` it only pauses until the words are known.
    fn barge_in(&mut self, now: Instant) {
        let audible = self
            .active
            .as_ref()
            .is_some_and(|a| a.first_frame_at.is_some());
        if self.rules.backchannels && audible {
            self.pause_reply(now);
        } else {
            self.interrupt(now);
        }
    }

    /// Speaks `text` in place of a turn that failed.
    fn apologise(&mut self, text: &str, now: Instant) {
        let source = Source::Text(text.to_string());
        let asked = Asked::unspoken(TurnKind::Turn, String::new());
        self.start_reply(asked, source, now);
        self.apology_epoch = self.epoch;
    }

    /// A new epoch, and the action that starts its reply.
    fn next_epoch(&mut self, source: Source, draft: bool) -> u64 {
        self.epoch += 1;
        let epoch = self.epoch;
        self.out.push(Action::StartReply {
            epoch,
            source,
            draft,
        });
        epoch
    }
}

/// Where a turn's audio for a model starts: `pre_secs` before its first
/// onset.
fn turn_from(turn_start: u64, pre_secs: f64) -> u64 {
    turn_start.saturating_sub((pre_secs * MODEL_RATE as f64) as u64)
}

/// A 16 kHz stream position in ms.
fn pos_ms(pos: u64) -> f64 {
    pos as f64 * 1e3 / MODEL_RATE as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
