//! The tokenmeter server: storage, the REST API, server-side rendering and the CLI's commands.

pub mod config;
pub mod demo;
pub mod http;
pub mod store;
pub mod web;

use std::sync::Arc;

use app::service::Services;

use crate::store::{Db, SqlLedger, WriterConfig};

/// Connects to the database, applies migrations and starts the ledger writer.
pub async fn open_services(
    database_url: &str,
) -> Result<(Services, Arc<SqlLedger>), Box<dyn std::error::Error + Send + Sync>> {
    let db = Db::connect(database_url).await?;
    db.migrate().await?;
    let ledger = SqlLedger::start(db, WriterConfig::default());
    Ok((
        Services {
            ledger: ledger.clone(),
        },
        ledger,
    ))
}
