//! `callbox bench-engines`: what each engine costs on this machine.
//!
//! Numbers, not pass/fail: speech is synthesised with our own Piper voice so
//! the benchmark needs nothing but the model set.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::Args;

use super::Cli;
use crate::audio::Audio;
use crate::engines::local::whisper::{Whisper, WhisperOptions};
use crate::engines::{ChatMessage, GenerationOptions, Role, Stt, Tts, MODEL_RATE};
use crate::stack::{self, LoadTimes};
use crate::text::wer::corpus_wer;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
}

const SENTENCES: [&str; 3] = [
    "Can you tell me why the sky is blue?",
    "My sister and I planted tomatoes in the garden last weekend, and now they are growing fast.",
    "What is the biggest animal that has ever lived on our planet?",
];

fn synth(tts: &dyn Tts, text: &str) -> anyhow::Result<Audio> {
    Ok(crate::engines::speak(tts, text)?.resampled(MODEL_RATE))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(crate) fn run(cli: &Cli, a: &BenchArgs) -> anyhow::Result<()> {
    let paths = cli.paths()?;
    let mut times = LoadTimes::default();
    let runs = a.runs.max(1);
    let tts = stack::tts(&paths, &mut times)?;
    let vad = stack::vad(&paths, Default::default(), &mut times)?;
    let turn = stack::turn(&paths, &mut times)?;
    let stt = stack::stt(&paths, &mut times)?;
    let llm = stack::llm(&paths, &mut times)?;
    let mut rows: Vec<(String, String)> = Vec::new();

    let speech: Vec<Audio> = SENTENCES
        .iter()
        .map(|s| synth(tts.as_ref(), s))
        .collect::<anyhow::Result<_>>()?;
    let mut long = Audio::new(Vec::new(), MODEL_RATE);
    for s in &speech {
        long.append(s);
        long.append(&Audio::silence(0.5, MODEL_RATE));
    }

    // VAD: per 512-sample window.
    let mut stream = vad.stream();
    let t0 = Instant::now();
    for _ in 0..runs {
        stream.push(&long.samples)?;
    }
    let windows = (long.samples.len() * runs / vad.window()) as f64;
    rows.push((
        "Silero VAD".into(),
        format!(
            "{:.3} ms per 32 ms window",
            t0.elapsed().as_secs_f64() * 1e3 / windows
        ),
    ));

    // Smart Turn: per call on the last 8 s.
    let mut total = Vec::new();
    let mut infer = Vec::new();
    for _ in 0..runs {
        let v = turn.predict(&long.samples)?;
        total.push(v.total_ms);
        infer.push(v.inference_ms);
    }
    rows.push((
        "Smart Turn v3.2".into(),
        format!(
            "{:.1} ms per call ({:.1} ms inference + features)",
            mean(&total),
            mean(&infer)
        ),
    ));

    // Whisper: short context (ours) against the stock 30 s context.
    let stock = Whisper::load(
        &paths.stt,
        &paths.mel,
        WhisperOptions {
            short_context: false,
            ..Default::default()
        },
    )?;
    let mut ms = Vec::new();
    let mut per_sec = Vec::new();
    let mut enc = Vec::new();
    let mut dec = Vec::new();
    let mut texts = Vec::new();
    for _ in 0..runs {
        for s in &speech {
            let t = stt.transcribe(s)?;
            ms.push(t.timings.total_ms);
            per_sec.push(t.timings.total_ms / s.duration_secs() as f64);
            enc.push(t.timings.encoder_ms);
            dec.push(t.timings.decoder_ms / t.timings.tokens.max(1) as f64);
            texts.push(t.text);
        }
    }
    let ours_wer = corpus_wer(
        SENTENCES
            .iter()
            .cycle()
            .copied()
            .zip(texts.iter().map(|s| s.as_str())),
    );
    let mut stock_ms = Vec::new();
    let mut stock_texts = Vec::new();
    for s in &speech {
        let t = stock.transcribe(s)?;
        stock_ms.push(t.timings.total_ms);
        stock_texts.push(t.text);
    }
    let stock_wer = corpus_wer(
        SENTENCES
            .iter()
            .copied()
            .zip(stock_texts.iter().map(|s| s.as_str())),
    );
    rows.push((
        "Whisper (short context)".into(),
        format!(
            "{:.0} ms per utterance, {:.0} ms per second of audio (encoder {:.0} ms, {:.1} ms per token); WER {:.1}%",
            mean(&ms),
            mean(&per_sec),
            mean(&enc),
            mean(&dec),
            ours_wer * 100.0
        ),
    ));
    rows.push((
        "Whisper (stock 30 s context)".into(),
        format!(
            "{:.0} ms per utterance; WER {:.1}%",
            mean(&stock_ms),
            stock_wer * 100.0
        ),
    ));
    drop(stock);

    // LLM: first token from scratch, then on a kept context.
    let opts = GenerationOptions {
        max_tokens: 48,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut rates = Vec::new();
    let mut prompt_tokens = 0;
    let mut new_tokens = 0;
    for _ in 0..runs {
        let mut session = llm.session()?;
        let mut h = vec![
            ChatMessage::new(Role::System, crate::persona::TEACHER),
            ChatMessage::new(Role::User, SENTENCES[0]),
        ];
        let g = session.generate(&h, &opts, &cancel, &mut |_| true)?;
        cold.push(g.first_token_ms.unwrap_or_default());
        prompt_tokens = g.prompt_tokens;
        h.push(ChatMessage::new(Role::Assistant, g.text.trim()));
        h.push(ChatMessage::new(Role::User, SENTENCES[2]));
        let g = session.generate(&h, &opts, &cancel, &mut |_| true)?;
        warm.push(g.first_token_ms.unwrap_or_default());
        new_tokens = g.prefilled_tokens;
        let decode_s = (g.total_ms - g.first_token_ms.unwrap_or_default()) / 1e3;
        if g.completion_tokens > 1 && decode_s > 0.0 {
            rates.push((g.completion_tokens - 1) as f64 / decode_s);
        }
    }
    rows.push((
        format!("LLM {}", llm.name()),
        format!(
            "first token {:.0} ms from scratch ({prompt_tokens} tokens), {:.0} ms on a kept context ({new_tokens} new tokens); {:.0} tokens/s",
            mean(&cold),
            mean(&warm),
            mean(&rates)
        ),
    ));

    // Piper: a three-sentence reply.
    let reply = "Great question! The sky looks blue because sunlight bounces off tiny bits of air. Blue light bounces around the most, so we see it everywhere.";
    let mut first = Vec::new();
    let mut rtf = Vec::new();
    for _ in 0..runs {
        let s = tts.synthesize(reply, &mut |_| true)?;
        first.push(s.first_audio_ms.unwrap_or_default());
        rtf.push(s.total_ms / 1e3 / s.audio_secs);
    }
    rows.push((
        "Piper TTS".into(),
        format!(
            "first sentence after {:.0} ms; real-time factor {:.3}",
            mean(&first),
            mean(&rtf)
        ),
    ));

    // RNNoise: per 10 ms frame at 48 kHz.
    let den = stack::denoiser();
    let mut ds = den.stream();
    let noisy = long.resampled(den.rate());
    let mut out = Vec::with_capacity(noisy.samples.len());
    let t0 = Instant::now();
    ds.process(&noisy.samples, &mut out);
    let frames = noisy.samples.len() as f64 / 480.0;
    rows.push((
        "RNNoise".into(),
        format!(
            "{:.3} ms per 10 ms frame",
            t0.elapsed().as_secs_f64() * 1e3 / frames
        ),
    ));

    for (name, secs) in &times.0 {
        rows.push((format!("load {name}"), format!("{secs:.2} s")));
    }
    println!("| engine | cost |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
