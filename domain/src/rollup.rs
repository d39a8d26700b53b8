//! Usage rollups: per user and period (UTC day, ISO week, calendar month) the sums of the
//! ledger's events. The reference computation lives here, pure, so the store's incremental
//! aggregator can be checked against it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A rollup period. Weeks are ISO weeks (Monday to Sunday); all in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "day" | "daily" => Ok(Self::Day),
            "week" | "weekly" => Ok(Self::Week),
            "month" | "monthly" => Ok(Self::Month),
            _ => Err(ValidationError::new(
                "period",
                "invalid_period",
                "period must be day, week or month.",
            )),
        }
    }

    /// The first day of the period that contains `at`.
    pub fn bucket(self, at: DateTime<Utc>) -> NaiveDate {
        let day = at.date_naive();
        match self {
            Self::Day => day,
            Self::Week => day
                .checked_sub_days(Days::new(day.weekday().num_days_from_monday() as u64))
                .unwrap_or(day),
            Self::Month => day.with_day(1).unwrap_or(day),
        }
    }
}

/// What the rollups need to know of one ledger event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFacts {
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: u64,
    pub model: Option<String>,
    pub conversation: Option<String>,
    pub agent: Option<String>,
}

/// One user's sums over one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: u64,
    pub messages: u64,
    pub conversations: u64,
    pub agents: u64,
    pub models: u64,
    pub last_activity: Option<DateTime<Utc>>,
}

/// (user, period, first day of the period)
pub type RollupKey = (String, Period, NaiveDate);

/// The rollups of a set of events, computed from scratch: the definition the store must match.
pub fn rollups_of(events: &[EventFacts]) -> BTreeMap<RollupKey, Rollup> {
    type Members = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);
    let mut sums: BTreeMap<RollupKey, (Rollup, Members)> = BTreeMap::new();
    for e in events {
        for period in Period::ALL {
            let key = (e.user_id.clone(), period, period.bucket(e.at));
            let (r, (conversations, agents, models)) = sums.entry(key).or_default();
            r.input_tokens += e.input_tokens;
            r.output_tokens += e.output_tokens;
            r.total_tokens += e.total_tokens;
            r.cost_picos += e.cost_picos;
            r.messages += 1;
            r.last_activity = r.last_activity.max(Some(e.at));
            conversations.extend(e.conversation.clone());
            agents.extend(e.agent.clone());
            models.extend(e.model.clone());
        }
    }
    sums.into_iter()
        .map(|(key, (mut r, (c, a, m)))| {
            r.conversations = c.len() as u64;
            r.agents = a.len() as u64;
            r.models = m.len() as u64;
            (key, r)
        })
        .collect()
}
