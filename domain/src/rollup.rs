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

    /// The last day of the period that starts on `bucket`.
    pub fn last_day(self, bucket: NaiveDate) -> NaiveDate {
        match self {
            Self::Day => bucket,
            Self::Week => bucket.checked_add_days(Days::new(6)).unwrap_or(bucket),
            Self::Month => bucket
                .checked_add_months(chrono::Months::new(1))
                .and_then(|next| next.pred_opt())
                .unwrap_or(bucket),
        }
    }

    /// The first day of the period that contains `at`.
    pub fn bucket(self, at: DateTime<Utc>) -> NaiveDate {
        self.bucket_of_day(at.date_naive())
    }

    /// The first day of the period that contains `day`.
    pub fn bucket_of_day(self, day: NaiveDate) -> NaiveDate {
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
    pub prompt: Option<String>,
}

impl EventFacts {
    /// An event's input and output tokens from its total and the parts the reporter knew:
    /// an unknown part is what the known one leaves, and with neither known it all counts as
    /// input (as for pricing). The two always add up to the total.
    pub fn split(total: u64, input: Option<u64>, output: Option<u64>) -> (u64, u64) {
        match (input, output) {
            (_, Some(o)) => (total.saturating_sub(o), o.min(total)),
            (Some(i), None) => (i.min(total), total - i.min(total)),
            (None, None) => (total, 0),
        }
    }

    /// The value of one dimension, if the event has it.
    pub fn value_of(&self, dimension: Dimension) -> Option<&str> {
        match dimension {
            Dimension::Conversation => self.conversation.as_deref(),
            Dimension::Agent => self.agent.as_deref(),
            Dimension::Model => self.model.as_deref(),
            Dimension::Prompt => self.prompt.as_deref(),
        }
    }
}

/// What else than time usage is grouped by: the ids events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Conversation,
    Agent,
    Model,
    Prompt,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::Conversation,
        Dimension::Agent,
        Dimension::Model,
        Dimension::Prompt,
    ];

    /// The code stored in the database.
    pub fn code(self) -> &'static str {
        match self {
            Self::Conversation => "c",
            Self::Agent => "a",
            Self::Model => "m",
            Self::Prompt => "p",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.code() == code)
    }
}

/// The additive part of a rollup: what a batch of events adds to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: u64,
    pub messages: u64,
    pub last_activity: Option<DateTime<Utc>>,
}

impl Sums {
    pub fn add_event(&mut self, e: &EventFacts) {
        self.input_tokens += e.input_tokens;
        self.output_tokens += e.output_tokens;
        self.total_tokens += e.total_tokens;
        self.cost_picos += e.cost_picos;
        self.messages += 1;
        self.last_activity = self.last_activity.max(Some(e.at));
    }

    pub fn merge(&mut self, other: &Sums) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_picos += other.cost_picos;
        self.messages += other.messages;
        self.last_activity = self.last_activity.max(other.last_activity);
    }
}

/// The member value standing for "events without this dimension".
pub const NO_VALUE: &str = "";

/// (user, day): one user's events of one UTC day.
pub type DayKey = (String, NaiveDate);

/// (user, day, dimension, value): one conversation, agent, model or prompt seen in a user's
/// day, with its own sums.
pub type MemberKey = (String, NaiveDate, Dimension, String);

/// What a batch of events adds to the stored days: each user's day sums, and the sums of every
/// conversation, agent, model and prompt of that day. Only days are stored; a week's or a
/// month's rollup is made of its days when asked ([`Self::to_rollups`]), its distinct counts
/// from its days' members. The aggregator folds each batch of new ledger events into one delta
/// and applies it in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupDelta {
    pub days: BTreeMap<DayKey, Sums>,
    pub members: BTreeMap<MemberKey, Sums>,
}

impl RollupDelta {
    pub fn of(events: &[EventFacts]) -> Self {
        let mut delta = Self::default();
        for e in events {
            delta.add(e);
        }
        delta
    }

    pub fn add(&mut self, e: &EventFacts) {
        let day = e.at.date_naive();
        self.days
            .entry((e.user_id.clone(), day))
            .or_default()
            .add_event(e);
        // Events without a value are kept under "" (never a valid id), so a grouping by model
        // still adds up to the whole; distinct counts skip it.
        for dimension in Dimension::ALL {
            let value = e.value_of(dimension).unwrap_or(NO_VALUE);
            self.members
                .entry((e.user_id.clone(), day, dimension, value.to_owned()))
                .or_default()
                .add_event(e);
        }
    }

    /// Adds another delta (a later batch) to this one.
    pub fn merge(&mut self, other: &RollupDelta) {
        for (key, sums) in &other.days {
            self.days.entry(key.clone()).or_default().merge(sums);
        }
        for (key, sums) in &other.members {
            self.members.entry(key.clone()).or_default().merge(sums);
        }
    }

    /// Every period's rollups made of these days: a week's or a month's sums are its days'
    /// sums, its distinct conversations, agents and models the distinct members (with a value)
    /// of its days. The statistics compute the same in SQL.
    pub fn to_rollups(&self) -> BTreeMap<RollupKey, Rollup> {
        let mut sums: BTreeMap<RollupKey, Sums> = BTreeMap::new();
        for ((user, day), s) in &self.days {
            for period in Period::ALL {
                sums.entry((user.clone(), period, period.bucket_of_day(*day)))
                    .or_default()
                    .merge(s);
            }
        }
        let mut out: BTreeMap<RollupKey, Rollup> = sums
            .iter()
            .map(|(key, s)| (key.clone(), Rollup::from_sums(s)))
            .collect();
        let mut seen = BTreeSet::new();
        for (user, day, dimension, value) in self.members.keys() {
            if value == NO_VALUE {
                continue;
            }
            for period in Period::ALL {
                let key = (user.clone(), period, period.bucket_of_day(*day));
                if !seen.insert((key.clone(), *dimension, value.clone())) {
                    continue;
                }
                if let Some(r) = out.get_mut(&key) {
                    match dimension {
                        Dimension::Conversation => r.conversations += 1,
                        Dimension::Agent => r.agents += 1,
                        Dimension::Model => r.models += 1,
                        Dimension::Prompt => {}
                    }
                }
            }
        }
        out
    }
}

/// A hash map with a fast, non-cryptographic hasher: folding looks up five keys per event, and
/// the keys are ids and days, not input an attacker could shape into collisions that matter
/// (one fold's keys are one batch of the ledger).
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Folds many events into the [`RollupDelta`] that adding them one by one gives, several times
/// faster (backfills and checks fold millions): ids are numbered once and sums are kept in hash
/// maps, sorted into the delta's maps once at the end.
#[derive(Debug, Default)]
pub struct DeltaBuilder {
    users: Names,
    values: Names,
    days: FastMap<(u32, NaiveDate), Sums>,
    members: FastMap<(u32, NaiveDate, Dimension, u32), Sums>,
}

/// Strings numbered in the order they are first seen.
#[derive(Debug, Default)]
struct Names {
    numbers: FastMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn number(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.numbers.get(name) {
            return n;
        }
        let n = self.names.len() as u32;
        self.numbers.insert(name.to_owned(), n);
        self.names.push(name.to_owned());
        n
    }

    /// Each number's rank in the names' sorted order.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut ranks = vec![0; order.len()];
        for (rank, n) in order.into_iter().enumerate() {
            ranks[n as usize] = rank as u32;
        }
        ranks
    }
}

impl DeltaBuilder {
    pub fn add(&mut self, e: &EventFacts) {
        let user = self.users.number(&e.user_id);
        let day = Period::Day.bucket(e.at);
        self.days.entry((user, day)).or_default().add_event(e);
        for dimension in Dimension::ALL {
            let value = self
                .values
                .number(e.value_of(dimension).unwrap_or(NO_VALUE));
            self.members
                .entry((user, day, dimension, value))
                .or_default()
                .add_event(e);
        }
    }

    pub fn finish(self) -> RollupDelta {
        let Self {
            users,
            values,
            days,
            members,
        } = self;
        let days = days
            .into_iter()
            .map(|((user, day), sums)| ((users.names[user as usize].clone(), day), sums))
            .collect();
        // Sorted by numbers that follow the names' order, the members go into the map in key
        // order (built in one pass, without comparing strings again).
        let (user_rank, value_rank) = (users.ranks(), values.ranks());
        let mut members: Vec<_> = members.into_iter().collect();
        members.sort_unstable_by_key(|((user, day, dimension, value), _)| {
            (
                user_rank[*user as usize],
                *day,
                *dimension,
                value_rank[*value as usize],
            )
        });
        let members = members
            .into_iter()
            .map(|((user, day, dimension, value), sums)| {
                (
                    (
                        users.names[user as usize].clone(),
                        day,
                        dimension,
                        values.names[value as usize].clone(),
                    ),
                    sums,
                )
            })
            .collect();
        RollupDelta { days, members }
    }
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

impl Rollup {
    /// A rollup with these sums and no distinct counts yet.
    pub fn from_sums(s: &Sums) -> Self {
        Self {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            total_tokens: s.total_tokens,
            cost_picos: s.cost_picos,
            messages: s.messages,
            last_activity: s.last_activity,
            ..Self::default()
        }
    }
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

/// A day range cut into batches of at most `days` days, in order, covering it exactly. No batch
/// crosses a month's end, so a backfill's progress reads in calendar months; with `days` ≥ 31
/// every batch is a calendar month (cut to the range at its ends).
pub fn day_batches(from: NaiveDate, to: NaiveDate, days: u32) -> Vec<(NaiveDate, NaiveDate)> {
    let mut batches = Vec::new();
    let mut start = from;
    while start <= to {
        let end = start
            .checked_add_days(Days::new(days.max(1) as u64 - 1))
            .unwrap_or(to)
            .min(Period::Month.last_day(Period::Month.bucket_of_day(start)))
            .min(to);
        batches.push((start, end));
        match end.succ_opt() {
            Some(next) => start = next,
            None => break,
        }
    }
    batches
}
