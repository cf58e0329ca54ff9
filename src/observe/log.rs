//! The log observer: a line per metric (as Pipecat's metrics log has), a
//! line per turn with its user-to-bot latency, and at the end of each call a
//! summary and the per-turn LATENCY BREAKDOWN table.

use super::{Event, EventKind, Observer};
use crate::events::TurnKind;

/// `transcripts`: what was said and pressed goes out at INFO; otherwise at
/// DEBUG, where an operator asks for it on purpose (`observe.log_transcripts`).
#[derive(Default)]
pub(crate) struct LogObserver {
    pub(crate) transcripts: bool,
}

/// A line with personal data in it: at INFO only when asked for.
macro_rules! said {
    ($self:ident, $($arg:tt)+) => {
        if $self.transcripts {
            tracing::info!($($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

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
                said!(self, call, "caller: {text}");
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
            EventKind::TtsFirstAudio { turn, ms, .. } => {
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
                ..
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
                cut_off,
            } => tracing::info!(
                call,
                turn,
                cut_off,
                "interrupted by the caller ({onset_to_clear_ms:.0} ms after speech onset){}",
                if *cut_off { ": a cut-off, the caller was still going on" } else { "" }
            ),
            EventKind::BotPaused { turn } => {
                tracing::debug!(call, turn, "caller speech over the bot: paused")
            }
            EventKind::Backchannel { turn, paused_ms } => tracing::info!(
                call,
                turn,
                "backchannel: the bot goes on after a {paused_ms:.0} ms pause"
            ),
            EventKind::TurnEnded { end, silence_ms } => tracing::debug!(
                call,
                rule = end.as_str(),
                "turn ended after {silence_ms:.0} ms of silence"
            ),
            EventKind::ToolCall {
                turn,
                call: tool,
                outcome,
                ms,
                ..
            } => tracing::info!(
                call,
                turn,
                tool = tool.name(),
                outcome,
                "tool {outcome} after {ms:.0} ms"
            ),
            EventKind::IdlePrompt { .. } => {
                tracing::info!(call, "caller silent: the bot carries on")
            }
            EventKind::Dtmf { digit } => said!(self, call, digit, "DTMF"),
            EventKind::Error { kind, message } => tracing::error!(call, kind, "{message}"),
            EventKind::ReplyStarted { turn, kind, .. } => {
                tracing::debug!(call, turn, "reply started ({})", kind.as_str())
            }
            // Its record, next, carries the words.
            EventKind::ReplyEnded { .. } => {}
            EventKind::TurnFinished { record } => {
                said!(self, call, turn = record.index, "bot: {}", record.heard_text)
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
                tracing::info!(call, "LATENCY BREAKDOWN\n{}", super::table::latency_table(&summary.turns));
            }
        }
    }
}

/// The process log's format, from `CALLBOX_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines on stderr (the default).
    Text,
    /// One JSON object per line on stderr, for container log collectors.
    Json,
}

/// The process log's filter and format, from the values of `CALLBOX_LOG`,
/// `RUST_LOG` and `CALLBOX_LOG_FORMAT` and the `-v` count. The filter (tracing's
/// `EnvFilter` syntax) is `CALLBOX_LOG` when set, else `RUST_LOG`, else the one
/// `-v` chooses: `CALLBOX_LOG` wins when both are set, so a host-wide `RUST_LOG`
/// cannot override the one meant for callbox. An empty variable counts as unset.
/// The format is `text` (default) or `json`; any other value, and a filter that
/// does not parse, is an error naming the variable: a typo must not quietly
/// give a log the operator did not ask for.
pub fn log_setup(
    verbose: u8,
    callbox_log: Option<&str>,
    rust_log: Option<&str>,
    format: Option<&str>,
) -> Result<(tracing_subscriber::EnvFilter, LogFormat), String> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let format = match set(format) {
        None => LogFormat::Text,
        Some(v) if v.eq_ignore_ascii_case("text") => LogFormat::Text,
        Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
        Some(v) => {
            return Err(format!(
                "CALLBOX_LOG_FORMAT is {v:?}; it must be \"text\" or \"json\""
            ))
        }
    };
    let filter = match (set(callbox_log), set(rust_log)) {
        (Some(f), _) => Some(("CALLBOX_LOG", f)),
        (None, Some(f)) => Some(("RUST_LOG", f)),
        (None, None) => None,
    };
    let filter = match filter {
        Some((var, f)) => tracing_subscriber::EnvFilter::try_new(f)
            .map_err(|e| format!("{var} is not a valid log filter ({f:?}): {e}"))?,
        None => tracing_subscriber::EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info,callbox=info",
            _ => "debug",
        }),
    };
    Ok((filter, format))
}

#[cfg(test)]
mod log_setup_tests {
    use super::{log_setup, LogFormat};

    fn setup(
        v: u8,
        callbox: Option<&str>,
        rust: Option<&str>,
        format: Option<&str>,
    ) -> (String, LogFormat) {
        let (filter, format) = log_setup(v, callbox, rust, format).unwrap();
        (filter.to_string(), format)
    }

    #[test]
    fn verbosity_sets_the_filter_when_no_variable_does() {
        assert_eq!(setup(0, None, None, None), ("warn".into(), LogFormat::Text));
        assert_eq!(setup(2, None, None, None).0, "debug");
        // An empty variable counts as unset.
        assert_eq!(setup(0, Some(""), Some(" "), Some("")).0, "warn");
    }

    #[test]
    fn callbox_log_wins_over_rust_log_and_both_over_verbosity() {
        assert_eq!(setup(2, None, Some("info"), None).0, "info");
        assert_eq!(
            setup(2, Some("callbox=trace"), Some("info"), None).0,
            "callbox=trace"
        );
    }

    #[test]
    fn the_format_is_text_or_json_and_nothing_else() {
        assert_eq!(setup(0, None, None, Some("json")).1, LogFormat::Json);
        assert_eq!(setup(0, None, None, Some("JSON")).1, LogFormat::Json);
        assert_eq!(setup(0, None, None, Some("text")).1, LogFormat::Text);
        let e = log_setup(0, None, None, Some("jsno")).unwrap_err();
        assert!(
            e.contains("CALLBOX_LOG_FORMAT") && e.contains("jsno"),
            "{e}"
        );
    }

    #[test]
    fn a_filter_that_does_not_parse_names_its_variable() {
        let e = log_setup(0, None, Some("callbox=loud"), None).unwrap_err();
        assert!(e.starts_with("RUST_LOG"), "{e}");
        let e = log_setup(0, Some("callbox=loud"), Some("info"), None).unwrap_err();
        assert!(e.starts_with("CALLBOX_LOG"), "{e}");
    }
}
