use serde::{Deserialize, Serialize};

/// A value a caller supplied that breaks a domain rule.
///
/// `code` is stable (snake_case, safe to match on in clients); `message` is written for a person
/// and says what was wrong and what is allowed; `field` names the input (as the API spells it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: String,
    pub code: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}
