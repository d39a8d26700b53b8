//! The `account` table: users, their limits and counters.

use app::ports::LedgerError;
use chrono::{DateTime, Utc};
use domain::{
    DisplayName, NewUser, PageInfo, Role, SortDirection, TokenLimit, UserId, UserQuery,
    UserSortKey, UserUsage, page_bounds,
};
use sqlx::{AssertSqlSafe, Row};

use super::sqlite_read::Columns;
use super::{Db, Dialect, from_micros, ledger_error, micros};

/// The columns [`usage_from_row`] reads.
pub(super) const ACCOUNT_COLUMNS: &str = "account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at";

/// Maps an `account` row (account_id, display_name, token_limit, tokens_used,
/// tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at) to the domain type.
pub(super) fn usage_from_row(row: &impl Columns) -> Result<UserUsage, LedgerError> {
    let corrupt = |what: &str| LedgerError::Internal(format!("account row has an invalid {what}"));
    let id = row.text("account_id").map_err(ledger_error)?;
    let name = row.text("display_name").map_err(ledger_error)?;
    let limit = row.int("token_limit").map_err(ledger_error)?;
    let role = row.text("role").map_err(ledger_error)?;
    let used = row.int("tokens_used").map_err(ledger_error)?;
    let reserved = row.int("tokens_reserved").map_err(ledger_error)?;
    let lifetime = row.int("lifetime_tokens").map_err(ledger_error)?;
    let cost = row.int("lifetime_cost_picos").map_err(ledger_error)?;
    let updated = row.int("updated_at").map_err(ledger_error)?;
    Ok(UserUsage {
        user_id: UserId::parse(&id).map_err(|_| corrupt("id"))?,
        display_name: DisplayName::parse(&name).map_err(|_| corrupt("display name"))?,
        token_limit: TokenLimit::new(limit).map_err(|_| corrupt("limit"))?,
        role: Role::parse(&role).map_err(|_| corrupt("role"))?,
        tokens_used: u64::try_from(used).map_err(|_| corrupt("usage"))?,
        tokens_reserved: u64::try_from(reserved).map_err(|_| corrupt("reservation"))?,
        lifetime_tokens: u64::try_from(lifetime).map_err(|_| corrupt("lifetime usage"))?,
        lifetime_cost_picos: u64::try_from(cost).map_err(|_| corrupt("lifetime cost"))?,
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
         RETURNING account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at",
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
        "SELECT account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at \
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
        "SELECT account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at \
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
         RETURNING account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at",
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

/// One page of users, filtered, sorted and cut in SQL, so only the rows shown are read (10,000
/// users answer as fast as 10). Same order as `domain::query_users`: the sort key, then the user
/// id (byte order) to break ties; percentage compares `used / limit` at high precision (exact
/// NUMERIC on Postgres, a double on SQLite); name and filter compare lower-cased text (ASCII
/// lower-casing on SQLite).
pub(super) async fn page(
    db: &Db,
    query: &UserQuery,
) -> Result<(Vec<UserUsage>, PageInfo), LedgerError> {
    let (contains, id, ratio) = match db.dialect {
        Dialect::Sqlite => (
            "instr",
            "account_id",
            "CAST(tokens_used AS REAL) / token_limit",
        ),
        Dialect::Postgres => (
            "strpos",
            "account_id COLLATE \"C\"",
            "CAST(tokens_used AS NUMERIC) / token_limit",
        ),
    };
    let needle = query.filter.trim().to_lowercase();
    let filter = if needle.is_empty() {
        String::new()
    } else {
        format!(
            "WHERE {contains}(lower(account_id), $1) > 0 OR {contains}(lower(display_name), $1) > 0"
        )
    };
    let mut count = sqlx::query(AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM account {filter}"
    )));
    if !needle.is_empty() {
        count = count.bind(needle.as_str());
    }
    let total: i64 = count
        .fetch_one(&db.pool)
        .await
        .map_err(ledger_error)?
        .try_get("n")
        .map_err(ledger_error)?;
    let (range, info) = page_bounds(total.max(0) as usize, query.page, query.page_size);
    let remaining = "CASE WHEN token_limit > tokens_used + tokens_reserved \
                     THEN token_limit - tokens_used - tokens_reserved ELSE 0 END";
    let key = match query.sort {
        UserSortKey::UserId => id,
        UserSortKey::Name => "lower(display_name)",
        UserSortKey::Usage => "tokens_used",
        UserSortKey::Limit => "token_limit",
        UserSortKey::Percentage => ratio,
        UserSortKey::Remaining => remaining,
        UserSortKey::LastUpdated => "updated_at",
    };
    let direction = match query.direction {
        SortDirection::Asc => "ASC",
        SortDirection::Desc => "DESC",
    };
    let sql = format!(
        "SELECT account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at \
         FROM account {filter} ORDER BY {key} {direction}, {id} ASC LIMIT {} OFFSET {}",
        range.len(),
        range.start
    );
    let mut rows = sqlx::query(AssertSqlSafe(sql));
    if !needle.is_empty() {
        rows = rows.bind(needle.as_str());
    }
    let users = rows
        .fetch_all(&db.pool)
        .await
        .map_err(ledger_error)?
        .iter()
        .map(usage_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((users, info))
}
