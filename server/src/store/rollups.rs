//! Usage rollups: each user's days (and each day's conversations, agents, models and prompts)
//! kept current from the ledger by an incremental aggregator, verified against it and rebuilt
//! from it; and the statistics, which make weeks and months of the days when asked.
//!
//! **Exactness.** The aggregator reads new ledger events after its cursor, folds them into one
//! [`RollupDelta`], adds the delta to the stored days and moves the cursor, all in one
//! transaction: each event is added exactly once, whatever crashes or restarts. The stored days
//! therefore always equal the ledger's events up to the cursor, which rebuilds and
//! verification use too.
//!
//! **Order.** On SQLite one writer commits at a time and event ids grow in commit order, so the
//! cursor is the last event id. On Postgres several writers (and replicas) commit in any order,
//! and a smaller id can become visible after a larger one; events are therefore read in
//! (writing transaction, id) order and only from transactions older than every one still
//! running (`pg_snapshot_xmin`), so no event can appear behind the cursor later.
//!
//! **Rebuilds and checks** compute a day range's days from its events up to the cursor and
//! compare them with the stored ones: on SQLite folded here from a bulk read, on Postgres by
//! Postgres itself in set-based SQL ([`pg_days`]), so that the events and stored days of a
//! range never cross the wire.

use std::collections::{BTreeMap, HashMap};

use app::ports::LedgerError;
use chrono::{DateTime, NaiveDate, Utc};
use domain::rollup::{
    DayKey, DeltaBuilder, Dimension, EventFacts, MemberKey, NO_VALUE, Period, RollupDelta, Sums,
};
use domain::stats::{
    EventRow, StatsAnswer, StatsQuery, StatsRow, StatsScope, StatsSummary, day_start_micros,
    stats_of_events,
};
use futures::TryStreamExt;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::pg_days::{self, ComputedDays};
use super::sqlite_read::{Columns, SqliteFile, for_each_row, read_error};
use super::usage::placeholders;
use super::{
    Db, Dialect, begin_write, detached, from_micros, ledger_error, many_parameters, micros,
};

const CURSOR: &str = "rollups";

/// Events the aggregator folds in one transaction at most.
pub const AGGREGATE_BATCH: i64 = 20_000;

/// How far the aggregator has read: (writing transaction, event id). On SQLite `tx` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx: i64,
    pub event_id: i64,
}

const EVENT_COLUMNS: &str = "usage_event_id, account_id, created_at, tokens, input_tokens, \
     output_tokens, cost_picos, model, conversation_id, agent_id, prompt_id";

fn facts_from_row(row: &impl Columns) -> Result<EventFacts, sqlx::Error> {
    let total = row.int("tokens")?.max(0) as u64;
    let (input_tokens, output_tokens) = EventFacts::split(
        total,
        row.opt_int("input_tokens")?.map(|v| v.max(0) as u64),
        row.opt_int("output_tokens")?.map(|v| v.max(0) as u64),
    );
    Ok(EventFacts {
        user_id: row.text("account_id")?,
        at: from_micros(row.int("created_at")?),
        input_tokens,
        output_tokens,
        total_tokens: total,
        cost_picos: row.int("cost_picos")?.max(0) as u64,
        model: row.opt_text("model")?,
        conversation: row.opt_text("conversation_id")?,
        agent: row.opt_text("agent_id")?,
        prompt: row.opt_text("prompt_id")?,
    })
}

/// The aggregator's cursor (`$1`: its name). SQLite binds `$N` by position too.
const READ_CURSOR_SQL: &str = "SELECT last_tx, last_event_id FROM rollup_cursor WHERE name = $1";

/// Moves the aggregator's cursor: `$1` tx, `$2` event id, `$3` now (µs), `$4` its name.
const ADVANCE_CURSOR_SQL: &str =
    "UPDATE rollup_cursor SET last_tx = $1, last_event_id = $2, updated_at = $3 WHERE name = $4";

/// Reads the cursor, locking it against other aggregators, rebuilds and checks until commit
/// (SQLite: the write transaction already excludes them).
async fn lock_cursor(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
) -> Result<Cursor, sqlx::Error> {
    read_cursor(tx, dialect, true).await
}

/// Reads the cursor; with `lock`, locks it until the transaction ends (Postgres).
async fn read_cursor(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    lock: bool,
) -> Result<Cursor, sqlx::Error> {
    let lock = match dialect {
        Dialect::Postgres if lock => " FOR UPDATE",
        _ => "",
    };
    let row = sqlx::query(AssertSqlSafe(format!("{READ_CURSOR_SQL}{lock}")))
        .bind(CURSOR)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Cursor {
        tx: row.try_get("last_tx")?,
        event_id: row.try_get("last_event_id")?,
    })
}

/// SQL that keeps only events the aggregator has read (up to and including the cursor). The
/// cursor's numbers come from the database as integers, so writing them into the SQL is safe.
pub(super) fn processed_condition(dialect: Dialect, cursor: Cursor) -> String {
    let Cursor { tx, event_id } = cursor;
    match dialect {
        Dialect::Sqlite => format!("usage_event_id <= {event_id}"),
        Dialect::Postgres => {
            format!("(tx_id, usage_event_id) <= (CAST('{tx}' AS xid8), {event_id})")
        }
    }
}

/// The events after the cursor that the aggregator may read, in its order. On Postgres only
/// those of transactions older than every one still running: a later commit can never land
/// behind the cursor. The cursor's numbers come from the database, so writing them is safe.
fn pending_events_sql(dialect: Dialect, cursor: Cursor) -> String {
    let after = unprocessed_condition(dialect, cursor);
    match dialect {
        Dialect::Sqlite => format!(
            "SELECT {EVENT_COLUMNS}, 0 AS tx FROM usage_event WHERE {after} ORDER BY usage_event_id"
        ),
        Dialect::Postgres => format!(
            "SELECT {EVENT_COLUMNS}, CAST(CAST(tx_id AS TEXT) AS BIGINT) AS tx FROM usage_event \
             WHERE {after} AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id, usage_event_id"
        ),
    }
}

/// Adds a delta of newly read events to the rollups and moves the cursor to the last of them,
/// in the caller's transaction.
async fn fold_and_advance(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    delta: &RollupDelta,
    next: Cursor,
) -> Result<(), sqlx::Error> {
    apply_delta(tx, dialect, delta).await?;
    sqlx::query(ADVANCE_CURSOR_SQL)
        .bind(next.tx)
        .bind(next.event_id)
        .bind(micros(Utc::now()))
        .bind(CURSOR)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Folds the events after the cursor (at most `limit`) into the rollups; answers how many.
pub(super) async fn aggregate_step(db: &Db, limit: i64) -> Result<usize, LedgerError> {
    if let Some(file) = &db.sqlite_file {
        return aggregate_step_sqlite(db, file, limit).await;
    }
    let db = db.clone();
    detached(async move {
        let _turn = db.write_turn().await;
        let started = std::time::Instant::now();
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let cursor = lock_cursor(&mut tx, db.dialect)
            .await
            .map_err(ledger_error)?;
        let sql = format!("{} LIMIT $1", pending_events_sql(db.dialect, cursor));
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(ledger_error)?;
        let Some(last) = rows.last() else {
            tx.rollback().await.map_err(ledger_error)?;
            return Ok(0);
        };
        let next = Cursor {
            tx: last.try_get("tx").map_err(ledger_error)?,
            event_id: last.try_get("usage_event_id").map_err(ledger_error)?,
        };
        let mut builder = DeltaBuilder::default();
        for row in &rows {
            builder.add(&facts_from_row(row).map_err(ledger_error)?);
        }
        let delta = builder.finish();
        let read_us = started.elapsed().as_micros() as u64;
        fold_and_advance(&mut tx, db.dialect, &delta, next)
            .await
            .map_err(ledger_error)?;
        tx.commit().await.map_err(ledger_error)?;
        tracing::debug!(
            events = rows.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            read_us,
            "aggregator step"
        );
        Ok(rows.len())
    })
    .await
}

/// [`aggregate_step`] on SQLite, where a writer holds the only write lock of the file: the
/// events are read and folded first, on a read connection that does not block anyone, and the
/// write turn is taken only to write the rollups and move the cursor. Reading and folding a
/// step's events under the lock had the ledger writer wait ~50 ms every half second under load.
async fn aggregate_step_sqlite(
    db: &Db,
    file: &SqliteFile,
    limit: i64,
) -> Result<usize, LedgerError> {
    let (db, file) = (db.clone(), file.clone());
    detached(async move {
        let started = std::time::Instant::now();
        let (from, builder, read) = file
            .read(move |conn| {
                let from = read_cursor_sqlite(conn)?;
                // One writer at a time numbers SQLite's events in commit order, so the events
                // after the cursor that this read sees are the next ones, in order.
                let sql = format!("{} LIMIT ?1", pending_events_sql(Dialect::Sqlite, from));
                let mut builder = DeltaBuilder::default();
                let mut read = None;
                for_each_row(conn, &sql, &[&limit], |row| {
                    builder.add(&facts_from_row(row)?);
                    read = Some((row.int("usage_event_id")?, read.map_or(1, |(_, n)| n + 1)));
                    Ok(())
                })?;
                Ok((from, builder, read))
            })
            .await?;
        let Some((last_event_id, events)) = read else {
            return Ok(0);
        };
        let delta = builder.finish();
        let _turn = db.write_turn().await;
        let locked = std::time::Instant::now();
        let folded = file
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(read_error)?;
                if read_cursor_sqlite(&tx)? != from {
                    // Someone else (a backfill's take-over) moved the cursor since the read:
                    // what was read may be folded already. The next step reads again.
                    return Ok(false);
                }
                apply_delta_sqlite(&tx, &delta)?;
                tx.execute(
                    ADVANCE_CURSOR_SQL,
                    rusqlite::params![0, last_event_id, micros(Utc::now()), CURSOR],
                )
                .map_err(read_error)?;
                tx.commit().map_err(read_error)?;
                Ok(true)
            })
            .await?;
        if !folded {
            return Ok(0);
        }
        tracing::debug!(
            events,
            elapsed_us = started.elapsed().as_micros() as u64,
            locked_us = locked.elapsed().as_micros() as u64,
            "aggregator step"
        );
        Ok(events)
    })
    .await
}

/// What [`take_over_pending`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakenOver {
    /// Pending events of the range's days, left for the rebuild of the range.
    pub taken: u64,
    /// Pending events of other days, folded into the rollups as the aggregator would.
    pub folded: u64,
    /// The nightly check's mark before it was moved back to the day before the range (`None`
    /// when nothing was taken or the mark was already earlier): see [`restore_verified_through`].
    pub verified_through_before: Option<Option<NaiveDate>>,
}

/// The pending events a take-over reads: those of the range are counted (the rebuild reads
/// them), the others folded.
struct TakeOverFold {
    from: NaiveDate,
    to: NaiveDate,
    builder: DeltaBuilder,
    outcome: TakenOver,
    next: Option<Cursor>,
}

impl TakeOverFold {
    fn new(from: NaiveDate, to: NaiveDate) -> Self {
        Self {
            from,
            to,
            builder: DeltaBuilder::default(),
            outcome: TakenOver::default(),
            next: None,
        }
    }

    /// An event read in the aggregator's order (SQLite: the cursor is its id).
    fn add(&mut self, facts: EventFacts, event_id: i64) {
        let day = facts.at.date_naive();
        if day >= self.from && day <= self.to {
            self.outcome.taken += 1;
        } else {
            self.outcome.folded += 1;
            self.builder.add(&facts);
        }
        self.next = Some(Cursor { tx: 0, event_id });
    }
}

/// Before a backfill of `from..=to`: moves the cursor past every readable pending event in one
/// transaction, folding those of other days into the rollups and leaving those of the range's
/// days to the rebuild that follows (it reads every event up to the cursor). Reading a large
/// backlog once this way is much cheaper than folding it batch by batch and then rebuilding.
///
/// Until the rebuild has run, the range's rollups lack the events taken over; so the nightly
/// check's mark moves back to the day before the range, and a backfill that is cut short is
/// finished by the next nightly check.
pub(super) async fn take_over_pending(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<TakenOver, LedgerError> {
    let db = db.clone();
    detached(async move {
        let _turn = db.write_turn().await;
        let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
        let mut tx = begin_write(db.dialect, &mut conn).await?;
        let cursor = lock_cursor(&mut tx, db.dialect)
            .await
            .map_err(ledger_error)?;
        let sql = pending_events_sql(db.dialect, cursor);
        let mut fold = TakeOverFold::new(from, to);
        match &db.sqlite_file {
            // Nothing can commit while this transaction holds the write lock, so the bulk read
            // path reads what `tx` would.
            Some(file) => {
                fold = file
                    .read(move |conn| {
                        for_each_row(conn, &sql, &[], |row| {
                            fold.add(facts_from_row(row)?, row.int("usage_event_id")?);
                            Ok(())
                        })?;
                        Ok(fold)
                    })
                    .await?
            }
            None => take_over_in_postgres(&mut tx, cursor, &mut fold)
                .await
                .map_err(ledger_error)?,
        }
        let TakeOverFold {
            builder,
            mut outcome,
            next,
            ..
        } = fold;
        let Some(next) = next else {
            tx.rollback().await.map_err(ledger_error)?;
            return Ok(outcome);
        };
        fold_and_advance(&mut tx, db.dialect, &builder.finish(), next)
            .await
            .map_err(ledger_error)?;
        if outcome.taken > 0
            && let Some(before_range) = from.pred_opt()
        {
            let mark: Option<String> =
                sqlx::query("SELECT verified_through FROM rollup_cursor WHERE name = $1")
                    .bind(CURSOR)
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|row| row.try_get("verified_through"))
                    .map_err(ledger_error)?;
            let mark = mark.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            if mark.is_none_or(|day| day > before_range) {
                sqlx::query("UPDATE rollup_cursor SET verified_through = $1 WHERE name = $2")
                    .bind(before_range.to_string())
                    .bind(CURSOR)
                    .execute(&mut *tx)
                    .await
                    .map_err(ledger_error)?;
                outcome.verified_through_before = Some(mark);
            }
        }
        tx.commit().await.map_err(ledger_error)?;
        Ok(outcome)
    })
    .await
}

/// [`take_over_pending`]'s reading on Postgres, in its transaction: the last readable pending
/// event bounds what is taken over; the pending events of the range up to it are only counted
/// (by Postgres: a backlog of millions need not cross the wire), the others read and folded.
/// Every event up to that bound stays readable: its transaction had ended when the bound was
/// read.
async fn take_over_in_postgres(
    tx: &mut Transaction<'_, Any>,
    cursor: Cursor,
    fold: &mut TakeOverFold,
) -> Result<(), sqlx::Error> {
    let dialect = Dialect::Postgres;
    let last = format!(
        "SELECT CAST(CAST(tx_id AS TEXT) AS BIGINT) AS tx, usage_event_id FROM usage_event \
         WHERE {} AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY tx_id DESC, usage_event_id DESC LIMIT 1",
        unprocessed_condition(dialect, cursor)
    );
    let Some(row) = sqlx::query(AssertSqlSafe(last))
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(());
    };
    let next = Cursor {
        tx: row.try_get("tx")?,
        event_id: row.try_get("usage_event_id")?,
    };
    let taken = format!(
        "{} AND {}",
        unprocessed_condition(dialect, cursor),
        processed_condition(dialect, next)
    );
    let in_range = "created_at >= $1 AND created_at < $2";
    let (start, end) = day_bounds(fold.from, fold.to);
    let count = format!("SELECT COUNT(*) AS n FROM usage_event WHERE {taken} AND {in_range}");
    let n: i64 = sqlx::query(AssertSqlSafe(count))
        .bind(start)
        .bind(end)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    fold.outcome.taken = n.max(0) as u64;
    let others =
        format!("SELECT {EVENT_COLUMNS} FROM usage_event WHERE {taken} AND NOT ({in_range})");
    let mut rows = sqlx::query(AssertSqlSafe(others))
        .bind(start)
        .bind(end)
        .fetch(&mut **tx);
    while let Some(row) = rows.try_next().await? {
        fold.outcome.folded += 1;
        fold.builder.add(&facts_from_row(&row)?);
    }
    fold.next = Some(next);
    Ok(())
}

/// After the backfill that followed [`take_over_pending`] has rebuilt the range: puts the
/// nightly check's mark back where it was, unless the check has moved it since.
pub(super) async fn restore_verified_through(
    db: &Db,
    from: NaiveDate,
    taken: &TakenOver,
) -> Result<(), LedgerError> {
    let (Some(before), Some(lowered)) = (taken.verified_through_before, from.pred_opt()) else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE rollup_cursor SET verified_through = $1 WHERE name = $2 AND verified_through = $3",
    )
    .bind(before.map(|d| d.to_string()))
    .bind(CURSOR)
    .bind(lowered.to_string())
    .execute(&db.pool)
    .await
    .map_err(ledger_error)?;
    Ok(())
}

/// SQL that keeps only events after the cursor (not read by the aggregator yet). Written with
/// the cursor's numbers (integers from the database), so Postgres plans a range scan of the
/// `(tx_id, usage_event_id)` index; a cursor joined in made it scan the whole ledger.
fn unprocessed_condition(dialect: Dialect, cursor: Cursor) -> String {
    let Cursor { tx, event_id } = cursor;
    match dialect {
        Dialect::Sqlite => format!("usage_event_id > {event_id}"),
        Dialect::Postgres => {
            format!("(tx_id, usage_event_id) > (CAST('{tx}' AS xid8), {event_id})")
        }
    }
}

/// Whether the ledger may hold events the aggregator has not read (a cheap check first, so an
/// idle system costs two indexed reads, not a write transaction).
pub(super) async fn behind(db: &Db) -> Result<bool, LedgerError> {
    let (cursor, _) = cursor_position(db).await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM usage_event WHERE {}) AS behind",
        unprocessed_condition(db.dialect, cursor)
    )))
    .fetch_one(&db.pool)
    .await
    .map_err(ledger_error)?;
    let behind: bool = match row.try_get::<bool, _>("behind") {
        Ok(b) => b,
        Err(_) => row.try_get::<i64, _>("behind").map_err(ledger_error)? != 0,
    };
    Ok(behind)
}

/// How many recorded events the aggregator has not read, and when the first of them (in the
/// aggregator's order) was recorded.
pub(super) async fn pending(db: &Db) -> Result<(u64, Option<DateTime<Utc>>), LedgerError> {
    let (cursor, _) = cursor_position(db).await?;
    let after = format!(
        "FROM usage_event WHERE {}",
        unprocessed_condition(db.dialect, cursor)
    );
    let order = match db.dialect {
        Dialect::Sqlite => "usage_event_id",
        Dialect::Postgres => "tx_id, usage_event_id",
    };
    let count: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) AS n {after}")))
        .fetch_one(&db.pool)
        .await
        .and_then(|row| row.try_get("n"))
        .map_err(ledger_error)?;
    let first: Option<i64> = sqlx::query(AssertSqlSafe(format!(
        "SELECT created_at {after} ORDER BY {order} LIMIT 1"
    )))
    .fetch_optional(&db.pool)
    .await
    .and_then(|row| row.map(|r| r.try_get("created_at")).transpose())
    .map_err(ledger_error)?;
    Ok((count.max(0) as u64, first.map(from_micros)))
}

fn greatest(dialect: Dialect, a: &str, b: &str) -> String {
    match dialect {
        // SQLite's two-argument max() is NULL when either is.
        Dialect::Sqlite => format!("MAX(COALESCE({a}, {b}), COALESCE({b}, {a}))"),
        Dialect::Postgres => format!("GREATEST({a}, {b})"),
    }
}

const SUM_COLUMNS: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_picos",
    "messages",
];

/// Every value column of `usage_day` and `usage_day_member`: the sums, then the last activity.
pub(super) const VALUE_COLUMNS: [&str; 6] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_picos",
    "messages",
    "last_activity_at",
];
pub(super) const DAY_KEYS: [&str; 2] = ["account_id", "day"];
pub(super) const MEMBER_KEYS: [&str; 4] = ["account_id", "day", "dimension", "value"];

/// Rows per multi-row upsert with parameters (10 parameters at most each).
const UPSERT_CHUNK: usize = 500;

/// Rows per upsert from one JSON parameter (Postgres): a few megabytes.
const JSON_CHUNK: usize = 50_000;

/// Where an upsert's rows come from.
#[derive(Debug, Clone, Copy)]
enum RowSource {
    /// `n` tuples of parameters.
    Values(usize),
    /// One JSON parameter, an array of rows, each an array of the columns' values (Postgres):
    /// parsed in one go, where a statement of thousands of parameters cost more to parse and
    /// plan than to run.
    Json,
}

/// `INSERT INTO table (keys…, VALUE_COLUMNS…) <rows> ON CONFLICT (keys) DO UPDATE SET <set>`.
fn upsert_sql(dialect: Dialect, table: &str, keys: &[&str], set: &str, rows: RowSource) -> String {
    let columns: Vec<&str> = keys.iter().chain(&VALUE_COLUMNS).copied().collect();
    let source = match rows {
        RowSource::Values(n) => {
            let tuples: Vec<String> = (0..n)
                .map(|row| format!("({})", placeholders(row * columns.len() + 1, columns.len())))
                .collect();
            format!("VALUES {}", tuples.join(", "))
        }
        RowSource::Json => {
            let values: Vec<String> = (0..columns.len())
                .map(|n| match n < keys.len() {
                    true => format!("e->>{n}"),
                    false => format!("CAST(e->>{n} AS BIGINT)"),
                })
                .collect();
            format!(
                "SELECT {} FROM json_array_elements(CAST($1 AS json)) AS e",
                values.join(", ")
            )
        }
    };
    many_parameters(
        dialect,
        format!(
            "INSERT INTO {table} ({}) {source} ON CONFLICT ({}) DO UPDATE SET {set}",
            columns.join(", "),
            keys.join(", "),
        ),
    )
}

/// Runs an upsert (`sql` for a row source) over `rows`, in chunks: on Postgres from JSON, on
/// SQLite (through sqlx) with parameters.
async fn upsert_rows(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    rows: &[Vec<SqlValue>],
    sql: impl Fn(RowSource) -> String,
) -> Result<(), sqlx::Error> {
    match dialect {
        Dialect::Postgres => {
            let statement = sql(RowSource::Json);
            for chunk in rows.chunks(JSON_CHUNK) {
                let json =
                    serde_json::to_string(chunk).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query(AssertSqlSafe(statement.as_str()))
                    .bind(json)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Dialect::Sqlite => {
            for chunk in rows.chunks(UPSERT_CHUNK) {
                let statement = sql(RowSource::Values(chunk.len()));
                bind_values(
                    sqlx::query(AssertSqlSafe(statement)),
                    chunk.iter().flatten(),
                )
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}

/// The statements that add a delta to the stored days and day members: the sums are added to
/// what is stored.
struct DeltaSql {
    days: String,
    members: String,
}

impl DeltaSql {
    fn new(dialect: Dialect, rows: RowSource) -> Self {
        let upsert = |table: &str, keys: &[&str]| {
            let additions: Vec<String> = SUM_COLUMNS
                .iter()
                .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
                .chain(std::iter::once(format!(
                    "last_activity_at = {}",
                    greatest(
                        dialect,
                        &format!("{table}.last_activity_at"),
                        "excluded.last_activity_at"
                    )
                )))
                .collect();
            upsert_sql(dialect, table, keys, &additions.join(", "), rows)
        };
        Self {
            days: upsert("usage_day", &DAY_KEYS),
            members: match dialect {
                // Postgres keeps a day's members packed, merged rather than added to.
                Dialect::Postgres => pg_days::merge_members_sql(),
                Dialect::Sqlite => upsert("usage_day_member", &MEMBER_KEYS),
            },
        }
    }
}

/// A value written to a day table.
#[derive(Debug, Clone)]
enum SqlValue {
    Text(String),
    Int(Option<i64>),
}

/// A row's values as JSON (for [`RowSource::Json`]): texts, integers, `null`.
impl serde::Serialize for SqlValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(s) => serializer.serialize_str(s),
            Self::Int(Some(i)) => serializer.serialize_i64(*i),
            Self::Int(None) => serializer.serialize_none(),
        }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(s) => s.to_sql(),
            Self::Int(i) => i.to_sql(),
        }
    }
}

/// A whole row of `usage_day` or `usage_day_member`: its key, then [`VALUE_COLUMNS`].
fn values_row(key: impl IntoIterator<Item = String>, sums: &Sums) -> Vec<SqlValue> {
    key.into_iter()
        .map(SqlValue::Text)
        .chain(
            [
                sums.input_tokens,
                sums.output_tokens,
                sums.total_tokens,
                sums.cost_picos,
                sums.messages,
            ]
            .map(|v| SqlValue::Int(Some(v as i64))),
        )
        .chain([SqlValue::Int(sums.last_activity.map(micros))])
        .collect()
}

fn day_key_values((user, day): &DayKey) -> [String; 2] {
    [user.clone(), day.to_string()]
}

fn member_key_values((user, day, dimension, value): &MemberKey) -> [String; 4] {
    [
        user.clone(),
        day.to_string(),
        dimension.code().to_owned(),
        value.clone(),
    ]
}

/// The rows of a delta for [`DeltaSql::days`] and [`DeltaSql::members`].
fn delta_rows(delta: &RollupDelta) -> (Vec<Vec<SqlValue>>, Vec<Vec<SqlValue>>) {
    let days = delta
        .days
        .iter()
        .map(|(key, sums)| values_row(day_key_values(key), sums))
        .collect();
    let members = delta
        .members
        .iter()
        .map(|(key, sums)| values_row(member_key_values(key), sums))
        .collect();
    (days, members)
}

fn bind_values<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    values: impl IntoIterator<Item = &'q SqlValue>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for value in values {
        query = match value {
            SqlValue::Text(s) => query.bind(s.as_str()),
            SqlValue::Int(i) => query.bind(*i),
        };
    }
    query
}

/// Adds a delta to the stored days and day members, in the caller's transaction.
async fn apply_delta(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    delta: &RollupDelta,
) -> Result<(), sqlx::Error> {
    let (days, members) = delta_rows(delta);
    upsert_rows(tx, dialect, &days, |rows| DeltaSql::new(dialect, rows).days).await?;
    upsert_rows(tx, dialect, &members, |rows| {
        DeltaSql::new(dialect, rows).members
    })
    .await
}

/// [`apply_delta`] with rusqlite, one kept prepared statement per table, in the caller's
/// transaction.
fn apply_delta_sqlite(conn: &rusqlite::Connection, delta: &RollupDelta) -> Result<(), sqlx::Error> {
    let sql = DeltaSql::new(Dialect::Sqlite, RowSource::Values(1));
    let (days, members) = delta_rows(delta);
    for (sql, rows) in [(&sql.days, &days), (&sql.members, &members)] {
        let mut statement = conn.prepare_cached(sql).map_err(read_error)?;
        for row in rows {
            statement
                .execute(rusqlite::params_from_iter(row))
                .map_err(read_error)?;
        }
    }
    Ok(())
}

/// A day range as the ledger says it should be stored: what its processed events (up to
/// `cursor`) give, computed from scratch. Read without the write lock
/// ([`read_ledger_days`]), it is written ([`store_ledger_days`]) and checked against what is
/// stored ([`verify_stored`]) as long as the cursor has not moved: the events up to the cursor
/// never change.
pub struct LedgerDays {
    from: NaiveDate,
    to: NaiveDate,
    cursor: Cursor,
    days: DaysOfLedger,
    events: u64,
}

/// Where the ledger's days of a [`LedgerDays`] are.
enum DaysOfLedger {
    /// Folded from the events in this process (SQLite).
    Folded(RollupDelta),
    /// Computed by Postgres into temporary tables of a kept connection (see [`pg_days`]).
    InPostgres(ComputedDays),
}

impl LedgerDays {
    pub fn range(&self) -> (NaiveDate, NaiveDate) {
        (self.from, self.to)
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Days Postgres computed into `computed` from the events up to `cursor`.
    fn in_postgres(
        (from, to): (NaiveDate, NaiveDate),
        cursor: Cursor,
        computed: ComputedDays,
        events: u64,
    ) -> Self {
        Self {
            from,
            to,
            cursor,
            days: DaysOfLedger::InPostgres(computed),
            events,
        }
    }

    /// The days folded in this process, if they were.
    fn folded(&self) -> Option<&RollupDelta> {
        match &self.days {
            DaysOfLedger::Folded(delta) => Some(delta),
            DaysOfLedger::InPostgres(_) => None,
        }
    }
}

/// The ledger's processed events (up to the cursor) from `$1` (µs, inclusive) to `$2`
/// (exclusive): see [`day_bounds`].
fn range_events_sql(dialect: Dialect, cursor: Cursor) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM usage_event WHERE created_at >= $1 AND created_at < $2 AND {}",
        processed_condition(dialect, cursor)
    )
}

/// The time bounds (microseconds) of a day range: its first day's start, the next day's start.
pub(super) fn day_bounds(from: NaiveDate, to: NaiveDate) -> (i64, i64) {
    (
        day_start_micros(from),
        day_start_micros(to.succ_opt().unwrap_or(to)),
    )
}

/// Folds the events of [`range_events_sql`] into what the ledger says for their days.
struct LedgerDaysFold {
    days: LedgerDays,
    builder: DeltaBuilder,
}

impl LedgerDaysFold {
    fn new(cursor: Cursor, from: NaiveDate, to: NaiveDate) -> Self {
        Self {
            days: LedgerDays {
                from,
                to,
                cursor,
                days: DaysOfLedger::Folded(RollupDelta::default()),
                events: 0,
            },
            builder: DeltaBuilder::default(),
        }
    }

    fn add(&mut self, facts: &EventFacts) {
        self.days.events += 1;
        self.builder.add(facts);
    }

    fn finish(self) -> LedgerDays {
        LedgerDays {
            days: DaysOfLedger::Folded(self.builder.finish()),
            ..self.days
        }
    }
}

/// Reads [`LedgerDays`] on SQLite's bulk read path, in a transaction of `conn`.
fn read_ledger_days_sqlite(
    conn: &rusqlite::Connection,
    cursor: Cursor,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<LedgerDays, sqlx::Error> {
    let mut fold = LedgerDaysFold::new(cursor, from, to);
    let (start, end) = day_bounds(from, to);
    let sql = range_events_sql(Dialect::Sqlite, cursor);
    for_each_row(conn, &sql, &[&start, &end], |row| {
        fold.add(&facts_from_row(row)?);
        Ok(())
    })?;
    Ok(fold.finish())
}

/// What the ledger says a day range's stored days should be, read in a snapshot without the
/// write lock (the expensive part of a rebuild: reading and folding every event).
pub(super) async fn read_ledger_days(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<LedgerDays, LedgerError> {
    Ok(read_in_snapshot(db, from, to, None, false).await?.0)
}

/// Reads a day range in one snapshot, without the write lock (writers go on meanwhile): what
/// the ledger says its days should be (`known`, the ledger's days read before, if the cursor
/// has not moved since; else read now) and, `compare`, how the stored days differ from them.
async fn read_in_snapshot(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
    known: Option<LedgerDays>,
    compare: bool,
) -> Result<(LedgerDays, Option<Verification>), LedgerError> {
    let db = db.clone();
    detached(async move {
        if let Some(file) = &db.sqlite_file {
            return file
                .read(move |conn| {
                    // Deferred: a snapshot from the first read on, no write lock.
                    let tx = conn.transaction().map_err(read_error)?;
                    let cursor = read_cursor_sqlite(&tx)?;
                    let ledger = match known {
                        Some(ledger) if ledger.cursor == cursor && ledger.folded().is_some() => {
                            ledger
                        }
                        _ => read_ledger_days_sqlite(&tx, cursor, from, to)?,
                    };
                    let found = match compare {
                        true => Some(verification_of(&ledger, read_stored_sqlite(&tx, from, to)?)),
                        false => None,
                    };
                    Ok((ledger, found))
                })
                .await;
        }
        // Postgres computes the days into temporary tables of the connection the ledger's days
        // keep, so its snapshot may write them (not READ ONLY).
        let (mut computed, events) = kept_computation(&db, known).await?;
        let mut tx = sqlx::Connection::begin_with(
            &mut *computed.conn,
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
        )
        .await
        .map_err(ledger_error)?;
        let cursor = read_cursor(&mut tx, db.dialect, false)
            .await
            .map_err(ledger_error)?;
        let events = current_days(&mut tx, cursor, events, (from, to), &mut computed.days).await?;
        let found = match compare {
            true => Some(
                pg_days::compare(&mut tx, (from, to), (events, computed.days))
                    .await
                    .map_err(ledger_error)?,
            ),
            false => None,
        };
        tx.commit().await.map_err(ledger_error)?;
        let ledger = LedgerDays::in_postgres((from, to), cursor, computed, events);
        Ok((ledger, found))
    })
    .await
}

/// The Postgres computation a ledger's days keep, with (cursor, events) as computed; or a new
/// connection to compute on, with nothing computed yet.
async fn kept_computation(
    db: &Db,
    known: Option<LedgerDays>,
) -> Result<(ComputedDays, Option<(Cursor, u64)>), LedgerError> {
    match known {
        Some(LedgerDays {
            days: DaysOfLedger::InPostgres(computed),
            cursor,
            events,
            ..
        }) => Ok((computed, Some((cursor, events)))),
        _ => {
            let mut conn = db.pool.acquire().await.map_err(ledger_error)?;
            // Its own connection (closed after), so a session setting is the computation's:
            // room to group a month's members in memory.
            sqlx::query("SET work_mem = '256MB'")
                .execute(&mut *conn)
                .await
                .map_err(ledger_error)?;
            Ok((ComputedDays::new(conn), None))
        }
    }
}

/// The events of the computed days of the range at `cursor`: those computed before (`known`:
/// cursor and events) if the cursor has not moved since, else computed now in `tx`'s snapshot
/// ([`pg_days::compute`], which also sets `days`).
async fn current_days(
    tx: &mut Transaction<'_, Any>,
    cursor: Cursor,
    known: Option<(Cursor, u64)>,
    (from, to): (NaiveDate, NaiveDate),
    days: &mut u64,
) -> Result<u64, LedgerError> {
    if let Some((at, events)) = known
        && at == cursor
    {
        return Ok(events);
    }
    let (events, computed) = pg_days::compute(tx, cursor, (from, to))
        .await
        .map_err(ledger_error)?;
    *days = computed;
    Ok(events)
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub events: u64,
    /// Users' days with events in the range.
    pub days: u64,
    /// Rows (days and day members) written or deleted because they were not what the ledger
    /// says: 0 when the range was already right.
    pub rows_changed: u64,
}

/// Makes the stored days of a day range what the ledger says, in one transaction: compares
/// them with the ledger and writes only what differs, so a range that is already right costs
/// one read. Running it twice gives the same days as once.
pub(super) async fn rebuild(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Rebuilt, LedgerError> {
    let ledger = read_ledger_days(db, from, to).await?;
    Ok(store_ledger_days(db, ledger).await?.0)
}

/// Makes the stored days of `ledger`'s range what it says, in one write transaction (see
/// [`store`]). Answers what was done, and the ledger's days as written (for
/// [`verify_stored`]).
pub(super) async fn store_ledger_days(
    db: &Db,
    ledger: LedgerDays,
) -> Result<(Rebuilt, LedgerDays), LedgerError> {
    let (found, rows_changed, ledger) = store(db, ledger, false).await?;
    let rebuilt = Rebuilt {
        events: found.events,
        days: found.days,
        rows_changed,
    };
    Ok((rebuilt, ledger))
}

/// Under the write lock, in one transaction: compares the stored days of `ledger`'s range
/// with it and writes only what differs. If the aggregator moved its cursor since `ledger` was
/// read, the ledger is read again under the lock. Answers the comparison (on Postgres, with
/// its differences listed only when `list` is asked: a first build differs everywhere), the
/// rows written or deleted, and the ledger's days as compared.
async fn store(
    db: &Db,
    ledger: LedgerDays,
    list: bool,
) -> Result<(Verification, u64, LedgerDays), LedgerError> {
    let db = db.clone();
    detached(async move {
        let _turn = db.write_turn().await;
        if let Some(file) = &db.sqlite_file {
            return file
                .write(move |conn| {
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(read_error)?;
                    let cursor = read_cursor_sqlite(&tx)?;
                    let ledger = if cursor == ledger.cursor && ledger.folded().is_some() {
                        ledger
                    } else {
                        read_ledger_days_sqlite(&tx, cursor, ledger.from, ledger.to)?
                    };
                    let stored = read_stored_sqlite(&tx, ledger.from, ledger.to)?;
                    let found = verification_of(&ledger, stored);
                    let changed = write_differences_sqlite(&tx, &found)?;
                    tx.commit().map_err(read_error)?;
                    Ok((found, changed, ledger))
                })
                .await;
        }
        let (from, to) = ledger.range();
        let (mut computed, events) = kept_computation(&db, Some(ledger)).await?;
        let mut tx = begin_write(db.dialect, &mut computed.conn).await?;
        let cursor = lock_cursor(&mut tx, db.dialect)
            .await
            .map_err(ledger_error)?;
        let events = current_days(&mut tx, cursor, events, (from, to), &mut computed.days).await?;
        let (found, changed) =
            pg_days::write_differences(&mut tx, (from, to), (events, computed.days), list)
                .await
                .map_err(ledger_error)?;
        tx.commit().await.map_err(ledger_error)?;
        let ledger = LedgerDays::in_postgres((from, to), cursor, computed, events);
        Ok((found, changed, ledger))
    })
    .await
}

/// `INSERT … ON CONFLICT (keys) DO UPDATE SET` every value column to the new row's: the stored
/// row becomes exactly the given one.
fn replace_rows_sql(dialect: Dialect, table: &str, keys: &[&str], rows: RowSource) -> String {
    let set: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    upsert_sql(dialect, table, keys, &set.join(", "), rows)
}

/// `DELETE` of one row by its whole key.
fn delete_row_sql(table: &str, keys: &[&str]) -> String {
    let conditions: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(n, c)| format!("{c} = ${}", n + 1))
        .collect();
    format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "))
}

/// What a comparison's differences write into one table: whole rows (keys, then values) that
/// replace the stored ones, and the keys of rows to delete (the ledger does not back them).
struct TableWrites {
    table: &'static str,
    keys: &'static [&'static str],
    replace: Vec<Vec<SqlValue>>,
    delete: Vec<Vec<SqlValue>>,
}

impl TableWrites {
    /// The writes that make stored rows what the ledger says: each difference's key, and its
    /// expected sums (`None`: the ledger does not back the row, delete it).
    fn of<'a, const N: usize>(
        table: &'static str,
        keys: &'static [&'static str],
        differences: impl IntoIterator<Item = ([String; N], &'a Option<Sums>)>,
    ) -> Self {
        let mut writes = Self {
            table,
            keys,
            replace: Vec::new(),
            delete: Vec::new(),
        };
        for (key, expected) in differences {
            match expected {
                Some(sums) => writes.replace.push(values_row(key, sums)),
                None => writes
                    .delete
                    .push(key.into_iter().map(SqlValue::Text).collect()),
            }
        }
        writes
    }
}

/// Every differing day and day member becomes what the ledger says.
fn writes_of(found: &Verification) -> [TableWrites; 2] {
    [
        TableWrites::of(
            "usage_day",
            &DAY_KEYS,
            found
                .day_differences
                .iter()
                .map(|d| (day_key_values(&(d.user_id.clone(), d.day)), &d.expected)),
        ),
        TableWrites::of(
            "usage_day_member",
            &MEMBER_KEYS,
            found.member_differences.iter().map(|d| {
                let key = (d.user_id.clone(), d.day, d.dimension, d.value.clone());
                (member_key_values(&key), &d.expected)
            }),
        ),
    ]
}

/// Writes what a comparison found (see [`writes_of`]) on SQLite's bulk path: one prepared statement per table and kind,
/// run once per row, in the caller's transaction on `conn`.
fn write_differences_sqlite(
    conn: &rusqlite::Connection,
    found: &Verification,
) -> Result<u64, sqlx::Error> {
    let mut changed = 0u64;
    for writes in writes_of(found) {
        let statements = [
            (
                replace_rows_sql(
                    Dialect::Sqlite,
                    writes.table,
                    writes.keys,
                    RowSource::Values(1),
                ),
                &writes.replace,
            ),
            (delete_row_sql(writes.table, writes.keys), &writes.delete),
        ];
        for (sql, rows) in statements {
            if rows.is_empty() {
                continue;
            }
            let mut statement = conn.prepare(&sql).map_err(read_error)?;
            for row in rows {
                statement
                    .execute(rusqlite::params_from_iter(row))
                    .map_err(read_error)?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// One user's day whose sums are not what the ledger says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayDifference {
    pub user_id: String,
    pub day: NaiveDate,
    pub stored: Option<Sums>,
    pub expected: Option<Sums>,
}

/// One day's member (conversation, agent, model or prompt) whose sums are not what the ledger
/// says: groupings by model, agent or prompt and the distinct counts are read from members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDifference {
    pub user_id: String,
    pub day: NaiveDate,
    pub dimension: Dimension,
    /// "" for events without one.
    pub value: String,
    pub stored: Option<Sums>,
    pub expected: Option<Sums>,
}

/// The stored days of a day range checked against the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub events: u64,
    /// Users' days with events in the range.
    pub days: u64,
    pub day_differences: Vec<DayDifference>,
    pub member_differences: Vec<MemberDifference>,
    /// Days repaired (rebuilt) because they differed.
    pub repaired: bool,
}

impl Verification {
    pub fn matches(&self) -> bool {
        self.day_differences.is_empty() && self.member_differences.is_empty()
    }
}

/// Everything that is in one map and not the same in the other, by key: one walk through
/// both in key order.
fn differing<K: Ord + Clone, V: PartialEq + Clone>(
    stored: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) -> Vec<(K, Option<V>, Option<V>)> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut s, mut e) = (stored.iter().peekable(), expected.iter().peekable());
    loop {
        let order = match (s.peek(), e.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ks, _)), Some((ke, _))) => ks.cmp(ke),
        };
        match order {
            Ordering::Less => {
                let (k, v) = s.next().expect("peeked");
                out.push((k.clone(), Some(v.clone()), None));
            }
            Ordering::Greater => {
                let (k, v) = e.next().expect("peeked");
                out.push((k.clone(), None, Some(v.clone())));
            }
            Ordering::Equal => {
                let ((k, vs), (_, ve)) = (s.next().expect("peeked"), e.next().expect("peeked"));
                if vs != ve {
                    out.push((k.clone(), Some(vs.clone()), Some(ve.clone())));
                }
            }
        }
    }
    out
}

/// The stored days and day members from day `$1` to `$2`, on SQLite's bulk read path. SQLite's day
/// tables are clustered on their primary key (account, day, …): a row found through the
/// `(day, …)` index costs another search of the table by its text key, many times the cost of
/// reading the rows in key order. So these read each account's range of the primary key.
/// Every day's account is in `account`: days are made of events, and an account with events
/// cannot be deleted (`usage_event` references it).
const SQLITE_STORED_DAYS_SQL: &str = "SELECT account_id, day, input_tokens, output_tokens, \
     total_tokens, cost_picos, messages, last_activity_at FROM usage_day \
     WHERE account_id IN (SELECT account_id FROM account) AND day >= $1 AND day <= $2";
const SQLITE_STORED_DAY_MEMBERS_SQL: &str = "SELECT account_id, day, dimension, value, \
     input_tokens, output_tokens, total_tokens, cost_picos, messages, last_activity_at \
     FROM usage_day_member WHERE account_id IN (SELECT account_id FROM account) \
     AND day >= $1 AND day <= $2";

pub(super) fn stored_day(row: &impl Columns, table: &str) -> Result<NaiveDate, sqlx::Error> {
    NaiveDate::parse_from_str(&row.text("day")?, "%Y-%m-%d")
        .map_err(|_| sqlx::Error::Decode(format!("{table} has a bad day").into()))
}

fn day_from_row(row: &impl Columns) -> Result<(DayKey, Sums), sqlx::Error> {
    let day = stored_day(row, "usage_day")?;
    Ok(((row.text("account_id")?, day), sums_from_row(row)?))
}

pub(super) fn dimension_of(row: &impl Columns) -> Result<Dimension, sqlx::Error> {
    Dimension::from_code(&row.text("dimension")?)
        .ok_or_else(|| sqlx::Error::Decode("usage_day_member has a bad dimension".into()))
}

fn day_member_from_row(row: &impl Columns) -> Result<(MemberKey, Sums), sqlx::Error> {
    let day = stored_day(row, "usage_day_member")?;
    Ok((
        (
            row.text("account_id")?,
            day,
            dimension_of(row)?,
            row.text("value")?,
        ),
        sums_from_row(row)?,
    ))
}

/// The stored days and day members of a day range.
#[derive(Default)]
struct StoredDays {
    days: BTreeMap<DayKey, Sums>,
    members: BTreeMap<MemberKey, Sums>,
}

/// Reads [`StoredDays`] on SQLite's bulk read path, in a transaction of `conn` (a snapshot, or
/// the write lock).
fn read_stored_sqlite(
    conn: &rusqlite::Connection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<StoredDays, sqlx::Error> {
    // Collected first, then made maps at once (sorted, built in one pass).
    let (mut days, mut members) = (Vec::new(), Vec::new());
    let (first_day, last_day) = (from.to_string(), to.to_string());
    let range: [&dyn rusqlite::ToSql; 2] = [&first_day, &last_day];
    for_each_row(conn, SQLITE_STORED_DAYS_SQL, &range, |row| {
        days.push(day_from_row(row)?);
        Ok(())
    })?;
    for_each_row(conn, SQLITE_STORED_DAY_MEMBERS_SQL, &range, |row| {
        members.push(day_member_from_row(row)?);
        Ok(())
    })?;
    Ok(StoredDays {
        days: days.into_iter().collect(),
        members: members.into_iter().collect(),
    })
}

/// Checks every stored day (and day member) of the day range against the ledger's processed
/// events; with `repair`, makes the differing ones what the ledger says.
///
/// The check reads in a read-only snapshot, so writers (the ledger writer, the aggregator) go
/// on meanwhile; only when something differs and `repair` is asked does it compare again under
/// the write lock and write the differences in that transaction.
pub(super) async fn verify(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
    repair: bool,
) -> Result<Verification, LedgerError> {
    let (found, ledger) = compare_in_snapshot(db, from, to, None).await?;
    if !repair || found.matches() {
        return Ok(found);
    }
    let (mut found, changed, _) = store(db, ledger, true).await?;
    found.repaired = changed > 0;
    Ok(found)
}

/// Checks the stored days of `ledger`'s range against it, after [`store_ledger_days`]: in a
/// read-only snapshot, reading only the stored days unless the aggregator has moved its cursor
/// since `ledger` was read (then the ledger is read again in the snapshot).
pub(super) async fn verify_stored(
    db: &Db,
    ledger: LedgerDays,
) -> Result<Verification, LedgerError> {
    let (from, to) = ledger.range();
    Ok(compare_in_snapshot(db, from, to, Some(ledger)).await?.0)
}

/// Compares the stored days of a day range with the ledger's processed events in one read-only
/// snapshot (see [`read_in_snapshot`]). Answers the comparison and the ledger's days as
/// compared.
async fn compare_in_snapshot(
    db: &Db,
    from: NaiveDate,
    to: NaiveDate,
    known: Option<LedgerDays>,
) -> Result<(Verification, LedgerDays), LedgerError> {
    let (ledger, found) = read_in_snapshot(db, from, to, known, true).await?;
    // Asked for, so always made.
    Ok((found.unwrap_or_default(), ledger))
}

fn read_cursor_sqlite(conn: &rusqlite::Connection) -> Result<Cursor, sqlx::Error> {
    conn.query_row(READ_CURSOR_SQL, [CURSOR], |row| {
        Ok(Cursor {
            tx: row.get(0)?,
            event_id: row.get(1)?,
        })
    })
    .map_err(read_error)
}

/// The differences between what the ledger says and what is stored.
fn verification_of(ledger: &LedgerDays, stored: StoredDays) -> Verification {
    let empty = RollupDelta::default();
    // Days folded here (SQLite's path, which never has them computed by Postgres).
    let delta = ledger.folded().unwrap_or(&empty);
    let day_differences = differing(&stored.days, &delta.days)
        .into_iter()
        .map(|((user_id, day), stored, expected)| DayDifference {
            user_id,
            day,
            stored,
            expected,
        })
        .collect();
    let member_differences = differing(&stored.members, &delta.members)
        .into_iter()
        .map(
            |((user_id, day, dimension, value), stored, expected)| MemberDifference {
                user_id,
                day,
                dimension,
                value,
                stored,
                expected,
            },
        )
        .collect();
    Verification {
        events: ledger.events,
        days: delta.days.len() as u64,
        day_differences,
        member_differences,
        repaired: false,
    }
}

/// The last day the nightly check verified, if any.
pub(super) async fn verified_through(db: &Db) -> Result<Option<NaiveDate>, LedgerError> {
    let row = sqlx::query("SELECT verified_through FROM rollup_cursor WHERE name = $1")
        .bind(CURSOR)
        .fetch_one(&db.pool)
        .await
        .map_err(ledger_error)?;
    let day: Option<String> = row.try_get("verified_through").map_err(ledger_error)?;
    Ok(day.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()))
}

pub(super) async fn set_verified_through(db: &Db, day: NaiveDate) -> Result<(), LedgerError> {
    sqlx::query("UPDATE rollup_cursor SET verified_through = $1 WHERE name = $2")
        .bind(day.to_string())
        .bind(CURSOR)
        .execute(&db.pool)
        .await
        .map_err(ledger_error)?;
    Ok(())
}

/// `AND account_id = $n` for one user, nothing for everyone.
fn scope_condition(scope: &StatsScope, n: usize) -> String {
    match scope {
        StatsScope::User(_) => format!(" AND account_id = ${n}"),
        StatsScope::All => String::new(),
    }
}

/// [`scope_condition`] for the day tables. SQLite's have no index by day: everyone's rows are
/// read as each account's range of the key (every day's account is in `account`, see
/// [`SQLITE_STORED_DAYS_SQL`]).
fn day_scope_condition(dialect: Dialect, scope: &StatsScope, n: usize) -> String {
    match (scope, dialect) {
        (StatsScope::All, Dialect::Sqlite) => {
            " AND account_id IN (SELECT account_id FROM account)".to_owned()
        }
        _ => scope_condition(scope, n),
    }
}

fn bind_scope<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    scope: &'q StatsScope,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    match scope {
        StatsScope::User(user) => query.bind(user.as_str()),
        StatsScope::All => query,
    }
}

pub(super) fn sums_from_row(row: &impl Columns) -> Result<Sums, sqlx::Error> {
    let n = |c: &str| row.int(c).map(|v| v.max(0) as u64);
    Ok(Sums {
        input_tokens: n("input_tokens")?,
        output_tokens: n("output_tokens")?,
        total_tokens: n("total_tokens")?,
        cost_picos: n("cost_picos")?,
        messages: n("messages")?,
        last_activity: row.opt_int("last_activity_at")?.map(from_micros),
    })
}

const SUMS_SELECT: &str = "CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
     CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
     CAST(SUM(total_tokens) AS BIGINT) AS total_tokens, \
     CAST(SUM(cost_picos) AS BIGINT) AS cost_picos, \
     CAST(SUM(messages) AS BIGINT) AS messages, \
     MAX(last_activity_at) AS last_activity_at";

/// How the rows of a day table are grouped: SQL for each row's group (a text).
#[derive(Clone, Copy)]
enum Grouping {
    /// One group, `''`.
    Whole,
    /// The first day of the row's period ('YYYY-MM-DD', as `Period::bucket_of_day`).
    Period(Period),
    User,
}

impl Grouping {
    fn sql(self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            (Self::Whole, _) => "''",
            (Self::User, _) => "account_id",
            (Self::Period(Period::Day), _) => "day",
            (Self::Period(Period::Month), _) => "SUBSTR(day, 1, 7) || '-01'",
            // Back six days, then on to a Monday (or stay on it): the ISO week's Monday.
            (Self::Period(Period::Week), Dialect::Sqlite) => "date(day, '-6 days', 'weekday 1')",
            (Self::Period(Period::Week), Dialect::Postgres) => {
                "TO_CHAR(DATE_TRUNC('week', CAST(day AS TIMESTAMP)), 'YYYY-MM-DD')"
            }
        }
    }
}

/// `SELECT <group> AS grp, <select> FROM <table> WHERE <day range> <conditions> GROUP BY 1`
/// over a day table, from `$1` to `$2` (and of `$3`'s user).
async fn grouped_day_rows(
    db: &Db,
    select: &str,
    table_and_conditions: (&str, &str),
    (from, to): (NaiveDate, NaiveDate),
    scope: &StatsScope,
    grouping: Grouping,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let (table, conditions) = table_and_conditions;
    let sql = format!(
        "SELECT {} AS grp, {select} FROM {table} WHERE day >= $1 AND day <= $2{conditions}{} \
         GROUP BY 1",
        grouping.sql(db.dialect),
        day_scope_condition(db.dialect, scope, 3)
    );
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(from.to_string())
        .bind(to.to_string());
    bind_scope(query, scope).fetch_all(&db.pool).await
}

/// The stored days from `from` to `to` (of the scope's users), summed per group.
async fn day_sums(
    db: &Db,
    range: (NaiveDate, NaiveDate),
    scope: &StatsScope,
    grouping: Grouping,
) -> Result<Vec<(String, Sums)>, sqlx::Error> {
    let rows = grouped_day_rows(db, SUMS_SELECT, ("usage_day", ""), range, scope, grouping);
    let mut out = Vec::new();
    for row in rows.await? {
        if row.try_get::<Option<i64>, _>("messages")?.is_some() {
            out.push((row.try_get("grp")?, sums_from_row(&row)?));
        }
    }
    Ok(out)
}

/// Distinct conversations (a user's each), agents and models of the stored day members from
/// `from` to `to` (of the scope's users), per group.
async fn distinct_counts(
    db: &Db,
    range: (NaiveDate, NaiveDate),
    scope: &StatsScope,
    grouping: Grouping,
) -> Result<HashMap<String, [u64; 3]>, sqlx::Error> {
    const COUNTS: &str = "\
        CAST(COUNT(DISTINCT CASE WHEN dimension = 'c' THEN account_id || '/' || value END) AS BIGINT) AS conversations, \
        CAST(COUNT(DISTINCT CASE WHEN dimension = 'a' THEN value END) AS BIGINT) AS agents, \
        CAST(COUNT(DISTINCT CASE WHEN dimension = 'm' THEN value END) AS BIGINT) AS models";
    let members = (
        "usage_day_member",
        " AND dimension IN ('c', 'a', 'm') AND value <> ''",
    );
    let mut out = HashMap::new();
    for row in grouped_day_rows(db, COUNTS, members, range, scope, grouping).await? {
        let n = |c: &str| row.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
        out.insert(
            row.try_get::<String, _>("grp")?,
            [n("conversations")?, n("agents")?, n("models")?],
        );
    }
    Ok(out)
}

/// Statistics from the stored days (or, with a model filter, from the ledger's events).
pub(super) async fn stats(
    db: &Db,
    query: &StatsQuery,
    scope: &StatsScope,
) -> Result<StatsAnswer, LedgerError> {
    if query.model.is_some() {
        return stats_from_events(db, query, scope).await;
    }
    stats_from_days(db, query, scope)
        .await
        .map_err(ledger_error)
}

/// The rows and summary of a query made of the stored days: a week's or a month's sums are its
/// days' sums and its distinct counts those of its days' members (see
/// `RollupDelta::to_rollups`, the reference).
async fn stats_from_days(
    db: &Db,
    query: &StatsQuery,
    scope: &StatsScope,
) -> Result<StatsAnswer, sqlx::Error> {
    // Grouped by period, the range is grown to whole periods.
    let (from, to) = query.effective_range();
    let days = (to - from).num_days() as u64 + 1;
    let whole = day_sums(db, (from, to), scope, Grouping::Whole)
        .await?
        .pop()
        .map(|(_, sums)| sums)
        .unwrap_or_default();
    let distinct = distinct_counts(db, (from, to), scope, Grouping::Whole)
        .await?
        .remove("")
        .unwrap_or_default();
    let summary = StatsSummary::new(&whole, distinct, days);

    let grouping = match (query.group_by.period(), query.group_by.dimension()) {
        (Some(period), _) => Grouping::Period(period),
        (None, Some(dimension)) => {
            let sql = format!(
                "SELECT value AS grp, {SUMS_SELECT} FROM usage_day_member \
                 WHERE day >= $1 AND day <= $2 AND dimension = $3{} GROUP BY value",
                day_scope_condition(db.dialect, scope, 4)
            );
            let q = sqlx::query(AssertSqlSafe(sql))
                .bind(from.to_string())
                .bind(to.to_string())
                .bind(dimension.code());
            let mut rows = Vec::new();
            for row in bind_scope(q, scope).fetch_all(&db.pool).await? {
                let value: String = row.try_get("grp")?;
                let key = (value != NO_VALUE).then_some(value);
                rows.push(StatsRow::from_sums(key, &sums_from_row(&row)?));
            }
            return Ok(StatsAnswer { rows, summary });
        }
        (None, None) => Grouping::User,
    };
    let counts = distinct_counts(db, (from, to), scope, grouping).await?;
    let rows = day_sums(db, (from, to), scope, grouping)
        .await?
        .into_iter()
        .map(|(key, sums)| {
            let [conversations, agents, models] = counts.get(&key).copied().unwrap_or_default();
            StatsRow {
                conversations: Some(conversations),
                agents: Some(agents),
                models: Some(models),
                ..StatsRow::from_sums(Some(key), &sums)
            }
        })
        .collect();
    Ok(StatsAnswer { rows, summary })
}

/// A model filter narrows events below what rollups keep apart: read the ledger's events of the
/// range (one user's through their index) and compute the answer as the reference does.
async fn stats_from_events(
    db: &Db,
    query: &StatsQuery,
    scope: &StatsScope,
) -> Result<StatsAnswer, LedgerError> {
    let (from, to) = query.effective_range();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM usage_event WHERE created_at >= $1 AND created_at < $2 \
         AND model = $3{}",
        scope_condition(scope, 4)
    );
    let q = sqlx::query(AssertSqlSafe(sql))
        .bind(day_start_micros(from))
        .bind(day_start_micros(to.succ_opt().unwrap_or(to)))
        .bind(query.model.as_ref().map(|m| m.as_str()));
    let mut events = Vec::new();
    let mut rows = bind_scope(q, scope).fetch(&db.pool);
    while let Some(row) = rows.try_next().await.map_err(ledger_error)? {
        events.push(facts_from_row(&row).map_err(ledger_error)?);
    }
    Ok(stats_of_events(&events, query))
}

/// When the ledger's newest event was recorded and when the aggregator last moved, for
/// monitoring its lag.
pub(super) async fn cursor_position(db: &Db) -> Result<(Cursor, DateTime<Utc>), LedgerError> {
    let row =
        sqlx::query("SELECT last_tx, last_event_id, updated_at FROM rollup_cursor WHERE name = $1")
            .bind(CURSOR)
            .fetch_one(&db.pool)
            .await
            .map_err(ledger_error)?;
    Ok((
        Cursor {
            tx: row.try_get("last_tx").map_err(ledger_error)?,
            event_id: row.try_get("last_event_id").map_err(ledger_error)?,
        },
        from_micros(row.try_get("updated_at").map_err(ledger_error)?),
    ))
}

/// Events per chunk of an export.
const EXPORT_CHUNK: usize = 5_000;

/// Streams the events of a day range, oldest first, in chunks (see `Ledger::export_events`).
pub(super) fn export_events(
    db: &Db,
    scope: StatsScope,
    from: NaiveDate,
    to: NaiveDate,
    model: Option<domain::ModelName>,
) -> tokio::sync::mpsc::Receiver<Result<Vec<EventRow>, LedgerError>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let model_condition = if model.is_some() {
        " AND model = $3"
    } else {
        ""
    };
    let scope_n = if model.is_some() { 4 } else { 3 };
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, source FROM usage_event \
         WHERE created_at >= $1 AND created_at < $2{model_condition}{} \
         ORDER BY created_at, usage_event_id",
        scope_condition(&scope, scope_n)
    );
    let start = day_start_micros(from);
    let end = day_start_micros(to.succ_opt().unwrap_or(to));
    let model = model.map(|m| m.as_str().to_owned());
    let user = match &scope {
        StatsScope::User(user) => Some(user.as_str().to_owned()),
        StatsScope::All => None,
    };
    if let Some(file) = db.sqlite_file.clone() {
        tokio::task::spawn_blocking(move || {
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&start, &end];
            params.extend(model.as_ref().map(|m| m as &dyn rusqlite::ToSql));
            params.extend(user.as_ref().map(|u| u as &dyn rusqlite::ToSql));
            let mut chunk = Vec::with_capacity(EXPORT_CHUNK);
            let mut gone = false;
            let read = file.open().and_then(|conn| {
                for_each_row(&conn, &sql, &params, |row| {
                    chunk.push(event_row(row)?);
                    if chunk.len() == EXPORT_CHUNK
                        && sender
                            .blocking_send(Ok(std::mem::take(&mut chunk)))
                            .is_err()
                    {
                        gone = true; // the client went away: stop reading
                        return Err(sqlx::Error::RowNotFound);
                    }
                    Ok(())
                })
            });
            match read {
                _ if gone => {}
                Ok(()) if chunk.is_empty() => {}
                Ok(()) => {
                    let _ = sender.blocking_send(Ok(chunk));
                }
                Err(e) => {
                    let _ = sender.blocking_send(Err(ledger_error(e)));
                }
            }
        });
        return receiver;
    }
    let db = db.clone();
    tokio::spawn(async move {
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(start).bind(end);
        if let Some(m) = model {
            query = query.bind(m);
        }
        if let Some(u) = user {
            query = query.bind(u);
        }
        let mut rows = query.fetch(&db.pool);
        let mut chunk = Vec::with_capacity(EXPORT_CHUNK);
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => match event_row(&row) {
                    Ok(event) => {
                        chunk.push(event);
                        if chunk.len() == EXPORT_CHUNK
                            && sender.send(Ok(std::mem::take(&mut chunk))).await.is_err()
                        {
                            return; // the client went away
                        }
                    }
                    Err(e) => {
                        let _ = sender.send(Err(ledger_error(e))).await;
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = sender.send(Err(ledger_error(e))).await;
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = sender.send(Ok(chunk)).await;
        }
    });
    receiver
}

fn event_row(row: &impl Columns) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        event_id: row.int("usage_event_id")?,
        source: row.text("source")?,
        facts: facts_from_row(row)?,
    })
}
