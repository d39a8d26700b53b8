//! Configuration from flags and environment variables (flags win).

use std::net::SocketAddr;

use clap::Args;

/// Where the database is. Default: a SQLite file under `./data`.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// `sqlite:PATH` (created if missing) or `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:data/tokenmeter.db"
    )]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on (cargo-leptos's variable, so `cargo leptos serve` and scripts agree).
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// Browser origins allowed to call the API from other sites, comma-separated
    /// (e.g. `https://admin.example.com`). Empty: same origin only.
    #[arg(
        long,
        env = "TOKENMETER_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_origins: Vec<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TOKENMETER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Fill an empty database with demo users and usage before serving, and show the demo
    /// logins on the login page.
    #[arg(long, env = "TOKENMETER_SEED_DEMO", default_value_t = false)]
    pub seed_demo: bool,
    /// How long a login lasts, in hours.
    #[arg(long, env = "TOKENMETER_SESSION_HOURS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=24 * 90))]
    pub session_hours: u32,
    /// Always mark the session cookie `Secure` (serve over HTTPS).
    #[arg(long, env = "TOKENMETER_SECURE_COOKIES", default_value_t = false)]
    pub secure_cookies: bool,
    /// Trust `X-Forwarded-For` and `X-Forwarded-Proto` from a reverse proxy in front.
    #[arg(long, env = "TOKENMETER_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,
}

/// `tokenmeter create-admin`
#[derive(Debug, Clone, Args)]
pub struct CreateAdminArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The admin's user id; created if missing, promoted (and given a new password) if not.
    #[arg(long, default_value = "admin")]
    pub user_id: String,
    /// Token limit when the account is created.
    #[arg(long, default_value_t = 1_000_000)]
    pub token_limit: i64,
}

/// `tokenmeter create-api-key`
#[derive(Debug, Clone, Args)]
pub struct CreateApiKeyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Whose key it is: it acts as this user, with this user's role.
    #[arg(long)]
    pub user_id: String,
    /// A name to recognise the key by.
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// Extra rights, e.g. `--scope usage:record` for a backend that reports usage for everyone.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
}

/// A range of UTC days, both ends included.
#[derive(Debug, Clone, Args)]
pub struct DayRangeArgs {
    /// First day (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_day)]
    pub from: chrono::NaiveDate,
    /// Last day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long, value_parser = parse_day)]
    pub to: chrono::NaiveDate,
}

/// `tokenmeter backfill`
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub range: DayRangeArgs,
    /// Days per batch at most (one transaction each); no batch crosses a month's end, so the
    /// default makes every batch a calendar month.
    #[arg(long, default_value_t = 31, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub batch_days: u32,
}

/// `tokenmeter verify-rollups`
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub range: DayRangeArgs,
    /// Rebuild the rollups that differ.
    #[arg(long, default_value_t = false)]
    pub repair: bool,
}

fn parse_day(raw: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| format!("{raw:?} is not a date written YYYY-MM-DD"))
}

/// `tokenmeter bench-data`
#[derive(Debug, Clone, Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long, default_value_t = 1_000)]
    pub users: u64,
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Days before today the events are spread over.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}
