//! Typed errors for the library. The CLI wraps them in `anyhow` for context;
//! every variant that concerns a file names that file and the command that
//! repairs it, because "model not found" without a fix wastes an operator's time.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is missing: {path}\n  fix: {fix}")]
    Missing {
        what: String,
        path: PathBuf,
        fix: String,
    },
    #[error("{what} at {path} is unusable: {reason}\n  fix: {fix}")]
    Corrupt {
        what: String,
        path: PathBuf,
        reason: String,
        fix: String,
    },
    #[error("{engine} failed: {reason}")]
    Engine {
        engine: &'static str,
        reason: String,
    },
    #[error("audio error: {0}")]
    Audio(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The command that provisions the default model set; quoted in every
/// "missing model" message.
pub(crate) const FETCH_COMMAND: &str = "callbox models fetch";

impl Error {
    pub fn engine(engine: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Engine {
            engine,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn missing(what: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Error::Missing {
            what: what.into(),
            path: path.into(),
            fix: FETCH_COMMAND.to_string(),
        }
    }

    pub(crate) fn corrupt(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        reason: impl ToString,
    ) -> Self {
        Error::Corrupt {
            what: what.into(),
            path: path.into(),
            reason: reason.to_string(),
            fix: format!("{FETCH_COMMAND} --force"),
        }
    }
}
