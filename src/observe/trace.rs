//! Per-call traces: one JSON document per call, the flight recorder for
//! evaluating conversations — what the caller said, what the bot generated
//! and what the caller actually heard, every timing, and the call's events.
//!
//! The schema is `docs/trace.schema.json`; `schema` and `version` in each
//! document name it, and the version changes whenever a field changes
//! meaning or goes away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{Event, EventKind, Observer};
use crate::config::Persona;
use crate::engines::ChatMessage;
use crate::events::{CallSummary, Direction, Interruption, TurnRecord};
use crate::stack::ModelInfo;

pub(crate) const SCHEMA: &str = "callbox.trace";
pub(crate) const VERSION: u32 = 1;
/// The schema, for tools and tests.
pub const SCHEMA_JSON: &str = include_str!("../../docs/trace.schema.json");

/// Events kept per call; a runaway call cannot exhaust memory.
const MAX_EVENTS: usize = 20_000;

#[derive(Debug, Serialize)]
pub(crate) struct Trace<'a> {
    pub(crate) schema: &'static str,
    pub(crate) version: u32,
    pub call: CallMeta<'a>,
    pub(crate) persona: Option<&'a Persona>,
    pub(crate) models: &'a [ModelInfo],
    pub turns: &'a [TurnRecord],
    pub interruptions: &'a [Interruption],
    pub history: &'a [ChatMessage],
    pub(crate) counters: Counters,
    pub errors: &'a [String],
    /// Events missing here were dropped by a busy observer.
    pub(crate) events: Vec<&'a Event>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CallMeta<'a> {
    pub call_sid: &'a str,
    pub stream_sid: &'a str,
    pub direction: Direction,
    pub params: &'a HashMap<String, String>,
    pub duration_secs: f64,
    pub ended_by: &'a str,
    pub recording: Option<String>,
    pub answered_by: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Counters {
    pub(crate) echo_segments_ignored: usize,
    pub drafts_discarded: usize,
    pub frames_dropped: usize,
    /// Speech over the bot that was only a backchannel.
    pub backchannels: usize,
}

impl<'a> Trace<'a> {
    pub(crate) fn new(
        summary: &'a CallSummary,
        persona: Option<&'a Persona>,
        models: &'a [ModelInfo],
        events: &'a [Event],
    ) -> Self {
        let info = &summary.info;
        Self {
            schema: SCHEMA,
            version: VERSION,
            call: CallMeta {
                call_sid: &info.call_sid,
                stream_sid: &info.stream_sid,
                direction: info.direction,
                params: &info.params,
                duration_secs: summary.duration_secs,
                ended_by: summary.ended_by.as_str(),
                recording: summary.recording.as_ref().map(|p| p.display().to_string()),
                answered_by: summary.answered_by.as_deref(),
            },
            persona,
            models,
            turns: &summary.turns,
            interruptions: &summary.interruptions,
            history: &summary.history,
            counters: Counters {
                echo_segments_ignored: summary.echo_segments_ignored,
                drafts_discarded: summary.drafts_discarded,
                frames_dropped: summary.frames_dropped,
                backchannels: summary.backchannels,
            },
            errors: &summary.errors,
            events: events.iter().collect(),
        }
    }
}

/// Writes `<dir>/<call_sid>.json` when a call ends.
pub(crate) struct TraceObserver {
    dir: PathBuf,
    models: Arc<Vec<ModelInfo>>,
    calls: HashMap<Arc<str>, (Option<Persona>, Vec<Event>)>,
    /// `callbox_errors_total`: a trace that cannot be written (full disk,
    /// unwritable folder) is counted as `kind="trace"`; the calls go on.
    errors: prometheus::IntCounterVec,
}

impl TraceObserver {
    pub(crate) fn new(
        dir: PathBuf,
        models: Arc<Vec<ModelInfo>>,
        errors: prometheus::IntCounterVec,
    ) -> Self {
        Self {
            dir,
            models,
            calls: HashMap::new(),
            errors,
        }
    }

    fn write(&self, summary: &CallSummary, persona: Option<&Persona>, events: &[Event]) {
        let trace = Trace::new(summary, persona, &self.models, events);
        let path = self.dir.join(format!(
            "{}.json",
            crate::events::sanitize(&summary.info.call_sid)
        ));
        // Whole or not at all: readers (the demo's download) may look while
        // it is being written.
        let r = serde_json::to_vec_pretty(&trace)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                crate::private_files::write_atomic(&path, &json).map_err(|e| e.to_string())
            });
        match r {
            Ok(()) => tracing::debug!(path = %path.display(), "trace written"),
            Err(e) => {
                self.errors.with_label_values(&["trace"]).inc();
                tracing::error!(path = %path.display(), "trace not written: {e}")
            }
        }
    }
}

impl Observer for TraceObserver {
    fn on_event(&mut self, e: &Event) {
        match &e.kind {
            EventKind::CallEnded { summary } => {
                let (persona, events) = self.calls.remove(&e.call_sid).unwrap_or_default();
                self.write(summary, persona.as_ref(), &events);
            }
            EventKind::CallStarted { persona, .. } => {
                let entry = self.calls.entry(e.call_sid.clone()).or_default();
                entry.0 = Some(persona.clone());
                entry.1.push(e.clone());
            }
            // Already in the summary, in full.
            EventKind::TurnFinished { .. } => {}
            _ => {
                let entry = self.calls.entry(e.call_sid.clone()).or_default();
                if entry.1.len() < MAX_EVENTS {
                    entry.1.push(e.clone());
                }
            }
        }
    }
}
