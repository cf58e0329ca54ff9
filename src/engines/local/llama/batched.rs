//! Continuous batching: every call's LLM work in one llama.cpp context.
//!
//! Each call owns a sequence of the shared context (its KV cells), and one
//! scheduler thread owns the context itself. Every step it decodes one batch
//! holding the next token of each reply being written and as many prompt
//! tokens of newly started turns as fit, then samples each reply from its own
//! row of logits. A call that starts speaking joins the next step rather
//! than waiting for the others' replies to end, and a step serving 32 calls
//! costs on a GPU little more than a step serving one, since a decode step
//! is bound by reading the weights, which all sequences share.
//!
//! Fairness: replies in progress always get their token in a step; prompts
//! share what is left of the batch in the order their turns arrived.
//!
//! Sessions talk to the scheduler over channels and block the call's own
//! (blocking) thread while they wait, exactly like a session with a context
//! of its own, so the pipeline cannot tell the two apart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::tools;
use super::{
    backend, check_fits, common_prefix, context_params, reusable, sampler, BatchStats, Detokenizer,
    Inner, Sampler, Step, Window, N_BATCH,
};
use crate::engines::{ChatMessage, Generation, GenerationOptions, LlmSession};
use crate::error::{Error, Result};

/// The handle sessions are made from; the scheduler thread ends when the
/// last handle (this and every session) is gone.
pub(super) struct Batcher {
    engine: Arc<Inner>,
    jobs: Sender<Job>,
    free: Arc<Pool>,
    /// Context per sequence, in tokens.
    n_ctx_seq: usize,
    stats: Arc<Counters>,
}

/// Sequence ids not held by a session.
struct Pool {
    free: Mutex<Vec<i32>>,
    returned: Condvar,
}

impl Pool {
    /// A free sequence, waiting a moment for one: the server admits one
    /// call per sequence, but a call that just ended may not have given its
    /// sequence back yet when the next one starts.
    fn take(&self, wait: Duration) -> Option<i32> {
        let free = self.free.lock().expect("sequence pool");
        let (mut free, _) = self
            .returned
            .wait_timeout_while(free, wait, |f| f.is_empty())
            .expect("sequence pool");
        free.pop()
    }

    fn give_back(&self, seq: i32) {
        self.free.lock().expect("sequence pool").push(seq);
        self.returned.notify_one();
    }
}

#[derive(Default)]
struct Counters {
    steps: AtomicU64,
    tokens: AtomicU64,
    max_sequences: AtomicUsize,
}

enum Job {
    /// Bring a sequence to `prompt`, then write a reply if `reply` is set.
    Turn {
        seq: i32,
        prompt: Vec<LlamaToken>,
        reply: Option<Reply>,
        events: Sender<Event>,
    },
    /// The session is gone: forget its cells and free its sequence.
    Release { seq: i32 },
}

struct Reply {
    sampler: Sampler,
    max_tokens: usize,
    /// Set by the session when the call no longer wants the reply.
    stop: Arc<AtomicBool>,
}

/// What the scheduler tells the waiting session.
enum Event {
    /// The prompt was taken: how much of it must be evaluated, how much the
    /// sequence already held.
    Accepted {
        evaluated: usize,
        reused: usize,
    },
    /// A token was sampled; its text (possibly empty, when it ends inside
    /// a character).
    Token(String),
    /// Done: the reply (if any) ended by itself (`true`) or was cut.
    Done {
        finished: bool,
    },
    Failed(String),
}

impl Batcher {
    pub(super) fn start(engine: Arc<Inner>, parallel: usize) -> Result<Self> {
        let n_ctx_seq = engine.options.n_ctx as usize;
        let total = u32::try_from(n_ctx_seq * parallel)
            .map_err(|_| Error::Config("llm.parallel × llm.context_tokens is too large".into()))?;
        // Each sequence gets n_ctx / n_seq_max cells of its own: one call's
        // long conversation cannot take another's room.
        let params = context_params(total, engine.options.threads, engine.options.threads_batch)
            .with_n_seq_max(parallel as u32)
            .with_kv_unified(false);
        let ctx = engine
            .model
            .new_context(backend()?, params)
            .map_err(|e| Error::engine("llama", e))?;
        // Unbounded by type, bounded by use: a sequence has at most one turn
        // in flight plus its release, and a sender must never block (a
        // release is sent from `Drop`).
        let (jobs, rx) = mpsc::channel();
        let free = Arc::new(Pool {
            free: Mutex::new((0..parallel as i32).rev().collect()),
            returned: Condvar::new(),
        });
        let stats = Arc::new(Counters::default());
        let scheduler = Scheduler {
            engine: engine.clone(),
            ctx,
            cached: vec![Vec::new(); parallel],
            tasks: VecDeque::new(),
            free: free.clone(),
            stats: stats.clone(),
            n_ctx_seq,
        };
        std::thread::Builder::new()
            .name("llm-batch".into())
            .spawn(move || scheduler.run(rx))
            .map_err(|e| Error::engine("llama", e))?;
        Ok(Self {
            engine,
            jobs,
            free,
            n_ctx_seq,
            stats,
        })
    }

    pub(super) fn session(&self) -> Result<Box<dyn LlmSession>> {
        let seq = self.free.take(Duration::from_secs(5)).ok_or_else(|| {
            Error::engine(
                "llama",
                format!(
                    "all {} sequences of the shared LLM context are in use (one per call: server.max_calls)",
                    self.engine.options.parallel
                ),
            )
        })?;
        Ok(Box::new(BatchedSession {
            engine: self.engine.clone(),
            jobs: self.jobs.clone(),
            seq,
            n_ctx_seq: self.n_ctx_seq,
            window: Window::default(),
        }))
    }

    pub(super) fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.stats.steps.load(Ordering::Relaxed),
            tokens: self.stats.tokens.load(Ordering::Relaxed),
            max_sequences: self.stats.max_sequences.load(Ordering::Relaxed),
        }
    }
}

/// One call's conversation: a sequence of the shared context.
struct BatchedSession {
    engine: Arc<Inner>,
    jobs: Sender<Job>,
    seq: i32,
    n_ctx_seq: usize,
    window: Window,
}

impl Drop for BatchedSession {
    fn drop(&mut self) {
        // The scheduler is gone only if the process is ending.
        let _ = self.jobs.send(Job::Release { seq: self.seq });
    }
}

impl BatchedSession {
    fn submit(&self, prompt: Vec<LlamaToken>, reply: Option<Reply>) -> Result<Receiver<Event>> {
        check_fits(&prompt, self.n_ctx_seq)?;
        // Unbounded by type, bounded by `max_tokens`: the scheduler serves
        // every call and must never wait for one slow reader.
        let (events, rx) = mpsc::channel();
        self.jobs
            .send(Job::Turn {
                seq: self.seq,
                prompt,
                reply,
                events,
            })
            .map_err(|_| Error::engine("llama", "the LLM scheduler has stopped"))?;
        Ok(rx)
    }
}

fn stopped() -> Error {
    Error::engine("llama", "the LLM scheduler stopped during a turn")
}

impl LlmSession for BatchedSession {
    fn prefill(&mut self, messages: &[ChatMessage]) -> Result<usize> {
        let prompt = self
            .window
            .prefill_prompt(&self.engine, self.n_ctx_seq, messages)?;
        let rx = self.submit(prompt, None)?;
        let mut evaluated = 0;
        loop {
            match rx.recv().map_err(|_| stopped())? {
                Event::Accepted { evaluated: e, .. } => evaluated = e,
                Event::Token(_) => {}
                Event::Done { .. } => return Ok(evaluated),
                Event::Failed(e) => return Err(Error::engine("llama", e)),
            }
        }
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
        let prompt = self
            .window
            .reply_prompt(&self.engine, self.n_ctx_seq, messages)?;
        let mut gen = Generation {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let reply = Reply {
            sampler: sampler(&self.engine, &prompt, options)?,
            max_tokens: options.max_tokens,
            stop: stop.clone(),
        };
        let rx = self.submit(prompt, Some(reply))?;
        let give_up = |gen: &mut Generation| {
            gen.cancelled = true;
            stop.store(true, Ordering::Relaxed);
        };
        // The scheduler reports every event of the turn and then `Done`,
        // also after a stop: the sequence is consistent again only then.
        loop {
            let event = match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::Relaxed) {
                        give_up(&mut gen);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(stopped()),
            };
            match event {
                Event::Accepted { evaluated, reused } => {
                    gen.prefilled_tokens = evaluated;
                    gen.cached_tokens = reused;
                }
                // Tokens already sampled when the stop arrived.
                Event::Token(_) if gen.cancelled => {}
                Event::Token(text) => {
                    gen.completion_tokens += 1;
                    if gen.first_token_ms.is_none() {
                        gen.first_token_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    if cancel.load(Ordering::Relaxed) {
                        give_up(&mut gen);
                    } else if !text.is_empty() {
                        gen.text.push_str(&text);
                        if !on_text(&text) {
                            give_up(&mut gen);
                        }
                    }
                }
                Event::Done { finished } => {
                    gen.finished = finished && !gen.cancelled;
                    break;
                }
                Event::Failed(e) => return Err(Error::engine("llama", e)),
            }
        }
        gen.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(gen)
    }
}

/// A turn in progress in the scheduler.
struct Task {
    seq: i32,
    /// Prompt tokens not yet evaluated.
    pending: VecDeque<LlamaToken>,
    reply: Option<ReplyState>,
    events: Sender<Event>,
}

struct ReplyState {
    reply: Reply,
    detok: Detokenizer,
    /// The last sampled token, to be evaluated in the next step.
    next: Option<LlamaToken>,
    written: usize,
    /// Tokens the reply may take: its own limit, within the sequence's room.
    limit: usize,
}

struct Scheduler {
    engine: Arc<Inner>,
    ctx: LlamaContext<'static>,
    /// Per sequence, the tokens whose keys and values it holds.
    cached: Vec<Vec<LlamaToken>>,
    /// Turns in the order they arrived.
    tasks: VecDeque<Task>,
    free: Arc<Pool>,
    stats: Arc<Counters>,
    n_ctx_seq: usize,
}

impl Scheduler {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut batch = LlamaBatch::new(N_BATCH as usize, 1);
        loop {
            if self.tasks.is_empty() {
                // Nothing to decode: sleep until a call asks for something.
                match jobs.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.take(job);
            }
            self.drop_stopped();
            if self.tasks.is_empty() {
                continue;
            }
            let outputs = match self.fill(&mut batch) {
                Ok(o) => o,
                Err(e) => {
                    self.fail_all(&e.to_string());
                    continue;
                }
            };
            if batch.n_tokens() == 0 {
                self.finish_prefills();
                continue;
            }
            if let Err(e) = self.ctx.decode(&mut batch) {
                self.fail_all(&format!("decode: {e}"));
                continue;
            }
            self.count(&batch, &outputs);
            self.sample(&outputs);
            self.finish_prefills();
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Release { seq } => {
                // A session dropped mid-turn (its call ended): end the turn.
                self.tasks.retain(|t| t.seq != seq);
                self.forget(seq);
                self.free.give_back(seq);
            }
            Job::Turn {
                seq,
                prompt,
                reply,
                events,
            } => {
                let cached = &self.cached[seq as usize];
                let mut keep = if reply.is_some() {
                    reusable(cached, &prompt)
                } else {
                    // A prefill needs no logits: a cache holding the
                    // whole prompt is already done.
                    common_prefix(cached, &prompt)
                };
                let trimmed =
                    self.ctx
                        .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None);
                if trimmed.is_ok() {
                    self.cached[seq as usize].truncate(keep);
                } else {
                    // A sequence that cannot be trimmed starts over.
                    self.forget(seq);
                    keep = 0;
                }
                let pending: VecDeque<LlamaToken> = prompt[keep..].iter().copied().collect();
                let _ = events.send(Event::Accepted {
                    evaluated: pending.len(),
                    reused: keep,
                });
                let room = self.n_ctx_seq.saturating_sub(prompt.len() + 1);
                self.tasks.push_back(Task {
                    seq,
                    pending,
                    reply: reply.map(|reply| ReplyState {
                        limit: reply.max_tokens.min(room),
                        reply,
                        detok: Detokenizer::default(),
                        next: None,
                        written: 0,
                    }),
                    events,
                });
            }
        }
    }

    fn forget(&mut self, seq: i32) {
        let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        self.cached[seq as usize].clear();
    }

    /// Ends the replies their calls gave up on.
    fn drop_stopped(&mut self) {
        self.tasks.retain(|t| {
            let stopped = t
                .reply
                .as_ref()
                .is_some_and(|r| r.reply.stop.load(Ordering::Relaxed));
            if stopped {
                let _ = t.events.send(Event::Done { finished: false });
            }
            !stopped
        });
    }

    /// Lays out one step: each reply's next token, then prompt tokens in
    /// arrival order while the batch has room. Returns, for every task that
    /// samples after this step, its index in `tasks` and its batch row.
    fn fill(&mut self, batch: &mut LlamaBatch) -> Result<Vec<(usize, i32)>> {
        batch.clear();
        let mut outputs = Vec::new();
        let mut room = N_BATCH as usize;
        let add_err = |e| Error::engine("llama", e);
        for (i, t) in self.tasks.iter_mut().enumerate() {
            let Some(token) = t.reply.as_mut().and_then(|r| r.next.take()) else {
                continue;
            };
            let cached = &mut self.cached[t.seq as usize];
            outputs.push((i, batch.n_tokens()));
            batch
                .add(token, cached.len() as i32, &[t.seq], true)
                .map_err(add_err)?;
            cached.push(token);
            room -= 1;
        }
        for (i, t) in self.tasks.iter_mut().enumerate() {
            let n = room.min(t.pending.len());
            // The prompt's last token gives the reply its first logits.
            let samples = n == t.pending.len() && t.reply.is_some();
            let cached = &mut self.cached[t.seq as usize];
            for (k, token) in t.pending.drain(..n).enumerate() {
                let last = samples && k + 1 == n;
                if last {
                    outputs.push((i, batch.n_tokens()));
                }
                batch
                    .add(token, cached.len() as i32, &[t.seq], last)
                    .map_err(add_err)?;
                cached.push(token);
            }
            room -= n;
        }
        Ok(outputs)
    }

    /// Counts a step; the calls it served are those that sample after it
    /// (a prompt still being evaluated is not yet waiting on a reply).
    fn count(&self, batch: &LlamaBatch, outputs: &[(usize, i32)]) {
        let s = &self.stats;
        s.steps.fetch_add(1, Ordering::Relaxed);
        s.tokens
            .fetch_add(batch.n_tokens() as u64, Ordering::Relaxed);
        s.max_sequences.fetch_max(outputs.len(), Ordering::Relaxed);
    }

    /// Samples every reply that has fresh logits, and ends those that are
    /// complete.
    fn sample(&mut self, outputs: &[(usize, i32)]) {
        let mut done = Vec::new();
        for &(i, row) in outputs {
            let t = &mut self.tasks[i];
            let r = t.reply.as_mut().expect("only replies sample");
            let (token, step) = r
                .detok
                .step(&self.engine, &mut r.reply.sampler, &self.ctx, row);
            match step {
                Step::End => {
                    let _ = t.events.send(Event::Done { finished: true });
                    done.push(i);
                }
                Step::Text(text) => {
                    r.written += 1;
                    let _ = t.events.send(Event::Token(text));
                    if r.written >= r.limit {
                        let _ = t.events.send(Event::Done { finished: false });
                        done.push(i);
                    } else {
                        r.next = Some(token);
                    }
                }
            }
        }
        // Highest index first, so the others stay valid.
        done.sort_unstable();
        for i in done.into_iter().rev() {
            self.tasks.remove(i);
        }
    }

    /// Ends the prefills whose prompt is evaluated.
    fn finish_prefills(&mut self) {
        self.tasks.retain(|t| {
            let done = t.reply.is_none() && t.pending.is_empty();
            if done {
                let _ = t.events.send(Event::Done { finished: true });
            }
            !done
        });
    }

    /// A step failed: its turns fail, and their sequences start over
    /// (llama.cpp leaves a failed step's cells in an unknown state). The
    /// scheduler itself carries on for every later turn.
    fn fail_all(&mut self, error: &str) {
        tracing::warn!(error, turns = self.tasks.len(), "LLM batch step failed");
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.events.send(Event::Failed(error.to_string()));
            self.forget(t.seq);
        }
    }
}
