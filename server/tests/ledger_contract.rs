//! The ledger's contract, run against SQLite and a real Postgres: the same behaviour on both,
//! exact totals under concurrency, and a retried report recorded once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use app::ports::{Ledger, LedgerError};
use chrono::Utc;
use domain::{IdempotencyKey, ModelName, NewUser, RecordUsage, TokenLimit, UsageSource, UserId};
use tokenmeter_server::store::SqlLedger;

fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("valid id")
}

fn new_user(id: &str, limit: i64) -> NewUser {
    NewUser::new(uid(id), None, TokenLimit::new(limit).expect("valid limit"))
}

fn report(user: &str, tokens: i64, key: &str) -> RecordUsage {
    RecordUsage::new(
        uid(user),
        tokens,
        None,
        None,
        None,
        UsageSource::Api,
        IdempotencyKey::parse(key).expect("valid key"),
    )
    .expect("valid report")
}

async fn contract(ledger: Arc<SqlLedger>) {
    let now = Utc::now();
    // Create, read back, refuse a duplicate.
    let created = ledger
        .create_user(new_user("ana", 1_000), now)
        .await
        .expect("create");
    assert_eq!(
        (
            created.tokens_used,
            created.lifetime_tokens,
            created.token_limit.get()
        ),
        (0, 0, 1_000)
    );
    assert!(matches!(
        ledger.create_user(new_user("ana", 5), now).await,
        Err(LedgerError::UserExists)
    ));
    let read = ledger
        .get_user(&uid("ana"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, created, "round trip");
    assert!(
        ledger
            .get_user(&uid("nobody"))
            .await
            .expect("get")
            .is_none()
    );

    // Limits.
    let raised = ledger
        .set_limit(&uid("ana"), TokenLimit::new(2_000).expect("valid"), now)
        .await
        .expect("set");
    assert_eq!(raised.token_limit.get(), 2_000);
    assert!(matches!(
        ledger
            .set_limit(&uid("nobody"), TokenLimit::new(5).expect("valid"), now)
            .await,
        Err(LedgerError::UserNotFound)
    ));

    // Recording: the counter moves, the answer carries the running total.
    let first = ledger
        .record_usage(report("ana", 300, "k1"))
        .await
        .expect("record");
    assert!(!first.replayed);
    assert_eq!(
        (first.user.tokens_used, first.user.lifetime_tokens),
        (300, 300)
    );
    let with_split = RecordUsage::new(
        uid("ana"),
        50,
        Some(20),
        Some(30),
        Some(ModelName::parse("gpt-4o-mini").expect("valid")),
        UsageSource::Api,
        IdempotencyKey::parse("k2").expect("valid"),
    )
    .expect("valid");
    let second = ledger.record_usage(with_split).await.expect("record");
    assert_eq!(second.user.tokens_used, 350);
    assert!(second.event_id > first.event_id);

    // A retry answers the first result and records nothing.
    let again = ledger
        .record_usage(report("ana", 300, "k1"))
        .await
        .expect("retry");
    assert!(again.replayed);
    assert_eq!(again.event_id, first.event_id);
    assert_eq!(
        again.user.tokens_used, 300,
        "the first result, not the current total"
    );
    assert_eq!(
        ledger
            .get_user(&uid("ana"))
            .await
            .expect("get")
            .expect("exists")
            .tokens_used,
        350
    );

    // The same key for a different report is refused.
    assert!(matches!(
        ledger.record_usage(report("ana", 301, "k1")).await,
        Err(LedgerError::KeyReused)
    ));
    // Keys are per user: another user may use "k1".
    ledger
        .create_user(new_user("ben", 10), now)
        .await
        .expect("create");
    let ben = ledger
        .record_usage(report("ben", 25, "k1"))
        .await
        .expect("record");
    assert_eq!(
        ben.user.tokens_used, 25,
        "usage above the limit is recorded as it happened"
    );
    assert_eq!(ben.user.remaining(), 0);
    // Unknown users.
    assert!(matches!(
        ledger.record_usage(report("nobody", 1, "k9")).await,
        Err(LedgerError::UserNotFound)
    ));

    // Lowering a limit below usage keeps usage.
    let lowered = ledger
        .set_limit(&uid("ana"), TokenLimit::new(100).expect("valid"), now)
        .await
        .expect("set");
    assert_eq!((lowered.tokens_used, lowered.used_bps()), (350, 35_000));

    let users = ledger.list_users().await.expect("list");
    assert_eq!(
        users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>(),
        ["ana", "ben"]
    );
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
    assert_eq!((audit.events, audit.event_tokens), (3, 375));
}

/// `tasks` tasks each record `per_task` reports, spread over `users` users; some reports are
/// sent twice (a retry). Then: every answer is exact and the ledger equals the counters.
async fn concurrent(ledger: Arc<SqlLedger>, tasks: usize, per_task: usize, users: usize) {
    let now = Utc::now();
    for u in 0..users {
        ledger
            .create_user(new_user(&format!("u{u}"), 1_000_000_000), now)
            .await
            .expect("create");
    }
    let mut handles = Vec::new();
    for t in 0..tasks {
        let ledger = ledger.clone();
        handles.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let user = format!("u{}", (t * per_task + i) % users);
                let tokens = 1 + ((t * 31 + i * 7) % 13) as i64;
                let key = format!("t{t}-{i}");
                let recorded = ledger
                    .record_usage(report(&user, tokens, &key))
                    .await
                    .expect("record");
                if i % 50 == 0 {
                    let retry = ledger
                        .record_usage(report(&user, tokens, &key))
                        .await
                        .expect("retry");
                    assert!(retry.replayed);
                    assert_eq!(retry.event_id, recorded.event_id);
                    assert_eq!(retry.user.tokens_used, recorded.user.tokens_used);
                }
                answers.push((user, tokens as u64, recorded.user.tokens_used));
            }
            answers
        }));
    }
    let mut expected = vec![0u64; users];
    let mut running_totals: Vec<HashSet<u64>> = vec![HashSet::new(); users];
    for handle in handles {
        for (user, tokens, total_after) in handle.await.expect("task") {
            let u: usize = user[1..].parse().expect("index");
            expected[u] += tokens;
            // Each report's running total is distinct: no two reports saw the same counter.
            assert!(
                running_totals[u].insert(total_after),
                "duplicate running total for {user}"
            );
        }
    }
    for (u, want) in expected.iter().enumerate() {
        let got = ledger
            .get_user(&uid(&format!("u{u}")))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.tokens_used, *want, "user u{u}");
        assert_eq!(got.lifetime_tokens, *want);
        assert_eq!(running_totals[u].iter().max().copied().unwrap_or(0), *want);
    }
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
    assert_eq!(audit.events as usize, tasks * per_task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_sqlite() {
    let db = common::sqlite();
    contract(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_postgres() {
    let db = common::postgres().await;
    contract(common::ledger(&db).await).await;
}

/// A report that would take a counter past 64 bits is refused and changes nothing; one that
/// reaches the largest value exactly is recorded.
async fn counter_overflow(db: &common::TestDb) {
    let ledger = common::ledger(db).await;
    let now = Utc::now();
    ledger
        .create_user(new_user("max", 1_000), now)
        .await
        .expect("create");
    sqlx::query("UPDATE account SET lifetime_tokens = $1 WHERE account_id = 'max'")
        .bind(i64::MAX - 5)
        .execute(&ledger.db().pool)
        .await
        .expect("raise the lifetime counter");
    assert!(matches!(
        ledger.record_usage(report("max", 6, "over")).await,
        Err(LedgerError::CounterOverflow)
    ));
    let after = ledger
        .get_user(&uid("max"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (after.tokens_used, after.lifetime_tokens),
        (0, i64::MAX as u64 - 5)
    );
    let recorded = ledger
        .record_usage(report("max", 5, "exact"))
        .await
        .expect("the largest value fits");
    assert_eq!(recorded.user.lifetime_tokens, i64::MAX as u64);
    assert_eq!(recorded.user.tokens_used, 5);
    let audit = ledger.audit().await.expect("audit");
    assert_eq!(
        audit.events, 1,
        "only the report that fits is in the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_overflow_sqlite() {
    counter_overflow(&common::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_overflow_postgres() {
    counter_overflow(&common::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_one_hot_user_sqlite() {
    let db = common::sqlite();
    concurrent(common::ledger(&db).await, 64, 500, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hundred_users_sqlite() {
    let db = common::sqlite();
    concurrent(common::ledger(&db).await, 64, 500, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_one_hot_user_postgres() {
    let db = common::postgres().await;
    concurrent(common::ledger(&db).await, 64, 500, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hundred_users_postgres() {
    let db = common::postgres().await;
    concurrent(common::ledger(&db).await, 64, 500, 100).await;
}

/// Two ledgers (two writers, as in two server processes) on one Postgres database, racing on
/// the same users and sending the same keys to both: still exact, each report once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_one_postgres() {
    let db = common::postgres().await;
    let a = common::ledger(&db).await;
    let b = common::ledger(&db).await;
    let now = Utc::now();
    for u in 0..10 {
        a.create_user(new_user(&format!("u{u}"), 1_000_000), now)
            .await
            .expect("create");
    }
    let mut handles = Vec::new();
    for t in 0..32usize {
        let (a, b) = (a.clone(), b.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..200usize {
                let user = format!("u{}", (t + i) % 10);
                let key = format!("t{t}-{i}");
                // The same report to both writers at once: exactly one records it.
                let (ra, rb) = tokio::join!(
                    a.record_usage(report(&user, 3, &key)),
                    b.record_usage(report(&user, 3, &key))
                );
                let (ra, rb) = (ra.expect("a"), rb.expect("b"));
                assert_eq!(ra.event_id, rb.event_id);
                assert!(
                    ra.replayed != rb.replayed,
                    "exactly one of the two recorded it"
                );
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let audit = a.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
    assert_eq!((audit.events, audit.event_tokens), (32 * 200, 32 * 200 * 3));
}

/// Callers that give up mid-request (dropped futures, as when a client disconnects) leave no
/// half-done transaction behind: the pool keeps serving and the ledger stays exact.
async fn cancelled_callers(ledger: Arc<SqlLedger>) {
    ledger
        .create_user(new_user("hot", 1_000_000_000), Utc::now())
        .await
        .expect("create");
    for round in 0..20 {
        let mut handles = Vec::new();
        for i in 0..50 {
            let ledger = ledger.clone();
            handles.push(tokio::spawn(async move {
                ledger
                    .record_usage(report("hot", 2, &format!("r{round}-{i}")))
                    .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_micros(200 * round)).await;
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }
    // Still serving: reads and writes answer promptly.
    let after = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        ledger
            .record_usage(report("hot", 5, "after"))
            .await
            .expect("record after cancellations")
    })
    .await
    .expect("the ledger still answers");
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
    assert_eq!(after.user.tokens_used as i64, audit.event_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_callers_sqlite() {
    let db = common::sqlite();
    cancelled_callers(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_callers_postgres() {
    let db = common::postgres().await;
    cancelled_callers(common::ledger(&db).await).await;
}

fn model_call(user: &str, tokens: i64, reservation: &str) -> RecordUsage {
    RecordUsage::new(
        uid(user),
        tokens,
        Some(tokens / 2),
        Some(tokens - tokens / 2),
        Some(ModelName::parse("demo-echo").expect("model")),
        UsageSource::ModelCall,
        IdempotencyKey::parse(&format!("call-{reservation}")).expect("key"),
    )
    .expect("valid report")
}

/// Holds for model calls: exact accounting, settling once, releasing, expiry.
async fn reservations(ledger: Arc<SqlLedger>) {
    let now = Utc::now();
    let later = now + chrono::Duration::minutes(5);
    ledger
        .create_user(new_user("res", 1_000), now)
        .await
        .expect("create");

    // A hold shows as reserved and counts against what remains.
    let held = ledger
        .reserve(&uid("res"), 600, "r1", now, later)
        .await
        .expect("reserve");
    assert_eq!(
        (held.user.tokens_reserved, held.user.remaining()),
        (600, 400)
    );
    match ledger.reserve(&uid("res"), 401, "r2", now, later).await {
        Err(LedgerError::LimitReached { remaining }) => assert_eq!(remaining, 400),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert!(matches!(
        ledger.reserve(&uid("nobody"), 1, "r3", now, later).await,
        Err(LedgerError::UserNotFound)
    ));

    // Settling records the real consumption and gives back the rest, once.
    let first = ledger
        .settle("r1", model_call("res", 250, "r1"), now)
        .await
        .expect("settle");
    assert_eq!(
        (first.user.tokens_used, first.user.tokens_reserved),
        (250, 0)
    );
    assert!(!first.replayed);
    let again = ledger
        .settle("r1", model_call("res", 250, "r1"), now)
        .await
        .expect("retry");
    assert!(again.replayed);
    assert_eq!(again.event_id, first.event_id);
    let user = ledger
        .get_user(&uid("res"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (user.tokens_used, user.tokens_reserved, user.lifetime_tokens),
        (250, 0, 250)
    );

    // Releasing gives a hold back unused; twice is harmless.
    ledger
        .reserve(&uid("res"), 700, "r4", now, later)
        .await
        .expect("reserve");
    assert!(ledger.release("r4").await.expect("release"));
    assert!(!ledger.release("r4").await.expect("release again"));
    let user = ledger
        .get_user(&uid("res"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((user.tokens_used, user.tokens_reserved), (250, 0));

    // A hold left behind by a dead call expires; its call may still settle what it consumed.
    let soon = now + chrono::Duration::seconds(1);
    ledger
        .reserve(&uid("res"), 300, "r5", now, soon)
        .await
        .expect("reserve");
    ledger
        .reserve(&uid("res"), 100, "r6", now, later)
        .await
        .expect("reserve");
    assert_eq!(ledger.release_expired(soon).await.expect("expire"), 1);
    let user = ledger
        .get_user(&uid("res"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(user.tokens_reserved, 100);
    let late = ledger
        .settle("r5", model_call("res", 120, "r5"), soon)
        .await
        .expect("late settle");
    assert_eq!(
        (late.user.tokens_used, late.user.tokens_reserved),
        (370, 100)
    );
    ledger.release("r6").await.expect("release");
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
}

/// The promise: a user with room for exactly 10 calls fires 50 at once; at most 10 get a hold,
/// usage never passes the limit, and nothing is left reserved afterwards.
async fn no_overspend(ledger: Arc<SqlLedger>) {
    let now = Utc::now();
    let later = now + chrono::Duration::minutes(5);
    ledger
        .create_user(new_user("tight", 1_000), now)
        .await
        .expect("create");
    let mut calls = Vec::new();
    for c in 0..50 {
        let ledger = ledger.clone();
        calls.push(tokio::spawn(async move {
            let id = format!("call{c}");
            match ledger
                .reserve(&uid("tight"), 100, &id, Utc::now(), later)
                .await
            {
                Ok(held) => {
                    assert!(held.user.tokens_used + held.user.tokens_reserved <= 1_000);
                    // Each call uses its whole hold, so no room ever comes back.
                    let used = 100;
                    let done = ledger
                        .settle(&id, model_call("tight", used, &id), Utc::now())
                        .await
                        .expect("settle");
                    assert!(done.user.tokens_used <= 1_000);
                    Some(used as u64)
                }
                Err(LedgerError::LimitReached { remaining }) => {
                    assert!(remaining < 100);
                    None
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }));
    }
    let mut reached = 0;
    let mut spent = 0;
    for call in calls {
        if let Some(used) = call.await.expect("call") {
            reached += 1;
            spent += used;
        }
    }
    assert_eq!(reached, 10, "room for exactly 10 calls of 100");
    let user = ledger
        .get_user(&uid("tight"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(user.tokens_used, spent);
    assert!(user.tokens_used <= 1_000, "overspent: {}", user.tokens_used);
    assert_eq!(user.tokens_reserved, 0, "nothing left reserved");
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_sqlite() {
    let db = common::sqlite();
    reservations(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_postgres() {
    let db = common::postgres().await;
    reservations(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_overspend_sqlite() {
    let db = common::sqlite();
    no_overspend(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_overspend_postgres() {
    let db = common::postgres().await;
    no_overspend(common::ledger(&db).await).await;
}

/// The SQL page (filter, sort, cut in the database) gives exactly what the domain's reference
/// `query_users` gives over the whole list: every sort key, both directions, filters, pages.
async fn pages_match_the_reference(ledger: Arc<SqlLedger>) {
    use domain::{DisplayName, SortDirection, UserQuery, UserSortKey, query_users};
    let now = Utc::now();
    let names = ["Ana", "ben", "Chen", "dara", "Eli", "farah", "Gus", "hana"];
    let mut seed = 0x5eed_u64;
    let mut next = |below: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % below
    };
    for i in 0..60 {
        // Some limits and usages repeat on purpose, so ties (equal shares too) must be broken
        // the same way: by user id.
        let limit = [100, 200, 1_000, 5_000][next(4) as usize];
        let id = format!("{}{i:02}", if i % 3 == 0 { "Z" } else { "a" });
        let name = format!(
            "{} {}",
            names[next(8) as usize],
            ["Smith", "li", "Okafor"][next(3) as usize]
        );
        let user = NewUser::new(
            uid(&id),
            Some(DisplayName::parse(&name).expect("name")),
            TokenLimit::new(limit).expect("limit"),
        );
        ledger.create_user(user, now).await.expect("create");
        let used = [0, limit / 2, limit, limit * 2, next(limit as u64) as i64][next(5) as usize];
        if used > 0 {
            ledger
                .record_usage(report(&id, used, &format!("p{i}")))
                .await
                .expect("record");
        }
    }
    let all = ledger.list_users().await.expect("list");
    let keys = [
        UserSortKey::UserId,
        UserSortKey::Name,
        UserSortKey::Usage,
        UserSortKey::Limit,
        UserSortKey::Percentage,
        UserSortKey::Remaining,
        UserSortKey::LastUpdated,
    ];
    for key in keys {
        for direction in [SortDirection::Asc, SortDirection::Desc] {
            for filter in ["", "A", "smith", "Z0", "nobody"] {
                for (page, page_size) in [(1, 7), (3, 7), (9, 7), (1, 500)] {
                    let query = UserQuery {
                        sort: key,
                        direction,
                        filter: filter.into(),
                        page,
                        page_size,
                    };
                    let (want, want_info) = query_users(all.clone(), &query);
                    let (got, got_info) = ledger.list_users_page(&query).await.expect("page");
                    let ids = |v: &[domain::UserUsage]| {
                        v.iter().map(|u| u.user_id.to_string()).collect::<Vec<_>>()
                    };
                    assert_eq!(ids(&got), ids(&want), "{query:?}");
                    assert_eq!(got_info, want_info, "{query:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_match_the_reference_sqlite() {
    let db = common::sqlite();
    pages_match_the_reference(common::ledger(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_match_the_reference_postgres() {
    let db = common::postgres().await;
    pages_match_the_reference(common::ledger(&db).await).await;
}
