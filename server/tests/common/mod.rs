//! Test helpers: real databases (a SQLite file in a temp dir, a fresh database in the Postgres
//! that `scripts/with-postgres.sh` started) and the real HTTP app on a loopback port.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::net::SocketAddr;
use std::sync::Arc;

use app::service::Services;
use tokenmeter_server::store::{Db, SqlLedger, WriterConfig};
use tokenmeter_server::web::{WebConfig, build_app, leptos_options};

/// A database for one test; the temp dir (SQLite) lives as long as this value.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("test.db").display());
    TestDb {
        url,
        _dir: Some(dir),
    }
}

/// A new, empty database in the test Postgres server.
pub async fn postgres() -> TestDb {
    let admin_url = std::env::var("TOKENMETER_TEST_PG").expect(
        "TOKENMETER_TEST_PG is not set: run the tests through `make test` or `scripts/with-postgres.sh cargo test`",
    );
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url)
        .await
        .expect("connect to the test Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin.pool)
        .await
        .expect("create test database");
    admin.pool.close().await;
    let base = admin_url.rsplit_once('/').expect("URL has a database").0;
    TestDb {
        url: format!("{base}/{name}"),
        _dir: None,
    }
}

pub async fn ledger(db: &TestDb) -> Arc<SqlLedger> {
    let conn = Db::connect(&db.url).await.expect("connect");
    conn.migrate().await.expect("migrate");
    SqlLedger::start(conn, WriterConfig::default())
}

/// The real app on 127.0.0.1:0; returns its base URL.
pub async fn serve(ledger: Arc<SqlLedger>) -> String {
    serve_with(ledger, Vec::new(), 64 * 1024).await
}

pub async fn serve_with(
    ledger: Arc<SqlLedger>,
    cors_origins: Vec<String>,
    max_body_bytes: usize,
) -> String {
    let services = Services { ledger };
    let app = build_app(
        services,
        WebConfig {
            leptos: leptos_options(),
            cors_origins,
            max_body_bytes,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}")
}
