//! The API stack's engines: each speaks a provider's real wire protocol and
//! stands behind the same trait as the local engine it replaces, so a model
//! set can swap one for the other (and `callbox bench --compare` can A/B
//! them).
//! - [`openai`]: chat completions from Groq or any OpenAI-compatible API;
//! - [`deepgram_stt`]: nova-3 speech to text over Deepgram's listen websocket;
//! - [`deepgram_tts`]: Aura text to speech over HTTP (and the Deepgram
//!   helpers both TTS clients share);
//! - [`deepgram_tts_ws`]: Aura over the speak websocket;
//! - [`http`]: the endpoint, client and error handling they have in common.

pub mod deepgram_stt;
pub mod deepgram_tts;
pub mod deepgram_tts_ws;
pub mod http;
pub mod openai;
