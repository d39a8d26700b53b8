//! What the app needs from the outside world, implemented by `server`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{NewUser, RecordUsage, TokenLimit, UserId, UserUsage};

/// Why a ledger operation failed. Store-level: no HTTP, no wording for people.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("user not found")]
    UserNotFound,
    #[error("user already exists")]
    UserExists,
    /// The idempotency key was used before with a different request.
    #[error("idempotency key reused for a different request")]
    KeyReused,
    /// Adding the tokens would overflow the user's 64-bit counters.
    #[error("counter would overflow")]
    CounterOverflow,
    /// The database cannot be reached (pool timeout, connection lost).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

/// The result of recording a use: the event and the user right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub event_id: i64,
    pub tokens: u64,
    pub user: UserUsage,
    /// True when the idempotency key had been recorded before: nothing new was written and this
    /// is the first result again.
    pub replayed: bool,
}

/// The append-only usage ledger and the user counters it keeps exact.
///
/// Invariant: for every user, the sum of their events' tokens equals their lifetime counter, at
/// every moment any reader can observe, under any concurrency.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    async fn create_user(
        &self,
        user: NewUser,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError>;
    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserUsage>, LedgerError>;
    async fn list_users(&self) -> Result<Vec<UserUsage>, LedgerError>;
    async fn set_limit(
        &self,
        user_id: &UserId,
        limit: TokenLimit,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError>;
    /// Appends one event and updates the user's counters in the same transaction; a repeated
    /// idempotency key returns the first result and writes nothing.
    async fn record_usage(&self, usage: RecordUsage) -> Result<Recorded, LedgerError>;
    /// Whether the database answers.
    async fn ping(&self) -> bool;
}
