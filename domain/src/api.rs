//! What crosses the wire (REST and server functions): JSON in camelCase.
//!
//! Request bodies use plain types (`i64`, `String`) so that a wrong value reaches validation and
//! gets a precise message, and reject unknown fields so a typo is an error, not a silent default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::math::{UsageLevel, percentage_from_bps};
use crate::{
    DisplayName, IdempotencyKey, ModelName, NewUser, RecordUsage, TokenLimit, UsageSource, UserId,
    UserUsage, ValidationError,
};

/// A user's usage as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub display_name: String,
    pub token_limit: u64,
    pub token_usage: u64,
    pub tokens_reserved: u64,
    pub lifetime_tokens: u64,
    pub remaining_tokens: u64,
    /// Percent of the limit used, two decimals, rounded down; may exceed 100.
    pub percentage_used: f64,
    /// The same share in basis points (exact integer).
    pub used_basis_points: u64,
    pub level: UsageLevel,
    pub last_updated: DateTime<Utc>,
}

impl From<&UserUsage> for UserView {
    fn from(u: &UserUsage) -> Self {
        let bps = u.used_bps();
        Self {
            user_id: u.user_id.to_string(),
            display_name: u.display_name.as_str().to_owned(),
            token_limit: u.token_limit.get(),
            token_usage: u.tokens_used,
            tokens_reserved: u.tokens_reserved,
            lifetime_tokens: u.lifetime_tokens,
            remaining_tokens: u.remaining(),
            percentage_used: percentage_from_bps(bps),
            used_basis_points: bps,
            level: u.level(),
            last_updated: u.updated_at,
        }
    }
}

impl From<UserUsage> for UserView {
    fn from(u: UserUsage) -> Self {
        Self::from(&u)
    }
}

/// `POST /api/users`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserBody {
    pub user_id: String,
    pub token_limit: i64,
    #[serde(default)]
    pub display_name: Option<String>,
}

impl CreateUserBody {
    pub fn validate(&self) -> Result<NewUser, ValidationError> {
        let user_id = UserId::parse(&self.user_id)?;
        let token_limit = TokenLimit::new(self.token_limit)?;
        let display_name = self
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?;
        Ok(NewUser::new(user_id, display_name, token_limit))
    }
}

/// `PUT /api/users/{userId}/limit`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetLimitBody {
    pub token_limit: i64,
}

impl SetLimitBody {
    pub fn validate(&self) -> Result<TokenLimit, ValidationError> {
        TokenLimit::new(self.token_limit)
    }
}

/// `POST /api/users/{userId}/usage`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordUsageBody {
    pub tokens_consumed: i64,
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub model: Option<String>,
}

impl RecordUsageBody {
    pub fn validate(
        &self,
        user_id: UserId,
        source: UsageSource,
        idempotency_key: IdempotencyKey,
    ) -> Result<RecordUsage, ValidationError> {
        let model = self.model.as_deref().map(ModelName::parse).transpose()?;
        RecordUsage::new(
            user_id,
            self.tokens_consumed,
            self.input_tokens,
            self.output_tokens,
            model,
            source,
            idempotency_key,
        )
    }
}

/// The answer to a usage report: the user right after this event, and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordUsageView {
    #[serde(flatten)]
    pub user: UserView,
    pub event_id: i64,
    pub tokens_recorded: u64,
    /// True when this answer repeats the first result of an earlier request with the same
    /// idempotency key (nothing was recorded this time).
    pub replayed: bool,
}

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
