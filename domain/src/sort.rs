use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::UserUsage;

/// What a list of users can be ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UserSortKey {
    UserId,
    Name,
    Usage,
    Limit,
    Percentage,
    Remaining,
    LastUpdated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SortDirection {
    #[default]
    Asc,
    Desc,
}

impl UserSortKey {
    /// Compares two users by this key alone.
    pub fn compare(self, a: &UserUsage, b: &UserUsage) -> Ordering {
        match self {
            Self::UserId => a.user_id.cmp(&b.user_id),
            Self::Name => a
                .display_name
                .as_str()
                .to_lowercase()
                .cmp(&b.display_name.as_str().to_lowercase()),
            Self::Usage => a.tokens_used.cmp(&b.tokens_used),
            Self::Limit => a.token_limit.cmp(&b.token_limit),
            // Exact: compares used_a/limit_a with used_b/limit_b by cross-multiplication, so two
            // users whose shares round to the same basis point still order correctly.
            Self::Percentage => (a.tokens_used as u128 * b.token_limit.get() as u128)
                .cmp(&(b.tokens_used as u128 * a.token_limit.get() as u128)),
            Self::Remaining => a.remaining().cmp(&b.remaining()),
            Self::LastUpdated => a.updated_at.cmp(&b.updated_at),
        }
    }
}

/// Sorts users by `key` in `direction`; ties are broken by user id ascending, so the order is
/// total and the same on every call (stable pagination).
pub fn sort_users(users: &mut [UserUsage], key: UserSortKey, direction: SortDirection) {
    users.sort_by(|a, b| {
        let by_key = match direction {
            SortDirection::Asc => key.compare(a, b),
            SortDirection::Desc => key.compare(b, a),
        };
        by_key.then_with(|| a.user_id.cmp(&b.user_id))
    });
}
