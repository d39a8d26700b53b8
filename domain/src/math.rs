//! Usage math. Integers only: token counts are `u64`, shares are basis points (1/100 of a percent).

/// Basis points in 100 %.
pub const FULL_BPS: u64 = 10_000;

/// Tokens still available: `max(limit - used, 0)`.
pub fn remaining_tokens(used: u64, limit: u64) -> u64 {
    limit.saturating_sub(used)
}

/// Share of `limit` used, in basis points, rounded **down**.
///
/// Rounding down means a user is shown 100 % only once the limit is really reached (99.999 % shows
/// as 99.99 %). The result may exceed 10 000 when usage is above the limit, for example after an
/// admin lowered the limit below current usage. A zero limit (never valid for a stored user, but
/// total here) counts as fully used: 10 000 if nothing was used, otherwise the share saturates.
/// Never panics; computed in `u128` so `used * 10_000` cannot overflow.
pub fn used_basis_points(used: u64, limit: u64) -> u64 {
    if limit == 0 {
        return if used == 0 { FULL_BPS } else { u64::MAX };
    }
    let bps = (used as u128 * FULL_BPS as u128) / limit as u128;
    u64::try_from(bps).unwrap_or(u64::MAX)
}

/// The percentage to show, with two decimals, derived from [`used_basis_points`].
/// For display only; never used for accounting.
pub fn percentage_from_bps(bps: u64) -> f64 {
    bps as f64 / 100.0
}

/// How close a user is to their limit, for colours and warnings.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum UsageLevel {
    /// Below 75 %.
    Normal,
    /// From 75 % (inclusive) to below 90 %.
    Warning,
    /// From 90 % (inclusive) to below 100 %.
    Critical,
    /// 100 % or more: no tokens remain.
    Exhausted,
}

impl UsageLevel {
    pub const WARNING_BPS: u64 = 7_500;
    pub const CRITICAL_BPS: u64 = 9_000;

    /// The level for a usage share; monotonic in `bps`.
    pub fn from_bps(bps: u64) -> Self {
        match bps {
            b if b >= FULL_BPS => Self::Exhausted,
            b if b >= Self::CRITICAL_BPS => Self::Critical,
            b if b >= Self::WARNING_BPS => Self::Warning,
            _ => Self::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Exhausted => "exhausted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(remaining_tokens(30, 100), 70);
        assert_eq!(remaining_tokens(130, 100), 0);
        assert_eq!(used_basis_points(1, 3), 3_333);
        assert_eq!(used_basis_points(99_999, 100_000), 9_999);
        assert_eq!(used_basis_points(100, 100), 10_000);
        assert_eq!(used_basis_points(150, 100), 15_000);
        assert_eq!(used_basis_points(u64::MAX, 1), u64::MAX);
        assert_eq!(UsageLevel::from_bps(7_499), UsageLevel::Normal);
        assert_eq!(UsageLevel::from_bps(7_500), UsageLevel::Warning);
        assert_eq!(UsageLevel::from_bps(9_000), UsageLevel::Critical);
        assert_eq!(UsageLevel::from_bps(10_000), UsageLevel::Exhausted);
    }
}
