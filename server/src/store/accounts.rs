//! The `account` table: users, their limits and counters.

use app::ports::LedgerError;
use chrono::{DateTime, Utc};
use domain::{DisplayName, NewUser, Role, TokenLimit, UserId, UserUsage};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, from_micros, ledger_error, micros};

/// Maps an `account` row (account_id, display_name, token_limit, tokens_used,
/// tokens_reserved, lifetime_tokens, updated_at) to the domain type.
pub(super) fn usage_from_row(row: &AnyRow) -> Result<UserUsage, LedgerError> {
    let corrupt = |what: &str| LedgerError::Internal(format!("account row has an invalid {what}"));
    let id: String = row.try_get("account_id").map_err(ledger_error)?;
    let name: String = row.try_get("display_name").map_err(ledger_error)?;
    let limit: i64 = row.try_get("token_limit").map_err(ledger_error)?;
    let role: String = row.try_get("role").map_err(ledger_error)?;
    let used: i64 = row.try_get("tokens_used").map_err(ledger_error)?;
    let reserved: i64 = row.try_get("tokens_reserved").map_err(ledger_error)?;
    let lifetime: i64 = row.try_get("lifetime_tokens").map_err(ledger_error)?;
    let updated: i64 = row.try_get("updated_at").map_err(ledger_error)?;
    Ok(UserUsage {
        user_id: UserId::parse(&id).map_err(|_| corrupt("id"))?,
        display_name: DisplayName::parse(&name).map_err(|_| corrupt("display name"))?,
        token_limit: TokenLimit::new(limit).map_err(|_| corrupt("limit"))?,
        role: Role::parse(&role).map_err(|_| corrupt("role"))?,
        tokens_used: u64::try_from(used).map_err(|_| corrupt("usage"))?,
        tokens_reserved: u64::try_from(reserved).map_err(|_| corrupt("reservation"))?,
        lifetime_tokens: u64::try_from(lifetime).map_err(|_| corrupt("lifetime usage"))?,
        updated_at: from_micros(updated),
    })
}

pub(super) async fn insert<'c, E>(
    conn: E,
    user: &NewUser,
    now: DateTime<Utc>,
) -> Result<UserUsage, LedgerError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let at = micros(now);
    let row = sqlx::query(
        "INSERT INTO account (account_id, display_name, token_limit, role, period_started_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $5, $4, $4, $4) \
         ON CONFLICT (account_id) DO NOTHING \
         RETURNING account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, updated_at",
    )
    .bind(user.user_id.as_str())
    .bind(user.display_name.as_str())
    .bind(user.token_limit.get() as i64)
    .bind(at)
    .bind(user.role.as_str())
    .fetch_optional(conn)
    .await
    .map_err(ledger_error)?;
    match row {
        Some(row) => usage_from_row(&row),
        None => Err(LedgerError::UserExists),
    }
}

/// One account, through the pool or inside a transaction.
pub(super) async fn get<'c, E>(conn: E, user_id: &str) -> Result<Option<UserUsage>, LedgerError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, updated_at \
         FROM account WHERE account_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
    .map_err(ledger_error)?;
    row.as_ref().map(usage_from_row).transpose()
}

pub(super) async fn list(db: &Db) -> Result<Vec<UserUsage>, LedgerError> {
    let rows = sqlx::query(
        "SELECT account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, updated_at \
         FROM account ORDER BY account_id",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(ledger_error)?;
    rows.iter().map(usage_from_row).collect()
}

pub(super) async fn set_limit(
    db: &Db,
    user_id: &UserId,
    limit: TokenLimit,
    now: DateTime<Utc>,
) -> Result<UserUsage, LedgerError> {
    let row = sqlx::query(
        "UPDATE account SET token_limit = $2, updated_at = $3 WHERE account_id = $1 \
         RETURNING account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, updated_at",
    )
    .bind(user_id.as_str())
    .bind(limit.get() as i64)
    .bind(micros(now))
    .fetch_optional(&db.pool)
    .await
    .map_err(ledger_error)?;
    match row {
        Some(row) => usage_from_row(&row),
        None => Err(LedgerError::UserNotFound),
    }
}
