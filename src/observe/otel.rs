//! OpenTelemetry export (OTLP over HTTP): a span per call, a span per reply
//! and a child span per stage, placed on the call's real timeline.
//!
//! Off by default. It is on when `observe.otlp` is set or an OTLP endpoint
//! variable (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is present, unless `OTEL_SDK_DISABLED=true`; endpoint, headers, timeout
//! and protocol follow the standard `OTEL_*` variables, and
//! `observe.otlp_endpoint` overrides the endpoint. The spans of a call are
//! built when it ends (every figure is known then) and flushed at once, so
//! a call costs one export request, made on this observer's own thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::{Event, EventKind, Observer};
use crate::config::ObserveConfig;
use crate::events::{CallSummary, TurnRecord};

/// Whether the configuration and environment ask for OTLP export.
pub(crate) fn wanted(cfg: &ObserveConfig) -> bool {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    cfg.otlp
        || cfg.otlp_endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

pub(crate) struct OtelObserver {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Wall-clock start of each call in progress.
    starts: HashMap<Arc<str>, SystemTime>,
}

impl OtelObserver {
    pub(crate) fn new(cfg: &ObserveConfig) -> crate::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(url) = &cfg.otlp_endpoint {
            exporter = exporter.with_endpoint(url.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| crate::Error::Config(format!("OTLP exporter: {e}")))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("callbox");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("callbox");
        Ok(Self {
            provider,
            tracer,
            starts: HashMap::new(),
        })
    }

    fn export(&self, start: SystemTime, s: &CallSummary) {
        let at = |ms: f64| start + Duration::from_secs_f64(ms.max(0.0) / 1e3);
        let info = &s.info;
        let call = self
            .tracer
            .span_builder("call")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(vec![
                KeyValue::new("callbox.call_sid", info.call_sid.clone()),
                KeyValue::new("callbox.stream_sid", info.stream_sid.clone()),
                KeyValue::new("callbox.direction", info.direction.as_str()),
                KeyValue::new("callbox.ended_by", s.ended_by.as_str()),
                KeyValue::new("callbox.turns", s.turns.len() as i64),
                KeyValue::new("callbox.interruptions", s.interruptions.len() as i64),
                KeyValue::new("callbox.errors", s.errors.len() as i64),
            ])
            .start(&self.tracer);
        let cx = Context::current_with_span(call);
        for t in &s.turns {
            self.turn(&cx, t, &at);
        }
        cx.span().end_with_timestamp(at(s.duration_secs * 1e3));
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(call = %info.call_sid, "OTLP export failed: {e}");
        }
    }

    /// A reply: from the end of the caller's speech (or the reply's start)
    /// to its first audio frame, with a child per stage.
    fn turn(&self, cx: &Context, t: &TurnRecord, at: &dyn Fn(f64) -> SystemTime) {
        let Some(first_frame) = t.first_frame_at_ms else {
            return; // never heard: nothing to place
        };
        let eos = t.end_of_speech_ms.map(|e| first_frame - e);
        let begin = eos
            .unwrap_or(t.reply_started_at_ms)
            .min(t.reply_started_at_ms);
        let mut attrs = vec![
            KeyValue::new("callbox.turn", t.index as i64),
            KeyValue::new("callbox.kind", t.kind.as_str()),
            KeyValue::new("callbox.interrupted", t.interrupted),
            KeyValue::new("callbox.user_text", t.user_text.clone()),
            KeyValue::new("callbox.heard_text", t.heard_text.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", t.prompt_tokens as i64),
            KeyValue::new("gen_ai.usage.output_tokens", t.completion_tokens as i64),
            KeyValue::new("callbox.tts_characters", t.tts_characters as i64),
        ];
        for (k, v) in [
            ("callbox.latency.total_ms", t.total_ms),
            ("callbox.latency.end_of_speech_ms", t.end_of_speech_ms),
        ] {
            if let Some(v) = v {
                attrs.push(KeyValue::new(k, v));
            }
        }
        let span = self
            .tracer
            .span_builder(format!("turn {}", t.index))
            .with_start_time(at(begin))
            .with_attributes(attrs)
            .start_with_context(&self.tracer, cx);
        let tcx = cx.with_span(span);
        let stage = |name: &'static str, from: Option<f64>, dur: Option<f64>| {
            if let (Some(from), Some(dur)) = (from, dur) {
                let mut s = self
                    .tracer
                    .span_builder(name)
                    .with_start_time(at(from))
                    .start_with_context(&self.tracer, &tcx);
                s.end_with_timestamp(at(from + dur));
            }
        };
        stage("stt", eos, t.stt_ms);
        let vad_stop = t
            .total_ms
            .filter(|_| eos.is_some())
            .map(|v| first_frame - v);
        stage("smart_turn", vad_stop, t.smart_turn_ms);
        stage("llm_ttfb", Some(t.reply_started_at_ms), t.llm_ttfb_ms);
        let tts_from = t.first_audio_at_ms.zip(t.tts_ttfb_ms).map(|(a, d)| a - d);
        stage("tts_ttfb", tts_from, t.tts_ttfb_ms);
        tcx.span().end_with_timestamp(at(first_frame));
    }
}

impl Observer for OtelObserver {
    fn on_event(&mut self, e: &Event) {
        match &e.kind {
            EventKind::CallStarted { .. } => {
                let start = SystemTime::now() - Duration::from_secs_f64(e.at_ms / 1e3);
                self.starts.insert(e.call_sid.clone(), start);
            }
            EventKind::CallEnded { summary } => {
                let start = self.starts.remove(&e.call_sid).unwrap_or_else(|| {
                    SystemTime::now() - Duration::from_secs_f64(summary.duration_secs)
                });
                self.export(start, summary);
            }
            _ => {}
        }
    }
}

impl Drop for OtelObserver {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}
