//! `callbox bench` against a Twilio Media Streams server that is not ours:
//! a minimal bot written here, which hears a turn end after a fixed silence
//! and answers it with a tone after a known delay. What the bench reports
//! from the caller's side must be that delay, within a frame and the
//! scheduler's slack; a reply that comes while the caller still speaks is a
//! cut-off, and a turn the bot ignores is unanswered.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Silence that ends a turn for the bot, and its delay before answering.
const SILENCE_MS: u64 = 300;
const DELAY_MS: u64 = 400;
/// The bot's turn (as it counts them, from 1) that it leaves unanswered:
/// the caller's third line, as the second, with its pause, is two turns to
/// the bot.
const IGNORED: usize = 4;

/// The `start` messages a bot received, in order.
type Starts = Arc<Mutex<Vec<Value>>>;

/// The bot: one caller at a time, μ-law in, a 1 s tone out.
async fn tone_bot() -> (SocketAddr, Starts) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let starts = Starts::default();
    let seen = starts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (tx, mut rx) = ws.split();
                let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
                let (mut stream_sid, mut speaking, mut silent, mut turn) =
                    (String::new(), false, 0u64, 0usize);
                while let Some(Ok(Message::Text(text))) = rx.next().await {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    match v["event"].as_str() {
                        Some("start") => {
                            stream_sid = v["streamSid"].as_str().unwrap_or("").into();
                            seen.lock().unwrap().push(v["start"].clone());
                        }
                        Some("media") => {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(v["media"]["payload"].as_str().unwrap_or(""))
                                .unwrap_or_default();
                            let pcm = callbox::audio::ulaw::decode(&bytes);
                            let loud = pcm.iter().any(|s| s.unsigned_abs() > 1000);
                            if loud {
                                speaking = true;
                                silent = 0;
                            } else if speaking {
                                silent += 20;
                                if silent >= SILENCE_MS {
                                    speaking = false;
                                    turn += 1;
                                    if turn != IGNORED {
                                        let (tx, sid) = (tx.clone(), stream_sid.clone());
                                        tokio::spawn(async move {
                                            tokio::time::sleep(Duration::from_millis(DELAY_MS))
                                                .await;
                                            let mut tx = tx.lock().await;
                                            for frame in tone(1.0).chunks(160) {
                                                let payload =
                                                    base64::engine::general_purpose::STANDARD
                                                        .encode(callbox::audio::ulaw::encode(
                                                            frame,
                                                        ));
                                                let m = json!({"event": "media", "streamSid": sid, "media": {"payload": payload}});
                                                let _ = tx.send(Message::text(m.to_string())).await;
                                            }
                                        });
                                    }
                                }
                            }
                        }
                        Some("stop") => break,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, starts)
}

/// What the bot's webhook was sent: the signature and the form.
type Posted = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// The bot's TwiML webhook, as a Twilio number's voice URL points at one:
/// it connects the call to the bot's stream with a parameter of its own.
async fn webhook_for(bot: SocketAddr) -> (String, Posted) {
    use axum::extract::{Form, State};
    use axum::http::HeaderMap;
    let posted = Posted::default();
    let app = axum::Router::new()
        .route(
            "/voice",
            axum::routing::post(
                move |State(posted): State<Posted>,
                      headers: HeaderMap,
                      Form(form): Form<Vec<(String, String)>>| async move {
                    let signature = headers
                        .get("x-twilio-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    posted.lock().unwrap().push((signature, form));
                    callbox::twilio::twiml::connect_stream(
                        &format!("ws://{bot}/"),
                        &[("tenant", "acme")],
                    )
                },
            ),
        )
        .with_state(posted.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/voice", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posted)
}

/// A 440 Hz tone at 8 kHz, loud from its first sample to its last.
fn tone(secs: f32) -> Vec<i16> {
    (0..(secs * 8000.0) as usize)
        .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 12000.0) as i16)
        .collect()
}

fn wav(path: &Path, parts: &[(f32, bool)]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &(secs, loud) in parts {
        let samples = if loud {
            tone(secs)
        } else {
            vec![0; (secs * 8000.0) as usize]
        };
        for s in samples {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// `callbox bench ARGS --script SCRIPT --out DIR/out`, which must succeed;
/// its report.
async fn bench(args: &[String], script: &Path, dir: &Path) -> Value {
    let (args, script, out) = (args.to_vec(), script.to_path_buf(), dir.join("out"));
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_callbox"))
            .arg("--models")
            .arg(&common::store().root)
            .arg("bench")
            .args(&args)
            .arg("--script")
            .arg(&script)
            .arg("--out")
            .arg(&out)
            .env_remove("TWILIO_AUTH_TOKEN")
            .output()
            .expect("callbox runs")
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_media_streams_server_is_measured_from_the_callers_side() {
    let (bot, _) = tone_bot().await;
    let dir = std::env::temp_dir().join(format!("callbox-bench-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A plain turn; one with a pause longer than the bot's silence (it
    // answers into the rest of it); one it ignores.
    wav(&dir.join("plain.wav"), &[(1.0, true)]);
    wav(
        &dir.join("paused.wav"),
        &[(0.5, true), (0.6, false), (0.5, true)],
    );
    let script = dir.join("script.txt");
    std::fs::write(
        &script,
        format!(
            "@{0}/plain.wav | first\n@{0}/paused.wav | second\n@{0}/plain.wav | third\n",
            dir.display()
        ),
    )
    .unwrap();
    let args = [
        "--reply-timeout-secs",
        "4",
        "--url",
        &format!("ws://{bot}/"),
    ]
    .map(String::from);
    let report = bench(&args, &script, &dir).await;
    let stack = &report["stacks"][0];
    let rows = stack["turns"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{stack:#}");
    let expected = (SILENCE_MS + DELAY_MS) as f64;
    // A frame either way in the bot's silence count, and the scheduler's
    // slack.
    let slack = 20.0 + 40.0;
    for (i, row) in rows.iter().take(2).enumerate() {
        let ms = row["caller_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("turn {i} unanswered: {row:#}"));
        assert!(
            (expected - 25.0..=expected + slack).contains(&ms),
            "turn {i}: {ms} ms against {expected} ms"
        );
    }
    assert_eq!(rows[0]["cut_off"], false, "{:#}", rows[0]);
    assert_eq!(
        rows[1]["cut_off"], true,
        "the bot answered the pause: {:#}",
        rows[1]
    );
    assert_eq!(rows[2]["answered"], false, "{:#}", rows[2]);
    let q = &stack["quality"];
    assert_eq!(
        (q["unanswered"].as_u64(), q["cut_offs"].as_u64()),
        (Some(1), Some(1))
    );
    // No traces from a server that is not ours: its stages stay empty.
    assert!(rows.iter().all(|r| r["total_ms"].is_null()));
    let md = std::fs::read_to_string(dir.join("out/report.md")).unwrap();
    assert!(md.contains("Caller-side"), "{md}");
}

/// A bot known only by its webhook: the bench POSTs the call as Twilio
/// does, signed with the owner's token, and opens the stream the TwiML
/// names, carrying its parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_reached_through_its_twiml_webhook() {
    let (bot, starts) = tone_bot().await;
    let (webhook, posted) = webhook_for(bot).await;
    let dir = std::env::temp_dir().join(format!("callbox-bench-hook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    wav(&dir.join("plain.wav"), &[(1.0, true)]);
    let script = dir.join("script.txt");
    std::fs::write(&script, format!("@{}/plain.wav | only\n", dir.display())).unwrap();
    let args = [
        "--reply-timeout-secs",
        "3",
        "--auth-token",
        "owner-token",
        "--url",
        &webhook,
    ]
    .map(String::from);
    let report = bench(&args, &script, &dir).await;
    let posted = posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let (signature, form) = &posted[0];
    assert_eq!(
        signature,
        &callbox::twilio::signature::sign("owner-token", &webhook, form),
        "the webhook is signed as Twilio signs it"
    );
    let call_sid = form
        .iter()
        .find(|(k, _)| k == "CallSid")
        .map(|(_, v)| v.clone());
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(
        starts[0]["customParameters"]["tenant"], "acme",
        "{:#}",
        starts[0]
    );
    assert_eq!(starts[0]["callSid"].as_str().map(str::to_string), call_sid);
    let row = &report["stacks"][0]["turns"][0];
    let ms = row["caller_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("unanswered: {row:#}"));
    let expected = (SILENCE_MS + DELAY_MS) as f64;
    assert!(
        (expected - 25.0..=expected + 60.0).contains(&ms),
        "{ms} ms against {expected} ms"
    );
}
