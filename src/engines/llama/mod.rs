//! A local LLM through llama.cpp (`llama-cpp-2`).
//!
//! The weights are loaded once per process and shared; each call gets its own
//! llama.cpp context, i.e. its own KV cache. The prompt of every request is
//! the whole conversation rendered with the chat template stored in the GGUF;
//! the session keeps the tokens its cache already holds and evaluates only
//! what follows the longest common prefix. A turn therefore pays for the
//! caller's new words, not for the system prompt and the history — that is the
//! difference between ~0.5 s and ~80 ms to the first token on two cores.
//!
//! With `parallel` set, calls do not get contexts of their own: they share
//! one context as sequences of it, and a scheduler thread decodes every
//! call's pending tokens in one batch per step ([`batched`]). On a GPU that is
//! what lets one loaded model serve dozens of calls: a decode step for 32
//! sequences costs little more than one for a single sequence.

mod batched;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::device::{Device, CUDA_BUILD};
use super::{ChatMessage, Generation, GenerationOptions, Llm, LlmSession};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// Context length per call, in tokens.
    pub n_ctx: u32,
    /// Threads for generating tokens, for a call that has the machine to
    /// itself: every core, as a reply's first clause is written with
    /// nothing else running (the reply pauses the LLM while Piper
    /// synthesises it), and on 2 cores one thread decodes at half the speed
    /// of two (35 against 68 tokens/s for SmolLM2-135M). A session opened
    /// while others are live decodes on one thread: OpenMP teams of several
    /// calls spinning at their barriers on a small CPU starve one another.
    pub threads: i32,
    /// Threads for evaluating prompts (no TTS runs during a prefill).
    pub threads_batch: i32,
    /// Where the weights and the KV cache live: on a GPU every layer is
    /// offloaded.
    pub device: Device,
    /// Sequences of the one shared context (continuous batching); 0 for a
    /// context per call.
    pub parallel: usize,
    /// A chat template to use instead of the GGUF's own (for models without one).
    pub chat_template: Option<String>,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        Self {
            n_ctx: 4096,
            threads: cores(),
            threads_batch: cores(),
            device: Device::Cpu,
            parallel: 0,
            chat_template: None,
        }
    }
}

fn cores() -> i32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as i32)
}

/// llama.cpp's global state may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(false),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::engine("llama", e))
}

pub struct LlamaEngine {
    inner: Arc<Inner>,
    /// The shared context's scheduler, when calls are batched.
    batcher: Option<batched::Batcher>,
}

/// How much batching happened: for tests, benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Decode steps run.
    pub steps: u64,
    /// Tokens evaluated over all steps.
    pub tokens: u64,
    /// The most replies (calls) one step wrote a token of.
    pub max_sequences: usize,
}

struct Inner {
    /// Leaked on purpose: contexts borrow the model, the model lives as long
    /// as the process, and this keeps the per-call sessions free of lifetimes.
    model: &'static LlamaModel,
    template: LlamaChatTemplate,
    options: LlamaOptions,
    path: PathBuf,
    /// Sessions alive now.
    live: AtomicUsize,
}

impl LlamaEngine {
    pub fn load(path: &Path, options: LlamaOptions) -> Result<Self> {
        crate::models::require("LLM (GGUF)", path)?;
        let mut magic = [0u8; 4];
        let ok = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        if ok.is_err() || &magic != b"GGUF" {
            return Err(Error::corrupt("LLM (GGUF)", path, "not a GGUF file"));
        }
        let backend = backend()?;
        let (gpu, params) = match options.device {
            Device::Cpu => (None, LlamaModelParams::default().with_n_gpu_layers(0)),
            // Every layer, on the chosen GPU alone.
            Device::Cuda(i) => (
                Some(cuda_gpu(i)?),
                LlamaModelParams::default()
                    .with_n_gpu_layers(u32::MAX)
                    .with_split_mode(llama_cpp_2::model::params::LlamaSplitMode::None)
                    .with_main_gpu(i as i32),
            ),
        };
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| Error::corrupt("LLM (GGUF)", path, e))?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let template = match &options.chat_template {
            Some(t) => LlamaChatTemplate::new(t)
                .map_err(|e| Error::Config(format!("chat template: {e}")))?,
            None => model.chat_template(None).map_err(|e| {
                Error::corrupt(
                    "LLM (GGUF)",
                    path,
                    format!("{e}: the model has no chat template; set one in the configuration"),
                )
            })?,
        };
        let inner = Arc::new(Inner {
            model,
            template,
            options,
            path: path.to_path_buf(),
            live: AtomicUsize::new(0),
        });
        let batcher = match inner.options.parallel {
            0 => None,
            n => Some(batched::Batcher::start(inner.clone(), n)?),
        };
        tracing::info!(
            model = %inner.path.display(),
            device = %inner.options.device,
            gpu = gpu.as_deref().unwrap_or("-"),
            contexts = if batcher.is_some() { "one shared" } else { "one per call" },
            sequences = inner.options.parallel,
            context_tokens = inner.options.n_ctx,
            "LLM ready"
        );
        Ok(Self { inner, batcher })
    }

    /// Batching so far; `None` when every call has its own context.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(batched::Batcher::stats)
    }

    /// Generates a few tokens once, so that the first call pays for no
    /// buffer allocation, no weight upload and no kernel selection.
    pub fn warm_up(&self) -> Result<()> {
        let mut s = self.session()?;
        let messages = [ChatMessage::new(super::Role::User, "Hi.")];
        let options = GenerationOptions {
            max_tokens: 4,
            ..Default::default()
        };
        s.generate(&messages, &options, &AtomicBool::new(false), &mut |_| true)?;
        Ok(())
    }
}

/// The name of CUDA GPU `i` as llama.cpp sees it. llama.cpp quietly runs on
/// the CPU when it finds no GPU; a deployment that asked for one should hear
/// that it has none (no driver, no device passed to the container).
fn cuda_gpu(i: usize) -> Result<String> {
    let gpus: Vec<_> = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| d.backend == "CUDA")
        .collect();
    gpus.get(i)
        .map(|d| format!("{} ({} MiB free)", d.description, d.memory_free >> 20))
        .ok_or_else(|| {
            Error::engine(
                "llama",
                format!(
                    "devices.llm = cuda:{i}, but llama.cpp finds {} CUDA GPU(s){}",
                    gpus.len(),
                    if CUDA_BUILD {
                        " (is the NVIDIA driver installed, and the GPU given to this container?)"
                    } else {
                        ": this callbox was built without the cuda feature"
                    }
                ),
            )
        })
}

/// Context parameters both kinds of context share. Flash attention is left
/// at llama.cpp's default, "auto": on wherever the backend has kernels for
/// it (CUDA does).
fn context_params(n_ctx: u32, threads: i32, threads_batch: i32) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(N_BATCH)
        .with_n_threads(threads)
        .with_n_threads_batch(threads_batch)
}

/// Most tokens evaluated in one decode.
const N_BATCH: u32 = 512;

impl Inner {
    fn render(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().to_string(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::engine("llama", e))?;
        self.model
            .apply_chat_template(&self.template, &chat, add_assistant)
            .map_err(|e| Error::engine("llama", e))
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), true)
    }
}

impl Llm for LlamaEngine {
    fn session(&self) -> Result<Box<dyn LlmSession>> {
        if let Some(b) = &self.batcher {
            return b.session();
        }
        let engine = &self.inner;
        let threads = if engine.live.load(Ordering::Relaxed) == 0 {
            engine.options.threads
        } else {
            1
        };
        let params = context_params(engine.options.n_ctx, threads, engine.options.threads_batch);
        let ctx = engine
            .model
            .new_context(backend()?, params)
            .map_err(|e| Error::engine("llama", e))?;
        engine.live.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(LlamaSession {
            engine: engine.clone(),
            ctx,
            cached: Vec::new(),
            window: Window::default(),
        }))
    }

    fn name(&self) -> String {
        self.inner
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }
}

pub struct LlamaSession {
    engine: Arc<Inner>,
    ctx: LlamaContext<'static>,
    /// Tokens whose keys and values are in the context, in order.
    cached: Vec<LlamaToken>,
    window: Window,
}

impl Drop for LlamaSession {
    fn drop(&mut self) {
        self.engine.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which part of a long conversation the model is shown.
#[derive(Debug, Default)]
struct Window {
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
    fn fit(
        &mut self,
        engine: &Inner,
        n_ctx: usize,
        messages: &[ChatMessage],
        render: impl Fn(&Inner, &[ChatMessage]) -> Result<String>,
    ) -> Result<Vec<LlamaToken>> {
        let head = messages
            .iter()
            .take_while(|m| m.role == super::Role::System)
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
                && messages[head + self.dropped].role != super::Role::User
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
    fn prefill_prompt(
        &mut self,
        engine: &Inner,
        n_ctx: usize,
        messages: &[ChatMessage],
    ) -> Result<Vec<LlamaToken>> {
        const SLOT: &str = "\u{E000}";
        let mut next = messages.to_vec();
        next.push(ChatMessage::new(super::Role::User, SLOT));
        self.fit(engine, n_ctx, &next, |engine, window| {
            let mut rendered = engine.render(window, false)?;
            if let Some(at) = rendered.find(SLOT) {
                rendered.truncate(at);
            }
            Ok(rendered)
        })
    }

    /// The prompt of a reply: the conversation and the assistant's opening.
    fn reply_prompt(
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
fn common_prefix(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
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
fn reusable(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    let keep = common_prefix(cached, prompt);
    if keep == prompt.len() {
        keep.saturating_sub(1)
    } else {
        keep
    }
}

/// A prompt must leave a few tokens of the context for the reply.
fn check_fits(prompt: &[LlamaToken], n_ctx: usize) -> Result<()> {
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

/// The sampler of one reply: greedy at temperature 0, else top-k/top-p, with
/// the repetition penalty in front.
fn sampler(engine: &Inner, messages: &[ChatMessage], options: &GenerationOptions) -> LlamaSampler {
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
    // A small model readily answers a new question with its previous
    // answer, copied from the history; the penalty counts the previous
    // reply's tokens as if just generated, so a verbatim copy is
    // discouraged while the question's own words stay free to reuse.
    if let Some(previous) = messages
        .iter()
        .rev()
        .find(|m| m.role == super::Role::Assistant)
    {
        let vocab = engine.model.vocab();
        for t in vocab.tokenize(previous.content.as_bytes(), false, false) {
            sampler.accept(t);
        }
    }
    sampler
}

/// What a sampled token means for the reply.
enum Step {
    /// The model ended its turn.
    End,
    /// Text that is complete UTF-8 now (possibly empty: a token may end
    /// inside a character).
    Text(String),
}

/// Turns sampled tokens into text, holding back partial characters.
#[derive(Default)]
struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    /// Samples the next token from output `idx` of the last decode.
    fn step(
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

impl LlamaSession {
    /// Brings the KV cache to `prompt`, evaluating only what is new; returns
    /// (tokens evaluated, tokens reused) and leaves the logits of the last
    /// prompt token ready for sampling.
    fn sync(&mut self, prompt: &[LlamaToken]) -> Result<(usize, usize)> {
        check_fits(prompt, self.ctx.n_ctx() as usize)?;
        let keep = reusable(&self.cached, prompt);
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
            .map_err(|e| Error::engine("llama", e))?;
        self.cached.truncate(keep);
        let n_batch = self.ctx.n_batch() as usize;
        let todo = &prompt[keep..];
        let mut batch = LlamaBatch::new(n_batch, 1);
        for (chunk_no, chunk) in todo.chunks(n_batch).enumerate() {
            batch.clear();
            let base = keep + chunk_no * n_batch;
            for (i, &t) in chunk.iter().enumerate() {
                let last = base + i + 1 == prompt.len();
                batch
                    .add(t, (base + i) as i32, &[0], last)
                    .map_err(|e| Error::engine("llama", e))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| Error::engine("llama", e))?;
            self.cached.extend_from_slice(chunk);
        }
        Ok((todo.len(), keep))
    }
}

impl LlmSession for LlamaSession {
    fn prefill(&mut self, messages: &[ChatMessage]) -> Result<usize> {
        let n_ctx = self.ctx.n_ctx() as usize;
        let tokens = self.window.prefill_prompt(&self.engine, n_ctx, messages)?;
        Ok(self.sync(&tokens)?.0)
    }

    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerationOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let t0 = Instant::now();
        let n_ctx = self.ctx.n_ctx() as usize;
        let prompt = self.window.reply_prompt(&self.engine, n_ctx, messages)?;
        let (prefilled, cached) = self.sync(&prompt)?;
        let mut sampler = sampler(&self.engine, messages, options);
        let mut gen = Generation {
            prefilled_tokens: prefilled,
            cached_tokens: cached,
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        let mut detok = Detokenizer::default();
        let mut batch = LlamaBatch::new(1, 1);
        // Logits of the last prompt token sit at batch index (len-1) of the
        // last prefill batch; llama.cpp resolves -1 to "the last output".
        let mut idx = -1;
        let room = n_ctx - prompt.len() - 1;
        for _ in 0..options.max_tokens.min(room) {
            if cancel.load(Ordering::Relaxed) {
                gen.cancelled = true;
                break;
            }
            let (token, step) = detok.step(&self.engine, &mut sampler, &self.ctx, idx);
            let Step::Text(text) = step else {
                gen.finished = true;
                break;
            };
            gen.completion_tokens += 1;
            if gen.first_token_ms.is_none() {
                gen.first_token_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
            if !text.is_empty() {
                gen.text.push_str(&text);
                if !on_text(&text) {
                    gen.cancelled = true;
                    break;
                }
            }
            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(|e| Error::engine("llama", e))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| Error::engine("llama", e))?;
            self.cached.push(token);
            idx = 0;
        }
        gen.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(gen)
    }
}

/// Tokens the repetition penalty looks back on: a reply and the one before.
const PENALTY_WINDOW: i32 = 64;

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
