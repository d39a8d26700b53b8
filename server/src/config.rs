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
    #[arg(long, env = "TOKENMETER_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Fill an empty database with demo users and usage before serving.
    #[arg(long, env = "TOKENMETER_SEED_DEMO", default_value_t = false)]
    pub seed_demo: bool,
}
