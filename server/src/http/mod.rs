//! The REST API under `/api`, JSON in camelCase. Handlers are thin: extract and validate the
//! input, call the same [`Services`] the server functions use, answer.

pub mod auth;
mod calls;
mod error;
mod extract;
pub mod gateway;
mod stats;

use std::collections::HashMap;

use app::error::{AppError, ErrorKind};
use app::service::Services;
use app::service::auth::{cleared_session_cookie, session_cookie};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use domain::api::{
    ApiKeyView, CreateApiKeyBody, CreateUserBody, CreatedApiKeyView, CreatedUserView, LoginBody,
    MeView, RecordUsageBody, RecordUsageView, SetLimitBody, SetPasswordBody, UserView,
};
use domain::{SortDirection, UsageSource, UserId, UserSortKey};

use self::auth::{Authenticated, Info};

pub use error::ApiError;
pub use extract::{ApiJson, PathUserId, parse_json};

/// The REST routes (`/api/…`) and health checks.
pub fn api_router(services: Services) -> Router {
    let api = Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{user_id}", get(get_user))
        .route("/users/{user_id}/limit", put(set_limit))
        .route("/users/{user_id}/usage", post(record_usage))
        .route("/users/{user_id}/password", put(set_password))
        .route("/users/{user_id}/keys", get(list_keys).post(create_key))
        .route("/users/{user_id}/keys/{key_id}", delete(revoke_key))
        .route("/session", post(login).delete(logout))
        .route("/me", get(me))
        .route("/invoke", post(calls::invoke))
        .route("/estimate", post(calls::estimate))
        .route("/models", get(calls::models))
        .route("/usage/stats", get(stats::usage_stats))
        .route("/usage/export.csv", get(stats::export_csv))
        .route("/usage/events.csv", get(stats::export_events_csv))
        .route("/usage/aggregator", get(stats::aggregator_status))
        .fallback(|| async { error::not_found_route() })
        .method_not_allowed_fallback(|| async { error::method_not_allowed() })
        .with_state(services.clone());
    Router::new()
        .nest("/api", api)
        .nest("/v1", gateway::router(services.clone()))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(services)
}

async fn create_user(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<(StatusCode, Json<CreatedUserView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(services.create_user(&caller, &body).await?),
    ))
}

async fn list_users(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let (key, direction) = parse_sort(&query)?;
    let filter = query.get("filter").map(String::as_str).unwrap_or("");
    Ok(Json(
        services.list_users(&caller, key, direction, filter).await?,
    ))
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
    Authenticated(caller): Authenticated,
    PathUserId(user_id): PathUserId,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(services.get_user(&caller, &user_id).await?))
}

async fn set_limit(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    PathUserId(user_id): PathUserId,
    ApiJson(body): ApiJson<SetLimitBody>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(services.set_limit(&caller, &user_id, &body).await?))
}

async fn record_usage(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
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
            .record_usage(&caller, user_id, &body, UsageSource::Api, key)
            .await?,
    ))
}

async fn set_password(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    PathUserId(user_id): PathUserId,
    ApiJson(body): ApiJson<SetPasswordBody>,
) -> Result<StatusCode, ApiError> {
    services.set_password(&caller, &user_id, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    PathUserId(user_id): PathUserId,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    Ok(Json(services.list_api_keys(&caller, &user_id).await?))
}

async fn create_key(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    PathUserId(user_id): PathUserId,
    ApiJson(body): ApiJson<CreateApiKeyBody>,
) -> Result<(StatusCode, Json<CreatedApiKeyView>), ApiError> {
    let created = services.create_api_key(&caller, &user_id, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn revoke_key(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    Path((raw_user_id, raw_key_id)): Path<(String, String)>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let user_id = UserId::parse(&raw_user_id)?;
    let key_id: i64 = raw_key_id.parse().map_err(|_| {
        ApiError(
            AppError::new(
                ErrorKind::Invalid,
                "invalid_key_id",
                "The key id in the address must be a whole number.",
            )
            .with_field("keyId"),
        )
    })?;
    Ok(Json(
        services.revoke_api_key(&caller, &user_id, key_id).await?,
    ))
}

/// Logs in with a password; the session cookie comes back in `Set-Cookie`.
async fn login(
    State(services): State<Services>,
    Info(info): Info,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let logged_in = services
        .login(&body, &info.client_addr, info.session_token.as_deref())
        .await?;
    let cookie = session_cookie(&logged_in.token, services.settings.session_ttl, info.secure);
    Ok(([(header::SET_COOKIE, cookie)], Json(logged_in.me)).into_response())
}

/// Ends the session of the cookie sent (if any) and deletes the cookie.
async fn logout(State(services): State<Services>, Info(info): Info) -> Result<Response, ApiError> {
    if let Some(token) = &info.session_token {
        services.logout(token).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cleared_session_cookie(info.secure))],
    )
        .into_response())
}

async fn me(
    Authenticated(caller): Authenticated,
    State(services): State<Services>,
) -> Result<Json<MeView>, ApiError> {
    let user = services.get_user(&caller, &caller.user_id).await?;
    Ok(Json(MeView {
        user_id: user.user_id,
        display_name: user.display_name,
        role: user.role,
    }))
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
