//! Property tests for the access policy: whatever the ids, roles and scopes, a non-admin never
//! touches another user's data, never changes a limit, and never reports usage without the
//! `usage:record` scope; redirects after login never leave the site.

use domain::access::{LoginThrottle, safe_next_path};
use domain::{Action, Caller, Credential, Denied, Role, Scope, UserId, authorize};
use proptest::prelude::*;

fn user_id() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9._@-]{1,12}".prop_map(|s| UserId::parse(&s).expect("valid id"))
}

fn caller(role: impl Strategy<Value = Role>) -> impl Strategy<Value = Caller> {
    (
        user_id(),
        role,
        proptest::collection::vec(Just(Scope::UsageRecord), 0..2),
        prop_oneof![Just(Credential::Session), Just(Credential::ApiKey)],
    )
        .prop_map(|(user_id, role, scopes, credential)| Caller {
            user_id,
            role,
            scopes,
            credential,
        })
}

fn any_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::User)]
}

fn every_action(target: &UserId) -> Vec<Action<'_>> {
    vec![
        Action::ListUsers,
        Action::CreateUser,
        Action::ReadUser(target),
        Action::SetLimit(target),
        Action::RecordUsage(target),
        Action::ManageKeys(target),
        Action::GrantScopes,
        Action::ResetPassword(target),
        Action::ChangeOwnPassword(target),
        Action::InvokeModel(target),
        Action::ReadSystemStatus,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An admin may do everything to anyone.
    #[test]
    fn admins_may_do_everything(admin in caller(Just(Role::Admin)), target in user_id()) {
        for action in every_action(&target) {
            prop_assert_eq!(authorize(&admin, action), Ok(()));
        }
    }

    /// A user touches another user's data only to report usage, and only with the scope.
    #[test]
    fn users_never_touch_someone_elses_data(user in caller(Just(Role::User)), target in user_id()) {
        prop_assume!(user.user_id != target);
        for action in every_action(&target) {
            let allowed = authorize(&user, action).is_ok();
            let expected = matches!(action, Action::RecordUsage(_)) && user.has_scope(Scope::UsageRecord);
            prop_assert_eq!(allowed, expected, "{:?}", action);
        }
    }

    /// Nobody but an admin raises a limit, including their own; usage is reported only by an
    /// admin or a recording key.
    #[test]
    fn limits_and_usage_are_not_self_service(c in caller(any_role())) {
        let own = c.user_id.clone();
        let set = authorize(&c, Action::SetLimit(&own));
        prop_assert_eq!(set.is_ok(), c.role == Role::Admin);
        if c.role == Role::User {
            prop_assert_eq!(set, Err(Denied::AdminOnly));
        }
        let record = authorize(&c, Action::RecordUsage(&own)).is_ok();
        prop_assert_eq!(record, c.role == Role::Admin || c.has_scope(Scope::UsageRecord));
        // Calling a model spends one's own budget: every signed-in user may, with any credential.
        prop_assert_eq!(authorize(&c, Action::InvokeModel(&own)), Ok(()));
    }

    /// A next-path accepted after login starts with one '/' and is a path on this site.
    #[test]
    fn next_paths_never_leave_the_site(raw in "\\PC{0,40}") {
        if let Some(path) = safe_next_path(&raw) {
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.starts_with("//"));
            prop_assert!(!path.contains('\\'));
        }
    }

    /// The throttle refuses once either count reaches its maximum, and only then.
    #[test]
    fn throttle_refuses_at_the_maximum(account in 0u32..50, address in 0u32..50) {
        let t = LoginThrottle::default();
        prop_assert_eq!(
            t.allows(account, address),
            account < t.max_failures_per_account && address < t.max_failures_per_address
        );
    }
}
