//! Two `tokenmeter serve` processes on one Postgres database, 64 concurrent clients recording
//! usage through both (and retrying the same reports against the other one): exact totals.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn start_server(database_url: &str) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start tokenmeter");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = reqwest::get(format!("{}/healthz", server.base)).await
            && res.status().is_success()
        {
            return server;
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_postgres_stay_exact() {
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 500;
    const USERS: usize = 100;

    let db = common::postgres().await;
    let a = start_server(&db.url).await;
    let b = start_server(&db.url).await;
    let http = reqwest::Client::new();
    for u in 0..USERS {
        let res = http
            .post(format!("{}/api/users", a.base))
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
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    for user in &users {
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
