//! Any OpenAI-compatible Chat Completions endpoint (OpenAI, Azure OpenAI, vLLM, Ollama,
//! LiteLLM): `POST {base}/chat/completions`, in one piece or streamed with
//! `stream_options.include_usage` so the last chunk carries the usage.

use std::sync::Arc;
use std::time::Duration;

use app::ports::{ModelProvider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream};
use app::service::ModelEntry;
use async_trait::async_trait;
use domain::sse::SseParser;
use domain::{CallUsage, FinishReason, ModelName};
use futures::StreamExt;
use serde_json::{Value, json};

pub fn entry(model: ModelName, provider: Arc<OpenAiProvider>) -> ModelEntry {
    ModelEntry {
        label: format!("{} (OpenAI-compatible)", model.as_str()),
        model,
        provider,
        default_output: 1_024,
        max_output: 16_384,
    }
}

pub struct OpenAiProvider {
    base_url: String,
    /// Sent as `Authorization: Bearer`; never logged, never shown.
    api_key: Option<String>,
    client: reqwest::Client,
    /// OpenAI's own API wants `max_completion_tokens`; compatible servers know `max_tokens`.
    max_tokens_field: &'static str,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl OpenAiProvider {
    /// `idle_timeout`: the longest the provider may stay silent (before answering, or between
    /// two pieces of a stream).
    pub fn new(
        base_url: String,
        api_key: Option<String>,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let base_url = super::base_url("the OpenAI base URL", &base_url)?;
        let client = super::http_client(idle_timeout)?;
        let max_tokens_field = if base_url.contains("api.openai.com") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        Ok(Self {
            base_url,
            api_key,
            client,
            max_tokens_field,
        })
    }
}

/// Reads OpenAI's `usage` object: prompt and completion tokens, cached prompt tokens and
/// reasoning tokens (seed property 14).
pub fn usage_from(value: &Value) -> Option<CallUsage> {
    let number = |v: &Value, path: &[&str]| -> u64 {
        path.iter()
            .try_fold(v, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let usage = value.get("usage").filter(|u| u.is_object())?;
    Some(
        CallUsage {
            input_tokens: number(usage, &["prompt_tokens"]),
            output_tokens: number(usage, &["completion_tokens"]),
            cached_tokens: number(usage, &["prompt_tokens_details", "cached_tokens"]),
            cache_write_tokens: 0,
            reasoning_tokens: number(usage, &["completion_tokens_details", "reasoning_tokens"]),
        }
        .normalized(),
    )
}

fn finish_from(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// An error answer's own message, shortened: enough to say why, never the whole body.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.to_owned());
    message.chars().take(300).collect()
}

pub(crate) fn status_error(status: u16, body: &str) -> ProviderError {
    let message = error_message(body);
    match status {
        401 | 403 => ProviderError::Unauthorized(message),
        429 => ProviderError::RateLimited(message),
        400..=499 => ProviderError::Refused(message),
        _ => ProviderError::Unavailable(format!("status {status}: {message}")),
    }
}

pub(crate) fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_decode() || e.is_body() {
        ProviderError::BadResponse(e.to_string())
    } else {
        ProviderError::Unavailable(e.without_url().to_string())
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    fn counts_exactly(&self) -> bool {
        false
    }

    async fn start(&self, request: ProviderRequest) -> Result<ProviderStream, ProviderError> {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": request.model.as_str(),
            "messages": messages,
            self.max_tokens_field: request.max_output,
        });
        if request.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut call = self
            .client
            .post(format!("{}/chat/completions", self.base_url))
            .json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.text().await.unwrap_or_default();
            return Err(status_error(status, &body));
        }
        if !request.stream {
            let value: Value = response.json().await.map_err(transport_error)?;
            return Ok(Box::pin(futures::stream::iter(
                whole_answer(&value)?.into_iter().map(Ok),
            )));
        }
        Ok(Box::pin(read_stream(
            response.bytes_stream().map(|r| r.map_err(transport_error)),
        )))
    }
}

/// A complete (not streamed) answer as events.
fn whole_answer(value: &Value) -> Result<Vec<ProviderEvent>, ProviderError> {
    let choice = value
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::BadResponse("no choices in the answer".into()))?;
    let text = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut events = vec![ProviderEvent::Text(text.to_owned())];
    if let Some(usage) = usage_from(value) {
        events.push(ProviderEvent::Usage(usage));
    }
    let reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    events.push(ProviderEvent::Finished(finish_from(reason)));
    Ok(events)
}

/// Turns the provider's event stream into events: text deltas, the usage chunk(s) (one per
/// step), the finish reason. A stream that ends without `[DONE]` was cut: an error after what
/// arrived.
pub(crate) fn read_stream<S, B>(
    bytes: S,
) -> impl futures::Stream<Item = Result<ProviderEvent, ProviderError>> + Send + 'static
where
    S: futures::Stream<Item = Result<B, ProviderError>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
{
    super::decode_stream(bytes, ChunkReader(SseParser::new()))
}

/// Chat Completions chunks, as server-sent events ending in `[DONE]`.
struct ChunkReader(SseParser);

impl super::StreamDecoder for ChunkReader {
    const CUT: &'static str = "[DONE]";

    fn decode(&mut self, chunk: &[u8], out: &mut super::Events) -> bool {
        for sse in self.0.push(chunk) {
            if sse.data.trim() == "[DONE]" {
                return true;
            }
            let value = match serde_json::from_str::<Value>(&sse.data) {
                Ok(value) => value,
                Err(e) => {
                    out.push_back(Err(ProviderError::BadResponse(format!(
                        "a stream event is not JSON: {e}"
                    ))));
                    return true;
                }
            };
            if let Some(err) = value.get("error") {
                out.push_back(Err(ProviderError::Unavailable(error_message(
                    &json!({"error": err}).to_string(),
                ))));
                return true;
            }
            if let Some(text) = value
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.push_back(Ok(ProviderEvent::Text(text.to_owned())));
            }
            if let Some(reason) = value
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                out.push_back(Ok(ProviderEvent::Finished(finish_from(reason))));
            }
            if let Some(usage) = usage_from(&value) {
                out.push_back(Ok(ProviderEvent::Usage(usage)));
            }
        }
        false
    }
}
