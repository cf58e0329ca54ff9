//! Model provisioning: the Hugging Face download path against a local fake
//! hub (redirects, checksums in ETags, resumable ranges), and the errors a
//! user sees when a model is missing or broken.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use callbox::models::download::{fetch_file, sha256_hex};
use sha1::{Digest, Sha1};

/// A request the fake hub saw: path and `Range` header.
type Request = (String, Option<String>);

#[derive(Clone, Default)]
struct Hub {
    log: Arc<Mutex<Vec<Request>>>,
}

fn weights() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}
const CONFIG: &[u8] = br#"{"hello": "world"}"#;

fn git_blob_sha1(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// Hugging Face's shape: LFS files answer `resolve` with a redirect to the
/// CDN carrying `X-Linked-Etag` (SHA-256); small files answer directly with
/// the git blob SHA-1 as ETag; the CDN honours `Range`.
async fn resolve(State(hub): State<Hub>, UrlPath(file): UrlPath<String>, h: HeaderMap) -> Response {
    let range = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    hub.log
        .lock()
        .unwrap()
        .push((format!("resolve/{file}"), range));
    match file.as_str() {
        "weights.bin" => (
            StatusCode::FOUND,
            [
                (header::LOCATION, "/cdn/weights.bin".to_string()),
                (
                    header::HeaderName::from_static("x-linked-etag"),
                    format!("\"{}\"", sha256_hex(&weights())),
                ),
            ],
        )
            .into_response(),
        "bad.bin" => (
            StatusCode::FOUND,
            [
                (header::LOCATION, "/cdn/weights.bin".to_string()),
                (
                    header::HeaderName::from_static("x-linked-etag"),
                    format!("\"{}\"", sha256_hex(b"something else")),
                ),
            ],
        )
            .into_response(),
        "config.json" => (
            [(header::ETAG, format!("\"{}\"", git_blob_sha1(CONFIG)))],
            CONFIG.to_vec(),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn cdn(State(hub): State<Hub>, h: HeaderMap) -> Response {
    let range = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    hub.log
        .lock()
        .unwrap()
        .push(("cdn/weights.bin".into(), range.clone()));
    let data = weights();
    match range.and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    }) {
        Some(from) if from < data.len() => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
            )],
            data[from..].to_vec(),
        )
            .into_response(),
        Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        None => data.into_response(),
    }
}

/// Serves the fake hub on a thread of its own; returns its base URL.
fn serve() -> (String, Hub) {
    let hub = Hub::default();
    let app = Router::new()
        .route("/org/model/resolve/main/{file}", get(resolve))
        .route("/cdn/weights.bin", get(cdn))
        .with_state(hub.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (format!("http://{}", rx.recv().unwrap()), hub)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("callbox-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn download_resumes_and_verifies_the_etag_checksum() {
    let (base, hub) = serve();
    let dir = tempdir("resume");
    let dest = dir.join("weights.bin");
    // A previous run stopped after 1,000 bytes.
    std::fs::write(dir.join("weights.bin.partial"), &weights()[..1000]).unwrap();
    fetch_file(
        &format!("{base}/org/model/resolve/main/weights.bin"),
        &dest,
        None,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), weights());
    assert!(!dir.join("weights.bin.partial").exists());
    let log = hub.log.lock().unwrap().clone();
    assert!(
        log.contains(&("cdn/weights.bin".into(), Some("bytes=1000-".into()))),
        "{log:?}"
    );

    // Small files carry the git blob SHA-1.
    let cfg = dir.join("config.json");
    fetch_file(
        &format!("{base}/org/model/resolve/main/config.json"),
        &cfg,
        None,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&cfg).unwrap(), CONFIG);
}

#[tokio::test]
async fn a_checksum_mismatch_leaves_nothing_behind() {
    let (base, _) = serve();
    let dir = tempdir("bad");
    let dest = dir.join("bad.bin");
    let error = |file: &str, pin: Option<String>| {
        let (url, dest) = (
            format!("{base}/org/model/resolve/main/{file}"),
            dest.clone(),
        );
        async move {
            fetch_file(&url, &dest, pin.as_deref())
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let e = error("bad.bin", None).await;
    assert!(e.contains("checksum"), "{e}");
    assert!(!dest.exists() && !dir.join("bad.bin.partial").exists());
    // A pinned hash that does not match is refused too.
    let e = error("config.json", Some("0".repeat(64))).await;
    assert!(e.contains("checksum"), "{e}");
    let e = error("missing.bin", None).await;
    assert!(e.contains("404"), "{e}");
}

/// Runs the real binary with a deadline: a hang is a failure, not a stuck CI.
fn callbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("callbox {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn models_fetch_and_check_through_the_cli_with_a_fake_hub() {
    let (base, hub) = serve();
    let dir = tempdir("cli");
    let manifest = dir.join("manifest.toml");
    std::fs::write(
        &manifest,
        r#"version = 1
[sets.fixtures]
description = "small files standing in for the GPU set"
[[source]]
name = "fixture-model"
version = "main"
kind = "http"
licence = "MIT"
sets = ["fixtures"]
files = [
  { url = "{hf}/org/model/resolve/main/weights.bin", to = "fx/weights.bin" },
  { url = "{hf}/org/model/resolve/main/config.json", to = "fx/config.json" },
]
"#,
    )
    .unwrap();
    let models = dir.join("cache");
    let m = manifest.to_str().unwrap();
    let c = models.to_str().unwrap();
    let args = [
        "--manifest",
        m,
        "--models",
        c,
        "--set",
        "fixtures",
        "models",
    ];
    let env = [("HF_ENDPOINT", base.as_str())];
    let run = |extra: &str| callbox(&[&args[..], &[extra]].concat(), &env);

    let o = run("fetch");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(models.join("fx/weights.bin")).unwrap(),
        weights()
    );
    let requests = hub.log.lock().unwrap().len();
    // Idempotent: a second fetch downloads nothing.
    let o = run("fetch");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(hub.log.lock().unwrap().len(), requests);

    let o = run("check");
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(models.join("fx/config.json")).unwrap();
    let o = run("check");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("MISSING") && t.contains("fx/config.json"), "{t}");
    assert!(t.contains("callbox models fetch --set fixtures"), "{t}");
}

fn wav(dir: &Path) -> PathBuf {
    let p = dir.join("in.wav");
    callbox::audio::wav::write(&p, &callbox::audio::Audio::silence(0.5, 16000)).unwrap();
    p
}

#[test]
fn missing_and_corrupt_models_name_the_file_and_the_fix() {
    let dir = tempdir("missing");
    let input = wav(&dir);
    let empty = dir.join("empty-cache");
    let e = empty.to_str().unwrap();
    let i = input.to_str().unwrap();

    let o = callbox(&["--models", e, "transcribe", i], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(&format!("{e}/whisper-base")) && t.contains("callbox models fetch"),
        "{t}"
    );

    // The VAD model is present but ONNX Runtime is not: a clear error, no hang.
    let real = common::paths();
    let partial = dir.join("no-ort");
    std::fs::create_dir_all(&partial).unwrap();
    for (f, src) in [
        ("silero_vad.onnx", &real.vad),
        ("smart-turn-v3.2-cpu.onnx", &real.turn),
        ("mel_filters.npz", &real.mel),
    ] {
        std::os::unix::fs::symlink(src, partial.join(f)).unwrap();
    }
    let o = callbox(&["--models", partial.to_str().unwrap(), "vad", i], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("ONNX Runtime library") && t.contains("libonnxruntime.so.1.28.0"),
        "{t}"
    );
    assert!(t.contains("callbox models fetch"), "{t}");

    // A corrupt LLM file.
    std::fs::write(
        partial.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        b"this is not a model",
    )
    .unwrap();
    let o = callbox(
        &["--models", partial.to_str().unwrap(), "chat", "-m", "hello"],
        &[],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("not a GGUF file") && t.contains("callbox models fetch --force"),
        "{t}"
    );

    // An unknown model set.
    let o = callbox(&["--set", "nope", "models", "check"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown model set \"nope\""),
        "{}",
        text(&o)
    );
}
