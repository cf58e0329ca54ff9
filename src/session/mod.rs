//! One phone call: the caller's audio in, the bot's audio out, and the turn
//! taking in between.
//!
//! A call is a handful of tasks around one event loop ([`Session::run`]):
//! - the input thread ([`input`]) turns μ-law frames into 16 kHz audio and
//!   VAD events;
//! - at the first silent window after speech (the VAD's pause, one stop
//!   window before its stop), Whisper transcribes the turn so far and a draft
//!   reply starts from the transcript, its audio held back; at the VAD stop
//!   Smart Turn decides whether the turn is over. A confirmed turn releases
//!   the draft, so the caller waits only for whatever of STT → LLM → TTS has
//!   not already run during the stop window and the turn decision; speech
//!   that resumes cancels the draft, unheard;
//! - a reply ([`reply`]) streams the LLM into Piper, clause by clause;
//! - the output task ([`output`]) paces 20 ms frames to the transport, with a
//!   mark after each piece.
//!
//! The loop owns all per-call state, so nothing here needs a lock except the
//! LLM session (used by one reply thread at a time) and the bot track (written
//! by the output, read for echo checks and the recording). Transports (the
//! Twilio websocket, later others) only translate messages to [`CallInput`]
//! and from [`output::Wire`].

pub mod input;
pub mod output;
pub mod reply;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::audio::{ulaw, wav, Audio};
use crate::config::{Config, Persona};
use crate::engines::{
    contained, ChatMessage, GenerationOptions, LlmSession, Role, SttStream, Transcript,
    TurnVerdict, VadEvent, MODEL_RATE,
};
use crate::observe::{EventKind, Publisher};
use crate::stack::Engines;
use input::InputEvent;
use output::{BotTrack, OutCmd, OutEvent, Wire};
use reply::{Reply, ReplyEvent, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// As serialised: for metric labels and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    pub call_sid: String,
    pub stream_sid: String,
    pub direction: Direction,
    pub params: HashMap<String, String>,
}

/// What a transport delivers to the call.
#[derive(Debug)]
pub enum CallInput {
    /// One frame of μ-law audio from the caller.
    Audio(Vec<u8>),
    /// The transport played everything before this mark.
    Mark(String),
    Dtmf(String),
    Stop,
    /// The server ends the call (shutting down); the reason is recorded.
    End(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnKind {
    Greeting,
    Turn,
    Idle,
    Dtmf,
}

impl TurnKind {
    /// As serialised: for span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnKind::Greeting => "greeting",
            TurnKind::Turn => "turn",
            TurnKind::Idle => "idle",
            TurnKind::Dtmf => "dtmf",
        }
    }
}

/// Everything measured about one bot reply. Times are milliseconds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TurnRecord {
    pub index: usize,
    pub kind: TurnKind,
    pub user_text: String,
    /// What the LLM generated (or the greeting).
    pub bot_text: String,
    /// What the caller heard: differs from `bot_text` after an interruption.
    pub heard_text: String,
    pub interrupted: bool,
    /// VAD "user stopped speaking" → first bot audio frame written.
    pub total_ms: Option<f64>,
    /// End of the caller's speech (stop event minus the stop window) → same frame.
    pub end_of_speech_ms: Option<f64>,
    /// End of speech → transcript.
    pub stt_ms: Option<f64>,
    pub smart_turn_ms: Option<f64>,
    pub smart_turn_inference_ms: Option<f64>,
    pub smart_turn_probability: Option<f32>,
    pub llm_ttfb_ms: Option<f64>,
    pub tts_ttfb_ms: Option<f64>,
    pub prompt_tokens: usize,
    pub prefilled_tokens: usize,
    pub completion_tokens: usize,
    pub tts_characters: usize,
    /// Anchors in ms from the call's start, to place the stages on a
    /// timeline (traces, spans): the LLM request (a draft's start for
    /// drafts), Piper's first audio, the first frame written.
    pub reply_started_at_ms: f64,
    pub first_audio_at_ms: Option<f64>,
    pub first_frame_at_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interruption {
    /// Reply interrupted.
    pub turn: usize,
    /// The caller's speech onset → `clear` sent, measured here.
    pub onset_to_clear_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub info: CallInfo,
    pub duration_secs: f64,
    pub history: Vec<ChatMessage>,
    pub turns: Vec<TurnRecord>,
    pub interruptions: Vec<Interruption>,
    pub echo_segments_ignored: usize,
    /// Draft replies dropped unheard because the caller went on.
    pub drafts_discarded: usize,
    pub frames_dropped: usize,
    pub recording: Option<PathBuf>,
    pub ended_by: String,
    pub errors: Vec<String>,
}

/// A turn the caller may have finished: from the VAD's pause (or its stop)
/// until the turn is confirmed or the caller goes on.
struct Pending {
    id: u64,
    /// Where the speech ended (16 kHz stream position).
    end: u64,
    end_of_speech_at: Instant,
    /// Set by the VAD's stop; until then the caller may still resume.
    vad_stop_at: Option<Instant>,
    verdict: Option<TurnVerdict>,
    transcript: Option<(Transcript, Instant)>,
    timed_out: bool,
    draft: Option<Draft>,
}

/// A reply started before the turn was confirmed (from the pending turn's
/// transcript), and the events it sent meanwhile (replayed when it is
/// adopted). Dropping it cancels the reply.
struct Draft {
    reply: Reply,
    early: Vec<ReplyEvent>,
}

impl Pending {
    fn new(id: u64, end: u64, end_of_speech_at: Instant) -> Self {
        Self {
            id,
            end,
            end_of_speech_at,
            vad_stop_at: None,
            verdict: None,
            transcript: None,
            timed_out: false,
            draft: None,
        }
    }
}

struct Piece {
    name: String,
    text: String,
    secs: f64,
    acked: bool,
}

struct Active {
    reply: Reply,
    record: usize,
    vad_stop_at: Option<Instant>,
    end_of_speech_at: Option<Instant>,
    pieces: Vec<Piece>,
    first_frame_at: Option<Instant>,
    last_ack_at: Option<Instant>,
    spoken: bool,
    generated: Option<String>,
}

enum Internal {
    Verdict(u64, crate::Result<TurnVerdict>),
    Transcript(u64, crate::Result<Transcript>),
    Prefilled(crate::Result<usize>),
}

/// How far the caller's audio may run ahead of the call's clock. Twilio
/// delivers in real time, but audio also arrives in a burst after a network
/// hiccup, or after our own server was too busy to read the socket for a
/// while (the call's clock starts when its session does, which on a loaded
/// machine can be seconds after Twilio began to send). The bound is there
/// to keep a flooding client's memory finite, not to judge real callers.
pub const AHEAD_SLACK_SECS: f64 = 10.0;
/// Seconds of 16 kHz audio kept for turn detection and STT.
const TURN_BUFFER_SECS: usize = 30;
/// How long an ended call waits for its threads (a cancelled reply stops
/// at its next token or audio chunk; a transcription runs to its end).
const WORKERS_GRACE: Duration = Duration::from_secs(10);
/// Audio before the VAD's onset that Smart Turn sees (its training clips
/// start before the speech).
const PRE_SPEECH_SECS: f64 = 0.5;
/// The same for Whisper: enough for a soft first consonant, and every
/// second less is encoder time the caller does not wait for.
const STT_PRE_SPEECH_SECS: f64 = 0.2;

pub struct Session {
    cfg: Arc<Config>,
    engines: Engines,
    info: CallInfo,
    persona: Persona,
    start: Instant,
    out: mpsc::Sender<OutCmd>,
    track: BotTrack,
    caller_track: Vec<i16>,
    llm: Arc<Mutex<Box<dyn LlmSession>>>,
    history: Vec<ChatMessage>,
    epoch: u64,
    /// The epoch of the last apology for a failed turn: if that fails too,
    /// the call does not apologise for its apology, round and round.
    apology_epoch: u64,
    active: Option<Active>,
    records: Vec<TurnRecord>,
    interruptions: Vec<Interruption>,
    // Turn detection.
    buffer: Vec<f32>,
    buffer_start: u64,
    position: u64,
    turn_start: Option<u64>,
    in_speech: bool,
    segment_is_echo: bool,
    segment_onset: u64,
    barge_in_at: Option<Instant>,
    pending: Option<Pending>,
    next_turn_id: u64,
    // Idle.
    activity_seen: bool,
    last_activity: Instant,
    bot_until: Instant,
    echo_ignored: usize,
    drafts_discarded: usize,
    frames_dropped: usize,
    /// Audio ahead of real time has been logged (once a call).
    ahead_logged: bool,
    errors: Vec<String>,
    /// The STT engine's stream of this call, when it listens as the caller
    /// speaks; otherwise each turn's audio is transcribed when it ends.
    listener: Option<Arc<dyn SttStream>>,
    internal_tx: mpsc::Sender<Internal>,
    reply_tx: mpsc::Sender<ReplyEvent>,
    events: Publisher,
}

impl Session {
    /// Runs the call until the transport stops, the input ends or the
    /// maximum duration passes. `wire` receives what the transport must
    /// send; `events` reaches the observers.
    pub async fn run(
        cfg: Arc<Config>,
        engines: Engines,
        info: CallInfo,
        mut inputs: mpsc::Receiver<CallInput>,
        wire: mpsc::Sender<Wire>,
        events: Publisher,
    ) -> CallSummary {
        let start = Instant::now();
        let persona = match info.direction {
            Direction::Inbound => cfg.personas.inbound.clone(),
            Direction::Outbound => cfg.personas.outbound.clone(),
        };
        let track = BotTrack::default();
        let (out_ev_tx, mut out_ev_rx) = mpsc::channel(64);
        let out = output::spawn(
            start,
            Duration::from_millis(cfg.call.max_lead_ms),
            track.clone(),
            wire,
            out_ev_tx,
        );
        let (in_tx, mut in_rx) = mpsc::channel::<InputEvent>(256);
        let denoiser = cfg.call.denoise.then(|| engines.denoiser.clone());
        let frames = input::spawn(engines.vad.clone(), denoiser, in_tx);
        let (internal_tx, mut internal_rx) = mpsc::channel(16);
        let (reply_tx, mut reply_rx) = mpsc::channel(64);
        let llm: Box<dyn LlmSession> = match engines.llm.session() {
            Ok(s) => s,
            Err(e) => {
                events.emit(EventKind::Error {
                    kind: "llm".into(),
                    message: format!("cannot open an LLM session: {e}"),
                });
                let summary = CallSummary::failed(info, e.to_string());
                events.emit(EventKind::CallEnded {
                    summary: Box::new(summary.clone()),
                });
                return summary;
            }
        };
        let history = vec![ChatMessage::new(Role::System, persona.system.clone())];
        let listener = engines.stt.listen().unwrap_or_else(|e| {
            tracing::warn!(call = %info.call_sid, "the STT cannot stream ({e}); each turn is sent whole");
            None
        });
        let mut s = Session {
            cfg: cfg.clone(),
            engines,
            info,
            persona,
            start,
            out,
            track,
            caller_track: Vec::new(),
            llm: Arc::new(Mutex::new(llm)),
            history,
            epoch: 0,
            apology_epoch: 0,
            active: None,
            records: Vec::new(),
            interruptions: Vec::new(),
            buffer: Vec::new(),
            buffer_start: 0,
            position: 0,
            turn_start: None,
            in_speech: false,
            segment_is_echo: false,
            segment_onset: 0,
            barge_in_at: None,
            pending: None,
            next_turn_id: 0,
            activity_seen: false,
            last_activity: start,
            bot_until: start,
            echo_ignored: 0,
            drafts_discarded: 0,
            frames_dropped: 0,
            ahead_logged: false,
            errors: Vec::new(),
            listener,
            internal_tx,
            reply_tx,
            events,
        };
        s.events.emit(EventKind::CallStarted {
            info: s.info.clone(),
            persona: s.persona.clone(),
        });

        // Greet while the system prompt is prefilled on another thread: the
        // caller's first turn then pays only for its own tokens.
        let mut prefix = s.history.clone();
        if cfg.call.greet && !s.persona.greeting.is_empty() {
            let greeting = s.persona.greeting.clone();
            prefix.push(ChatMessage::new(Role::Assistant, greeting.clone()));
            s.start_reply(
                TurnKind::Greeting,
                Source::Text(greeting),
                String::new(),
                None,
                None,
            );
        }
        s.prefill(prefix);

        let deadline = tokio::time::sleep(Duration::from_secs(cfg.call.max_call_secs));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let ended_by = loop {
            tokio::select! {
                biased;
                msg = inputs.recv() => match msg {
                    None => break "transport closed".to_string(),
                    Some(CallInput::Stop) => break "stop".to_string(),
                    Some(CallInput::End(reason)) => break reason,
                    Some(CallInput::Audio(bytes)) => {
                        // Twilio sends in real time. Audio far ahead of the
                        // clock comes from a broken or hostile client; it is
                        // dropped, not kept without bound.
                        let allowed = (s.start.elapsed().as_secs_f64() + AHEAD_SLACK_SECS) * 8000.0;
                        if (s.caller_track.len() + bytes.len()) as f64 > allowed {
                            if !std::mem::replace(&mut s.ahead_logged, true) {
                                tracing::warn!(call = %s.info.call_sid, "caller audio arrives faster than real time: the excess is dropped");
                            }
                            s.frames_dropped += 1;
                            continue;
                        }
                        let pcm = ulaw::decode(&bytes);
                        s.caller_track.extend_from_slice(&pcm);
                        if frames.try_send(pcm).is_err() {
                            s.frames_dropped += 1;
                        }
                    }
                    Some(CallInput::Mark(name)) => s.on_mark(&name),
                    Some(CallInput::Dtmf(d)) => s.on_dtmf(&d),
                },
                Some(ev) = in_rx.recv() => match ev {
                    InputEvent::Audio { samples, end } => s.on_audio(samples, end),
                    InputEvent::Vad(e) => s.on_vad(e),
                    InputEvent::Failed(e) => {
                        s.error("input", e.to_string());
                        break format!("input failed: {e}");
                    }
                },
                Some(ev) = internal_rx.recv() => s.on_internal(ev),
                Some(ev) = reply_rx.recv() => s.on_reply(ev),
                Some(ev) = out_ev_rx.recv() => s.on_output(ev),
                _ = tick.tick() => s.on_tick(),
                _ = &mut deadline => break "maximum duration".to_string(),
            }
        };
        let summary = s.finish(ended_by);
        // The call is over only when its threads are: each holds a sender of
        // one of these channels, and the last one gone closes it. Draining
        // all of them at once keeps any thread from blocking on a full one.
        // (An engine still busy for an ended call would also outlive a
        // server that exits, and llama.cpp crashes when its process exits
        // under a running decode.)
        drop(frames);
        let drain = async {
            tokio::join!(
                async { while in_rx.recv().await.is_some() {} },
                async { while internal_rx.recv().await.is_some() {} },
                async { while reply_rx.recv().await.is_some() {} },
                async { while out_ev_rx.recv().await.is_some() {} },
            )
        };
        if tokio::time::timeout(WORKERS_GRACE, drain).await.is_err() {
            tracing::warn!(
                call = %summary.info.call_sid,
                "a thread of the call is still busy {WORKERS_GRACE:?} after it ended"
            );
        }
        summary
    }

    /// Brings the call's LLM context up to `messages` on another thread, so
    /// that the next reply evaluates only the caller's new words.
    fn prefill(&self, messages: Vec<ChatMessage>) {
        let (llm, tx) = (self.llm.clone(), self.internal_tx.clone());
        std::thread::spawn(move || {
            let r = contained("llm", || {
                llm.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .prefill(&messages)
            });
            let _ = tx.blocking_send(Internal::Prefilled(r));
        });
    }

    fn now_pos_time(&self, pos: u64) -> Instant {
        // Stream positions advance in real time from the call's start.
        let behind = self.position.saturating_sub(pos) as f64 / MODEL_RATE as f64;
        Instant::now() - Duration::from_secs_f64(behind)
    }

    fn on_audio(&mut self, samples: Vec<f32>, end: u64) {
        if let Some(l) = &self.listener {
            l.push(&samples);
        }
        self.buffer.extend_from_slice(&samples);
        self.position = end;
        self.buffer_start = end - self.buffer.len() as u64;
        let keep = TURN_BUFFER_SECS * MODEL_RATE as usize;
        if self.buffer.len() > keep + MODEL_RATE as usize {
            let cut = self.buffer.len() - keep;
            self.buffer.drain(..cut);
            self.buffer_start += cut as u64;
        }
        if let Some(at) = self.barge_in_at {
            if Instant::now() >= at && self.in_speech {
                self.barge_in_at = None;
                self.interrupt();
            }
        }
    }

    fn audio_between(&self, from: u64, to: u64) -> Vec<f32> {
        let a = from.saturating_sub(self.buffer_start) as usize;
        let b = (to.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        self.buffer[a.min(b)..b].to_vec()
    }

    fn bot_speaking(&self) -> bool {
        self.active.is_some() || Instant::now() < self.bot_until
    }

    /// Is the speech that started at `onset` the bot's own voice coming back?
    /// Echo is quieter than what we played a moment earlier; a caller talking
    /// over the bot is not.
    fn looks_like_echo(&self, onset: u64) -> bool {
        let caller = crate::audio::rms_dbfs(&self.audio_between(onset, self.position));
        let to = (self.position / 2) as usize;
        let from = to.saturating_sub(((self.position - onset) / 2) as usize + 4000);
        let bot = self.track.peak_dbfs(from, to);
        bot.is_finite() && caller < bot - self.cfg.call.echo_margin_db
    }

    fn on_vad(&mut self, e: VadEvent) {
        match e {
            VadEvent::Started { onset, at } => {
                self.events.emit(EventKind::UserStartedSpeaking {
                    confirmed_ms: pos_ms(at),
                    onset_ms: pos_ms(onset),
                });
                self.in_speech = true;
                self.segment_onset = onset;
                self.segment_is_echo = self.bot_speaking() && self.looks_like_echo(onset);
                if self.segment_is_echo {
                    self.echo_ignored += 1;
                    tracing::debug!(call = %self.info.call_sid, "speech ignored as echo of the bot");
                    return;
                }
                self.activity_seen = true;
                self.last_activity = Instant::now();
                self.discard_pending(); // the caller goes on: the turn is not over
                self.turn_start.get_or_insert(onset);
                if self.bot_speaking() {
                    let min = self.cfg.call.barge_in_min_secs;
                    if min <= 0.0 {
                        self.interrupt();
                    } else {
                        self.barge_in_at = Some(Instant::now() + Duration::from_secs_f32(min));
                    }
                }
            }
            VadEvent::Paused { end } => {
                if !self.segment_is_echo && self.turn_start.is_some() {
                    self.begin_turn(end, self.position);
                }
            }
            VadEvent::Resumed { .. } => {
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.vad_stop_at.is_none())
                {
                    self.discard_pending();
                }
            }
            VadEvent::Stopped { end, at } => {
                self.events.emit(EventKind::UserStoppedSpeaking {
                    confirmed_ms: pos_ms(at),
                    end_ms: pos_ms(end),
                });
                self.in_speech = false;
                self.barge_in_at = None;
                if self.segment_is_echo {
                    self.segment_is_echo = false;
                    return;
                }
                self.last_activity = Instant::now();
                let Some(turn_start) = self.turn_start else {
                    return;
                };
                if self.pending.as_ref().is_none_or(|p| p.end != end) {
                    self.begin_turn(end, at);
                }
                let stop_at = self.now_pos_time(at);
                let id = {
                    let p = self.pending.as_mut().expect("begun");
                    p.vad_stop_at = Some(stop_at);
                    p.id
                };
                let audio = self.turn_audio(turn_start, at, PRE_SPEECH_SECS);
                let (turn, tx) = (self.engines.turn.clone(), self.internal_tx.clone());
                tokio::task::spawn_blocking(move || {
                    let v = contained("turn", || turn.predict(&audio));
                    let _ = tx.blocking_send(Internal::Verdict(id, v));
                });
                self.maybe_complete_turn();
            }
        }
    }

    /// The turn's audio for Smart Turn and STT: from a little before its
    /// first onset to `to`.
    fn turn_audio(&self, turn_start: u64, to: u64, pre_secs: f64) -> Vec<f32> {
        self.audio_between(turn_from(turn_start, pre_secs), to)
    }

    /// A turn that may have ended at `end`: transcribe what was said up to
    /// `to` while the VAD and Smart Turn make up their minds.
    fn begin_turn(&mut self, end: u64, to: u64) {
        let Some(turn_start) = self.turn_start else {
            return;
        };
        let from = turn_from(turn_start, STT_PRE_SPEECH_SECS);
        let id = self.next_turn_id;
        self.next_turn_id += 1;
        self.discard_pending();
        self.pending = Some(Pending::new(id, end, self.now_pos_time(end)));
        let recognise: Box<dyn FnOnce() -> crate::Result<Transcript> + Send> =
            match self.listener.clone() {
                // The recogniser has heard it all already: only the last
                // words are left to finalise.
                Some(listener) => Box::new(move || listener.transcript(from, to)),
                None => {
                    let (stt, audio) = (self.engines.stt.clone(), self.audio_between(from, to));
                    Box::new(move || stt.transcribe(&Audio::new(audio, MODEL_RATE)))
                }
            };
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let t = contained("stt", recognise);
            let _ = tx.blocking_send(Internal::Transcript(id, t));
        });
    }

    /// The caller went on (or the turn failed): the candidate turn and any
    /// draft reply for it are dropped, unheard.
    fn discard_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            if p.draft.is_some() {
                self.drafts_discarded += 1;
                tracing::debug!(call = %self.info.call_sid, "draft reply discarded");
            }
        }
    }

    /// With the transcript in hand, the reply can be written and synthesised
    /// while the turn is still being decided — unless a reply is playing, as
    /// a draft would then talk over it.
    fn maybe_draft(&mut self) {
        if !self.cfg.call.draft_replies || self.active.is_some() {
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
        let reply = self.spawn_reply(Source::Llm(history), true);
        tracing::debug!(call = %self.info.call_sid, epoch = reply.epoch, "draft reply started");
        if let Some(p) = self.pending.as_mut() {
            p.draft = Some(Draft {
                reply,
                early: Vec::new(),
            });
        }
    }

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Verdict(id, r) => match (r, self.pending.as_mut()) {
                (Ok(v), Some(p)) if p.id == id => {
                    p.verdict = Some(v);
                    self.events.emit(EventKind::TurnVerdict {
                        probability: v.probability,
                        complete: self.cfg.call.turn_complete(v.probability),
                        inference_ms: v.inference_ms,
                        total_ms: v.total_ms,
                    });
                }
                (Err(e), Some(p)) if p.id == id => {
                    p.timed_out = true; // fall back to silence
                    self.error("turn", format!("turn detection: {e}"));
                }
                _ => {}
            },
            Internal::Transcript(id, r) => match (r, self.pending.as_mut()) {
                (Ok(t), Some(p)) if p.id == id => {
                    let tm = &t.timings;
                    tracing::debug!(call = %self.info.call_sid, text = %t.text, ms = tm.total_ms, queued_ms = tm.queued_ms, encoder_ms = tm.encoder_ms, decoder_ms = tm.decoder_ms, fallbacks = tm.fallbacks, "transcript");
                    p.transcript = Some((t, Instant::now()));
                    self.maybe_draft();
                }
                (Err(e), Some(p)) if p.id == id => {
                    self.error("stt", format!("stt: {e}"));
                    self.discard_pending();
                    self.turn_start = None;
                    // The caller said something and would otherwise wait for
                    // an answer that never comes.
                    if self.active.is_none() {
                        self.apologise("Sorry, I didn't catch that. Could you say it again?");
                    }
                }
                _ => {}
            },
            Internal::Prefilled(r) => match r {
                Ok(n) => {
                    tracing::debug!(call = %self.info.call_sid, tokens = n, "LLM context prefilled")
                }
                Err(e) => self.error("llm", format!("prefill: {e}")),
            },
        }
        self.maybe_complete_turn();
    }

    fn maybe_complete_turn(&mut self) {
        let ready = match &self.pending {
            Some(p) => {
                let complete = p.timed_out
                    || p.verdict
                        .is_some_and(|v| self.cfg.call.turn_complete(v.probability));
                complete && p.vad_stop_at.is_some() && p.transcript.is_some()
            }
            None => false,
        };
        if !ready {
            return;
        }
        let mut p = self.pending.take().expect("checked");
        self.turn_start = None;
        let (t, at) = p.transcript.take().expect("checked");
        let vad_stop_at = p.vad_stop_at;
        let text = t.text.trim().to_string();
        if text.is_empty() {
            tracing::debug!(call = %self.info.call_sid, "turn without words ignored");
            return;
        }
        let stt_ms = ms(at.saturating_duration_since(p.end_of_speech_at));
        self.events.emit(EventKind::Transcript {
            text: text.clone(),
            stt_ms,
        });
        if self.active.is_some() {
            // A reply still running (never interrupted, e.g. echo-gated): it ends now.
            self.interrupt();
        }
        self.history
            .push(ChatMessage::new(Role::User, text.clone()));
        let eos = Some(p.end_of_speech_at);
        let idx = match p.draft.take() {
            Some(d) => {
                d.reply.release();
                let idx = self.adopt(d.reply, TurnKind::Turn, text, vad_stop_at, eos);
                for ev in d.early {
                    self.on_reply(ev);
                }
                idx
            }
            None => self.start_reply(
                TurnKind::Turn,
                Source::Llm(self.history.clone()),
                text,
                vad_stop_at,
                eos,
            ),
        };
        let r = &mut self.records[idx];
        r.stt_ms = Some(stt_ms);
        if let Some(v) = p.verdict {
            r.smart_turn_ms = Some(v.total_ms);
            r.smart_turn_inference_ms = Some(v.inference_ms);
            r.smart_turn_probability = Some(v.probability);
        }
    }

    fn start_reply(
        &mut self,
        kind: TurnKind,
        source: Source,
        user_text: String,
        vad_stop_at: Option<Instant>,
        end_of_speech_at: Option<Instant>,
    ) -> usize {
        let bot_text = match &source {
            Source::Text(t) => t.clone(),
            Source::Llm(_) => String::new(),
        };
        let reply = self.spawn_reply(source, false);
        let index = self.adopt(reply, kind, user_text, vad_stop_at, end_of_speech_at);
        self.records[index].bot_text = bot_text;
        index
    }

    /// Speaks `text` in place of a turn that failed.
    fn apologise(&mut self, text: &str) {
        self.start_reply(
            TurnKind::Turn,
            Source::Text(text.to_string()),
            String::new(),
            None,
            None,
        );
        self.apology_epoch = self.epoch;
    }

    fn spawn_reply(&mut self, source: Source, draft: bool) -> Reply {
        self.epoch += 1;
        let options = GenerationOptions {
            max_tokens: self.cfg.llm.max_tokens,
            temperature: self.cfg.llm.temperature,
            repeat_penalty: self.cfg.llm.repeat_penalty,
            ..Default::default()
        };
        reply::spawn(
            self.epoch,
            source,
            draft,
            self.llm.clone(),
            options,
            self.engines.tts.clone(),
            self.out.clone(),
            self.reply_tx.clone(),
        )
    }

    /// Makes `reply` the one playing, with a record of its own.
    fn adopt(
        &mut self,
        reply: Reply,
        kind: TurnKind,
        user_text: String,
        vad_stop_at: Option<Instant>,
        end_of_speech_at: Option<Instant>,
    ) -> usize {
        let index = self.records.len();
        self.records.push(TurnRecord {
            index,
            kind,
            user_text,
            bot_text: String::new(),
            heard_text: String::new(),
            interrupted: false,
            total_ms: None,
            end_of_speech_ms: None,
            stt_ms: None,
            smart_turn_ms: None,
            smart_turn_inference_ms: None,
            smart_turn_probability: None,
            llm_ttfb_ms: None,
            tts_ttfb_ms: None,
            prompt_tokens: 0,
            prefilled_tokens: 0,
            completion_tokens: 0,
            tts_characters: 0,
            reply_started_at_ms: ms(reply.started.saturating_duration_since(self.start)),
            first_audio_at_ms: None,
            first_frame_at_ms: None,
        });
        self.active = Some(Active {
            reply,
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

    fn on_reply(&mut self, ev: ReplyEvent) {
        let epoch = ev.epoch();
        if let Some(d) = self
            .pending
            .as_mut()
            .and_then(|p| p.draft.as_mut())
            .filter(|d| d.reply.epoch == epoch)
        {
            d.early.push(ev);
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if epoch != a.reply.epoch {
            return;
        }
        let r = &mut self.records[a.record];
        let turn = r.index;
        match ev {
            ReplyEvent::FirstToken { ms, .. } => {
                r.llm_ttfb_ms = Some(ms);
                self.events.emit(EventKind::LlmFirstToken { turn, ms });
            }
            ReplyEvent::FirstAudio { ms, at, .. } => {
                r.tts_ttfb_ms = Some(ms);
                r.first_audio_at_ms = Some(self::ms(at.saturating_duration_since(self.start)));
                self.events.emit(EventKind::TtsFirstAudio { turn, ms });
            }
            ReplyEvent::Piece {
                name, text, secs, ..
            } => a.pieces.push(Piece {
                name,
                text,
                secs,
                acked: false,
            }),
            ReplyEvent::Generated { generation, .. } => {
                r.prompt_tokens = generation.prompt_tokens;
                r.prefilled_tokens = generation.prefilled_tokens;
                r.completion_tokens = generation.completion_tokens;
                r.bot_text = generation.text.trim().to_string();
                a.generated = Some(r.bot_text.clone());
                self.events.emit(EventKind::LlmUsage {
                    turn,
                    prompt_tokens: generation.prompt_tokens,
                    prefilled_tokens: generation.prefilled_tokens,
                    completion_tokens: generation.completion_tokens,
                });
            }
            ReplyEvent::Spoken { characters, .. } => {
                r.tts_characters = characters;
                a.spoken = true;
                self.events.emit(EventKind::TtsUsage { turn, characters });
            }
            ReplyEvent::Failed { error, .. } => {
                a.reply.cancel();
                let failed = a.reply.epoch;
                self.active = None;
                self.error("reply", format!("reply failed: {error}"));
                if failed != self.apology_epoch {
                    // Say something rather than go silent.
                    self.apologise("Sorry, I had a problem there. Could you say that again?");
                }
                return;
            }
        }
        self.maybe_finish_reply();
    }

    fn on_output(&mut self, ev: OutEvent) {
        match ev {
            OutEvent::FirstFrame { epoch, at } => {
                if let Some(a) = self.active.as_mut().filter(|a| a.reply.epoch == epoch) {
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
                    self.events.emit(EventKind::BotStartedSpeaking {
                        turn: r.index,
                        kind: r.kind,
                        total_ms: a.vad_stop_at.and(r.total_ms),
                        end_of_speech_ms: r.end_of_speech_ms,
                        since_call_start_ms,
                    });
                }
            }
            OutEvent::Drained { until } => {
                self.bot_until = until;
            }
        }
    }

    fn on_mark(&mut self, name: &str) {
        if let Some(a) = self.active.as_mut() {
            if let Some(p) = a.pieces.iter_mut().find(|p| p.name == name) {
                p.acked = true;
                a.last_ack_at = Some(Instant::now());
            }
        }
        self.maybe_finish_reply();
    }

    /// A reply is over when all of it was generated, queued and played.
    fn maybe_finish_reply(&mut self) {
        let done = self.active.as_ref().is_some_and(|a| {
            let generated =
                a.generated.is_some() || self.records[a.record].kind == TurnKind::Greeting;
            a.spoken && generated && a.pieces.iter().all(|p| p.acked)
        });
        if done {
            let a = self.active.take().expect("checked");
            let heard = joined(&a.pieces);
            self.close_reply(&a, heard, false);
            self.last_activity = Instant::now();
            // The caller is listening to the end of it: time enough to
            // evaluate the reply as it will appear in the next prompt.
            if self.pending.is_none() {
                self.prefill(self.history.clone());
            }
        }
    }

    /// Records what the caller heard of reply `a` and keeps exactly that in
    /// the conversation (the greeting is already part of the prefix).
    fn close_reply(&mut self, a: &Active, heard: String, interrupted: bool) {
        let r = &mut self.records[a.record];
        r.interrupted = interrupted;
        if r.bot_text.is_empty() {
            r.bot_text = joined(&a.pieces);
        }
        r.heard_text = heard;
        if r.kind != TurnKind::Greeting && !r.heard_text.is_empty() {
            self.history
                .push(ChatMessage::new(Role::Assistant, r.heard_text.clone()));
        }
        if a.first_frame_at.is_some() {
            self.events.emit(EventKind::BotStoppedSpeaking {
                turn: r.index,
                interrupted,
            });
        }
        self.events
            .emit(EventKind::TurnFinished { record: r.clone() });
    }

    /// An error of this call: kept for its summary and reported to observers.
    fn error(&mut self, kind: &str, message: String) {
        self.errors.push(message.clone());
        self.events.emit(EventKind::Error {
            kind: kind.to_string(),
            message,
        });
    }

    /// Barge-in (or a new turn): stop the reply, flush what the transport
    /// buffered, and keep in the history only what the caller heard.
    fn interrupt(&mut self) {
        let Some(a) = self.active.take() else { return };
        a.reply.cancel();
        let _ = self.out.try_send(OutCmd::Clear {
            upto: a.reply.epoch,
        });
        let now = Instant::now();
        self.bot_until = now;
        let onset = self.now_pos_time(self.segment_onset);
        let heard = heard_of(&a, now);
        // A reply the caller never heard was abandoned, not interrupted.
        let spoke = a.first_frame_at.is_some();
        self.close_reply(&a, heard, spoke);
        if !spoke {
            return;
        }
        let r = &self.records[a.record];
        let latency = ms(now.saturating_duration_since(onset));
        self.events.emit(EventKind::Interruption {
            turn: r.index,
            onset_to_clear_ms: latency,
        });
        self.interruptions.push(Interruption {
            turn: r.index,
            onset_to_clear_ms: latency,
        });
    }

    fn on_dtmf(&mut self, digit: &str) {
        self.events.emit(EventKind::Dtmf {
            digit: digit.to_string(),
        });
        self.activity_seen = true;
        self.last_activity = Instant::now();
        let text = format!("[caller pressed {digit}]");
        if let Some(d) = self.pending.as_mut().and_then(|p| p.draft.take()) {
            // Its context no longer matches the conversation.
            self.drafts_discarded += 1;
            drop(d);
        }
        self.history
            .push(ChatMessage::new(Role::User, text.clone()));
        if self.active.is_none() && self.pending.is_none() {
            self.start_reply(
                TurnKind::Dtmf,
                Source::Llm(self.history.clone()),
                text,
                None,
                None,
            );
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(p) = self.pending.as_mut() {
            if !p.timed_out
                && p.vad_stop_at.is_some_and(|at| {
                    now.saturating_duration_since(at).as_secs_f32()
                        >= self.cfg.call.turn_timeout_secs
                })
            {
                p.timed_out = true;
                self.maybe_complete_turn();
            }
        }
        let idle = self.cfg.call.idle_secs;
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
            let turn = self.start_reply(
                TurnKind::Idle,
                Source::Llm(self.history.clone()),
                String::new(),
                None,
                None,
            );
            self.events.emit(EventKind::IdlePrompt { turn });
            self.last_activity = now;
        }
    }

    fn finish(mut self, ended_by: String) -> CallSummary {
        // A hang-up during a reply ends it like a barge-in: the summary, the
        // table and the history keep what the caller heard of it.
        if let Some(a) = self.active.take() {
            a.reply.cancel();
            let heard = heard_of(&a, Instant::now());
            self.close_reply(&a, heard, a.first_frame_at.is_some());
        }
        let mut recording = None;
        if let Some(dir) = self.cfg.call.recordings_dir.clone() {
            let path = dir.join(format!("{}.wav", sanitize(&self.info.call_sid)));
            match wav::write_stereo(&path, 8000, &self.caller_track, &self.track.snapshot()) {
                Ok(()) => recording = Some(path),
                Err(e) => self.error("recording", format!("recording not written: {e}")),
            }
        }
        let events = self.events.clone();
        let summary = CallSummary {
            duration_secs: self.start.elapsed().as_secs_f64(),
            info: self.info,
            history: self.history,
            turns: self.records,
            interruptions: self.interruptions,
            echo_segments_ignored: self.echo_ignored,
            drafts_discarded: self.drafts_discarded,
            frames_dropped: self.frames_dropped,
            recording,
            ended_by,
            errors: self.errors,
        };
        events.emit(EventKind::CallEnded {
            summary: Box::new(summary.clone()),
        });
        summary
    }
}

impl CallSummary {
    fn failed(info: CallInfo, error: String) -> Self {
        Self {
            info,
            duration_secs: 0.0,
            history: Vec::new(),
            turns: Vec::new(),
            interruptions: Vec::new(),
            echo_segments_ignored: 0,
            drafts_discarded: 0,
            frames_dropped: 0,
            recording: None,
            ended_by: "error".into(),
            errors: vec![error],
        }
    }

    /// How the call ended, as a metric label.
    pub fn outcome(&self) -> &'static str {
        match self.ended_by.as_str() {
            "stop" => "completed",
            "transport closed" => "hung_up",
            "maximum duration" => "max_duration",
            _ => "failed",
        }
    }

    /// The per-turn latency table, in the layout of the API stack's
    /// LATENCY BREAKDOWN (plus end-of-speech).
    pub fn latency_table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}ms"));
        let mut s = String::from(
            "Turn | Total | STT TTFB | Smart Turn | LLM TTFB | TTS TTFB | LLM Tokens | TTS Chars | End-of-speech\n",
        );
        // Answered turns: the caller heard the bot start (a reply dropped
        // because the caller went on has no latency to show).
        let rows: Vec<&TurnRecord> = self
            .turns
            .iter()
            .filter(|t| t.kind == TurnKind::Turn && t.first_frame_at_ms.is_some())
            .collect();
        for t in &rows {
            s.push_str(&format!(
                "{:>4} | {:>5} | {:>8} | {:>10} | {:>8} | {:>8} | {:>10} | {:>9} | {:>13}\n",
                t.index,
                f(t.total_ms),
                f(t.stt_ms),
                f(t.smart_turn_ms),
                f(t.llm_ttfb_ms),
                f(t.tts_ttfb_ms),
                t.completion_tokens,
                t.tts_characters,
                f(t.end_of_speech_ms)
            ));
        }
        let avg = |g: fn(&TurnRecord) -> Option<f64>| {
            let v: Vec<f64> = rows.iter().filter_map(|t| g(t)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        s.push_str(&format!(
            " Avg | {:>5} | {:>8} | {:>10} | {:>8} | {:>8} | {:>10} | {:>9} | {:>13}\n",
            f(avg(|t| t.total_ms)),
            f(avg(|t| t.stt_ms)),
            f(avg(|t| t.smart_turn_ms)),
            f(avg(|t| t.llm_ttfb_ms)),
            f(avg(|t| t.tts_ttfb_ms)),
            "",
            "",
            f(avg(|t| t.end_of_speech_ms))
        ));
        s
    }
}

/// What the caller heard of reply `a` by `now`: every acknowledged piece,
/// and of the one playing, the share of its words its playing time covers.
fn heard_of(a: &Active, now: Instant) -> String {
    let mut heard: Vec<String> = Vec::new();
    let mut playing_since = a.first_frame_at;
    for p in &a.pieces {
        if p.acked {
            heard.push(p.text.clone());
            playing_since = a.last_ack_at;
            continue;
        }
        if let Some(since) = playing_since {
            let frac =
                (now.saturating_duration_since(since).as_secs_f64() / p.secs.max(0.01)).min(1.0);
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

fn joined(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 16 kHz stream position in ms.
/// Where a turn's audio for a model starts: `pre_secs` before its first
/// onset.
fn turn_from(turn_start: u64, pre_secs: f64) -> u64 {
    turn_start.saturating_sub((pre_secs * MODEL_RATE as f64) as u64)
}

fn pos_ms(pos: u64) -> f64 {
    pos as f64 * 1e3 / MODEL_RATE as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `s` with everything but ASCII letters, digits, `-` and `_` replaced, for
/// file names made from call ids.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
