//! `callbox serve`, `callbox dial`, `callbox sim` and `callbox demo`.

use clap::Args;
use std::path::PathBuf;

use super::Cli;
use crate::audio::{wav, Audio};
use crate::config::Config;
use crate::engines::{Stt, Tts};
use crate::server::{self, AppState};
use crate::sim::{self, SimOptions, SimReport, SimTurn};
use crate::stack::{self, Engines, LoadTimes};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); `CALLBOX_*` variables override it.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (overrides server.bind).
    #[arg(long)]
    pub bind: Option<String>,
}

pub async fn serve(cli: &Cli, a: &ServeArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(b) = &a.bind {
        cfg.server.bind = b.clone();
    }
    let engines = load_engines(cli, &cfg).await?;
    let bind = cfg.server.bind.clone();
    eprintln!("callbox listening on {bind}: point your Twilio number's voice webhook at POST /");
    server::serve_until(
        AppState::new(cfg, engines),
        &bind,
        None,
        server::shutdown_signal(),
    )
    .await
}

#[derive(Debug, Args)]
pub struct DialArgs {
    /// The number to call, E.164 (+14155550100).
    pub to: String,
    /// Caller ID (default: twilio.from_number / TWILIO_PHONE_NUMBER).
    #[arg(long)]
    pub from: Option<String>,
    /// Configuration file (TOML) of the server that will take the call.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Places an outbound call that Twilio connects to the server at
/// `server.public_url`, exactly as `POST /dialout` does.
pub async fn dial(a: &DialArgs) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref())?;
    let Some(base) = cfg.server.public_url.clone() else {
        anyhow::bail!(
            "server.public_url is not set (CALLBOX_SERVER__PUBLIC_URL): Twilio must know where to \
             reach the server that takes the call"
        );
    };
    let rest = crate::twilio::rest::TwilioRest::from_config(&cfg.twilio);
    let req = server::dialout::DialRequest {
        to_number: Some(a.to.clone()),
        from_number: a.from.clone(),
    };
    let dialed = server::dialout::dial(&cfg, rest.as_ref(), &req, &base).await?;
    println!("{}", serde_json::to_string(&dialed)?);
    Ok(())
}

/// The model set's engines, loaded off the async runtime, with the
/// description of their models for traces.
async fn load_engines(cli: &Cli, cfg: &Config) -> anyhow::Result<Engines> {
    let store = cli.store()?;
    let paths = store.paths(&cli.set)?;
    let models = stack::with_apis(stack::describe(&store.manifest, &cli.set), cfg);
    let cfg = cfg.clone();
    let mut engines = tokio::task::spawn_blocking(move || Engines::load(&paths, &cfg)).await??;
    engines.models = models;
    Ok(engines)
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The server's media websocket.
    #[arg(long, default_value = "ws://127.0.0.1:8765/ws")]
    pub url: String,
    /// A turn spoken from text (synthesised with our TTS); repeat for more.
    #[arg(long = "say")]
    pub say: Vec<String>,
    /// A turn from a WAV file; repeat for more (after the --say turns).
    #[arg(long = "wav")]
    pub wavs: Vec<PathBuf>,
    /// Write the call as the caller heard it (left caller, right bot).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Play Twilio's signed webhook first (the server's auth token), to get
    /// the stream token a validating server requires.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

pub(super) fn synth(tts: &dyn Tts, text: &str) -> anyhow::Result<Audio> {
    Ok(crate::engines::speak(tts, text)?.resampled(8000))
}

/// Prints what each turn said, what the bot answered (through our STT) and
/// the caller-side latency.
fn print_report(report: &SimReport, stt: &dyn Stt) -> anyhow::Result<Vec<f64>> {
    if let Some(g) = report.greeting_ms {
        let t = stt.transcribe(&Audio::from_i16(&report.greeting_audio, 8000))?;
        println!("bot (greeting after {g:.0} ms): {}", t.text);
    }
    let mut latencies = Vec::new();
    for t in &report.turns {
        println!("caller: {}", t.said.as_deref().unwrap_or("(audio)"));
        let heard = stt.transcribe(&Audio::from_i16(&t.bot_audio, 8000))?;
        match t.latency_ms {
            Some(l) => {
                latencies.push(l);
                println!(
                    "bot ({l:.0} ms after the caller stopped{}): {}",
                    if t.cleared { ", interrupted" } else { "" },
                    heard.text
                )
            }
            None => println!("bot: (no reply)"),
        }
    }
    Ok(latencies)
}

pub async fn sim(cli: &Cli, a: &SimArgs) -> anyhow::Result<()> {
    let paths = cli.paths()?;
    let mut t = LoadTimes::default();
    let tts = stack::caller_voice(&paths, &mut t)?;
    let stt = stack::stt(&paths, &mut t)?;
    let mut turns = Vec::new();
    for s in &a.say {
        turns.push(SimTurn::new(synth(tts.as_ref(), s)?, Some(s.clone())));
    }
    for w in &a.wavs {
        turns.push(SimTurn::new(wav::read(w)?, Some(w.display().to_string())));
    }
    let mut opts = SimOptions::new(&a.url, turns);
    if let Some(token) = &a.auth_token {
        opts = opts.signed(token);
    }
    let report = sim::run(opts).await?;
    print_report(&report, stt.as_ref())?;
    if let Some(p) = &a.record {
        write_stereo(p, &report)?;
    }
    Ok(())
}

fn write_stereo(path: &std::path::Path, r: &SimReport) -> anyhow::Result<()> {
    Ok(wav::write_stereo(
        path,
        8000,
        &r.caller_track,
        &r.bot_track,
    )?)
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many of the scripted caller turns to play (up to 12).
    #[arg(long, default_value_t = 10)]
    pub turns: usize,
    /// Folder for the recording.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// A configuration file, e.g. one with `[llm] backend = "openai"` to
    /// run the same call against Groq.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub config: Option<PathBuf>,
}

pub(super) const SCRIPT: [&str; 12] = [
    "Hi Miss Harper! Why is the sky blue?",
    "What makes a rainbow?",
    "How do birds fly?",
    "Why do cats purr?",
    "How far away is the moon?",
    "What do plants eat?",
    "Why is the ocean salty?",
    "How do bees make honey?",
    "What is thunder?",
    "Why do we need to sleep?",
    "What is the biggest animal?",
    "Thank you, goodbye!",
];

pub(super) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

pub async fn demo(cli: &Cli, a: &DemoArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    cfg.call.recordings_dir = Some(a.out.join("recordings"));
    cfg.observe.traces_dir = Some(a.out.join("traces"));
    // Short answers keep the demo brisk; a phone caller wants them too.
    cfg.llm.max_tokens = cfg.llm.max_tokens.min(40);
    // The simulated caller plays Twilio properly: a signed webhook, then the
    // stream with the token it issued.
    let auth_token = format!("{:032x}", rand::random::<u128>());
    cfg.server.validate_signatures = true;
    cfg.twilio.auth_token = Some(crate::config::Secret(auth_token.clone()));
    eprintln!("loading the default models…");
    let engines = load_engines(cli, &cfg).await?;
    let (tts, stt) = (engines.tts.clone(), engines.stt.clone());
    let state = AppState::offline(cfg, engines);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(server::serve(state.clone(), "127.0.0.1:0", Some(tx)));
    let addr = rx.await?;
    let mut turns = Vec::new();
    for s in SCRIPT.iter().take(a.turns.clamp(1, SCRIPT.len())) {
        turns.push(SimTurn::new(synth(tts.as_ref(), s)?, Some(s.to_string())));
    }
    eprintln!(
        "calling ws://{addr}/ws with {} caller turns (real time; about {} s)…",
        turns.len(),
        turns.len() * 12
    );
    let opts = SimOptions::new(format!("ws://{addr}/ws"), turns).signed(&auth_token);
    let report = sim::run(opts).await?;
    // The server finishes the call when the socket closes.
    let summary = loop {
        if let Some(s) = state
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .back()
            .cloned()
        {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    server.abort();
    println!();
    // The STT may be an API's, which waits for its answer: off the
    // runtime's worker.
    let caller_side = tokio::task::block_in_place(|| print_report(&report, stt.as_ref()))?;
    println!(
        "\nLATENCY BREAKDOWN (server side, ms)\n{}",
        summary.latency_table()
    );
    let answered = |f: fn(&crate::session::TurnRecord) -> Option<f64>| -> Vec<f64> {
        summary
            .turns
            .iter()
            .filter(|t| t.kind == crate::session::TurnKind::Turn)
            .filter_map(f)
            .collect()
    };
    let total = answered(|t| t.total_ms);
    let eos = answered(|t| t.end_of_speech_ms);
    println!(
        "{} turns · Total p50 {:.0} ms, p95 {:.0} ms · End-of-speech p50 {:.0} ms, p95 {:.0} ms · caller-side p50 {:.0} ms · first greeting audio {:.0} ms",
        total.len(),
        percentile(&total, 0.5),
        percentile(&total, 0.95),
        percentile(&eos, 0.5),
        percentile(&eos, 0.95),
        percentile(&caller_side, 0.5),
        report.greeting_ms.unwrap_or(f64::NAN),
    );
    println!("(the API stack it replaces averaged 1,048 ms Total)");
    std::fs::create_dir_all(&a.out)?;
    let sim_rec = a.out.join("demo-call.wav");
    write_stereo(&sim_rec, &report)?;
    if let Some(r) = &summary.recording {
        println!(
            "recordings: {} (server), {} (caller side)",
            r.display(),
            sim_rec.display()
        );
    }
    Ok(())
}
