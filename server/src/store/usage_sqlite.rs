//! The ledger writer on SQLite: a thread of its own with a rusqlite connection of its own.
//!
//! Through sqlx every statement of a batch crossed to sqlx's worker thread and back, and the
//! multi-row statements (their text changes with the batch's size) were prepared again for most
//! batches. Here a batch is one `BEGIN IMMEDIATE` … `COMMIT` run where it is planned, with one
//! prepared statement per row kind, kept prepared between batches. What a batch does is
//! [`write_batch`]'s, shared with Postgres; only how each statement runs is here.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Instant;

use domain::{RecordUsage, UserUsage};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::accounts::{ACCOUNT_COLUMNS, usage_from_row};
use super::sqlite_read::{Columns, SqliteFile, for_each_row_of, read_error};
use super::usage::{
    BatchError, BatchStatements, CounterRaise, EventKey, EventValue, Job, NEW_EVENT_COLUMNS,
    NewEvent, Outcome, Retries, STORED_EVENT_COLUMNS, StoredEvent, answer, placeholders, unpack,
    write_batch,
};
use super::{Db, ledger_error};

/// Starts the writer thread. It stops when every sender of `jobs` is gone.
pub(super) fn spawn_writer(db: Db, file: SqliteFile, jobs: mpsc::Receiver<Job>, max_batch: usize) {
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || run_writer(db, file, jobs, max_batch))
        .expect("the ledger writer thread starts");
}

fn run_writer(db: Db, file: SqliteFile, mut jobs: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut conn = None;
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (usages, now, replies) = unpack(&mut batch);
        let started = Instant::now();
        // Every writer of the process takes its turn (see `Db::write_turn`).
        let turn = futures::executor::block_on(db.write_turn());
        let outcomes = write_with_retries(&file, &mut conn, &usages, &now);
        drop(turn);
        answer(replies, outcomes, started);
    }
}

/// Writes a batch, trying again after a lost race; `conn` is opened when missing and dropped
/// after an error, so a broken connection is never reused.
fn write_with_retries(
    file: &SqliteFile,
    conn: &mut Option<Connection>,
    usages: &[RecordUsage],
    at: &[i64],
) -> Vec<Outcome> {
    let mut retries = Retries::new();
    loop {
        let result = match conn {
            Some(c) => write_once(c, usages, at, retries.look_up_keys()),
            None => match file.connect(true) {
                Ok(c) => write_once(conn.insert(c), usages, at, retries.look_up_keys()),
                Err(e) => Err(BatchError::Fatal(ledger_error(e))),
            },
        };
        match result.map_err(|e| retries.after(e, usages.len(), conn)) {
            Ok(outcomes) => return outcomes,
            Err(Ok(wait)) => std::thread::sleep(wait),
            Err(Err(answers)) => return answers,
        }
    }
}

fn write_once(
    conn: &mut Connection,
    usages: &[RecordUsage],
    at: &[i64],
    look_up_keys: bool,
) -> Result<Vec<Outcome>, BatchError> {
    // Take the write lock up front: a deferred transaction that reads first could fail to
    // upgrade to a writer when another connection commits in between.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Every statement runs to its end before it returns: the future is ready at its first poll.
    futures::executor::block_on(write_batch(RusqliteBatch { tx }, usages, at, look_up_keys))
}

impl From<rusqlite::Error> for BatchError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // Another process holds the file past the busy timeout: roll back and go again.
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Self::Retry(e.to_string())
            }
            _ => Self::Fatal(ledger_error(read_error(e))),
        }
    }
}

/// The writer's statements, one row each, written once.
struct Statements {
    recorded_event: String,
    raise_counters: String,
    append_event: String,
    account: String,
}

static SQL: LazyLock<Statements> = LazyLock::new(|| Statements {
    recorded_event: format!(
        "SELECT {STORED_EVENT_COLUMNS} FROM usage_event WHERE idempotency_key = ?1"
    ),
    raise_counters: String::from(
        "UPDATE account SET tokens_used = tokens_used + ?2, lifetime_tokens = lifetime_tokens + ?2, \
             updated_at = ?4, lifetime_cost_picos = lifetime_cost_picos + ?5 \
         WHERE account_id = ?1 AND tokens_used <= ?3 AND lifetime_tokens <= ?3 \
             AND lifetime_cost_picos <= ?6",
    ),
    append_event: format!(
        "INSERT INTO usage_event ({NEW_EVENT_COLUMNS}) VALUES ({}) \
         ON CONFLICT (idempotency_key, account_id) DO NOTHING",
        placeholders(1, super::usage::EVENT_PARAMS).replace('$', "?")
    ),
    account: format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE account_id = ?1"),
});

struct RusqliteBatch<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl RusqliteBatch<'_> {
    /// Runs a kept statement with these parameters and hands each row to `each`.
    fn each_row(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        each: impl FnMut(&super::sqlite_read::NamedRow<'_>) -> Result<(), sqlx::Error>,
    ) -> Result<(), BatchError> {
        let mut statement = self.tx.prepare_cached(sql)?;
        Ok(for_each_row_of(&mut statement, params, each)?)
    }

    fn account_by_id(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Option<UserUsage>, BatchError> {
        let mut found = None;
        self.each_row(sql, params, |row| {
            found = Some(usage_from_row(row).map_err(|e| sqlx::Error::Protocol(e.to_string()))?);
            Ok(())
        })?;
        Ok(found)
    }
}

impl rusqlite::ToSql for EventValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            EventValue::Int(v) => v.to_sql(),
            EventValue::OptInt(v) => v.to_sql(),
            EventValue::Text(v) => v.to_sql(),
            EventValue::OptText(v) => v.to_sql(),
        }
    }
}

impl BatchStatements for RusqliteBatch<'_> {
    async fn recorded_events(
        &mut self,
        keys: &[&str],
    ) -> Result<Vec<(EventKey, StoredEvent)>, BatchError> {
        let mut found = Vec::new();
        for key in keys {
            self.each_row(&SQL.recorded_event, &[key], |row| {
                found.push(StoredEvent::from_row(row)?);
                Ok(())
            })?;
        }
        Ok(found)
    }

    async fn raise_counters(
        &mut self,
        raises: &[CounterRaise<'_>],
    ) -> Result<Vec<UserUsage>, BatchError> {
        let mut raised = Vec::with_capacity(raises.len());
        for r in raises {
            let (max_tokens, max_cost) = (i64::MAX - r.tokens, i64::MAX - r.cost_picos);
            let params: [&dyn rusqlite::ToSql; 6] = [
                &r.account,
                &r.tokens,
                &max_tokens,
                &r.updated_at,
                &r.cost_picos,
                &max_cost,
            ];
            // No RETURNING: SQLite would stage the returned row in a temporary table of its
            // own for every statement; the account is read again by its key instead.
            let changed = self
                .tx
                .prepare_cached(&SQL.raise_counters)?
                .execute(params.as_slice())?;
            if changed == 1 {
                raised.extend(self.account_by_id(&SQL.account, &[&r.account])?);
            }
        }
        Ok(raised)
    }

    async fn existing_accounts(&mut self, ids: &[&str]) -> Result<HashSet<String>, BatchError> {
        let mut found = HashSet::new();
        for id in ids {
            self.each_row(
                "SELECT account_id FROM account WHERE account_id = ?1",
                &[id],
                |row| {
                    found.insert(row.text("account_id")?);
                    Ok(())
                },
            )?;
        }
        Ok(found)
    }

    async fn append_events(
        &mut self,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<(EventKey, i64)>, BatchError> {
        let mut statement = self.tx.prepare_cached(&SQL.append_event)?;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            // No RETURNING (see `raise_counters`): a row inserted is the connection's last.
            if statement.execute(rusqlite::params_from_iter(event.values()))? == 0 {
                return Err(BatchError::Retry(
                    "an idempotency key was recorded concurrently".into(),
                ));
            }
            let key = (
                event.usage.user_id.as_str().to_owned(),
                event.usage.idempotency_key.as_str().to_owned(),
            );
            ids.push((key, self.tx.last_insert_rowid()));
        }
        Ok(ids)
    }

    async fn account(&mut self, id: &str) -> Result<Option<UserUsage>, BatchError> {
        self.account_by_id(&SQL.account, &[&id])
    }

    async fn commit(self) -> Result<(), BatchError> {
        Ok(self.tx.commit()?)
    }
}
