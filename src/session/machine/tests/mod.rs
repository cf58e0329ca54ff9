//! The call's rules, scripted: events in, actions out, on a fake clock. No
//! models, no threads; each test runs in microseconds.

use std::time::{Duration, Instant};

use super::*;
use crate::engines::{Generation, SttTimings, VadEvent};
use crate::events::TurnRecord;

mod rules;
mod tools;
mod turn_taking;

/// 16 kHz samples per ms.
const PER_MS: u64 = 16;

struct Call {
    m: TurnMachine,
    t0: Instant,
    now: Instant,
    /// Everything the machine asked for, in order.
    log: Vec<Action>,
    /// The draft whose audio is held, if any.
    held: Option<u64>,
}

fn rules() -> CallConfig {
    CallConfig {
        greet: false,
        idle_secs: 0.0,
        ..CallConfig::default()
    }
}

fn persona() -> Persona {
    Persona {
        name: "Miss Harper".into(),
        system: "You are brief.".into(),
        greeting: "Hello, how can I help?".into(),
        idle_prompt: "[the caller is silent]".into(),
        goodbye: "Goodbye!".into(),
        transfer_message: "Putting you through.".into(),
        tool_filler: "One moment.".into(),
        tool_apology: "Sorry, that failed.".into(),
        voicemail: "Please call back.".into(),
    }
}

impl Call {
    fn new(rules: CallConfig) -> Self {
        let t0 = Instant::now();
        let mut c = Call {
            m: TurnMachine::new(rules, persona(), "CAtest", t0),
            t0,
            now: t0,
            log: Vec::new(),
            held: None,
        };
        c.feed(Input::Start);
        c
    }

    fn feed(&mut self, input: Input) -> Vec<String> {
        let actions = self.m.on(input, self.now);
        for a in &actions {
            self.check_draft_rule(a);
        }
        let names = actions.iter().map(name).collect();
        self.log.extend(actions);
        names
    }

    /// A held draft keeps the call's Piper worker at its gate, so no other
    /// reply may start until it is released or cancelled (see
    /// `session::reply`): every scripted call checks it.
    fn check_draft_rule(&mut self, a: &Action) {
        match a {
            Action::StartReply { epoch, draft, .. } => {
                assert_eq!(
                    self.held, None,
                    "reply {epoch} started while a draft is held"
                );
                if *draft {
                    self.held = Some(*epoch);
                }
            }
            Action::ReleaseReply { epoch } | Action::CancelReply { epoch }
                if self.held == Some(*epoch) =>
            {
                self.held = None
            }
            _ => {}
        }
    }

    /// The clock moves to `ms` after the start, with the caller's audio
    /// (real time) and the ticks the driver would send on the way.
    fn until(&mut self, ms: u64) {
        let from = self.now.duration_since(self.t0).as_millis() as u64;
        for t in (from + 1..=ms).filter(|t| t % 10 == 0 || *t == ms) {
            self.now = self.t0 + Duration::from_millis(t);
            self.feed(Input::Audio { end: t * PER_MS });
            self.feed(Input::Tick);
        }
    }

    /// The caller starts speaking at `onset` (confirmed at `at`) with the
    /// given loudness against the bot's.
    fn speech(&mut self, onset: u64, at: u64, caller: f32, bot_peak: f32) -> Vec<String> {
        self.until(at);
        self.feed(Input::SpeechStarted {
            onset: onset * PER_MS,
            at: at * PER_MS,
            levels: Levels { caller, bot_peak },
        })
    }

    fn loud_speech(&mut self, onset: u64, at: u64) {
        self.speech(onset, at, -20.0, f32::NEG_INFINITY);
    }

    /// A VAD event other than a start (see [`Self::speech`]) at `at`.
    fn vad(&mut self, at: u64, e: VadEvent) {
        self.until(at);
        self.feed(match e {
            VadEvent::Paused { end } => Input::SpeechPaused { end },
            VadEvent::Resumed { at } => Input::SpeechResumed { at },
            VadEvent::Stopped { end, at } => Input::SpeechStopped { end, at },
            VadEvent::Started { .. } => panic!("speech starts through `speech`"),
        });
    }

    /// Speech from `onset` to `end`: the VAD's start (200 ms in), pause
    /// (one window after the end) and stop (200 ms after the end).
    fn utterance(&mut self, onset: u64, end: u64) {
        self.loud_speech(onset, onset + 200);
        self.vad(end + 32, VadEvent::Paused { end: end * PER_MS });
        self.vad(
            end + 200,
            VadEvent::Stopped {
                end: end * PER_MS,
                at: (end + 200) * PER_MS,
            },
        );
    }

    fn transcript(&mut self, text: &str) -> Vec<String> {
        let id = self.last_id("transcribe");
        let t = Transcript {
            text: text.into(),
            timings: SttTimings::default(),
        };
        self.feed(Input::Transcript { id, result: Ok(t) })
    }

    fn verdict(&mut self, probability: f32) -> Vec<String> {
        let id = self.last_id("predict");
        let v = TurnVerdict {
            probability,
            inference_ms: 10.0,
            total_ms: 12.0,
        };
        self.feed(Input::Verdict { id, result: Ok(v) })
    }

    fn last_id(&self, what: &str) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Transcribe { id, .. } if what == "transcribe" => Some(*id),
                Action::PredictTurn { id, .. } if what == "predict" => Some(*id),
                _ => None,
            })
            .expect("asked for")
    }

    /// The epoch of the latest reply started.
    fn last_reply(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::StartReply { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .expect("a reply was started")
    }

    /// Reply `epoch` produces `pieces` (each `secs` long) and finishes
    /// generating; its first frame goes out now.
    fn reply_plays(&mut self, epoch: u64, pieces: &[(&str, f64)]) {
        self.feed(Input::Reply(ReplyEvent::FirstToken { epoch, ms: 50.0 }));
        self.feed(Input::Reply(ReplyEvent::FirstAudio {
            epoch,
            ms: 30.0,
            at: self.now,
        }));
        for (i, (text, secs)) in pieces.iter().enumerate() {
            self.feed(Input::Reply(ReplyEvent::Piece {
                epoch,
                name: format!("{epoch}:{}", i + 1),
                text: text.to_string(),
                secs: *secs,
            }));
        }
        let text = pieces.iter().map(|p| p.0).collect::<Vec<_>>().join(" ");
        self.feed(Input::Reply(ReplyEvent::Generated {
            epoch,
            generation: Generation {
                text,
                completion_tokens: 9,
                finished: true,
                ..Default::default()
            },
        }));
        self.feed(Input::Reply(ReplyEvent::Spoken {
            epoch,
            characters: 40,
        }));
        self.feed(Input::FirstFrame {
            epoch,
            at: self.now,
        });
    }

    fn marks(&mut self, epoch: u64, n: usize) {
        for i in 1..=n {
            self.feed(Input::Mark(format!("{epoch}:{i}")));
        }
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|a| f(a)).count()
    }

    fn events(&self) -> Vec<&EventKind> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Emit(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The records of every reply started so far, ended or not, as the
    /// call's publisher folds them from the events.
    fn records(&self) -> Vec<TurnRecord> {
        let mut log = crate::observe::turns::TurnLog::default();
        for e in self.events() {
            log.on(e);
        }
        log.take()
    }

    /// The records of the replies that ended, as the call's publisher
    /// folds them from the events.
    fn finished_turns(&self) -> Vec<TurnRecord> {
        let mut log = crate::observe::turns::TurnLog::default();
        self.events()
            .into_iter()
            .filter_map(|e| log.on(e))
            .collect()
    }

    fn clears(&self) -> usize {
        self.count(|a| matches!(a, Action::Clear { .. }))
    }

    fn started_replies(&self) -> usize {
        self.count(|a| matches!(a, Action::StartReply { .. }))
    }

    fn history(&self) -> Vec<(Role, String)> {
        self.m
            .history()
            .iter()
            .map(|m| (m.role, m.content.clone()))
            .collect()
    }
}

fn name(a: &Action) -> String {
    match a {
        Action::Emit(e) => format!("emit {}", serde_json::to_value(e).unwrap()["type"]),
        Action::Transcribe { .. } => "transcribe".into(),
        Action::PredictTurn { .. } => "predict".into(),
        Action::StartReply { draft, .. } => format!("start draft={draft}"),
        Action::ReleaseReply { .. } => "release".into(),
        Action::CancelReply { .. } => "cancel".into(),
        Action::Clear { .. } => "clear".into(),
        Action::Prefill(_) => "prefill".into(),
        Action::PauseReply { .. } => "pause".into(),
        Action::ResumeReply { .. } => "resume".into(),
        Action::Act(t) => format!("act {}", t.name()),
    }
}

/// A caller turn from speech to a confirmed reply, by the draft path.
fn answered_turn(c: &mut Call, onset: u64, end: u64, text: &str) -> u64 {
    c.loud_speech(onset, onset + 200);
    c.vad(end + 32, VadEvent::Paused { end: end * PER_MS });
    let started = c.transcript(text);
    assert!(
        started.contains(&"start draft=true".to_string()),
        "{started:?}"
    );
    let draft = c.last_reply();
    c.vad(
        end + 200,
        VadEvent::Stopped {
            end: end * PER_MS,
            at: (end + 200) * PER_MS,
        },
    );
    let confirmed = c.verdict(0.9);
    assert!(confirmed.contains(&"release".to_string()), "{confirmed:?}");
    draft
}
