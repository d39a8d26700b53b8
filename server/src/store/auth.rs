//! The `credential`, `session`, `api_key` and `login_failure` tables. Only hashes are stored:
//! the service layer hashes every secret before it reaches this module.

use app::ports::{AuthStore, LedgerError, NewKey, Principal, StoredKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{DisplayName, NewUser, Role, Scope, UserId, UserUsage};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::{SqlLedger, accounts, detached, from_micros, ledger_error, micros};

fn principal_from_row(row: &AnyRow) -> Result<Principal, LedgerError> {
    let corrupt = |what: &str| LedgerError::Internal(format!("account row has an invalid {what}"));
    let id: String = row.try_get("account_id").map_err(ledger_error)?;
    let name: String = row.try_get("display_name").map_err(ledger_error)?;
    let role: String = row.try_get("role").map_err(ledger_error)?;
    Ok(Principal {
        user_id: UserId::parse(&id).map_err(|_| corrupt("id"))?,
        display_name: DisplayName::parse(&name)
            .map_err(|_| corrupt("display name"))?
            .as_str()
            .to_owned(),
        role: Role::parse(&role).map_err(|_| corrupt("role"))?,
    })
}

const KEY_COLUMNS: &str =
    "api_key_id, account_id, name, prefix, scopes, created_at, last_used_at, revoked_at";

fn key_from_row(row: &AnyRow) -> Result<StoredKey, LedgerError> {
    let corrupt = |what: &str| LedgerError::Internal(format!("api_key row has an invalid {what}"));
    let id: String = row.try_get("account_id").map_err(ledger_error)?;
    let scopes: String = row.try_get("scopes").map_err(ledger_error)?;
    let created: i64 = row.try_get("created_at").map_err(ledger_error)?;
    let last_used: Option<i64> = row.try_get("last_used_at").map_err(ledger_error)?;
    let revoked: Option<i64> = row.try_get("revoked_at").map_err(ledger_error)?;
    Ok(StoredKey {
        key_id: row.try_get("api_key_id").map_err(ledger_error)?,
        user_id: UserId::parse(&id).map_err(|_| corrupt("account id"))?,
        name: row.try_get("name").map_err(ledger_error)?,
        prefix: row.try_get("prefix").map_err(ledger_error)?,
        scopes: Scope::parse_list(&scopes).map_err(|_| corrupt("scope"))?,
        created_at: from_micros(created),
        last_used_at: last_used.map(from_micros),
        revoked_at: revoked.map(from_micros),
    })
}

/// How stale `last_used_at` may get before a use writes it again: one write a minute per key at
/// most, so a busy key does not turn every request into a write.
pub(super) const LAST_USED_RESOLUTION_MICROS: i64 = 60_000_000;

#[async_trait]
impl AuthStore for SqlLedger {
    async fn create_user_with_password(
        &self,
        user: NewUser,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError> {
        let pool = self.db.pool.clone();
        let password_hash = password_hash.to_owned();
        detached(async move {
            let mut tx = pool.begin().await.map_err(ledger_error)?;
            let created = accounts::insert(&mut *tx, &user, now).await?;
            sqlx::query(
                "INSERT INTO credential (account_id, password_hash, updated_at) VALUES ($1, $2, $3)",
            )
            .bind(user.user_id.as_str())
            .bind(password_hash)
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(ledger_error)?;
            tx.commit().await.map_err(ledger_error)?;
            Ok(created)
        })
        .await
    }

    async fn login_record(
        &self,
        user_id: &UserId,
    ) -> Result<Option<(Principal, Option<String>)>, LedgerError> {
        let row = sqlx::query(
            "SELECT a.account_id, a.display_name, a.role, c.password_hash \
             FROM account a LEFT JOIN credential c ON c.account_id = a.account_id \
             WHERE a.account_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: Option<String> = row.try_get("password_hash").map_err(ledger_error)?;
                Ok(Some((principal_from_row(&row)?, hash)))
            }
        }
    }

    async fn set_password_hash(
        &self,
        user_id: &UserId,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let pool = self.db.pool.clone();
        let (user_id, password_hash) = (user_id.clone(), password_hash.to_owned());
        detached(async move { set_password_tx(&pool, &user_id, &password_hash, now).await }).await
    }

    async fn set_role(&self, user_id: &UserId, role: Role) -> Result<(), LedgerError> {
        let done = sqlx::query("UPDATE account SET role = $2 WHERE account_id = $1")
            .bind(user_id.as_str())
            .bind(role.as_str())
            .execute(&self.db.pool)
            .await;
        // Whatever the answer, the role may have changed: no cached key keeps the old one.
        self.keys.invalidate();
        let done = done.map_err(ledger_error)?;
        if done.rows_affected() == 0 {
            return Err(LedgerError::UserNotFound);
        }
        Ok(())
    }
    async fn create_session(
        &self,
        token_hash: &str,
        user_id: &UserId,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let pool = self.db.pool.clone();
        let (token_hash, user_id) = (token_hash.to_owned(), user_id.clone());
        detached(async move {
            let mut tx = pool.begin().await.map_err(ledger_error)?;
            sqlx::query("DELETE FROM session WHERE expires_at <= $1")
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(ledger_error)?;
            sqlx::query(
                "INSERT INTO session (token_hash, account_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(token_hash)
            .bind(user_id.as_str())
            .bind(micros(now))
            .bind(micros(expires_at))
            .execute(&mut *tx)
            .await
            .map_err(ledger_error)?;
            tx.commit().await.map_err(ledger_error)
        })
        .await
    }

    async fn session_principal(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Principal>, LedgerError> {
        let row = sqlx::query(
            "SELECT a.account_id, a.display_name, a.role FROM session s \
             JOIN account a ON a.account_id = s.account_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(micros(now))
        .fetch_optional(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        row.as_ref().map(principal_from_row).transpose()
    }

    async fn delete_session(&self, token_hash: &str) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM session WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.db.pool)
            .await
            .map_err(ledger_error)?;
        Ok(())
    }

    async fn insert_api_key(
        &self,
        key: NewKey<'_>,
        now: DateTime<Utc>,
    ) -> Result<StoredKey, LedgerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO api_key (account_id, name, prefix, secret_hash, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
        )))
        .bind(key.user_id.as_str())
        .bind(key.name)
        .bind(key.prefix)
        .bind(key.secret_hash)
        .bind(Scope::join(key.scopes))
        .bind(micros(now))
        .fetch_one(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        key_from_row(&row)
    }

    async fn api_key_principal(
        &self,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(Principal, StoredKey)>, LedgerError> {
        let lookup = match self.keys.get(secret_hash) {
            Ok(found) => return Ok(Some(found)),
            Err(lookup) => lookup,
        };
        let row = sqlx::query(
            "SELECT k.api_key_id, k.account_id, k.name, k.prefix, k.scopes, k.created_at, \
                    k.last_used_at, k.revoked_at, a.display_name, a.role \
             FROM api_key k JOIN account a ON a.account_id = k.account_id \
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        let Some(row) = row else { return Ok(None) };
        let key = key_from_row(&row)?;
        let principal = principal_from_row(&row)?;
        self.keys.store(lookup, secret_hash, &principal, &key);
        let now = micros(now);
        let stale = key
            .last_used_at
            .is_none_or(|t| micros(t) < now - LAST_USED_RESOLUTION_MICROS);
        if stale && self.claim_key_touch(key.key_id, now) {
            // Off the request's path: a use is noted at most once a minute per key and process,
            // and a slow write (SQLite waits for the ledger writer's lock) never delays a call.
            let pool = self.db.pool.clone();
            let key_id = key.key_id;
            tokio::spawn(async move {
                let result = sqlx::query(
                    "UPDATE api_key SET last_used_at = $2 WHERE api_key_id = $1 \
                     AND (last_used_at IS NULL OR last_used_at < $3)",
                )
                .bind(key_id)
                .bind(now)
                .bind(now - LAST_USED_RESOLUTION_MICROS)
                .execute(&pool)
                .await;
                if let Err(e) = result {
                    tracing::warn!(%e, key_id, "could not note when an API key was last used");
                }
            });
        }
        Ok(Some((principal, key)))
    }

    async fn list_api_keys(&self, user_id: &UserId) -> Result<Vec<StoredKey>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_key WHERE account_id = $1 ORDER BY api_key_id"
        )))
        .bind(user_id.as_str())
        .fetch_all(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(
        &self,
        user_id: &UserId,
        key_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredKey>, LedgerError> {
        // Revoking twice keeps the first revocation time.
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE api_key SET revoked_at = COALESCE(revoked_at, $3) \
             WHERE api_key_id = $2 AND account_id = $1 RETURNING {KEY_COLUMNS}"
        )))
        .bind(user_id.as_str())
        .bind(key_id)
        .bind(micros(now))
        .fetch_optional(&self.db.pool)
        .await;
        // Whatever the answer, the key may be revoked now: it must not stay usable from here.
        self.keys.invalidate();
        let row = row.map_err(ledger_error)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn count_login_failures(
        &self,
        subject: &str,
        since: DateTime<Utc>,
    ) -> Result<u32, LedgerError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM login_failure WHERE subject = $1 AND failed_at > $2",
        )
        .bind(subject)
        .bind(micros(since))
        .fetch_one(&self.db.pool)
        .await
        .map_err(ledger_error)?;
        let n: i64 = row.try_get("n").map_err(ledger_error)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn record_login_failure(
        &self,
        subjects: &[&str],
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let pool = self.db.pool.clone();
        let subjects: Vec<String> = subjects.iter().map(|s| (*s).to_owned()).collect();
        detached(async move {
            let mut tx = pool.begin().await.map_err(ledger_error)?;
            sqlx::query("DELETE FROM login_failure WHERE failed_at <= $1")
                .bind(micros(forget_before))
                .execute(&mut *tx)
                .await
                .map_err(ledger_error)?;
            for subject in subjects {
                sqlx::query("INSERT INTO login_failure (subject, failed_at) VALUES ($1, $2)")
                    .bind(subject)
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(ledger_error)?;
            }
            tx.commit().await.map_err(ledger_error)
        })
        .await
    }

    async fn clear_login_failures(&self, subject: &str) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM login_failure WHERE subject = $1")
            .bind(subject)
            .execute(&self.db.pool)
            .await
            .map_err(ledger_error)?;
        Ok(())
    }
}

async fn set_password_tx(
    pool: &AnyPool,
    user_id: &UserId,
    password_hash: &str,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    let mut tx = pool.begin().await.map_err(ledger_error)?;
    // Writes first, no read before them: on SQLite a transaction that reads and then writes can
    // fail to become the writer if someone else commits in between.
    let written = sqlx::query(
        "INSERT INTO credential (account_id, password_hash, updated_at) \
         SELECT account_id, $2, $3 FROM account WHERE account_id = $1 \
         ON CONFLICT (account_id) DO UPDATE SET password_hash = excluded.password_hash, \
         updated_at = excluded.updated_at",
    )
    .bind(user_id.as_str())
    .bind(password_hash)
    .bind(micros(now))
    .execute(&mut *tx)
    .await
    .map_err(ledger_error)?;
    if written.rows_affected() == 0 {
        return Err(LedgerError::UserNotFound);
    }
    // A new password ends every session: whoever knew the old one is out.
    sqlx::query("DELETE FROM session WHERE account_id = $1")
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(ledger_error)?;
    tx.commit().await.map_err(ledger_error)
}
