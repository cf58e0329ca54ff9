//! The `callbox` command line. Each subcommand is glue over the library:
//! parse arguments, load what it needs, print results.

// The product's own commands.
mod bench_engines;
mod call;
mod eval;
mod eval_tools;
mod models;
mod tools;
// What drives a server from outside — simulated callers, load, the fake
// providers — needs the testkit.
#[cfg(feature = "testkit")]
mod bench;
#[cfg(feature = "testkit")]
mod child;
#[cfg(feature = "testkit")]
mod fake_apis;
#[cfg(feature = "testkit")]
mod sim;
#[cfg(feature = "testkit")]
mod soak;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::models::{ModelPaths, ModelStore};

/// The model set a build uses unless told otherwise: the larger models only
/// pay off on a GPU.
pub(crate) const DEFAULT_SET: &str = if cfg!(feature = "cuda") {
    "gpu"
} else {
    "default"
};

#[derive(Debug, Parser)]
#[command(
    name = "callbox",
    version,
    about = "A Twilio phone agent with its whole voice stack in one process"
)]
pub struct Cli {
    /// Model cache folder.
    #[arg(long, global = true, env = "CALLBOX_MODELS")]
    pub(crate) models: Option<PathBuf>,
    /// Model set from the manifest (default, gpu, qwen-0.5b, qwen-1.5b); `gpu` in CUDA builds.
    #[arg(
        long,
        global = true,
        env = "CALLBOX_MODEL_SET",
        default_value = DEFAULT_SET
    )]
    pub(crate) set: String,
    /// A manifest other than the built-in one.
    #[arg(long, global = true, env = "CALLBOX_MANIFEST")]
    pub manifest: Option<PathBuf>,
    /// More logging (-v info, -vv debug); CALLBOX_LOG, else RUST_LOG, overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Fetch, check and convert models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Transcribe a WAV file with Whisper.
    Transcribe(tools::TranscribeArgs),
    /// Synthesise speech with Piper into a WAV file.
    Say(tools::SayArgs),
    /// A text conversation with the LLM and a persona.
    Chat(tools::ChatArgs),
    /// Speech segments of a WAV file and the turn detector's verdict at each pause.
    Vad(tools::VadArgs),
    /// Answer quality: the caller lines of a set through the persona and the
    /// LLM, each reply checked, a score per category and a JSON report.
    Eval(eval::EvalArgs),
    #[cfg(feature = "testkit")]
    /// Simulated callers against a server, every turn's latency per stage;
    /// --compare A.toml B.toml for an A/B.
    Bench(bench::BenchArgs),
    #[cfg(feature = "testkit")]
    /// Summary rows (p50/p95 of Total and End-of-speech) of saved bench reports.
    BenchSummary(bench::SummaryArgs),
    #[cfg(feature = "testkit")]
    /// Serve local fakes of the API stack's providers (Deepgram, Groq).
    FakeApis(fake_apis::FakeApisArgs),
    /// Measure each engine's cost on this machine.
    BenchEngines(bench_engines::BenchArgs),
    /// Answer Twilio calls: POST / (TwiML) and WS /ws (Media Streams).
    Serve(call::ServeArgs),
    /// Place an outbound call through Twilio to a running server (as POST /dialout).
    Dial(call::DialArgs),
    #[cfg(feature = "testkit")]
    /// Call a running server as a simulated Twilio caller.
    Sim(sim::SimArgs),
    #[cfg(feature = "testkit")]
    /// Start a server and call it with a scripted caller: the latency table, offline.
    Demo(sim::DemoArgs),
    #[cfg(feature = "testkit")]
    /// Many simulated calls for a long time against a server process: leaks, lost calls, latency over time.
    Soak(soak::SoakArgs),
}

impl Cli {
    pub(crate) fn store(&self) -> anyhow::Result<ModelStore> {
        Ok(ModelStore::open(
            self.models.clone(),
            self.manifest.as_deref(),
        )?)
    }

    pub(crate) fn paths(&self) -> anyhow::Result<ModelPaths> {
        Ok(self.store()?.paths(&self.set)?)
    }
}

/// The value below which a fraction `p` of `v` lies (nearest rank); NaN
/// when there is nothing to rank.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Models(cmd) => models::run(&cli, cmd).await,
        Command::Transcribe(a) => tools::transcribe(&cli, a),
        Command::Say(a) => tools::say(&cli, a),
        Command::Chat(a) => tools::chat(&cli, a),
        Command::Vad(a) => tools::vad(&cli, a),
        Command::Eval(a) => eval::run(&cli, a),
        #[cfg(feature = "testkit")]
        Command::Bench(a) => bench::run(&cli, a).await,
        #[cfg(feature = "testkit")]
        Command::BenchSummary(a) => bench::summary(a),
        #[cfg(feature = "testkit")]
        Command::FakeApis(a) => fake_apis::run(&cli, a).await,
        Command::BenchEngines(a) => bench_engines::run(&cli, a),
        Command::Serve(a) => call::serve(&cli, a).await,
        Command::Dial(a) => call::dial(a).await,
        #[cfg(feature = "testkit")]
        Command::Sim(a) => sim::sim(&cli, a).await,
        #[cfg(feature = "testkit")]
        Command::Demo(a) => sim::demo(&cli, a).await,
        #[cfg(feature = "testkit")]
        Command::Soak(a) => soak::run(&cli, a).await,
    }
}
