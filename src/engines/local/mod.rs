//! The engines that run their models in this process: Silero VAD and Smart
//! Turn through ONNX Runtime, Whisper through candle, the LLM through
//! llama.cpp, Piper (ONNX Runtime and espeak-ng) and RNNoise. Their API
//! counterparts are in [`super::api`]; both implement the traits of
//! [`super`], so the pipeline cannot tell them apart.

pub(crate) mod denoise;
pub mod llama;
pub(crate) mod onnx;
pub(crate) mod piper;
pub mod silero;
pub mod smart_turn;
pub(crate) mod whisper;
