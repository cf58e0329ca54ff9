//! The log observer: a line per metric (as Pipecat's metrics log has), a
//! line per turn with its user-to-bot latency, and at the end of each call a
//! summary and the per-turn LATENCY BREAKDOWN table.

use super::{Event, EventKind, Observer};
use crate::session::TurnKind;

#[derive(Default)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn on_event(&mut self, e: &Event) {
        let call = &*e.call_sid;
        match &e.kind {
            EventKind::CallStarted { info, .. } => {
                tracing::info!(call, direction = ?info.direction, "call started")
            }
            EventKind::UserStartedSpeaking { onset_ms, .. } => {
                tracing::debug!(call, "user started speaking at {onset_ms:.0} ms")
            }
            EventKind::UserStoppedSpeaking { end_ms, .. } => {
                tracing::debug!(call, "user stopped speaking at {end_ms:.0} ms")
            }
            EventKind::TurnVerdict {
                probability,
                complete,
                inference_ms,
                total_ms,
            } => tracing::info!(
                call,
                "SmartTurn: {} (p = {probability:.3}), inference {inference_ms:.0} ms, end-to-end {total_ms:.0} ms",
                if *complete { "complete" } else { "incomplete" }
            ),
            EventKind::Transcript { text, stt_ms } => {
                tracing::info!(call, "STT TTFB: {stt_ms:.0} ms");
                tracing::info!(call, "caller: {text}");
            }
            EventKind::LlmFirstToken { turn, ms } => {
                tracing::info!(call, turn, "LLM TTFB: {ms:.0} ms")
            }
            EventKind::LlmUsage {
                turn,
                prompt_tokens,
                prefilled_tokens,
                completion_tokens,
            } => tracing::info!(
                call,
                turn,
                "LLM usage: {prompt_tokens} prompt tokens ({prefilled_tokens} evaluated), {completion_tokens} completion tokens"
            ),
            EventKind::TtsFirstAudio { turn, ms } => {
                tracing::info!(call, turn, "TTS TTFB: {ms:.0} ms")
            }
            EventKind::TtsUsage { turn, characters } => {
                tracing::info!(call, turn, "TTS usage: {characters} characters")
            }
            EventKind::BotStartedSpeaking {
                turn,
                kind,
                total_ms,
                end_of_speech_ms,
                since_call_start_ms,
            } => match (kind, total_ms, end_of_speech_ms, since_call_start_ms) {
                (_, Some(t), Some(eos), _) => tracing::info!(
                    call,
                    turn,
                    "user-to-bot latency {t:.0} ms (from end of speech {eos:.0} ms)"
                ),
                (TurnKind::Greeting, _, _, Some(t)) => {
                    tracing::info!(call, "first greeting audio after {t:.0} ms")
                }
                _ => tracing::debug!(call, turn, "bot started speaking ({kind:?})"),
            },
            EventKind::BotStoppedSpeaking { turn, interrupted } => {
                tracing::debug!(call, turn, interrupted, "bot stopped speaking")
            }
            EventKind::Interruption {
                turn,
                onset_to_clear_ms,
            } => tracing::info!(
                call,
                turn,
                "interrupted by the caller ({onset_to_clear_ms:.0} ms after speech onset)"
            ),
            EventKind::IdlePrompt { .. } => {
                tracing::info!(call, "caller silent: the bot carries on")
            }
            EventKind::Dtmf { digit } => tracing::info!(call, digit, "DTMF"),
            EventKind::Error { kind, message } => tracing::error!(call, kind, "{message}"),
            EventKind::TurnFinished { record } => {
                tracing::info!(call, turn = record.index, "bot: {}", record.heard_text)
            }
            EventKind::CallEnded { summary } => {
                let totals: Vec<f64> = summary.turns.iter().filter_map(|t| t.total_ms).collect();
                if totals.is_empty() {
                    tracing::info!(call, ended_by = %summary.ended_by, "call ended after {:.1} s", summary.duration_secs);
                } else {
                    let avg = totals.iter().sum::<f64>() / totals.len() as f64;
                    let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = totals.iter().copied().fold(0.0, f64::max);
                    tracing::info!(
                        call,
                        ended_by = %summary.ended_by,
                        "call ended after {:.1} s; user-to-bot latency over {} turns: avg {avg:.0} ms, min {min:.0} ms, max {max:.0} ms",
                        summary.duration_secs,
                        totals.len()
                    );
                }
                tracing::info!(call, "LATENCY BREAKDOWN\n{}", summary.latency_table());
            }
        }
    }
}
