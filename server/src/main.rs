//! `tokenmeter`: serve the app, migrate the database, seed demo data.

use std::process::ExitCode;

use app::service::AuthSettings;
use clap::{Parser, Subcommand};
use domain::api::CreateApiKeyBody;
use domain::{TokenLimit, UserId};
use tokenmeter_server::config::{CreateAdminArgs, CreateApiKeyArgs, DbArgs, ServeArgs};
use tokenmeter_server::http::auth::AuthLayerConfig;
use tokenmeter_server::store::Db;
use tokenmeter_server::web::{WebConfig, build_app, leptos_options};
use tokenmeter_server::{demo, open_services};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tokenmeter",
    version,
    about = "Meter, price and limit LLM token usage per user"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the web app and API (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Add demo users and three weeks of usage to an empty database.
    SeedDemo(DbArgs),
    /// Check every user's counter against the sum of their ledger events; exit 1 on a mismatch.
    Audit(DbArgs),
    /// Make an admin account (creating it if needed) and print its new password, once.
    CreateAdmin(CreateAdminArgs),
    /// Create an API key for a user and print it, once (for scripts and CI).
    CreateApiKey(CreateApiKeyArgs),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(default_serve_args()));
    let result = match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::SeedDemo(args) => seed(args).await,
        Command::Audit(args) => audit(args).await,
        Command::CreateAdmin(args) => create_admin(args).await,
        Command::CreateApiKey(args) => create_api_key(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenmeter: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tokenmeter` with no subcommand serves, reading its settings from the environment.
fn default_serve_args() -> ServeArgs {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        args: ServeArgs,
    }
    Defaults::parse_from(["tokenmeter"]).args
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let settings = AuthSettings {
        session_ttl: chrono::Duration::hours(args.session_hours.into()),
        demo_logins: if args.seed_demo {
            demo::demo_logins()
        } else {
            Vec::new()
        },
        ..AuthSettings::default()
    };
    let models = tokenmeter_server::providers::models_from_env()?;
    let (mut services, ledger) = open_services(&args.db.database_url, settings).await?;
    services.models = std::sync::Arc::new(models);
    if args.seed_demo {
        report_seed(demo::seed_demo(&ledger).await?);
    }
    tokio::spawn(release_expired_reservations(ledger.clone()));
    let app = build_app(
        services,
        WebConfig {
            leptos: leptos_options(),
            cors_origins: args.cors_origins.clone(),
            max_body_bytes: args.max_body_bytes,
            auth: AuthLayerConfig {
                secure_cookies: args.secure_cookies,
                trust_proxy: args.trust_proxy,
            },
        },
    );
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!("tokenmeter listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(())
}

/// The expiry job: every 30 s, holds of calls that never ended (a crashed server, a lost
/// connection) are given back.
async fn release_expired_reservations(ledger: std::sync::Arc<tokenmeter_server::store::SqlLedger>) {
    use app::ports::Ledger;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        match ledger.release_expired(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "expired reservations released"),
            Err(e) => tracing::warn!(%e, "could not release expired reservations"),
        }
    }
}

async fn create_admin(args: CreateAdminArgs) -> Result<(), BoxError> {
    let user_id = UserId::parse(&args.user_id)?;
    let limit = TokenLimit::new(args.token_limit)?;
    let (services, _) = open_services(&args.db.database_url, AuthSettings::default()).await?;
    let password = services.bootstrap_admin(&user_id, limit).await?;
    println!("admin: {user_id}");
    println!("password: {password}");
    println!("This password is shown once. Log in and change it under Account.");
    Ok(())
}

async fn create_api_key(args: CreateApiKeyArgs) -> Result<(), BoxError> {
    let user_id = UserId::parse(&args.user_id)?;
    let (services, _) = open_services(&args.db.database_url, AuthSettings::default()).await?;
    let body = CreateApiKeyBody {
        name: args.name,
        scopes: args.scopes,
    };
    let created = services.bootstrap_api_key(&user_id, &body).await?;
    // The key alone on stdout, so scripts can capture it: KEY=$(tokenmeter create-api-key …)
    println!("{}", created.key);
    eprintln!(
        "created API key {} ({}) for {user_id}; it is shown once",
        created.api_key.prefix, created.api_key.name
    );
    Ok(())
}

async fn migrate(args: DbArgs) -> Result<(), BoxError> {
    let db = Db::connect(&args.database_url).await?;
    db.migrate().await?;
    println!("migrations applied to {:?}", db.dialect);
    Ok(())
}

async fn seed(args: DbArgs) -> Result<(), BoxError> {
    let (_, ledger) = open_services(&args.database_url, AuthSettings::default()).await?;
    report_seed(demo::seed_demo(&ledger).await?);
    Ok(())
}

async fn audit(args: DbArgs) -> Result<(), BoxError> {
    let (_, ledger) = open_services(&args.database_url, AuthSettings::default()).await?;
    let audit = ledger.audit().await?;
    println!(
        "users: {}  events: {}  tokens in events: {}  tokens in counters: {}",
        audit.accounts, audit.events, audit.event_tokens, audit.lifetime_tokens
    );
    for (user, counter, events) in &audit.mismatches {
        println!("MISMATCH {user}: counter {counter}, events {events}");
    }
    for (user, counter, held) in &audit.reservation_mismatches {
        println!("MISMATCH {user}: reserved {counter}, reservations {held}");
    }
    for (user, counter, events) in &audit.cost_mismatches {
        println!("MISMATCH {user}: cost {counter} picodollars, events {events}");
    }
    if audit.is_exact() {
        println!("exact: every counter equals the sum of its events");
        Ok(())
    } else {
        Err("the ledger and the counters disagree".into())
    }
}

fn report_seed(seeded: Option<demo::Seeded>) {
    match seeded {
        Some(s) => println!(
            "seeded {} demo users with {} usage events",
            s.users, s.events
        ),
        None => println!("the database already has users: demo data not added"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
