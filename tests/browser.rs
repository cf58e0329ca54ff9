//! The browser demo end to end: Debian's Chromium, headless, with a fake
//! microphone that plays a WAV of a caller's question, talks to the real
//! server through `GET /demo` and `WS /demo/ws`, on the real default
//! models. Chromium resolves no host but this one, as with the network cut.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callbox::audio::{wav, Audio};
use callbox::engines::MODEL_RATE;
use callbox::events::TurnKind;
use callbox::text::wer::wer;
use common::server::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

/// chromedriver on a free port, installed first if missing; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromedriver() -> Driver {
    let found = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found("chromedriver") {
        let ok = Command::new("bash")
            .arg(repo().join("scripts/install-browser.sh"))
            .status()
            .expect("running scripts/install-browser.sh");
        assert!(ok.success(), "installing chromium and chromedriver failed");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

fn chromium_binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is installed")
}

/// The caller's side of the call: quiet while the bot greets, the question,
/// then quiet for the answer. Chromium plays it once from the start of
/// capture.
fn microphone_wav(dir: &Path) -> PathBuf {
    let mut audio = Audio::silence(7.0, MODEL_RATE);
    audio.append(&common::speech(QUESTION));
    audio.append(&Audio::silence(30.0, MODEL_RATE));
    let path = dir.join("caller.wav");
    wav::write(&path, &audio).unwrap();
    path
}

async fn browser(driver: &Driver, microphone: &Path) -> Client {
    let args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1400,1000".into(),
        "--autoplay-policy=no-user-gesture-required".into(),
        "--use-fake-ui-for-media-stream".into(),
        "--use-fake-device-for-media-stream".into(),
        format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            microphone.display()
        ),
        // The network cut: no name resolves but the test server's.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into(),
    ];
    let caps = json!({"goog:chromeOptions": {"binary": chromium_binary(), "args": args}});
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new()).await.unwrap()
}

/// Polls `script` until it returns true.
async fn until(c: &Client, script: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if js(c, script).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = js(c, "return document.body.innerText").await;
            panic!("{what}: not within {limit:?}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_call_is_greeted_heard_answered_and_drawn() {
    let (state, addr) = start(|_| {}).await;
    let tmp = std::env::temp_dir().join(format!("callbox-browser-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let driver = chromedriver();
    let c = browser(&driver, &microphone_wav(&tmp)).await;
    let result = talk(&c, addr).await;
    let _ = c.close().await;
    let sid = result.unwrap_or_else(|e| panic!("{e}"));

    // The server's side of the same call: the greeting was played out by
    // the page (the marks came back), the question heard, a reply played.
    let s = summary(&state, &sid).await;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.turns[0].kind, TurnKind::Greeting);
    assert!(!s.turns[0].interrupted, "{:?}", s.turns[0]);
    assert_eq!(s.turns[0].heard_text, s.turns[0].bot_text);
    let turn = s
        .turns
        .iter()
        .find(|t| t.kind == TurnKind::Turn)
        .expect("a caller turn");
    assert!(
        wer(QUESTION, &turn.user_text) <= 0.4,
        "{:?}",
        turn.user_text
    );
    assert!(!turn.bot_text.is_empty());
    assert!(turn.total_ms.is_some() && turn.stt_ms.is_some());
}

async fn click(c: &Client, css: &str) -> Result<(), String> {
    let button = c.find(Locator::Css(css)).await.map_err(|e| e.to_string())?;
    button.click().await.map_err(|e| e.to_string())
}

/// The call through the page; returns its call id.
async fn talk(c: &Client, addr: SocketAddr) -> Result<String, String> {
    c.goto(&format!("http://{addr}/demo"))
        .await
        .map_err(|e| e.to_string())?;
    click(c, "#call").await?;
    // The greeting arrives and plays.
    until(
        c,
        "return [...document.querySelectorAll('#transcript li.bot')].some(l => !l.classList.contains('pending') && l.textContent.length > 10)",
        Duration::from_secs(60),
        "the greeting in the transcript",
    )
    .await;
    // The question is heard and answered, and its turn is drawn.
    until(
        c,
        "return document.querySelectorAll('#waterfall .row .bar').length >= 6",
        Duration::from_secs(120),
        "a waterfall row",
    )
    .await;
    let user = js(
        c,
        "return [...document.querySelectorAll('#transcript li.user')].map(l => l.textContent)",
    )
    .await;
    let said = user[0].as_str().unwrap_or_default().to_string();
    if wer(QUESTION, &said) > 0.4 {
        return Err(format!("the transcript line says {said:?}"));
    }
    let bars = js(
        c,
        "return [...document.querySelectorAll('#waterfall .row:first-child .bar')].map(b => [b.querySelector('.name').textContent, b.querySelector('.ms').textContent, b.querySelector('.fill').style.width])",
    )
    .await;
    let names: Vec<&str> = bars
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[0].as_str().unwrap())
        .collect();
    for stage in ["End-of-speech", "Total", "STT", "Smart Turn", "LLM", "TTS"] {
        if !names.contains(&stage) {
            return Err(format!("no {stage} bar in {bars}"));
        }
    }
    for b in bars.as_array().unwrap() {
        let ms: f64 = b[1]
            .as_str()
            .unwrap()
            .trim_end_matches(" ms")
            .parse()
            .unwrap();
        let width: f64 = b[2]
            .as_str()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        if !(ms > 0.0 && width > 0.0) {
            return Err(format!("an empty bar: {b}"));
        }
    }
    // Wait for the reply to be played out, then the screenshot.
    until(
        c,
        "return document.querySelectorAll('#transcript li.bot:not(.pending)').length >= 2",
        Duration::from_secs(60),
        "the reply in the transcript",
    )
    .await;
    let png = c.screenshot().await.map_err(|e| e.to_string())?;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-demo.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Hang up: the page offers the recording and the trace.
    click(c, "#call").await?;
    until(
        c,
        "return !document.getElementById('downloads').hidden",
        Duration::from_secs(30),
        "the downloads",
    )
    .await;
    let links = js(
        c,
        "return [document.getElementById('recording').href, document.getElementById('trace').href]",
    )
    .await;
    let http = reqwest::Client::new();
    let recording = http
        .get(links[0].as_str().unwrap())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !recording.status().is_success() {
        return Err(format!("recording: {}", recording.status()));
    }
    let wav_bytes = recording.bytes().await.map_err(|e| e.to_string())?;
    let rec = hound::WavReader::new(std::io::Cursor::new(wav_bytes.to_vec()))
        .map_err(|e| format!("the recording is no WAV: {e}"))?;
    if rec.spec().channels != 2 || rec.duration() < 8000 * 10 {
        return Err(format!(
            "recording {:?}, {} frames",
            rec.spec(),
            rec.duration()
        ));
    }
    let trace: Value = http
        .get(links[1].as_str().unwrap())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let sid = trace["call"]["call_sid"]
        .as_str()
        .ok_or("a trace without its call id")?
        .to_string();
    Ok(sid)
}

#[tokio::test]
async fn the_page_names_no_other_host_and_its_browsers_are_local_by_default() {
    // Every URL in the served files is this server's own path.
    for (name, text) in callbox::server::demo::assets() {
        for (i, line) in text.lines().enumerate() {
            assert!(
                !names_another_host(line),
                "{name}:{} names another host: {line}",
                i + 1
            );
        }
    }
    let (_, addr) = start(|_| {}).await;
    let page = reqwest::get(format!("http://{addr}/demo")).await.unwrap();
    assert!(page.status().is_success());
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    for asset in ["/demo/app.js", "/demo/demo.css"] {
        assert!(html.contains(asset), "{asset}");
        let r = reqwest::get(format!("http://{addr}{asset}")).await.unwrap();
        assert!(r.status().is_success(), "{asset}: {}", r.status());
    }
    // Turned off, the page and its socket refuse.
    let (_, addr) = start(|c| c.server.demo = callbox::config::DemoAccess::Off).await;
    for path in ["/demo", "/demo/app.js"] {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    match tokio_tungstenite::connect_async(format!("ws://{addr}/demo/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("the socket was not refused: {:?}", other.map(|_| ())),
    }
}

/// Whether `line` names a host: a scheme followed by `//`, or a
/// protocol-relative `//host`. The page's own URLs are paths (`/demo/…`) or
/// built from `location`.
fn names_another_host(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    let with_scheme = ["http:", "https:", "ws:", "wss:", "ftp:"].iter().any(|s| {
        l.match_indices(s)
            .any(|(i, _)| l[i + s.len()..].starts_with("//"))
    });
    let protocol_relative = ["\"//", "'//", "(//", "=//"].iter().any(|p| l.contains(p));
    with_scheme || protocol_relative
}
