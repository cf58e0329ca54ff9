//! A reply that uses one of the owner's tools: the call to it, the filler
//! and the apology, and the answer made of its result; and the [`Speaker`]
//! that turns any reply's text into pieces for Piper.

use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{LlmPart, ReplyEvent, FIRST_PIECE_PAUSE};
use crate::engines::{ChatMessage, Generation, LlmSession, Role};
use crate::text::sentence::SentenceAggregator;
use crate::tools::http::{self, ToolResult, ToolUse};

impl LlmPart {
    /// Runs the tool the model chose and answers with what it returned: by
    /// the tool's template, else by the LLM with the result in view; by the
    /// apology when it failed. A draft's tool waits until the turn is
    /// confirmed: calling it may change something for the caller.
    pub(super) fn use_tool(
        &self,
        llm: &mut dyn LlmSession,
        call: ToolUse,
        choice: Generation,
        out: &mut Speaker,
        lines: &ToolLines,
    ) -> Generation {
        let said = |text: &str| Generation {
            text: text.to_string(),
            finished: true,
            ..choice.clone()
        };
        let Some(tools) = self.options.tools.clone() else {
            return said(&lines.apology);
        };
        if !self.gate.wait(&self.cancel) {
            return Generation {
                cancelled: true,
                ..choice
            };
        }
        let tool = tools.get(&call.name).cloned();
        let filler = tool
            .as_ref()
            .and_then(|t| t.filler.clone())
            .unwrap_or_else(|| lines.filler.clone());
        let t0 = Instant::now();
        let result = tools.run(&lines.rt, &call, &self.cancel, &mut || out.say(&filler));
        let templated = tool.as_ref().is_some_and(|t| t.say.is_some());
        let _ = out.events.blocking_send(ReplyEvent::Tool {
            epoch: self.epoch,
            call: call.clone(),
            result: result.clone(),
            ms: t0.elapsed().as_secs_f64() * 1e3,
            remember: match &result {
                ToolResult::Ok(body) if !templated => Some(http::result_message(&call, body)),
                _ => None,
            },
        });
        let body = match result {
            ToolResult::Ok(body) => body,
            ToolResult::Cancelled => {
                return Generation {
                    cancelled: true,
                    ..choice
                }
            }
            ToolResult::Timeout | ToolResult::Failed(_) => {
                out.say(&lines.apology);
                return said(&lines.apology);
            }
        };
        if let Some(template) = tool.and_then(|t| t.say) {
            let line = http::say(&template, &call, &body).unwrap_or_else(|| {
                tracing::warn!(tool = %call.name, "the tool's answer lacks a field its `say` template names");
                lines.apology.clone()
            });
            out.say(&line);
            return said(&line);
        }
        let mut history = self.history.clone();
        history.push(ChatMessage::new(
            Role::System,
            http::result_message(&call, &body),
        ));
        let mut options = self.options.clone();
        options.tools = None;
        match llm.generate(&history, &options, &self.cancel, &mut |t| out.text(t)) {
            Ok(mut g) => {
                g.total_ms += choice.total_ms;
                g
            }
            Err(e) => {
                tracing::warn!("answering with the tool's result failed: {e}");
                out.say(&lines.apology);
                said(&lines.apology)
            }
        }
    }
}

/// What the persona says around the owner's tools, and the runtime their
/// requests run on.
pub(crate) struct ToolLines {
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) filler: String,
    pub(crate) apology: String,
}

/// Turns a reply's text into pieces for Piper as it is written.
pub(super) struct Speaker<'a> {
    pub(super) epoch: u64,
    pub(super) pieces: &'a std_mpsc::SyncSender<String>,
    pub(super) spoken: &'a std_mpsc::Receiver<()>,
    pub(super) events: &'a mpsc::Sender<ReplyEvent>,
    pub(super) agg: SentenceAggregator,
    pub(super) count: usize,
    pub(super) first: bool,
    pub(super) t0: Instant,
}

impl Speaker<'_> {
    /// The LLM's next text; `false` when nobody listens any more.
    pub(super) fn text(&mut self, text: &str) -> bool {
        if self.first {
            self.first = false;
            let _ = self.events.blocking_send(ReplyEvent::FirstToken {
                epoch: self.epoch,
                ms: self.t0.elapsed().as_secs_f64() * 1e3,
            });
        }
        for p in self.agg.push(text) {
            self.count += 1;
            if self.pieces.send(p).is_err() {
                return false;
            }
            if self.count == 1 {
                let _ = self.spoken.recv_timeout(FIRST_PIECE_PAUSE);
            }
        }
        true
    }

    /// A fixed line (a filler, an apology, a tool's answer), whole.
    pub(super) fn say(&mut self, line: &str) {
        let mut agg = SentenceAggregator::new();
        for p in agg.push(line).into_iter().chain(agg.flush()) {
            let _ = self.pieces.send(p);
        }
    }
}
