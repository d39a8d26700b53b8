//! What the app needs from the outside world, implemented by `server`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::stats::{EventRow, StatsAnswer, StatsQuery, StatsScope};
use domain::{
    NewUser, PageInfo, RecordUsage, Role, Scope, TokenLimit, UserId, UserQuery, UserUsage,
};

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
    /// A reservation does not fit in what the user has left.
    #[error("token limit reached: {remaining} tokens remaining")]
    LimitReached { remaining: u64 },
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

/// Tokens held for a model call in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub reservation_id: String,
    pub tokens: u64,
    pub expires_at: DateTime<Utc>,
    /// The user right after the hold was taken.
    pub user: UserUsage,
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
    /// One page of users, filtered and sorted as `domain::query_users` does, read without
    /// loading the others.
    async fn list_users_page(
        &self,
        query: &UserQuery,
    ) -> Result<(Vec<UserUsage>, PageInfo), LedgerError>;
    async fn set_limit(
        &self,
        user_id: &UserId,
        limit: TokenLimit,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError>;
    /// Appends one event and updates the user's counters in the same transaction; a repeated
    /// idempotency key returns the first result and writes nothing.
    async fn record_usage(&self, usage: RecordUsage) -> Result<Recorded, LedgerError>;
    /// Holds `tokens` for a call, only if `used + reserved + tokens <= limit` (one atomic
    /// statement); otherwise `LimitReached` with what remains, and nothing changes.
    async fn reserve(
        &self,
        user_id: &UserId,
        tokens: u64,
        reservation_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Reserved, LedgerError>;
    /// Records what the call consumed as one event and gives back its hold, in one transaction;
    /// settling again answers the first result.
    async fn settle(
        &self,
        reservation_id: &str,
        usage: RecordUsage,
        now: DateTime<Utc>,
    ) -> Result<Recorded, LedgerError>;
    /// Gives a hold back unused; false when there was none (settled, released or expired).
    async fn release(&self, reservation_id: &str) -> Result<bool, LedgerError>;
    /// Releases every hold that expired by `now`; answers how many.
    async fn release_expired(&self, now: DateTime<Utc>) -> Result<u64, LedgerError>;
    /// Usage statistics of one user or everyone, current to the ledger (events recorded before
    /// the call are included), every row and the summary, unsorted.
    async fn usage_stats(
        &self,
        query: &StatsQuery,
        scope: &StatsScope,
    ) -> Result<StatsAnswer, LedgerError>;
    /// The ledger's events of a day range (inclusive; one user or everyone, optionally of one
    /// model), oldest first, sent in chunks as they are read so an export of millions of events
    /// never sits in memory. An error ends the stream.
    fn export_events(
        &self,
        scope: &StatsScope,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        model: Option<domain::ModelName>,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<EventRow>, LedgerError>>;
    /// How far the usage rollups are behind the ledger at `now`.
    async fn aggregator_status(&self, now: DateTime<Utc>) -> Result<AggregatorStatus, LedgerError>;
    /// Whether the database answers.
    async fn ping(&self) -> bool;
}

/// An account as authentication sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub display_name: String,
    pub role: Role,
}

/// An API key as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: i64,
    pub user_id: UserId,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key to store: the hash of its secret, never the secret.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub user_id: &'a UserId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub scopes: &'a [Scope],
}

/// Accounts' credentials, sessions, API keys and failed logins. Only hashes cross this port.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Creates the account and its password in one transaction.
    async fn create_user_with_password(
        &self,
        user: NewUser,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError>;
    /// The account and its password hash (None when it has no password yet).
    async fn login_record(
        &self,
        user_id: &UserId,
    ) -> Result<Option<(Principal, Option<String>)>, LedgerError>;
    /// Sets the password and ends every session of the account.
    async fn set_password_hash(
        &self,
        user_id: &UserId,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    async fn set_role(&self, user_id: &UserId, role: Role) -> Result<(), LedgerError>;

    async fn create_session(
        &self,
        token_hash: &str,
        user_id: &UserId,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    /// The account behind a live (unexpired) session.
    async fn session_principal(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Principal>, LedgerError>;
    async fn delete_session(&self, token_hash: &str) -> Result<(), LedgerError>;

    async fn insert_api_key(
        &self,
        key: NewKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<StoredKey, LedgerError>;
    /// The account and key behind an unrevoked key; notes when it was last used.
    async fn api_key_principal(
        &self,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(Principal, StoredKey)>, LedgerError>;
    async fn list_api_keys(&self, user_id: &UserId) -> Result<Vec<StoredKey>, LedgerError>;
    /// Revokes one of the user's keys; None when the user has no such key.
    async fn revoke_api_key(
        &self,
        user_id: &UserId,
        key_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredKey>, LedgerError>;

    /// Failed logins per subject (`account:…`, `address:…`) since a moment.
    async fn count_login_failures(
        &self,
        subject: &str,
        since: DateTime<Utc>,
    ) -> Result<u32, LedgerError>;
    /// Notes a failed login for each subject, and forgets failures older than `forget_before`.
    async fn record_login_failure(
        &self,
        subjects: &[&str],
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
    async fn clear_login_failures(&self, subject: &str) -> Result<(), LedgerError>;
}

/// What a model provider is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRequest {
    pub model: domain::ModelName,
    pub messages: Vec<domain::ChatMessage>,
    /// The answer must not be longer (the provider's `max_tokens`).
    pub max_output: u64,
    /// Stream the answer from the provider (otherwise it comes in one piece).
    pub stream: bool,
}

/// What a provider's answer is made of, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// More of the reply.
    Text(String),
    /// One complete step's usage as the provider reported it; a multi-step (tool-call) exchange
    /// reports one per step, and the call's usage is their sum.
    Usage(domain::CallUsage),
    /// The provider finished, and why.
    Finished(domain::FinishReason),
}

/// Why a provider call failed. None of these carry a provider key or a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the configured credentials (401/403).
    #[error("the provider refused the credentials: {0}")]
    Unauthorized(String),
    /// The provider asked us to slow down (429).
    #[error("the provider is rate limiting: {0}")]
    RateLimited(String),
    /// The provider refused this request (another 4xx, e.g. a prompt too long for the model).
    #[error("the provider refused the request: {0}")]
    Refused(String),
    /// The provider failed or could not be reached (5xx, connection refused or reset).
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider did not answer in time.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The provider answered something that is not its protocol.
    #[error("the provider's answer could not be read: {0}")]
    BadResponse(String),
}

pub type ProviderStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ProviderEvent, ProviderError>> + Send + 'static>,
>;

/// A model provider: demo, OpenAI-compatible, Anthropic, Bedrock.
///
/// `start` returns once the provider accepted the request (an error here means nothing was
/// consumed); the stream then yields the answer. Dropping the stream cancels the call.
#[async_trait]
pub trait ModelProvider: Send + Sync + 'static {
    /// The provider's name as shown to people and stored (`demo`, `openai`, ...).
    fn name(&self) -> &str;
    /// Whether the provider bills exactly what [`Tokenizer`] counts (true only for the demo).
    fn counts_exactly(&self) -> bool;
    async fn start(&self, request: ProviderRequest) -> Result<ProviderStream, ProviderError>;
}

/// Counts tokens the way a BPE tokenizer does, for estimates before a call and for calls cut
/// short before the provider reported usage.
pub trait Tokenizer: Send + Sync + 'static {
    fn count(&self, text: &str) -> u64;

    /// A conversation's prompt tokens, with the framing chat models add: 3 per message plus
    /// the role, and 3 to prime the reply (OpenAI's published accounting).
    fn count_conversation(&self, messages: &[domain::ChatMessage]) -> u64 {
        messages
            .iter()
            .map(|m| 3 + self.count(m.role.as_str()) + self.count(&m.content))
            .sum::<u64>()
            + 3
    }
}

/// How far the usage rollups (what statistics read) are behind the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorStatus {
    /// Recorded events the aggregator has not folded into the rollups yet.
    pub pending_events: u64,
    /// When the oldest of them was recorded.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// How long the oldest pending event has waited, in milliseconds (0 when none waits).
    pub lag_ms: u64,
    /// When the aggregator last moved its cursor.
    pub cursor_moved_at: DateTime<Utc>,
    /// The last day the nightly check verified against the ledger.
    pub verified_through: Option<chrono::NaiveDate>,
}
