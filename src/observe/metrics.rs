//! Server-wide metrics in the Prometheus text format (`GET /metrics`).
//!
//! Per-stage and per-turn figures arrive as events (this is an observer);
//! call counts and active calls are updated by the server directly, so that
//! a lost event can never leave a gauge wrong.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use super::{Event, EventKind, Observer};
use crate::events::TurnKind;

/// Seconds: from 25 ms (a VAD window) to 10 s (a stuck turn).
const LATENCY_BUCKETS: [f64; 14] = [
    0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0,
];

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    /// `measure` = total | end_of_speech.
    pub(crate) turn_latency: HistogramVec,
    /// `stage` = stt | smart_turn | smart_turn_inference | llm_ttfb | tts_ttfb.
    pub(crate) stage: HistogramVec,
    pub(crate) greeting: Histogram,
    pub(crate) active_calls: IntGauge,
    /// `direction`, `outcome` (how the call ended; `rejected` when turned away).
    pub calls: IntCounterVec,
    pub turns: IntCounter,
    pub interruptions: IntCounter,
    /// Interruptions that were the caller going on with a turn the bot had
    /// taken for finished.
    pub(crate) cut_offs: IntCounter,
    /// Speech over the bot that was only "uh-huh", "okay": it went on.
    pub backchannels: IntCounter,
    /// `rule` = smart_turn | words | silence: what ended caller turns.
    pub(crate) turn_ends: IntCounterVec,
    /// `tool` = end_call | transfer_call, `outcome` = started | ok |
    /// cancelled.
    pub(crate) tool_calls: IntCounterVec,
    /// `tool`: from the choice to the use (the reply before it played).
    pub(crate) tool_seconds: HistogramVec,
    pub(crate) idle_prompts: IntCounter,
    pub dtmf: IntCounter,
    /// `kind` = the failing part (stt, llm, tts, turn, input, rest, …).
    pub errors: IntCounterVec,
    /// `kind` = prompt | prefilled | completion.
    pub(crate) llm_tokens: IntCounterVec,
    pub(crate) tts_characters: IntCounter,
    /// `observer`.
    pub(crate) observer_dropped: IntCounterVec,
    /// `engine`.
    pub(crate) model_load: GaugeVec,
    /// Twilio REST operations: `op` = create_call | record | hang_up | transfer,
    /// `outcome` = ok | already_ended | failed (after retries).
    pub(crate) twilio_requests: IntCounterVec,
    /// Status callbacks of placed calls, by `status`.
    pub(crate) twilio_call_status: IntCounterVec,
    /// What answered the calls we placed (answering-machine detection).
    pub answered_by: IntCounterVec,
    /// Clients turned away before they were a call, by `reason`:
    /// `pending_full` (too many media websockets waiting for `start`),
    /// `start_timeout` (no `start` in time), `dialout_rate`.
    pub(crate) refused: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let turn_latency = hist(
            "callbox_turn_latency_seconds",
            "User stopped speaking (measure=total: the VAD event; end_of_speech: the speech's end) to the first bot audio",
            &["measure"],
        );
        let stage = hist(
            "callbox_stage_seconds",
            "Time to first output of each stage of a turn",
            &["stage"],
        );
        let greeting = hist(
            "callbox_greeting_seconds",
            "Call start to the first greeting audio",
            &[],
        )
        .with_label_values(&[] as &[&str]);
        let active_calls =
            IntGauge::new("callbox_active_calls", "Calls in progress").expect("valid");
        registry
            .register(Box::new(active_calls.clone()))
            .expect("unique");
        let calls = counter(
            "callbox_calls_total",
            "Calls by direction and how they ended",
            &["direction", "outcome"],
        );
        let single =
            |name: &str, help: &str| counter(name, help, &[]).with_label_values(&[] as &[&str]);
        let turns = single("callbox_turns_total", "Caller turns answered");
        let interruptions = single(
            "callbox_interruptions_total",
            "Bot replies interrupted by the caller",
        );
        let cut_offs = single(
            "callbox_cut_offs_total",
            "Bot replies that started while the caller was still going on with the turn",
        );
        let backchannels = single(
            "callbox_backchannels_total",
            "Caller backchannels over the bot (uh-huh, okay) that did not stop it",
        );
        let turn_ends = counter(
            "callbox_turn_ends_total",
            "Caller turns by the rule that ended them (smart_turn, words, silence)",
            &["rule"],
        );
        let tool_calls = counter(
            "callbox_tool_calls_total",
            "Tools the bot chose, by tool and outcome (started, ok, cancelled)",
            &["tool", "outcome"],
        );
        let tool_seconds = hist(
            "callbox_tool_seconds",
            "From choosing a tool to using it (its reply said and heard)",
            &["tool"],
        );
        let idle_prompts = single(
            "callbox_idle_prompts_total",
            "Times the bot carried on after caller silence",
        );
        let dtmf = single("callbox_dtmf_total", "Keypad digits received");
        let errors = counter(
            "callbox_errors_total",
            "Errors by the part that failed",
            &["kind"],
        );
        let llm_tokens = counter("callbox_llm_tokens_total", "LLM tokens by kind", &["kind"]);
        let tts_characters = single("callbox_tts_characters_total", "Characters synthesised");
        let observer_dropped = counter(
            "callbox_observer_events_dropped_total",
            "Events an observer missed because it fell behind",
            &["observer"],
        );
        let twilio_requests = counter(
            "callbox_twilio_requests_total",
            "Twilio REST operations by operation and outcome (failed = after retries)",
            &["op", "outcome"],
        );
        let twilio_call_status = counter(
            "callbox_twilio_call_status_total",
            "Status callbacks of the calls we placed",
            &["status"],
        );
        let answered_by = counter(
            "callbox_answered_by_total",
            "What answered the calls we placed, as Twilio's answering-machine detection heard it",
            &["answered_by"],
        );
        let refused = counter(
            "callbox_refused_total",
            "Clients turned away before they became a call, by reason",
            &["reason"],
        );
        let model_load = GaugeVec::new(
            Opts::new(
                "callbox_model_load_seconds",
                "Time each engine took to load",
            ),
            &["engine"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(model_load.clone()))
            .expect("unique");
        let start_time = Gauge::new(
            "callbox_start_time_seconds",
            "Unix time at which the server started",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(start_time.clone()))
            .expect("unique");
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        Self {
            registry,
            turn_latency,
            stage,
            greeting,
            active_calls,
            calls,
            turns,
            interruptions,
            cut_offs,
            backchannels,
            turn_ends,
            tool_calls,
            tool_seconds,
            idle_prompts,
            dtmf,
            errors,
            llm_tokens,
            tts_characters,
            observer_dropped,
            model_load,
            twilio_requests,
            twilio_call_status,
            answered_by,
            refused,
        }
    }

    /// A Twilio REST operation's outcome; a failed one is also an error.
    pub(crate) fn twilio_request(&self, op: &str, outcome: &str) {
        self.twilio_requests.with_label_values(&[op, outcome]).inc();
        if outcome == "failed" {
            self.errors.with_label_values(&["twilio"]).inc();
        }
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    fn stage(&self, stage: &str, ms: f64) {
        self.stage.with_label_values(&[stage]).observe(ms / 1e3);
    }
}

impl Observer for Metrics {
    fn on_event(&mut self, e: &Event) {
        match &e.kind {
            EventKind::TurnVerdict {
                inference_ms,
                total_ms,
                ..
            } => {
                self.stage("smart_turn", *total_ms);
                self.stage("smart_turn_inference", *inference_ms);
            }
            EventKind::Transcript { stt_ms, .. } => self.stage("stt", *stt_ms),
            EventKind::LlmFirstToken { ms, .. } => self.stage("llm_ttfb", *ms),
            EventKind::LlmUsage {
                prompt_tokens,
                prefilled_tokens,
                completion_tokens,
                ..
            } => {
                for (kind, n) in [
                    ("prompt", prompt_tokens),
                    ("prefilled", prefilled_tokens),
                    ("completion", completion_tokens),
                ] {
                    self.llm_tokens.with_label_values(&[kind]).inc_by(*n as u64);
                }
            }
            EventKind::TtsFirstAudio { ms, .. } => self.stage("tts_ttfb", *ms),
            EventKind::TtsUsage { characters, .. } => {
                self.tts_characters.inc_by(*characters as u64)
            }
            EventKind::BotStartedSpeaking {
                kind,
                total_ms,
                end_of_speech_ms,
                since_call_start_ms,
                ..
            } => {
                if let Some(t) = total_ms {
                    self.turn_latency
                        .with_label_values(&["total"])
                        .observe(t / 1e3);
                }
                if let Some(t) = end_of_speech_ms {
                    self.turn_latency
                        .with_label_values(&["end_of_speech"])
                        .observe(t / 1e3);
                }
                if *kind == TurnKind::Turn {
                    self.turns.inc();
                }
                if let (TurnKind::Greeting, Some(t)) = (kind, since_call_start_ms) {
                    self.greeting.observe(t / 1e3);
                }
            }
            EventKind::Interruption { cut_off, .. } => {
                self.interruptions.inc();
                if *cut_off {
                    self.cut_offs.inc();
                }
            }
            EventKind::Backchannel { .. } => self.backchannels.inc(),
            EventKind::ToolCall {
                call, outcome, ms, ..
            } => {
                self.tool_calls
                    .with_label_values(&[call.name(), outcome])
                    .inc();
                if *outcome == "ok" {
                    self.tool_seconds
                        .with_label_values(&[call.name()])
                        .observe(ms / 1e3);
                }
            }
            EventKind::TurnEnded { end, .. } => {
                self.turn_ends.with_label_values(&[end.as_str()]).inc()
            }
            EventKind::IdlePrompt { .. } => self.idle_prompts.inc(),
            EventKind::Dtmf { .. } => self.dtmf.inc(),
            EventKind::Error { kind, .. } => self.errors.with_label_values(&[kind.as_str()]).inc(),
            _ => {}
        }
    }
}
