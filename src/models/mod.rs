//! Model provisioning: the manifest, the cache, fetching and converting.
//!
//! The cache lives outside the repository (`$CALLBOX_MODELS`, default
//! `~/.cache/callbox/models`). Engines never search for files: they get the
//! [`ModelPaths`] of one set, resolved here, and every missing file is reported
//! with the command that provisions it.

pub(crate) mod convert;
pub mod download;
pub mod fetch;
pub mod manifest;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
pub use manifest::Manifest;

/// Where the models of one set are.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub vad: PathBuf,
    pub turn: PathBuf,
    /// A directory holding `model.safetensors`, `config.json`, `tokenizer.json`.
    pub stt: PathBuf,
    pub mel: PathBuf,
    pub llm: PathBuf,
    /// The Piper `.onnx`; its `.onnx.json` sits next to it.
    pub tts: PathBuf,
    pub ort: PathBuf,
}

pub struct ModelStore {
    pub root: PathBuf,
    pub manifest: Manifest,
}

impl ModelStore {
    pub(crate) fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("CALLBOX_MODELS").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache/callbox/models")
    }

    pub fn open(root: Option<PathBuf>, manifest: Option<&Path>) -> Result<Self> {
        Ok(Self {
            root: root.unwrap_or_else(Self::default_root),
            manifest: Manifest::load(manifest)?,
        })
    }

    pub fn paths(&self, set: &str) -> Result<ModelPaths> {
        let spec = self.manifest.set(set)?;
        let role = |name: &str, v: &Option<String>| -> Result<PathBuf> {
            v.as_ref()
                .map(|p| self.root.join(p))
                .ok_or_else(|| Error::Config(format!("model set {set:?} has no {name} model")))
        };
        Ok(ModelPaths {
            vad: role("vad", &spec.vad)?,
            turn: role("turn", &spec.turn)?,
            stt: role("stt", &spec.stt)?,
            mel: role("mel", &spec.mel)?,
            llm: role("llm", &spec.llm)?,
            tts: role("tts", &spec.tts)?,
            ort: role("ort", &spec.ort)?,
        })
    }

    /// Compares the cache with the manifest for `set`; hashes every file when
    /// `verify` is set (about a second for the default set).
    pub(crate) fn check(&self, set: &str, verify: bool) -> Result<Vec<FileStatus>> {
        self.manifest.set(set)?;
        let mut out = Vec::new();
        for src in self.manifest.sources_for(set) {
            for f in &src.files {
                let path = self.root.join(&f.to);
                let state = file_state(&path, f.sha256.as_deref(), verify);
                out.push(FileStatus {
                    source: src.name.clone(),
                    path,
                    state,
                });
            }
            if let Some(j) = &src.join {
                let path = self.root.join(&j.to);
                out.push(FileStatus {
                    source: format!("{} (joined)", src.name),
                    state: file_state(&path, Some(&j.sha256), verify),
                    path,
                });
            }
            if let Some(c) = &src.convert_whisper {
                let path = self.root.join(&c.to);
                let state = if convert::WHISPER_OUTPUTS
                    .iter()
                    .all(|f| path.join(f).is_file())
                {
                    FileState::Ok
                } else {
                    FileState::Missing
                };
                out.push(FileStatus {
                    source: format!("{} (converted)", src.name),
                    path,
                    state,
                });
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FileState {
    Ok,
    Missing,
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub(crate) struct FileStatus {
    pub(crate) source: String,
    pub(crate) path: PathBuf,
    pub(crate) state: FileState,
}

fn file_state(path: &Path, sha256: Option<&str>, verify: bool) -> FileState {
    if !path.is_file() {
        return FileState::Missing;
    }
    match (verify, sha256) {
        (true, Some(want)) => match sha256_file(path) {
            Ok(got) if got.eq_ignore_ascii_case(want) => FileState::Ok,
            Ok(got) => FileState::Corrupt(format!("sha256 {got}, expected {want}")),
            Err(e) => FileState::Corrupt(e.to_string()),
        },
        _ => FileState::Ok,
    }
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Fails with the fix command when a model file or directory is absent.
pub(crate) fn require(what: &str, path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::missing(what, path))
    }
}
