//! Who is calling: logging in and out, sessions, API keys, passwords, and the failed-login
//! throttle. The same operations serve the REST API, the server functions and the CLI.

use chrono::{DateTime, Duration, Utc};
use domain::access::{LoginThrottle, validate_password};
use domain::api::{
    ApiKeyView, CreateApiKeyBody, CreatedApiKeyView, DemoLoginView, LoginBody, MeView,
    SetPasswordBody,
};
use domain::{Action, Caller, Credential, Role, UserId};

use super::{Services, allow};
use crate::credentials;
use crate::error::{AppError, ErrorKind};
use crate::ports::{NewKey, Principal, StoredKey};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tm_session";

/// How sessions and logins behave.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// A session ends this long after login, whatever happens.
    pub session_ttl: Duration,
    pub throttle: LoginThrottle,
    /// Demo accounts whose passwords the login page shows; empty outside demo mode.
    pub demo_logins: Vec<DemoLoginView>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::hours(12),
            throttle: LoginThrottle::default(),
            demo_logins: Vec::new(),
        }
    }
}

/// What the server found out about the caller of one request, before any handler runs.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No credentials were sent (or only a stale session cookie).
    Anonymous,
    /// An `Authorization` header was sent but is not a valid key.
    Rejected(AppError),
    Known {
        caller: Caller,
        display_name: String,
    },
}

impl Identity {
    /// The caller, or 401.
    pub fn require(&self) -> Result<&Caller, AppError> {
        match self {
            Self::Known { caller, .. } => Ok(caller),
            Self::Rejected(e) => Err(e.clone()),
            Self::Anonymous => Err(AppError::unauthenticated()),
        }
    }

    pub fn me(&self) -> Option<MeView> {
        match self {
            Self::Known {
                caller,
                display_name,
            } => Some(MeView {
                user_id: caller.user_id.to_string(),
                display_name: display_name.clone(),
                role: caller.role,
            }),
            _ => None,
        }
    }
}

fn known(principal: Principal, scopes: Vec<domain::Scope>, credential: Credential) -> Identity {
    Identity::Known {
        caller: Caller {
            user_id: principal.user_id,
            role: principal.role,
            scopes,
            credential,
        },
        display_name: principal.display_name,
    }
}

fn invalid_credentials() -> AppError {
    AppError::new(
        ErrorKind::Unauthenticated,
        "invalid_credentials",
        "The user id or password is wrong.",
    )
}

fn key_view(key: StoredKey) -> ApiKeyView {
    ApiKeyView {
        key_id: key.key_id,
        user_id: key.user_id.to_string(),
        name: key.name,
        prefix: key.prefix,
        scopes: key.scopes,
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        revoked_at: key.revoked_at,
    }
}

/// A successful login: the session token for the cookie (shown to no one else) and who it is.
pub struct LoggedIn {
    pub token: String,
    pub me: MeView,
    pub expires_at: DateTime<Utc>,
}

impl Services {
    /// The caller behind a session cookie's token; anonymous when it is unknown or expired.
    pub async fn identify_session(&self, token: &str) -> Result<Identity, AppError> {
        let found = self
            .auth
            .session_principal(&credentials::digest(token), Utc::now())
            .await?;
        Ok(match found {
            Some(p) => known(p, Vec::new(), Credential::Session),
            None => Identity::Anonymous,
        })
    }

    /// The caller behind an `Authorization` header value.
    pub async fn identify_bearer(&self, header: &str) -> Result<Identity, AppError> {
        let rejected = |message: &str| {
            Identity::Rejected(AppError::new(
                ErrorKind::Unauthenticated,
                "invalid_api_key",
                message,
            ))
        };
        let Some(key) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Ok(rejected(
                "Send the API key as 'Authorization: Bearer <key>'.",
            ));
        };
        let key = key.trim();
        if !key.starts_with(credentials::API_KEY_PREFIX) || key.len() > 200 {
            return Ok(rejected("That is not a tokenmeter API key."));
        }
        let found = self
            .auth
            .api_key_principal(&credentials::digest(key), Utc::now())
            .await?;
        Ok(match found {
            Some((p, stored)) => known(p, stored.scopes, Credential::ApiKey),
            None => rejected("This API key is unknown or has been revoked."),
        })
    }

    /// Checks a password and opens a session. Refuses with 429 while the account or the
    /// address has too many recent failures, without even looking at the password.
    pub async fn login(
        &self,
        body: &LoginBody,
        client_addr: &str,
        replaces_session: Option<&str>,
    ) -> Result<LoggedIn, AppError> {
        let user_id = UserId::parse(body.user_id.trim()).map_err(|_| invalid_credentials())?;
        let now = Utc::now();
        let throttle = self.settings.throttle;
        let account_subject = format!("account:{user_id}");
        let address_subject = format!("address:{client_addr}");
        let since = now - Duration::seconds(throttle.window_seconds.into());
        let account_failures = self
            .auth
            .count_login_failures(&account_subject, since)
            .await?;
        let address_failures = self
            .auth
            .count_login_failures(&address_subject, since)
            .await?;
        if !throttle.allows(account_failures, address_failures) {
            return Err(AppError::new(
                ErrorKind::LimitReached,
                "too_many_login_attempts",
                format!(
                    "Too many failed logins. Wait {} minutes and try again.",
                    throttle.window_seconds / 60
                ),
            ));
        }
        let record = self.auth.login_record(&user_id).await?;
        let (principal, hash) = match record {
            Some((p, h)) => (Some(p), h),
            None => (None, None),
        };
        let ok = credentials::verify_password(body.password.clone(), hash).await;
        let principal = match (ok, principal) {
            (true, Some(p)) => p,
            _ => {
                self.auth
                    .record_login_failure(&[&account_subject, &address_subject], now, since)
                    .await?;
                return Err(invalid_credentials());
            }
        };
        self.auth.clear_login_failures(&account_subject).await?;
        // A fresh token every time: a session id planted before login is never promoted.
        if let Some(old) = replaces_session {
            self.auth.delete_session(&credentials::digest(old)).await?;
        }
        let token = credentials::new_session_token();
        let expires_at = now + self.settings.session_ttl;
        self.auth
            .create_session(
                &credentials::digest(&token),
                &principal.user_id,
                now,
                expires_at,
            )
            .await?;
        Ok(LoggedIn {
            token,
            me: MeView {
                user_id: principal.user_id.to_string(),
                display_name: principal.display_name,
                role: principal.role,
            },
            expires_at,
        })
    }

    /// Ends the session behind a cookie token (nothing happens for an unknown one).
    pub async fn logout(&self, token: &str) -> Result<(), AppError> {
        Ok(self
            .auth
            .delete_session(&credentials::digest(token))
            .await?)
    }

    /// Sets a password: an admin for anyone; a user for themselves, with the current password,
    /// from a browser session. Every session of that account ends.
    pub async fn set_password(
        &self,
        caller: &Caller,
        user_id: &UserId,
        body: &SetPasswordBody,
    ) -> Result<(), AppError> {
        if allow(caller, Action::ResetPassword(user_id)).is_err() {
            allow(caller, Action::ChangeOwnPassword(user_id))?;
            let current = body.current_password.clone().ok_or_else(|| {
                AppError::new(
                    ErrorKind::Invalid,
                    "current_password_required",
                    "Enter your current password to set a new one.",
                )
                .with_field("currentPassword")
            })?;
            let hash = self.auth.login_record(user_id).await?.and_then(|(_, h)| h);
            if !credentials::verify_password(current, hash).await {
                return Err(AppError::new(
                    ErrorKind::Invalid,
                    "wrong_current_password",
                    "The current password is wrong.",
                )
                .with_field("currentPassword"));
            }
        }
        validate_password(&body.new_password)?;
        let hash = credentials::hash_password(body.new_password.clone()).await?;
        self.auth
            .set_password_hash(user_id, &hash, Utc::now())
            .await
            .map_err(|e| match e {
                crate::ports::LedgerError::UserNotFound => {
                    AppError::user_not_found(user_id.as_str())
                }
                other => other.into(),
            })
    }

    pub async fn list_api_keys(
        &self,
        caller: &Caller,
        user_id: &UserId,
    ) -> Result<Vec<ApiKeyView>, AppError> {
        allow(caller, Action::ManageKeys(user_id))?;
        self.require_user(user_id).await?;
        let keys = self.auth.list_api_keys(user_id).await?;
        Ok(keys.into_iter().map(key_view).collect())
    }

    /// Creates a key for a user; the secret is in this answer and nowhere else, ever.
    pub async fn create_api_key(
        &self,
        caller: &Caller,
        user_id: &UserId,
        body: &CreateApiKeyBody,
    ) -> Result<CreatedApiKeyView, AppError> {
        allow(caller, Action::ManageKeys(user_id))?;
        let (name, scopes) = body.validate()?;
        if !scopes.is_empty() {
            allow(caller, Action::GrantScopes)?;
        }
        self.require_user(user_id).await?;
        let (key, prefix) = credentials::new_api_key();
        let stored = self
            .auth
            .insert_api_key(
                NewKey {
                    user_id,
                    name: &name,
                    prefix: &prefix,
                    secret_hash: &credentials::digest(&key),
                    scopes: &scopes,
                },
                Utc::now(),
            )
            .await?;
        Ok(CreatedApiKeyView {
            key,
            api_key: key_view(stored),
        })
    }

    pub async fn revoke_api_key(
        &self,
        caller: &Caller,
        user_id: &UserId,
        key_id: i64,
    ) -> Result<ApiKeyView, AppError> {
        allow(caller, Action::ManageKeys(user_id))?;
        match self
            .auth
            .revoke_api_key(user_id, key_id, Utc::now())
            .await?
        {
            Some(key) => Ok(key_view(key)),
            None => Err(AppError::new(
                ErrorKind::NotFound,
                "api_key_not_found",
                "This user has no API key with that id.",
            )),
        }
    }

    /// Makes an account an admin with a fresh password, creating it if needed (bootstrap, CLI
    /// only: there is no caller yet). Answers the new password, to be shown once.
    pub async fn bootstrap_admin(
        &self,
        user_id: &UserId,
        token_limit: domain::TokenLimit,
    ) -> Result<String, AppError> {
        let password = credentials::generate_password();
        let hash = credentials::hash_password(password.clone()).await?;
        let now = Utc::now();
        if self.ledger.get_user(user_id).await?.is_some() {
            self.auth.set_role(user_id, Role::Admin).await?;
            self.auth.set_password_hash(user_id, &hash, now).await?;
        } else {
            let user =
                domain::NewUser::new(user_id.clone(), None, token_limit).with_role(Role::Admin);
            self.auth
                .create_user_with_password(user, &hash, now)
                .await?;
        }
        Ok(password)
    }

    /// Creates an API key on the operator's say-so (CLI only), e.g. for CI or a backend.
    pub async fn bootstrap_api_key(
        &self,
        user_id: &UserId,
        body: &CreateApiKeyBody,
    ) -> Result<CreatedApiKeyView, AppError> {
        let system = Caller {
            user_id: user_id.clone(),
            role: Role::Admin,
            scopes: Vec::new(),
            credential: Credential::Session,
        };
        self.create_api_key(&system, user_id, body).await
    }

    /// The demo accounts to show on the login page (empty unless in demo mode).
    pub fn demo_logins(&self) -> Vec<DemoLoginView> {
        self.settings.demo_logins.clone()
    }

    async fn require_user(&self, user_id: &UserId) -> Result<(), AppError> {
        match self.ledger.get_user(user_id).await? {
            Some(_) => Ok(()),
            None => Err(AppError::user_not_found(user_id.as_str())),
        }
    }
}

/// Facts about the request the authentication layer notes for handlers: the client's address
/// (for the login throttle), whether it came over TLS (for the cookie's `Secure` flag) and the
/// session token it presented, if any.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client_addr: String,
    pub secure: bool,
    pub session_token: Option<String>,
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script can read it), SameSite=Lax
/// (not sent on cross-site posts), Secure over TLS, expiring with the session.
pub fn session_cookie(token: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        ttl.num_seconds(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn cleared_session_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Where a role lands after logging in: admins on the user list, users on their dashboard.
pub fn start_page(role: Role) -> &'static str {
    match role {
        Role::Admin => "/users",
        Role::User => "/",
    }
}

/// The session token in a `Cookie` header, if any.
pub fn session_token_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}
