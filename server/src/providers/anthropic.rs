//! Anthropic's Messages API (`POST {base}/v1/messages`), whole or streamed. Usage arrives in
//! `message_start` (input, cache reads and writes) and `message_delta` (output so far); cache
//! read and write tokens are kept apart so they are priced at their own rates.

use std::sync::Arc;
use std::time::Duration;

use app::ports::{ModelProvider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream};
use app::service::ModelEntry;
use async_trait::async_trait;
use domain::sse::SseParser;
use domain::{CallUsage, ChatMessage, ChatRole, FinishReason, ModelName};
use futures::StreamExt;
use serde_json::{Value, json};

use super::openai::{status_error, transport_error};

pub const API_VERSION: &str = "2023-06-01";

pub fn entry(model: ModelName, provider: Arc<AnthropicProvider>) -> ModelEntry {
    ModelEntry {
        label: format!("{} (Anthropic)", model.as_str()),
        model,
        provider,
        default_output: 1_024,
        max_output: 64_000,
    }
}

pub struct AnthropicProvider {
    base_url: String,
    /// Sent as `x-api-key`; never logged, never shown.
    api_key: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("base_url", &self.base_url)
            .field("api_key", &"(set)")
            .finish()
    }
}

impl AnthropicProvider {
    pub fn new(base_url: String, api_key: String, idle_timeout: Duration) -> Result<Self, String> {
        let base_url = super::base_url("the Anthropic base URL", &base_url)?;
        let client = super::http_client(idle_timeout)?;
        Ok(Self {
            base_url,
            api_key,
            client,
        })
    }
}

/// The request body: system messages go to `system`; the rest alternate user/assistant, so
/// consecutive messages of one role are joined.
pub fn request_body(request: &ProviderRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == ChatRole::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut turns: Vec<(ChatRole, String)> = Vec::new();
    for ChatMessage { role, content } in request
        .messages
        .iter()
        .filter(|m| m.role != ChatRole::System)
    {
        match turns.last_mut() {
            Some((last, text)) if last == role => {
                text.push_str("\n\n");
                text.push_str(content);
            }
            _ => turns.push((*role, content.clone())),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role.as_str(), "content": content}))
        .collect();
    let mut body = json!({
        "model": request.model.as_str(),
        "max_tokens": request.max_output,
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if request.stream {
        body["stream"] = json!(true);
    }
    body
}

/// Anthropic's usage object in our terms: input counts every prompt token, cache reads and
/// writes included (Anthropic reports them apart from `input_tokens`).
pub fn usage_from(usage: &Value) -> CallUsage {
    let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let (uncached, read, write) = (
        n("input_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    );
    CallUsage {
        input_tokens: uncached + read + write,
        output_tokens: n("output_tokens"),
        cached_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
    }
}

fn finish_from(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[async_trait]
impl ModelProvider for AnthropicProvider {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn counts_exactly(&self) -> bool {
        false
    }

    async fn start(&self, request: ProviderRequest) -> Result<ProviderStream, ProviderError> {
        let response = self
            .client
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
            .json(&request_body(&request))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.text().await.unwrap_or_default();
            return Err(status_error(status, &body));
        }
        if !request.stream {
            let value: Value = response.json().await.map_err(transport_error)?;
            let content = value
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| ProviderError::BadResponse("no content in the answer".into()))?;
            let text: String = content
                .iter()
                .filter(|block| block["type"] == "text")
                .filter_map(|block| block["text"].as_str())
                .collect();
            let mut events = vec![ProviderEvent::Text(text)];
            if let Some(usage) = value.get("usage") {
                events.push(ProviderEvent::Usage(usage_from(usage)));
            }
            let reason = value["stop_reason"].as_str().unwrap_or("end_turn");
            events.push(ProviderEvent::Finished(finish_from(reason)));
            return Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))));
        }
        Ok(Box::pin(read_stream(
            response.bytes_stream().map(|r| r.map_err(transport_error)),
        )))
    }
}

/// Turns Anthropic's event stream into events. The input usage is reported as soon as
/// `message_start` gives it (so a stream cut later still charges its prompt), the output when
/// `message_delta` gives its final count; their sum is the message's usage. A stream that ends
/// before `message_stop` was cut.
pub fn read_stream<S, B>(
    bytes: S,
) -> impl futures::Stream<Item = Result<ProviderEvent, ProviderError>> + Send + 'static
where
    S: futures::Stream<Item = Result<B, ProviderError>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
{
    super::decode_stream(
        bytes,
        MessageReader {
            parser: SseParser::new(),
            output: 0,
        },
    )
}

/// Messages API events, as server-sent events ending in `message_stop`.
struct MessageReader {
    parser: SseParser,
    /// Output tokens of the current message as last reported (message_delta is cumulative).
    output: u64,
}

impl super::StreamDecoder for MessageReader {
    const CUT: &'static str = "message_stop";

    fn decode(&mut self, chunk: &[u8], out: &mut super::Events) -> bool {
        for sse in self.parser.push(chunk) {
            let value: Value = match serde_json::from_str(&sse.data) {
                Ok(v) => v,
                Err(e) => {
                    out.push_back(Err(ProviderError::BadResponse(format!(
                        "a stream event is not JSON: {e}"
                    ))));
                    return true;
                }
            };
            match value["type"].as_str().unwrap_or(sse.event.as_str()) {
                "message_start" => {
                    self.output = 0;
                    let usage = usage_from(&value["message"]["usage"]);
                    // The output so far is reported again, in full, by message_delta.
                    out.push_back(Ok(ProviderEvent::Usage(CallUsage {
                        output_tokens: 0,
                        ..usage
                    })));
                }
                "content_block_delta" => {
                    if let Some(text) = value["delta"]["text"].as_str().filter(|t| !t.is_empty()) {
                        out.push_back(Ok(ProviderEvent::Text(text.to_owned())));
                    }
                }
                "message_delta" => {
                    if let Some(output) = value["usage"]["output_tokens"].as_u64() {
                        let more = output.saturating_sub(self.output);
                        self.output = output;
                        if more > 0 {
                            out.push_back(Ok(ProviderEvent::Usage(CallUsage {
                                output_tokens: more,
                                ..CallUsage::default()
                            })));
                        }
                    }
                    if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                        out.push_back(Ok(ProviderEvent::Finished(finish_from(reason))));
                    }
                }
                "message_stop" => return true,
                "error" => {
                    let message = value["error"]["message"]
                        .as_str()
                        .unwrap_or("error")
                        .to_owned();
                    let kind = value["error"]["type"].as_str().unwrap_or_default();
                    out.push_back(Err(match kind {
                        "rate_limit_error" => ProviderError::RateLimited(message),
                        "authentication_error" | "permission_error" => {
                            ProviderError::Unauthorized(message)
                        }
                        _ => ProviderError::Unavailable(message),
                    }));
                    return true;
                }
                _ => {} // ping, content_block_start/stop
            }
        }
        false
    }
}
