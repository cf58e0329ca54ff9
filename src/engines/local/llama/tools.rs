//! The local model's way to the owner's tools: before the reply, one
//! grammar-constrained step asks it which tool the caller's words call for
//! ([`crate::tools::choose`]); only when the answer is none does it write
//! the reply, in the same KV cache.

use std::sync::atomic::AtomicBool;

use crate::engines::{ChatMessage, Generation, GenerationOptions, LlmSession, Role};
use crate::error::{Error, Result};
use crate::tools::choose;
use crate::tools::http::{ToolSet, ToolUse};

/// `generate` for a request that offers tools: the choice, then (when no
/// tool is chosen) the reply, its times counted from the choice's start.
pub(super) fn generate_with_tools(
    session: &mut dyn LlmSession,
    messages: &[ChatMessage],
    options: &GenerationOptions,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut plain = options.clone();
    let Some(tools) = plain.tools.take() else {
        return session.generate(messages, options, cancel, on_text);
    };
    let (chosen, choice) = choose_tool(session, messages, &tools, &plain, cancel)?;
    if choice.cancelled {
        return Ok(choice);
    }
    if let Some(tool_use) = chosen {
        return Ok(Generation {
            text: String::new(),
            tool_use: Some(tool_use),
            first_token_ms: None,
            finished: true,
            ..choice
        });
    }
    let mut reply = session.generate(messages, &plain, cancel, on_text)?;
    reply.first_token_ms = reply.first_token_ms.map(|t| t + choice.total_ms);
    reply.total_ms += choice.total_ms;
    reply.prefilled_tokens += choice.prefilled_tokens;
    Ok(reply)
}

/// The choice among `tools` for the conversation's last message, in the
/// steps of [`choose`], and the generations it took (their times and
/// tokens, added up).
pub fn choose_tool(
    session: &mut dyn LlmSession,
    messages: &[ChatMessage],
    tools: &ToolSet,
    options: &GenerationOptions,
    cancel: &AtomicBool,
) -> Result<(Option<ToolUse>, Generation)> {
    let line = messages
        .iter()
        .rfind(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let candidates = choose::candidates(tools, line);
    let mut spent = Generation::default();
    let Some(&first) = candidates.first() else {
        return Ok((None, spent));
    };
    let mut step = |system: String, schema: serde_json::Value| -> Result<Option<String>> {
        let grammar = grammar_of(&schema)?;
        let choosing = GenerationOptions {
            max_tokens: choose::MAX_CHOICE_TOKENS,
            temperature: 0.0,
            repeat_penalty: 1.0,
            grammar: Some(grammar),
            tools: None,
            ..options.clone()
        };
        let mut prompt = messages.to_vec();
        prompt.push(ChatMessage::new(Role::System, system));
        let g = session.generate(&prompt, &choosing, cancel, &mut |_| true)?;
        spent.total_ms += g.total_ms;
        spent.prefilled_tokens += g.prefilled_tokens;
        spent.completion_tokens += g.completion_tokens;
        spent.prompt_tokens = g.prompt_tokens;
        spent.cancelled |= g.cancelled;
        Ok((!g.cancelled && g.finished).then_some(g.text))
    };
    // A step that fails (a grammar llama.cpp refuses) is a turn without a
    // tool, not a failed turn.
    let mut step = |system: String, schema: serde_json::Value| {
        step(system, schema).unwrap_or_else(|e| {
            tracing::warn!("choosing a tool failed: {e}; answering without one");
            None
        })
    };
    let tool = if choose::needs_naming(&candidates) {
        let (system, schema) = choose::naming(&candidates);
        let Some(answer) = step(system, schema) else {
            return Ok((None, spent));
        };
        match choose::parse_name(&answer) {
            Ok(Some(name)) => candidates.iter().find(|t| t.name == name).copied(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{e}; answering without a tool");
                None
            }
        }
    } else {
        Some(first)
    };
    let Some(tool) = tool else {
        return Ok((None, spent));
    };
    let (said, complete) = choose::said_arguments(tool, line);
    if tools.read_words && complete {
        let call = ToolUse {
            name: tool.name.clone(),
            arguments: serde_json::Value::Object(said),
        };
        return Ok((Some(call), spent));
    }
    let (system, schema) = choose::arguments(tool);
    let Some(answer) = step(system, schema) else {
        return Ok((None, spent));
    };
    let chosen = choose::grounded(tool, &answer, messages, tools.read_words).unwrap_or_else(|e| {
        tracing::warn!("{e}; answering without a tool");
        None
    });
    Ok((chosen, spent))
}

/// The llama.cpp grammar of a JSON schema.
pub fn grammar_of(schema: &serde_json::Value) -> Result<String> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| Error::engine("llama", format!("a tool's schema has no grammar: {e}")))
}
