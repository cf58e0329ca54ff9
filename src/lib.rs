//! callbox: a Twilio phone agent that runs its whole voice stack in one
//! process — Silero VAD, Smart Turn v3, Whisper, a llama.cpp LLM, Piper and
//! RNNoise — so that no turn pays for a network hop between services.
//!
//! Modules, from the bottom up:
//! - [`audio`]: PCM buffers with their rate, μ-law, resampling, log-mel, WAV.
//! - [`models`]: the manifest, the model cache, fetching and conversion.
//! - [`engines`]: one trait per engine and the local implementations.
//! - [`session`]: one call, from the caller's frames to the bot's reply.
//! - [`tools`]: what the bot does besides talk (end the call, transfer it).
//! - [`observe`]: events from every stage → logs, metrics, per-call traces.
//! - [`server`]: Twilio's webhook and media websocket, health, metrics.
//! - [`text`]: text utilities shared by tools and tests (word error rate).
//! - [`cli`]: the command-line tools.
//!
//! `fuzzing` holds the checks the fuzz targets in `fuzz/` run.
//!
//! The `testkit` feature (on by default) adds what drives a server from
//! outside: [`sim`] (a simulated Twilio caller), [`fakes`] (Groq's and
//! Deepgram's APIs, faked at the network edge), [`fuzzing`], and the
//! commands built on them (`demo`, `sim`, `bench`, `soak`, `fake-apis`).
//! `serve` needs none of it: `cargo build --release --no-default-features`
//! builds the server without them.
//!
//! Items are `pub(crate)` unless the binary, the integration tests or the
//! testkit's commands need them; `unreachable_pub` keeps a `pub` that
//! nothing outside can reach from creeping back.
#![warn(unreachable_pub)]

pub mod audio;
pub mod cli;
pub mod config;
pub mod engines;
pub mod error;
pub mod eval;
pub mod events;
#[cfg(feature = "testkit")]
pub mod fakes;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod fuzzing;
pub mod models;
pub mod observe;
pub mod persona;
pub mod private_files;
pub mod server;
pub mod session;
#[cfg(feature = "testkit")]
pub mod sim;
pub mod stack;
pub mod text;
pub mod tools;
pub mod twilio;

pub use error::{Error, Result};
