//! The engines on the real default models (fetched by the test setup).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use callbox::audio::{rms_dbfs, ulaw, Audio};
use callbox::config::VadParams;
use callbox::engines::local::silero::{SileroVad, CONTEXT, WINDOW};
use callbox::engines::local::smart_turn::SmartTurn;
use callbox::engines::{ChatMessage, GenerationOptions, Role, TurnDetector, VadEvent, MODEL_RATE};
use callbox::text::wer::{corpus_wer, wer};
use common::*;

fn vad_events(audio: &Audio) -> Vec<VadEvent> {
    assert_eq!(audio.rate, MODEL_RATE);
    let mut s = vad().stream();
    let mut events = Vec::new();
    for frame in audio.samples.chunks(320) {
        events.extend(s.push(frame).unwrap());
    }
    events
}

#[test]
fn vad_golden_value_on_zeros() {
    let p = paths();
    let vad = SileroVad::load(&p.ort, &p.vad, VadParams::default()).unwrap();
    let (prob, state) = vad.score(&[0.0; CONTEXT + WINDOW], &[0.0; 256]).unwrap();
    assert!((prob - 0.00166979).abs() < 2e-5, "p = {prob}");
    assert_eq!(state.len(), 256);
}

#[test]
fn vad_finds_a_sentence_framed_by_silence() {
    let s = speech("Today we are going to learn how plants drink water through their roots.");
    let mut audio = Audio::silence(1.0, MODEL_RATE);
    audio.append(&s);
    audio.append(&Audio::silence(1.0, MODEL_RATE));
    let (start, end) = speech_extent(&audio);
    let all = vad_events(&audio);
    // Each pause is announced at its first silent window; the last one is the
    // end that the stop event confirms a stop window later.
    let last_pause = all.iter().rev().find_map(|e| match e {
        VadEvent::Paused { end } => Some(*end),
        _ => None,
    });
    let stopped_end = all.iter().find_map(|e| match e {
        VadEvent::Stopped { end, .. } => Some(*end),
        _ => None,
    });
    assert!(last_pause.is_some() && last_pause == stopped_end, "{all:?}");
    let pauses = all
        .iter()
        .filter(|e| matches!(e, VadEvent::Paused { .. }))
        .count();
    let resumes = all
        .iter()
        .filter(|e| matches!(e, VadEvent::Resumed { .. }))
        .count();
    assert_eq!(pauses, resumes + 1, "{all:?}");
    let events: Vec<VadEvent> = all
        .into_iter()
        .filter(|e| matches!(e, VadEvent::Started { .. } | VadEvent::Stopped { .. }))
        .collect();

    let ms = |a: u64, b: usize| (a as f64 - b as f64).abs() / 16.0;
    match events.as_slice() {
        [VadEvent::Started { onset, .. }, VadEvent::Stopped { end: stop, at }] => {
            assert!(ms(*onset, start) <= 100.0, "onset {onset} vs {start}");
            assert!(ms(*stop, end) <= 100.0, "end {stop} vs {end}");
            // The stop event comes one stop window (200 ms) after the end.
            assert_eq!(*at - *stop, 6 * 512, "{at} {stop}");
        }
        other => panic!("expected one start and one stop, got {other:?}"),
    }
}

#[test]
fn vad_ignores_silence_and_white_noise() {
    assert!(vad_events(&Audio::silence(3.0, MODEL_RATE)).is_empty());
    let noise = white_noise(4.0, -30.0, MODEL_RATE, 7);
    assert!((rms_dbfs(&noise.samples) + 30.0).abs() < 0.5);
    assert!(vad_events(&noise).is_empty(), "noise triggered the VAD");
}

/// The golden values' 8 s of a 0.1-amplitude 220 Hz sine, computed in f64 and
/// rounded to f32 as numpy computes it: bit for bit the reference's input. (A
/// phase computed in f32 drifts by up to 1e-4 over 8 s, which moves the
/// int8 model's score by several of its output steps.)
fn golden_sine() -> Vec<f32> {
    (0..128_000)
        .map(|i| (0.1 * (2.0 * std::f64::consts::PI * 220.0 * (i as f64 / 16000.0)).sin()) as f32)
        .collect()
}

/// Smart Turn's features against the reference front end (pipecat 1.14.0's
/// vendored `WhisperFeatureExtractor`, REFERENCE.md §4) run on the same
/// input. Silence is exact. For the sine the reference's values are kept, to
/// five decimals, for the two edge frames (where reflect padding matters) and
/// as each band's mean over all 800 frames. Ours differ by at most 5.2e-5 in
/// any of the 64,000 cells (mean 8e-7) and 1.3e-5 in a band mean: our STFT
/// runs in f32, the reference's in f64. The tolerances, 1e-4 and 3e-5, cover
/// that, the rounding to five decimals and the FFT's SIMD path on another
/// CPU, and nothing more: a wrong window, padding or filter bank moves whole
/// bands by 1e-2 or more.
#[test]
fn smart_turn_features_match_the_reference() {
    /// The reference's frame 0, bands 0–79.
    #[rustfmt::skip]
    const FIRST_FRAME: [f32; 80] = [
        1.36795, 1.39231, 1.44166, 1.56398, 1.54347, 1.48545, 1.50912, 1.49326,
        1.33016, 1.24043, 1.17341, 1.11864, 1.07182, 1.03370, 0.99442, 0.95663,
        0.92713, 0.89962, 0.87385, 0.84963, 0.82678, 0.80515, 0.78462, 0.76508,
        0.74645, 0.72879, 0.71316, 0.69501, 0.67707, 0.65904, 0.64100, 0.62302,
        0.60513, 0.59795, 0.57559, 0.55009, 0.54962, 0.51815, 0.51328, 0.48498,
        0.48267, 0.45635, 0.44141, 0.42687, 0.41143, 0.39544, 0.37912, 0.36263,
        0.34610, 0.33291, 0.31687, 0.29997, 0.28549, 0.27228, 0.25481, 0.24070,
        0.22615, 0.21136, 0.19897, 0.18276, 0.17018, 0.15560, 0.14315, 0.13031,
        0.11734, 0.10440, 0.09353, 0.08096, 0.07057, 0.06005, 0.04963, 0.03978,
        0.03170, 0.02314, 0.01567, 0.00961, 0.00330, -0.00086, -0.00427, -0.00685,
    ];
    /// The reference's frame 799.
    #[rustfmt::skip]
    const LAST_FRAME: [f32; 80] = [
        0.83280, 0.85879, 0.93899, 1.26449, 1.59974, 1.63763, 1.56204, 1.24336,
        0.91374, 0.77644, 0.69176, 0.62927, 0.57907, 0.53974, 0.50027, 0.46254,
        0.43289, 0.40490, 0.37832, 0.35307, 0.32917, 0.30665, 0.28555, 0.26580,
        0.24728, 0.22992, 0.21463, 0.19664, 0.17859, 0.16018, 0.14162, 0.12317,
        0.10504, 0.09794, 0.07589, 0.05067, 0.05022, 0.01845, 0.01315, -0.01538,
        -0.01756, -0.04355, -0.05839, -0.07316, -0.08895, -0.10499, -0.12104, -0.13739,
        -0.15417, -0.16759, -0.18349, -0.20019, -0.21485, -0.22825, -0.24554, -0.25958,
        -0.27437, -0.28909, -0.30137, -0.31777, -0.33028, -0.34481, -0.35739, -0.36145,
        -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145,
        -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145, -0.36145,
    ];
    /// The reference's mean of each band over the 800 frames.
    #[rustfmt::skip]
    const BAND_MEANS: [f32; 80] = [
        0.45863, 0.62246, 0.85081, 1.26033, 1.59859, 1.63836, 1.56349, 1.22830,
        0.82558, 0.60199, 0.44173, 0.31550, 0.21091, 0.12342, 0.04099, -0.03192,
        -0.09123, -0.14622, -0.19729, -0.24487, -0.28935, -0.32831, -0.35085, -0.35848,
        -0.35855, -0.35862, -0.35867, -0.35874, -0.35881, -0.35888, -0.35895, -0.35901,
        -0.35908, -0.35911, -0.35919, -0.35929, -0.35929, -0.35941, -0.35943, -0.35953,
        -0.35954, -0.35964, -0.35970, -0.35975, -0.35981, -0.35987, -0.35993, -0.35999,
        -0.36005, -0.36010, -0.36016, -0.36023, -0.36028, -0.36033, -0.36040, -0.36045,
        -0.36051, -0.36056, -0.36061, -0.36067, -0.36071, -0.36077, -0.36081, -0.36083,
        -0.36085, -0.36086, -0.36088, -0.36089, -0.36091, -0.36092, -0.36093, -0.36094,
        -0.36095, -0.36096, -0.36097, -0.36098, -0.36099, -0.36099, -0.36100, -0.36100,
    ];
    let p = paths();
    let st = SmartTurn::load(&p.ort, &p.turn, &p.mel).unwrap();
    let f = st.features(&vec![0.0f32; 128_000]);
    assert!(f.iter().all(|&v| (v + 1.5).abs() < 1e-6));

    let f = st.features(&golden_sine());
    let frames = callbox::engines::local::smart_turn::FRAMES;
    for (t, reference) in [(0, FIRST_FRAME), (frames - 1, LAST_FRAME)] {
        for (m, r) in reference.iter().enumerate() {
            let ours = f[m * frames + t];
            assert!(
                (ours - r).abs() < 1e-4,
                "frame {t}, band {m}: {ours} vs {r}"
            );
        }
    }
    for (m, r) in BAND_MEANS.iter().enumerate() {
        let row = &f[m * frames..(m + 1) * frames];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / frames as f64;
        assert!(
            (mean - *r as f64).abs() < 3e-5,
            "band {m}: mean {mean} vs {r}"
        );
    }
}

/// Smart Turn's output is the sigmoid of an int8 logit, `p = σ(k × 0.039387)`
/// for an integer `k`: scores move in steps, 0.0005 apart near p = 0.987 and
/// 0.0016 apart near 0.957, and a tiny change anywhere before the last
/// quantisation moves a score by whole steps. `k` of a score:
fn smart_turn_step(p: f32) -> f64 {
    let p = p as f64;
    (p / (1.0 - p)).ln() / 0.039_387
}

/// Whether the CPU has FMA3, which ONNX Runtime's float kernels use when it
/// is there (every x86-64 CPU since Intel Haswell and AMD Piledriver).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// With graph optimisations off every node runs as the graph has it, and the
/// golden values (REFERENCE.md §4: silence 0.98703670 = step 110, the sine
/// 0.95736814 = step 79) come back exactly on every CPU with FMA3 tried: this
/// machine (AMD EPYC, AVX-512 VNNI) and, under QEMU, an AVX2-only EPYC-Rome
/// and a Haswell. Without FMA3 the float products round differently and the
/// sine lands one step up (0.95894712, both an AVX-only Sandy Bridge and the
/// SSE2 baseline under QEMU). So the check is in steps: the golden step
/// itself, or within one without FMA3; the 0.01 of a step on top allows only
/// float rounding in the sigmoid. Any other change (features, model,
/// runtime) moves the sine by several steps.
#[test]
fn smart_turn_reference_session_gives_the_golden_values() {
    let p = paths();
    let st = SmartTurn::load_reference(&p.ort, &p.turn, &p.mel).unwrap();
    let zeros = st.predict(&vec![0.0f32; 128_000]).unwrap().probability;
    let sine = st.predict(&golden_sine()).unwrap().probability;
    let (zeros_step, sine_step) = (smart_turn_step(zeros), smart_turn_step(sine));
    eprintln!(
        "reference session: zeros p = {zeros} (step {zeros_step:.3}), sine p = {sine} (step {sine_step:.3})"
    );
    let off_by = if has_fma() { 0.0 } else { 1.0 };
    assert!(
        (zeros_step - 110.0).abs() <= off_by + 0.01,
        "zeros: p = {zeros}, step {zeros_step:.3} instead of 110 (p = 0.98703670)"
    );
    assert!(
        (sine_step - 79.0).abs() <= off_by + 0.01,
        "sine: p = {sine}, step {sine_step:.3} instead of 79 (p = 0.95736814)"
    );
}

/// The production session fuses the int8 model's quantize/dequantize pairs
/// into integer kernels that ONNX Runtime picks per instruction set, so its
/// scores depend on the CPU. Measured (ONNX Runtime 1.28), against the
/// golden 0.98704 (step 110) and 0.95737 (step 79):
///
/// | CPU | silence | sine |
/// |---|---|---|
/// | AMD EPYC, AVX-512 VNNI (this machine) | 0.98704 (110) | 0.95895 (80) |
/// | AVX2 only: EPYC-Rome and Haswell under QEMU | 0.98753 (111) | 0.92283 (63) |
/// | AVX only (Sandy Bridge) or SSE2 only, under QEMU | 0.98704 (110) | 0.95895 (80) |
///
/// The AVX2 sine agrees with the 0.9228 measured on a real AVX2-only EPYC
/// (REFERENCE.md §4). The tolerances, 0.005 for silence (ten of its steps)
/// and 0.05 for the sine (0.035 below the golden value measured; about 20
/// steps), hold on every CPU measured with room to spare and still fail
/// features, a model or a runtime that have gone wrong.
#[test]
fn smart_turn_production_session_stays_near_the_reference() {
    let p = paths();
    let st = SmartTurn::load(&p.ort, &p.turn, &p.mel).unwrap();
    let zeros = st.predict(&vec![0.0f32; 128_000]).unwrap().probability;
    let sine = st.predict(&golden_sine()).unwrap().probability;
    eprintln!(
        "production session: zeros p = {zeros} (step {:.3}), sine p = {sine} (step {:.3})",
        smart_turn_step(zeros),
        smart_turn_step(sine)
    );
    assert!((zeros - 0.987_036_7).abs() <= 0.005, "zeros: p = {zeros}");
    assert!((sine - 0.957_368_1).abs() <= 0.05, "sine: p = {sine}");
}

#[test]
fn smart_turn_prefers_complete_sentences_to_ones_cut_mid_word() {
    let pause = Audio::silence(0.2, MODEL_RATE);
    let mut margins = Vec::new();
    for (clip, text) in librivox() {
        let s = clip.resampled(MODEL_RATE);
        let (start, end) = speech_extent(&s);
        let mut complete = Audio::new(s.samples[..end].to_vec(), MODEL_RATE);
        complete.append(&pause);
        let mut cut_at = start + (end - start) * 60 / 100;
        while rms_dbfs(&s.samples[cut_at - 160..cut_at]) < -25.0 {
            cut_at += 160;
        }
        let mut cut = Audio::new(s.samples[..cut_at].to_vec(), MODEL_RATE);
        cut.append(&pause);
        let pc = turn().predict(&complete.samples).unwrap().probability;
        let px = turn().predict(&cut.samples).unwrap().probability;
        eprintln!("Smart Turn: complete {pc:.3}, cut {px:.3}: {text}");
        margins.push(pc - px);
    }
    let right = margins.iter().filter(|&&m| m > 0.0).count();
    let mean = margins.iter().sum::<f32>() / margins.len() as f32;
    assert!(right >= 4 && mean > 0.3, "margins {margins:?}");
}

#[test]
fn stt_transcribes_a_synthesised_sentence() {
    let text = "My grandmother keeps three friendly cats in her little blue house.";
    let t = stt().transcribe(&speech(text)).unwrap();
    let w = wer(text, &t.text);
    assert!(w <= 0.15, "WER {w:.2}: {:?}", t.text);
}

#[test]
fn stt_librivox_wer_and_the_phone_line() {
    let clips = librivox();
    assert_eq!(clips.len(), 5);
    let mut direct = Vec::new();
    let mut phone = Vec::new();
    for (audio, _) in &clips {
        direct.push(stt().transcribe(audio).unwrap().text);
        // What Twilio delivers: 8 kHz μ-law.
        let narrow = audio.resampled(8000);
        let coded = ulaw::decode(&ulaw::encode(&narrow.to_i16()));
        let back = Audio::from_i16(&coded, 8000).resampled(MODEL_RATE);
        phone.push(stt().transcribe(&back).unwrap().text);
    }
    let refs: Vec<&str> = clips.iter().map(|(_, r)| r.as_str()).collect();
    let w = corpus_wer(refs.iter().copied().zip(direct.iter().map(|s| s.as_str())));
    let wp = corpus_wer(refs.iter().copied().zip(phone.iter().map(|s| s.as_str())));
    eprintln!(
        "LibriVox WER {:.1}%, after μ-law 8 kHz {:.1}%",
        w * 100.0,
        wp * 100.0
    );
    assert!(w <= 0.12, "WER {w:.3}: {direct:#?}");
    assert!(wp - w <= 0.03, "μ-law WER {wp:.3} vs {w:.3}: {phone:#?}");
}

fn history(user: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, callbox::persona::TEACHER),
        ChatMessage::new(Role::User, user),
    ]
}

#[test]
fn llm_streams_tokens() {
    let mut s = llm().session().unwrap();
    let mut pieces = Vec::new();
    let g = s
        .generate(
            &history("What do bees make?"),
            &GenerationOptions::default(),
            &AtomicBool::new(false),
            &mut |t| {
                pieces.push(t.to_string());
                true
            },
        )
        .unwrap();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), g.text);
    assert!(g.first_token_ms.unwrap() <= g.total_ms);
    assert!(!g.text.trim().is_empty());
}

#[test]
fn llm_second_turn_prefills_only_new_tokens() {
    let mut s = llm().session().unwrap();
    let opts = GenerationOptions {
        max_tokens: 30,
        ..Default::default()
    };
    let no = AtomicBool::new(false);
    let system = vec![ChatMessage::new(Role::System, callbox::persona::TEACHER)];
    let pre = s.prefill(&system).unwrap();
    assert!(pre > 50, "system prompt of {pre} tokens");
    let mut h = history("Why is the sky blue?");
    let g1 = s.generate(&h, &opts, &no, &mut |_| true).unwrap();
    // The system prompt was reused, only the user turn evaluated.
    assert!(g1.cached_tokens >= pre - 1, "{g1:?}");
    assert!(g1.prefilled_tokens < 30, "{g1:?}");
    h.push(ChatMessage::new(Role::Assistant, g1.text.trim()));
    h.push(ChatMessage::new(Role::User, "And why are sunsets red?"));
    let g2 = s.generate(&h, &opts, &no, &mut |_| true).unwrap();
    assert_eq!(g2.prefilled_tokens + g2.cached_tokens, g2.prompt_tokens);
    assert!(g2.cached_tokens >= g1.prompt_tokens, "{g1:?}\n{g2:?}");
    assert!(
        g2.prefilled_tokens < g2.prompt_tokens - g1.prompt_tokens + 5,
        "{g1:?}\n{g2:?}"
    );
}

/// A conversation longer than the context still gets answers: the oldest
/// exchanges are forgotten in one step, and the following turns reuse the
/// cache of the shortened conversation.
#[test]
fn llm_long_call_outgrows_its_context() {
    use callbox::engines::local::llama::{LlamaEngine, LlamaOptions};
    use callbox::engines::Llm;
    let n_ctx = 512;
    let engine = LlamaEngine::load(
        &paths().llm,
        LlamaOptions {
            n_ctx,
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = engine.session().unwrap();
    let opts = GenerationOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let no = AtomicBool::new(false);
    let mut h = vec![ChatMessage::new(Role::System, callbox::persona::TEACHER)];
    for i in 0..30 {
        h.push(ChatMessage::new(
            Role::User,
            format!("Tell me about the number {i}."),
        ));
        h.push(ChatMessage::new(
            Role::Assistant,
            format!("The number {i} comes after {} and before {}, and you can count to it on your fingers and toes.", i as i64 - 1, i + 1),
        ));
    }
    h.push(ChatMessage::new(Role::User, "What comes after seven?"));
    let g1 = s.generate(&h, &opts, &no, &mut |_| true).unwrap();
    assert!(!g1.text.trim().is_empty(), "{g1:?}");
    assert!(g1.prompt_tokens <= n_ctx as usize / 2, "{g1:?}");
    // The persona survives the cut: the window is longer than the exchanges kept.
    assert!(g1.prompt_tokens > 100, "{g1:?}");

    h.push(ChatMessage::new(Role::Assistant, g1.text.trim()));
    h.push(ChatMessage::new(Role::User, "And after eight?"));
    let g2 = s.generate(&h, &opts, &no, &mut |_| true).unwrap();
    assert!(!g2.text.trim().is_empty(), "{g2:?}");
    assert!(g2.cached_tokens >= g1.prompt_tokens, "{g1:?}\n{g2:?}");
    assert!(g2.prefilled_tokens < 40, "{g2:?}");
}

/// A small model answers a new question with its previous answer when the
/// history invites it (seen in the demo before the penalty covered the
/// previous reply).
#[test]
fn llm_does_not_repeat_its_previous_answer() {
    let mut s = llm().session().unwrap();
    // The demo's conversation, as the session kept it, up to the first copy.
    let mut h = vec![
        ChatMessage::new(Role::System, callbox::persona::TEACHER),
        ChatMessage::new(
            Role::Assistant,
            "Hello, this is Miss Harper. What would you like to learn about today?",
        ),
        ChatMessage::new(Role::User, "I'm Miss Harper."),
    ];
    let exchanges = [
        (
            "Why is the sky blue?",
            "The sky is blue because of a process called scattering.",
        ),
        (
            "What makes a rainbow?",
            "A rainbow is made of water and light.",
        ),
        ("How do birds fly?", "Birds fly by flapping their wings."),
        ("Why do you cats per?", "Cats per are a type of bird."),
        ("How far away is the month?", "The month is 12 months."),
        ("What do you plan see?", "The month is 12 months."),
        (
            "Why is the ocean salty?",
            "The ocean is salty because it contains salt.",
        ),
    ];
    for (q, a) in exchanges {
        h.push(ChatMessage::new(Role::User, q));
        h.push(ChatMessage::new(Role::Assistant, a));
    }
    h.push(ChatMessage::new(Role::User, "How do these make honey?"));
    let g = s
        .generate(
            &h,
            &GenerationOptions {
                max_tokens: 30,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| true,
        )
        .unwrap();
    let reply = g.text.trim();
    assert!(!reply.is_empty());
    assert!(
        !reply.starts_with("The ocean is salty"),
        "the previous answer again: {reply:?}"
    );
}

/// A ten-question call, replayed through the engine as a call drives it
/// (the greeting in the history, a prefill after every reply), against
/// llama.cpp's own answer to the same prompt. The first reply must be
/// llama.cpp's token for token: any difference is ours (template, sampler,
/// cache), not the model's. No reply may repeat the ending of an earlier
/// one: that is how the drift of issue 23 showed ("…a story for another
/// time" closing answer after answer).
#[test]
fn llm_call_follows_llama_cpp_and_does_not_drift() {
    use callbox::engines::local::llama::{LlamaEngine, LlamaOptions};
    use callbox::engines::Llm;
    const QUESTIONS: [&str; 10] = [
        "What is the capital of France?",
        "Why is the sky blue?",
        "What makes a rainbow?",
        "How do birds fly?",
        "Why do cats purr?",
        "How far away is the moon?",
        "What do plants eat?",
        "Why is the ocean salty?",
        "How do bees make honey?",
        "What is thunder?",
    ];
    let engine = LlamaEngine::load(&paths().llm, LlamaOptions::default()).unwrap();
    // The call's own settings (config.llm.max_tokens defaults to 80).
    let opts = GenerationOptions {
        max_tokens: 80,
        ..Default::default()
    };
    let no = AtomicBool::new(false);
    let mut s = engine.session().unwrap();
    let mut h = vec![
        ChatMessage::new(Role::System, callbox::persona::TEACHER),
        ChatMessage::new(Role::Assistant, callbox::persona::TEACHER_GREETING),
    ];
    s.prefill(&h).unwrap();
    let mut replies: Vec<String> = Vec::new();
    let mut same_as_reference = 0;
    for (i, q) in QUESTIONS.iter().enumerate() {
        h.push(ChatMessage::new(Role::User, *q));
        let mut pieces = Vec::new();
        let g = s
            .generate(&h, &opts, &no, &mut |t| {
                pieces.push(t.to_string());
                true
            })
            .unwrap();
        let mut reference = engine.reference_reply(&h, &opts).unwrap();
        reference.retain(|p| !p.is_empty());
        if i == 0 {
            assert_eq!(pieces, reference, "the first reply is not llama.cpp's");
        }
        same_as_reference += usize::from(pieces == reference);
        let reply = g.text.trim().to_string();
        eprintln!("{q} -> {reply}");
        h.push(ChatMessage::new(Role::Assistant, reply.clone()));
        s.prefill(&h).unwrap();
        replies.push(reply);
    }
    eprintln!("{same_as_reference} of 10 replies were llama.cpp's token for token");
    let words = |t: &str| -> Vec<String> {
        t.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    for (j, later) in replies.iter().enumerate() {
        let later_words = words(later);
        for earlier in &replies[..j] {
            let e = words(earlier);
            let tail = &e[e.len().saturating_sub(5)..];
            let repeats = tail.len() == 5 && later_words.windows(5).any(|w| w == tail);
            assert!(
                !repeats,
                "reply {j} repeats the ending of an earlier one:\n{earlier:?}\n{later:?}"
            );
        }
    }
}

#[test]
fn llm_cancellation_stops_within_one_token() {
    let mut s = llm().session().unwrap();
    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let g = s
        .generate(
            &history("Tell me a long story about a dragon."),
            &GenerationOptions::default(),
            &cancel,
            &mut |_| {
                seen += 1;
                if seen == 3 {
                    cancel.store(true, Ordering::Relaxed);
                }
                true
            },
        )
        .unwrap();
    assert!(g.cancelled);
    assert_eq!(seen, 3);
    assert!(g.completion_tokens <= 4, "{g:?}");
    // The session stays usable after a cancellation.
    let g = s
        .generate(
            &history("Say hello."),
            &GenerationOptions::default(),
            &AtomicBool::new(false),
            &mut |_| true,
        )
        .unwrap();
    assert!(!g.text.is_empty());
}

#[test]
fn tts_duration_is_plausible_and_sentences_pause() {
    let text = "The quick brown fox jumps over the lazy dog.";
    let a = speech(text);
    let secs = a.duration_secs();
    assert!((1.5..5.0).contains(&secs), "{secs} s for {text:?}");

    let two = speech("I like apples. I like pears.");
    let one = speech("I like apples and I like pears");
    let longest_gap = |a: &Audio| {
        let (s, e) = speech_extent(a);
        let frame = a.rate as usize / 100;
        let mut best = 0;
        let mut run = 0;
        for c in a.samples[s..e].chunks(frame) {
            if rms_dbfs(c) < -45.0 {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        best * 10
    };
    let (g2, g1) = (longest_gap(&two), longest_gap(&one));
    assert!(g2 >= 200, "sentence pause of {g2} ms");
    assert!(
        g2 > g1 + 100,
        "pause {g2} ms with a full stop, {g1} ms without"
    );
}

/// Numbers, times and titles as the bot writes them, said in their spoken
/// form, are heard back as those words (our STT's written form passes
/// through the same rules, so "$49.95" and "forty-nine dollars and
/// ninety-five cents" count as the same words).
#[test]
fn numbers_times_and_titles_are_heard_as_said() {
    use callbox::text::spoken::spoken;
    let lines = [
        "The total is $49.95.",
        "We close at 8:00 pm.",
        "Call +1 415 555 0123.",
        "Prices rose 3.5% this year.",
        "The town is 2,198 miles away.",
        "Dr. Smith will see you now.",
        "She finished 1st.",
    ];
    // What the STT wrote, in words: its numbers through the same rules,
    // and digit groups left over (it writes "five five five" as "555") read
    // digit by digit, as they were said.
    let words = |heard: &str| {
        let digits = regex::Regex::new(r"\d+").unwrap();
        let heard = spoken(heard).into_owned();
        digits
            .replace_all(&heard, |c: &regex::Captures| {
                let names = [
                    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                ];
                let each: Vec<&str> = c[0].bytes().map(|d| names[(d - b'0') as usize]).collect();
                format!(" {} ", each.join(" "))
            })
            .into_owned()
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for line in lines {
        let said = spoken(line).into_owned();
        let raw = stt().transcribe(&speech(line)).unwrap().text;
        let heard = stt().transcribe(&speech(&said)).unwrap().text;
        eprintln!("{line:?}: as written → {raw:?}; as said → {heard:?}");
        before.push((said.clone(), words(&raw)));
        after.push((said, words(&heard)));
    }
    let wer_of = |pairs: &[(String, String)]| {
        corpus_wer(pairs.iter().map(|(r, h)| (r.as_str(), h.as_str())))
    };
    let (w_before, w_after) = (wer_of(&before), wer_of(&after));
    eprintln!("spoken-form WER: {w_before:.2} as written, {w_after:.2} as said");
    assert!(w_after <= 0.20, "WER {w_after:.2}: {after:?}");
}

#[test]
fn tts_output_is_intelligible_to_our_stt() {
    let lines = [
        "Good morning, class. Please open your books to page twelve.",
        "Water boils at one hundred degrees, and it freezes at zero.",
    ];
    let hyp: Vec<String> = lines
        .iter()
        .map(|l| stt().transcribe(&speech(l)).unwrap().text)
        .collect();
    let w = corpus_wer(lines.iter().copied().zip(hyp.iter().map(|s| s.as_str())));
    assert!(w <= 0.20, "WER {w:.2}: {hyp:?}");
}

#[test]
fn denoiser_suppresses_noise_and_keeps_speech() {
    let (clip, reference) = librivox().swap_remove(0);
    let clean = clip.resampled(MODEL_RATE);
    let mut noisy = Audio::silence(1.0, MODEL_RATE);
    noisy.append(&clean);
    let noise = white_noise(noisy.duration_secs(), -30.0, MODEL_RATE, 11);
    for (s, n) in noisy.samples.iter_mut().zip(&noise.samples) {
        *s += n;
    }
    let den = callbox::stack::denoiser();
    let mut stream = den.stream();
    let mut out = Vec::new();
    stream.process(&noisy.resampled(den.rate()).samples, &mut out);
    let denoised = Audio::new(out, den.rate()).resampled(MODEL_RATE);
    // The leading second is noise only; RNNoise adapts within ~0.5 s.
    let before = rms_dbfs(&noisy.samples[9600..16000]);
    let after = rms_dbfs(&denoised.samples[9600..16000]);
    assert!(
        after < before - 15.0,
        "noise {before:.1} dBFS → {after:.1} dBFS"
    );
    let t = stt().transcribe(&denoised).unwrap();
    let w = wer(&reference, &t.text);
    let noisy_wer = wer(&reference, &stt().transcribe(&noisy).unwrap().text);
    eprintln!("WER with noise {noisy_wer:.2}, denoised {w:.2}");
    // Speech kept: Whisper, itself trained on noisy speech, hears the
    // denoised clip about as well as the noisy one, and the words are not
    // lost. Measured on two machines of different CPUs (the second an
    // AMD EPYC with AVX-512): denoised 0.27 on both, noisy 0.23 and 0.14 —
    // Whisper's matrix kernels follow the instruction set, which on the
    // noisy clip moves two words of 22, so "as well as" allows three words
    // more.
    assert!(
        w <= noisy_wer + 0.15 && w <= 0.35,
        "WER {w:.2} after denoising, {noisy_wer:.2} before: {:?}",
        t.text
    );
}

/// Continuous batching: four calls at once through one shared context write
/// the replies each would alone, in steps that serve several of them; a
/// reply given up on leaves its call's sequence usable, and a context with
/// every sequence taken says so instead of hanging.
///
/// "The same reply" is its opening words: a batch sums in another order than
/// a single row, and greedy decoding may part ways after a dozen tokens
/// (seen: "…reaches our planet, it's made" against "…our planet's
/// atmosphere"). A call answered from another call's sequence would differ
/// from the first word.
#[test]
fn llm_batches_concurrent_calls_in_one_shared_context() {
    use callbox::engines::local::llama::{LlamaEngine, LlamaOptions};
    use callbox::engines::Llm;
    use std::sync::Arc;
    let questions = [
        "What is the capital of France?",
        "Why is the sky blue?",
        "What do bees make?",
        "How do fish breathe?",
    ];
    let opts = GenerationOptions {
        max_tokens: 24,
        ..Default::default()
    };
    let no = AtomicBool::new(false);
    // Each question alone, on a context of its own.
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let mut s = llm().session().unwrap();
            s.generate(&history(q), &opts, &no, &mut |_| true)
                .unwrap()
                .text
        })
        .collect();
    for (i, a) in alone.iter().enumerate() {
        for b in &alone[..i] {
            assert_ne!(opening(a), opening(b), "two questions open alike");
        }
    }
    let shared = Arc::new(
        LlamaEngine::load(
            &paths().llm,
            LlamaOptions {
                parallel: 4,
                n_ctx: 1024,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let barrier = Arc::new(std::sync::Barrier::new(questions.len()));
    let together: Vec<_> = questions
        .iter()
        .map(|q| {
            let (engine, barrier, opts) = (shared.clone(), barrier.clone(), opts.clone());
            let q = q.to_string();
            std::thread::spawn(move || {
                let mut s = engine.session().unwrap();
                // The system prompt first, as a call does while it greets.
                s.prefill(&history(&q)[..1]).unwrap();
                barrier.wait();
                s.generate(&history(&q), &opts, &AtomicBool::new(false), &mut |_| true)
                    .unwrap()
            })
        })
        .collect();
    for ((q, alone), t) in questions.iter().zip(&alone).zip(together) {
        let g = t.join().unwrap();
        assert!(!g.text.trim().is_empty(), "{q}: {g:?}");
        assert_eq!(
            opening(&g.text),
            opening(alone),
            "{q}: batched {:?}, alone {alone:?}",
            g.text
        );
        // The prefilled system prompt was reused.
        assert!(g.cached_tokens > 20, "{q}: {g:?}");
        assert!(
            g.first_token_ms.is_some() && g.completion_tokens > 0,
            "{g:?}"
        );
    }
    let stats = shared.batch_stats().unwrap();
    assert!(
        stats.max_sequences >= 2,
        "no step served two calls: {stats:?}"
    );

    // Given up after three pieces: the sequence answers the next turn.
    let mut s = shared.session().unwrap();
    let mut seen = 0;
    let g = s
        .generate(
            &history("Tell me a long story about a dragon."),
            &GenerationOptions::default(),
            &no,
            &mut |_| {
                seen += 1;
                seen < 3
            },
        )
        .unwrap();
    assert!(g.cancelled && !g.finished, "{g:?}");
    assert_eq!(seen, 3);
    let g = s
        .generate(&history(questions[0]), &opts, &no, &mut |_| true)
        .unwrap();
    assert_eq!(opening(&g.text), opening(&alone[0]), "{:?}", g.text);

    // Every sequence held: a clear error, not a hang.
    let held: Vec<_> = (0..3).map(|_| shared.session().unwrap()).collect();
    let e = shared.session().err().expect("a fifth session").to_string();
    assert!(e.contains("sequences") && e.contains("in use"), "{e}");
    drop(held);
    assert!(shared.session().is_ok());
}

/// The first five words: enough to tell the four questions' answers apart
/// (checked), while a batched decode, whose sums differ from a lone one in
/// the last bits, may part from it later at a near-tie ("Bonjour! Welcome to
/// my classroom! The capital…" against "…classroom! I'm so glad…").
fn opening(text: &str) -> Vec<&str> {
    text.split_whitespace().take(5).collect()
}
