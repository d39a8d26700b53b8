//! What crosses the wire (REST and server functions): JSON in camelCase.
//!
//! Request bodies use plain types (`i64`, `String`) so that a wrong value reaches validation and
//! gets a precise message, and reject unknown fields so a typo is an error, not a silent default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{Role, Scope, validate_key_name, validate_password};
use crate::chat::{ChatMessage, FinishReason};
use crate::math::{UsageLevel, percentage_from_bps};
use crate::pricing::{CallUsage, picos_to_micros};
use crate::{
    DisplayName, IdempotencyKey, ModelName, NewUser, RecordUsage, TokenLimit, UsageContext,
    UsageSource, UserId, UserUsage, ValidationError,
};

/// A user's usage as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub display_name: String,
    pub role: Role,
    pub token_limit: u64,
    pub token_usage: u64,
    pub tokens_reserved: u64,
    pub lifetime_tokens: u64,
    /// Everything this user's calls have cost, rounded to micro-dollars; `lifetimeCostPicos` is exact.
    pub lifetime_cost_micros: u64,
    pub lifetime_cost_picos: u64,
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
            role: u.role,
            token_limit: u.token_limit.get(),
            token_usage: u.tokens_used,
            tokens_reserved: u.tokens_reserved,
            lifetime_tokens: u.lifetime_tokens,
            lifetime_cost_micros: picos_to_micros(u.lifetime_cost_picos),
            lifetime_cost_picos: u.lifetime_cost_picos,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserBody {
    pub user_id: String,
    pub token_limit: i64,
    #[serde(default)]
    pub display_name: Option<String>,
    /// "user" (the default) or "admin".
    #[serde(default)]
    pub role: Option<String>,
    /// The first password. Without one the server makes one up and answers it once.
    #[serde(default)]
    pub password: Option<String>,
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
        let role = self.role.as_deref().map(Role::parse).transpose()?;
        if let Some(password) = &self.password {
            validate_password(password)?;
        }
        Ok(NewUser::new(user_id, display_name, token_limit).with_role(role.unwrap_or(Role::User)))
    }
}

/// The answer to `POST /api/users`: the user, and the generated first password when the
/// request did not set one (shown this once, never stored in clear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedUserView {
    #[serde(flatten)]
    pub user: UserView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_password: Option<String>,
}

/// `POST /api/session`: log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginBody {
    pub user_id: String,
    pub password: String,
}

/// `PUT /api/users/{userId}/password`: a user changes their own (with the current one); an
/// admin sets anyone's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPasswordBody {
    #[serde(default)]
    pub current_password: Option<String>,
    pub new_password: String,
}

/// Who is logged in: `GET /api/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeView {
    pub user_id: String,
    pub display_name: String,
    pub role: Role,
}

/// `POST /api/users/{userId}/keys`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyBody {
    pub name: String,
    /// e.g. `["usage:record"]`; only admins may grant scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl CreateApiKeyBody {
    pub fn validate(&self) -> Result<(String, Vec<Scope>), ValidationError> {
        let name = validate_key_name(&self.name)?;
        let scopes = Scope::parse_list(&self.scopes.join(" "))?;
        Ok((name, scopes))
    }
}

/// An API key as listed: never the secret, only its first characters to recognise it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub key_id: i64,
    pub user_id: String,
    pub name: String,
    /// The key's public beginning, e.g. `tm_3f9a1c2b`.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The answer to creating a key: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKeyView {
    pub key: String,
    pub api_key: ApiKeyView,
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
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub prompt_id: Option<String>,
}

impl RecordUsageBody {
    pub fn validate(
        &self,
        user_id: UserId,
        source: UsageSource,
        idempotency_key: IdempotencyKey,
    ) -> Result<RecordUsage, ValidationError> {
        let model = self.model.as_deref().map(ModelName::parse).transpose()?;
        let context = UsageContext::parse(
            self.conversation_id.as_deref(),
            self.agent_id.as_deref(),
            self.prompt_id.as_deref(),
        )?;
        Ok(RecordUsage::new(
            user_id,
            self.tokens_consumed,
            self.input_tokens,
            self.output_tokens,
            model,
            source,
            idempotency_key,
        )?
        .with_context(context))
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
    /// With `token_limit_exceeded`: the tokens the user has left.
    #[serde(
        default,
        rename = "remainingTokens",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining_tokens: Option<u64>,
}

/// A demo account the login page offers in demo mode (`make run`): public by design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoLoginView {
    pub user_id: String,
    pub password: String,
    pub role: Role,
}

/// One page of the user list, and where it sits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPageView {
    pub users: Vec<UserView>,
    pub page: crate::PageInfo,
}

/// A call's tokens and cost, as answered to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
    /// The cost rounded to micro-dollars (halves up); `costPicos` is exact.
    pub cost_micros: u64,
    pub cost_picos: u64,
}

impl CallUsageView {
    pub fn new(usage: &CallUsage, cost_picos: u64) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            total_tokens: usage.total(),
            cost_micros: picos_to_micros(cost_picos),
            cost_picos,
        }
    }
}

/// The answer to a model call (`POST /api/invoke`, and the `done` event of its stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeView {
    pub reply: String,
    pub model: String,
    pub provider: String,
    pub finish_reason: FinishReason,
    pub usage: CallUsageView,
    /// From sending the request to the last token, in milliseconds.
    pub latency_ms: u64,
    pub remaining_tokens: u64,
    /// The user right after the call was settled.
    pub user: UserView,
    /// The ledger event that recorded the call (none when it consumed nothing).
    pub event_id: Option<i64>,
}

/// The first event of a streamed call: what it holds while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeStartView {
    pub model: String,
    pub provider: String,
    pub reserved_tokens: u64,
    pub max_output_tokens: u64,
}

/// A piece of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaView {
    pub text: String,
}

/// A model callers may choose, with its price in dollars per million tokens (as text, exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub model: String,
    pub provider: String,
    /// Shown to people, e.g. "Demo model (offline, not a real LLM)".
    pub label: String,
    pub default: bool,
    pub max_output_tokens: u64,
    pub input_usd_per_million: Option<String>,
    pub output_usd_per_million: Option<String>,
}

/// `POST /api/estimate`: what a prompt would cost before it is sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EstimateBody {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
}

/// A prompt's estimated tokens and the most the call could cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EstimateView {
    pub model: String,
    pub input_tokens: u64,
    pub max_output_tokens: u64,
    /// Prompt plus the longest answer, at the model's price (exact picos, and rounded micros).
    pub max_cost_picos: u64,
    pub max_cost_micros: u64,
}
