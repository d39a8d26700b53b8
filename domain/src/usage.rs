use serde::{Deserialize, Serialize};

use crate::pricing::CallUsage;
use crate::{UserId, ValidationError};

/// Tokens in one recorded use: a whole number from 1 to 10^9.
///
/// No single model call comes near a billion tokens; the bound keeps a user's counter far from
/// 64-bit overflow for the life of the system (over 9 billion maximal events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenAmount(u64);

impl TokenAmount {
    pub const MAX: u64 = 1_000_000_000;

    pub fn new(field: &str, value: i64) -> Result<Self, ValidationError> {
        let code = format!("invalid_{}", snake_case(field));
        if value <= 0 {
            return Err(ValidationError::new(
                field,
                &code,
                format!("{field} must be a positive whole number; got {value}."),
            ));
        }
        if value as u64 > Self::MAX {
            return Err(ValidationError::new(
                field,
                &code,
                format!(
                    "{field} must be at most {} per request; got {value}.",
                    Self::MAX
                ),
            ));
        }
        Ok(Self(value as u64))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// A part of a recorded use (input or output tokens): 0 to 10^9.
fn token_part(field: &str, value: i64) -> Result<u64, ValidationError> {
    if !(0..=TokenAmount::MAX as i64).contains(&value) {
        return Err(ValidationError::new(
            field,
            &format!("invalid_{}", snake_case(field)),
            format!(
                "{field} must be a whole number from 0 to {}; got {value}.",
                TokenAmount::MAX
            ),
        ));
    }
    Ok(value as u64)
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A model's name as providers spell it, e.g. `gpt-4o-mini` or
/// `anthropic.claude-sonnet-4-5-20250929-v1:0`: 1–128 characters from `A-Za-z0-9 . _ : / @ + -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelName(String);

impl ModelName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok_len = !raw.is_empty() && raw.len() <= Self::MAX_LEN;
        let ok_chars = raw.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '+' | '-')
        });
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "model",
                "invalid_model",
                "The model name must be 1 to 128 letters, digits or . _ : / @ + -.",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ModelName> for String {
    fn from(value: ModelName) -> Self {
        value.0
    }
}

/// An id the caller gives a conversation, an agent or a prompt, to group usage by it:
/// 1–128 printable characters (no control characters), kept as given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String")]
pub struct ContextId(String);

impl ContextId {
    pub const MAX_LEN: usize = 128;

    /// `field` names the JSON field in the error, e.g. `conversationId`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                &format!("invalid_{}", snake_case(field)),
                format!("{field} must be 1 to 128 characters, with no line breaks or tabs."),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<ContextId> for String {
    fn from(value: ContextId) -> Self {
        value.0
    }
}

/// What a use belonged to, when the caller says: its conversation, agent and prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UsageContext {
    pub conversation_id: Option<ContextId>,
    pub agent_id: Option<ContextId>,
    pub prompt_id: Option<ContextId>,
}

impl UsageContext {
    /// Validates the three optional ids as they arrive in a request body.
    pub fn parse(
        conversation_id: Option<&str>,
        agent_id: Option<&str>,
        prompt_id: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let id =
            |field: &str, raw: Option<&str>| raw.map(|r| ContextId::parse(field, r)).transpose();
        Ok(Self {
            conversation_id: id("conversationId", conversation_id)?,
            agent_id: id("agentId", agent_id)?,
            prompt_id: id("promptId", prompt_id)?,
        })
    }
}

/// Makes a retried request record nothing twice: 1–200 visible ASCII characters, unique per user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                "Idempotency-Key",
                "invalid_idempotency_key",
                "The Idempotency-Key header must be 1 to 200 visible ASCII characters (no spaces).",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a recorded use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported through the REST API by a trusted backend.
    Api,
    /// Metered by tokenmeter around a model call it made.
    ModelCall,
    /// Generated by `tokenmeter seed-demo`.
    Demo,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::ModelCall => "model_call",
            Self::Demo => "demo",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "api" => Some(Self::Api),
            "model_call" => Some(Self::ModelCall),
            "demo" => Some(Self::Demo),
            _ => None,
        }
    }
}

/// One validated use of tokens, ready to be written to the ledger.
///
/// Invariant: when both `input_tokens` and `output_tokens` are known they add up to `tokens`;
/// when one is known it is at most `tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordUsage {
    pub user_id: UserId,
    pub tokens: TokenAmount,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub model: Option<ModelName>,
    pub source: UsageSource,
    pub idempotency_key: IdempotencyKey,
    /// Of the input: read from the provider's prompt cache, and written to it.
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of the output: hidden reasoning.
    pub reasoning_tokens: u64,
    /// What the use cost, in pico-dollars (0 when the model has no price).
    pub cost_picos: u64,
    /// Its conversation, agent and prompt, when known.
    pub context: UsageContext,
}

impl RecordUsage {
    /// Validates the raw numbers of a usage report.
    pub fn new(
        user_id: UserId,
        tokens_consumed: i64,
        input_tokens: Option<i64>,
        output_tokens: Option<i64>,
        model: Option<ModelName>,
        source: UsageSource,
        idempotency_key: IdempotencyKey,
    ) -> Result<Self, ValidationError> {
        let tokens = TokenAmount::new("tokensConsumed", tokens_consumed)?;
        let input_tokens = input_tokens
            .map(|v| token_part("inputTokens", v))
            .transpose()?;
        let output_tokens = output_tokens
            .map(|v| token_part("outputTokens", v))
            .transpose()?;
        let split_sum = input_tokens.unwrap_or(0) + output_tokens.unwrap_or(0);
        match (input_tokens, output_tokens) {
            (Some(i), Some(o)) if i + o != tokens.get() => {
                return Err(ValidationError::new(
                    "tokensConsumed",
                    "inconsistent_token_split",
                    format!(
                        "inputTokens ({i}) + outputTokens ({o}) must equal tokensConsumed ({}).",
                        tokens.get()
                    ),
                ));
            }
            _ if split_sum > tokens.get() => {
                return Err(ValidationError::new(
                    "tokensConsumed",
                    "inconsistent_token_split",
                    format!(
                        "inputTokens and outputTokens ({split_sum}) cannot exceed tokensConsumed ({}).",
                        tokens.get()
                    ),
                ));
            }
            _ => {}
        }
        Ok(Self {
            user_id,
            tokens,
            input_tokens,
            output_tokens,
            model,
            source,
            idempotency_key,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost_picos: 0,
            context: UsageContext::default(),
        })
    }

    /// A model call's use: its split, cache and reasoning counts, and its cost.
    pub fn from_call(
        user_id: UserId,
        usage: &CallUsage,
        model: ModelName,
        cost_picos: u64,
        idempotency_key: IdempotencyKey,
    ) -> Result<Self, ValidationError> {
        let usage = usage.normalized();
        let mut record = Self::new(
            user_id,
            usage.total() as i64,
            Some(usage.input_tokens as i64),
            Some(usage.output_tokens as i64),
            Some(model),
            UsageSource::ModelCall,
            idempotency_key,
        )?;
        record.cached_tokens = usage.cached_tokens;
        record.cache_write_tokens = usage.cache_write_tokens;
        record.reasoning_tokens = usage.reasoning_tokens;
        record.cost_picos = cost_picos;
        Ok(record)
    }

    /// The same use, belonging to this conversation, agent and prompt.
    pub fn with_context(mut self, context: UsageContext) -> Self {
        self.context = context;
        self
    }

    /// The split as a call's usage, for pricing: unknown parts count as input.
    pub fn as_call_usage(&self) -> CallUsage {
        let total = self.tokens.get();
        let output = self
            .output_tokens
            .unwrap_or(total - self.input_tokens.unwrap_or(total));
        CallUsage {
            input_tokens: self.tokens.get() - output,
            output_tokens: output,
            cached_tokens: self.cached_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
        }
    }

    /// Whether `other` asks for the same recording (used to detect a reused idempotency key).
    pub fn same_request_as(&self, other: &RecordUsage) -> bool {
        self.user_id == other.user_id
            && self.tokens == other.tokens
            && self.input_tokens == other.input_tokens
            && self.output_tokens == other.output_tokens
            && self.model == other.model
            && self.context == other.context
    }
}
