//! Test helpers: real databases (a SQLite file in a temp dir, a fresh database in the Postgres
//! that `scripts/with-postgres.sh` started) and the real HTTP app on a loopback port.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::service::{AuthSettings, Services};
use domain::api::CreateApiKeyBody;
use domain::{TokenLimit, UserId};
use tokenmeter_server::http::auth::AuthLayerConfig;
use tokenmeter_server::services_for;
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
    serve_services(
        services(ledger),
        cors_origins,
        max_body_bytes,
        AuthLayerConfig::default(),
    )
    .await
}

/// The services over a test ledger, with default login settings.
pub fn services(ledger: Arc<SqlLedger>) -> Services {
    services_for(ledger, AuthSettings::default())
}

pub async fn serve_services(
    services: Services,
    cors_origins: Vec<String>,
    max_body_bytes: usize,
    auth: AuthLayerConfig,
) -> String {
    let app = build_app(
        services,
        WebConfig {
            leptos: leptos_options(),
            cors_origins,
            max_body_bytes,
            auth,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    format!("http://{addr}")
}

/// An admin account `id` and an API key acting as it (bootstrapped the way the CLI does);
/// returns the key.
pub async fn admin_key(services: &Services, id: &str) -> String {
    let user_id = UserId::parse(id).expect("valid id");
    services
        .bootstrap_admin(&user_id, TokenLimit::new(1_000_000).expect("limit"))
        .await
        .expect("create admin");
    services
        .bootstrap_api_key(
            &user_id,
            &CreateApiKeyBody {
                name: "tests".into(),
                scopes: vec![],
            },
        )
        .await
        .expect("create key")
        .key
}

// ---- the real binary, for tests that run `tokenmeter` as a process ----

pub struct Server {
    pub child: Child,
    pub base: String,
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

/// Runs a `tokenmeter` subcommand against the database; returns its stdout.
pub fn cli(database_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tokenmeter");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Starts `tokenmeter serve` on a free port with extra environment variables; waits until healthy.
pub async fn start_server(database_url: &str, env: &[(&str, &str)]) -> Server {
    start_server_logging(database_url, env, Stdio::null(), Stdio::inherit()).await
}

/// Like [`start_server`], with the process's stdout and stderr going where the test says.
pub async fn start_server_logging(
    database_url: &str,
    env: &[(&str, &str)],
    stdout: Stdio,
    stderr: Stdio,
) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
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

// ---- model providers ----

/// A provider's answer gathered: the text, each usage it reported, why it finished, and the
/// error that ended it (if one did).
pub type Gathered = (
    String,
    Vec<domain::CallUsage>,
    Option<domain::FinishReason>,
    Option<app::ports::ProviderError>,
);

/// Starts a call and reads its answer to the end (or to the first error).
pub async fn collect_events(
    provider: &dyn app::ports::ModelProvider,
    request: app::ports::ProviderRequest,
) -> Result<Gathered, app::ports::ProviderError> {
    use app::ports::ProviderEvent;
    use futures::StreamExt;
    let mut events = provider.start(request).await?;
    let (mut text, mut usages, mut finish, mut error) = (String::new(), Vec::new(), None, None);
    while let Some(event) = events.next().await {
        match event {
            Ok(ProviderEvent::Text(t)) => text.push_str(&t),
            Ok(ProviderEvent::Usage(u)) => usages.push(u),
            Ok(ProviderEvent::Finished(f)) => finish = Some(f),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Ok((text, usages, finish, error))
}
