//! The prompt of a reply or a prefill: the conversation rendered with the
//! model's chat template, kept inside the context, and how much of it a
//! sequence's KV cache already holds.

use llama_cpp_2::token::LlamaToken;

use super::Inner;
use crate::engines::{ChatMessage, Role};
use crate::error::{Error, Result};

/// Which part of a long conversation the model is shown.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Conversation messages (after the leading system prompt) no longer
    /// shown to the model.
    dropped: usize,
}

impl Window {
    /// Tokenizes the conversation as `render` lays it out, keeping it inside
    /// a context of `n_ctx` tokens. A call can outlast any context, so once
    /// the prompt would leave less than an eighth of the context for the
    /// caller's words and the reply, the oldest exchanges are forgotten (the
    /// system prompt never is) until it fills half of it: the re-evaluation
    /// this costs comes once in many turns rather than at every turn. The
    /// count is kept so that prefills and generations see the same window
    /// and share the cache.
    pub(super) fn fit(
        &mut self,
        engine: &Inner,
        n_ctx: usize,
        messages: &[ChatMessage],
        render: impl Fn(&Inner, &[ChatMessage]) -> Result<String>,
    ) -> Result<Vec<LlamaToken>> {
        let head = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        let window = |dropped: usize| -> Vec<ChatMessage> {
            let from = (head + dropped).min(messages.len());
            messages[..head]
                .iter()
                .chain(&messages[from..])
                .cloned()
                .collect()
        };
        let tokenize = |dropped: usize| -> Result<Vec<LlamaToken>> {
            Ok(engine.tokenize(&render(engine, &window(dropped))?))
        };
        let mut tokens = tokenize(self.dropped)?;
        if tokens.len() <= n_ctx - n_ctx / 8 {
            return Ok(tokens);
        }
        let conversation = messages.len() - head;
        // Always keep the newest message; start the window at a user turn.
        while tokens.len() > n_ctx / 2 && self.dropped + 1 < conversation {
            self.dropped += 1;
            while self.dropped + 1 < conversation
                && messages[head + self.dropped].role != Role::User
            {
                self.dropped += 1;
            }
            tokens = tokenize(self.dropped)?;
        }
        tracing::info!(
            forgotten = self.dropped,
            prompt_tokens = tokens.len(),
            "conversation outgrew the LLM context: the oldest exchanges are forgotten"
        );
        Ok(tokens)
    }

    /// The prompt a prefill evaluates: the conversation up to where the
    /// caller's next words will go. The template's opening of a user
    /// message is known before they speak, and every token evaluated now is
    /// one the turn does not wait for.
    pub(super) fn prefill_prompt(
        &mut self,
        engine: &Inner,
        n_ctx: usize,
        messages: &[ChatMessage],
    ) -> Result<Vec<LlamaToken>> {
        const SLOT: &str = "\u{E000}";
        let mut next = messages.to_vec();
        next.push(ChatMessage::new(Role::User, SLOT));
        self.fit(engine, n_ctx, &next, |engine, window| {
            let mut rendered = engine.render(window, false)?;
            if let Some(at) = rendered.find(SLOT) {
                rendered.truncate(at);
            }
            Ok(rendered)
        })
    }

    /// The prompt of a reply: the conversation and the assistant's opening.
    pub(super) fn reply_prompt(
        &mut self,
        engine: &Inner,
        n_ctx: usize,
        messages: &[ChatMessage],
    ) -> Result<Vec<LlamaToken>> {
        self.fit(engine, n_ctx, messages, |engine, window| {
            engine.render(window, true)
        })
    }
}

/// How many leading tokens of `prompt` a sequence holding `cached` already
/// holds.
pub(super) fn common_prefix(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
}

/// How many leading tokens of `prompt` a sequence holding `cached` can keep
/// when the reply is sampled after it. Something must be evaluated to get
/// fresh logits, so a prompt the cache already holds whole gives back its
/// last token.
pub(super) fn reusable(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    let keep = common_prefix(cached, prompt);
    if keep == prompt.len() {
        keep.saturating_sub(1)
    } else {
        keep
    }
}

/// A prompt must leave a few tokens of the context for the reply.
pub(super) fn check_fits(prompt: &[LlamaToken], n_ctx: usize) -> Result<()> {
    if prompt.len() + 8 > n_ctx {
        return Err(Error::engine(
            "llama",
            format!(
                "prompt of {} tokens exceeds the context of {n_ctx}",
                prompt.len()
            ),
        ));
    }
    Ok(())
}
