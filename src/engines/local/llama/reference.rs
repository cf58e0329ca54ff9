//! llama.cpp's stock way of answering one prompt, kept as the yardstick for
//! the engine's own. The engine keeps its KV cache across turns, evaluates
//! the prompt ahead of the caller's words and windows long calls; none of
//! that may change what the model says. The reference does none of it: a
//! fresh context, the whole prompt evaluated from scratch, the prompt's
//! tokens replayed into the sampler's history and llama-server's default
//! chain (penalties, top-k 40, top-p 0.95, min-p 0.05, temperature, draw).

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;

use super::sample::PENALTY_WINDOW;
use super::{backend, context_params, LlamaEngine};
use crate::engines::{ChatMessage, GenerationOptions};
use crate::error::{Error, Result};

impl LlamaEngine {
    /// The reply llama.cpp itself gives to `messages`, one piece of text per
    /// sampled token (the end-of-generation token excluded).
    pub fn reference_reply(
        &self,
        messages: &[ChatMessage],
        options: &GenerationOptions,
    ) -> Result<Vec<String>> {
        let engine = &self.inner;
        let llama = |e: &dyn std::fmt::Display| Error::engine("llama", e.to_string());
        let prompt = engine.tokenize(&engine.render(messages, true)?);
        let n_ctx = engine.options.n_ctx;
        if prompt.len() + options.max_tokens > n_ctx as usize {
            return Err(Error::engine(
                "llama",
                "the reference prompt exceeds the context",
            ));
        }
        let params = context_params(n_ctx, engine.options.threads, engine.options.threads_batch);
        let mut ctx = engine
            .model
            .new_context(backend()?, params)
            .map_err(|e| llama(&e))?;
        let n_batch = ctx.n_batch() as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);
        for (c, chunk) in prompt.chunks(n_batch).enumerate() {
            batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let pos = c * n_batch + i;
                batch
                    .add(t, pos as i32, &[0], pos + 1 == prompt.len())
                    .map_err(|e| llama(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| llama(&e))?;
        }
        let mut sampler = LlamaSampler::chain_simple([
            LlamaSampler::penalties(
                engine.model.n_vocab(),
                PENALTY_WINDOW,
                options.repeat_penalty,
                0.0,
                0.0,
            ),
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::min_p(0.05, 1),
            // At 0 this keeps only the most likely token.
            LlamaSampler::temp_ext(options.temperature, 0.0, 1.0),
            LlamaSampler::dist(options.seed),
        ]);
        sampler.accept_many(&prompt);
        let vocab = engine.model.vocab();
        let mut pieces = Vec::new();
        let mut pending = Vec::new();
        let mut idx = -1;
        for n in 0..options.max_tokens {
            let token = sampler.sample(&ctx, idx);
            // As callbox's own sampling does (see `sample::Sampler`).
            sampler.accept(token);
            if vocab.is_eog(token) {
                break;
            }
            pending.extend(vocab.token_to_piece(token, false, None));
            pieces.push(String::from_utf8_lossy(&std::mem::take(&mut pending)).into_owned());
            batch.clear();
            batch
                .add(token, (prompt.len() + n) as i32, &[0], true)
                .map_err(|e| llama(&e))?;
            ctx.decode(&mut batch).map_err(|e| llama(&e))?;
            idx = 0;
        }
        Ok(pieces)
    }
}
