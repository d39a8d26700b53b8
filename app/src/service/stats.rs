//! Usage statistics and their CSV export: who may see whose, then the ledger's rollups.

use chrono::Utc;
use domain::stats::{
    CSV_HEADER, EventRow, StatsParams, StatsQuery, StatsScope, StatsView, csv_record,
};
use domain::{Action, Caller, Role};

use super::{Services, allow};
use crate::error::AppError;
use crate::ports::{AggregatorStatus, LedgerError};

impl Services {
    /// How far the usage rollups are behind the ledger (administrators only).
    pub async fn aggregator_status(&self, caller: &Caller) -> Result<AggregatorStatus, AppError> {
        allow(caller, Action::ReadSystemStatus)?;
        Ok(self.ledger.aggregator_status(Utc::now()).await?)
    }

    /// One page of usage statistics. Without a user id an administrator sees everyone and a
    /// user themselves; a user asking for someone else gets 403 before anything is read.
    pub async fn usage_stats(
        &self,
        caller: &Caller,
        params: &StatsParams,
    ) -> Result<StatsView, AppError> {
        let query = params.validate(Utc::now().date_naive())?;
        let scope = self.stats_scope(caller, &query).await?;
        let answer = self.ledger.usage_stats(&query, &scope).await?;
        Ok(answer.into_view(&query, scope_user(&scope)))
    }

    /// Every row of a statistics query as CSV (RFC 4180: CRLF line ends, fields quoted when
    /// needed), header first, in the query's order. The lines are built here and streamed out by
    /// the caller.
    pub async fn usage_csv(
        &self,
        caller: &Caller,
        params: &StatsParams,
    ) -> Result<(StatsView, Vec<String>), AppError> {
        let query = params.validate(Utc::now().date_naive())?.unpaged();
        let scope = self.stats_scope(caller, &query).await?;
        let answer = self.ledger.usage_stats(&query, &scope).await?;
        let view = answer.into_view(&query, scope_user(&scope));
        let mut lines = Vec::with_capacity(view.rows.len() + 1);
        lines.push(csv_record(&CSV_HEADER));
        lines.extend(view.rows.iter().map(|row| csv_record(&row.csv_fields())));
        Ok((view, lines))
    }

    /// Every ledger event of the query's range (user, dates, model) for a CSV export: the file
    /// name and the events in chunks, as the store reads them.
    pub async fn usage_events(
        &self,
        caller: &Caller,
        params: &StatsParams,
    ) -> Result<
        (
            String,
            tokio::sync::mpsc::Receiver<Result<Vec<EventRow>, LedgerError>>,
        ),
        AppError,
    > {
        let query = params.validate(Utc::now().date_naive())?;
        let scope = self.stats_scope(caller, &query).await?;
        let who = scope_user(&scope).unwrap_or_else(|| "all-users".to_owned());
        let filename = format!("usage-events-{who}-{}-{}.csv", query.from, query.to);
        let events = self
            .ledger
            .export_events(&scope, query.from, query.to, query.model.clone());
        Ok((filename, events))
    }

    async fn stats_scope(
        &self,
        caller: &Caller,
        query: &StatsQuery,
    ) -> Result<StatsScope, AppError> {
        let scope = query.scope.clone().unwrap_or_else(|| match caller.role {
            Role::Admin => StatsScope::All,
            Role::User => StatsScope::User(caller.user_id.clone()),
        });
        match &scope {
            StatsScope::All => allow(caller, Action::ListUsers)?,
            StatsScope::User(user_id) => {
                allow(caller, Action::ReadUser(user_id))?;
                if self.ledger.get_user(user_id).await?.is_none() {
                    return Err(AppError::user_not_found(user_id.as_str()));
                }
            }
        }
        Ok(scope)
    }
}

fn scope_user(scope: &StatsScope) -> Option<String> {
    match scope {
        StatsScope::User(user_id) => Some(user_id.to_string()),
        StatsScope::All => None,
    }
}
