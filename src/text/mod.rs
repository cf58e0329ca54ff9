//! Text utilities that tools, tests and benchmarks share.

pub mod sentence;
pub mod spoken;
pub mod wer;
