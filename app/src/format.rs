//! Formatting numbers and times for people.

use chrono::{DateTime, Utc};

/// `1234567` → `"1,234,567"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Basis points as a percentage with two decimals: `1234` → `"12.34 %"`.
pub fn percent(bps: u64) -> String {
    format!("{}.{:02} %", thousands(bps / 100), bps % 100)
}

/// A UTC time as `2026-11-22 21:30:05 UTC`.
pub fn utc(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(percent(1_234), "12.34 %");
        assert_eq!(percent(5), "0.05 %");
        assert_eq!(percent(15_000), "150.00 %");
    }
}
