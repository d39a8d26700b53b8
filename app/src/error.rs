//! The app layer's one error type, shared by server functions and the REST API.
//!
//! Each error has a kind (which decides the HTTP status and how the UI shows it), a stable
//! snake_case code for programs, a message for people, and optionally the input field at fault.

use domain::ValidationError;
use domain::api::{ErrorBody, ErrorDetail};
use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request could not be read (malformed JSON, missing header): 400.
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    /// The thing already exists, or a key was reused for a different request: 409.
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// Readable but breaks a rule (a negative limit, an id with bad characters): 422.
    Invalid,
    LimitReached,
    Unavailable,
    Internal,
    /// A model provider failed or answered nonsense: 502.
    BadGateway,
    /// A model provider did not answer in time: 504.
    GatewayTimeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Invalid => 422,
            Self::LimitReached => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::BadGateway => 502,
            Self::GatewayTimeout => 504,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// With a refusal at the limit: the tokens left.
    #[serde(default)]
    pub remaining_tokens: Option<u64>,
}

impl AppError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_owned(),
            message: message.into(),
            field: None,
            remaining_tokens: None,
        }
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    pub fn user_not_found(user_id: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "user_not_found",
            format!("There is no user with the id '{user_id}'."),
        )
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorKind::Unauthenticated,
            "unauthenticated",
            "Log in first, or send an API key as 'Authorization: Bearer <key>'.",
        )
    }

    /// The error a person sees when something broke on our side; the cause is logged, not sent.
    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal",
            "Something went wrong on our side. Please try again.",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorKind::Unavailable,
            "unavailable",
            "The service cannot reach its database right now. Please try again shortly.",
        )
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body every API error answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.clone(),
                message: self.message.clone(),
                field: self.field.clone(),
                remaining_tokens: self.remaining_tokens,
            },
        }
    }
}

impl From<ValidationError> for AppError {
    fn from(e: ValidationError) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            code: e.code,
            message: e.message,
            field: Some(e.field),
            remaining_tokens: None,
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    /// Transport failures (network down, a body that did not decode) seen by the client.
    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            ServerFnErrorErr::Request(_) | ServerFnErrorErr::Response(_) => Self::new(
                ErrorKind::Unavailable,
                "network",
                "Could not reach the server. Check your connection and try again.",
            ),
            ServerFnErrorErr::Args(msg) | ServerFnErrorErr::Deserialization(msg) => Self::new(
                ErrorKind::BadRequest,
                "bad_request",
                format!("The request could not be read: {msg}"),
            ),
            _ => Self::internal(),
        }
    }
}
