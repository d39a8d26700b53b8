//! Storage: one SQL implementation of the ledger that runs on SQLite (the embedded default) and
//! on Postgres (to scale out), through sqlx's `Any` driver. All SQL lives under this module.
//!
//! The SQL is written to mean the same on both databases; where they differ (schema, how a
//! write transaction begins) the [`Dialect`] says so.

mod accounts;
mod auth;
mod key_cache;
mod pg_days;
mod reservations;
mod rollups;
mod sqlite_read;
mod usage;
mod usage_sqlite;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use app::ports::{Ledger, LedgerError, Recorded, Reserved};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::stats::{EventRow, StatsAnswer, StatsQuery, StatsScope};
use domain::{NewUser, PageInfo, RecordUsage, TokenLimit, UserId, UserQuery, UserUsage};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use rollups::{
    AGGREGATE_BATCH, Cursor, DayDifference, LedgerDays, MemberDifference, Rebuilt, TakenOver,
    Verification,
};
pub use usage::{LedgerAudit, WriterConfig};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> Result<Self, String> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(format!(
                "unsupported DATABASE_URL {url:?}: use sqlite:PATH or postgres://…"
            ))
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE_MIGRATIONS,
            Self::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// Aggregator batches a reader runs before answering at most (see [`SqlLedger::catch_up`]).
const CATCH_UP_BATCHES: usize = 5;
/// How long a reader waits at most for transactions still in flight (see [`SqlLedger::catch_up`]).
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// A connection pool and the database it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
    /// SQLite's file, for the bulk path of backfills, checks and exports (see [`sqlite_read`]);
    /// `None` on Postgres.
    pub(crate) sqlite_file: Option<sqlite_read::SqliteFile>,
    /// SQLite has one writer at a time. The writers of this process take turns here, in the
    /// order they arrive, instead of in SQLite's busy handler, which polls with sleeps of up to
    /// 100 ms: a report that arrives while the aggregator writes waits for that one step only.
    write_turns: Arc<tokio::sync::Mutex<()>>,
}

impl Db {
    /// Connects; for SQLite creates the file (and its folder) if missing and turns on WAL with
    /// full synchronous commits, so a committed event survives power loss.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        install_default_drivers();
        let dialect = Dialect::of_url(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        let (url, sqlite_file) = match dialect {
            Dialect::Sqlite => {
                let (url, path) = sqlite_url_creating_file(url)?;
                (url, Some(sqlite_read::SqliteFile::new(&path)))
            }
            Dialect::Postgres => (url.to_owned(), None),
        };
        let options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            // A broken connection fails its query and is dropped; a ping before every acquire
            // would cost a round trip on the hot path.
            .test_before_acquire(false)
            .max_connections(match dialect {
                Dialect::Sqlite => 8,
                Dialect::Postgres => 16,
            });
        let options = match dialect {
            Dialect::Sqlite => options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        // cache_size: 32 MiB of pages per connection (the default 2 MiB made
                        // the aggregator re-read rollup pages from the OS for every batch).
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                         PRAGMA cache_size = -32768;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            Dialect::Postgres => options,
        };
        let pool = options.connect(&url).await?;
        Ok(Self {
            pool,
            dialect,
            sqlite_file,
            write_turns: Default::default(),
        })
    }

    /// Waits for this process's turn to write (SQLite; on Postgres writers run side by side).
    /// Hold the answer until the write transaction has ended.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.dialect {
            Dialect::Sqlite => Some(self.write_turns.clone().lock_owned().await),
            Dialect::Postgres => None,
        }
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        self.dialect.migrator().run(&self.pool).await
    }
}

/// `sqlite:path` → (`sqlite://path?mode=rwc`, path), creating the parent folder. An in-memory
/// database is refused: every connection of a pool would get a database of its own.
fn sqlite_url_creating_file(url: &str) -> Result<(String, std::path::PathBuf), sqlx::Error> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return Err(sqlx::Error::Configuration(
            format!("DATABASE_URL {url:?} names no file: use sqlite:PATH").into(),
        ));
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    // Validate early with the driver's own parser for a clear error.
    let full = format!("sqlite://{path}?{query}");
    sqlx::sqlite::SqliteConnectOptions::from_str(&full)?;
    Ok((full, path.into()))
}

/// Maps a database error to the ledger's error: connection trouble is "unavailable" (503),
/// everything else internal (500).
fn ledger_error(e: sqlx::Error) -> LedgerError {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => LedgerError::Unavailable(e.to_string()),
        sqlx::Error::Database(ref db) if is_sqlite_busy(db.code().as_deref()) => {
            // SQLITE_BUSY after busy_timeout: the database is locked by someone else.
            LedgerError::Unavailable(e.to_string())
        }
        other => LedgerError::Internal(other.to_string()),
    }
}

/// SQLITE_BUSY (5) and its extended codes (5 + n·256).
fn is_sqlite_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// Runs a transaction in its own task so it reaches COMMIT or ROLLBACK even when the request
/// that started it goes away (sqlx 0.9's `begin()` is not cancel-safe on Postgres).
pub(crate) async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, LedgerError>> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::spawn(work)
        .await
        .map_err(|e| LedgerError::Internal(format!("transaction task failed: {e}")))?
}

/// Starts a write transaction: on SQLite the write lock is taken up front (a deferred transaction
/// that reads first may fail to become the writer).
pub(crate) async fn begin_write(
    dialect: Dialect,
    conn: &mut sqlx::AnyConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Any>, LedgerError> {
    use sqlx::Connection;
    let begin = match dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    conn.begin_with(begin).await.map_err(ledger_error)
}

/// The SQL to send for a statement with many parameters. SQLite finds a `$N` parameter's number
/// by scanning the statement's list of parameter names (`sqlite3_bind_parameter_name`), once per
/// parameter: a multi-row statement with thousands of them spent over two thirds of the
/// aggregator's time there. Plain `?` parameters have no name, so on SQLite `$1, $2, …` (each
/// once, in order, as the multi-row builders write them) become `?`. Anything else, and every
/// statement on Postgres, is left as it is.
pub(super) fn many_parameters(dialect: Dialect, sql: String) -> String {
    if dialect != Dialect::Sqlite {
        return sql;
    }
    let mut out = String::with_capacity(sql.len());
    let mut expected = 1usize;
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits: &str = {
            let after = &rest[at + 1..];
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            &after[..end]
        };
        if digits.parse::<usize>().ok() != Some(expected) {
            return sql;
        }
        out.push('?');
        expected += 1;
        rest = &rest[at + 1 + digits.len()..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// The ledger on a SQL database. Reads go straight to the pool; usage is recorded by one
/// writer thread per process that commits every pending report in one transaction.
pub struct SqlLedger {
    db: Db,
    writer: usage::WriterHandle,
    /// When this process last wrote each API key's `last_used_at` (key id → µs).
    key_touches: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
    /// API keys looked up in the last second.
    keys: key_cache::KeyCache,
}

impl SqlLedger {
    pub fn start(db: Db, config: WriterConfig) -> Arc<Self> {
        let writer = usage::WriterHandle::spawn(db.clone(), config);
        Arc::new(Self {
            db,
            writer,
            key_touches: Default::default(),
            keys: Default::default(),
        })
    }

    /// Whether this process should write a key's last use now (once a minute per key at most).
    pub(crate) fn claim_key_touch(&self, key_id: i64, now: i64) -> bool {
        let mut touches = self
            .key_touches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match touches.get(&key_id) {
            Some(&at) if at > now - auth::LAST_USED_RESOLUTION_MICROS => false,
            _ => {
                touches.insert(key_id, now);
                true
            }
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Checks every account's counters: lifetime tokens against the sum of its events, tokens
    /// reserved against the sum of its reservations.
    pub async fn audit(&self) -> Result<LedgerAudit, LedgerError> {
        let mut audit = usage::audit(&self.db).await?;
        audit.reservation_mismatches = reservations::audit(&self.db).await?;
        Ok(audit)
    }

    /// Folds every event recorded so far into the rollups (a bounded number of batches, so a
    /// reader is never held up for long by a huge backlog); answers how many events.
    ///
    /// On Postgres an event can be readable while an older transaction (of any database on the
    /// server) is still running; the aggregator waits for those (see `rollups`), so this waits
    /// for them too, a second at most.
    pub async fn catch_up(&self) -> Result<u64, LedgerError> {
        let mut total = 0;
        let mut batches = 0;
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        while batches < CATCH_UP_BATCHES && rollups::behind(&self.db).await? {
            let n = rollups::aggregate_step(&self.db, rollups::AGGREGATE_BATCH).await?;
            total += n as u64;
            if n > 0 {
                batches += 1;
            } else if tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else {
                break;
            }
        }
        Ok(total)
    }

    /// One aggregator step: folds at most `limit` new events into the rollups, in one
    /// transaction with the cursor; answers how many.
    pub async fn aggregate_once(&self, limit: i64) -> Result<usize, LedgerError> {
        rollups::aggregate_step(&self.db, limit).await
    }

    /// Folds every event recorded so far, however many (for the CLI and tests).
    pub async fn catch_up_fully(&self) -> Result<u64, LedgerError> {
        let mut total = 0;
        let mut idle_rounds = 0;
        loop {
            let n = self.catch_up().await?;
            total += n;
            idle_rounds = if n == 0 { idle_rounds + 1 } else { 0 };
            // Still behind after waiting twice: a transaction elsewhere stays open; stop here.
            if idle_rounds >= 2 || !rollups::behind(&self.db).await? {
                return Ok(total);
            }
        }
    }

    /// Before a backfill of the day range: moves the aggregator past every pending event, folding
    /// those of other days and leaving those of the range to the rebuild (see
    /// `rollups::take_over_pending`). Call [`Self::finish_take_over`] once the range is rebuilt.
    pub async fn take_over_pending(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<TakenOver, LedgerError> {
        rollups::take_over_pending(&self.db, from, to).await
    }

    /// After the range of a take-over is rebuilt: the nightly check's mark goes back to where it
    /// was.
    pub async fn finish_take_over(
        &self,
        from: chrono::NaiveDate,
        taken: &TakenOver,
    ) -> Result<(), LedgerError> {
        rollups::restore_verified_through(&self.db, from, taken).await
    }

    /// Makes the stored days (and day members) of the day range what the ledger says, writing
    /// only what differs (one transaction).
    pub async fn rebuild_rollups(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Rebuilt, LedgerError> {
        rollups::rebuild(&self.db, from, to).await
    }

    /// A rebuild in steps, for a backfill that overlaps them (see `rollups::LedgerDays`): what
    /// the ledger says the range's days should be, read without the write lock.
    pub async fn read_ledger_days(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<LedgerDays, LedgerError> {
        rollups::read_ledger_days(&self.db, from, to).await
    }

    /// Then: makes the stored days what `ledger` says, writing only what differs.
    pub async fn store_ledger_days(
        &self,
        ledger: LedgerDays,
    ) -> Result<(Rebuilt, LedgerDays), LedgerError> {
        rollups::store_ledger_days(&self.db, ledger).await
    }

    /// Then: checks the stored days against `ledger`, in a read-only snapshot.
    pub async fn verify_stored(&self, ledger: LedgerDays) -> Result<Verification, LedgerError> {
        rollups::verify_stored(&self.db, ledger).await
    }

    /// Checks the stored days (and day members) of the day range against the ledger; with
    /// `repair`, makes the differing ones what the ledger says.
    pub async fn verify_rollups(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        repair: bool,
    ) -> Result<Verification, LedgerError> {
        rollups::verify(&self.db, from, to, repair).await
    }

    /// The nightly check: verifies (and repairs) every day from the one after the last
    /// verified day — or `yesterday` alone the first time — through `yesterday`, so days missed
    /// while the server was down are checked too. Answers the days checked and what was found.
    pub async fn nightly_check(
        &self,
        yesterday: chrono::NaiveDate,
    ) -> Result<Option<(chrono::NaiveDate, Verification)>, LedgerError> {
        self.catch_up().await?;
        let from = match rollups::verified_through(&self.db).await? {
            Some(done) if done >= yesterday => return Ok(None),
            Some(done) => done.succ_opt().unwrap_or(yesterday),
            None => yesterday,
        };
        let verification = rollups::verify(&self.db, from, yesterday, true).await?;
        rollups::set_verified_through(&self.db, yesterday).await?;
        Ok(Some((from, verification)))
    }

    /// Where the aggregator is and when it last moved.
    pub async fn rollup_cursor(&self) -> Result<(Cursor, DateTime<Utc>), LedgerError> {
        rollups::cursor_position(&self.db).await
    }

    /// Records reports that happened at the given times (seeding, imports), with the same
    /// transaction and idempotency rules as live reports but without the writer's queue.
    pub async fn record_at(
        &self,
        usages: &[RecordUsage],
        at: &[DateTime<Utc>],
    ) -> Vec<Result<Recorded, LedgerError>> {
        let at: Vec<i64> = at.iter().map(|t| micros(*t)).collect();
        let _turn = self.db.write_turn().await;
        usage::write_batch_with_retries(
            self.db.dialect,
            &mut None,
            || self.db.pool.acquire(),
            usages,
            &at,
        )
        .await
    }
}

#[async_trait]
impl Ledger for SqlLedger {
    async fn create_user(
        &self,
        user: NewUser,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError> {
        accounts::insert(&self.db.pool, &user, now).await
    }

    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserUsage>, LedgerError> {
        accounts::get(&self.db.pool, user_id.as_str()).await
    }

    async fn list_users(&self) -> Result<Vec<UserUsage>, LedgerError> {
        accounts::list(&self.db).await
    }

    async fn list_users_page(
        &self,
        query: &UserQuery,
    ) -> Result<(Vec<UserUsage>, PageInfo), LedgerError> {
        accounts::page(&self.db, query).await
    }

    async fn set_limit(
        &self,
        user_id: &UserId,
        limit: TokenLimit,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, LedgerError> {
        accounts::set_limit(&self.db, user_id, limit, now).await
    }

    async fn record_usage(&self, usage: RecordUsage) -> Result<Recorded, LedgerError> {
        self.writer.record(usage).await
    }

    async fn reserve(
        &self,
        user_id: &UserId,
        tokens: u64,
        reservation_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Reserved, LedgerError> {
        reservations::reserve(
            &self.db,
            user_id,
            tokens,
            reservation_id,
            micros(now),
            micros(expires_at),
        )
        .await
    }

    async fn settle(
        &self,
        reservation_id: &str,
        usage: RecordUsage,
        now: DateTime<Utc>,
    ) -> Result<Recorded, LedgerError> {
        reservations::settle(&self.db, reservation_id, usage, micros(now)).await
    }

    async fn release(&self, reservation_id: &str) -> Result<bool, LedgerError> {
        reservations::release(&self.db, reservation_id).await
    }

    async fn release_expired(&self, now: DateTime<Utc>) -> Result<u64, LedgerError> {
        reservations::release_expired(&self.db, micros(now)).await
    }

    async fn usage_stats(
        &self,
        query: &StatsQuery,
        scope: &StatsScope,
    ) -> Result<StatsAnswer, LedgerError> {
        self.catch_up().await?;
        rollups::stats(&self.db, query, scope).await
    }

    fn export_events(
        &self,
        scope: &StatsScope,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
        model: Option<domain::ModelName>,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<EventRow>, LedgerError>> {
        rollups::export_events(&self.db, scope.clone(), from, to, model)
    }

    async fn aggregator_status(
        &self,
        now: DateTime<Utc>,
    ) -> Result<app::ports::AggregatorStatus, LedgerError> {
        let (pending_events, oldest_pending_at) = rollups::pending(&self.db).await?;
        let (_, cursor_moved_at) = rollups::cursor_position(&self.db).await?;
        let lag_ms = oldest_pending_at
            .map(|t| (now - t).num_milliseconds().max(0) as u64)
            .unwrap_or(0);
        Ok(app::ports::AggregatorStatus {
            pending_events,
            oldest_pending_at,
            lag_ms,
            cursor_moved_at,
            verified_through: rollups::verified_through(&self.db).await?,
        })
    }

    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.db.pool).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, many_parameters};

    #[test]
    fn numbered_parameters_in_order_become_positional_on_sqlite() {
        let sql = "INSERT INTO t VALUES (CAST($1 AS TEXT), $2), ($3, $4)".to_owned();
        assert_eq!(
            many_parameters(Dialect::Sqlite, sql.clone()),
            "INSERT INTO t VALUES (CAST(? AS TEXT), ?), (?, ?)"
        );
        assert_eq!(many_parameters(Dialect::Postgres, sql.clone()), sql);
        // Out of order, repeated or missing numbers: unchanged.
        for odd in [
            "SELECT $2, $1",
            "SELECT $1, $1",
            "SELECT $1, $3",
            "SELECT $",
        ] {
            assert_eq!(many_parameters(Dialect::Sqlite, odd.to_owned()), odd);
        }
        assert_eq!(
            many_parameters(Dialect::Sqlite, "SELECT 1".into()),
            "SELECT 1"
        );
    }
}
