//! Postgres rebuilds and checks a day range's stored days itself, in set-based SQL: it sums
//! the ledger's events into temporary tables of one connection, finds the stored rows that
//! differ from them with one join per table and writes only those, and checks the result with
//! the same join. Nothing of the range crosses the wire but the differences: reading ten
//! million events and twice as many stored rows into this process (and writing them back) had
//! made a backfill of a year take minutes.
//!
//! The sums mean exactly what [`RollupDelta::add`](domain::rollup::RollupDelta::add) and
//! [`EventFacts::split`](domain::rollup::EventFacts::split) say; the rollups tests compare what
//! this SQL stores with that reference on a real Postgres.

use chrono::NaiveDate;
use domain::rollup::Dimension;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};

use super::Dialect;
use super::rollups::{
    Cursor, DAY_KEYS, DayDifference, MEMBER_KEYS, MemberDifference, VALUE_COLUMNS, Verification,
    day_bounds, dimension_of, processed_condition, stored_day, sums_from_row,
};
use super::sqlite_read::Columns;

/// The temporary tables a range's days are computed into, each named for the table it mirrors.
const LEDGER_TABLES: [(&str, &str, &[&str]); 2] = [
    ("usage_day", "ledger_day", &DAY_KEYS),
    ("usage_day_member", "ledger_day_member", &MEMBER_KEYS),
];

/// A day range's days as the ledger says they should be, computed by Postgres into the
/// temporary tables of [`LEDGER_TABLES`] on `conn`, which is kept (and closed when dropped, so
/// the tables go with it).
pub(super) struct ComputedDays {
    pub(super) conn: PoolConnection<Any>,
    pub(super) days: u64,
}

impl ComputedDays {
    pub(super) fn new(mut conn: PoolConnection<Any>) -> Self {
        conn.close_on_drop();
        Self { conn, days: 0 }
    }
}

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;

/// The event column of each dimension.
fn dimension_column(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Conversation => "conversation_id",
        Dimension::Agent => "agent_id",
        Dimension::Model => "model",
        Dimension::Prompt => "prompt_id",
    }
}

/// A query of the members of the events up to `cursor` from `start` (µs, inclusive) to `end`
/// (exclusive), one `GROUP BY` per dimension over the events read once. An event's input and
/// output tokens are split as `EventFacts::split` does; its day is the UTC day of its time (a
/// floor division, also before 1970). Its keys compare in byte order, as the day tables' do,
/// and it sums with `tokenmeter_sum` (both from migration
/// `20261127000001_day_keys_in_byte_order.sql`).
fn ledger_members_sql(cursor: Cursor, (start, end): (i64, i64)) -> String {
    let processed = processed_condition(Dialect::Postgres, cursor);
    let branches: Vec<String> = Dimension::ALL
        .iter()
        .map(|&dimension| {
            let value = format!("COALESCE({}, '')", dimension_column(dimension));
            format!(
                "SELECT account_id COLLATE \"C\" AS account_id, \
                 TO_CHAR(DATE '1970-01-01' + CAST(day_number AS INTEGER), 'YYYY-MM-DD') \
                 COLLATE \"C\" AS day, '{code}' COLLATE \"C\" AS dimension, \
                 {value} COLLATE \"C\" AS value, \
                 tokenmeter_sum(input_tokens) AS input_tokens, \
                 tokenmeter_sum(total_tokens - input_tokens) AS output_tokens, \
                 tokenmeter_sum(total_tokens) AS total_tokens, \
                 tokenmeter_sum(cost_picos) AS cost_picos, \
                 COUNT(*) AS messages, MAX(created_at) AS last_activity_at \
                 FROM event GROUP BY account_id, day_number, {value}",
                code = dimension.code()
            )
        })
        .collect();
    format!(
        "WITH event AS MATERIALIZED (\
         SELECT account_id, \
         (created_at - (created_at % {DAY_MICROS} + {DAY_MICROS}) % {DAY_MICROS}) / {DAY_MICROS} \
         AS day_number, \
         CASE WHEN output_tokens IS NOT NULL \
              THEN GREATEST(GREATEST(tokens, 0) - GREATEST(output_tokens, 0), 0) \
              WHEN input_tokens IS NOT NULL \
              THEN LEAST(GREATEST(input_tokens, 0), GREATEST(tokens, 0)) \
              ELSE GREATEST(tokens, 0) END AS input_tokens, \
         GREATEST(tokens, 0) AS total_tokens, GREATEST(cost_picos, 0) AS cost_picos, \
         created_at, model, conversation_id, agent_id, prompt_id \
         FROM usage_event WHERE created_at >= {start} AND created_at < {end} AND {processed}) \
         {}",
        branches.join(" UNION ALL ")
    )
}

/// `CREATE TEMPORARY TABLE ledger_day AS …`: each user's day, the sum of its model members
/// (every event has exactly one, `''` when it names none).
fn ledger_days_sql() -> String {
    format!(
        "CREATE TEMPORARY TABLE ledger_day AS SELECT account_id, day, \
         tokenmeter_sum(input_tokens) AS input_tokens, \
         tokenmeter_sum(output_tokens) AS output_tokens, \
         tokenmeter_sum(total_tokens) AS total_tokens, \
         tokenmeter_sum(cost_picos) AS cost_picos, \
         tokenmeter_sum(messages) AS messages, \
         MAX(last_activity_at) AS last_activity_at \
         FROM ledger_day_member WHERE dimension = '{}' GROUP BY account_id, day",
        Dimension::Model.code()
    )
}

/// Computes the days of the events up to `cursor` of the day range into the temporary
/// tables, replacing any computed before, in the caller's transaction on `conn` (so in its
/// snapshot). Answers (events, days).
///
/// The members are computed in key order when nothing is stored in the range yet: a first
/// build then inserts them all as they are, and an index is cheapest to fill in its order.
/// Sorted here, while the writer writes the batch before, rather than in the writer's insert, a
/// first build of a year of 10 M events took 74 s instead of 91 s. When something is stored,
/// only the differences are written (the writer sorts those), and sorting every member here
/// made the year's second backfill 79 s instead of 56–60 s.
pub(super) async fn compute(
    conn: &mut AnyConnection,
    cursor: Cursor,
    range: (NaiveDate, NaiveDate),
) -> Result<(u64, u64), sqlx::Error> {
    let members = ledger_members_sql(cursor, day_bounds(range.0, range.1));
    let members = if nothing_stored(conn, "usage_day_member", range).await? {
        format!(
            "SELECT * FROM ({members}) m ORDER BY {}",
            MEMBER_KEYS.join(", ")
        )
    } else {
        members
    };
    let statements = [
        "DROP TABLE IF EXISTS pg_temp.ledger_day, pg_temp.ledger_day_member".to_owned(),
        format!("CREATE TEMPORARY TABLE ledger_day_member AS {members}"),
        ledger_days_sql(),
        "ANALYZE ledger_day, ledger_day_member".to_owned(),
    ];
    for sql in statements {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
    }
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(messages), 0) AS BIGINT) AS events, COUNT(*) AS days \
         FROM ledger_day",
    )
    .fetch_one(&mut *conn)
    .await?;
    let count = |c: &str| row.try_get::<i64, _>(c).map(|n| n.max(0) as u64);
    Ok((count("events")?, count("days")?))
}

/// `a.k = s.k AND …` over a table's keys, `a` the other side's alias.
fn keys_match(keys: &[&str], a: &str) -> String {
    keys.iter()
        .map(|k| format!("{a}.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `(p.v, …)` over the value columns.
fn values_of(prefix: &str) -> String {
    let values: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|v| format!("{prefix}.{v}"))
        .collect();
    format!("({})", values.join(", "))
}

/// The rows of `table` in the day range that differ from the computed ones (missing on either
/// side, or other values): each key, then every value as stored (`stored_…`, NULL when
/// missing) and as computed (`ledger_…`). The days are written into the SQL (they are dates
/// this process formatted), so the query can fill a temporary table.
fn differences_sql(
    table: &str,
    ledger: &str,
    keys: &[&str],
    (from, to): (NaiveDate, NaiveDate),
) -> String {
    let mut columns: Vec<String> = keys
        .iter()
        .map(|k| format!("COALESCE(l.{k}, s.{k}) AS {k}"))
        .collect();
    for v in VALUE_COLUMNS {
        columns.push(format!("s.{v} AS stored_{v}"));
        columns.push(format!("l.{v} AS ledger_{v}"));
    }
    format!(
        "SELECT {} FROM {ledger} l FULL JOIN \
         (SELECT * FROM {table} WHERE day >= '{from}' AND day <= '{to}') s ON {} \
         WHERE {} IS DISTINCT FROM {}",
        columns.join(", "),
        keys_match(keys, "l"),
        values_of("l"),
        values_of("s")
    )
}

/// A table's columns: its keys, then [`VALUE_COLUMNS`].
fn columns_of<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    keys.iter().chain(&VALUE_COLUMNS).copied().collect()
}

/// The statements that make the stored rows of `table` what the ledger says, from the
/// differences found in `differences`: a delete of every stored row that differs, then a plain
/// insert of the ledger's rows in key order (an upsert, `ON CONFLICT … DO UPDATE`, costs a
/// speculative insertion a row, about a third more than a plain insert).
fn write_sql(table: &str, differences: &str, keys: &[&str]) -> [String; 2] {
    let columns = columns_of(keys);
    let ledger_values: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|v| format!("ledger_{v}"))
        .collect();
    [
        format!(
            "DELETE FROM {table} s USING {differences} d \
             WHERE {} AND d.stored_messages IS NOT NULL",
            keys_match(keys, "d")
        ),
        format!(
            "INSERT INTO {table} ({}) SELECT {keys}, {} FROM {differences} \
             WHERE ledger_messages IS NOT NULL ORDER BY {keys}",
            columns.join(", "),
            ledger_values.join(", "),
            keys = keys.join(", "),
        ),
    ]
}

/// Whether `table` has no rows in the day range.
async fn nothing_stored(
    conn: &mut AnyConnection,
    table: &str,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT 1 FROM {table} \
         WHERE day >= $1 AND day <= $2 LIMIT 1) r"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>("n")? == 0)
}

/// `INSERT INTO table … SELECT … FROM ledger ORDER BY keys`: every computed row, in key order.
fn insert_all_sql(table: &str, ledger: &str, keys: &[&str]) -> String {
    let columns = columns_of(keys);
    format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM {ledger} ORDER BY {}",
        keys.join(", "),
        columns = columns.join(", ")
    )
}

/// What a comparison of the computed days with the stored ones found, as differences.
fn verification_from(
    rows: &[AnyRow],
    table: &str,
    found: &mut Verification,
) -> Result<(), sqlx::Error> {
    let sums = |row: &AnyRow, side: &'static str| {
        let side = Prefixed(row, side);
        match side.opt_int("messages")? {
            Some(_) => sums_from_row(&side).map(Some),
            None => Ok(None),
        }
    };
    for row in rows {
        let (stored, expected) = (sums(row, "stored_")?, sums(row, "ledger_")?);
        let (user_id, day) = (row.text("account_id")?, stored_day(row, table)?);
        if table == "usage_day" {
            found.day_differences.push(DayDifference {
                user_id,
                day,
                stored,
                expected,
            });
        } else {
            found.member_differences.push(MemberDifference {
                user_id,
                day,
                dimension: dimension_of(row)?,
                value: row.text("value")?,
                stored,
                expected,
            });
        }
    }
    Ok(())
}

/// How the stored days of `range` differ from the computed ones, in the caller's transaction
/// on `conn` (its snapshot). `counted` is (events, days) as computed.
pub(super) async fn compare(
    conn: &mut AnyConnection,
    range: (NaiveDate, NaiveDate),
    (events, days): (u64, u64),
) -> Result<Verification, sqlx::Error> {
    let mut found = Verification {
        events,
        days,
        ..Verification::default()
    };
    for (table, ledger, keys) in LEDGER_TABLES {
        let rows = sqlx::query(AssertSqlSafe(differences_sql(table, ledger, keys, range)))
            .fetch_all(&mut *conn)
            .await?;
        verification_from(&rows, table, &mut found)?;
    }
    Ok(found)
}

/// Makes the stored days of `range` the computed ones, in the caller's transaction on `conn`:
/// finds the differing rows with one join per table (into a temporary table) and writes only
/// those, so a range that is already right costs the join (a table with nothing stored in the
/// range, unless `list`, is written from the computed rows at once). Answers the comparison
/// (its differences listed only with `list`: a first build differs everywhere) and the rows
/// written or deleted.
pub(super) async fn write_differences(
    conn: &mut AnyConnection,
    range: (NaiveDate, NaiveDate),
    (events, days): (u64, u64),
    list: bool,
) -> Result<(Verification, u64), sqlx::Error> {
    let mut found = Verification {
        events,
        days,
        ..Verification::default()
    };
    let mut changed = 0;
    for (table, ledger, keys) in LEDGER_TABLES {
        if !list && nothing_stored(conn, table, range).await? {
            // A first build: every computed row is new, and written as it is.
            changed += sqlx::query(AssertSqlSafe(insert_all_sql(table, ledger, keys)))
                .execute(&mut *conn)
                .await?
                .rows_affected();
            continue;
        }
        let differences = format!("{ledger}_differences");
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS pg_temp.{differences}"
        )))
        .execute(&mut *conn)
        .await?;
        // Each differing row is one row written or deleted.
        changed += sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {differences} AS {}",
            differences_sql(table, ledger, keys, range)
        )))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if list {
            let rows = sqlx::query(AssertSqlSafe(format!("SELECT * FROM {differences}")))
                .fetch_all(&mut *conn)
                .await?;
            verification_from(&rows, table, &mut found)?;
        }
        for sql in write_sql(table, &differences, keys) {
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
        }
    }
    Ok((found, changed))
}

/// A row's columns under a prefix: `stored_…` or `ledger_…` of [`differences_sql`].
struct Prefixed<'a, R>(&'a R, &'static str);

impl<R: Columns> Columns for Prefixed<'_, R> {
    fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.0.int(&format!("{}{name}", self.1))
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        self.0.opt_int(&format!("{}{name}", self.1))
    }
    fn text(&self, name: &str) -> Result<String, sqlx::Error> {
        self.0.text(&format!("{}{name}", self.1))
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        self.0.opt_text(&format!("{}{name}", self.1))
    }
}
