//! Who may do what: roles, API key scopes, the caller of a request, and the one policy every
//! entry point (REST, server functions, CLI) asks before it acts.
//!
//! Pure: the server finds out who is calling (session cookie or API key) and hands a [`Caller`]
//! here; nothing in this module trusts anything the browser says about itself.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{UserId, ValidationError};

/// What an account may do. Admins manage everyone; users see and act only on themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            _ => Err(ValidationError::new(
                "role",
                "invalid_role",
                "The role must be \"admin\" or \"user\".",
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extra right an API key can carry beyond its owner's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Report usage for any user: for the organisation's own backends. Only admins grant it.
    #[serde(rename = "usage:record")]
    UsageRecord,
}

impl Scope {
    pub const ALL: [Scope; 1] = [Scope::UsageRecord];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsageRecord => "usage:record",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                ValidationError::new(
                    "scopes",
                    "invalid_scope",
                    format!("Unknown scope {raw:?}. The only scope is \"usage:record\"."),
                )
            })
    }

    /// Parses a space- or comma-separated list, without duplicates, sorted.
    pub fn parse_list(raw: &str) -> Result<Vec<Self>, ValidationError> {
        let mut scopes = raw
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }

    pub fn join(scopes: &[Self]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Credential {
    Session,
    ApiKey,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user_id: UserId,
    pub role: Role,
    /// Extra rights of the API key used; always empty for a browser session.
    pub scopes: Vec<Scope>,
    pub credential: Credential,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is(&self, user_id: &UserId) -> bool {
        &self.user_id == user_id
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Everything the app does on someone's behalf, naming whose data it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    ListUsers,
    CreateUser,
    /// See a user's usage, limit and details.
    ReadUser(&'a UserId),
    /// Change a user's token limit: never one's own unless admin.
    SetLimit(&'a UserId),
    /// Report tokens consumed by a user.
    RecordUsage(&'a UserId),
    /// List, create and revoke a user's API keys.
    ManageKeys(&'a UserId),
    /// Give an API key scopes beyond its owner's role.
    GrantScopes,
    /// Set a user's password without knowing the current one.
    ResetPassword(&'a UserId),
    /// Change one's own password, knowing the current one.
    ChangeOwnPassword(&'a UserId),
    /// Call a model on a user's budget: one's own, or anyone's for an admin.
    InvokeModel(&'a UserId),
    /// See how the system is doing (e.g. how far the usage rollups are behind the ledger).
    ReadSystemStatus,
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Only an admin may do this.
    AdminOnly,
    /// The data belongs to someone else.
    NotYours,
}

/// The policy. Admins may do everything; a user may read their own usage and manage their own
/// keys and password; a key with `usage:record` may report usage for anyone. Nothing lets a
/// non-admin raise a limit or report, lower or erase usage on their own say-so.
pub fn authorize(caller: &Caller, action: Action<'_>) -> Result<(), Denied> {
    if caller.is_admin() {
        return Ok(());
    }
    let own = |target: &UserId| {
        if caller.is(target) {
            Ok(())
        } else {
            Err(Denied::NotYours)
        }
    };
    match action {
        Action::ListUsers
        | Action::CreateUser
        | Action::SetLimit(_)
        | Action::GrantScopes
        | Action::ResetPassword(_)
        | Action::ReadSystemStatus => Err(Denied::AdminOnly),
        Action::RecordUsage(_) if caller.has_scope(Scope::UsageRecord) => Ok(()),
        Action::RecordUsage(_) => Err(Denied::AdminOnly),
        Action::ReadUser(target) | Action::ManageKeys(target) | Action::InvokeModel(target) => {
            own(target)
        }
        Action::ChangeOwnPassword(target) => match caller.credential {
            Credential::Session => own(target),
            // A leaked key must not be enough to take over the account.
            Credential::ApiKey => Err(Denied::NotYours),
        },
    }
}

/// A login password: 8–128 characters. Long passphrases welcome; nothing else is demanded.
pub fn validate_password(raw: &str) -> Result<(), ValidationError> {
    let len = raw.chars().count();
    if len < 8 {
        return Err(ValidationError::new(
            "password",
            "password_too_short",
            "The password must be at least 8 characters long.",
        ));
    }
    if len > 128 {
        return Err(ValidationError::new(
            "password",
            "password_too_long",
            "The password must be at most 128 characters long.",
        ));
    }
    Ok(())
}

/// The name a person gives an API key ("CI", "billing backend"): 1–64 characters, no control
/// characters.
pub fn validate_key_name(raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            "invalid_key_name",
            "Give the key a name of 1 to 64 characters, e.g. \"CI\" or \"billing backend\".",
        ));
    }
    Ok(name.to_owned())
}

/// Where to go after logging in: only a path on this site (`/…`, never `//host` or a scheme),
/// so a crafted link cannot send someone elsewhere. Anything else gives `None`.
pub fn safe_next_path(raw: &str) -> Option<&str> {
    let ok = raw.starts_with('/')
        && !raw.starts_with("//")
        && !raw.starts_with("/\\")
        && raw.len() <= 2048
        && !raw.chars().any(|c| c.is_control() || c == '\\');
    ok.then_some(raw)
}

/// The login page's address that comes back to `wanted` (a path and query on this site)
/// afterwards: `/login?next=<percent-encoded>`; plain `/login` for the start page.
pub fn login_path_for(wanted: &str) -> String {
    if wanted == "/" || safe_next_path(wanted).is_none() {
        return "/login".to_owned();
    }
    format!("/login?next={}", percent_encode(wanted, "/"))
}

/// Percent-encodes text for a URL: unreserved characters (`A-Z a-z 0-9 - _ . ~`) and those in
/// `keep` stay as they are, every other byte becomes `%XX`.
pub fn percent_encode(raw: &str, keep: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.as_bytes().contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How many failed logins are tolerated before further attempts are refused for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    pub max_failures_per_account: u32,
    pub max_failures_per_address: u32,
    pub window_seconds: u32,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            window_seconds: 15 * 60,
        }
    }
}

impl LoginThrottle {
    /// Whether another attempt may be made, given the failures seen in the last window.
    pub fn allows(&self, account_failures: u32, address_failures: u32) -> bool {
        account_failures < self.max_failures_per_account
            && address_failures < self.max_failures_per_address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str, role: Role, scopes: Vec<Scope>, credential: Credential) -> Caller {
        Caller {
            user_id: UserId::parse(id).unwrap(),
            role,
            scopes,
            credential,
        }
    }

    #[test]
    fn a_user_reads_only_their_own_data() {
        let alice = caller("alice", Role::User, vec![], Credential::Session);
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse("bob").unwrap();
        assert_eq!(authorize(&alice, Action::ReadUser(&a)), Ok(()));
        assert_eq!(
            authorize(&alice, Action::ReadUser(&b)),
            Err(Denied::NotYours)
        );
        assert_eq!(
            authorize(&alice, Action::SetLimit(&a)),
            Err(Denied::AdminOnly)
        );
        assert_eq!(
            authorize(&alice, Action::RecordUsage(&a)),
            Err(Denied::AdminOnly)
        );
    }

    #[test]
    fn a_recording_key_records_but_reads_nothing_else() {
        let backend = caller(
            "svc",
            Role::User,
            vec![Scope::UsageRecord],
            Credential::ApiKey,
        );
        let b = UserId::parse("bob").unwrap();
        assert_eq!(authorize(&backend, Action::RecordUsage(&b)), Ok(()));
        assert_eq!(
            authorize(&backend, Action::ReadUser(&b)),
            Err(Denied::NotYours)
        );
        assert_eq!(
            authorize(&backend, Action::SetLimit(&b)),
            Err(Denied::AdminOnly)
        );
    }

    #[test]
    fn next_paths_stay_on_this_site() {
        assert_eq!(safe_next_path("/users/a?x=1"), Some("/users/a?x=1"));
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "users",
            "",
        ] {
            assert_eq!(safe_next_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn login_paths_come_back() {
        assert_eq!(login_path_for("/"), "/login");
        assert_eq!(
            login_path_for("/users/a b?x=1&y"),
            "/login?next=/users/a%20b%3Fx%3D1%26y"
        );
        assert_eq!(login_path_for("//evil"), "/login");
    }

    #[test]
    fn scopes_parse_as_a_set() {
        assert_eq!(
            Scope::parse_list("usage:record, usage:record").unwrap(),
            vec![Scope::UsageRecord]
        );
        assert!(Scope::parse_list("admin").is_err());
    }
}
