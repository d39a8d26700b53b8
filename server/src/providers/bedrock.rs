//! AWS Bedrock's Converse and ConverseStream APIs, SigV4-signed with the standard AWS
//! environment credentials. The stream is AWS's binary event-stream: `contentBlockDelta` carries
//! text, `messageStop` the stop reason, `metadata` the usage (input, output, cache reads and
//! writes); an `exception` message is the provider failing part-way.

use std::sync::Arc;
use std::time::Duration;

use app::ports::{ModelProvider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream};
use app::service::ModelEntry;
use async_trait::async_trait;
use domain::{CallUsage, ChatRole, FinishReason, ModelName};
use futures::StreamExt;
use serde_json::{Value, json};

use super::eventstream::Decoder;
use super::openai::{status_error, transport_error};
use super::sigv4::{self, Credentials, SigningInput};

pub fn entry(model: ModelName, provider: Arc<BedrockProvider>) -> ModelEntry {
    ModelEntry {
        label: format!("{} (AWS Bedrock)", model.as_str()),
        model,
        provider,
        default_output: 1_024,
        max_output: 64_000,
    }
}

pub struct BedrockProvider {
    /// `https://bedrock-runtime.{region}.amazonaws.com`, or another endpoint (tests).
    endpoint: String,
    region: String,
    credentials: Credentials,
    client: reqwest::Client,
}

impl std::fmt::Debug for BedrockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BedrockProvider")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl BedrockProvider {
    pub fn new(
        region: String,
        endpoint: Option<String>,
        credentials: Credentials,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let endpoint = super::base_url(
            "the Bedrock endpoint",
            &endpoint.unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com")),
        )?;
        let client = super::http_client(idle_timeout)?;
        Ok(Self {
            endpoint,
            region,
            credentials,
            client,
        })
    }

    /// The host as signed: the endpoint without its scheme.
    fn host(&self) -> &str {
        self.endpoint
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&self.endpoint)
    }
}

/// The Converse request body: system prompts apart, user and assistant turns alternating.
pub fn request_body(request: &ProviderRequest) -> Value {
    let system: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role == ChatRole::System)
        .map(|m| json!({"text": m.content}))
        .collect();
    let mut messages: Vec<Value> = Vec::new();
    for m in request
        .messages
        .iter()
        .filter(|m| m.role != ChatRole::System)
    {
        match messages.last_mut() {
            Some(last) if last["role"] == m.role.as_str() => {
                last["content"]
                    .as_array_mut()
                    .expect("content is a list")
                    .push(json!({"text": m.content}));
            }
            _ => messages.push(json!({"role": m.role.as_str(), "content": [{"text": m.content}]})),
        }
    }
    let mut body = json!({
        "messages": messages,
        "inferenceConfig": {"maxTokens": request.max_output},
    });
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    body
}

/// Bedrock's usage in our terms: input counts every prompt token, cache reads and writes too.
pub fn usage_from(usage: &Value) -> CallUsage {
    let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let (uncached, read, write) = (
        n("inputTokens"),
        n("cacheReadInputTokens"),
        n("cacheWriteInputTokens"),
    );
    CallUsage {
        input_tokens: uncached + read + write,
        output_tokens: n("outputTokens"),
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

/// An exception's type (from the `:exception-type` header or the error body) as our error.
fn exception(kind: &str, message: String) -> ProviderError {
    match kind {
        "throttlingException" | "ThrottlingException" => ProviderError::RateLimited(message),
        "accessDeniedException" | "AccessDeniedException" | "UnrecognizedClientException" => {
            ProviderError::Unauthorized(message)
        }
        "validationException" | "ValidationException" => ProviderError::Refused(message),
        _ => ProviderError::Unavailable(message),
    }
}

#[async_trait]
impl ModelProvider for BedrockProvider {
    fn name(&self) -> &str {
        "bedrock"
    }

    fn counts_exactly(&self) -> bool {
        false
    }

    async fn start(&self, request: ProviderRequest) -> Result<ProviderStream, ProviderError> {
        let action = if request.stream {
            "converse-stream"
        } else {
            "converse"
        };
        let path = format!(
            "/model/{}/{action}",
            sigv4::uri_encode(request.model.as_str(), false)
        );
        let body = serde_json::to_vec(&request_body(&request))
            .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("host", self.host()),
            ("x-amz-date", &amz_date),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token", token));
        }
        let authorization = sigv4::authorization(
            &SigningInput {
                method: "POST",
                path: &path,
                query: &[],
                headers: &headers,
                body: &body,
                region: &self.region,
                service: "bedrock",
                amz_date: &amz_date,
            },
            &self.credentials,
        );
        let mut call = self
            .client
            .post(format!("{}{path}", self.endpoint))
            .header("authorization", authorization)
            .body(body);
        for (name, value) in headers.iter().filter(|(n, _)| *n != "host") {
            call = call.header(*name, *value);
        }
        let response = call.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let kind = response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(':').next().unwrap_or(v).to_owned());
            let text = response.text().await.unwrap_or_default();
            let message: String = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text)
                .chars()
                .take(300)
                .collect();
            return Err(match (status, kind.as_deref()) {
                (400, Some(kind)) => exception(kind, message),
                _ => status_error(status, &json!({"error": {"message": message}}).to_string()),
            });
        }
        if !request.stream {
            let value: Value = response.json().await.map_err(transport_error)?;
            let content = value
                .pointer("/output/message/content")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    ProviderError::BadResponse("no output message in the answer".into())
                })?;
            let text: String = content.iter().filter_map(|c| c["text"].as_str()).collect();
            let mut events = vec![ProviderEvent::Text(text)];
            if let Some(usage) = value.get("usage") {
                events.push(ProviderEvent::Usage(usage_from(usage)));
            }
            let reason = value["stopReason"].as_str().unwrap_or("end_turn");
            events.push(ProviderEvent::Finished(finish_from(reason)));
            return Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))));
        }
        Ok(Box::pin(read_stream(
            response.bytes_stream().map(|r| r.map_err(transport_error)),
        )))
    }
}

/// ConverseStream's events as ours. The stream is complete after `metadata` (the usage), which
/// follows `messageStop`; one that ends earlier was cut.
pub fn read_stream<S, B>(
    bytes: S,
) -> impl futures::Stream<Item = Result<ProviderEvent, ProviderError>> + Send + 'static
where
    S: futures::Stream<Item = Result<B, ProviderError>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
{
    super::decode_stream(bytes, FrameReader(Decoder::default()))
}

/// ConverseStream's binary frames, complete after `metadata`.
struct FrameReader(Decoder);

impl super::StreamDecoder for FrameReader {
    const CUT: &'static str = "its usage metadata";

    fn decode(&mut self, chunk: &[u8], out: &mut super::Events) -> bool {
        let messages = match self.0.push(chunk) {
            Ok(messages) => messages,
            Err(e) => {
                out.push_back(Err(ProviderError::BadResponse(e.to_string())));
                return true;
            }
        };
        for message in messages {
            let payload: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            if message.header(":message-type") == Some("exception") {
                let kind = message.header(":exception-type").unwrap_or("exception");
                let text = payload["message"].as_str().unwrap_or(kind).to_owned();
                out.push_back(Err(exception(kind, text)));
                return true;
            }
            match message.header(":event-type").unwrap_or_default() {
                "contentBlockDelta" => {
                    if let Some(text) = payload["delta"]["text"].as_str().filter(|t| !t.is_empty())
                    {
                        out.push_back(Ok(ProviderEvent::Text(text.to_owned())));
                    }
                }
                "messageStop" => {
                    let reason = payload["stopReason"].as_str().unwrap_or("end_turn");
                    out.push_back(Ok(ProviderEvent::Finished(finish_from(reason))));
                }
                "metadata" => {
                    if let Some(usage) = payload.get("usage") {
                        out.push_back(Ok(ProviderEvent::Usage(usage_from(usage))));
                    }
                    return true;
                }
                _ => {} // messageStart, contentBlockStart/Stop
            }
        }
        false
    }
}
