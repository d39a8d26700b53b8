//! Model calls over REST: `POST /api/invoke` (JSON, or server-sent events with `stream: true`),
//! `POST /api/estimate` and `GET /api/models`.

use app::error::AppError;
use app::service::{CallEvent, RunningCall, Services};
use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use domain::InvokeBody;
use domain::api::{DeltaView, EstimateBody, EstimateView, ModelView};
use futures::StreamExt;
use serde::Serialize;

use super::ApiError;
use super::auth::Authenticated;
use super::extract::ApiJson;

pub async fn invoke(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<InvokeBody>,
) -> Result<Response, ApiError> {
    let request = body.validate()?;
    let stream = request.stream;
    let call = services.invoke(&caller, request).await?;
    if stream {
        return Ok(event_stream(call).into_response());
    }
    Ok(match call.finish().await {
        Ok(view) => Json(view).into_response(),
        Err(e) => ApiError(e).into_response(),
    })
}

/// The error event's body: the error as everywhere, and what the call consumed (when it had
/// started generating before it failed).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedView {
    error: domain::api::ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<domain::api::InvokeView>,
}

fn json_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| Event::default().event("error").data("{}"))
}

/// `start`, then `delta`s, then `done` (or `error`). When the client goes away the body stream
/// is dropped, the call sees it, stops the provider and records what was generated.
pub fn event_stream(
    call: RunningCall,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>> + Send> {
    let start = json_event("start", &call.start);
    let events = futures::stream::unfold(call.events, |mut events| async move {
        let event = events.recv().await?;
        let sse = match event {
            CallEvent::Delta(text) => json_event("delta", &DeltaView { text }),
            CallEvent::Done(view) => json_event("done", &*view),
            CallEvent::Failed(error, result) => json_event(
                "error",
                &FailedView {
                    error: error.body().error,
                    result: result.map(|r| *r),
                },
            ),
        };
        Some((Ok(sse), events))
    });
    Sse::new(futures::stream::once(async move { Ok(start) }).chain(events))
        .keep_alive(KeepAlive::default())
}

pub async fn estimate(
    State(services): State<Services>,
    Authenticated(_caller): Authenticated,
    ApiJson(body): ApiJson<EstimateBody>,
) -> Result<Json<EstimateView>, ApiError> {
    Ok(Json(services.estimate(&body)?))
}

pub async fn models(
    State(services): State<Services>,
    Authenticated(_caller): Authenticated,
) -> Json<Vec<ModelView>> {
    Json(services.list_models())
}

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        e.0
    }
}
