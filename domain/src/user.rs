use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::access::Role;
use crate::math::{UsageLevel, remaining_tokens, used_basis_points};

/// A user's identifier: 1–64 characters from `A-Z a-z 0-9 . _ @ -`.
///
/// Case-sensitive. The character set keeps ids safe in URLs, logs and file names without escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let invalid = |why: &str| {
            ValidationError::new(
                "userId",
                "invalid_user_id",
                format!("The user id {why}. Use 1 to 64 letters, digits, '.', '_', '@' or '-'."),
            )
        };
        if raw.is_empty() {
            return Err(invalid("is empty"));
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(invalid("is longer than 64 characters"));
        }
        if let Some(bad) = raw.chars().find(|c| !Self::allowed(*c)) {
            return Err(invalid(&format!(
                "contains the character {bad:?}, which is not allowed"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person-readable name: 1–100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        let invalid = |why: &str| {
            ValidationError::new(
                "displayName",
                "invalid_display_name",
                format!("The display name {why}. Use 1 to 100 characters."),
            )
        };
        if trimmed.is_empty() {
            return Err(invalid("is empty"));
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(invalid("is longer than 100 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("contains control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name shown when none was given: the user id itself.
    pub fn from_user_id(id: &UserId) -> Self {
        Self(id.as_str().to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DisplayName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DisplayName> for String {
    fn from(value: DisplayName) -> Self {
        value.0
    }
}

/// A user's token limit: a whole number from 1 to 10^15.
///
/// The upper bound keeps every counter comfortably inside a signed 64-bit database integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u64")]
pub struct TokenLimit(u64);

impl TokenLimit {
    pub const MAX: u64 = 1_000_000_000_000_000;

    pub fn new(value: i64) -> Result<Self, ValidationError> {
        if value <= 0 {
            return Err(ValidationError::new(
                "tokenLimit",
                "invalid_token_limit",
                format!("The token limit must be a positive whole number; got {value}."),
            ));
        }
        if value as u64 > Self::MAX {
            return Err(ValidationError::new(
                "tokenLimit",
                "invalid_token_limit",
                format!(
                    "The token limit must be at most {}; got {value}.",
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

impl TryFrom<i64> for TokenLimit {
    type Error = ValidationError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TokenLimit> for u64 {
    fn from(value: TokenLimit) -> Self {
        value.0
    }
}

/// What an admin supplies to create a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: UserId,
    pub display_name: DisplayName,
    pub token_limit: TokenLimit,
    pub role: Role,
}

impl NewUser {
    pub fn new(
        user_id: UserId,
        display_name: Option<DisplayName>,
        token_limit: TokenLimit,
    ) -> Self {
        let display_name = display_name.unwrap_or_else(|| DisplayName::from_user_id(&user_id));
        Self {
            user_id,
            display_name,
            token_limit,
            role: Role::User,
        }
    }

    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The state a freshly created user starts in: nothing used, stamped `now`.
    pub fn initial_usage(&self, now: DateTime<Utc>) -> UserUsage {
        UserUsage {
            user_id: self.user_id.clone(),
            display_name: self.display_name.clone(),
            token_limit: self.token_limit,
            role: self.role,
            tokens_used: 0,
            tokens_reserved: 0,
            lifetime_tokens: 0,
            lifetime_cost_picos: 0,
            updated_at: now,
        }
    }
}

/// A user's usage as the ledger knows it.
///
/// `tokens_used` counts against the limit in the current period; `lifetime_tokens` never resets.
/// `tokens_reserved` is held by model calls in flight (always 0 until calls reserve tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    pub user_id: UserId,
    pub display_name: DisplayName,
    pub token_limit: TokenLimit,
    pub role: Role,
    pub tokens_used: u64,
    pub tokens_reserved: u64,
    pub lifetime_tokens: u64,
    /// Never resets: the sum of the costs of this user's events, in pico-dollars.
    pub lifetime_cost_picos: u64,
    pub updated_at: DateTime<Utc>,
}

impl UserUsage {
    /// Tokens still available to spend, net of reservations.
    pub fn remaining(&self) -> u64 {
        remaining_tokens(
            self.tokens_used.saturating_add(self.tokens_reserved),
            self.token_limit.get(),
        )
    }

    /// Share of the limit used (reservations excluded), in basis points, rounded down.
    pub fn used_bps(&self) -> u64 {
        used_basis_points(self.tokens_used, self.token_limit.get())
    }

    pub fn level(&self) -> UsageLevel {
        UsageLevel::from_bps(self.used_bps())
    }

    /// This user after `tokens` more were recorded at `at`.
    pub fn with_recorded(mut self, tokens: u64, at: DateTime<Utc>) -> Self {
        self.tokens_used = self.tokens_used.saturating_add(tokens);
        self.lifetime_tokens = self.lifetime_tokens.saturating_add(tokens);
        self.updated_at = at;
        self
    }

    /// This user with a new limit; usage is untouched.
    pub fn with_limit(mut self, limit: TokenLimit, at: DateTime<Utc>) -> Self {
        self.token_limit = limit;
        self.updated_at = at;
        self
    }
}
