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
