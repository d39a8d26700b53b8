//! Usage rollups and statistics on SQLite and a real Postgres: the stored days, made into every
//! period's rollups by the statistics, equal the reference sums over the ledger for random
//! event streams (retries, restarts, any batching),
//! the nightly check finds and repairs differences and catches up missed days, a backfill run
//! twice equals once, and the stats API and CSV export answer what the reference says, to whom
//! they may.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use app::service::Services;
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use domain::api::CreateApiKeyBody;
use domain::rollup::{EventFacts, Period, Rollup, RollupKey, rollups_of};
use domain::stats::{GroupBy, StatsParams, StatsQuery, StatsScope, StatsSortKey, stats_of_events};
use domain::{
    IdempotencyKey, ModelName, RecordUsage, SortDirection, UsageContext, UsageSource, UserId,
};
use proptest::prelude::*;
use reqwest::Client;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use tokenmeter_server::store::{Db, SqlLedger, WriterConfig};

/// One event as a test sends it; `facts` is what the rollups must see of it.
#[derive(Debug, Clone)]
struct Spec {
    user: String,
    at: DateTime<Utc>,
    tokens: u64,
    input: Option<u64>,
    output: Option<u64>,
    model: Option<String>,
    conversation: Option<String>,
    agent: Option<String>,
    prompt: Option<String>,
    key: String,
}

impl Spec {
    fn usage(&self) -> RecordUsage {
        let mut usage = RecordUsage::new(
            UserId::parse(&self.user).unwrap(),
            self.tokens as i64,
            self.input.map(|v| v as i64),
            self.output.map(|v| v as i64),
            self.model.as_deref().map(|m| ModelName::parse(m).unwrap()),
            UsageSource::Api,
            IdempotencyKey::parse(&self.key).unwrap(),
        )
        .unwrap()
        .with_context(
            UsageContext::parse(
                self.conversation.as_deref(),
                self.agent.as_deref(),
                self.prompt.as_deref(),
            )
            .unwrap(),
        );
        usage.cost_picos = self.tokens * 1_250;
        usage
    }

    fn facts(&self) -> EventFacts {
        let (input_tokens, output_tokens) = EventFacts::split(self.tokens, self.input, self.output);
        EventFacts {
            user_id: self.user.clone(),
            at: self.at,
            input_tokens,
            output_tokens,
            total_tokens: self.tokens,
            cost_picos: self.tokens * 1_250,
            model: self.model.clone(),
            conversation: self.conversation.clone(),
            agent: self.agent.clone(),
            prompt: self.prompt.clone(),
        }
    }
}

/// Moments that straddle day, ISO-week, month and year boundaries (to the microsecond).
fn moment() -> impl Strategy<Value = DateTime<Utc>> {
    let edges = [
        Utc.with_ymd_and_hms(2025, 12, 29, 0, 0, 0).unwrap(), // a Monday, week 1 of 2026
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 2, 28, 23, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(), // a Sunday
        Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap(),
    ];
    (0..edges.len(), -90_000_000_000i64..90_000_000_000)
        .prop_map(move |(edge, offset_us)| edges[edge] + chrono::Duration::microseconds(offset_us))
}

fn spec(n: usize) -> impl Strategy<Value = Spec> {
    (
        0u8..3,
        moment(),
        1u64..5_000,
        0u8..4,
        0u64..5_000,
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..4),
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
    )
        .prop_map(
            move |(user, at, tokens, split, part, model, conv, agent, prompt)| {
                let part = part.min(tokens);
                let (input, output) = match split {
                    0 => (None, None),
                    1 => (Some(part), None),
                    2 => (None, Some(part)),
                    _ => (Some(part), Some(tokens - part)),
                };
                Spec {
                    user: format!("u{user}"),
                    at,
                    tokens,
                    input,
                    output,
                    model: model.map(|m| format!("model-{m}")),
                    conversation: conv.map(|c| format!("conv {c}")),
                    agent: agent.map(|a| format!("agent-{a}")),
                    prompt: prompt.map(|p| format!("prompt-{p}")),
                    key: format!("k{n}"),
                }
            },
        )
}

/// Specs with unique keys, and the order they are sent in: some sent again (retries).
fn stream() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>, Vec<usize>, Vec<i64>)> {
    (1usize..40)
        .prop_flat_map(|n| {
            (
                (0..n).map(spec).collect::<Vec<_>>(),
                proptest::collection::vec(0..n, 0..10),
                proptest::collection::vec(1usize..12, 1..8),
                proptest::collection::vec(1i64..30, 1..6),
            )
        })
        .prop_map(|(specs, retries, chunks, limits)| {
            let mut order: Vec<usize> = (0..specs.len()).collect();
            for (i, r) in retries.into_iter().enumerate() {
                order.insert((i * 7) % (order.len() + 1), r);
            }
            (specs, order, chunks, limits)
        })
}

/// The table the day members are stored in: one row per member on SQLite, packed per user,
/// day and dimension on Postgres (where `usage_day_member` is a view that unpacks them). Both
/// have `account_id`, `day` and `dimension` columns.
fn member_table(ledger: &SqlLedger) -> &'static str {
    match ledger.db().dialect {
        tokenmeter_server::store::Dialect::Postgres => "usage_day_members",
        tokenmeter_server::store::Dialect::Sqlite => "usage_day_member",
    }
}

/// Every user's rollups of every period, as the statistics make them from the stored days
/// (a week's and a month's from their days).
async fn stored_rollups(ledger: &SqlLedger) -> BTreeMap<RollupKey, Rollup> {
    let users: Vec<String> = sqlx::query_scalar("SELECT DISTINCT account_id FROM usage_day")
        .fetch_all(&ledger.db().pool)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for user in users {
        for period in Period::ALL {
            let query = StatsQuery {
                scope: None,
                from: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap(),
                to: NaiveDate::from_ymd_opt(2027, 6, 30).unwrap(),
                period,
                model: None,
                group_by: GroupBy::of_period(period),
                sort: StatsSortKey::Key,
                direction: SortDirection::Asc,
                page: 1,
                page_size: u32::MAX,
            };
            let scope = StatsScope::User(UserId::parse(&user).unwrap());
            let answer = app::ports::Ledger::usage_stats(ledger, &query, &scope)
                .await
                .unwrap();
            for row in answer.rows {
                let bucket =
                    NaiveDate::parse_from_str(row.key.as_deref().unwrap(), "%Y-%m-%d").unwrap();
                let rollup = Rollup {
                    input_tokens: row.input_tokens,
                    output_tokens: row.output_tokens,
                    total_tokens: row.total_tokens,
                    cost_picos: row.cost_picos,
                    messages: row.messages,
                    conversations: row.conversations.unwrap(),
                    agents: row.agents.unwrap(),
                    models: row.models.unwrap(),
                    last_activity: row.last_activity_at,
                };
                out.insert((user.clone(), period, bucket), rollup);
            }
        }
    }
    out
}

async fn open(url: &str) -> Arc<SqlLedger> {
    let db = Db::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    SqlLedger::start(db, WriterConfig::default())
}

async fn make_users(ledger: &SqlLedger, ids: &[&str]) {
    for id in ids {
        let user = domain::NewUser::new(
            UserId::parse(id).unwrap(),
            None,
            domain::TokenLimit::new(1_000_000_000_000).unwrap(),
        );
        app::ports::Ledger::create_user(ledger, user, Utc::now())
            .await
            .unwrap();
    }
}

/// Records the specs in `order`, `chunks` at a time, running aggregator steps of the given
/// sizes in between and restarting the ledger (a new process on the same database) once.
async fn record_stream(
    url: &str,
    specs: &[Spec],
    order: &[usize],
    chunks: &[usize],
    limits: &[i64],
) -> Arc<SqlLedger> {
    let mut ledger = open(url).await;
    make_users(&ledger, &["u0", "u1", "u2"]).await;
    let mut sent = 0;
    let mut round = 0;
    while sent < order.len() {
        let size = chunks[round % chunks.len()].min(order.len() - sent);
        let batch: Vec<&Spec> = order[sent..sent + size]
            .iter()
            .map(|&i| &specs[i])
            .collect();
        let usages: Vec<RecordUsage> = batch.iter().map(|s| s.usage()).collect();
        let at: Vec<DateTime<Utc>> = batch.iter().map(|s| s.at).collect();
        for outcome in ledger.record_at(&usages, &at).await {
            outcome.unwrap();
        }
        sent += size;
        ledger
            .aggregate_once(limits[round % limits.len()])
            .await
            .unwrap();
        if round == 1 {
            // A restart mid-way: the cursor is in the database, nothing is counted twice.
            ledger = open(url).await;
        }
        round += 1;
    }
    ledger.catch_up_fully().await.unwrap();
    ledger
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn check_random_stream(
    db: common::TestDb,
    specs: Vec<Spec>,
    order: Vec<usize>,
    chunks: Vec<usize>,
    limits: Vec<i64>,
) -> Result<(), TestCaseError> {
    runtime().block_on(async move {
        let ledger = record_stream(&db.url, &specs, &order, &chunks, &limits).await;
        let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
        let stored = stored_rollups(&ledger).await;
        prop_assert_eq!(&stored, &expected);
        // A rebuild from the ledger alone (on Postgres summed in SQL, not folded here) makes
        // the same days, and finds nothing to change once they are right.
        let days = specs.iter().map(|s| s.at.date_naive());
        let (from, to) = (days.clone().min().unwrap(), days.max().unwrap());
        for table in ["usage_day", member_table(&ledger)] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&ledger.db().pool)
                .await
                .unwrap();
        }
        let rebuilt = ledger.rebuild_rollups(from, to).await.unwrap();
        prop_assert_eq!(rebuilt.events, specs.len() as u64);
        prop_assert_eq!(stored_rollups(&ledger).await, expected);
        prop_assert_eq!(
            ledger.rebuild_rollups(from, to).await.unwrap().rows_changed,
            0
        );
        let check = ledger.verify_rollups(from, to, false).await.unwrap();
        prop_assert!(check.matches(), "{:?}", check);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_roll_up_exactly_sqlite((specs, order, chunks, limits) in stream()) {
        check_random_stream(common::sqlite(), specs, order, chunks, limits)?;
    }

    #[test]
    fn random_streams_roll_up_exactly_postgres((specs, order, chunks, limits) in stream()) {
        let db = runtime().block_on(common::postgres());
        check_random_stream(db, specs, order, chunks, limits)?;
    }
}

// ---- the nightly check, missed days and backfills ----

/// Ten days of events for two users, ending yesterday; returns the ledger and the specs.
async fn ten_days(url: &str) -> (Arc<SqlLedger>, Vec<Spec>, NaiveDate) {
    let (ledger, specs, yesterday) = ten_days_not_aggregated(url).await;
    ledger.catch_up_fully().await.unwrap();
    (ledger, specs, yesterday)
}

/// Ten days of events in the ledger that the aggregator has not read yet.
async fn ten_days_not_aggregated(url: &str) -> (Arc<SqlLedger>, Vec<Spec>, NaiveDate) {
    let yesterday = Utc::now().date_naive().pred_opt().unwrap();
    let mut specs = Vec::new();
    for d in 0..10u64 {
        let date = yesterday - Days::new(d);
        for n in 0..6u64 {
            specs.push(Spec {
                user: format!("u{}", n % 2),
                at: date.and_hms_opt(1 + n as u32 * 3, 7, 0).unwrap().and_utc(),
                tokens: 100 + d * 10 + n,
                input: Some(60),
                output: None,
                model: Some(format!("model-{}", n % 3)),
                conversation: Some(format!("c{}", n / 2)),
                agent: None,
                prompt: None,
                key: format!("day{d}-{n}"),
            });
        }
    }
    let ledger = open(url).await;
    make_users(&ledger, &["u0", "u1"]).await;
    let usages: Vec<_> = specs.iter().map(Spec::usage).collect();
    let at: Vec<_> = specs.iter().map(|s| s.at).collect();
    for outcome in ledger.record_at(&usages, &at).await {
        outcome.unwrap();
    }
    (ledger, specs, yesterday)
}

/// Records a copy of an event under another idempotency key (and, if given, at another time).
async fn record_copy(
    ledger: &SqlLedger,
    spec: &Spec,
    key: &str,
    at: Option<DateTime<Utc>>,
) -> Spec {
    let mut copy = spec.clone();
    copy.key = key.into();
    copy.at = at.unwrap_or(spec.at);
    ledger
        .record_at(&[copy.usage()], &[copy.at])
        .await
        .pop()
        .unwrap()
        .unwrap();
    copy
}

/// Whether every rollup of the day range matches the ledger (checked, not repaired).
async fn matches_ledger(ledger: &SqlLedger, from: NaiveDate, to: NaiveDate) -> bool {
    ledger
        .verify_rollups(from, to, false)
        .await
        .unwrap()
        .matches()
}

async fn verified_through(ledger: &SqlLedger) -> Option<String> {
    sqlx::query_scalar("SELECT verified_through FROM rollup_cursor")
        .fetch_one(&ledger.db().pool)
        .await
        .unwrap()
}

/// Waits until every recorded event is readable by the aggregator. On Postgres it reads only
/// events of transactions older than every one still running, in the whole cluster: another
/// test's open transaction (each test has its own database, not its own cluster) holds them
/// back for a moment.
async fn until_readable(ledger: &SqlLedger) {
    if ledger.db().dialect != tokenmeter_server::store::Dialect::Postgres {
        return;
    }
    for _ in 0..200 {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM usage_event WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())",
        )
        .fetch_one(&ledger.db().pool)
        .await
        .unwrap();
        if held == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("events stayed behind a running transaction for 10 s");
}

/// A backfill over a backlog the aggregator has not read: the range's pending events are left
/// to the rebuild, others are folded; a backfill cut short is finished by the nightly check.
async fn backfill_takes_over_a_backlog(db: common::TestDb) {
    let (ledger, mut specs, yesterday) = ten_days_not_aggregated(&db.url).await;
    let from = yesterday - Days::new(9);
    // One event of today (stored to the microsecond), outside the range.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let today = record_copy(&ledger, &specs[0], "today", Some(now)).await;
    specs.push(today);
    sqlx::query("UPDATE rollup_cursor SET verified_through = $1")
        .bind(yesterday.to_string())
        .execute(&ledger.db().pool)
        .await
        .unwrap();

    until_readable(&ledger).await;
    let taken = ledger.take_over_pending(from, yesterday).await.unwrap();
    assert_eq!((taken.taken, taken.folded), (60, 1), "{taken:?}");
    let status = app::ports::Ledger::aggregator_status(ledger.as_ref(), Utc::now())
        .await
        .unwrap();
    assert_eq!(status.pending_events, 0, "{status:?}");
    // Until the range is rebuilt, the nightly check starts again at the range.
    assert_eq!(
        verified_through(&ledger).await,
        from.pred_opt().map(|d| d.to_string())
    );
    // Cut short after half the range: the nightly check repairs the rest.
    ledger
        .rebuild_rollups(from, from + Days::new(4))
        .await
        .unwrap();
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    assert_ne!(stored_rollups(&ledger).await, expected);
    let (checked_from, check) = ledger.nightly_check(yesterday).await.unwrap().unwrap();
    assert_eq!(checked_from, from);
    assert!(check.repaired && !check.matches(), "{check:?}");
    assert_eq!(stored_rollups(&ledger).await, expected);
    assert!(matches_ledger(&ledger, from, yesterday).await);

    // Nothing pending: nothing to take over.
    let nothing = ledger.take_over_pending(from, yesterday).await.unwrap();
    assert_eq!(nothing, Default::default());
    // A whole backfill: a late event of the range, taken over, rebuilt, and the mark restored.
    let late = record_copy(&ledger, &specs[3], "late", None).await;
    specs.push(late);
    until_readable(&ledger).await;
    let taken = ledger.take_over_pending(from, yesterday).await.unwrap();
    assert_eq!((taken.taken, taken.folded), (1, 0), "{taken:?}");
    let rebuilt = ledger.rebuild_rollups(from, yesterday).await.unwrap();
    assert!(rebuilt.rows_changed > 0, "{rebuilt:?}");
    ledger.finish_take_over(from, &taken).await.unwrap();
    assert_eq!(verified_through(&ledger).await, Some(yesterday.to_string()));
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    assert_eq!(stored_rollups(&ledger).await, expected);
    assert!(matches_ledger(&ledger, from, yesterday).await);
}

async fn nightly_check_repairs_and_catches_up_missed_days(db: common::TestDb) {
    let (ledger, specs, yesterday) = ten_days(&db.url).await;
    let pool = &ledger.db().pool;
    // The last check ran six days ago; since then a day's rollup went wrong and a member
    // vanished (as a bug or a hand edit would leave them).
    let six_days_ago = yesterday - Days::new(5);
    sqlx::query("UPDATE rollup_cursor SET verified_through = $1")
        .bind(six_days_ago.to_string())
        .execute(pool)
        .await
        .unwrap();
    let broken = yesterday - Days::new(2);
    sqlx::query(
        "UPDATE usage_day SET total_tokens = total_tokens + 5 WHERE day = $1 AND account_id = 'u0'",
    )
    .bind(broken.to_string())
    .execute(pool)
    .await
    .unwrap();
    // u1's conversations of that day, as if never seen: the week's and the month's distinct
    // conversations are counted from these rows.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE day = $1 AND account_id = 'u1' AND dimension = 'c'",
        member_table(&ledger)
    )))
    .bind(broken.to_string())
    .execute(pool)
    .await
    .unwrap();
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    assert_ne!(stored_rollups(&ledger).await, expected);
    // A check of the day before the broken one alone finds nothing.
    let clean = ledger
        .verify_rollups(broken - Days::new(1), broken - Days::new(1), false)
        .await
        .unwrap();
    assert!(clean.matches(), "{clean:?}");

    let (from, found) = ledger
        .nightly_check(yesterday)
        .await
        .unwrap()
        .expect("days to check");
    assert_eq!(
        from,
        six_days_ago + Days::new(1),
        "the missed days are checked"
    );
    assert!(found.repaired);
    assert_eq!(found.day_differences.len(), 1, "{found:?}");
    let wrong = &found.day_differences[0];
    assert_eq!((wrong.user_id.as_str(), wrong.day), ("u0", broken));
    assert_eq!(
        wrong.stored.unwrap().total_tokens,
        wrong.expected.unwrap().total_tokens + 5
    );
    // u1's lost conversation members (all of that day's) are found too: groupings by
    // conversation and distinct counts read members.
    let lost_conversations = specs
        .iter()
        .filter(|s| s.user == "u1" && s.at.date_naive() == broken)
        .filter_map(|s| s.conversation.clone())
        .collect::<std::collections::BTreeSet<_>>();
    assert!(!lost_conversations.is_empty());
    assert_eq!(
        found.member_differences.len(),
        lost_conversations.len(),
        "{found:?}"
    );
    for lost in &found.member_differences {
        assert_eq!(
            (lost.user_id.as_str(), lost.day, lost.dimension),
            ("u1", broken, domain::rollup::Dimension::Conversation)
        );
        assert!(lost.stored.is_none() && lost.expected.is_some(), "{lost:?}");
    }
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    assert_eq!(stored_rollups(&ledger).await, expected);
    assert!(matches_ledger(&ledger, yesterday - Days::new(9), yesterday).await);
    // Done for today: the next run has nothing to check.
    assert!(ledger.nightly_check(yesterday).await.unwrap().is_none());
}

async fn backfill_twice_equals_once(db: common::TestDb) {
    let (ledger, specs, yesterday) = ten_days(&db.url).await;
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    // Start from nothing, as on a database that predates rollups.
    for table in ["usage_day", member_table(&ledger)] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&ledger.db().pool)
            .await
            .unwrap();
    }
    let from = yesterday - Days::new(9);
    let first = ledger.rebuild_rollups(from, yesterday).await.unwrap();
    assert_eq!(first.events as usize, specs.len());
    let once = stored_rollups(&ledger).await;
    assert_eq!(once, expected);
    let days = expected
        .keys()
        .filter(|(_, p, _)| *p == Period::Day)
        .count() as u64;
    assert_eq!(first.days, days, "{first:?}");
    // Each day, and its conversations, models, "no agent" and "no prompt".
    assert!(first.rows_changed >= days * 5, "{first:?}");
    // The second time everything is already right: nothing is written.
    let second = ledger.rebuild_rollups(from, yesterday).await.unwrap();
    assert_eq!(second.rows_changed, 0, "{second:?}");
    assert_eq!(stored_rollups(&ledger).await, once);
    // Rebuilding part of the range changes nothing either.
    let part = ledger
        .rebuild_rollups(yesterday - Days::new(3), yesterday - Days::new(2))
        .await
        .unwrap();
    assert_eq!(part.rows_changed, 0, "{part:?}");
    assert_eq!(stored_rollups(&ledger).await, once);
    // Rows the ledger does not back (a member, and a day of a user without events that day)
    // are deleted, nothing else.
    let user = specs[0].user.as_str();
    let day = specs[0].at.date_naive().to_string();
    let ghost = match ledger.db().dialect {
        tokenmeter_server::store::Dialect::Sqlite => {
            "INSERT INTO usage_day_member (account_id, day, dimension, value, input_tokens, \
             output_tokens, total_tokens, cost_picos, messages, last_activity_at) \
             VALUES ($1, $2, 'm', 'ghost-model', 1, 1, 2, 0, 1, NULL)"
        }
        tokenmeter_server::store::Dialect::Postgres => {
            "UPDATE usage_day_members SET value = value || 'ghost-model'::text, \
             input_tokens = input_tokens || 1::bigint, output_tokens = output_tokens || 1::bigint, \
             total_tokens = total_tokens || 2::bigint, cost_picos = cost_picos || 0::bigint, \
             messages = messages || 1::bigint, last_activity_at = last_activity_at || NULL::bigint \
             WHERE account_id = $1 AND day = $2 AND dimension = 'm'"
        }
    };
    let added = sqlx::query(ghost)
        .bind(user)
        .bind(&day)
        .execute(&ledger.db().pool)
        .await
        .unwrap();
    assert_eq!(added.rows_affected(), 1);
    make_users(&ledger, &["idle"]).await;
    sqlx::query(
        "INSERT INTO usage_day (account_id, day, input_tokens, output_tokens, total_tokens, \
         cost_picos, messages, last_activity_at) VALUES ('idle', $1, 5, 0, 5, 0, 1, NULL)",
    )
    .bind(&day)
    .execute(&ledger.db().pool)
    .await
    .unwrap();
    assert_ne!(stored_rollups(&ledger).await, once);
    let cleaned = ledger.rebuild_rollups(from, yesterday).await.unwrap();
    assert_eq!(cleaned.rows_changed, 2, "{cleaned:?}");
    assert!(matches_ledger(&ledger, from, yesterday).await);
    assert_eq!(stored_rollups(&ledger).await, once);
    // Rows with wrong sums (a day, and one of its members) are replaced: one row changed each.
    let one_more = |c: &str| match ledger.db().dialect {
        tokenmeter_server::store::Dialect::Sqlite => format!("{c} = {c} + 1"),
        // Each member's, in the packed arrays.
        tokenmeter_server::store::Dialect::Postgres => format!(
            "{c} = ARRAY(SELECT n + 1 FROM unnest({c}) WITH ORDINALITY AS u(n, i) ORDER BY i)"
        ),
    };
    for (table, set) in [
        (
            "usage_day",
            "total_tokens = total_tokens + 1, messages = messages + 1".to_owned(),
        ),
        (
            member_table(&ledger),
            format!("{}, {}", one_more("total_tokens"), one_more("messages")),
        ),
    ] {
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {set} WHERE account_id = $1 AND day = $2{}",
            match table {
                "usage_day" => "",
                _ => " AND dimension = 'm'",
            }
        )))
        .bind(user)
        .bind(&day)
        .execute(&ledger.db().pool)
        .await
        .unwrap();
        assert!(changed.rows_affected() >= 1);
    }
    let wrong_members = sqlx::query(
        "SELECT COUNT(*) AS n FROM usage_day_member WHERE account_id = $1 AND day = $2 \
         AND dimension = 'm'",
    )
    .bind(user)
    .bind(&day)
    .fetch_one(&ledger.db().pool)
    .await
    .unwrap()
    .get::<i64, _>("n") as u64;
    assert_ne!(stored_rollups(&ledger).await, once);
    let repaired = ledger.rebuild_rollups(from, yesterday).await.unwrap();
    assert_eq!(repaired.rows_changed, 1 + wrong_members, "{repaired:?}");
    assert!(matches_ledger(&ledger, from, yesterday).await);
    assert_eq!(stored_rollups(&ledger).await, once);
    // New events after a rebuild are still added exactly once by the aggregator.
    let late = record_copy(&ledger, &specs[0], "late", None).await;
    // Until the aggregator runs, the late event is pending, as old as it is.
    let now = Utc::now();
    let waiting = app::ports::Ledger::aggregator_status(ledger.as_ref(), now)
        .await
        .unwrap();
    assert_eq!(waiting.pending_events, 1, "{waiting:?}");
    assert_eq!(waiting.oldest_pending_at, Some(late.at));
    assert_eq!(waiting.lag_ms, (now - late.at).num_milliseconds() as u64);
    ledger.catch_up_fully().await.unwrap();
    let done = app::ports::Ledger::aggregator_status(ledger.as_ref(), now)
        .await
        .unwrap();
    assert_eq!((done.pending_events, done.lag_ms), (0, 0), "{done:?}");
    let mut all: Vec<_> = specs.iter().map(Spec::facts).collect();
    all.push(late.facts());
    assert_eq!(stored_rollups(&ledger).await, rollups_of(&all));
}

/// A backfill reads a batch's events before it takes the write lock, and checks the written
/// days after: if the aggregator adds events in between, both read the ledger again rather than
/// write or report what they read before.
async fn a_rebuild_read_before_the_aggregator_moved_reads_again(db: common::TestDb) {
    let (ledger, mut specs, yesterday) = ten_days(&db.url).await;
    let from = yesterday - Days::new(9);
    let read_before = ledger.read_ledger_days(from, yesterday).await.unwrap();
    assert_eq!(read_before.events(), specs.len() as u64);
    // A late event of the range, folded in by the aggregator (the cursor moves).
    specs.push(record_copy(&ledger, &specs[2], "late-1", None).await);
    ledger.catch_up_fully().await.unwrap();
    let (rebuilt, written) = ledger.store_ledger_days(read_before).await.unwrap();
    assert_eq!(rebuilt.events, specs.len() as u64, "{rebuilt:?}");
    assert_eq!(
        rebuilt.rows_changed, 0,
        "the stored days were right: {rebuilt:?}"
    );
    let expected = rollups_of(&specs.iter().map(Spec::facts).collect::<Vec<_>>());
    assert_eq!(stored_rollups(&ledger).await, expected);
    // Another one before the check: the check reads the ledger again too.
    specs.push(record_copy(&ledger, &specs[4], "late-2", None).await);
    ledger.catch_up_fully().await.unwrap();
    let check = ledger.verify_stored(written).await.unwrap();
    assert!(check.matches(), "{check:?}");
    assert_eq!(check.events, specs.len() as u64);
    // What the check compares is real: a broken day is found.
    sqlx::query(
        "UPDATE usage_day SET messages = messages + 1 WHERE day = $1 AND account_id = 'u1'",
    )
    .bind(yesterday.to_string())
    .execute(&ledger.db().pool)
    .await
    .unwrap();
    let written = ledger.read_ledger_days(from, yesterday).await.unwrap();
    let check = ledger.verify_stored(written).await.unwrap();
    assert_eq!(check.day_differences.len(), 1, "{check:?}");
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::postgres().await).await;
                }
            )*
        }
    };
}

on_both_databases!(
    nightly_check_repairs_and_catches_up_missed_days,
    a_rebuild_read_before_the_aggregator_moved_reads_again,
    backfill_twice_equals_once,
    backfill_takes_over_a_backlog,
    stats_answer_what_the_reference_says,
    stats_are_only_for_those_allowed,
    csv_export_reads_back_as_the_rows,
);

/// The CLI: backfill with a progress bar and a verification report, twice.
#[test]
fn backfill_command_rebuilds_and_verifies() {
    let db = common::sqlite();
    let yesterday = runtime().block_on(async {
        let (ledger, _, yesterday) = ten_days(&db.url).await;
        drop(ledger);
        yesterday
    });
    let from = (yesterday - Days::new(40)).to_string();
    let to = yesterday.to_string();
    let args = [
        "backfill",
        "--from",
        &from,
        "--to",
        &to,
        "--batch-days",
        "7",
    ];
    let first = common::cli(&db.url, &args);
    assert!(
        first.contains("rebuilt 20 user-days from 60 events"),
        "{first}"
    );
    assert!(first.contains("verified: every user's day"), "{first}");
    let second = common::cli(&db.url, &args);
    assert!(second.contains("(0 rows written or deleted)"), "{second}");
    assert!(second.contains("verified: every user's day"), "{second}");
    let verify = common::cli(&db.url, &["verify-rollups", "--from", &from, "--to", &to]);
    assert!(verify.contains("the rollups match the ledger"), "{verify}");
}

// ---- the stats API and the CSV export ----

struct Api {
    base: String,
    admin: String,
    services: Services,
}

impl Api {
    async fn start(ledger: Arc<SqlLedger>) -> Self {
        let services = common::services(ledger);
        let admin = common::admin_key(&services, "admin").await;
        let base =
            common::serve_services(services.clone(), Vec::new(), 1 << 20, Default::default()).await;
        Self {
            base,
            admin,
            services,
        }
    }

    async fn key_for(&self, id: &str) -> String {
        self.services
            .bootstrap_api_key(
                &UserId::parse(id).unwrap(),
                &CreateApiKeyBody {
                    name: "t".into(),
                    scopes: vec![],
                },
            )
            .await
            .unwrap()
            .key
    }

    async fn get(&self, key: &str, path: &str) -> (u16, String) {
        let res = Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn stats(&self, key: &str, query: &str) -> Value {
        let (status, body) = self.get(key, &format!("/api/usage/stats?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The reference view of a query, as JSON.
fn reference(specs: &[Spec], query: &str, user: Option<&str>) -> Value {
    let pairs: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.replace("%20", " "))
        })
        .collect();
    let params: StatsParams = serde_json::from_value(json!(pairs)).unwrap();
    let q = params.validate(Utc::now().date_naive()).unwrap();
    let facts: Vec<EventFacts> = specs
        .iter()
        .filter(|s| user.is_none_or(|u| s.user == u))
        .map(Spec::facts)
        .collect();
    serde_json::to_value(stats_of_events(&facts, &q).into_view(&q, user.map(str::to_owned)))
        .unwrap()
}

async fn stats_answer_what_the_reference_says(db: common::TestDb) {
    let (ledger, mut specs, yesterday) = ten_days(&db.url).await;
    // Events recorded just now are in the very next answer (the read catches the rollups up).
    let mut fresh = specs[3].clone();
    fresh.key = "fresh".into();
    // The ledger keeps microseconds.
    fresh.at = Utc.timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    fresh.agent = Some("agent, \"quoted\"".into());
    ledger
        .record_at(&[fresh.usage()], &[fresh.at])
        .await
        .pop()
        .unwrap()
        .unwrap();
    specs.push(fresh);
    let api = Api::start(ledger).await;
    let from = (yesterday - Days::new(12)).to_string();
    let to = (yesterday + Days::new(1)).to_string();
    let range = format!("from={from}&to={to}");
    let queries = [
        format!("userId=u0&{range}"),
        format!("userId=u1&{range}&period=week"),
        format!("userId=u0&{range}&groupBy=month"),
        format!("userId=u0&{range}&groupBy=model"),
        format!("userId=u1&{range}&groupBy=agent"),
        format!("userId=u1&{range}&groupBy=prompt"),
        format!("{range}&groupBy=user"),
        format!("{range}&groupBy=day&sort=total&direction=desc&page=2&pageSize=3"),
        format!("userId=*&{range}&groupBy=week"),
        format!("userId=u0&{range}&model=model-1"),
        format!("{range}&model=model-2&groupBy=user"),
        format!("userId=u0&{range}&pageSize=4&page=99"),
        format!("userId=u0&from={to}&to={to}&groupBy=model"),
    ];
    for query in &queries {
        let user = if query.starts_with("userId=u0") {
            Some("u0")
        } else if query.starts_with("userId=u1") {
            Some("u1")
        } else {
            None
        };
        let answer = api.stats(&api.admin, query).await;
        assert_eq!(answer, reference(&specs, query, user), "{query}");
    }
    // Without a user id an administrator sees everyone.
    let everyone = api.stats(&api.admin, &range).await;
    assert_eq!(everyone["userId"], Value::Null);
    assert_eq!(everyone["summary"]["messages"], json!(specs.len()));
    let _ = yesterday;
}

async fn stats_are_only_for_those_allowed(db: common::TestDb) {
    let (ledger, specs, _) = ten_days(&db.url).await;
    let api = Api::start(ledger).await;
    let u0 = api.key_for("u0").await;
    // A user sees their own usage, by default and by name.
    let own = api.stats(&u0, "").await;
    assert_eq!(own["userId"], "u0");
    assert_eq!(api.stats(&u0, "userId=u0").await, own);
    let own_messages = specs.iter().filter(|s| s.user == "u0").count();
    assert_eq!(own["summary"]["messages"], json!(own_messages));
    // Not someone else's, nor everyone's: 403, in the usual error shape.
    for path in [
        "/api/usage/stats?userId=u1",
        "/api/usage/stats?userId=*",
        "/api/usage/export.csv?userId=u1",
        "/api/usage/aggregator",
    ] {
        let (status, body) = api.get(&u0, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("forbidden" | "admin_only")
            ),
            "{body}"
        );
    }
    // An admin sees how far the rollups are behind: nothing after a stats read caught up.
    api.stats(&api.admin, "userId=*").await;
    let (status, body) = api.get(&api.admin, "/api/usage/aggregator").await;
    assert_eq!(status, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pendingEvents"], 0, "{status}");
    assert_eq!(status["lagMs"], 0, "{status}");
    assert!(status["oldestPendingAt"].is_null(), "{status}");
    assert!(status["cursorMovedAt"].is_string(), "{status}");
    // Nobody without credentials.
    let res = Client::new()
        .get(format!("{}/api/usage/stats", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Unknown users and bad parameters are clear errors.
    let (status, body) = api.get(&api.admin, "/api/usage/stats?userId=ghost").await;
    assert_eq!(status, 404, "{body}");
    for (query, code) in [
        ("from=2026-02-30", "invalid_from"),
        ("from=2026-11-10&to=2026-11-01", "invalid_range"),
        ("groupBy=hour", "invalid_group_by"),
        ("pageSize=0", "invalid_page_size"),
        ("sort=colour", "invalid_sort"),
    ] {
        let (status, body) = api
            .get(&api.admin, &format!("/api/usage/stats?{query}"))
            .await;
        assert_eq!(status, 422, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
}

async fn csv_export_reads_back_as_the_rows(db: common::TestDb) {
    let (ledger, mut specs, yesterday) = ten_days(&db.url).await;
    // Agent names with commas and quotes (line breaks are refused in ids).
    for (n, agent) in ["support, tier 2", "say \"hi\"", "plain"]
        .iter()
        .enumerate()
    {
        let mut s = specs[n * 2].clone(); // u0's
        s.key = format!("agent-{n}");
        s.agent = Some(agent.to_string());
        ledger
            .record_at(&[s.usage()], &[s.at])
            .await
            .pop()
            .unwrap()
            .unwrap();
        specs.push(s);
    }
    let api = Api::start(ledger).await;
    let range = format!("from={}&to={}", yesterday - Days::new(12), yesterday);
    for query in [
        format!("userId=u0&{range}&groupBy=agent"),
        format!("{range}&groupBy=day&pageSize=2"),
    ] {
        let res = Client::new()
            .get(format!("{}/api/usage/export.csv?{query}", api.base))
            .bearer_auth(&api.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
        assert!(
            res.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment; filename=\"usage-")
        );
        let text = res.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            header,
            domain::stats::CSV_HEADER.map(str::to_owned).to_vec()
        );
        let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        // Every row of every page, in the same order as the API's.
        let all = api
            .stats(&api.admin, &format!("{query}&pageSize=1000"))
            .await;
        let rows = all["rows"].as_array().unwrap();
        assert_eq!(records.len(), rows.len(), "{query}");
        for (record, row) in records.iter().zip(rows) {
            assert_eq!(record[0], *row["key"].as_str().unwrap_or(""));
            assert_eq!(record[3], row["totalTokens"].to_string());
            assert_eq!(record[5], row["messages"].to_string());
            let micros = row["costMicros"].as_u64().unwrap();
            assert_eq!(
                record[4],
                format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
            );
        }
        if query.contains("agent") {
            let keys: Vec<&str> = records.iter().map(|r| &r[0]).collect();
            assert!(
                keys.contains(&"support, tier 2") && keys.contains(&"say \"hi\""),
                "{keys:?}"
            );
        }
    }

    // Every event of the range, oldest first, exactly as recorded.
    let records = events_csv(&api, &format!("userId=u0&{range}")).await;
    let expected: Vec<&Spec> = specs.iter().filter(|s| s.user == "u0").collect();
    assert_eq!(records.len(), expected.len());
    let times: Vec<&str> = records.iter().map(|r| &r[2]).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    let total: u64 = records.iter().map(|r| r[7].parse::<u64>().unwrap()).sum();
    assert_eq!(total, expected.iter().map(|s| s.tokens).sum::<u64>());
    let cost: u64 = records.iter().map(|r| r[8].parse::<u64>().unwrap()).sum();
    assert_eq!(cost, expected.iter().map(|s| s.tokens * 1_250).sum::<u64>());
    let agents: Vec<&str> = records.iter().map(|r| &r[10]).collect();
    assert!(agents.contains(&"support, tier 2") && agents.contains(&"say \"hi\""));
    // Everyone's events, and one model's of one user: exactly those.
    let everyone = events_csv(&api, &format!("userId=*&{range}")).await;
    assert_eq!(everyone.len(), specs.len());
    let model = specs[0]
        .model
        .clone()
        .expect("u0's first event has a model");
    let of_model = events_csv(&api, &format!("userId=u0&model={model}&{range}")).await;
    let expected = specs
        .iter()
        .filter(|s| s.user == "u0" && s.model.as_deref() == Some(model.as_str()))
        .count();
    assert!(expected > 0);
    assert_eq!(of_model.len(), expected);
    assert!(of_model.iter().all(|r| &r[1] == "u0" && r[4] == *model));
    // Someone else's events are not a user's to export.
    let u1 = api.key_for("u1").await;
    let (status, _) = api.get(&u1, "/api/usage/events.csv?userId=u0").await;
    assert_eq!(status, 403);
}

async fn events_csv(api: &Api, query: &str) -> Vec<csv::StringRecord> {
    let res = Client::new()
        .get(format!("{}/api/usage/events.csv?{query}", api.base))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{query}");
    let text = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().len(),
        domain::stats::EVENTS_CSV_HEADER.len()
    );
    reader.records().collect::<Result<_, _>>().unwrap()
}
