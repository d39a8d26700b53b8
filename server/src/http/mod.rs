//! The REST API under `/api`, JSON in camelCase. Handlers are thin: extract and validate the
//! input, call the same [`Services`] the server functions use, answer.

mod error;
mod extract;

use std::collections::HashMap;

use app::error::{AppError, ErrorKind};
use app::service::Services;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use domain::api::{CreateUserBody, RecordUsageBody, RecordUsageView, SetLimitBody, UserView};
use domain::{SortDirection, UsageSource, UserSortKey};

pub use error::ApiError;
pub use extract::{ApiJson, PathUserId, parse_json};

/// The REST routes (`/api/…`) and health checks.
pub fn api_router(services: Services) -> Router {
    let api = Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{user_id}", get(get_user))
        .route("/users/{user_id}/limit", put(set_limit))
        .route("/users/{user_id}/usage", post(record_usage))
        .fallback(|| async { error::not_found_route() })
        .method_not_allowed_fallback(|| async { error::method_not_allowed() })
        .with_state(services.clone());
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(services)
}

async fn create_user(
    State(services): State<Services>,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(services.create_user(&body).await?),
    ))
}

async fn list_users(
    State(services): State<Services>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let (key, direction) = parse_sort(&query)?;
    Ok(Json(services.list_users(key, direction).await?))
}

/// `?sort=usage|limit|percentage|name|userId|remaining|lastUpdated&direction=asc|desc`
fn parse_sort(query: &HashMap<String, String>) -> Result<(UserSortKey, SortDirection), ApiError> {
    let invalid = |field: &str, message: &str| {
        ApiError(
            AppError::new(ErrorKind::Invalid, &format!("invalid_{field}"), message)
                .with_field(field),
        )
    };
    let key = match query.get("sort") {
        None => UserSortKey::UserId,
        Some(raw) => serde_json::from_value(serde_json::Value::String(raw.clone())).map_err(|_| {
            invalid(
                "sort",
                "sort must be one of userId, name, usage, limit, percentage, remaining, lastUpdated.",
            )
        })?,
    };
    let direction = match query.get("direction").map(String::as_str) {
        None | Some("asc") => SortDirection::Asc,
        Some("desc") => SortDirection::Desc,
        Some(_) => return Err(invalid("direction", "direction must be asc or desc.")),
    };
    Ok((key, direction))
}

async fn get_user(
    State(services): State<Services>,
    PathUserId(user_id): PathUserId,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(services.get_user(&user_id).await?))
}

async fn set_limit(
    State(services): State<Services>,
    PathUserId(user_id): PathUserId,
    ApiJson(body): ApiJson<SetLimitBody>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(services.set_limit(&user_id, &body).await?))
}

async fn record_usage(
    State(services): State<Services>,
    PathUserId(user_id): PathUserId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RecordUsageBody>,
) -> Result<Json<RecordUsageView>, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError(
                AppError::new(
                    ErrorKind::Invalid,
                    "invalid_idempotency_key",
                    "The Idempotency-Key header must be visible ASCII characters.",
                )
                .with_field("Idempotency-Key"),
            )
        })?),
    };
    Ok(Json(
        services
            .record_usage(user_id, &body, UsageSource::Api, key)
            .await?,
    ))
}

/// 200 when the database answers, 503 otherwise.
async fn healthz(State(services): State<Services>) -> Response {
    if services.healthy().await {
        Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        ApiError(AppError::unavailable()).into_response()
    }
}

/// 200 while the process runs; touches no database (the HTTP ceiling in benchmarks).
async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}
