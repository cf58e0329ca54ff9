//! An OpenAI-compatible chat API as the LLM: Groq, the API stack callbox is
//! measured against, or any server that speaks the same protocol (OpenAI,
//! vLLM, llama.cpp's server). The reply streams as server-sent events, so
//! the first sentence is spoken while the rest is still being written; the
//! session, the observers and the latency table are the ones the local
//! model uses.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use eventsource_stream::{EventStreamError, Eventsource};
use serde_json::{json, Value};

use super::http::{describe_io, send, Endpoint, LazyClient};
use crate::engines::{ChatMessage, Generation, GenerationOptions, Llm, LlmSession};
use crate::error::{Error, Result};
use crate::tools::http::ToolUse;

pub struct OpenAiChat(Arc<Inner>);

struct Inner {
    endpoint: Endpoint,
    client: LazyClient,
}

impl OpenAiChat {
    pub fn new(endpoint: Endpoint) -> Self {
        let client = LazyClient::new(endpoint.timeout);
        Self(Arc::new(Inner { endpoint, client }))
    }
}

impl Llm for OpenAiChat {
    fn session(&self) -> Result<Box<dyn LlmSession>> {
        Ok(Box::new(OpenAiSession(self.0.clone())))
    }

    fn name(&self) -> String {
        let e = &self.0.endpoint;
        format!("{} at {}", e.model, e.base_url)
    }
}

/// The API keeps nothing between requests (a provider's prompt cache is
/// its own affair), so a session is only a handle on the engine.
pub(crate) struct OpenAiSession(Arc<Inner>);

impl LlmSession for OpenAiSession {
    fn prefill(&mut self, _messages: &[ChatMessage]) -> Result<usize> {
        Ok(0)
    }

    fn generate(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerationOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let t0 = Instant::now();
        let inner = &self.0;
        let err = |e: &dyn std::fmt::Display| Error::engine("openai", e);
        let endpoint = &inner.endpoint;
        let url = endpoint.url("/chat/completions");
        let mut request = inner.client.get("openai")?.post(&url).json(&request_body(
            &endpoint.model,
            messages,
            options,
        ));
        if let Some(key) = &endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = send("openai", &url, request, api_error)?;

        let mut gen = Generation::default();
        let mut finish_seen = false;
        // A tool call streams as its name and then its arguments in pieces.
        let mut tool: Option<(String, String)> = None;
        // The body as the byte stream an SSE parser takes, read on this
        // thread as it arrives.
        let body = std::iter::from_fn(move || {
            let mut buf = vec![0u8; 4096];
            match response.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some(Ok(buf))
                }
                Err(e) => Some(Err(e)),
            }
        });
        let mut events =
            futures::executor::block_on_stream(futures::stream::iter(body).eventsource());
        loop {
            if cancel.load(Ordering::Relaxed) {
                // Dropping the response closes the connection: the provider
                // stops generating what nobody will hear.
                gen.cancelled = true;
                break;
            }
            let data = match events.next() {
                Some(Ok(event)) => event.data,
                // Some servers close without `[DONE]` once the reply is over.
                None if finish_seen => break,
                None => {
                    return Err(err(
                        &"the stream ended before the reply did (connection dropped)",
                    ))
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    return Err(err(&format!("reading the stream: {}", describe_io(&e))))
                }
                Some(Err(e)) => return Err(err(&format!("a malformed event stream: {e}"))),
            };
            if data.trim() == "[DONE]" {
                break;
            }
            let chunk = parse_chunk(&data).map_err(|e| err(&e))?;
            if let Some((prompt, completion)) = chunk.usage {
                gen.prompt_tokens = prompt;
                gen.prefilled_tokens = prompt;
                gen.completion_tokens = completion;
            }
            if !chunk.text.is_empty() {
                if gen.first_token_ms.is_none() {
                    gen.first_token_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                gen.text.push_str(&chunk.text);
                if !on_text(&chunk.text) {
                    gen.cancelled = true;
                    break;
                }
            }
            if let Some(name) = chunk.tool_name {
                tool.get_or_insert_with(Default::default).0 = name;
            }
            if let Some((_, args)) = tool.as_mut() {
                args.push_str(&chunk.tool_arguments);
            }
            if let Some(reason) = chunk.finish.as_deref() {
                finish_seen = true;
                gen.finished = reason != "length";
            }
        }
        if let (Some((name, args)), Some(tools)) = (tool, &options.tools) {
            // Neither the arguments nor an unknown name go into the error:
            // it is logged, and they are what the caller said.
            if tools.get(&name).is_none() {
                return Err(err(&"the model called a tool that is not configured"));
            }
            let arguments = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&args).map_err(|e| {
                    err(&format!(
                        "the model called {name} with arguments that are not JSON ({e})"
                    ))
                })?
            };
            gen.tool_use = Some(ToolUse { name, arguments });
        }
        gen.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(gen)
    }
}

fn request_body(model: &str, messages: &[ChatMessage], options: &GenerationOptions) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    // No repeat penalty: the API's frequency and presence penalties are
    // other measures, and the large hosted models do not loop the way a
    // small local one does.
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "seed": options.seed,
    });
    if let Some(tools) = &options.tools {
        body["tools"] = tools.openai();
        body["tool_choice"] = json!("auto");
        // One call per turn: the reply speaks one tool's answer.
        body["parallel_tool_calls"] = json!(false);
    }
    body
}

/// What one streamed chunk adds to the reply.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Chunk {
    pub text: String,
    pub(crate) finish: Option<String>,
    /// (prompt, completion) tokens: OpenAI sends them in a last chunk of
    /// their own when asked, Groq under `x_groq` in its final chunk.
    pub(crate) usage: Option<(usize, usize)>,
    /// The function a tool call names (in its first chunk).
    pub(crate) tool_name: Option<String>,
    /// The next piece of the call's JSON arguments.
    pub(crate) tool_arguments: String,
}

/// Reads one `data:` payload of the stream. A provider that fails after
/// the response has begun says so in the stream, as an `error` object.
pub(crate) fn parse_chunk(data: &str) -> std::result::Result<Chunk, String> {
    let v: Value = serde_json::from_str(data)
        .map_err(|e| format!("a stream event that is not JSON ({e}): {data:.200}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!(
            "the provider failed mid-reply: {}",
            error_message(e)
        ));
    }
    let choice = v["choices"].get(0);
    let text = choice
        .and_then(|c| c["delta"]["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let finish = choice
        .and_then(|c| c["finish_reason"].as_str())
        .map(str::to_string);
    let usage = [&v["usage"], &v["x_groq"]["usage"]]
        .into_iter()
        .find_map(|u| {
            Some((
                u["prompt_tokens"].as_u64()? as usize,
                u["completion_tokens"].as_u64()? as usize,
            ))
        });
    // One call per reply is all a phone turn uses: a provider that sends
    // more anyway has the others ignored (each chunk names its call's index).
    let call = choice
        .and_then(|c| c["delta"]["tool_calls"].as_array())
        .and_then(|calls| calls.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0));
    let function = call.map(|c| &c["function"]);
    Ok(Chunk {
        text,
        finish,
        usage,
        tool_name: function
            .and_then(|f| f["name"].as_str())
            .map(str::to_string),
        tool_arguments: function
            .and_then(|f| f["arguments"].as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

/// The message of an API error body (`{"error": {"message": …}}`), or the
/// start of the body when it is something else (a proxy's HTML page).
fn api_error(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("error").is_some() => error_message(&v["error"]),
        _ => format!("{:.300}", body.trim()),
    }
}

fn error_message(e: &Value) -> String {
    e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_give_text_finish_and_usage_in_either_place() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#).unwrap();
        assert_eq!((c.text.as_str(), c.finish, c.usage), ("Hi", None, None));
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":31,"completion_tokens":9}}}"#).unwrap();
        assert_eq!(
            (c.finish.as_deref(), c.usage),
            (Some("stop"), Some((31, 9)))
        );
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(c.usage, Some((5, 2)));
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"order_status","arguments":"{\"order"}}]},"finish_reason":null}]}"#).unwrap();
        assert_eq!(
            (c.tool_name.as_deref(), c.tool_arguments.as_str()),
            (Some("order_status"), "{\"order")
        );
        let e = parse_chunk(r#"{"error":{"message":"over capacity"}}"#).unwrap_err();
        assert!(e.contains("over capacity"), "{e}");
        assert!(parse_chunk("<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn error_bodies_are_read_for_their_message() {
        assert_eq!(
            api_error(r#"{"error":{"message":"Invalid API Key","type":"invalid_request_error"}}"#),
            "Invalid API Key"
        );
        assert_eq!(
            api_error("  <html>bad gateway</html> "),
            "<html>bad gateway</html>"
        );
    }
}
