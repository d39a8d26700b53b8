//! An OpenAI-compatible gateway: `POST /v1/chat/completions` and `GET /v1/models`,
//! authenticated with tokenmeter API keys. An existing OpenAI SDK client is metered and limited
//! by changing only its base URL (`http://host:3000/v1`) and key. Errors come in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`.

use app::error::{AppError, ErrorKind};
use app::service::{CallEvent, Identity, RunningCall, Services};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::api::InvokeView;
use domain::{Caller, ChatMessage, ChatRole, Conversation, Credential, InvokeRequest, ModelName};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::parse_json;

pub fn router<S: Clone + Send + Sync + 'static>(services: Services) -> Router<S> {
    Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/models", get(models))
        .fallback(|| async {
            OpenAiError(AppError::new(
                ErrorKind::NotFound,
                "unknown_url",
                "This gateway serves /v1/chat/completions and /v1/models.",
            ))
        })
        .with_state(services)
}

/// An error in OpenAI's shape.
pub struct OpenAiError(pub AppError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match e.kind {
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::LimitReached => "insufficient_quota",
            ErrorKind::BadRequest
            | ErrorKind::Invalid
            | ErrorKind::Conflict
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            _ => "api_error",
        };
        let body = json!({"error": {
            "message": e.message,
            "type": kind,
            "param": e.field,
            "code": e.code,
        }});
        (status, Json(body)).into_response()
    }
}

impl From<AppError> for OpenAiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

impl From<domain::ValidationError> for OpenAiError {
    fn from(e: domain::ValidationError) -> Self {
        Self(e.into())
    }
}

/// The caller behind an API key (the gateway takes keys only, never a browser session).
pub struct KeyHolder(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for KeyHolder {
    type Rejection = OpenAiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let identity = parts
            .extensions
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous);
        match identity {
            Identity::Known { caller, .. } if caller.credential == Credential::ApiKey => {
                Ok(Self(caller))
            }
            Identity::Rejected(e) => Err(OpenAiError(e)),
            _ => Err(OpenAiError(AppError::new(
                ErrorKind::Unauthenticated,
                "missing_api_key",
                "Send a tokenmeter API key as 'Authorization: Bearer tm_…' (the OpenAI SDK's api_key).",
            ))),
        }
    }
}

/// The parts of a Chat Completions request that matter here; other fields (temperature, …)
/// are accepted and not forwarded.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<IncomingMessage>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Whose budget pays, for admin keys (OpenAI's `user` field): the key's owner otherwise.
    #[serde(default)]
    user: Option<String>,
    /// OpenAI's request metadata; `conversation_id`, `agent_id` and `prompt_id` group the usage.
    #[serde(default)]
    metadata: Option<std::collections::HashMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct IncomingMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

impl IncomingMessage {
    /// Text content: a string, or the text parts of a content array.
    fn into_message(self) -> Result<ChatMessage, domain::ValidationError> {
        let role = match self.role.as_str() {
            "system" | "developer" => ChatRole::System,
            "user" | "tool" | "function" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            other => {
                return Err(domain::ValidationError::new(
                    "messages",
                    "invalid_role",
                    format!(
                        "Unknown message role '{other}': use system, developer, user, assistant or tool."
                    ),
                ));
            }
        };
        let content = match self.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            Some(_) => {
                return Err(domain::ValidationError::new(
                    "messages",
                    "invalid_content",
                    "A message's content must be text or a list of text parts.",
                ));
            }
        };
        Ok(ChatMessage { role, content })
    }
}

async fn chat_completions(
    State(services): State<Services>,
    KeyHolder(caller): KeyHolder,
    body: axum::body::Bytes,
) -> Result<Response, OpenAiError> {
    let request: CompletionRequest = parse_json(&body).map_err(|e| OpenAiError(e.0))?;
    let messages = request
        .messages
        .into_iter()
        .map(IncomingMessage::into_message)
        .collect::<Result<Vec<_>, _>>()?;
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .map(domain::chat::validate_max_tokens)
        .transpose()?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let invoke = InvokeRequest {
        user_id: request
            .user
            .as_deref()
            .map(domain::UserId::parse)
            .transpose()?,
        conversation: Conversation::new(messages)?,
        model: request.model.as_deref().map(ModelName::parse).transpose()?,
        max_tokens,
        stream,
        context: {
            let meta = |key: &str| {
                request
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
            };
            domain::UsageContext::parse(
                meta("conversation_id"),
                meta("agent_id"),
                meta("prompt_id"),
            )?
        },
    };
    let call = services.invoke(&caller, invoke).await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    if stream {
        return Ok(chunk_stream(call, id, created, include_usage).into_response());
    }
    let view = call.finish().await?;
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": view.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": view.reply},
            "finish_reason": finish_reason(&view),
            "logprobs": null,
        }],
        "usage": usage_json(&view),
    });
    let mut response = Json(body).into_response();
    metering_headers(&mut response, &view);
    Ok(response)
}

fn finish_reason(view: &InvokeView) -> &'static str {
    match view.finish_reason {
        domain::FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage_json(view: &InvokeView) -> Value {
    let u = &view.usage;
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// What tokenmeter adds to an answer: the user's remaining tokens and the call's cost.
fn metering_headers(response: &mut Response, view: &InvokeView) {
    let headers = response.headers_mut();
    headers.insert(
        "x-tokenmeter-remaining-tokens",
        HeaderValue::from(view.remaining_tokens),
    );
    headers.insert(
        "x-tokenmeter-cost-micros",
        HeaderValue::from(view.usage.cost_micros),
    );
}

/// OpenAI's streaming shape: a first chunk with the role, content chunks, a chunk with the
/// finish reason, the usage chunk when asked for, then `[DONE]`.
fn chunk_stream(
    call: RunningCall,
    id: String,
    created: i64,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send> {
    let model = call.start.model.clone();
    let chunk = move |delta: Value, finish: Value, usage: Option<Value>| {
        let mut value = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        if let Some(usage) = usage {
            value["choices"] = json!([]);
            value["usage"] = usage;
        }
        Event::default().data(value.to_string())
    };
    let first = chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    );
    let events = futures::stream::unfold(Some(call.events), move |events| {
        let chunk = chunk.clone();
        async move {
            let mut events = events?;
            let out: Vec<Event> = match events.recv().await {
                None => return None,
                Some(CallEvent::Delta(text)) => vec![chunk(json!({"content": text}), Value::Null, None)],
                Some(CallEvent::Done(view)) => {
                    let mut out = vec![chunk(json!({}), json!(finish_reason(&view)), None)];
                    if include_usage {
                        out.push(chunk(Value::Null, Value::Null, Some(usage_json(&view))));
                    }
                    out.push(Event::default().data("[DONE]"));
                    return Some((out, None));
                }
                // The stream has begun (status 200 is sent): the error travels as a data event,
                // as OpenAI's own streams do.
                Some(CallEvent::Failed(error, _)) => vec![Event::default().data(
                    json!({"error": {"message": error.message, "type": "api_error", "param": null, "code": error.code}})
                        .to_string(),
                )],
            };
            Some((out, Some(events)))
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)));
    Sse::new(futures::stream::once(async move { Ok(first) }).chain(events))
        .keep_alive(KeepAlive::default())
}

async fn models(State(services): State<Services>, KeyHolder(_caller): KeyHolder) -> Json<Value> {
    let data: Vec<Value> = services
        .list_models()
        .into_iter()
        .map(|m| json!({"id": m.model, "object": "model", "created": 0, "owned_by": m.provider}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
