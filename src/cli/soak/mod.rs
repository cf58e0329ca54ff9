//! `callbox soak`: many simulated calls for a long time against a real
//! server process, to find what only time and concurrency show — leaks of
//! memory or file descriptors, lost calls, incomplete recordings, latency
//! that creeps up, panics.
//!
//! The server runs as a child process (`callbox serve`), so its memory and
//! descriptors are its own, and it is stopped with SIGTERM at the end, as a
//! deployment would stop it. Callers join and leave continuously; each call
//! is a few turns drawn at random, some talking over the bot, some pressing
//! keys, some going quiet long enough for the bot to check on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Serialize;

use super::child::{machine, sample, Sample, Server};
use super::percentile;
use super::sim::{said, synth, SCRIPT};
use super::Cli;
use crate::sim::{self, SimOptions, SimTurn};
use report::{markdown, summarise};

mod report;

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Simulated calls at a time.
    #[arg(long, default_value_t = 8)]
    pub calls: usize,
    /// How long callers keep calling (calls in progress then finish).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) minutes: f64,
    /// Memory and descriptors are compared with their values this long
    /// after the start, once every model and buffer has been touched.
    #[arg(long, default_value_t = 90.0)]
    pub(crate) warmup_secs: f64,
    /// Times the callers all hang up between the warm-up and the end, so
    /// that idle memory is measured along the way: growth that levels off
    /// (caches filling) tells apart from growth with every call (a leak).
    #[arg(long, default_value_t = 2)]
    pub(crate) pauses: usize,
    /// Folder for the report, the server's log, traces and recordings.
    #[arg(long, default_value = "out/soak")]
    pub(crate) out: PathBuf,
    /// The server's configuration file (the soak sets its own folders,
    /// line limit and Twilio token on top).
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// What one simulated call did and saw.
#[derive(Debug, Clone, Serialize)]
struct CallOutcome {
    call_sid: String,
    started_secs: f64,
    ended_secs: f64,
    error: Option<String>,
    turns: usize,
    answered: usize,
    barge_ins: usize,
    dtmf: usize,
    long_pause: bool,
    /// Caller side: end of a turn's speech → first bot audio.
    latencies_ms: Vec<f64>,
    /// 20 ms ticks when the phone's buffer ran dry in the middle of a
    /// sentence (a mark still pending): audio that came late.
    late_frames: usize,
    invalid_media: usize,
}

/// What the server wrote about one call.
#[derive(Debug, Default, Serialize)]
struct ServerCall {
    ended_by: String,
    recording_ok: bool,
    frames_dropped: u64,
    errors: usize,
    /// (seconds into the call, Total ms) per answered turn.
    totals: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    calls_at_once: usize,
    minutes: f64,
    wall_secs: f64,
    calls_started: usize,
    /// Refused politely as busy: a caller redialled before the server had
    /// released the line of its previous call.
    calls_turned_away: usize,
    calls_failed_client_side: usize,
    calls_lost: Vec<String>,
    recordings_incomplete: Vec<String>,
    turns: usize,
    turns_answered: usize,
    barge_ins: usize,
    dtmf_presses: usize,
    long_pauses: usize,
    late_frames: usize,
    invalid_media: usize,
    frames_dropped_server: u64,
    server_errors: usize,
    panics: usize,
    exit_status: Option<i32>,
    /// Under load: the median of the minute after the warm-up, and of the
    /// last minute of calls.
    rss_after_warmup_kib: u64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    /// Idle (no call in progress) at every pause: after the warm-up first,
    /// after the last call last.
    idle: Vec<Sample>,
    fds_after_warmup: usize,
    fds_end: usize,
    /// Per minute: (minute, turns, Total p50, Total p95, caller p50, caller p95).
    per_minute: Vec<(usize, usize, f64, f64, f64, f64)>,
    samples: Vec<Sample>,
    calls: Vec<CallOutcome>,
}

pub(crate) async fn run(cli: &Cli, a: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.calls >= 1 && a.minutes > 0.0,
        "--calls and --minutes must be positive"
    );
    let out = std::path::absolute(&a.out)?;
    let (traces, recordings) = (out.join("traces"), out.join("recordings"));
    for d in [&traces, &recordings] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }

    // The callers' voices, made once.
    let paths = cli.paths()?;
    let tts = crate::stack::caller_voice(&paths, &mut Default::default())?;
    // Not the goodbye: the bot would hang up in the middle of a soak call.
    let phrases: Vec<SimTurn> = SCRIPT
        .iter()
        .filter(|s| crate::tools::intent::intent(s) != crate::tools::intent::Intent::EndCall)
        .map(|s| Ok(SimTurn::new(synth(tts.as_ref(), s)?, Some(said(s)))))
        .collect::<anyhow::Result<_>>()?;
    drop(tts);

    let env: Vec<(String, String)> = [
        ("CALLBOX_OBSERVE__TRACES_DIR", traces.display().to_string()),
        (
            "CALLBOX_CALL__RECORDINGS_DIR",
            recordings.display().to_string(),
        ),
        // Room for calls still closing when their caller redials: the soak
        // is about `calls` callers, not about the line limit.
        ("CALLBOX_SERVER__MAX_CALLS", (a.calls + 2).to_string()),
        ("CALLBOX_LLM__MAX_TOKENS", "40".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let server = Server::start(cli, a.config.as_deref(), &env, &out.join("server.log")).await?;
    let (pid, token, base) = (server.pid, server.token.clone(), server.base.clone());
    let url = server.ws_url();
    eprintln!(
        "soak: server pid {pid} at {base}; {} callers for {} min (report in {})",
        a.calls,
        a.minutes,
        out.display()
    );

    let t0 = Instant::now();
    let sampler = server.sampler(t0, Duration::from_secs(5));

    let progress = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            eprintln!("soak: {:.0} s", t0.elapsed().as_secs_f64());
        }
    });
    let phrases = Arc::new(phrases);
    // Warm-up, then a pause with no call at all for the baseline of memory
    // and descriptors; then the rest in stretches, each ending with the
    // same measurement idle again.
    // Idle against idle compares like with like: under load the numbers
    // swing with how many calls are in which stage at that instant.
    let warm_end = t0 + Duration::from_secs_f64(a.warmup_secs.min(a.minutes * 60.0));
    let mut calls = callers(a.calls, &url, &token, &phrases, t0, warm_end).await?;
    let mut idle = vec![idle_sample(&base, pid, t0).await];
    eprintln!(
        "soak: warm and idle: RSS {} MiB, {} descriptors",
        idle[0].rss_kib / 1024,
        idle[0].fds
    );
    let deadline = t0 + Duration::from_secs_f64(a.minutes * 60.0);
    let stretches = a.pauses + 1;
    for k in 1..=stretches {
        let until =
            warm_end + deadline.saturating_duration_since(warm_end) * k as u32 / stretches as u32;
        calls.extend(callers(a.calls, &url, &token, &phrases, t0, until).await?);
        let s = idle_sample(&base, pid, t0).await;
        eprintln!(
            "soak: idle: RSS {} MiB, {} descriptors",
            s.rss_kib / 1024,
            s.fds
        );
        idle.push(s);
    }
    progress.abort();
    let mut samples = sampler.stop();
    samples.extend(idle.iter().copied());
    let wall_secs = t0.elapsed().as_secs_f64();

    // A deployment's stop: SIGTERM, then the server drains and exits.
    let status = server.stop().await?;

    let server_calls = read_traces(&traces);
    let log = std::fs::read_to_string(out.join("server.log")).unwrap_or_default();
    let report = summarise(
        a,
        calls,
        server_calls,
        (samples, idle),
        &log,
        status,
        wall_secs,
    );
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(out.join("soak.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// `n` callers, staggered, each calling again and again until `until`;
/// the calls in progress then finish.
async fn callers(
    n: usize,
    url: &str,
    token: &str,
    phrases: &Arc<Vec<SimTurn>>,
    t0: Instant,
    until: Instant,
) -> anyhow::Result<Vec<CallOutcome>> {
    let mut tasks = Vec::new();
    for k in 0..n {
        let (phrases, token, url) = (phrases.clone(), token.to_string(), url.to_string());
        // Staggered, so that calls begin and end at all times.
        let delay = Duration::from_secs_f64(k as f64 * 4.0);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut outcomes = Vec::new();
            while Instant::now() < until {
                outcomes.push(one_call(&url, &token, &phrases, t0).await);
                let gap = rand::rng().random_range(0.0..2.0);
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
            outcomes
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await?);
    }
    Ok(out)
}

/// Once the server reports no call in progress (and a few seconds more,
/// for its observers), the median of three samples.
async fn idle_sample(base: &str, pid: u32, t0: Instant) -> Sample {
    for _ in 0..120 {
        let active = match reqwest::get(format!("{base}/health")).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        }
        .and_then(|v| v["active_calls"].as_u64());
        if active == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut v = Vec::new();
    for _ in 0..3 {
        v.extend(sample(pid, t0));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    v.sort_by_key(|s| s.rss_kib);
    v.get(v.len() / 2).copied().unwrap_or(Sample {
        secs: t0.elapsed().as_secs_f64(),
        rss_kib: 0,
        fds: 0,
        cpu_secs: 0.0,
    })
}

/// One call of two to four turns drawn from the script.
async fn one_call(url: &str, token: &str, phrases: &[SimTurn], t0: Instant) -> CallOutcome {
    let (mut opts, long_pause) = {
        let mut rng = rand::rng();
        let n = rng.random_range(2..=4);
        let mut turns: Vec<SimTurn> = Vec::new();
        for i in 0..n {
            let mut t = phrases.choose(&mut rng).expect("phrases").clone();
            if i > 0 && rng.random_bool(0.25) {
                t.barge_in_after_ms = Some(rng.random_range(600..1500));
            }
            if rng.random_bool(0.15) {
                t.dtmf = Some(rng.random_range(0..10).to_string());
            }
            turns.push(t);
        }
        let mut opts = SimOptions::new(url, turns).signed(token);
        // Now and then a caller goes quiet for longer than call.idle_secs.
        let long_pause = rng.random_bool(0.15);
        opts.pause_secs = if long_pause {
            rng.random_range(6.0..8.0)
        } else {
            rng.random_range(0.5..1.5)
        };
        opts.linger_secs = 1.0;
        opts.reply_timeout_secs = 30.0;
        (opts, long_pause)
    };
    opts.call_sid = crate::sim::call_sid();
    let mut outcome = CallOutcome {
        call_sid: opts.call_sid.clone(),
        started_secs: t0.elapsed().as_secs_f64(),
        ended_secs: 0.0,
        error: None,
        turns: opts.turns.len(),
        answered: 0,
        barge_ins: opts
            .turns
            .iter()
            .filter(|t| t.barge_in_after_ms.is_some())
            .count(),
        dtmf: opts.turns.iter().filter(|t| t.dtmf.is_some()).count(),
        long_pause,
        latencies_ms: Vec::new(),
        late_frames: 0,
        invalid_media: 0,
    };
    match sim::run(opts).await {
        Ok(r) => {
            outcome.latencies_ms = r.turns.iter().filter_map(|t| t.latency_ms).collect();
            outcome.answered = outcome.latencies_ms.len();
            outcome.late_frames = r.late_frames;
            outcome.invalid_media = r.invalid_media;
        }
        Err(e) => outcome.error = Some(format!("{e:#}")),
    }
    outcome.ended_secs = t0.elapsed().as_secs_f64();
    outcome
}

/// Every trace the server wrote, by call.
fn read_traces(dir: &Path) -> HashMap<String, ServerCall> {
    let mut out = HashMap::new();
    for (_, t) in super::child::traces(dir) {
        let call = &t["call"];
        let duration = call["duration_secs"].as_f64().unwrap_or(0.0);
        let recording_ok = call["recording"].as_str().is_some_and(|p| {
            hound::WavReader::open(p).is_ok_and(|w| {
                let secs = w.duration() as f64 / w.spec().sample_rate as f64;
                w.spec().channels == 2 && (secs - duration).abs() < 1.5
            })
        });
        let totals = t["turns"]
            .as_array()
            .map(|turns| {
                turns
                    .iter()
                    .filter(|x| x["kind"] == "turn")
                    .filter_map(|x| {
                        Some((
                            x["first_audio_at_ms"].as_f64()? / 1e3,
                            x["total_ms"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            call["call_sid"].as_str().unwrap_or_default().to_string(),
            ServerCall {
                ended_by: call["ended_by"].as_str().unwrap_or_default().to_string(),
                recording_ok,
                frames_dropped: t["counters"]["frames_dropped"].as_u64().unwrap_or(0),
                errors: t["errors"].as_array().map_or(0, Vec::len),
                totals,
            },
        );
    }
    out
}
