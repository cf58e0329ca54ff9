//! The owner's own tools: declared in the configuration (`[[tools]]`), each
//! an HTTP endpoint that the call's arguments are POSTed to as JSON. What
//! it answers is either spoken through a template (`say`) or handed to the
//! LLM to put into words.
//!
//! A tool runs on the call's LLM worker, between choosing it and answering
//! with its result. The caller is never left in silence: after
//! `filler_after_secs` without an answer the filler line is spoken, and a
//! tool that fails or runs out of time is an apology, never a dead call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One tool of `[[tools]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTool {
    /// What the model calls it: `[a-z][a-z0-9_]*`.
    pub name: String,
    /// What it does, for the model choosing: "Look up the status of an order".
    /// (A trigger is matched at the start of a word: "order" also finds
    /// "ordered".)
    pub description: String,
    /// A JSON schema of an object: the arguments the model fills in.
    #[serde(default = "no_parameters")]
    pub parameters: Value,
    /// Words or phrases of a caller's line that make the tool a candidate
    /// (matched as whole words, without case). A turn that names no
    /// tool's trigger costs nothing; a tool without triggers is put to the
    /// model on every turn, which a small CPU model does slowly and badly.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Where the arguments are POSTed (`http://` or `https://`).
    pub url: String,
    /// How long the endpoint has to answer, all told.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f32,
    /// Said while the tool runs, when it takes longer than
    /// `filler_after_secs`; the persona's `tool_filler` when unset.
    #[serde(default)]
    pub filler: Option<String>,
    #[serde(default = "default_filler_after")]
    pub filler_after_secs: f32,
    /// The answer as a template of `{{name}}` placeholders, filled from the
    /// arguments and the fields of the endpoint's JSON object: spoken as it
    /// is, without the LLM. Unset: the LLM words the result.
    #[serde(default)]
    pub say: Option<String>,
}

fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

fn default_timeout() -> f32 {
    3.0
}

fn default_filler_after() -> f32 {
    0.5
}

/// What a model chose: a tool of the set and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub name: String,
    pub arguments: Value,
}

/// How a tool call ended, as a label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolResult {
    /// The endpoint's body (JSON or text).
    Ok(String),
    /// Not answered within the tool's `timeout_secs`.
    Timeout,
    /// Refused, unreachable, a non-2xx status or an unusable answer.
    Failed(String),
    /// The caller went on before it answered.
    Cancelled,
}

impl ToolResult {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            ToolResult::Ok(_) => "ok",
            ToolResult::Timeout => "timeout",
            ToolResult::Failed(_) => "failed",
            ToolResult::Cancelled => "cancelled",
        }
    }
}

/// The configured tools, with the client that calls them: one per call
/// (a client's connections are kept for the call's later turns).
#[derive(Debug)]
pub struct ToolSet {
    pub tools: Vec<HttpTool>,
    /// Arguments the caller's words give outright are read without the
    /// model ([`super::choose::said_arguments`]); off only to measure the
    /// model alone.
    pub(crate) read_words: bool,
    client: reqwest::Client,
}

impl PartialEq for ToolSet {
    fn eq(&self, other: &Self) -> bool {
        self.tools == other.tools
    }
}

/// The longest answer kept of an endpoint for the LLM to read and the
/// trace to hold (a template reads the whole answer).
pub(crate) const MAX_RESULT_CHARS: usize = 2000;
/// The longest answer taken at all: more is a failed tool, not memory.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// `result` cut to [`MAX_RESULT_CHARS`].
pub(crate) fn kept(result: &str) -> String {
    result.chars().take(MAX_RESULT_CHARS).collect()
}

impl ToolSet {
    /// `None` when no tool is configured: replies then skip choosing.
    pub fn new(tools: &[HttpTool]) -> Option<Arc<Self>> {
        (!tools.is_empty()).then(|| {
            Arc::new(Self {
                tools: tools.to_vec(),
                read_words: true,
                client: reqwest::Client::new(),
            })
        })
    }

    /// The same tools with every choice left to the model: no triggers
    /// (each tool is put to it on every turn) and no arguments read from
    /// the words. What `callbox eval --tools --model-only` measures.
    pub(crate) fn model_only(tools: &[HttpTool]) -> Option<Arc<Self>> {
        (!tools.is_empty()).then(|| {
            Arc::new(Self {
                tools: tools
                    .iter()
                    .map(|t| HttpTool {
                        triggers: Vec::new(),
                        ..t.clone()
                    })
                    .collect(),
                read_words: false,
                client: reqwest::Client::new(),
            })
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&HttpTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The tools as OpenAI's `tools` field describes functions.
    pub(crate) fn openai(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }})
                })
                .collect(),
        )
    }

    /// Calls `call`'s endpoint and waits for it; `filler` is said (once)
    /// when it has not answered after the tool's `filler_after_secs`.
    /// Runs on a worker thread, not on the runtime: `rt` drives the request.
    pub(crate) fn run(
        &self,
        rt: &tokio::runtime::Handle,
        call: &ToolUse,
        cancel: &AtomicBool,
        filler: &mut dyn FnMut(),
    ) -> ToolResult {
        let Some(tool) = self.get(&call.name) else {
            return ToolResult::Failed(format!("no tool is called {:?}", call.name));
        };
        let timeout = Duration::from_secs_f32(tool.timeout_secs);
        let filler_at = Instant::now() + Duration::from_secs_f32(tool.filler_after_secs);
        rt.block_on(async {
            // Built in the runtime: its timeout is one of the runtime's timers.
            let request = self
                .client
                .post(&tool.url)
                .timeout(timeout)
                .json(&call.arguments)
                .send();
            let answer = async {
                // The URL stays out of the message: it is in the trace, and
                // an owner's endpoint may carry a key in its query.
                let failed = |e: reqwest::Error| {
                    if e.is_timeout() {
                        ToolResult::Timeout
                    } else {
                        ToolResult::Failed(crate::engines::api::http::describe(&e.without_url()))
                    }
                };
                let mut response = request.await.map_err(failed)?;
                let status = response.status();
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(failed)? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_BODY_BYTES {
                        return Err(ToolResult::Failed(format!(
                            "the answer is longer than {MAX_BODY_BYTES} bytes"
                        )));
                    }
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                if !status.is_success() {
                    return Err(ToolResult::Failed(format!("HTTP {status}")));
                }
                Ok(body)
            };
            tokio::pin!(answer);
            let mut filled = false;
            loop {
                tokio::select! {
                    r = &mut answer => return r.map_or_else(|e| e, ToolResult::Ok),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if cancel.load(Ordering::Relaxed) {
                            return ToolResult::Cancelled;
                        }
                        if !filled && Instant::now() >= filler_at {
                            filled = true;
                            filler();
                        }
                    }
                }
            }
        })
    }
}

/// What the LLM is told of a tool's result, so that it can answer with it
/// (and later turns can refer to it).
pub(crate) fn result_message(call: &ToolUse, result: &str) -> String {
    format!(
        "(The {} tool was used with {} and answered: {}. Tell the caller what it says, in one or two \
         short spoken sentences.)",
        call.name,
        call.arguments,
        kept(result)
    )
}

/// The tool's `say` template filled from the call's arguments and the
/// fields of the answer's JSON object (the answer's wins on a clash);
/// `None` when the answer lacks a field the template names.
pub(crate) fn say(template: &str, call: &ToolUse, result: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(result).unwrap_or(Value::Null);
    let value = |name: &str| -> Option<String> {
        let v = answer.get(name).or_else(|| call.arguments.get(name))?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    crate::persona::fill(template, &value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(number: &str) -> ToolUse {
        ToolUse {
            name: "order_status".into(),
            arguments: json!({"order_number": number}),
        }
    }

    #[test]
    fn templates_take_the_answer_then_the_arguments() {
        let t = "Order {{order_number}} is {{status}} and arrives {{eta}}.";
        let answer = r#"{"status": "on its way", "eta": "Friday"}"#;
        assert_eq!(
            say(t, &order("4512"), answer).as_deref(),
            Some("Order 4512 is on its way and arrives Friday.")
        );
        // A field the endpoint did not send: no half-filled sentence.
        assert_eq!(say(t, &order("4512"), r#"{"status": "lost"}"#), None);
        assert_eq!(say(t, &order("4512"), "not json"), None);
    }

    #[test]
    fn the_openai_form_names_each_function() {
        let set = ToolSet::new(&[HttpTool {
            name: "order_status".into(),
            description: "Look up an order".into(),
            parameters: no_parameters(),
            triggers: Vec::new(),
            url: "http://127.0.0.1:1/".into(),
            timeout_secs: 1.0,
            filler: None,
            filler_after_secs: 0.5,
            say: None,
        }])
        .unwrap();
        let v = set.openai();
        assert_eq!(v[0]["type"], "function");
        assert_eq!(v[0]["function"]["name"], "order_status");
        assert_eq!(v[0]["function"]["parameters"]["type"], "object");
        assert!(ToolSet::new(&[]).is_none());
    }
}
