//! The tokenmeter server: storage, the REST API, server-side rendering and the CLI's commands.

pub mod config;
pub mod demo;
pub mod http;
pub mod jobs;
pub mod providers;
pub mod store;
pub mod web;

use std::sync::Arc;

use app::service::{AuthSettings, Services};

use crate::store::{Db, SqlLedger, WriterConfig};

/// Connects to the database, applies migrations and starts the ledger writer.
pub async fn open_services(
    database_url: &str,
    settings: AuthSettings,
) -> Result<(Services, Arc<SqlLedger>), Box<dyn std::error::Error + Send + Sync>> {
    let db = Db::connect(database_url).await?;
    db.migrate().await?;
    let ledger = SqlLedger::start(db, WriterConfig::default());
    Ok((services_for(ledger.clone(), settings), ledger))
}

/// The services over one SQL store, which is both the ledger and the account store.
pub fn services_for(ledger: Arc<SqlLedger>, settings: AuthSettings) -> Services {
    Services {
        ledger: ledger.clone(),
        auth: ledger,
        settings: Arc::new(settings),
        models: Arc::new(providers::demo_models(std::time::Duration::ZERO)),
    }
}
