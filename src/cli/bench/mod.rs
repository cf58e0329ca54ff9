//! `callbox bench`: simulated callers at once against a server, each
//! speaking a scripted conversation in real time, and the latency of every
//! turn per stage — server side from the call traces, caller side from what
//! the callers heard — with conversation quality (word error rate, cut-offs,
//! unanswered turns) and the server's CPU and memory. `--compare A.toml
//! B.toml` runs the same callers against two configurations (e.g. the local
//! engines and the API stack) and reports them side by side.
//!
//! The server is a `callbox serve` child process, so its CPU time and
//! memory are its own; `--url` measures a server that is already running
//! (caller-side figures, and server-side ones when `--traces` names the
//! folder it writes its traces to).

mod chart;
mod report;
mod script;
mod target;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::child::{machine, Sample, Server};
use super::Cli;
use crate::events::TurnRecord;
use crate::fakes::{ApiStack, Latency, REPLY};
use crate::sim::{self, SimOptions, SimReport, SimTurn};
use report::{BenchReport, CallRow, Quality, ServerCost, StackReport, StageStats, STAGES};
use target::{is_webhook, label, Target};

#[derive(Debug, Args)]
pub(crate) struct SummaryArgs {
    /// `report.json` files written by `callbox bench`.
    #[arg(required = true)]
    pub(crate) reports: Vec<PathBuf>,
}

/// Prints [`report::summary_rows`] of each report.
pub(crate) fn summary(a: &SummaryArgs) -> anyhow::Result<()> {
    for path in &a.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: BenchReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a callbox bench report", path.display()))?;
        print!("{}", report::summary_rows(&report));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Simulated callers at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) callers: usize,
    /// Calls each caller makes, one after another.
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: usize,
    /// The callers join evenly over this many seconds.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) ramp_up_secs: f64,
    /// How many turns of the built-in script each call plays (up to 12),
    /// when no --script is given.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// A script: one caller turn a line, either text to speak (synthesised
    /// with the local voice) or `@file.wav | what it says`; `#` starts a
    /// comment. `{models}/` in a path is the model cache. Text may hold
    /// `[pause MS]`. A line may begin `>MS ` to talk over the previous reply
    /// MS ms after it began (a barge-in, answered), or `~MS ` to say a
    /// backchannel over it ("uh-huh": no reply expected). See
    /// scripts/bench/turn-taking.txt.
    #[arg(long)]
    pub(crate) script: Option<PathBuf>,
    /// The server's configuration file (default: built-in).
    #[arg(long, short, env = "CALLBOX_CONFIG", conflicts_with = "compare")]
    pub(crate) config: Option<PathBuf>,
    /// Two or more targets, the same callers against each in turn, one
    /// report: a configuration file (a server of ours started with it) or
    /// any Twilio Media Streams server, by its `ws://`/`wss://` stream or
    /// its `http(s)://` TwiML webhook (another bot, measured from the
    /// caller's side only); `NAME=URL` names it in the report.
    #[arg(long, num_args = 2.., value_names = ["A", "B"])]
    pub(crate) compare: Vec<PathBuf>,
    /// Start local fakes of Deepgram and Groq (the API stack) and point
    /// every API backend of the configuration(s) at them.
    #[arg(long)]
    pub(crate) fake_apis: bool,
    /// The fakes' latencies in ms: STT after Finalize, LLM to the first
    /// token, TTS to the first byte, network round trip.
    #[arg(long, default_value = "195,268,23,0", value_parser = parse_latency)]
    pub(crate) fake_latency: Latency,
    /// Reply length for the server (llm.max_tokens): a phone answer.
    #[arg(long, default_value_t = 40)]
    pub max_tokens: usize,
    /// A running server's media websocket (`ws(s)://`), or the TwiML
    /// webhook that names it (`http(s)://`, POSTed as Twilio does),
    /// instead of starting one; `NAME=URL` names it in the report.
    #[arg(long, conflicts_with = "compare")]
    pub url: Option<String>,
    /// The auth token of the server at --url, if it checks signatures: the
    /// webhook and the stream are signed with it.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true,
        requires = "url"
    )]
    pub auth_token: Option<String>,
    /// The folder the server at --url writes its traces to.
    #[arg(long, requires = "url")]
    pub(crate) traces: Option<PathBuf>,
    /// Longest wait for a reply before the turn counts as unanswered.
    #[arg(long, default_value_t = 30.0)]
    pub reply_timeout_secs: f32,
    /// Folder for report.json, report.md, chart.svg and the servers' logs,
    /// traces and recordings.
    #[arg(long, default_value = "out/bench")]
    pub(crate) out: PathBuf,
}

pub(super) fn parse_latency(s: &str) -> Result<Latency, String> {
    let v: Vec<u64> = s
        .split(',')
        .map(|x| x.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    let [stt_ms, llm_ms, tts_ms, network_ms] = v[..] else {
        return Err(format!("{s:?}: four numbers, stt,llm,tts,network"));
    };
    Ok(Latency {
        stt_ms,
        llm_ms,
        tts_ms,
        network_ms,
        ..Latency::api_stack()
    })
}

pub(crate) async fn run(cli: &Cli, a: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.callers >= 1 && a.rounds >= 1,
        "--callers and --rounds must be at least 1"
    );
    let out = std::path::absolute(&a.out)?;
    std::fs::create_dir_all(&out)?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!("bench: preparing the callers' voices…");
    let turns = Arc::new(script::load_script(cli, a)?);
    // Our Whisper hears every bot's replies after its calls (and is the
    // fake Deepgram's ears).
    let ears = crate::stack::stt(&cli.paths()?, &mut Default::default())?;
    let fakes = match a.fake_apis {
        true => {
            eprintln!("bench: starting the fake API stack (its STT hears with the local Whisper)…");
            // Tones, not a second Piper competing with the server under test.
            let parts = (ears.clone(), crate::fakes::deepgram::Voice::Tones);
            Some(ApiStack::start("127.0.0.1", (0, 0), a.fake_latency, parts, REPLY).await?)
        }
        false => None,
    };

    let targets: Vec<Target> = match (&a.url, a.compare.is_empty()) {
        (Some(url), _) => match Target::of(Path::new(url)) {
            Target::Config(_) => {
                anyhow::bail!("--url {url}: not a ws(s):// stream or an http(s):// webhook")
            }
            target => vec![target],
        },
        (None, true) => vec![Target::Config(a.config.clone())],
        (None, false) => a.compare.iter().map(|c| Target::of(c)).collect(),
    };
    let mut stacks = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let config = match target {
            Target::Config(c) => c.clone(),
            Target::Url { .. } => None,
        };
        let label = label(target, i, &stacks);
        let dir = out.join(&label);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (mut stack, runs) = match target {
            Target::Url { url, .. } => external(a, url, &label, &turns).await?,
            Target::Config(_) => {
                own_server(
                    cli,
                    a,
                    config.as_deref(),
                    &label,
                    &dir,
                    &turns,
                    fakes.as_ref(),
                )
                .await?
            }
        };
        hear_replies(&ears, &runs, &mut stack.turns).await;
        stacks.push(stack);
    }

    let report = BenchReport {
        machine: machine(),
        started_unix,
        callers: a.callers,
        rounds: a.rounds,
        ramp_up_secs: a.ramp_up_secs,
        script: turns
            .iter()
            .map(|t| t.text.clone().unwrap_or_else(|| "(audio)".into()))
            .collect(),
        fake_apis: fakes.as_ref().map(|f| f.latency),
        stacks,
    };
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = report::markdown(&report);
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("chart.svg"), chart::svg(&report.stacks))?;
    println!("{md}");
    eprintln!(
        "bench: {} (all figures), {} and {} written",
        out.join("report.json").display(),
        out.join("report.md").display(),
        out.join("chart.svg").display()
    );
    Ok(())
}

/// What the callers did in one run.
struct CallerRun {
    caller: usize,
    round: usize,
    call_sid: String,
    result: anyhow::Result<SimReport>,
}

async fn own_server(
    cli: &Cli,
    a: &BenchArgs,
    config: Option<&Path>,
    label: &str,
    dir: &Path,
    turns: &Arc<Vec<SimTurn>>,
    fakes: Option<&ApiStack>,
) -> anyhow::Result<(StackReport, Vec<CallerRun>)> {
    let traces = dir.join("traces");
    let mut env: Vec<(String, String)> = vec![
        (
            "CALLBOX_OBSERVE__TRACES_DIR".into(),
            traces.display().to_string(),
        ),
        (
            "CALLBOX_CALL__RECORDINGS_DIR".into(),
            dir.join("recordings").display().to_string(),
        ),
        (
            "CALLBOX_SERVER__MAX_CALLS".into(),
            (a.callers + 2).to_string(),
        ),
        ("CALLBOX_LLM__MAX_TOKENS".into(), a.max_tokens.to_string()),
    ];
    if let Some(f) = fakes {
        env.extend(f.env());
    }
    eprintln!("bench: {label}: starting the server (loading its models)…");
    let server = Server::start(cli, config, &env, &dir.join("server.log")).await?;
    let t0 = Instant::now();
    let idle = server.sample(t0);
    let sampler = server.sampler(t0, Duration::from_secs(1));
    let runs = callers(a, &server.ws_url(), Some(&server.token), turns, label).await;
    let wall_secs = t0.elapsed().as_secs_f64();
    let samples = sampler.stop();
    let exit_status = server.stop().await?;
    let cost = cost(idle, &samples, exit_status);
    let traces = read_traces(&traces);
    let stack = build(label, config, turns, &runs, &traces, Some(cost), wall_secs);
    Ok((stack, runs))
}

async fn external(
    a: &BenchArgs,
    url: &str,
    label: &str,
    turns: &Arc<Vec<SimTurn>>,
) -> anyhow::Result<(StackReport, Vec<CallerRun>)> {
    let t0 = Instant::now();
    let runs = callers(a, url, a.auth_token.as_deref(), turns, label).await;
    let wall_secs = t0.elapsed().as_secs_f64();
    // The server writes a call's trace as the call ends: a moment's grace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let traces = a.traces.as_deref().map(read_traces).unwrap_or_default();
    let stack = build(label, None, turns, &runs, &traces, None, wall_secs);
    Ok((stack, runs))
}

/// Each answered turn's reply, as its caller heard it, through our STT:
/// after the calls, so the transcription takes nothing from them.
async fn hear_replies(
    ears: &Arc<dyn crate::engines::Stt>,
    runs: &[CallerRun],
    rows: &mut [report::TurnRow],
) {
    for run in runs {
        let Ok(report) = &run.result else { continue };
        for (i, turn) in report.turns.iter().enumerate() {
            if turn.bot_audio.is_empty() {
                continue;
            }
            let audio = crate::audio::Audio::from_i16(&turn.bot_audio, 8000);
            let ears = ears.clone();
            let heard = tokio::task::spawn_blocking(move || ears.transcribe(&audio)).await;
            let Ok(Ok(t)) = heard else { continue };
            let text = t.text.trim();
            if let Some(row) = rows
                .iter_mut()
                .find(|r| (r.caller, r.round, r.turn) == (run.caller, run.round, i))
            {
                row.reply = (!text.is_empty()).then(|| text.to_string());
            }
        }
    }
}

/// `a.callers` callers, joining over the ramp-up, each calling `a.rounds`
/// times; a progress bar counts the turns.
async fn callers(
    a: &BenchArgs,
    url: &str,
    token: Option<&str>,
    turns: &Arc<Vec<SimTurn>>,
    label: &str,
) -> Vec<CallerRun> {
    let total = (a.callers * a.rounds * turns.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} turns")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    // One message per turn measured: bounded by `total`.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                bar.inc(1);
            }
        })
    };
    let mut tasks = Vec::new();
    for caller in 0..a.callers {
        let delay = Duration::from_secs_f64(a.ramp_up_secs * caller as f64 / a.callers as f64);
        let (turns, url, token, tx) = (
            turns.clone(),
            url.to_string(),
            token.map(str::to_string),
            tx.clone(),
        );
        let (rounds, timeout) = (a.rounds, a.reply_timeout_secs);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut runs = Vec::new();
            for round in 0..rounds {
                let mut opts = match (is_webhook(&url), &token) {
                    (true, _) => SimOptions::via_webhook(&url, token.as_deref(), turns.to_vec()),
                    (false, Some(t)) => SimOptions::new(&url, turns.to_vec()).signed(t),
                    (false, None) => SimOptions::new(&url, turns.to_vec()),
                };
                // Twilio's shape, which a validating server requires; the
                // caller and round lead, for whoever reads the traces.
                opts.call_sid = format!(
                    "CA{caller:04x}{round:04x}{:024x}",
                    rand::random::<u128>() >> 32
                );
                opts.reply_timeout_secs = timeout;
                opts.linger_secs = 1.0;
                opts.progress = Some(tx.clone());
                let call_sid = opts.call_sid.clone();
                let result = sim::run(opts).await;
                runs.push(CallerRun {
                    caller,
                    round,
                    call_sid,
                    result,
                });
            }
            runs
        }));
    }
    drop(tx);
    let mut runs = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => runs.extend(r),
            Err(e) => tracing::error!("a simulated caller failed: {e}"),
        }
    }
    let _ = ticker.await;
    bar.finish_and_clear();
    runs
}

/// What the server's traces say: every call's turn records by call SID,
/// and the models that served them.
#[derive(Default)]
struct Traces {
    calls: HashMap<String, Vec<TurnRecord>>,
    /// By call SID: (backchannels the bot went on through, interruptions
    /// that were not cut-offs).
    turn_taking: HashMap<String, (usize, usize)>,
    models: Vec<crate::stack::ModelInfo>,
}

fn read_traces(dir: &Path) -> Traces {
    let mut out = Traces::default();
    for (path, mut t) in super::child::traces(dir) {
        let sid = t["call"]["call_sid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if out.models.is_empty() {
            out.models = serde_json::from_value(t["models"].take()).unwrap_or_default();
        }
        let barge_ins = t["interruptions"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|i| i["cut_off"].as_bool() != Some(true))
                .count()
        });
        let backchannels = t["counters"]["backchannels"].as_u64().unwrap_or(0) as usize;
        out.turn_taking
            .insert(sid.clone(), (backchannels, barge_ins));
        match serde_json::from_value::<Vec<TurnRecord>>(t["turns"].take()) {
            Ok(turns) => {
                out.calls.insert(sid, turns);
            }
            Err(err) => tracing::warn!("{}: turns unreadable: {err}", path.display()),
        }
    }
    out
}

fn cost(idle: Option<Sample>, samples: &[Sample], exit_status: Option<i32>) -> ServerCost {
    let (first, last) = (samples.first(), samples.last());
    let cores = |a: &Sample, b: &Sample| (b.cpu_secs - a.cpu_secs) / (b.secs - a.secs).max(1e-3);
    ServerCost {
        cpu_cores_mean: first.zip(last).map_or(0.0, |(a, b)| cores(a, b)),
        cpu_cores_max: samples
            .windows(2)
            .map(|w| cores(&w[0], &w[1]))
            .fold(0.0, f64::max),
        rss_mib_idle: idle.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
        rss_mib_max: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        exit_status,
    }
}

fn build(
    label: &str,
    config: Option<&Path>,
    turns: &[SimTurn],
    runs: &[CallerRun],
    traces: &Traces,
    server: Option<ServerCost>,
    wall_secs: f64,
) -> StackReport {
    let records = &traces.calls;
    let mut calls = Vec::new();
    let mut rows = Vec::new();
    let mut wer_pairs: Vec<(String, String)> = Vec::new();
    for run in runs {
        let empty = Vec::new();
        let recs = records.get(&run.call_sid).unwrap_or(&empty);
        let replies: Vec<&TurnRecord> = recs
            .iter()
            .filter(|r| r.kind == crate::events::TurnKind::Turn && !r.user_text.is_empty())
            .collect();
        let heard = replies
            .iter()
            .map(|r| r.user_text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut row = CallRow {
            caller: run.caller,
            round: run.round,
            call_sid: run.call_sid.clone(),
            error: None,
            greeting_ms: None,
            late_frames: 0,
            replies: replies.len(),
            heard: heard.clone(),
        };
        match &run.result {
            Ok(r) => {
                row.greeting_ms = r.greeting_ms;
                row.late_frames = r.late_frames;
                for (i, turn) in turns.iter().enumerate() {
                    if turn.backchannel {
                        continue; // no reply of its own to measure
                    }
                    let said = turn.text.clone().unwrap_or_default();
                    match r.turns.get(i) {
                        Some(t) => {
                            let mut row = report::turn_row(
                                (run.caller, run.round, i),
                                &said,
                                t,
                                report::match_reply(recs, t.first_audio_at_ms),
                            );
                            // Talking over the reply before is a barge-in:
                            // what it heard meanwhile is that reply's.
                            row.cut_off &= turn.barge_in_after_ms.is_none();
                            rows.push(row);
                        }
                        // The call ended before this turn was spoken.
                        None => rows.push(report::TurnRow {
                            caller: run.caller,
                            round: run.round,
                            turn: i,
                            said,
                            ..Default::default()
                        }),
                    }
                }
                let reference: Vec<&str> = turns.iter().filter_map(|t| t.text.as_deref()).collect();
                if reference.len() == turns.len() && !records.is_empty() {
                    wer_pairs.push((reference.join(" "), heard));
                }
            }
            Err(e) => row.error = Some(format!("{e:#}")),
        }
        calls.push(row);
    }
    let stages = STAGES
        .iter()
        .map(|(name, get)| StageStats::of(name, rows.iter().filter_map(get).collect()))
        .collect();
    let greeting = StageStats::of(
        "First greeting",
        calls.iter().filter_map(|c| c.greeting_ms).collect(),
    );
    let answered = rows.iter().filter(|t| t.answered).count();
    let taking = |f: fn(&(usize, usize)) -> usize| -> usize {
        calls
            .iter()
            .filter_map(|c| traces.turn_taking.get(&c.call_sid))
            .map(f)
            .sum()
    };
    let quality = Quality {
        caller_turns: rows.len(),
        answered,
        unanswered: rows.len() - answered,
        cut_offs: rows.iter().filter(|t| t.cut_off).count(),
        fallback_waits: rows
            .iter()
            .filter(|t| t.turn_end == Some(crate::events::TurnEnd::Silence))
            .count(),
        backchannels: taking(|t| t.0),
        barge_ins: taking(|t| t.1),
        wer: (!wer_pairs.is_empty()).then(|| {
            crate::text::wer::corpus_wer(wer_pairs.iter().map(|(r, h)| (r.as_str(), h.as_str())))
        }),
        late_frames: calls.iter().map(|c| c.late_frames).sum(),
        calls_failed: calls.iter().filter(|c| c.error.is_some()).count(),
    };
    StackReport {
        label: label.to_string(),
        config: config.map(|c| c.display().to_string()),
        models: traces.models.clone(),
        wall_secs,
        calls,
        turns: rows,
        stages,
        greeting,
        quality,
        server,
    }
}
