//! The call's rules, scripted: events in, actions out, on a fake clock. No
//! models, no threads; each test runs in microseconds.

use std::time::{Duration, Instant};

use super::*;
use crate::engines::{Generation, SttTimings, VadEvent};

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
        system: "You are brief.".into(),
        greeting: "Hello, how can I help?".into(),
        idle_prompt: "[the caller is silent]".into(),
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
    fn speech(&mut self, onset: u64, at: u64, caller: f32, bot_peak: f32) {
        self.until(at);
        self.feed(Input::SpeechStarted {
            onset: onset * PER_MS,
            at: at * PER_MS,
            levels: Levels { caller, bot_peak },
        });
    }

    fn loud_speech(&mut self, onset: u64, at: u64) {
        self.speech(onset, at, -20.0, f32::NEG_INFINITY);
    }

    /// A VAD event other than a start (see [`Self::speech`]) at `at`.
    fn vad(&mut self, at: u64, e: VadEvent) {
        self.until(at);
        self.feed(match e {
            VadEvent::Paused { end } => Input::SpeechPaused { end },
            VadEvent::Resumed { .. } => Input::SpeechResumed,
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

    fn finished_turns(&self) -> Vec<&TurnRecord> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                EventKind::TurnFinished { record } => Some(record),
                _ => None,
            })
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

#[test]
fn a_complete_verdict_releases_the_draft_and_times_the_turn() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "What time is it?");
    c.until(1900);
    c.reply_plays(epoch, &[("It is noon.", 1.0)]);
    c.until(2900);
    c.marks(epoch, 1);
    let turns = c.finished_turns();
    assert_eq!(turns.len(), 1);
    let r = turns[0];
    assert_eq!(r.user_text, "What time is it?");
    assert_eq!(r.heard_text, "It is noon.");
    assert!(!r.interrupted);
    // The VAD stop was at 1700 ms, the end of speech at 1500, the first
    // frame at 1900.
    assert_eq!(r.total_ms.map(f64::round), Some(200.0));
    assert_eq!(r.end_of_speech_ms.map(f64::round), Some(400.0));
    assert_eq!(r.smart_turn_probability, Some(0.9));
    assert_eq!(
        c.history()[1..],
        [
            (Role::User, "What time is it?".into()),
            (Role::Assistant, "It is noon.".into())
        ]
    );
    // The finished reply is forgotten and the next prompt prefilled.
    assert!(matches!(
        c.log[c.log.len() - 1],
        Action::Prefill(ref m) if m.len() == 3
    ));
}

#[test]
fn a_pause_then_resumed_speech_drops_the_draft_unheard() {
    let mut c = Call::new(rules());
    c.loud_speech(100, 300);
    c.vad(1032, VadEvent::Paused { end: 1000 * PER_MS });
    c.transcript("Hi Miss Harper");
    let draft = c.last_reply();
    // The caller goes on before the stop window runs out.
    c.vad(1100, VadEvent::Resumed { at: 1100 * PER_MS });
    assert_eq!(
        c.count(|a| matches!(a, Action::CancelReply { epoch } if *epoch == draft)),
        1
    );
    // Its audio, had it arrived, is nobody's.
    c.feed(Input::Reply(ReplyEvent::Piece {
        epoch: draft,
        name: format!("{draft}:1"),
        text: "Hello there!".into(),
        secs: 1.0,
    }));
    c.vad(
        2000 + 200,
        VadEvent::Stopped {
            end: 2000 * PER_MS,
            at: 2200 * PER_MS,
        },
    );
    c.verdict(0.9);
    c.transcript("Hi Miss Harper, why is the sky blue?");
    // The whole line gets a draft of its own, and only that one plays.
    let reply = c.last_reply();
    assert_ne!(reply, draft);
    let released: Vec<u64> = c
        .log
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseReply { epoch } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(released, [reply]);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.drafts_discarded, 1);
    // The dropped draft left no trace in the conversation.
    assert!(!ended
        .history
        .iter()
        .any(|m| m.content.contains("Hello there")));
    assert_eq!(
        ended.history.last().unwrap().content,
        "Hi Miss Harper, why is the sky blue?"
    );
}

#[test]
fn a_hang_up_mid_reply_keeps_only_the_heard_text() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "Tell me about the moon.");
    c.until(1900);
    c.reply_plays(
        epoch,
        &[
            ("The moon is far away.", 1.0),
            ("It has no air at all.", 1.0),
        ],
    );
    c.until(2900);
    c.marks(epoch, 1);
    // Half of the second piece's time passes, then the caller hangs up.
    c.until(3400);
    let (actions, ended) = c.m.finish(c.now);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::CancelReply { epoch: e } if *e == epoch)));
    let r = &ended.turns[0];
    assert!(r.interrupted);
    assert_eq!(r.heard_text, "The moon is far away. It has no…");
    assert_eq!(
        ended.history.last().unwrap().content,
        "The moon is far away. It has no…"
    );
}

#[test]
fn echo_below_the_margin_never_interrupts() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    c.until(1900);
    c.reply_plays(epoch, &[("Hello, I am here to help you today.", 3.0)]);
    // The bot's voice comes back 10 dB quieter (margin 6 dB).
    c.speech(2300, 2500, -30.0, -20.0);
    c.until(3000);
    c.vad(
        3200,
        VadEvent::Stopped {
            end: 3000 * PER_MS,
            at: 3200 * PER_MS,
        },
    );
    assert_eq!(c.clears(), 0);
    assert_eq!(c.count(|a| matches!(a, Action::Transcribe { .. })), 1);
    // The same loudness as the bot is a caller, and interrupts at once.
    c.speech(3400, 3600, -21.0, -20.0);
    assert_eq!(c.clears(), 1);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.echo_segments_ignored, 1);
    assert_eq!(ended.interruptions.len(), 1);
    assert_eq!(ended.interruptions[0].onset_to_clear_ms.round(), 200.0);
}

#[test]
fn a_short_burst_never_interrupts() {
    let mut c = Call::new(CallConfig {
        barge_in_min_secs: 0.3,
        ..rules()
    });
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    c.until(1900);
    c.reply_plays(epoch, &[("Hello, I am here to help you today.", 3.0)]);
    // 150 ms of speech past the VAD's start window, then silence.
    c.loud_speech(2300, 2500);
    c.vad(2682, VadEvent::Paused { end: 2650 * PER_MS });
    c.vad(
        2850,
        VadEvent::Stopped {
            end: 2650 * PER_MS,
            at: 2850 * PER_MS,
        },
    );
    c.until(3500);
    assert_eq!(c.clears(), 0);
    // Speech that lasts past the minimum does interrupt, at the minimum.
    c.loud_speech(3600, 3800);
    c.until(4090);
    assert_eq!(c.clears(), 0);
    c.until(4110);
    assert_eq!(c.clears(), 1);
    // 2.2 s of the 3 s piece were played: 5 of its 8 words.
    assert_eq!(c.finished_turns()[0].heard_text, "Hello, I am here to…");
}

#[test]
fn the_silence_fallback_fires_exactly_at_the_timeout() {
    let mut c = Call::new(CallConfig {
        draft_replies: false,
        ..rules()
    });
    c.utterance(100, 1500); // VAD stop at 1700 ms
    c.transcript("So I was thinking");
    c.verdict(0.2); // incomplete
    c.until(1700 + 1999);
    assert_eq!(c.started_replies(), 0);
    c.until(1700 + 2000);
    assert_eq!(c.started_replies(), 1);
    let r = &c.m.records[0];
    assert_eq!(r.user_text, "So I was thinking");
    assert_eq!(r.smart_turn_probability, Some(0.2));
}

#[test]
fn idle_prompts_come_after_idle_secs_only_once_armed() {
    let mut c = Call::new(CallConfig {
        idle_secs: 5.0,
        greet: true,
        ..rules()
    });
    // The greeting plays; the caller never speaks: no idle prompt.
    let greeting = c.last_reply();
    c.reply_plays(greeting, &[("Hello, how can I help?", 1.0)]);
    c.until(1000);
    c.marks(greeting, 1);
    c.feed(Input::Drained {
        until: c.t0 + Duration::from_millis(1000),
    });
    c.until(20_000);
    assert_eq!(c.started_replies(), 1);
    // Once the caller has spoken, silence after the answer prompts once.
    let epoch = answered_turn(&mut c, 20_100, 21_000, "Hi.");
    c.until(21_400);
    c.reply_plays(epoch, &[("Hi!", 0.5)]);
    c.until(21_900);
    c.marks(epoch, 1);
    c.feed(Input::Drained {
        until: c.t0 + Duration::from_millis(21_900),
    });
    c.until(26_890);
    assert_eq!(c.started_replies(), 2);
    c.until(26_900);
    assert_eq!(c.started_replies(), 3);
    assert!(c
        .events()
        .iter()
        .any(|e| matches!(e, EventKind::IdlePrompt { turn: 2 })));
    assert_eq!(c.history().last().unwrap().1, "[the caller is silent]");
}

#[test]
fn a_digit_is_a_turn_of_its_own() {
    let mut c = Call::new(rules());
    c.until(500);
    let acts = c.feed(Input::Dtmf("5".into()));
    assert!(acts.contains(&"start draft=false".to_string()), "{acts:?}");
    assert_eq!(c.m.records[0].kind, TurnKind::Dtmf);
    assert_eq!(c.history().last().unwrap().1, "[caller pressed 5]");
}

#[test]
fn a_flood_of_digits_stops_growing_the_conversation() {
    let mut c = Call::new(rules());
    c.until(500);
    for _ in 0..super::MAX_DTMF + 500 {
        c.feed(Input::Dtmf("9".into()));
    }
    let keys = c
        .history()
        .iter()
        .filter(|(_, text)| text == "[caller pressed 9]")
        .count();
    assert_eq!(keys, super::MAX_DTMF);
    let errors = c
        .events()
        .iter()
        .filter(|e| matches!(e, EventKind::Error { kind, .. } if kind == "dtmf"))
        .count();
    assert_eq!(errors, 1, "said once, not per key");
}

#[test]
fn a_failed_transcription_is_answered_with_an_apology() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500);
    let id = c.last_id("transcribe");
    c.feed(Input::Transcript {
        id,
        result: Err(crate::Error::Engine {
            engine: "stt",
            reason: "boom".into(),
        }),
    });
    assert!(matches!(
        c.log.last(),
        Some(Action::StartReply { source: Source::Text(t), .. }) if t.contains("didn't catch")
    ));
}

#[test]
fn a_failed_apology_is_not_apologised_for() {
    let mut c = Call::new(rules());
    let epoch = answered_turn(&mut c, 100, 1500, "Hello?");
    let fail = |c: &mut Call, epoch| {
        c.feed(Input::Reply(ReplyEvent::Failed {
            epoch,
            error: "tts".into(),
        }))
    };
    fail(&mut c, epoch);
    assert_eq!(c.started_replies(), 2);
    let apology = c.last_reply();
    fail(&mut c, apology);
    assert_eq!(c.started_replies(), 2);
    let (_, ended) = c.m.finish(c.now);
    assert_eq!(ended.errors.len(), 2);
}

#[test]
fn a_turn_without_words_is_ignored() {
    let mut c = Call::new(rules());
    c.utterance(100, 1500);
    c.transcript("  ");
    c.verdict(0.9);
    assert_eq!(c.started_replies(), 0);
    c.utterance(2000, 3000);
    c.transcript("Hello");
    c.verdict(0.9);
    assert_eq!(c.m.records[0].user_text, "Hello");
}
