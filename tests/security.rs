//! The server as an attacker meets it: every case is a hostile (or merely
//! careless) client on loopback against the real server, and each fails on
//! a server without the guard it checks.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use callbox::config::{Redact, Secret};
use callbox::engines::api::http::Endpoint;
use callbox::engines::api::openai::OpenAiChat;
use callbox::fakes::openai::{Behaviour as LlmBehaviour, FakeOpenAi, API_KEY};
use callbox::sim;
use common::fake_twilio::{Behaviour, FakeTwilio, ACCOUNT_SID};
use common::server::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The owner's token in these tests (32 characters or more, as required).
const OWNER: &str = "0123456789abcdef0123456789abcdef-owner";

fn get(url: String, bearer: Option<&str>) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new().get(url);
    match bearer {
        Some(b) => r.bearer_auth(b),
        None => r,
    }
}

async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_metrics_are_the_owners_and_calls_carry_no_persona() {
    let (state, addr) = start(|c| {
        c.server.api_token = Some(Secret(OWNER.into()));
        c.server.metrics_public = false;
    })
    .await;
    for path in ["/calls", "/metrics"] {
        let url = format!("http://{addr}{path}");
        assert_eq!(status(get(url.clone(), None)).await, 401, "{path}");
        assert_eq!(status(get(url.clone(), Some("guess"))).await, 401, "{path}");
        assert_eq!(status(get(url, Some(OWNER))).await, 200, "{path}");
    }
    // Health stays open: a load balancer's probe carries no token.
    assert_eq!(
        status(get(format!("http://{addr}/health"), None)).await,
        200
    );

    let opts = signed(format!("ws://{addr}/ws"), vec![turn_of("What is a cloud?")]);
    sim::run(opts).await.unwrap();
    settle(&state).await;
    let calls: serde_json::Value = get(format!("http://{addr}/calls"), Some(OWNER))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = calls[0]["history"].as_array().expect("a finished call");
    assert!(history.iter().any(|m| m["role"] == "user"), "{history:?}");
    assert!(
        history.iter().all(|m| m["role"] != "system"),
        "the persona is not the public's: {history:?}"
    );

    // Metrics made public on purpose need no token; calls never do.
    let (_s, open) = start(|c| {
        c.server.api_token = Some(Secret(OWNER.into()));
        c.server.metrics_public = true;
    })
    .await;
    assert_eq!(
        status(get(format!("http://{open}/metrics"), None)).await,
        200
    );
    assert_eq!(status(get(format!("http://{open}/calls"), None)).await, 401);
}

/// A reverse proxy on this host, as Caddy's `reverse_proxy` is: it connects
/// from 127.0.0.1 on behalf of whoever reached it and, when `forwarded`,
/// says so in `X-Forwarded-For` (Caddy, ngrok and cloudflared all do).
async fn same_host_proxy(upstream: SocketAddr, forwarded: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                // The request line, then our header, then the rest as is.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                if forwarded {
                    head.extend_from_slice(b"X-Forwarded-For: 203.0.113.7\r\n");
                }
                server.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    addr
}

fn demo_socket(
    addr: SocketAddr,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/demo/ws")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    req
}

/// The HTTP status a websocket handshake was refused with (0 if accepted).
async fn handshake(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 0,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("handshake failed oddly: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_visitors_through_a_same_host_proxy_and_other_sites() {
    let (_state, addr) = start(|_| {}).await;
    let page = |at: SocketAddr, host: Option<&str>| {
        let mut r = reqwest::Client::new().get(format!("http://{at}/demo"));
        if let Some(h) = host {
            r = r.header("Host", h);
        }
        status(r)
    };
    // The browser on this machine, directly: the default lets it in.
    assert_eq!(page(addr, None).await, 200);
    // Through a proxy that says so, from loopback with a loopback Host.
    let caddy = same_host_proxy(addr, true).await;
    assert_eq!(page(caddy, None).await, 403);
    // Through a proxy that passes the public name it was reached at.
    let tunnel = same_host_proxy(addr, false).await;
    assert_eq!(page(tunnel, Some("agent.example.com")).await, 403);
    let own = format!("http://{caddy}");
    assert_eq!(handshake(demo_socket(caddy, Some(&own))).await, 403);

    // Another site's script in this machine's browser, or no browser at all.
    assert_eq!(
        handshake(demo_socket(addr, Some("http://evil.example"))).await,
        403
    );
    assert_eq!(handshake(demo_socket(addr, None)).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_calls_have_lines_of_their_own_and_downloads_need_the_calls_key() {
    let (state, addr) = start(|c| {
        c.server.max_calls = 1;
        c.server.demo_max_calls = 1;
    })
    .await;
    let own = format!("http://{addr}");
    let (ws, _) = tokio_tungstenite::connect_async(demo_socket(addr, Some(&own)))
        .await
        .expect("the page's own socket");
    let (mut tx, mut rx) = ws.split();
    // The demo call is up: a second visitor waits, a phone caller does not.
    assert_eq!(handshake(demo_socket(addr, Some(&own))).await, 503);
    let url = format!("http://{addr}/");
    let twiml = sim::post_signed(
        AUTH_TOKEN,
        &url,
        &url,
        &sim::incoming_form(&sim::call_sid()),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        twiml.contains("<Stream"),
        "the phone line was free: {twiml}"
    );

    tx.send(Message::text(r#"{"event":"stop"}"#)).await.unwrap();
    let ended = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), rx.next())
            .await
            .expect("the call ends")
            .expect("an ended message")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "ended" {
                break v;
            }
        }
    };
    let link = ended["recording"].as_str().expect("a recording link");
    let (path, key) = link.split_once("?key=").expect("a keyed link");
    assert_eq!(status(get(format!("{own}{link}"), None)).await, 200);
    assert_eq!(status(get(format!("{own}{path}"), None)).await, 404);
    let wrong = format!("{own}{path}?key={}", "0".repeat(key.len()));
    assert_eq!(status(get(wrong, None)).await, 404);
    settle(&state).await;
}

/// The server's own sockets on `port` that still hold a descriptor: every
/// state but listening, TIME_WAIT and CLOSE (other tests in this process
/// have sockets of their own, so the process's descriptor count would not
/// do). A socket the server forgot to close stays in CLOSE_WAIT and counts.
fn server_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && !["06", "07", "0A"].contains(&f[3])
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_websockets_are_closed_at_the_deadline_while_real_calls_go_on() {
    let (state, addr) = start(|c| {
        c.server.start_timeout_secs = 2.0;
        c.server.max_pending_streams_per_address = 16;
    })
    .await;
    let baseline = server_sockets(addr.port());
    // A real caller, meanwhile, from 127.0.0.1.
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![turn_of("What colour is grass?")],
    );
    let call = tokio::spawn(sim::run(opts));

    // 500 sockets from another address that never send `start`.
    let url = format!("ws://{addr}/ws");
    let attempts = futures::stream::iter(0..500)
        .map(|_| {
            let url = url.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let stream = socket.connect(addr).await.unwrap();
                let opened = Instant::now();
                match tokio_tungstenite::client_async(url.as_str(), stream).await {
                    Ok((ws, _)) => Ok((ws, opened)),
                    Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .buffer_unordered(25)
        .collect::<Vec<_>>()
        .await;
    let refused = attempts.iter().filter(|a| matches!(a, Err(503))).count();
    let held: Vec<_> = attempts.into_iter().filter_map(Result::ok).collect();
    assert_eq!(held.len(), 16, "one address holds at most its share");
    assert_eq!(refused, 500 - 16);
    // Each is closed by the server once its deadline has passed.
    for (mut ws, opened) in held {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle socket was never closed");
        let after = opened.elapsed();
        assert!(after < Duration::from_secs(6), "closed after {after:?}");
    }
    let report = call.await.unwrap().expect("the real call went through");
    assert!(
        report.turns[0].latency_ms.is_some(),
        "the caller got no answer"
    );
    settle(&state).await;
    // Every descriptor the flood took is given back.
    let mut now = server_sockets(addr.port());
    for _ in 0..100 {
        if now <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = server_sockets(addr.port());
    }
    assert!(now <= baseline, "{now} sockets open, {baseline} before");
}

/// Reads until the server closes the connection; how long that took.
async fn until_closed(conn: &mut tokio::net::TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_http_clients_are_dropped() {
    let (_state, addr) = start(|c| c.server.header_timeout_secs = 1.0).await;
    // Slow-loris: a header line now and then, never the end of them.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let drip = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let t0 = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), drip).await;
    let (_, answer) = until_closed(&mut slow, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "dropped after {took:?}");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "it was served");

    // A webhook whose body never comes whole.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 100\r\n\r\nCallSid=",
    )
    .await
    .unwrap();
    let (after, answer) = until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{answer:?}");
    assert!(after < Duration::from_secs(4), "held for {after:?}");

    // An idle keep-alive connection, after one request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (after, answer) = until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(after < Duration::from_secs(4), "idle for {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_only_the_stream_of_its_own_call() {
    let (state, addr) = start(|_| {}).await;
    let call = sim::call_sid();
    let issued = sim::webhook(
        &format!("http://{addr}/"),
        AUTH_TOKEN,
        &sim::incoming_form(&call),
    )
    .await
    .unwrap();
    let another = sim::call_sid();
    assert!(!stream_accepted(addr, &another, &issued.params).await);
    assert!(!stream_accepted(addr, "CA1/../x", &issued.params).await);
    // A direction other than the token's is another token.
    let mut flipped = issued.params.clone();
    flipped.insert("direction".into(), "outbound".into());
    assert!(!stream_accepted(addr, &call, &flipped).await);
    assert!(stream_accepted(addr, &call, &issued.params).await);
    settle(&state).await;
}

/// `callbox serve` on `port`, with the test account's auth token.
fn serve_process(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("CALLBOX_SERVER__MAX_CALLS", "4")
        .env("CALLBOX_SERVER__DRAIN_SECS", "3")
        // Neither deadline may end the hostile connections by itself:
        // only the shutdown does.
        .env("CALLBOX_SERVER__START_TIMEOUT_SECS", "60")
        .env("CALLBOX_SERVER__HEADER_TIMEOUT_SECS", "60")
        .env(
            "CALLBOX_OBSERVE__TRACES_DIR",
            dir.join(format!("traces-{port}")),
        )
        .env(
            "CALLBOX_CALL__RECORDINGS_DIR",
            dir.join(format!("rec-{port}")),
        )
        .env("CALLBOX_LLM__MAX_TOKENS", "30")
        .env_remove("CALLBOX_API_TOKEN")
        .env_remove("TWILIO_ACCOUNT_SID")
        .env_remove("TWILIO_API_KEY")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_from_one_process_opens_the_stream_on_another_which_exits_promptly_on_sigterm() {
    common::store();
    let dir = std::env::temp_dir().join(format!("callbox-two-{}", std::process::id()));
    let (pa, pb) = (free_port(), free_port());
    let mut a = serve_process(pa, &dir);
    let mut b = serve_process(pb, &dir);
    wait_healthy(&mut a, pa).await;
    wait_healthy(&mut b, pb).await;

    // Twilio's webhook reaches A; its websocket reaches B.
    let call = sim::call_sid();
    let issued = sim::webhook(
        &format!("http://127.0.0.1:{pa}/"),
        AUTH_TOKEN,
        &sim::incoming_form(&call),
    )
    .await
    .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{pb}/ws"))
        .await
        .unwrap();
    let (mut call_tx, mut call_rx) = ws.split();
    call_tx
        .send(start_message(&call, &issued.params))
        .await
        .unwrap();
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_secs(30), call_rx.next()).await,
            Ok(Some(Ok(Message::Text(_))))
        ),
        "B refused A's token"
    );
    // Keep reading, as Twilio does, so the call stays healthy.
    let reader = tokio::spawn(async move { while call_rx.next().await.is_some() {} });

    // What a careless or hostile client leaves open on B: websockets that
    // never start, a request whose headers never end, a body never sent.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{pb}/ws"))
            .await
            .unwrap();
        idle.push(ws);
    }
    let mut half_head = tokio::net::TcpStream::connect(("127.0.0.1", pb))
        .await
        .unwrap();
    half_head
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut half_body = tokio::net::TcpStream::connect(("127.0.0.1", pb))
        .await
        .unwrap();
    half_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nCallSid=")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = b.id().expect("running").to_string();
    let t0 = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{pb}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "draining", "{health}");
    assert_eq!(health["active_calls"], 1, "one call is draining: {health}");

    let exit = tokio::time::timeout(Duration::from_secs(30), b.wait())
        .await
        .expect("B never exited")
        .unwrap();
    let took = t0.elapsed();
    assert!(exit.success(), "{exit}");
    // drain_secs (3) and a few seconds, not the clients' leisure.
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    reader.abort();
    drop((idle, half_head, half_body, call_tx));
    let _ = a.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that dials through `fake`, as the owner `OWNER`.
async fn dialling_server(
    fake: &FakeTwilio,
    tweak: impl FnOnce(&mut callbox::config::Config),
) -> (Arc<callbox::server::AppState>, SocketAddr) {
    let base = fake.api_base();
    start(|c| {
        c.twilio.account_sid = Some(ACCOUNT_SID.into());
        c.twilio.api_base = base;
        c.server.api_token = Some(Secret(OWNER.into()));
        tweak(c);
    })
    .await
}

async fn dial(addr: SocketAddr, to: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/dialout"))
        .bearer_auth(OWNER)
        .json(&serde_json::json!({"to_number": to, "from_number": "+14155550100"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_out_places_no_more_calls_than_lines_and_only_where_allowed() {
    // Nobody answers: each placed call rings, holding its line.
    let fake = FakeTwilio::start(AUTH_TOKEN, Behaviour::default()).await;
    let (_state, addr) = dialling_server(&fake, |c| {
        c.server.max_calls = 2;
        c.server.dialout_per_minute = 100;
    })
    .await;
    let burst = futures::future::join_all((0..20).map(|_| dial(addr, "+14155550123"))).await;
    let placed: Vec<&serde_json::Value> = burst
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    let busy = burst.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!((placed.len(), busy), (2, 18), "{burst:?}");
    assert_eq!(fake.requests_for("create_call").len(), 2);

    // One of them is not answered: Twilio says so, and its line is free.
    let sid = placed[0]["call_sid"].as_str().unwrap();
    let url = format!("http://{addr}/status");
    let form: Vec<(String, String)> = [
        ("AccountSid", ACCOUNT_SID),
        ("CallSid", sid),
        ("CallStatus", "no-answer"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let r = sim::post_signed(AUTH_TOKEN, &url, &url, &form)
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(dial(addr, "+14155550124").await.0, 200);
    assert_eq!(dial(addr, "+14155550125").await.0, 503);

    // Abroad, by default (the caller ID is in +1): refused before Twilio.
    let (_s, free) = dialling_server(&fake, |_| {}).await;
    let before = fake.requests_for("create_call").len();
    let (status, body) = dial(free, "+442071838750").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("dialout_prefixes"));
    assert_eq!(fake.requests_for("create_call").len(), before);

    // A token that places calls in a loop is slowed down.
    let (_s, slow) = dialling_server(&fake, |c| c.server.dialout_per_minute = 1).await;
    assert_eq!(dial(slow, "+14155550126").await.0, 200);
    assert_eq!(dial(slow, "+14155550127").await.0, 429);
}

/// Everything written to the process log (at every level), for the
/// redaction test to search.
fn log_capture() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(writer.clone()))
            .init();
        buf
    })
    .clone()
}

const CARD: &str = "4111 1111 1111 1111";
const CALLEE: &str = "+14155550199";

/// An outbound call to [`CALLEE`] whose bot reads back [`CARD`], with
/// `redact`; what the call left in the log, the OTLP collector, its trace
/// and `/calls`, and the trace's path.
async fn call_with_a_card(redact: Redact) -> (String, std::path::PathBuf) {
    let log = log_capture();
    let llm = FakeOpenAi::start(LlmBehaviour {
        reply: format!("Your card number is {CARD}."),
        ..LlmBehaviour::default()
    })
    .await
    .unwrap();
    let twilio = FakeTwilio::start(
        AUTH_TOKEN,
        Behaviour {
            callee: Some(vec![turn_of("What is my card number?")]),
            ..Default::default()
        },
    )
    .await;
    let (otlp, spans) = common::otlp::collector().await;
    let engines = callbox::stack::Engines {
        llm: Arc::new(OpenAiChat::new(Endpoint {
            base_url: llm.base_url(),
            model: "llama-3.3-70b-versatile".into(),
            api_key: Some(API_KEY.into()),
            timeout: Duration::from_secs(10),
        })),
        ..engines()
    };
    let traces =
        std::env::temp_dir().join(format!("callbox-redact-{}-{redact:?}", std::process::id()));
    let base = twilio.api_base();
    let dir = traces.clone();
    let (state, addr) = start_on(
        engines,
        move |c| {
            c.twilio.account_sid = Some(ACCOUNT_SID.into());
            c.twilio.api_base = base;
            c.server.api_token = Some(Secret(OWNER.into()));
            c.observe.redact = redact;
            c.observe.otlp_endpoint = Some(format!("http://{otlp}/v1/traces"));
            c.observe.traces_dir = Some(dir);
        },
        Vec::new(),
    )
    .await;
    let (status, body) = dial(addr, CALLEE).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["call_sid"].as_str().unwrap().to_string();
    let played = twilio
        .played()
        .await
        .pop()
        .unwrap()
        .expect("the call played");
    assert!(played.report.turns[0].latency_ms.is_some(), "no answer");
    let s = summary(&state, &sid).await;
    assert!(
        s.turns
            .iter()
            .any(|t| !t.bot_text.is_empty() && t.kind == callbox::events::TurnKind::Turn),
        "the bot answered"
    );
    let trace = trace(&traces, &sid).await;
    settle(&state).await;
    let calls = get(format!("http://{addr}/calls"), Some(OWNER))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The call span is exported when the call ends.
    let exported = || format!("{:?}", spans.lock().unwrap());
    for _ in 0..200 {
        if exported().contains(&sid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let otlp = exported();
    assert!(otlp.contains(&sid), "no spans for the call");
    let logged = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    let all = format!("LOG\n{logged}\nOTLP\n{otlp}\nTRACE\n{trace}\nCALLS\n{calls}");
    (all, traces.join(format!("{sid}.json")))
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_card_and_phone_numbers_never_leave_the_call_when_redacted() {
    let (seen, trace) = call_with_a_card(Redact::Digits).await;
    // Whole, or any part that could only come from them.
    for planted in [CARD, "1111 1111", "4155550199", "5550199"] {
        assert!(
            !seen.contains(planted),
            "{planted} leaked:\n{}",
            seen.lines()
                .filter(|l| l.contains(planted))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Traces (and the folder they are in) are the server user's alone.
    assert_eq!(mode(&trace), 0o600);
    assert_eq!(mode(trace.parent().unwrap()), 0o700);

    // The same call unredacted does show them: the plant took.
    let (seen, _) = call_with_a_card(Redact::Off).await;
    assert!(seen.contains(CARD), "the card was never said");
    assert!(seen.contains(CALLEE), "the number was never seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_the_server_users_alone() {
    let (state, addr) = start(|_| {}).await;
    let opts = signed(format!("ws://{addr}/ws"), vec![turn_of("Hello there.")]);
    let sid = opts.call_sid.clone();
    sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    let rec = s.recording.expect("a recording");
    assert_eq!(mode(&rec), 0o600);
    assert_eq!(mode(rec.parent().unwrap()), 0o700);
    settle(&state).await;
}
