//! Request extractors that fail with our JSON errors instead of axum's plain-text rejections.

use app::error::{AppError, ErrorKind};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use domain::UserId;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body: `Content-Type: application/json` (else 415), within the body size limit
/// (else 413), well-formed (else 400), with fields of the right types (else 422 naming the field).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError(AppError::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "Send the body as JSON with the header Content-Type: application/json.",
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError(AppError::new(
                    ErrorKind::PayloadTooLarge,
                    "payload_too_large",
                    "The request body is too large.",
                ))
            } else {
                ApiError(AppError::new(
                    ErrorKind::BadRequest,
                    "unreadable_body",
                    "The request body could not be read.",
                ))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, telling syntax errors (400) from values of the wrong shape (422, with the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => match de.end() {
            Ok(()) => Ok(value),
            Err(trailing) => Err(ApiError(AppError::new(
                ErrorKind::BadRequest,
                "malformed_json",
                format!("The request body is not valid JSON: {trailing}."),
            ))),
        },
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let error = match inner.classify() {
                serde_json::error::Category::Syntax
                | serde_json::error::Category::Eof
                | serde_json::error::Category::Io => AppError::new(
                    ErrorKind::BadRequest,
                    "malformed_json",
                    format!("The request body is not valid JSON: {inner}."),
                ),
                serde_json::error::Category::Data => {
                    let field = (path != ".").then_some(path);
                    let message = match &field {
                        Some(f) => format!("The field {f} has an invalid value: {inner}."),
                        None => format!("The request body has the wrong shape: {inner}."),
                    };
                    let error = AppError::new(ErrorKind::Invalid, "invalid_field", message);
                    match field {
                        Some(f) => error.with_field(&f),
                        None => error,
                    }
                }
            };
            Err(ApiError(error))
        }
    }
}

/// The `{userId}` in a path, validated before any query runs.
pub struct PathUserId(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for PathUserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| {
                    ApiError(
                        AppError::new(
                            ErrorKind::Invalid,
                            "invalid_user_id",
                            "The user id in the address could not be read.",
                        )
                        .with_field("userId"),
                    )
                })?;
        Ok(Self(UserId::parse(&raw)?))
    }
}
