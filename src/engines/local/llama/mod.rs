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
mod prompt;
#[cfg(feature = "testkit")]
mod reference;
mod sample;
mod tools;
pub use tools::{choose_tool, grammar_of};

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
use llama_cpp_2::token::LlamaToken;

use crate::engines::device::{Device, CUDA_BUILD};
use crate::engines::{ChatMessage, Generation, GenerationOptions, Llm, LlmSession};
use crate::error::{Error, Result};
use prompt::{check_fits, common_prefix, reusable, Window};
use sample::{sampler, Detokenizer, Sampler, Step};

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
    pub(crate) fn warm_up(&self) -> Result<()> {
        let mut s = self.session()?;
        let messages = [ChatMessage::new(crate::engines::Role::User, "Hi.")];
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

pub(crate) struct LlamaSession {
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
        if options.tools.is_some() {
            return tools::generate_with_tools(self, messages, options, cancel, on_text);
        }
        let t0 = Instant::now();
        let n_ctx = self.ctx.n_ctx() as usize;
        let prompt = self.window.reply_prompt(&self.engine, n_ctx, messages)?;
        let (prefilled, cached) = self.sync(&prompt)?;
        let mut sampler = sampler(&self.engine, &prompt, options)?;
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
