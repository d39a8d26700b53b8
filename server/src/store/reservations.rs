//! The `reservation` table: tokens held for model calls in flight, so that concurrent calls can
//! never spend more than a user's limit.
//!
//! - **reserve**: one conditional `UPDATE` raises `tokens_reserved` only if
//!   `tokens_used + tokens_reserved + n <= token_limit` still holds, and the reservation row is
//!   written in the same transaction. No read-check-write: two callers cannot both see the same
//!   room.
//! - **settle**: in one transaction the reservation row is deleted, the hold released, the real
//!   usage added to the counters and appended to the ledger as one event (idempotency key derived
//!   from the reservation, so settling twice records once).
//! - **release**: a call that consumed nothing gives the hold back.
//! - **expiry**: a server that dies mid-call leaves its reservations behind; they carry an expiry
//!   and a job releases them, so no tokens are locked away for ever.
//!
//! Invariant (checked by the audit): every account's `tokens_reserved` equals the sum of its
//! reservation rows.

use std::collections::BTreeMap;

use app::ports::{LedgerError, Recorded, Reserved};
use domain::{RecordUsage, UserId};
use sqlx::Row;

use super::accounts::{self, ACCOUNT_COLUMNS, usage_from_row};
use super::{Db, begin_write, detached, from_micros, ledger_error};

pub(super) async fn reserve(
    db: &Db,
    user_id: &UserId,
    tokens: u64,
    reservation_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<Reserved, LedgerError> {
    let (db, user_id, reservation_id) = (db.clone(), user_id.clone(), reservation_id.to_owned());
    detached(async move {
        let _turn = db.write_turn().await;
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let held = i64::try_from(tokens)
            .map_err(|_| LedgerError::Internal("reservation too large".into()))?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE account SET tokens_reserved = tokens_reserved + $2 \
             WHERE account_id = $1 AND tokens_used + tokens_reserved + $2 <= token_limit \
             RETURNING {ACCOUNT_COLUMNS}"
        )))
        .bind(user_id.as_str())
        .bind(held)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let Some(row) = row else {
            // No room (or no such user): nothing was changed.
            let current = accounts::get(&mut *tx, user_id.as_str()).await?;
            tx.rollback().await.map_err(ledger_error)?;
            return Err(match current {
                None => LedgerError::UserNotFound,
                Some(user) => LedgerError::LimitReached {
                    remaining: user.remaining(),
                },
            });
        };
        let user = usage_from_row(&row)?;
        sqlx::query(
            "INSERT INTO reservation (reservation_id, account_id, tokens, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(reservation_id.as_str())
        .bind(user_id.as_str())
        .bind(held)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(ledger_error)?;
        tx.commit().await.map_err(ledger_error)?;
        Ok(Reserved {
            reservation_id,
            tokens,
            expires_at: from_micros(expires_at),
            user,
        })
    })
    .await
}

/// Records what a call really consumed and gives back the rest of its hold, in one transaction.
/// Settling again (a retry) answers the first result and changes nothing. A reservation that
/// expired before the call ended is not held any more, but what the call consumed is recorded
/// all the same: those tokens were spent.
pub(super) async fn settle(
    db: &Db,
    reservation_id: &str,
    usage: RecordUsage,
    now: i64,
) -> Result<Recorded, LedgerError> {
    let (db, reservation_id) = (db.clone(), reservation_id.to_owned());
    detached(async move {
        let _turn = db.write_turn().await;
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let account = usage.user_id.as_str();
        let held: Option<i64> = sqlx::query(
            "DELETE FROM reservation WHERE reservation_id = $1 AND account_id = $2 RETURNING tokens",
        )
        .bind(reservation_id.as_str())
        .bind(account)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_error)?
        .map(|row| row.try_get("tokens"))
        .transpose()
        .map_err(ledger_error)?;
        if held.is_none() {
            // Settled before? Then this is a retry: answer the first result.
            let earlier = sqlx::query(
                "SELECT usage_event_id, tokens FROM usage_event \
                 WHERE idempotency_key = $1 AND account_id = $2",
            )
            .bind(usage.idempotency_key.as_str())
            .bind(account)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ledger_error)?;
            if let Some(row) = earlier {
                let user = accounts::get(&mut *tx, account)
                    .await?
                    .ok_or(LedgerError::UserNotFound)?;
                tx.rollback().await.map_err(ledger_error)?;
                let tokens: i64 = row.try_get("tokens").map_err(ledger_error)?;
                return Ok(Recorded {
                    event_id: row.try_get("usage_event_id").map_err(ledger_error)?,
                    tokens: tokens as u64,
                    user,
                    replayed: true,
                });
            }
        }
        let consumed = usage.tokens.get() as i64;
        let cost = i64::try_from(usage.cost_picos)
            .map_err(|_| LedgerError::Internal("cost too large".into()))?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE account SET tokens_reserved = tokens_reserved - $2, \
                 tokens_used = tokens_used + $3, lifetime_tokens = lifetime_tokens + $3, \
                 updated_at = $4, lifetime_cost_picos = lifetime_cost_picos + $5 \
             WHERE account_id = $1 RETURNING {ACCOUNT_COLUMNS}"
        )))
        .bind(account)
        .bind(held.unwrap_or(0))
        .bind(consumed)
        .bind(now)
        .bind(cost)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_error)?
        .ok_or(LedgerError::UserNotFound)?;
        let user = usage_from_row(&row)?;
        let event_id: i64 = sqlx::query(
            "INSERT INTO usage_event (account_id, tokens, input_tokens, output_tokens, model, source, \
             idempotency_key, tokens_used_after, lifetime_tokens_after, token_limit_at, created_at, \
             cached_tokens, cache_write_tokens, reasoning_tokens, cost_picos, conversation_id, agent_id, prompt_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
             RETURNING usage_event_id",
        )
        .bind(account)
        .bind(consumed)
        .bind(usage.input_tokens.map(|v| v as i64))
        .bind(usage.output_tokens.map(|v| v as i64))
        .bind(usage.model.as_ref().map(|m| m.as_str()))
        .bind(usage.source.as_str())
        .bind(usage.idempotency_key.as_str())
        .bind(user.tokens_used as i64)
        .bind(user.lifetime_tokens as i64)
        .bind(user.token_limit.get() as i64)
        .bind(now)
        .bind(usage.cached_tokens as i64)
        .bind(usage.cache_write_tokens as i64)
        .bind(usage.reasoning_tokens as i64)
        .bind(cost)
        .bind(usage.context.conversation_id.as_ref().map(|c| c.as_str()))
        .bind(usage.context.agent_id.as_ref().map(|c| c.as_str()))
        .bind(usage.context.prompt_id.as_ref().map(|c| c.as_str()))
        .fetch_one(&mut *tx)
        .await
        .map_err(ledger_error)?
        .try_get("usage_event_id")
        .map_err(ledger_error)?;
        tx.commit().await.map_err(ledger_error)?;
        Ok(Recorded {
            event_id,
            tokens: consumed as u64,
            user,
            replayed: false,
        })
    })
    .await
}

/// Gives a hold back without recording anything (the call consumed nothing). Unknown or already
/// settled reservations are left alone: answers whether anything was released.
pub(super) async fn release(db: &Db, reservation_id: &str) -> Result<bool, LedgerError> {
    let (db, reservation_id) = (db.clone(), reservation_id.to_owned());
    detached(async move {
        let _turn = db.write_turn().await;
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let row = sqlx::query(
            "DELETE FROM reservation WHERE reservation_id = $1 RETURNING account_id, tokens",
        )
        .bind(reservation_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(ledger_error)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(ledger_error)?;
            return Ok(false);
        };
        let account: String = row.try_get("account_id").map_err(ledger_error)?;
        let tokens: i64 = row.try_get("tokens").map_err(ledger_error)?;
        sqlx::query(
            "UPDATE account SET tokens_reserved = tokens_reserved - $2 WHERE account_id = $1",
        )
        .bind(account)
        .bind(tokens)
        .execute(&mut *tx)
        .await
        .map_err(ledger_error)?;
        tx.commit().await.map_err(ledger_error)?;
        Ok(true)
    })
    .await
}

/// Releases every reservation that expired by `now`; answers how many.
pub(super) async fn release_expired(db: &Db, now: i64) -> Result<u64, LedgerError> {
    let db = db.clone();
    detached(async move {
        let _turn = db.write_turn().await;
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let rows = sqlx::query(
            "DELETE FROM reservation WHERE expires_at <= $1 RETURNING account_id, tokens",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(ledger_error)?;
        // Per account, in id order (two releasers on one Postgres lock rows in the same order).
        let mut per_account: BTreeMap<String, i64> = BTreeMap::new();
        for row in &rows {
            let account: String = row.try_get("account_id").map_err(ledger_error)?;
            let tokens: i64 = row.try_get("tokens").map_err(ledger_error)?;
            *per_account.entry(account).or_default() += tokens;
        }
        for (account, tokens) in &per_account {
            sqlx::query(
                "UPDATE account SET tokens_reserved = tokens_reserved - $2 WHERE account_id = $1",
            )
            .bind(account.as_str())
            .bind(*tokens)
            .execute(&mut *tx)
            .await
            .map_err(ledger_error)?;
        }
        tx.commit().await.map_err(ledger_error)?;
        Ok(rows.len() as u64)
    })
    .await
}

/// Accounts whose `tokens_reserved` differs from the sum of their reservation rows:
/// (account, counter, sum of rows).
pub(super) async fn audit(db: &Db) -> Result<Vec<(String, i64, i64)>, LedgerError> {
    let rows = sqlx::query(
        "SELECT a.account_id, a.tokens_reserved, CAST(COALESCE(r.total, 0) AS BIGINT) AS held \
         FROM account a \
         LEFT JOIN (SELECT account_id, SUM(tokens) AS total FROM reservation GROUP BY account_id) r \
           ON r.account_id = a.account_id \
         WHERE a.tokens_reserved <> COALESCE(r.total, 0)",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(ledger_error)?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("account_id").map_err(ledger_error)?,
                row.try_get("tokens_reserved").map_err(ledger_error)?,
                row.try_get("held").map_err(ledger_error)?,
            ))
        })
        .collect()
}
