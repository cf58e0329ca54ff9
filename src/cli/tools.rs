//! Tools that run one engine on files: transcribe, say, chat, vad.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;

use super::Cli;
use crate::audio::{wav, Audio};
use crate::config::VadParams;
use crate::engines::local::whisper::{Whisper, WhisperOptions};
use crate::engines::{ChatMessage, GenerationOptions, Role, Stt, VadEvent, MODEL_RATE};
use crate::stack::{self, LoadTimes};

#[derive(Debug, Args)]
pub(crate) struct TranscribeArgs {
    /// WAV file (any rate, mono or stereo).
    pub(crate) input: PathBuf,
    /// Print the stage timings too.
    #[arg(long)]
    pub timings: bool,
    /// Encode the stock 30 s context instead of the audio's own length
    /// (slower; for comparison).
    #[arg(long)]
    pub(crate) full_context: bool,
}

pub(crate) fn transcribe(cli: &Cli, a: &TranscribeArgs) -> anyhow::Result<()> {
    let audio = wav::read(&a.input)?;
    let paths = cli.paths()?;
    let options = WhisperOptions {
        short_context: !a.full_context,
        ..Default::default()
    };
    let stt = Whisper::load(&paths.stt, &paths.mel, options)?;
    stt.warm_up()?;
    let t = stt.transcribe(&audio)?;
    println!("{}", t.text);
    if a.timings {
        let s = &t.timings;
        eprintln!(
            "audio {:.2} s · features {:.1} ms · encoder {:.1} ms · decoder {:.1} ms ({} tokens) · total {:.1} ms{}",
            audio.duration_secs(),
            s.features_ms,
            s.encoder_ms,
            s.decoder_ms,
            s.tokens,
            s.total_ms,
            if s.fallbacks > 0 { " (decoded again with more context)" } else { "" }
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct SayArgs {
    /// What to say.
    pub text: String,
    /// Output WAV file.
    #[arg(short, long, default_value = "say.wav")]
    pub(crate) output: PathBuf,
    /// Output sample rate (default: the voice's own).
    #[arg(long)]
    pub rate: Option<u32>,
}

pub(crate) fn say(cli: &Cli, a: &SayArgs) -> anyhow::Result<()> {
    let tts = stack::tts(&cli.paths()?, &mut LoadTimes::default())?;
    let mut out = Audio::new(Vec::new(), tts.sample_rate());
    let stats = tts.synthesize(&a.text, &mut |chunk| {
        out.append(&chunk);
        true
    })?;
    if let Some(r) = a.rate {
        out = out.resampled(r);
    }
    wav::write(&a.output, &out)?;
    eprintln!(
        "wrote {} ({:.2} s of audio, {} sentences; first audio after {:.0} ms, total {:.0} ms)",
        a.output.display(),
        out.duration_secs(),
        stats.sentences,
        stats.first_audio_ms.unwrap_or_default(),
        stats.total_ms
    );
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// System prompt (default: the teacher persona).
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Messages to send in order instead of reading standard input.
    #[arg(long = "message", short = 'm')]
    pub(crate) messages: Vec<String>,
    #[arg(long, default_value_t = 80)]
    pub max_tokens: usize,
}

pub(crate) fn chat(cli: &Cli, a: &ChatArgs) -> anyhow::Result<()> {
    let llm = stack::llm(&cli.paths()?, &mut LoadTimes::default())?;
    let mut session = llm.session()?;
    let system = a
        .system
        .clone()
        .unwrap_or_else(|| crate::persona::TEACHER.to_string());
    let mut history = vec![ChatMessage::new(Role::System, system)];
    let prefilled = session.prefill(&history)?;
    eprintln!("(system prompt prefilled: {prefilled} tokens)");
    let options = GenerationOptions {
        max_tokens: a.max_tokens,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let scripted = !a.messages.is_empty();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut scripted_iter = a.messages.iter();
    loop {
        let line = if scripted {
            match scripted_iter.next() {
                Some(m) => {
                    println!("you: {m}");
                    m.clone()
                }
                None => break,
            }
        } else {
            print!("you: ");
            std::io::stdout().flush()?;
            match lines.next() {
                Some(l) => l?,
                None => break,
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        history.push(ChatMessage::new(Role::User, line));
        print!("bot: ");
        let g = session.generate(&history, &options, &cancel, &mut |t| {
            print!("{t}");
            let _ = std::io::stdout().flush();
            true
        })?;
        println!();
        eprintln!(
            "     first token {:.0} ms · {} prompt tokens evaluated, {} reused · {} tokens in {:.0} ms",
            g.first_token_ms.unwrap_or_default(),
            g.prefilled_tokens,
            g.cached_tokens,
            g.completion_tokens,
            g.total_ms
        );
        history.push(ChatMessage::new(Role::Assistant, g.text.trim()));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct VadArgs {
    /// WAV file (any rate).
    pub(crate) input: PathBuf,
    /// Speech threshold.
    #[arg(long, default_value_t = VadParams::default().confidence)]
    pub(crate) confidence: f32,
    /// Seconds of silence that end speech.
    #[arg(long, default_value_t = VadParams::default().stop_secs)]
    pub(crate) stop_secs: f32,
}

pub(super) fn vad(cli: &Cli, a: &VadArgs) -> anyhow::Result<()> {
    let paths = cli.paths()?;
    let mut times = LoadTimes::default();
    let params = VadParams {
        confidence: a.confidence,
        stop_secs: a.stop_secs,
        ..Default::default()
    };
    let vad = stack::vad(&paths, params, &mut times)?;
    let turn = stack::turn(&paths, &mut times)?;
    let audio = wav::read(&a.input)?.resampled(MODEL_RATE);
    let secs = |s: u64| s as f64 / MODEL_RATE as f64;
    let mut stream = vad.stream();
    let mut turn_start = None;
    // Feed in 20 ms frames, as a call would; a second of silence after the
    // file lets a pause at its very end register.
    let mut samples = audio.samples.clone();
    samples.extend(std::iter::repeat_n(0.0, MODEL_RATE as usize));
    let audio = crate::audio::Audio::new(samples, MODEL_RATE);
    for frame in audio.samples.chunks(320) {
        for e in stream.push(frame)? {
            match e {
                VadEvent::Started { at, onset } => {
                    turn_start.get_or_insert(onset);
                    println!(
                        "{:7.2} s  speech started (onset {:.2} s)",
                        secs(at),
                        secs(onset)
                    );
                }
                VadEvent::Paused { end } => {
                    println!("{:7.2} s  pause", secs(end));
                }
                VadEvent::Resumed { at } => {
                    println!("{:7.2} s  speech resumed", secs(at));
                }
                VadEvent::Stopped { at, end } => {
                    // Smart Turn sees the whole turn so far plus 0.5 s before it.
                    let from = turn_start
                        .unwrap_or(0)
                        .saturating_sub(MODEL_RATE as u64 / 2)
                        as usize;
                    let v =
                        turn.predict(&audio.samples[from..(at as usize).min(audio.samples.len())])?;
                    let complete =
                        crate::config::CallConfig::default().turn_complete(v.probability);
                    println!(
                        "{:7.2} s  speech stopped (ended {:.2} s) → turn {} (p = {:.3}, {:.1} ms)",
                        secs(at),
                        secs(end),
                        if complete { "COMPLETE" } else { "incomplete" },
                        v.probability,
                        v.total_ms
                    );
                    if complete {
                        turn_start = None;
                    }
                }
            }
        }
    }
    Ok(())
}
