//! One phone call: the caller's audio in, the bot's audio out, and the turn
//! taking in between.
//!
//! A 20 ms frame's way through a call:
//! 1. a transport (`server::media_ws`, `server::browser_ws`) hands it in as
//!    [`CallInput::Audio`];
//! 2. [`Session::run`], the call's event loop, passes it to the input thread
//!    ([`input`]): 8 kHz → 16 kHz (through RNNoise when enabled) → Silero VAD;
//! 3. the loop feeds the audio's position and the VAD's events to the
//!    [`machine::TurnMachine`], which holds every rule of the call and
//!    answers with actions: transcribe, ask Smart Turn, start, release or
//!    cancel a reply, clear the transport;
//! 4. the loop carries them out: STT and Smart Turn on blocking threads, a
//!    reply ([`reply`]) streaming the LLM into Piper clause by clause;
//! 5. the output task ([`output`]) paces the reply's 20 ms frames to the
//!    transport, with a mark after each piece.
//!
//! Whatever comes back — transcripts, verdicts, reply progress, marks,
//! played frames — goes into the machine the same way, so the loop itself
//! decides nothing. Transports only translate messages to [`CallInput`] and
//! from [`output::Wire`].

// Only `input` (its processor is benchmarked) and the call's entry points are
// public: the rest is this module's business.
mod buffer;
pub mod input;
pub(crate) mod machine;
pub(crate) mod output;
pub(crate) mod reply;
pub(crate) mod timeline;

pub(crate) use output::Wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::audio::{wav, Audio, Frame};
use crate::config::Config;
use crate::engines::{contained, LlmSession, SttStream, VadEvent, MODEL_RATE};
use crate::events::{CallInfo, CallSummary, EndedBy, EventKind};
use crate::observe::Publisher;
use crate::stack::Engines;
use crate::tools::ToolCall;
use buffer::TurnBuffer;
use input::{InputEvent, TWILIO_RATE};
use machine::{Action, Input, Levels, TurnMachine};
use output::{BotTrack, OutCmd, OutEvent};
use reply::{Reply, Workers};

/// What a transport delivers to the call.
#[derive(Debug)]
pub(crate) enum CallInput {
    /// Caller audio, decoded by the transport.
    Audio(Frame),
    /// The transport played everything before this mark.
    Mark(String),
    Dtmf(String),
    Stop,
    /// The server or the transport ends the call.
    End(EndedBy),
    /// What answered the call we placed (answering-machine detection).
    AnsweredBy(String),
}

/// The stream parameter that says an answering machine answered.
pub(crate) const ANSWERED_BY: &str = "answered_by";

/// Whether Twilio's `AnsweredBy` is a machine whose greeting has ended:
/// the moment to leave a message.
pub(crate) fn is_machine_end(answered_by: &str) -> bool {
    answered_by.starts_with("machine_end")
}

/// How far the caller's audio may run ahead of the call's clock. Twilio
/// delivers in real time, but audio also arrives in a burst after a network
/// hiccup, or after our own server was too busy to read the socket for a
/// while (the call's clock starts when its session does, which on a loaded
/// machine can be seconds after Twilio began to send). The bound is there
/// to keep a flooding client's memory finite, not to judge real callers.
pub const AHEAD_SLACK_SECS: f64 = 10.0;
/// How long an ended call waits for its threads (a cancelled reply stops
/// at its next token or audio chunk; a transcription runs to its end).
const WORKERS_GRACE: Duration = Duration::from_secs(10);

/// The driver of one call: it owns the I/O (engines, threads, channels, the
/// clock) and carries out what the [`TurnMachine`] decides.
pub(crate) struct Session {
    cfg: Arc<Config>,
    engines: Engines,
    info: CallInfo,
    start: Instant,
    machine: TurnMachine,
    out: mpsc::Sender<OutCmd>,
    track: BotTrack,
    caller_track: Vec<i16>,
    buffer: TurnBuffer,
    /// The call's LLM and Piper threads.
    workers: Workers,
    /// The replies started and not yet ended, by epoch: dropping one
    /// cancels it.
    replies: HashMap<u64, Reply>,
    frames_dropped: usize,
    /// Audio ahead of real time has been logged (once a call).
    ahead_logged: bool,
    /// Audio at a rate other than the phone's has been logged (once a call).
    odd_rate_logged: bool,
    /// A tool ended the call: how, and where it was handed on to.
    acted: Option<(EndedBy, Option<String>)>,
    /// The owner's tools, offered on the caller's turns.
    tools: Option<Arc<crate::tools::http::ToolSet>>,
    /// What answered the call (answering-machine detection on dial-out).
    answered_by: Option<String>,
    /// The STT engine's stream of this call, when it listens as the caller
    /// speaks; otherwise each turn's audio is transcribed when it ends.
    listener: Option<Arc<dyn SttStream>>,
    /// Results of the blocking work (transcripts, verdicts, prefills).
    /// Bounded: each piece of work sends once, and a call has at most a few
    /// in flight.
    results_tx: mpsc::Sender<Input>,
    events: Publisher,
}

impl Session {
    /// Runs the call until the transport stops, the input ends or the
    /// maximum duration passes. `wire` receives what the transport must
    /// send; `events` reaches the observers.
    pub(crate) async fn run(
        cfg: Arc<Config>,
        engines: Engines,
        info: CallInfo,
        mut inputs: mpsc::Receiver<CallInput>,
        wire: mpsc::Sender<Wire>,
        events: Publisher,
    ) -> CallSummary {
        let start = Instant::now();
        let fail = |kind: &str, message: String, info: CallInfo| {
            events.emit(EventKind::Error {
                kind: kind.into(),
                message: message.clone(),
            });
            let summary = CallSummary::failed(info, message);
            events.emit(EventKind::CallEnded {
                summary: Box::new(summary.clone()),
            });
            summary
        };
        // Checked when the call was placed; a gap now (the configuration
        // changed meanwhile) ends the call rather than speak a hole.
        let persona = match crate::persona::for_call(&cfg.personas, &info) {
            Ok(p) => p,
            Err(e) => return fail("persona", e, info),
        };
        let llm: Box<dyn LlmSession> = match engines.llm.session() {
            Ok(s) => s,
            Err(e) => return fail("llm", format!("cannot open an LLM session: {e}"), info),
        };
        let track = BotTrack::default();
        // Bounded: the output reports a first frame per reply and a drain
        // per burst, and drops such a report (try_send) rather than wait; a
        // pause's report it waits to deliver (this loop always drains it).
        let (out_ev_tx, mut out_ev_rx) = mpsc::channel(64);
        let out = output::spawn(
            start,
            Duration::from_millis(cfg.call.max_lead_ms),
            track.clone(),
            wire,
            out_ev_tx,
        );
        // Bounded: when the loop falls behind, the input thread waits, and
        // the frames it has not taken are dropped and counted below.
        let (in_tx, mut in_rx) = mpsc::channel::<InputEvent>(256);
        let denoiser = cfg.call.denoise.then(|| engines.denoiser.clone());
        let frames = input::spawn(engines.vad.clone(), denoiser, in_tx);
        let (results_tx, mut results_rx) = mpsc::channel(16);
        // Bounded: the reply workers wait for the loop when it is behind.
        let (reply_tx, mut reply_rx) = mpsc::channel(64);
        let listener = engines.stt.listen().unwrap_or_else(|e| {
            tracing::warn!(call = %info.call_sid, "the STT cannot stream ({e}); each turn is sent whole");
            None
        });
        let mut machine =
            TurnMachine::new(cfg.call.clone(), persona.clone(), &info.call_sid, start);
        // The stream Twilio opened again once the machine's greeting ended.
        let answered_by = info.params.get(ANSWERED_BY).cloned();
        if answered_by.as_deref().is_some_and(is_machine_end) {
            machine.leave_voicemail();
        }
        let lines = reply::ToolLines {
            rt: tokio::runtime::Handle::current(),
            filler: persona.tool_filler.clone(),
            apology: persona.tool_apology.clone(),
        };
        let workers = Workers::spawn(llm, engines.tts.clone(), out.clone(), reply_tx, lines);
        let mut s = Session {
            cfg: cfg.clone(),
            engines,
            info,
            start,
            machine,
            out,
            track,
            caller_track: Vec::new(),
            buffer: TurnBuffer::default(),
            workers,
            replies: HashMap::new(),
            frames_dropped: 0,
            ahead_logged: false,
            odd_rate_logged: false,
            acted: None,
            tools: crate::tools::http::ToolSet::new(&cfg.tools),
            answered_by,
            listener,
            results_tx,
            events,
        };
        s.events.emit(EventKind::CallStarted {
            info: s.info.clone(),
            persona,
        });
        s.feed(Input::Start);

        let deadline = tokio::time::sleep(Duration::from_secs(cfg.call.max_call_secs));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let ended_by = loop {
            tokio::select! {
                biased;
                msg = inputs.recv() => match msg {
                    None => break EndedBy::TransportClosed,
                    Some(CallInput::Stop) => break EndedBy::Stop,
                    Some(CallInput::End(reason)) => break reason,
                    Some(CallInput::Audio(frame)) => s.on_frame(frame, &frames),
                    Some(CallInput::Mark(name)) => {
                        // The output's news first: a pause it reported
                        // tells which of these marks only came back early.
                        while let Ok(ev) = out_ev_rx.try_recv() {
                            s.feed(ev.into());
                        }
                        s.feed(Input::Mark(name))
                    }
                    Some(CallInput::Dtmf(d)) => s.feed(Input::Dtmf(d)),
                    Some(CallInput::AnsweredBy(a)) => s.answered_by = Some(a),
                },
                Some(ev) = in_rx.recv() => match ev {
                    InputEvent::Audio { samples, end } => s.on_audio(samples, end),
                    InputEvent::Vad(e) => s.on_vad(e),
                    InputEvent::Failed(e) => {
                        s.machine.error("input", e.to_string());
                        break EndedBy::InputFailed;
                    }
                },
                Some(input) = results_rx.recv() => s.feed(input),
                Some(ev) = reply_rx.recv() => s.feed(Input::Reply(ev)),
                Some(ev) = out_ev_rx.recv() => s.feed(ev.into()),
                _ = tick.tick() => s.feed(Input::Tick),
                _ = &mut deadline => break EndedBy::MaxDuration,
            }
            // The bot ended the call itself (its goodbye heard, or a
            // transfer announced).
            if let Some((ended_by, _)) = &s.acted {
                break *ended_by;
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
                async { while results_rx.recv().await.is_some() {} },
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

    /// Hands `input` to the machine and carries out what it decides.
    fn feed(&mut self, input: Input) {
        let actions = self.machine.on(input, Instant::now());
        self.perform(actions);
    }

    /// One frame from the transport, placed on the caller's stream by its
    /// timestamp and on its way to the input thread.
    fn on_frame(&mut self, frame: Frame, frames: &std::sync::mpsc::SyncSender<Vec<i16>>) {
        if frame.rate != TWILIO_RATE {
            // Transports resample to the phone rate; anything else is a bug
            // in one, not something to guess at.
            if !std::mem::replace(&mut self.odd_rate_logged, true) {
                tracing::error!(call = %self.info.call_sid, rate = frame.rate, "caller audio at an unexpected rate is dropped");
            }
            self.frames_dropped += 1;
            return;
        }
        let at = timeline::place(
            self.caller_track.len(),
            frame.at_ms,
            frame.pcm.len(),
            frame.rate,
        );
        let mut pcm = frame.pcm;
        pcm.drain(..at.skip);
        if pcm.is_empty() {
            return; // all of it is on the stream already
        }
        // Twilio sends in real time. Audio far ahead of the clock comes from
        // a broken or hostile client; it is dropped, not kept without bound.
        let allowed = (self.start.elapsed().as_secs_f64() + AHEAD_SLACK_SECS) * 8000.0;
        if (self.caller_track.len() + at.silence + pcm.len()) as f64 > allowed {
            if !std::mem::replace(&mut self.ahead_logged, true) {
                tracing::warn!(call = %self.info.call_sid, "caller audio arrives faster than real time: the excess is dropped");
            }
            self.frames_dropped += 1;
            return;
        }
        // What the sender lost stays a gap in the stream, for the VAD too.
        let mut gap = at.silence;
        while gap > 0 {
            let n = gap.min(output::FRAME);
            self.pass_on(vec![0; n], frames);
            gap -= n;
        }
        self.pass_on(pcm, frames);
    }

    /// Keeps `pcm` for the recording and hands it to the input thread (or
    /// counts it dropped when that thread is behind).
    fn pass_on(&mut self, pcm: Vec<i16>, frames: &std::sync::mpsc::SyncSender<Vec<i16>>) {
        self.caller_track.extend_from_slice(&pcm);
        if frames.try_send(pcm).is_err() {
            self.frames_dropped += 1;
        }
    }

    fn on_audio(&mut self, samples: Vec<f32>, end: u64) {
        if let Some(l) = &self.listener {
            l.push(&samples);
        }
        self.buffer.push(&samples, end);
        self.feed(Input::Audio { end });
    }

    fn on_vad(&mut self, e: VadEvent) {
        let input = match e {
            VadEvent::Started { onset, at } => Input::SpeechStarted {
                onset,
                at,
                levels: self.levels_since(onset),
            },
            VadEvent::Paused { end } => Input::SpeechPaused { end },
            VadEvent::Resumed { at } => Input::SpeechResumed { at },
            VadEvent::Stopped { end, at } => Input::SpeechStopped { end, at },
        };
        self.feed(input);
    }

    /// The caller's loudness since `onset`, and the bot's loudest 20 ms over
    /// the same stretch and the half second before it.
    fn levels_since(&self, onset: u64) -> Levels {
        let position = self.buffer.position();
        let caller = crate::audio::rms_dbfs(self.buffer.slice(onset, position));
        // The bot's track is at 8 kHz.
        let to = (position / 2) as usize;
        let from = to.saturating_sub((position.saturating_sub(onset) / 2) as usize + 4000);
        Levels {
            caller,
            bot_peak: self.track.peak_dbfs(from, to),
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Emit(kind) => self.events.emit(kind),
                Action::Transcribe { id, from, to } => self.transcribe(id, from, to),
                Action::PredictTurn { id, from, to } => {
                    let audio = self.buffer.between(from, to);
                    let (turn, tx) = (self.engines.turn.clone(), self.results_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let result = contained("turn", || turn.predict(&audio));
                        let _ = tx.blocking_send(Input::Verdict { id, result });
                    });
                }
                Action::StartReply {
                    epoch,
                    source,
                    draft,
                } => {
                    let mut options = self.cfg.llm.generation();
                    if matches!(source, reply::Source::Turn(_)) {
                        options.tools = self.tools.clone();
                    }
                    let reply = self.workers.start(reply::Job {
                        epoch,
                        source,
                        draft,
                        options,
                    });
                    self.replies.insert(epoch, reply);
                }
                Action::ReleaseReply { epoch } => {
                    if let Some(r) = self.replies.get(&epoch) {
                        r.release();
                    }
                }
                Action::CancelReply { epoch } => drop(self.replies.remove(&epoch)),
                Action::Clear { upto } => {
                    // The loop never waits on the output: with its queue
                    // full the clear is lost and what is queued plays out
                    // (the cancelled reply adds nothing more to it).
                    let _ = self.out.try_send(OutCmd::Clear { upto });
                }
                Action::Prefill(messages) => self.prefill(messages),
                // As for the clear: never waited on.
                Action::PauseReply { epoch } => {
                    let _ = self.out.try_send(OutCmd::Pause { epoch });
                }
                Action::ResumeReply { epoch } => {
                    let _ = self.out.try_send(OutCmd::Resume { epoch });
                }
                Action::Act(tool) => {
                    self.acted = Some(match tool {
                        ToolCall::EndCall => (EndedBy::Bot, None),
                        ToolCall::TransferCall { to } => (EndedBy::Transferred, Some(to)),
                        // The owner's tools run within the reply and end nothing.
                        ToolCall::Http { .. } => continue,
                    })
                }
            }
        }
    }

    /// Transcribes `[from, to)` for candidate turn `id` on a blocking thread.
    fn transcribe(&self, id: u64, from: u64, to: u64) {
        let recognise: Box<dyn FnOnce() -> crate::Result<_> + Send> = match self.listener.clone() {
            // The recogniser has heard it all already: only the last words
            // are left to finalise.
            Some(listener) => Box::new(move || listener.transcript(from, to)),
            None => {
                let (stt, audio) = (self.engines.stt.clone(), self.buffer.between(from, to));
                Box::new(move || stt.transcribe(&Audio::new(audio, MODEL_RATE)))
            }
        };
        let tx = self.results_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = contained("stt", recognise);
            let _ = tx.blocking_send(Input::Transcript { id, result });
        });
    }

    /// Brings the call's LLM context up to `messages` on its LLM worker, so
    /// that the next reply evaluates only the caller's new words.
    fn prefill(&self, messages: Vec<crate::engines::ChatMessage>) {
        let tx = self.results_tx.clone();
        self.workers.prefill(messages, move |r| {
            // Only reported (logged): a full queue may lose it.
            let _ = tx.try_send(Input::Prefilled(r));
        });
    }

    fn finish(mut self, ended_by: EndedBy) -> CallSummary {
        let (actions, mut ended) = self.machine.finish(Instant::now());
        self.perform(actions);
        self.replies.clear();
        let mut recording = None;
        if let Some(dir) = self.cfg.call.recordings_dir.clone() {
            let path = dir.join(format!(
                "{}.wav",
                crate::events::sanitize(&self.info.call_sid)
            ));
            match wav::write_stereo(&path, 8000, &self.caller_track, &self.track.snapshot()) {
                Ok(()) => recording = Some(path),
                Err(e) => {
                    let message = format!("recording not written: {e}");
                    ended.errors.push(message.clone());
                    self.events.emit(EventKind::Error {
                        kind: "recording".into(),
                        message,
                    });
                }
            }
        }
        let summary = CallSummary {
            duration_secs: self.start.elapsed().as_secs_f64(),
            info: self.info,
            history: ended.history,
            turns: self.events.take_turns(),
            interruptions: ended.interruptions,
            echo_segments_ignored: ended.echo_segments_ignored,
            drafts_discarded: ended.drafts_discarded,
            backchannels: ended.backchannels,
            frames_dropped: self.frames_dropped,
            recording,
            ended_by,
            transferred_to: self.acted.and_then(|(_, to)| to),
            answered_by: self.answered_by,
            errors: ended.errors,
        };
        self.events.emit(EventKind::CallEnded {
            summary: Box::new(summary.clone()),
        });
        summary
    }
}

impl From<OutEvent> for Input {
    fn from(ev: OutEvent) -> Self {
        match ev {
            OutEvent::FirstFrame { epoch, at } => Input::FirstFrame { epoch, at },
            OutEvent::Drained { until } => Input::Drained { until },
            OutEvent::Paused { epoch, marks } => Input::Paused { epoch, marks },
        }
    }
}
