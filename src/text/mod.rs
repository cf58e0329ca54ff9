//! Text utilities that tools, tests and benchmarks share.

pub(crate) mod sentence;
pub mod spoken;
pub mod wer;
