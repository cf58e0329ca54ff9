//! The owner's tools on a call, over the real websocket on the default
//! models: a caller's line names a configured HTTP tool (its trigger) and
//! the order number its schema's pattern describes, the endpoint (a local
//! order desk written for the test) gets them as JSON, and the caller hears
//! its answer; a tool that runs out of time is a filler line and an
//! apology, and the call goes on. (The model's own steps, naming a tool and
//! writing arguments, are scored by `callbox eval --tools`.)

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use callbox::audio::Audio;
use callbox::events::{EndedBy, TurnKind};
use callbox::sim;
use callbox::tools::http::HttpTool;
use common::server::*;
use common::*;
use serde_json::{json, Value};

/// The order number whose lookup never answers in time.
const SLOW_ORDER: &str = "9999";

/// An order-status endpoint: every request's JSON body is kept; the slow
/// order takes five seconds.
async fn order_desk() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body.clone());
                let number = body["order_number"].as_str().unwrap_or_default();
                if digits(number) == SLOW_ORDER {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Json(json!({"status": "on its way", "eta": "Friday"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn order_status(desk: SocketAddr) -> HttpTool {
    HttpTool {
        name: "order_status".into(),
        description: "Look up where a customer's order is and when it arrives".into(),
        parameters: json!({"type": "object", "required": ["order_number"], "properties": {
            "order_number": {"type": "string", "pattern": "^[0-9]{4,12}$",
                             "description": "the order number the caller gave"}}}),
        triggers: vec!["order".into(), "package".into()],
        url: format!("http://{desk}/orders"),
        timeout_secs: 1.5,
        filler: None,
        filler_after_secs: 0.5,
        say: Some("Order {{order_number}} is {{status}} and should arrive on {{eta}}.".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_is_called_with_the_callers_arguments_and_its_answer_is_heard() {
    let (desk, seen) = order_desk().await;
    let (state, addr) = start(|c| {
        c.llm.max_tokens = 30;
        c.tools = vec![order_status(desk)];
    })
    .await;
    let opts = signed(
        format!("ws://{addr}/ws"),
        vec![
            turn_of("Where is my order 4512?"),
            turn_of(&format!("And where is order {SLOW_ORDER}?")),
            turn_of("Why is the sky blue?"),
        ],
    );
    let sid = opts.call_sid.clone();
    let r = sim::run(opts).await.unwrap();
    let s = summary(&state, &sid).await;
    assert_eq!(s.ended_by, EndedBy::Stop, "{s:#?}");

    // The endpoint got the caller's order numbers, as JSON.
    let bodies = seen.lock().unwrap().clone();
    let numbers: Vec<String> = bodies
        .iter()
        .map(|b| digits(b["order_number"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(numbers, ["4512", SLOW_ORDER], "{:#?}", s.turns);

    let turns: Vec<_> = s
        .turns
        .iter()
        .filter(|t| t.kind == TurnKind::Turn)
        .collect();
    let found = turns
        .iter()
        .find(|t| t.tool.as_ref().is_some_and(|u| u.outcome == "ok"))
        .expect("a turn used the tool");
    assert_eq!(
        found.bot_text, "Order 4512 is on its way and should arrive on Friday.",
        "{found:#?}"
    );
    // What the caller heard, through our own STT.
    let heard = stt()
        .transcribe(&Audio::from_i16(&r.turns[0].bot_audio, 8000))
        .unwrap()
        .text
        .to_lowercase();
    assert!(
        digits(&heard).contains("4512") && heard.contains("friday"),
        "the caller heard {heard:?}"
    );

    // The slow lookup: the filler while it ran, then the apology.
    let slow = turns
        .iter()
        .find(|t| t.tool.as_ref().is_some_and(|u| u.outcome == "timeout"))
        .expect("a turn's tool timed out");
    assert!(
        slow.heard_text.contains(callbox::persona::TOOL_FILLER),
        "{slow:#?}"
    );
    assert!(
        slow.heard_text.contains(callbox::persona::TOOL_APOLOGY),
        "{slow:#?}"
    );
    // The call went on: the last question got an answer of its own.
    let last = turns.last().unwrap();
    assert!(
        last.tool.is_none() && !last.heard_text.is_empty(),
        "{last:#?}"
    );
    assert!(r.turns[2].latency_ms.is_some(), "{:#?}", r.turns[2]);

    let m = scrape(addr).await;
    let calls = |outcome| {
        sample(
            &m,
            "callbox_tool_calls_total",
            &[("tool", "order_status"), ("outcome", outcome)],
        )
    };
    assert_eq!((calls("ok"), calls("timeout")), (1.0, 1.0));
}
