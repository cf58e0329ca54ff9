//! A local stand-in for an OpenAI-compatible chat API (Groq's, at the
//! network edge): `POST /openai/v1/chat/completions` with a bearer key,
//! answering `stream: true` requests with server-sent events shaped like
//! Groq's — a first chunk with the assistant role, one chunk per word, a
//! final chunk with `finish_reason` and `x_groq.usage`, then `[DONE]` — or
//! failing the ways a provider does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::streamed;

pub const API_KEY: &str = "gsk_test_key";

/// How the fake answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The reply, streamed word by word.
    Reply,
    /// An HTTP error with an OpenAI-style error body.
    Status(u16, &'static str),
    /// The connection is cut after this many words.
    DropAfter(usize),
    /// Nothing more is sent after this many words; the connection stays open.
    StallAfter(usize),
    /// An `error` event in the stream after this many words.
    ErrorAfter(usize),
}

#[derive(Debug, Clone)]
pub struct Behaviour {
    pub mode: Mode,
    pub reply: String,
    /// Before the first chunk (the provider's time to first token).
    pub first_token: Duration,
    /// Between chunks.
    pub per_token: Duration,
    /// What the "model" calls when a request offers this tool and ends with
    /// the caller's words: the function's name and its arguments. A
    /// request that ends with anything else (a tool's result) gets `reply`.
    pub tool_call: Option<(String, Value)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            mode: Mode::Reply,
            reply: "Rain is water falling from clouds.".into(),
            first_token: Duration::from_millis(20),
            per_token: Duration::from_millis(5),
            tool_call: None,
        }
    }
}

pub struct FakeOpenAi {
    pub(crate) addr: SocketAddr,
    behaviour: Mutex<Behaviour>,
    /// Each request's JSON body and whether it carried our key.
    requests: Mutex<Vec<(Value, bool)>>,
}

impl FakeOpenAi {
    /// Serves on a free local port.
    pub async fn start(behaviour: Behaviour) -> std::io::Result<Arc<Self>> {
        Self::bind("127.0.0.1:0", behaviour).await
    }

    pub async fn bind(addr: &str, behaviour: Behaviour) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let fake = Arc::new(Self {
            addr: listener.local_addr()?,
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route(
                "/openai/v1/chat/completions",
                axum::routing::post(completions),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(fake)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/openai/v1", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> Vec<(Value, bool)> {
        self.requests.lock().unwrap().clone()
    }
}

fn chunk(delta: Value, finish: Option<&str>, extra: Option<(&str, Value)>) -> String {
    let mut v = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "llama-3.3-70b-versatile",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if let Some((k, x)) = extra {
        v[k] = x;
    }
    format!("data: {v}\n\n")
}

async fn completions(
    State(fake): State<Arc<FakeOpenAi>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {API_KEY}"));
    fake.requests
        .lock()
        .unwrap()
        .push((body.clone(), authorised));
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}})),
        )
            .into_response();
    }
    let b = fake.behaviour.lock().unwrap().clone();
    if let Mode::Status(code, message) = b.mode {
        return (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": {"message": message, "type": "server_error"}})),
        )
            .into_response();
    }
    let offered = |name: &str| {
        body["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == name))
    };
    let last_is_user = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "user");
    if let Some((name, arguments)) = b
        .tool_call
        .clone()
        .filter(|(n, _)| offered(n) && last_is_user)
    {
        return call_tool(b.first_token, &name, &arguments);
    }
    let words: Vec<String> = b.reply.split_inclusive(' ').map(str::to_string).collect();
    let n = words.len();
    let prompt_tokens = body["messages"].as_array().map_or(0, |m| {
        m.iter()
            .map(|m| {
                m["content"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .count()
                    + 4
            })
            .sum::<usize>()
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let send = |s: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(s))).await.is_ok() }
        };
        tokio::time::sleep(b.first_token).await;
        if !send(chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            None,
        ))
        .await
        {
            return;
        }
        for (i, w) in words.iter().enumerate() {
            match b.mode {
                Mode::DropAfter(k) if i == k => {
                    let _ = tx
                        .send(Err(std::io::Error::other("connection reset")))
                        .await;
                    return;
                }
                Mode::StallAfter(k) if i == k => {
                    std::future::pending::<()>().await;
                }
                Mode::ErrorAfter(k) if i == k => {
                    send(format!(
                        "data: {}\n\n",
                        json!({"error": {"message": "Service Unavailable: over capacity", "type": "internal_server_error"}})
                    ))
                    .await;
                    return;
                }
                _ => {}
            }
            if i > 0 {
                tokio::time::sleep(b.per_token).await;
            }
            if !send(chunk(json!({"content": w}), None, None)).await {
                return;
            }
        }
        let usage = json!({"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}});
        send(chunk(json!({}), Some("stop"), Some(("x_groq", usage)))).await;
        send("data: [DONE]\n\n".to_string()).await;
    });
    streamed("text/event-stream", rx)
}

/// A streamed tool call as OpenAI sends one: the function's name with an
/// id, its JSON arguments in two pieces, `finish_reason: "tool_calls"`.
fn call_tool(first_token: Duration, name: &str, arguments: &Value) -> Response {
    let args = arguments.to_string();
    let mid = args
        .char_indices()
        .nth(args.chars().count() / 2)
        .map_or(args.len(), |(i, _)| i);
    let (head, tail) = args.split_at(mid);
    let call = |function: Value| json!({"tool_calls": [{"index": 0, "id": "call_fake", "type": "function", "function": function}]});
    let mut events = vec![chunk(
        {
            let mut d = call(json!({"name": name, "arguments": ""}));
            d["role"] = json!("assistant");
            d["content"] = Value::Null;
            d
        },
        None,
        None,
    )];
    for piece in [head, tail] {
        events.push(chunk(call(json!({"arguments": piece})), None, None));
    }
    events.push(chunk(json!({}), Some("tool_calls"), None));
    events.push("data: [DONE]\n\n".to_string());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        tokio::time::sleep(first_token).await;
        for e in events {
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                return;
            }
        }
    });
    streamed("text/event-stream", rx)
}
