//! Postgres rebuilds and checks a day range's stored days itself, in set-based SQL: it sums
//! the ledger's events into temporary tables of one connection, finds the stored rows that
//! differ from them with one join per table and writes only those, and checks the result with
//! the same joins. Nothing of the range crosses the wire but the differences: reading ten
//! million events and twice as many stored rows into this process (and writing them back) had
//! made a backfill of a year take minutes.
//!
//! Postgres stores a user's day members packed, one row of arrays per user, day and dimension
//! (`usage_day_members`; the view `usage_day_member` unpacks them for readers, with SQLite's
//! columns). The members are computed one per row, then packed; packed rows are compared, and
//! only those that differ are unpacked to find the members that differ. The aggregator merges
//! what it adds into the packed rows ([`merge_members_sql`]).
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

/// The keys of a packed row of `usage_day_members`: a user's day and dimension.
const PACKED_KEYS: [&str; 3] = ["account_id", "day", "dimension"];

/// The arrays of a packed row: the members' values (sorted), then each of [`VALUE_COLUMNS`].
const PACKED_COLUMNS: [&str; 1 + VALUE_COLUMNS.len()] = {
    let mut columns = ["value"; 1 + VALUE_COLUMNS.len()];
    let mut n = 0;
    while n < VALUE_COLUMNS.len() {
        columns[n + 1] = VALUE_COLUMNS[n];
        n += 1;
    }
    columns
};

/// A range's days as the ledger says they should be, computed by Postgres into temporary
/// tables on `conn`, which is kept (and closed when dropped, so the tables go with it):
/// `ledger_day` (each user's day), `ledger_day_member` (one row per member) and
/// `ledger_day_members` (the members packed as `usage_day_members` stores them).
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

/// The sums of day rows or members, each of [`VALUE_COLUMNS`] as a column of its name: the
/// latest last activity, the others added up.
fn summed_values() -> String {
    let sums: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|&c| match c {
            "last_activity_at" => format!("MAX({c}) AS {c}"),
            _ => format!("tokenmeter_sum({c}) AS {c}"),
        })
        .collect();
    sums.join(", ")
}

/// `CREATE TEMPORARY TABLE ledger_day AS …`: each user's day, the sum of its model members
/// (every event has exactly one, `''` when it names none).
fn ledger_days_sql() -> String {
    format!(
        "CREATE TEMPORARY TABLE ledger_day AS SELECT account_id, day, {} \
         FROM ledger_day_member WHERE dimension = '{}' GROUP BY account_id, day",
        summed_values(),
        Dimension::Model.code()
    )
}

/// The members of `members` (rows of `usage_day_member`'s columns, one per member) packed as
/// `usage_day_members` keeps them: one row per user, day and dimension, each array in the
/// order of the values, so that the same members make the same row. The arrays take the rows
/// in the order of a sorted subquery, which Postgres keeps: an `ORDER BY` in each of the seven
/// aggregates cost 2.75 s a month against 1.7 s. (Were the order ever another, the arrays would
/// still agree with each other, and a comparison, which unpacks the rows that differ, would
/// find no member that differs.)
fn packed_sql(members: &str) -> String {
    let arrays: Vec<String> = PACKED_COLUMNS
        .iter()
        .map(|c| format!("array_agg({c}) AS {c}"))
        .collect();
    let keys = PACKED_KEYS.join(", ");
    format!(
        "SELECT {keys}, {} FROM (SELECT * FROM {members} ORDER BY {keys}, value) sorted \
         GROUP BY {keys}",
        arrays.join(", ")
    )
}

/// The members of the packed rows of `from` (which names `usage_day_members` `p`, joined with
/// what picks the rows), one row per member as the view `usage_day_member` gives them. The
/// view itself, joined with a table, is unpacked whole before the join (its `unnest`s are in
/// its select list, which keeps a join's keys out): a join picks the packed rows first.
fn unpacked_sql(from: &str) -> String {
    let arrays: Vec<String> = PACKED_COLUMNS
        .iter()
        .map(|c| format!("unnest(p.{c}) AS {c}"))
        .collect();
    format!(
        "SELECT p.account_id, p.day, p.dimension, {} FROM {from}",
        arrays.join(", ")
    )
}

/// `CREATE TEMPORARY TABLE ledger_day_members AS …`: the computed members packed, in key
/// order (an index is cheapest to fill in its order).
fn ledger_packed_sql() -> String {
    format!(
        "CREATE TEMPORARY TABLE ledger_day_members AS {} ORDER BY {}",
        packed_sql("ledger_day_member"),
        PACKED_KEYS.join(", ")
    )
}

/// Adds members to the packed rows: `$1` is a JSON array of members, each an array of
/// `usage_day_member`'s columns (keys, then [`VALUE_COLUMNS`]). Each packed row they touch is
/// read, merged with them (the sums added, the latest last activity kept) and written whole.
/// Only the aggregator adds, holding the cursor's lock, so no other merge reads the row
/// meanwhile.
pub(super) fn merge_members_sql() -> String {
    let columns: Vec<String> = MEMBER_KEYS
        .iter()
        .chain(&VALUE_COLUMNS)
        .enumerate()
        .map(|(n, c)| match n < MEMBER_KEYS.len() {
            true => format!("(e->>{n}) COLLATE \"C\" AS {c}"),
            false => format!("CAST(e->>{n} AS BIGINT) AS {c}"),
        })
        .collect();
    let keys = PACKED_KEYS.join(", ");
    let updates: Vec<String> = PACKED_COLUMNS
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "WITH delta AS (SELECT {} FROM json_array_elements(CAST($1 AS json)) AS e), \
         merged AS (SELECT {member_keys}, {} FROM (\
           SELECT * FROM delta UNION ALL {}) added \
         GROUP BY {member_keys}) \
         INSERT INTO usage_day_members ({keys}, {packed}) {} \
         ON CONFLICT ({keys}) DO UPDATE SET {}",
        columns.join(", "),
        summed_values(),
        unpacked_sql(&format!(
            "usage_day_members p JOIN (SELECT DISTINCT {keys} FROM delta) touched USING ({keys})"
        )),
        packed_sql("merged"),
        updates.join(", "),
        member_keys = MEMBER_KEYS.join(", "),
        packed = PACKED_COLUMNS.join(", "),
    )
}

/// Computes the days of the events up to `cursor` of the day range into the temporary
/// tables, replacing any computed before, in the caller's transaction on `conn` (so in its
/// snapshot). Answers (events, days).
pub(super) async fn compute(
    conn: &mut AnyConnection,
    cursor: Cursor,
    range: (NaiveDate, NaiveDate),
) -> Result<(u64, u64), sqlx::Error> {
    let statements = [
        "DROP TABLE IF EXISTS pg_temp.ledger_day, pg_temp.ledger_day_member, \
         pg_temp.ledger_day_members"
            .to_owned(),
        format!(
            "CREATE TEMPORARY TABLE ledger_day_member AS {}",
            ledger_members_sql(cursor, day_bounds(range.0, range.1))
        ),
        ledger_days_sql(),
        ledger_packed_sql(),
        // Not the members: sampling their arrays cost ~0.5 s a month, and the joins over them
        // are planned well enough from their size.
        "ANALYZE ledger_day".to_owned(),
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

/// A stored day table and the temporary table its rows are computed into.
struct DayTable {
    stored: &'static str,
    ledger: &'static str,
    keys: &'static [&'static str],
    /// The columns compared and written after the keys; `messages` is never NULL in a row.
    values: &'static [&'static str],
}

/// Each user's day.
const DAYS: DayTable = DayTable {
    stored: "usage_day",
    ledger: "ledger_day",
    keys: &DAY_KEYS,
    values: &VALUE_COLUMNS,
};

/// Each user's day members, packed per dimension.
const PACKED_MEMBERS: DayTable = DayTable {
    stored: "usage_day_members",
    ledger: "ledger_day_members",
    keys: &PACKED_KEYS,
    values: &PACKED_COLUMNS,
};

/// `a.k = s.k AND …` over a table's keys, `a` the other side's alias.
fn keys_match(keys: &[&str], a: &str) -> String {
    keys.iter()
        .map(|k| format!("{a}.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `(p.v, …)` over `values`.
fn values_of(prefix: &str, values: &[&str]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{prefix}.{v}")).collect();
    format!("({})", values.join(", "))
}

/// The rows of `l` (computed) and `s` (stored) that differ (missing on either side, or other
/// values): each key, then every value as stored (`stored_…`, NULL when missing) and as
/// computed (`ledger_…`).
fn full_join_differences(l: &str, s: &str, keys: &[&str], values: &[&str]) -> String {
    let mut columns: Vec<String> = keys
        .iter()
        .map(|k| format!("COALESCE(l.{k}, s.{k}) AS {k}"))
        .collect();
    for v in values {
        columns.push(format!("s.{v} AS stored_{v}"));
        columns.push(format!("l.{v} AS ledger_{v}"));
    }
    format!(
        "SELECT {} FROM {l} l FULL JOIN {s} s ON {} WHERE {} IS DISTINCT FROM {}",
        columns.join(", "),
        keys_match(keys, "l"),
        values_of("l", values),
        values_of("s", values)
    )
}

/// The rows of `table` in the day range that differ from the computed ones. The days are
/// written into the SQL (they are dates this process formatted), so the query can fill a
/// temporary table.
fn differences_sql(table: &DayTable, (from, to): (NaiveDate, NaiveDate)) -> String {
    full_join_differences(
        table.ledger,
        &format!(
            "(SELECT * FROM {} WHERE day >= '{from}' AND day <= '{to}')",
            table.stored
        ),
        table.keys,
        table.values,
    )
}

/// The members that differ, one row per member as [`full_join_differences`] gives them for
/// `usage_day_member`, of the user-day-dimensions in `differences` (packed rows that differ):
/// the computed members against the stored ones unpacked.
fn member_differences_sql(differences: &str) -> String {
    let keys = PACKED_KEYS.join(", ");
    full_join_differences(
        &format!("(SELECT m.* FROM ledger_day_member m JOIN {differences} d USING ({keys}))"),
        &format!(
            "({})",
            unpacked_sql(&format!(
                "usage_day_members p JOIN {differences} d USING ({keys})"
            ))
        ),
        &MEMBER_KEYS,
        &VALUE_COLUMNS,
    )
}

/// A table's columns: its keys, then its values.
fn columns_of(table: &DayTable) -> Vec<&'static str> {
    table.keys.iter().chain(table.values).copied().collect()
}

/// The statements that make the stored rows of `table` what the ledger says, from the
/// differences found in `differences`: a delete of every stored row that differs, then a plain
/// insert of the ledger's rows in key order (an upsert, `ON CONFLICT … DO UPDATE`, costs a
/// speculative insertion a row, about a third more than a plain insert).
fn write_sql(table: &DayTable, differences: &str) -> [String; 2] {
    let ledger_values: Vec<String> = table.values.iter().map(|v| format!("ledger_{v}")).collect();
    let keys = table.keys.join(", ");
    [
        format!(
            "DELETE FROM {} s USING {differences} d \
             WHERE {} AND d.stored_messages IS NOT NULL",
            table.stored,
            keys_match(table.keys, "d")
        ),
        format!(
            "INSERT INTO {} ({}) SELECT {keys}, {} FROM {differences} \
             WHERE ledger_messages IS NOT NULL ORDER BY {keys}",
            table.stored,
            columns_of(table).join(", "),
            ledger_values.join(", "),
        ),
    ]
}

/// Whether `table` has no rows in the day range.
async fn nothing_stored(
    conn: &mut AnyConnection,
    table: &DayTable,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT 1 FROM {} \
         WHERE day >= $1 AND day <= $2 LIMIT 1) r",
        table.stored
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>("n")? == 0)
}

/// `INSERT INTO table … SELECT … FROM ledger ORDER BY keys`: every computed row, in key order
/// (the packed members were computed in it, so that sort finds them sorted).
fn insert_all_sql(table: &DayTable) -> String {
    let columns = columns_of(table).join(", ");
    format!(
        "INSERT INTO {} ({columns}) SELECT {columns} FROM {} ORDER BY {}",
        table.stored,
        table.ledger,
        table.keys.join(", ")
    )
}

/// Fills the temporary table `name` with `query`'s rows, replacing it; answers how many.
async fn fill_temporary(
    conn: &mut AnyConnection,
    name: &str,
    query: &str,
) -> Result<u64, sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS pg_temp.{name}"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query(AssertSqlSafe(format!(
        "CREATE TEMPORARY TABLE {name} AS {query}"
    )))
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// What a comparison of the computed days with the stored ones found, as differences: rows of
/// [`full_join_differences`] for `usage_day` or `usage_day_member`.
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

/// The temporary table the differing rows of a table are kept in.
fn differences_table(table: &DayTable) -> String {
    format!("{}_differences", table.ledger)
}

/// The temporary table the differing members of the differing packed rows are kept in.
const MEMBER_DIFFERENCES: &str = "ledger_day_member_differences";

/// Finds how the stored rows of the day range differ from the computed ones, into temporary
/// tables: the differing days, the differing packed rows and their differing members. Answers
/// the rows that differ (days and members), each one row to write or delete.
async fn find_differences(
    conn: &mut AnyConnection,
    range: (NaiveDate, NaiveDate),
) -> Result<u64, sqlx::Error> {
    let (days, packed) = (differences_table(&DAYS), differences_table(&PACKED_MEMBERS));
    let differing_days = fill_temporary(conn, &days, &differences_sql(&DAYS, range)).await?;
    let differing_packed = differences_sql(&PACKED_MEMBERS, range);
    fill_temporary(conn, &packed, &differing_packed).await?;
    // A differing packed row counts as its differing members.
    let members = member_differences_sql(&packed);
    Ok(differing_days + fill_temporary(conn, MEMBER_DIFFERENCES, &members).await?)
}

/// The differences [`find_differences`] found, listed in `found`.
async fn list_differences(
    conn: &mut AnyConnection,
    found: &mut Verification,
) -> Result<(), sqlx::Error> {
    for (table, rows) in [
        ("usage_day", differences_table(&DAYS)),
        ("usage_day_member", MEMBER_DIFFERENCES.to_owned()),
    ] {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT * FROM {rows}")))
            .fetch_all(&mut *conn)
            .await?;
        verification_from(&rows, table, found)?;
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
    find_differences(conn, range).await?;
    list_differences(conn, &mut found).await?;
    Ok(found)
}

/// Makes the stored days of `range` the computed ones, in the caller's transaction on `conn`:
/// finds the differing rows with one join per table (into temporary tables) and writes only
/// those, so a range that is already right costs the joins. When nothing is stored in the range
/// (and the differences are not asked for: a first build differs everywhere) every computed
/// row is inserted at once. Answers the comparison (its differences listed only with `list`)
/// and the rows written or deleted, counting each member as a row (as SQLite stores them).
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
    let first_build = !list
        && nothing_stored(conn, &DAYS, range).await?
        && nothing_stored(conn, &PACKED_MEMBERS, range).await?;
    if first_build {
        for table in [&DAYS, &PACKED_MEMBERS] {
            sqlx::query(AssertSqlSafe(insert_all_sql(table)))
                .execute(&mut *conn)
                .await?;
        }
        // Every computed day and member is a row written.
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM ledger_day) + (SELECT COUNT(*) FROM ledger_day_member) \
             AS n",
        )
        .fetch_one(&mut *conn)
        .await?;
        return Ok((found, row.try_get::<i64, _>("n")?.max(0) as u64));
    }
    let changed = find_differences(conn, range).await?;
    if list {
        list_differences(conn, &mut found).await?;
    }
    for table in [&DAYS, &PACKED_MEMBERS] {
        for sql in write_sql(table, &differences_table(table)) {
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
