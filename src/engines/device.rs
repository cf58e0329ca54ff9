//! Where each engine runs: the CPU or one CUDA GPU.
//!
//! Configured per engine (`[devices]`), because the right answer differs:
//! the LLM and Whisper are an order of magnitude faster on a GPU, while
//! Silero's 32 ms windows cost less on a CPU core than a kernel launch and a
//! copy each way. `auto` picks the GPU for the engines that gain from it when
//! the binary was built with the `cuda` feature, and the CPU otherwise.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A resolved placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    pub(crate) fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The candle device for this placement (Whisper).
    pub(crate) fn candle(self) -> Result<candle_core::Device> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(i) => candle_core::Device::new_cuda(i)
                .map_err(|e| Error::engine("whisper", format!("CUDA device {i}: {e}"))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A placement as configured: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whether this binary can run engines on a GPU at all.
pub(crate) const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// The engines that can be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Vad,
    Turn,
    Stt,
    Llm,
    Tts,
}

impl Engine {
    pub(crate) const ALL: [Engine; 5] = [
        Engine::Vad,
        Engine::Turn,
        Engine::Stt,
        Engine::Llm,
        Engine::Tts,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Engine::Vad => "vad",
            Engine::Turn => "turn",
            Engine::Stt => "stt",
            Engine::Llm => "llm",
            Engine::Tts => "tts",
        }
    }

    /// Where `auto` puts this engine in a CUDA build. Silero runs one
    /// 512-sample window at a time (~0.1 ms on a CPU core): a GPU would
    /// spend longer launching kernels and copying than computing.
    fn gpu_by_default(self) -> bool {
        !matches!(self, Engine::Vad)
    }
}

/// Every engine's placement (`[devices]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Devices {
    pub vad: DeviceChoice,
    pub turn: DeviceChoice,
    pub stt: DeviceChoice,
    pub llm: DeviceChoice,
    pub tts: DeviceChoice,
}

impl Devices {
    fn choice(&self, engine: Engine) -> DeviceChoice {
        match engine {
            Engine::Vad => self.vad,
            Engine::Turn => self.turn,
            Engine::Stt => self.stt,
            Engine::Llm => self.llm,
            Engine::Tts => self.tts,
        }
    }

    /// Where `engine` runs in this binary. Asking a CPU-only build for a GPU
    /// is a configuration error, not a silent fallback: a deployment that
    /// expects a GPU and quietly runs on the CPU is ten times slower.
    pub(crate) fn resolve(&self, engine: Engine) -> Result<Device> {
        Self::resolve_in(self.choice(engine), engine, CUDA_BUILD)
    }

    fn resolve_in(choice: DeviceChoice, engine: Engine, cuda_build: bool) -> Result<Device> {
        match choice {
            DeviceChoice::Auto if cuda_build && engine.gpu_by_default() => Ok(Device::Cuda(0)),
            DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) if cuda_build => Ok(Device::Cuda(i)),
            DeviceChoice::Cuda(_) => Err(Error::Config(format!(
                "devices.{} = \"{choice}\", but this callbox was built without the cuda feature \
                 (build one with scripts/build-cuda.sh, or set devices.{} = \"cpu\")",
                engine.key(),
                engine.key()
            ))),
        }
    }

    /// Every placement resolved, failing on the first impossible one.
    pub(crate) fn validate(&self) -> Result<()> {
        Engine::ALL
            .into_iter()
            .try_for_each(|e| self.resolve(e).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for (s, c) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), c);
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert!("tpu"
            .parse::<DeviceChoice>()
            .unwrap_err()
            .contains("cuda:N"));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_follows_the_build_and_the_engine() {
        let r = Devices::resolve_in;
        assert_eq!(
            r(DeviceChoice::Auto, Engine::Llm, true).unwrap(),
            Device::Cuda(0)
        );
        assert_eq!(
            r(DeviceChoice::Auto, Engine::Vad, true).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            r(DeviceChoice::Auto, Engine::Stt, false).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            r(DeviceChoice::Cpu, Engine::Llm, true).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            r(DeviceChoice::Cuda(1), Engine::Tts, true).unwrap(),
            Device::Cuda(1)
        );
        let e = r(DeviceChoice::Cuda(0), Engine::Stt, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("devices.stt") && e.contains("cuda feature"),
            "{e}"
        );
    }
}
