//! Two `tokenmeter serve` processes on one Postgres database, 64 concurrent clients recording
//! usage through both (and retrying the same reports against the other one): exact totals.

mod common;

use serde_json::json;

/// An admin `root` and an API key of theirs, made with the CLI as a script would.
fn bootstrap_admin(database_url: &str) -> String {
    common::cli(database_url, &["create-admin", "--user-id", "root"]);
    common::cli(database_url, &["create-api-key", "--user-id", "root"])
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_postgres_stay_exact() {
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 500;
    const USERS: usize = 100;

    let db = common::postgres().await;
    let a = common::start_server(&db.url, &[]).await;
    let b = common::start_server(&db.url, &[]).await;
    let http = reqwest::Client::new();
    // Bootstrapped from zero with the CLI, as a script would: an admin key to create users,
    // and a backend key that may only record usage.
    let admin = bootstrap_admin(&db.url);
    let recorder = common::cli(
        &db.url,
        &[
            "create-api-key",
            "--user-id",
            "root",
            "--name",
            "backend",
            "--scope",
            "usage:record",
        ],
    )
    .trim()
    .to_owned();
    for u in 0..USERS {
        let res = http
            .post(format!("{}/api/users", a.base))
            .bearer_auth(&admin)
            .json(&json!({"userId": format!("u{u}"), "tokenLimit": 1_000_000_000}))
            .send()
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
    }

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let bases = [a.base.clone(), b.base.clone()];
        let recorder = recorder.clone();
        clients.push(tokio::spawn(async move {
            let mut sent = vec![0u64; USERS];
            for i in 0..PER_CLIENT {
                // Half the clients hammer one hot user, the rest spread over all users.
                let u = if c % 2 == 0 {
                    0
                } else {
                    (c * PER_CLIENT + i) % USERS
                };
                let tokens = 1 + (i % 7) as u64;
                let key = format!("c{c}-{i}");
                let url = |base: &str| format!("{base}/api/users/u{u}/usage");
                let body = json!({"tokensConsumed": tokens});
                let first = http
                    .post(url(&bases[i % 2]))
                    .bearer_auth(&recorder)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                    .expect("record");
                assert_eq!(first.status(), 200);
                if i % 10 == 0 {
                    // A client retry that lands on the other process: recorded once.
                    let retry = http
                        .post(url(&bases[(i + 1) % 2]))
                        .bearer_auth(&recorder)
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await
                        .expect("retry");
                    let retry: serde_json::Value = retry.json().await.expect("json");
                    assert_eq!(retry["replayed"], true);
                }
                sent[u] += tokens;
            }
            sent
        }));
    }
    let mut expected = vec![0u64; USERS];
    for client in clients {
        for (u, t) in client.await.expect("client").into_iter().enumerate() {
            expected[u] += t;
        }
    }
    let users: Vec<serde_json::Value> = http
        .get(format!("{}/api/users", b.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    for user in users.iter().filter(|u| u["userId"] != "root") {
        let u: usize = user["userId"].as_str().expect("id")[1..]
            .parse()
            .expect("index");
        assert_eq!(user["tokenUsage"].as_u64(), Some(expected[u]), "u{u}");
    }
    let ledger = common::ledger(&db).await;
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_exact(), "{audit:?}");
    assert_eq!(audit.events as usize, CLIENTS * PER_CLIENT);
}

/// Each process trusts an API key it looked up for a second (`KEY_CACHE_TTL`): a key revoked
/// through one process stops working there at once, and in the other within that second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_process_stops_working_in_the_other_within_a_second() {
    let db = common::postgres().await;
    let a = common::start_server(&db.url, &[]).await;
    let b = common::start_server(&db.url, &[]).await;
    let http = reqwest::Client::new();
    let admin = bootstrap_admin(&db.url);
    let victim = common::cli(
        &db.url,
        &["create-api-key", "--user-id", "root", "--name", "victim"],
    )
    .trim()
    .to_owned();
    let me = |base: &str, key: &str| {
        http.get(format!("{base}/api/me"))
            .bearer_auth(key.to_owned())
            .send()
    };
    // Both processes have just looked the key up (and may keep it for a second).
    assert_eq!(me(&a.base, &victim).await.expect("me").status(), 200);
    assert_eq!(me(&b.base, &victim).await.expect("me").status(), 200);

    let keys: Vec<serde_json::Value> = http
        .get(format!("{}/api/users/root/keys", a.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let id = keys
        .iter()
        .find(|k| k["name"] == "victim")
        .and_then(|k| k["keyId"].as_i64())
        .unwrap_or_else(|| panic!("the victim key is listed: {keys:?}"));
    let revoked_at = std::time::Instant::now();
    let res = http
        .delete(format!("{}/api/users/root/keys/{id}", a.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 200);
    assert_eq!(me(&a.base, &victim).await.expect("me").status(), 401);

    // The other process refuses it within the cache's second (and a margin for a busy machine),
    // and from then on.
    loop {
        let status = me(&b.base, &victim).await.expect("me").status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(3),
            "the revoked key still works in the other process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(me(&b.base, &victim).await.expect("me").status(), 401);
    }
}
