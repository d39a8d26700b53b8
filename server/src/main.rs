//! `tokenmeter`: serve the app, migrate the database, seed demo data.

use std::process::ExitCode;

use app::service::AuthSettings;
use clap::{Parser, Subcommand};
use domain::api::CreateApiKeyBody;
use domain::{TokenLimit, UserId};
use tokenmeter_server::config::{
    BackfillArgs, BenchDataArgs, CreateAdminArgs, CreateApiKeyArgs, DbArgs, ServeArgs, VerifyArgs,
};
use tokenmeter_server::http::auth::AuthLayerConfig;
use tokenmeter_server::store::Db;
use tokenmeter_server::web::{WebConfig, build_app, leptos_options};
use tokenmeter_server::{demo, jobs, open_services};
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
    /// Rebuild the usage rollups of a range of days from the ledger, in batches, then verify
    /// them; running it twice gives the same rollups as once.
    Backfill(BackfillArgs),
    /// Check the usage rollups of a range of days against the ledger; exit 1 on a difference.
    VerifyRollups(VerifyArgs),
    /// Benchmark data: users u0… and usage events spread over the past days (see
    /// scripts/bench/analytics.sh).
    BenchData(BenchDataArgs),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(default_serve_args()));
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    if matches!(command, Command::Backfill(_) | Command::VerifyRollups(_)) {
        // Each of their statements may sum a month of events (on Postgres, in SQL): seconds
        // are expected, and sqlx's warning about every slow statement would bury the report.
        filter = filter.add_directive("sqlx::query=error".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let result = match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::SeedDemo(args) => seed(args).await,
        Command::Audit(args) => audit(args).await,
        Command::CreateAdmin(args) => create_admin(args).await,
        Command::CreateApiKey(args) => create_api_key(args).await,
        Command::Backfill(args) => backfill(args).await,
        Command::VerifyRollups(args) => verify_rollups(args).await,
        Command::BenchData(args) => bench_data(args).await,
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
    tokio::spawn(jobs::release_expired_reservations(ledger.clone()));
    tokio::spawn(jobs::aggregate_rollups(ledger.clone()));
    tokio::spawn(jobs::nightly_rollup_check(ledger.clone()));
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

async fn backfill(args: BackfillArgs) -> Result<(), BoxError> {
    if args.range.from > args.range.to {
        return Err(format!(
            "--from ({}) must be on or before --to ({})",
            args.range.from, args.range.to
        )
        .into());
    }
    let (_, ledger) = open_services(&args.db.database_url, AuthSettings::default()).await?;
    let started = std::time::Instant::now();
    // The rebuild reads every event the aggregator has read: first the aggregator takes over
    // everything pending (the range's events are left to the rebuild), then anything newer.
    let taken = ledger
        .take_over_pending(args.range.from, args.range.to)
        .await?;
    let caught_up = ledger.catch_up_fully().await?;
    if taken.taken + taken.folded + caught_up > 0 {
        eprintln!(
            "pending events: {} of the range (rebuilt below), {} of other days aggregated",
            taken.taken,
            taken.folded + caught_up
        );
    }
    let batches = domain::rollup::day_batches(args.range.from, args.range.to, args.batch_days);
    let mut events = 0u64;
    let mut days = 0u64;
    let mut changed = 0u64;
    // Three steps per batch, overlapped on two cores: while one batch's days are written (under
    // the write lock), the next two batches' events are read and summed, and the days written
    // for the batch before are read back and checked against its events (in snapshots, so the
    // writer is not held up). Reading is most of the work: with one batch read at a time, the
    // reads alone kept one core busy and a year took their sum.
    const READ_AHEAD: usize = 2;
    let read = |(from, to): (chrono::NaiveDate, chrono::NaiveDate)| {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.read_ledger_days(from, to).await })
    };
    let mut reading: std::collections::VecDeque<_> =
        batches.iter().take(READ_AHEAD).copied().map(read).collect();
    let mut checking = None;
    let mut checked = Vec::new();
    for n in 0..batches.len() {
        let ledger_days = match reading.pop_front() {
            Some(next) => next.await??,
            None => break,
        };
        reading.extend(batches.get(n + READ_AHEAD).copied().map(read));
        let (from, to) = ledger_days.range();
        let (rebuilt, written) = ledger.store_ledger_days(ledger_days).await?;
        events += rebuilt.events;
        days += rebuilt.days;
        changed += rebuilt.rows_changed;
        progress(
            n + 1,
            batches.len(),
            &format!("{from}..{to}: {} events", rebuilt.events),
        );
        if let Some(check) = checking.take() {
            checked.push(check.await??);
        }
        let ledger = ledger.clone();
        checking = Some(tokio::spawn(
            async move { ledger.verify_stored(written).await },
        ));
    }
    let rebuilt_in = started.elapsed().as_secs_f64();
    if let Some(check) = checking.take() {
        checked.push(check.await??);
    }
    eprintln!();
    ledger.finish_take_over(args.range.from, &taken).await?;
    println!(
        "rebuilt {days} user-days from {events} events in {rebuilt_in:.1} s ({changed} rows written or deleted)",
    );
    let differences: usize = checked.iter().map(report_verification).sum();
    println!(
        "checked every batch against the ledger beside the rebuild: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    if differences == 0 {
        println!(
            "verified: every user's day from {} to {} matches the ledger",
            args.range.from, args.range.to
        );
        Ok(())
    } else {
        Err(format!("{differences} stored days or day members differ from the ledger").into())
    }
}

/// A one-line progress bar on stderr.
fn progress(done: usize, total: usize, label: &str) {
    const WIDTH: usize = 30;
    let filled = WIDTH * done / total.max(1);
    eprint!(
        "\r[{}{}] {done}/{total} {label}\x1b[K",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
}

/// Prints each difference; answers how many.
fn report_verification(v: &tokenmeter_server::store::Verification) -> usize {
    let show = |s: &Option<domain::rollup::Sums>| match s {
        Some(s) => format!(
            "{} tokens, {} messages, {} picodollars",
            s.total_tokens, s.messages, s.cost_picos
        ),
        None => "nothing".to_owned(),
    };
    for d in &v.day_differences {
        println!(
            "DIFFERS {} day {}: stored {}, ledger {}",
            d.user_id,
            d.day,
            show(&d.stored),
            show(&d.expected)
        );
    }
    for d in &v.member_differences {
        let value = if d.value.is_empty() {
            "(none)"
        } else {
            &d.value
        };
        println!(
            "DIFFERS {} day {} {:?} {value}: stored {}, ledger {}",
            d.user_id,
            d.day,
            d.dimension,
            show(&d.stored),
            show(&d.expected)
        );
    }
    v.day_differences.len() + v.member_differences.len()
}

async fn bench_data(args: BenchDataArgs) -> Result<(), BoxError> {
    let (_, ledger) = open_services(&args.db.database_url, AuthSettings::default()).await?;
    let started = std::time::Instant::now();
    let made = demo::bench_data(&ledger, args.users, args.events, args.days, |done| {
        progress(
            (done * 100 / args.events.max(1)) as usize,
            100,
            &format!("{done} events"),
        )
    })
    .await?;
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "recorded {} events for {} users in {secs:.1} s ({:.0} events/s)",
        made.events,
        made.users,
        made.events as f64 / secs
    );
    Ok(())
}

async fn verify_rollups(args: VerifyArgs) -> Result<(), BoxError> {
    let (_, ledger) = open_services(&args.db.database_url, AuthSettings::default()).await?;
    ledger.catch_up_fully().await?;
    let v = ledger
        .verify_rollups(args.range.from, args.range.to, args.repair)
        .await?;
    let differences = report_verification(&v);
    println!(
        "checked {} user-days over {} events from {} to {}",
        v.days, v.events, args.range.from, args.range.to
    );
    if differences == 0 {
        println!("verified: the rollups match the ledger");
        Ok(())
    } else if v.repaired {
        println!("repaired: {differences} stored days or day members were rebuilt from the ledger");
        Ok(())
    } else {
        Err(format!(
            "{differences} stored days or day members differ from the ledger (run with --repair)"
        )
        .into())
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
