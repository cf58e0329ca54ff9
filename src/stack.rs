//! Loads the engines of one model set, once, and times each load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::VadParams;
use crate::config::{
    ApiConfig, Config, LlmBackend, LlmConfig, SttBackend, SttConfig, TtsBackend, TtsConfig,
};
use crate::engines::api::deepgram_stt::DeepgramStt;
use crate::engines::api::deepgram_tts::DeepgramTts;
use crate::engines::api::deepgram_tts_ws::DeepgramSpeakWs;
use crate::engines::api::http::Endpoint;
use crate::engines::api::openai::OpenAiChat;
use crate::engines::device::{Device, Devices, Engine};
use crate::engines::local::denoise::Rnnoise;
use crate::engines::local::llama::{LlamaEngine, LlamaOptions};
use crate::engines::local::piper::{Piper, PiperOptions};
use crate::engines::local::silero::SileroVad;
use crate::engines::local::smart_turn::SmartTurn;
use crate::engines::local::whisper::{Whisper, WhisperOptions};
use crate::engines::queue::FairStt;
use crate::engines::{Denoiser, Llm, Stt, Tts, TurnDetector, Vad};
use crate::error::{Error, Result};
use crate::models::ModelPaths;

/// Seconds each engine took to load, for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct LoadTimes(pub Vec<(&'static str, f64)>);

fn timed<T>(
    times: &mut LoadTimes,
    name: &'static str,
    device: Device,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let t0 = Instant::now();
    let v = f()?;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(engine = name, %device, secs = format!("{secs:.2}"), "loaded");
    times.0.push((name, secs));
    Ok(v)
}

/// Where `engine` runs when the configuration says nothing.
fn auto(engine: Engine) -> Device {
    Devices::default().resolve(engine).unwrap_or(Device::Cpu)
}

pub fn vad(paths: &ModelPaths, params: VadParams, times: &mut LoadTimes) -> Result<Arc<dyn Vad>> {
    vad_on(paths, params, auto(Engine::Vad), times)
}

fn vad_on(
    paths: &ModelPaths,
    params: VadParams,
    device: Device,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Vad>> {
    timed(times, "vad", device, || {
        Ok(Arc::new(SileroVad::load_on(&paths.ort, &paths.vad, params, device)?) as Arc<dyn Vad>)
    })
}

pub fn turn(paths: &ModelPaths, times: &mut LoadTimes) -> Result<Arc<dyn TurnDetector>> {
    turn_on(paths, auto(Engine::Turn), times)
}

fn turn_on(
    paths: &ModelPaths,
    device: Device,
    times: &mut LoadTimes,
) -> Result<Arc<dyn TurnDetector>> {
    timed(times, "turn", device, || {
        let t = SmartTurn::load_on(&paths.ort, &paths.turn, &paths.mel, device)?;
        // The first run sets up ONNX Runtime's kernels (on a GPU, its
        // cuDNN algorithms) for the one input shape there is.
        t.predict(&[0.0; crate::engines::MODEL_RATE as usize])?;
        Ok(Arc::new(t) as Arc<dyn TurnDetector>)
    })
}

pub fn stt(paths: &ModelPaths, times: &mut LoadTimes) -> Result<Arc<dyn Stt>> {
    stt_on(paths, auto(Engine::Stt), 0, times)
}

/// Whisper on `device`, behind a first-come, first-served queue of
/// `parallel` places (0: none on the CPU, one on a GPU).
fn stt_on(
    paths: &ModelPaths,
    device: Device,
    parallel: usize,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Stt>> {
    timed(times, "stt", device, || {
        let options = WhisperOptions {
            device: device.candle()?,
            ..WhisperOptions::default()
        };
        let w = Whisper::load(&paths.stt, &paths.mel, options)?;
        w.warm_up()?;
        let w: Arc<dyn Stt> = Arc::new(w);
        Ok(match (parallel, device.is_gpu()) {
            (0, false) => w,
            (0, true) => Arc::new(FairStt::new(w, 1)),
            (n, _) => Arc::new(FairStt::new(w, n)),
        })
    })
}

pub fn llm(paths: &ModelPaths, times: &mut LoadTimes) -> Result<Arc<dyn Llm>> {
    let cfg = Config::default();
    llm_on(paths, auto(Engine::Llm), &cfg.llm, sequences(&cfg), times)
}

/// Sequences of the shared LLM context: one per call the server admits,
/// phone and demo, so that a demo call never leaves a phone call without
/// one.
fn sequences(cfg: &Config) -> usize {
    if cfg.llm.batch {
        cfg.server.max_calls + cfg.server.demo_lines()
    } else {
        0
    }
}

fn llm_on(
    paths: &ModelPaths,
    device: Device,
    cfg: &LlmConfig,
    parallel: usize,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Llm>> {
    timed(times, "llm", device, || {
        let options = LlamaOptions {
            n_ctx: cfg.context_tokens,
            device,
            parallel,
            ..LlamaOptions::default()
        };
        let engine = LlamaEngine::load(&paths.llm, options)?;
        engine.warm_up()?;
        Ok(Arc::new(engine) as Arc<dyn Llm>)
    })
}

/// The STT `cfg` chooses: the model set's Whisper, or Deepgram's streaming API.
pub fn stt_for(
    cfg: &SttConfig,
    device: Device,
    paths: &ModelPaths,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Stt>> {
    Ok(match cfg.backend {
        SttBackend::Local => stt_on(paths, device, cfg.parallel, times)?,
        SttBackend::Deepgram => {
            Arc::new(DeepgramStt::new(endpoint(&cfg.deepgram, "stt.deepgram")?))
        }
    })
}

/// The LLM `cfg` chooses: the model set's GGUF, or an OpenAI-compatible API.
/// `parallel`: sequences of a shared context, 0 for a context per call.
pub fn llm_for(
    cfg: &LlmConfig,
    device: Device,
    parallel: usize,
    paths: &ModelPaths,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Llm>> {
    Ok(match cfg.backend {
        LlmBackend::Local => llm_on(paths, device, cfg, parallel, times)?,
        LlmBackend::OpenAi => Arc::new(OpenAiChat::new(endpoint(&cfg.api, "llm.api")?)),
    })
}

/// The TTS `cfg` chooses: the model set's Piper voice, or Deepgram's.
pub fn tts_for(
    cfg: &TtsConfig,
    device: Device,
    paths: &ModelPaths,
    times: &mut LoadTimes,
) -> Result<Arc<dyn Tts>> {
    Ok(match cfg.backend {
        TtsBackend::Local => piper(
            paths,
            times,
            PiperOptions {
                device,
                ..PiperOptions::default()
            },
        )?,
        // The base URL's scheme picks the transport.
        TtsBackend::Deepgram if cfg.deepgram.base_url.starts_with("ws") => Arc::new(
            DeepgramSpeakWs::new(endpoint(&cfg.deepgram, "tts.deepgram")?),
        ),
        TtsBackend::Deepgram => {
            Arc::new(DeepgramTts::new(endpoint(&cfg.deepgram, "tts.deepgram")?))
        }
    })
}

/// The endpoint configured at `table`, its key read from the environment
/// now, so that a missing key stops the server at start rather than failing
/// the first call. An empty variable name: a server that wants no key.
fn endpoint(api: &ApiConfig, table: &str) -> Result<Endpoint> {
    let api_key = match api.api_key_env.trim() {
        "" => None,
        var => Some(std::env::var(var).map_err(|_| {
            Error::Config(format!(
                "{table} needs a key in {var} ({table}.api_key_env), which is not set"
            ))
        })?),
    };
    Ok(Endpoint {
        base_url: api.base_url.clone(),
        model: api.model.clone(),
        api_key,
        timeout: Duration::from_secs_f32(api.timeout_secs),
    })
}

/// `models` (the model set's, from [`describe`]) with the API backends `cfg`
/// chooses in place of the local models they replace, so traces name what
/// really wrote and spoke the replies.
pub fn with_apis(mut models: Vec<ModelInfo>, cfg: &Config) -> Vec<ModelInfo> {
    let mut replace = |engine: &str, file: &str, source: &str| {
        models.retain(|m| m.engine != engine);
        models.push(ModelInfo {
            engine: engine.into(),
            file: file.into(),
            source: Some(source.into()),
        });
    };
    if cfg.llm.backend == LlmBackend::OpenAi {
        replace("llm", &cfg.llm.api.model, &cfg.llm.api.base_url);
    }
    if cfg.stt.backend == SttBackend::Deepgram {
        replace("stt", &cfg.stt.deepgram.model, &cfg.stt.deepgram.base_url);
    }
    if cfg.tts.backend == TtsBackend::Deepgram {
        replace("tts", &cfg.tts.deepgram.model, &cfg.tts.deepgram.base_url);
    }
    models
}

pub fn tts(paths: &ModelPaths, times: &mut LoadTimes) -> Result<Arc<dyn Tts>> {
    let options = PiperOptions {
        device: auto(Engine::Tts),
        ..PiperOptions::default()
    };
    piper(paths, times, options)
}

/// The voice of simulated callers (demo, bench, soak, tests): the bot's
/// voice without its random variation, so every run asks the same audio.
pub fn caller_voice(paths: &ModelPaths, times: &mut LoadTimes) -> Result<Arc<dyn Tts>> {
    let options = PiperOptions {
        variation: false,
        device: auto(Engine::Tts),
        ..PiperOptions::default()
    };
    piper(paths, times, options)
}

fn piper(paths: &ModelPaths, times: &mut LoadTimes, options: PiperOptions) -> Result<Arc<dyn Tts>> {
    timed(times, "tts", options.device, || {
        let p = Piper::load(&paths.ort, &paths.tts, options)?;
        // The first run initialises ONNX Runtime's kernels for this graph.
        p.synthesize("Hi.", &mut |_| true)?;
        Ok(Arc::new(p) as Arc<dyn Tts>)
    })
}

pub fn denoiser() -> Arc<dyn Denoiser> {
    Arc::new(Rnnoise)
}

/// Which model file plays which part, and where it came from: for traces
/// and `/health`, so a result can always be tied to the models behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub engine: String,
    pub file: String,
    /// `package==version` (or the download's name and version).
    pub(crate) source: Option<String>,
}

/// The models of `set` in `manifest`.
pub fn describe(manifest: &crate::models::manifest::Manifest, set: &str) -> Vec<ModelInfo> {
    let Ok(spec) = manifest.set(set) else {
        return Vec::new();
    };
    let roles = [
        ("vad", &spec.vad),
        ("turn", &spec.turn),
        ("stt", &spec.stt),
        ("mel", &spec.mel),
        ("llm", &spec.llm),
        ("tts", &spec.tts),
        ("onnxruntime", &spec.ort),
    ];
    roles
        .into_iter()
        .filter_map(|(engine, file)| {
            let file = file.as_ref()?;
            let source = manifest
                .sources
                .iter()
                .find(|s| {
                    s.files
                        .iter()
                        .any(|f| f.to == *file || file.starts_with(&format!("{}/", f.to)))
                        || s.convert_whisper.as_ref().is_some_and(|c| c.to == *file)
                })
                .map(|s| format!("{}=={}", s.name, s.version));
            Some(ModelInfo {
                engine: engine.to_string(),
                file: file.clone(),
                source,
            })
        })
        .collect()
}

/// Every engine a call needs, loaded once per process and shared.
#[derive(Clone)]
pub struct Engines {
    pub vad: Arc<dyn Vad>,
    pub turn: Arc<dyn TurnDetector>,
    pub stt: Arc<dyn Stt>,
    pub llm: Arc<dyn Llm>,
    pub tts: Arc<dyn Tts>,
    pub denoiser: Arc<dyn Denoiser>,
    pub load_times: LoadTimes,
    /// Filled in by whoever knows the manifest (see [`describe`]).
    pub models: Vec<ModelInfo>,
}

impl Engines {
    pub(crate) fn load(paths: &ModelPaths, cfg: &Config) -> Result<Self> {
        let mut t = LoadTimes::default();
        let on = |e| cfg.devices.resolve(e);
        Ok(Self {
            vad: vad_on(paths, cfg.vad, on(Engine::Vad)?, &mut t)?,
            turn: turn_on(paths, on(Engine::Turn)?, &mut t)?,
            stt: stt_for(&cfg.stt, on(Engine::Stt)?, paths, &mut t)?,
            llm: llm_for(&cfg.llm, on(Engine::Llm)?, sequences(cfg), paths, &mut t)?,
            tts: tts_for(&cfg.tts, on(Engine::Tts)?, paths, &mut t)?,
            denoiser: denoiser(),
            load_times: t,
            models: Vec::new(),
        })
    }
}
