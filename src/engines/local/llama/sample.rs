//! Sampling a reply: the sampler chain and the tokens turned back into text.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::Inner;
use crate::engines::GenerationOptions;

/// The sampler of one reply to `prompt`: greedy at temperature 0, else
/// top-k/top-p, with the repetition penalty in front.
///
/// The penalty's history starts as the prompt's last tokens, as it does in
/// llama.cpp's server: the caller's question, the template's turn markers
/// and, when it was short, the end of the previous reply. Seeding it with
/// the previous reply instead (as this once did) penalised the greeting's
/// plain words in the first answer and pushed a small model into odd
/// registers ("Ze sky is blue"), which the history then carried on.
pub(super) fn sampler(
    engine: &Inner,
    prompt: &[LlamaToken],
    options: &GenerationOptions,
) -> LlamaSampler {
    let penalties = LlamaSampler::penalties(
        engine.model.n_vocab(),
        PENALTY_WINDOW,
        options.repeat_penalty,
        0.0,
        0.0,
    );
    let mut sampler = if options.temperature <= 0.0 {
        LlamaSampler::chain_simple([penalties, LlamaSampler::greedy()])
    } else {
        LlamaSampler::chain_simple([
            penalties,
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(options.temperature),
            LlamaSampler::dist(options.seed),
        ])
    };
    let window = prompt.len().saturating_sub(PENALTY_WINDOW as usize);
    for &t in &prompt[window..] {
        sampler.accept(t);
    }
    sampler
}

/// What a sampled token means for the reply.
pub(super) enum Step {
    /// The model ended its turn.
    End,
    /// Text that is complete UTF-8 now (possibly empty: a token may end
    /// inside a character).
    Text(String),
}

/// Turns sampled tokens into text, holding back partial characters.
#[derive(Default)]
pub(super) struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    /// Samples the next token from output `idx` of the last decode.
    pub(super) fn step(
        &mut self,
        engine: &Inner,
        sampler: &mut LlamaSampler,
        ctx: &LlamaContext<'_>,
        idx: i32,
    ) -> (LlamaToken, Step) {
        let token = sampler.sample(ctx, idx);
        sampler.accept(token);
        let vocab = engine.model.vocab();
        if vocab.is_eog(token) {
            return (token, Step::End);
        }
        self.pending
            .extend(vocab.token_to_piece(token, false, None));
        (token, Step::Text(take_utf8(&mut self.pending)))
    }
}

/// Tokens the repetition penalty looks back on (llama.cpp's default).
pub(super) const PENALTY_WINDOW: i32 = 64;

/// Removes and returns the longest valid UTF-8 prefix of `buf`: a token may
/// end in the middle of a multi-byte character.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(buf) {
        Ok(s) => s.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes (not just incomplete): replace them rather than stall.
        Err(_) => {
            let s = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            return s;
        }
    };
    let s = String::from_utf8(buf[..valid].to_vec()).expect("validated");
    buf.drain(..valid);
    s
}

#[cfg(test)]
mod tests {
    use super::take_utf8;

    #[test]
    fn utf8_split_across_tokens_is_held_back() {
        let mut b = "caf".as_bytes().to_vec();
        b.push(0xC3); // first byte of "é"
        assert_eq!(take_utf8(&mut b), "caf");
        b.push(0xA9);
        assert_eq!(take_utf8(&mut b), "é");
        assert!(b.is_empty());
    }
}
