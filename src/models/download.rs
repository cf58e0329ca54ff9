//! Resumable, verified HTTP downloads (Hugging Face for the GPU set).
//!
//! A download writes `NAME.partial` and resumes it with a `Range` request
//! after an interruption. Redirects are followed by hand because the hub puts
//! the checksum on the first response (`X-Linked-Etag`, the SHA-256 of an LFS
//! file) and the CDN it redirects to does not. Small non-LFS files carry the
//! git blob SHA-1 as their ETag instead; both are verified. A file lands under
//! its final name only after its checksum matched.

use std::path::Path;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, ETAG, LOCATION, RANGE};
use reqwest::StatusCode;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::fetch::partial_path;
use crate::error::{Error, Result};

const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Sha256(String),
    GitBlobSha1(String),
}

pub async fn fetch_file(url: &str, dest: &Path, pinned_sha256: Option<&str>) -> Result<()> {
    let net = |e: reqwest::Error| Error::engine("download", format!("{url}: {e}"));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(20))
        .user_agent(concat!("callbox/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(net)?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = partial_path(dest);
    let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);

    let mut expected = pinned_sha256.map(|h| Expected::Sha256(h.to_ascii_lowercase()));
    let mut target = url.to_string();
    let mut resp = None;
    for _ in 0..MAX_REDIRECTS {
        let mut req = client.get(&target);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let r = req.send().await.map_err(net)?;
        if expected.is_none() {
            expected = expected_from_headers(r.headers());
        }
        if r.status().is_redirection() {
            let loc = r
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Error::engine("download", format!("{target}: redirect without Location"))
                })?;
            target = reqwest::Url::parse(&target)
                .and_then(|base| base.join(loc))
                .map_err(|e| Error::engine("download", format!("{target}: bad Location: {e}")))?
                .to_string();
            continue;
        }
        resp = Some(r);
        break;
    }
    let resp =
        resp.ok_or_else(|| Error::engine("download", format!("{url}: too many redirects")))?;
    let status = resp.status();
    let append = match status {
        StatusCode::PARTIAL_CONTENT => true,
        StatusCode::OK => {
            have = 0;
            false
        }
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => true, // already complete
        s => {
            return Err(Error::engine("download", format!("{url}: HTTP {s}")));
        }
    };
    let expected = expected.ok_or_else(|| {
        Error::engine(
            "download",
            format!("{url}: no checksum pinned in the manifest and none published by the server"),
        )
    })?;

    let total = resp.content_length().map(|n| n + have);
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}",
        )
        .expect("static template"),
    );
    bar.set_message(
        dest.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string(),
    );
    bar.set_position(have);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(&partial)
        .await?;
    if status != StatusCode::RANGE_NOT_SATISFIABLE {
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(net)?;
            file.write_all(&chunk).await?;
            bar.inc(chunk.len() as u64);
        }
    }
    file.flush().await?;
    drop(file);
    bar.finish_and_clear();

    verify(&partial, &expected).inspect_err(|_| {
        // A corrupt partial file would poison every later resume.
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, dest)?;
    eprintln!("  → {}", dest.display());
    Ok(())
}

fn expected_from_headers(h: &HeaderMap) -> Option<Expected> {
    let raw = h
        .get("x-linked-etag")
        .or_else(|| h.get(ETAG))
        .and_then(|v| v.to_str().ok())?;
    let tag = raw
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match tag.len() {
        64 => Some(Expected::Sha256(tag)),
        40 => Some(Expected::GitBlobSha1(tag)),
        _ => None,
    }
}

fn verify(path: &Path, expected: &Expected) -> Result<()> {
    let got = match expected {
        Expected::Sha256(_) => super::sha256_file(path)?,
        Expected::GitBlobSha1(_) => {
            let data = std::fs::read(path)?;
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", data.len()).as_bytes());
            h.update(&data);
            hex::encode(h.finalize())
        }
    };
    let want = match expected {
        Expected::Sha256(w) | Expected::GitBlobSha1(w) => w,
    };
    if &got == want {
        Ok(())
    } else {
        Err(Error::corrupt(
            "downloaded file",
            path,
            format!("checksum {got}, expected {want}"),
        ))
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
