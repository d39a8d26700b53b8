//! Streaming a model call into the page: `POST /api/invoke` with `stream: true`, read piece by
//! piece as server-sent events (the same parser the server uses for providers), stoppable with
//! an `AbortController`. Server functions answer in one piece, so this one call goes to the REST
//! endpoint; the session cookie authenticates it.

use domain::api::{DeltaView, ErrorBody, InvokeStartView, InvokeView};
use serde::Deserialize;

use crate::error::{AppError, ErrorKind};

/// What arrives while a call runs.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Start(InvokeStartView),
    Delta(String),
    Done(Box<InvokeView>),
    /// The call failed after it started; what it consumed (if anything) was recorded.
    Failed(AppError, Option<Box<InvokeView>>),
}

#[derive(Deserialize)]
struct FailedBody {
    error: domain::api::ErrorDetail,
    #[serde(default)]
    result: Option<InvokeView>,
}

/// The error kind an HTTP status stands for (the reverse of [`ErrorKind::status`]).
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        400 => ErrorKind::BadRequest,
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        413 => ErrorKind::PayloadTooLarge,
        415 => ErrorKind::UnsupportedMediaType,
        422 => ErrorKind::Invalid,
        429 => ErrorKind::LimitReached,
        502 => ErrorKind::BadGateway,
        503 => ErrorKind::Unavailable,
        504 => ErrorKind::GatewayTimeout,
        _ => ErrorKind::Internal,
    }
}

/// An error answer (`{"error": {...}}`) as an [`AppError`].
pub fn error_from_answer(status: u16, body: &str) -> AppError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => AppError {
            kind: kind_for_status(status),
            code: b.error.code,
            message: b.error.message,
            field: b.error.field,
            remaining_tokens: b.error.remaining_tokens,
        },
        Err(_) => AppError::new(
            kind_for_status(status),
            "unreadable_answer",
            format!("The server answered {status} and nothing readable."),
        ),
    }
}

/// One server-sent event of `/api/invoke` as a [`StreamEvent`]; unknown events are skipped.
pub fn decode_event(event: &domain::sse::SseEvent) -> Option<StreamEvent> {
    match event.event.as_str() {
        "start" => serde_json::from_str(&event.data)
            .ok()
            .map(StreamEvent::Start),
        "delta" => serde_json::from_str::<DeltaView>(&event.data)
            .ok()
            .map(|d| StreamEvent::Delta(d.text)),
        "done" => serde_json::from_str(&event.data)
            .ok()
            .map(|v| StreamEvent::Done(Box::new(v))),
        "error" => serde_json::from_str::<FailedBody>(&event.data)
            .ok()
            .map(|f| {
                StreamEvent::Failed(
                    AppError {
                        kind: ErrorKind::BadGateway,
                        code: f.error.code,
                        message: f.error.message,
                        field: f.error.field,
                        remaining_tokens: f.error.remaining_tokens,
                    },
                    f.result.map(Box::new),
                )
            }),
        _ => None,
    }
}

/// Sends the call and hands each event to `on_event` as it arrives. Ends when the stream ends,
/// or with an error: the call was refused (429 at the limit, 422, …), the network failed, or
/// `abort` was signalled (then the server records what was generated).
#[cfg(feature = "hydrate")]
pub async fn invoke_streaming(
    body: &domain::InvokeBody,
    abort: &web_sys::AbortSignal,
    mut on_event: impl FnMut(StreamEvent),
) -> Result<(), AppError> {
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;

    let network = |_: wasm_bindgen::JsValue| {
        AppError::new(
            ErrorKind::Unavailable,
            "network",
            "The connection to the server was lost.",
        )
    };
    let json = serde_json::to_string(&domain::InvokeBody {
        stream: Some(true),
        ..body.clone()
    })
    .map_err(|_| AppError::internal())?;
    let headers = web_sys::Headers::new().map_err(network)?;
    headers
        .set("content-type", "application/json")
        .map_err(network)?;
    headers
        .set("accept", "text/event-stream")
        .map_err(network)?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&wasm_bindgen::JsValue::from_str(&json));
    init.set_credentials(web_sys::RequestCredentials::SameOrigin);
    init.set_signal(Some(abort));
    let window = web_sys::window().ok_or_else(AppError::internal)?;
    let response: web_sys::Response =
        JsFuture::from(window.fetch_with_str_and_init("/api/invoke", &init))
            .await
            .map_err(network)?
            .dyn_into()
            .map_err(network)?;
    if !response.ok() {
        let text = JsFuture::from(response.text().map_err(network)?)
            .await
            .map_err(network)?
            .as_string()
            .unwrap_or_default();
        return Err(error_from_answer(response.status(), &text));
    }
    let reader: web_sys::ReadableStreamDefaultReader = response
        .body()
        .ok_or_else(AppError::internal)?
        .get_reader()
        .dyn_into()
        .map_err(|_| network(wasm_bindgen::JsValue::NULL))?;
    let mut parser = domain::sse::SseParser::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(network)?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if done {
            return Ok(());
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(network)?;
        let bytes = js_sys::Uint8Array::new(&value).to_vec();
        for event in parser.push(&bytes) {
            if let Some(event) = decode_event(&event) {
                on_event(event);
            }
        }
    }
}
