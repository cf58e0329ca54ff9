//! `callbox sim` and `callbox demo`: a simulated Twilio caller against a
//! server (part of the `testkit` feature).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

use super::call::load_engines;
use super::{percentile, Cli};
use crate::audio::{wav, Audio};
use crate::config::Config;
use crate::engines::{Stt, Tts};
use crate::server::{self, AppState};
use crate::sim::{self, SimOptions, SimReport, SimTurn};
use crate::stack::{self, LoadTimes};

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// The server's media websocket.
    #[arg(long, default_value = "ws://127.0.0.1:8765/ws")]
    pub url: String,
    /// A turn spoken from text (synthesised with our TTS); repeat for more.
    #[arg(long = "say")]
    pub(crate) say: Vec<String>,
    /// A turn from a WAV file; repeat for more (after the --say turns).
    #[arg(long = "wav")]
    pub(crate) wavs: Vec<PathBuf>,
    /// Write the call as the caller heard it (left caller, right bot).
    #[arg(long)]
    pub(crate) record: Option<PathBuf>,
    /// Play Twilio's signed webhook first (the server's auth token), to get
    /// the stream token a validating server requires.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

/// Speaks `text` at the phone's 8 kHz. `[pause MS]` in it is that much
/// silence: a caller who stops mid-line ("Hi Miss Harper! [pause 600] Why
/// is the sky blue?").
pub(super) fn synth(tts: &dyn Tts, text: &str) -> anyhow::Result<Audio> {
    let mut out = Audio::new(Vec::new(), 8000);
    for (i, part) in text.split(PAUSE).enumerate() {
        let (pause_ms, words) = match i {
            0 => (0, part),
            _ => {
                let (ms, rest) = part
                    .split_once(']')
                    .with_context(|| format!("{text:?}: `{PAUSE}MS]` is not closed"))?;
                let ms: u32 = ms
                    .trim()
                    .parse()
                    .with_context(|| format!("{text:?}: `{PAUSE}{ms}]` is not a number of ms"))?;
                (ms, rest)
            }
        };
        out.append(&Audio::new(vec![0.0; pause_ms as usize * 8], 8000));
        if !words.trim().is_empty() {
            out.append(&crate::engines::speak(tts, words.trim())?.resampled(8000));
        }
    }
    Ok(out)
}

const PAUSE: &str = "[pause ";

/// `text` without its `[pause MS]` marks: what the caller says.
pub(super) fn said(text: &str) -> String {
    text.split(PAUSE)
        .enumerate()
        .map(|(i, part)| match i {
            0 => part,
            _ => part.split_once(']').map_or(part, |(_, rest)| rest),
        })
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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
        let said = t.said.as_deref().unwrap_or("(audio)");
        if t.backchannel {
            println!("caller (over the bot): {said}");
            continue;
        }
        println!("caller: {said}");
        let heard = stt.transcribe(&Audio::from_i16(&t.bot_audio, 8000))?;
        match t.latency_ms {
            Some(l) => {
                latencies.push(l);
                println!(
                    "bot ({l:.0} ms after the caller stopped{}): {}",
                    match (t.cleared, t.resumed) {
                        (true, true) => ", paused and went on",
                        (true, false) => ", interrupted",
                        _ => "",
                    },
                    heard.text
                )
            }
            None => println!("bot: (no reply)"),
        }
    }
    Ok(latencies)
}

pub(crate) async fn sim(cli: &Cli, a: &SimArgs) -> anyhow::Result<()> {
    let paths = cli.paths()?;
    let mut t = LoadTimes::default();
    let tts = stack::caller_voice(&paths, &mut t)?;
    let stt = stack::stt(&paths, &mut t)?;
    let mut turns = Vec::new();
    for s in &a.say {
        turns.push(SimTurn::new(synth(tts.as_ref(), s)?, Some(said(s))));
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
pub(crate) struct DemoArgs {
    /// How many of the scripted caller turns to play (up to 12).
    #[arg(long, default_value_t = 10)]
    pub turns: usize,
    /// Folder for the recording.
    #[arg(long, default_value = "out")]
    pub(crate) out: PathBuf,
    /// A configuration file, e.g. one with `[llm] backend = "openai"` to
    /// run the same call against Groq.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

pub(super) const SCRIPT: [&str; 12] = [
    // People pause after a greeting: the bot must not take it for the end.
    "Hi Miss Harper! [pause 600] Why is the sky blue?",
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

/// The demo's caller says [`BACKCHANNEL`] 1.5 s into the answer to this
/// turn of [`SCRIPT`].
const BACKCHANNEL_AFTER: usize = 2;
// A lone "Uh-huh." from our voice is too short for the VAD to confirm as
// speech (under `vad.start_secs` voiced): it never reaches the turn rules.
const BACKCHANNEL: &str = "Okay, yeah.";

pub(super) async fn demo(cli: &Cli, a: &DemoArgs) -> anyhow::Result<()> {
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
    for (i, s) in SCRIPT
        .iter()
        .take(a.turns.clamp(1, SCRIPT.len()))
        .enumerate()
    {
        turns.push(SimTurn::new(synth(tts.as_ref(), s)?, Some(said(s))));
        if i == BACKCHANNEL_AFTER {
            // A listener's "uh-huh" into the answer: the bot goes on.
            let uh_huh = synth(tts.as_ref(), BACKCHANNEL)?;
            turns.push(SimTurn::new(uh_huh, Some(BACKCHANNEL.into())).backchannel(1500));
        }
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
        crate::observe::table::latency_table(&summary.turns)
    );
    let answered = |f: fn(&crate::events::TurnRecord) -> Option<f64>| -> Vec<f64> {
        summary
            .turns
            .iter()
            .filter(|t| t.kind == crate::events::TurnKind::Turn)
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
    println!("{}", turn_taking(&report, &summary));
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

/// The moments a caller judges turn-taking by, counted for one call: the
/// caller's side says when the bot talked over them or never answered; the
/// server's record says which rule ended each turn and what speech over
/// the bot did.
fn turn_taking(report: &SimReport, summary: &crate::events::CallSummary) -> String {
    let spoken = report.turns.iter().filter(|t| !t.backchannel);
    let cut_offs = spoken
        .clone()
        .filter(|t| t.audio_while_speaking > 0)
        .count();
    let missed = spoken.filter(|t| t.latency_ms.is_none()).count();
    let fallback_waits = summary
        .turns
        .iter()
        .filter(|t| t.turn_end == Some(crate::events::TurnEnd::Silence))
        .count();
    let barge_ins = summary.interruptions.iter().filter(|i| !i.cut_off).count();
    format!(
        "turn-taking: {cut_offs} cut-offs (bot audio while the caller was still speaking) · \
         {fallback_waits} waits for the silence fallback · {} backchannels the bot went on through · \
         {barge_ins} barge-ins · {missed} missed turns",
        summary.backchannels
    )
}
