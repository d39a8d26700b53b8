//! The operations behind both the REST API and the server functions: authorize the caller,
//! validate, call the store, map errors. One place, so the two entry points cannot drift apart
//! and no entry point can forget the access check.

pub mod auth;
pub mod invoke;
pub mod stats;

use std::sync::Arc;

use chrono::Utc;
use domain::api::{
    CreateUserBody, CreatedUserView, RecordUsageBody, RecordUsageView, SetLimitBody, UserPageView,
    UserView,
};
use domain::{
    Action, Caller, Denied, IdempotencyKey, SortDirection, UsageSource, UserId, UserQuery,
    UserSortKey, authorize, sort_users,
};

use crate::credentials;
use crate::error::{AppError, ErrorKind};
use crate::ports::{AuthStore, Ledger, LedgerError};

pub use auth::{AuthSettings, Identity};
pub use invoke::{CallEvent, ModelEntry, Models, RunningCall};

/// Everything a request needs, handed to pages, server functions and REST handlers alike.
#[derive(Clone)]
pub struct Services {
    pub ledger: Arc<dyn Ledger>,
    pub auth: Arc<dyn AuthStore>,
    pub settings: Arc<AuthSettings>,
    pub models: Arc<invoke::Models>,
}

impl From<Denied> for AppError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::AdminOnly => AppError::new(
                ErrorKind::Forbidden,
                "admin_only",
                "Only an administrator can do this.",
            ),
            Denied::NotYours => AppError::new(
                ErrorKind::Forbidden,
                "forbidden",
                "You don't have access to this user's data.",
            ),
        }
    }
}

/// Asks the policy; a refusal becomes a 403 before anything is read or written.
pub fn allow(caller: &Caller, action: Action<'_>) -> Result<(), AppError> {
    authorize(caller, action).map_err(AppError::from)
}

impl From<LedgerError> for AppError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::UserNotFound => {
                AppError::new(ErrorKind::NotFound, "user_not_found", "There is no user with that id.")
            }
            LedgerError::UserExists => AppError::new(
                ErrorKind::Conflict,
                "user_exists",
                "A user with that id already exists. Choose another id.",
            )
            .with_field("userId"),
            LedgerError::KeyReused => AppError::new(
                ErrorKind::Conflict,
                "idempotency_key_reused",
                "This Idempotency-Key was already used for a different usage report. Use a new key for a new report.",
            )
            .with_field("Idempotency-Key"),
            LedgerError::LimitReached { remaining } => {
                let mut e = AppError::new(
                    ErrorKind::LimitReached,
                    "token_limit_exceeded",
                    format!(
                        "Not enough tokens left for this call: {remaining} remaining. Ask an administrator to raise the limit."
                    ),
                );
                e.remaining_tokens = Some(remaining);
                e
            }
            LedgerError::CounterOverflow => AppError::new(
                ErrorKind::Invalid,
                "counter_overflow",
                "Recording this many tokens would overflow the user's counters.",
            )
            .with_field("tokensConsumed"),
            LedgerError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                AppError::unavailable()
            }
            LedgerError::Internal(cause) => {
                tracing::error!(%cause, "ledger error");
                AppError::internal()
            }
        }
    }
}

fn not_found_as(user_id: &UserId) -> impl FnOnce(LedgerError) -> AppError + '_ {
    move |e| match e {
        LedgerError::UserNotFound => AppError::user_not_found(user_id.as_str()),
        other => other.into(),
    }
}

pub fn parse_user_id(raw: &str) -> Result<UserId, AppError> {
    Ok(UserId::parse(raw)?)
}

impl Services {
    /// Creates a user with a password: the one in the request, or a generated one that is
    /// answered this once.
    pub async fn create_user(
        &self,
        caller: &Caller,
        body: &CreateUserBody,
    ) -> Result<CreatedUserView, AppError> {
        allow(caller, Action::CreateUser)?;
        let new_user = body.validate()?;
        let (password, generated) = match &body.password {
            Some(p) => (p.clone(), None),
            None => {
                let p = credentials::generate_password();
                (p.clone(), Some(p))
            }
        };
        let hash = credentials::hash_password(password).await?;
        let created = self
            .auth
            .create_user_with_password(new_user, &hash, Utc::now())
            .await?;
        Ok(CreatedUserView {
            user: created.into(),
            initial_password: generated,
        })
    }

    pub async fn get_user(&self, caller: &Caller, user_id: &UserId) -> Result<UserView, AppError> {
        allow(caller, Action::ReadUser(user_id))?;
        match self.ledger.get_user(user_id).await? {
            Some(user) => Ok(user.into()),
            None => Err(AppError::user_not_found(user_id.as_str())),
        }
    }

    /// One page of the user list, filtered and sorted.
    pub async fn list_users_page(
        &self,
        caller: &Caller,
        query: &UserQuery,
    ) -> Result<UserPageView, AppError> {
        allow(caller, Action::ListUsers)?;
        query.validate()?;
        let (page, info) = self.ledger.list_users_page(query).await?;
        Ok(UserPageView {
            users: page.iter().map(UserView::from).collect(),
            page: info,
        })
    }

    pub async fn list_users(
        &self,
        caller: &Caller,
        key: UserSortKey,
        direction: SortDirection,
        filter: &str,
    ) -> Result<Vec<UserView>, AppError> {
        allow(caller, Action::ListUsers)?;
        UserQuery {
            filter: filter.to_owned(),
            ..UserQuery::default()
        }
        .validate()?;
        let mut users = self.ledger.list_users().await?;
        users.retain(|u| domain::matches_filter(u, filter));
        sort_users(&mut users, key, direction);
        Ok(users.iter().map(UserView::from).collect())
    }

    pub async fn set_limit(
        &self,
        caller: &Caller,
        user_id: &UserId,
        body: &SetLimitBody,
    ) -> Result<UserView, AppError> {
        allow(caller, Action::SetLimit(user_id))?;
        let limit = body.validate()?;
        let updated = self
            .ledger
            .set_limit(user_id, limit, Utc::now())
            .await
            .map_err(not_found_as(user_id))?;
        Ok(updated.into())
    }

    /// Records a usage report. Without an idempotency key from the caller a fresh one is made,
    /// so the report is recorded exactly once for this call.
    pub async fn record_usage(
        &self,
        caller: &Caller,
        user_id: UserId,
        body: &RecordUsageBody,
        source: UsageSource,
        idempotency_key: Option<&str>,
    ) -> Result<RecordUsageView, AppError> {
        allow(caller, Action::RecordUsage(&user_id))?;
        let key = match idempotency_key {
            Some(raw) => IdempotencyKey::parse(raw)?,
            None => IdempotencyKey::parse(&format!("auto-{}", fresh_key()))?,
        };
        let mut usage = body.validate(user_id.clone(), source, key)?;
        // A report naming a priced model is charged at today's price.
        usage.cost_picos = usage
            .model
            .as_ref()
            .and_then(|m| self.models.prices().price_at(m, Utc::now()))
            .map(|p| p.cost_picos(&usage.as_call_usage()))
            .unwrap_or(0);
        let recorded = self
            .ledger
            .record_usage(usage)
            .await
            .map_err(not_found_as(&user_id))?;
        Ok(RecordUsageView {
            user: UserView::from(&recorded.user),
            event_id: recorded.event_id,
            tokens_recorded: recorded.tokens,
            replayed: recorded.replayed,
        })
    }

    pub async fn healthy(&self) -> bool {
        self.ledger.ping().await
    }
}

/// A random (v4) UUID: 122 random bits, so no two calls anywhere produce the same key.
fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}
