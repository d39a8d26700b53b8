//! Turning errors into HTTP answers: the status from the error's kind, the JSON body
//! `{"error": {"code", "message", "field"?}}`.

use app::error::{AppError, ErrorKind};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An [`AppError`] on its way out of a REST handler.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

impl From<domain::ValidationError> for ApiError {
    fn from(e: domain::ValidationError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0.body())).into_response()
    }
}

pub fn not_found_route() -> ApiError {
    ApiError(AppError::new(
        ErrorKind::NotFound,
        "route_not_found",
        "There is no API endpoint at this address. See the README for the list of endpoints.",
    ))
}

pub fn method_not_allowed() -> Response {
    let body = AppError::new(
        ErrorKind::BadRequest,
        "method_not_allowed",
        "This endpoint does not accept that HTTP method.",
    )
    .body();
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
