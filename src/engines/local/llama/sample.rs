//! Sampling a reply: the sampler chain and the tokens turned back into text.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::Inner;
use crate::engines::GenerationOptions;
use crate::error::{Error, Result};

/// The sampler of one reply to `prompt`: greedy at temperature 0, else
/// top-k/top-p, with the repetition penalty in front.
///
/// The penalty's history starts as the prompt's last tokens, as it does in
/// llama.cpp's server: the caller's question, the template's turn markers
/// and, when it was short, the end of the previous reply. Seeding it with
/// the previous reply instead (as this once did) penalised the greeting's
/// plain words in the first answer and pushed a small model into odd
/// registers ("Ze sky is blue"), which the history then carried on.
///
/// With a grammar (a tool choice) it is greedy within the grammar and
/// nothing else: the prompt's tokens are not fed to it, as they would
/// advance the grammar.
pub(super) fn sampler(
    engine: &Inner,
    prompt: &[LlamaToken],
    options: &GenerationOptions,
) -> Result<Sampler> {
    if let Some(grammar) = &options.grammar {
        let g = LlamaSampler::grammar(engine.model, grammar, "root")
            .map_err(|e| Error::engine("llama", format!("the grammar is refused: {e}")))?;
        return Ok(Sampler::Grammar {
            grammar: g,
            end: engine.model.vocab().eos(),
        });
    }
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
    Ok(Sampler::Chain(sampler))
}

/// How a reply's tokens are picked.
pub(super) enum Sampler {
    /// The reply's chain (penalties, then greedy or random).
    Chain(LlamaSampler),
    /// Greedy within a grammar. The grammar is asked about the most likely
    /// token first, and only when it refuses that one is it applied to the
    /// whole vocabulary (as llama.cpp's own common sampler does): checking
    /// 150,000 tokens against it at every step is most of the time a
    /// grammar-bound choice takes on a CPU.
    Grammar {
        grammar: LlamaSampler,
        /// Given when the grammar allows no token at all.
        end: LlamaToken,
    },
}

impl Sampler {
    fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let (grammar, end) = match self {
            // `sample` has the chain accept the token itself (llama.cpp's
            // `llama_sampler_sample`), and it is accepted once more: the
            // penalty's window holds each of the reply's own tokens twice,
            // so it weighs the reply over the prompt's end. Measured: with
            // one accept, as llama-server does, SmolLM2-135M's eval score
            // fell from 55 to 39 of 108 lines. (A grammar must see each
            // token once.)
            Sampler::Chain(chain) => {
                let token = chain.sample(ctx, idx);
                chain.accept(token);
                return token;
            }
            Sampler::Grammar { grammar, end } => (grammar, *end),
        };
        let logits = ctx.get_logits_ith(idx);
        let best = logits
            .iter()
            .enumerate()
            // The first of equals, as greedy sampling takes it.
            .min_by(|a, b| b.1.total_cmp(a.1))
            .map_or(0, |(i, _)| i);
        let mut one = LlamaTokenDataArray::new(
            vec![LlamaTokenData::new(
                LlamaToken::new(best as i32),
                logits[best],
                0.0,
            )],
            false,
        );
        one.apply_sampler(grammar);
        let token = if one.data[0].logit().is_finite() {
            LlamaToken::new(best as i32)
        } else {
            let mut all = ctx.token_data_array_ith(idx);
            all.apply_sampler(grammar);
            let allowed = all.data.iter().filter(|d| d.logit().is_finite());
            match allowed.min_by(|a, b| b.logit().total_cmp(&a.logit())) {
                Some(d) => d.id(),
                // The grammar allows nothing more: the choice ends here
                // (accepting an end token it does not allow would abort).
                None => return end,
            }
        };
        grammar.accept(token);
        token
    }
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
        sampler: &mut Sampler,
        ctx: &LlamaContext<'_>,
        idx: i32,
    ) -> (LlamaToken, Step) {
        let token = sampler.sample(ctx, idx);
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
