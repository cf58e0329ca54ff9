//! What the bot can do on a call besides talk: end it, or hand the caller
//! to a person. A tool runs once the bot has said what it says before it
//! (its goodbye, "let me put you through"), played to the last mark, so
//! the caller never loses the end of a sentence to a hang-up.
//!
//! Which built-in tool a caller's line asks for is decided by [`intent`],
//! from the words, before any reply is written: the default CPU model
//! (SmolLM2-135M) cannot be trusted to choose, and a wrong hang-up is the
//! worst thing a phone bot can do. The owner's own tools ([`http`]) are
//! chosen by the LLM as the reply starts: by a grammar-constrained step
//! ([`choose`]) with the local model, through the `tools` field with an
//! OpenAI-compatible API.

pub(crate) mod choose;
pub mod http;
pub(crate) mod intent;

use serde::Serialize;

/// A tool the bot uses, with what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum ToolCall {
    /// Hang up: the caller is done.
    EndCall,
    /// Cold transfer: the live call is redirected to `to` with TwiML
    /// `<Dial>`.
    TransferCall { to: String },
    /// One of the owner's `[[tools]]`, with the arguments the model chose.
    Http {
        name: String,
        arguments: serde_json::Value,
    },
}

impl ToolCall {
    /// As a metric label and in logs.
    pub fn name(&self) -> &str {
        match self {
            ToolCall::EndCall => "end_call",
            ToolCall::TransferCall { .. } => "transfer_call",
            ToolCall::Http { name, .. } => name,
        }
    }
}
