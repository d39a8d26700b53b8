//! Usage statistics: what `GET /api/usage/stats` and the CSV export are asked (validated here),
//! and the reference answer computed from raw events, which the store's rollup-based answer
//! must equal.
//!
//! Ranges are whole UTC days, `from` and `to` inclusive. Grouped by week or month, the range
//! grows to whole periods (a week from its Monday, a month from its 1st), so every row is a
//! whole period and the rows add up to the summary.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::listing::{PageInfo, page_bounds};
use crate::pricing::picos_to_micros;
use crate::rollup::{Dimension, EventFacts, Period, Sums};
use crate::{ModelName, SortDirection, UserId, ValidationError};

/// What rows stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Day,
    Week,
    Month,
    Model,
    Agent,
    Prompt,
    User,
}

impl GroupBy {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Ok(match raw {
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "model" => Self::Model,
            "agent" => Self::Agent,
            "prompt" => Self::Prompt,
            "user" => Self::User,
            _ => {
                return Err(ValidationError::new(
                    "groupBy",
                    "invalid_group_by",
                    "groupBy must be day, week, month, model, agent, prompt or user.",
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Model => "model",
            Self::Agent => "agent",
            Self::Prompt => "prompt",
            Self::User => "user",
        }
    }

    /// The period of a grouping by time.
    pub fn period(self) -> Option<Period> {
        match self {
            Self::Day => Some(Period::Day),
            Self::Week => Some(Period::Week),
            Self::Month => Some(Period::Month),
            _ => None,
        }
    }

    /// The dimension of a grouping by model, agent or prompt.
    pub fn dimension(self) -> Option<Dimension> {
        match self {
            Self::Model => Some(Dimension::Model),
            Self::Agent => Some(Dimension::Agent),
            Self::Prompt => Some(Dimension::Prompt),
            _ => None,
        }
    }

    pub fn of_period(period: Period) -> Self {
        match period {
            Period::Day => Self::Day,
            Period::Week => Self::Week,
            Period::Month => Self::Month,
        }
    }
}

/// What rows can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatsSortKey {
    /// The row's date, or its name (model, agent, prompt, user).
    Key,
    Total,
    Input,
    Output,
    Cost,
    Messages,
    Conversations,
    Models,
}

impl StatsSortKey {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Ok(match raw {
            "key" | "date" | "name" => Self::Key,
            "total" => Self::Total,
            "input" => Self::Input,
            "output" => Self::Output,
            "cost" => Self::Cost,
            "messages" => Self::Messages,
            "conversations" => Self::Conversations,
            "models" => Self::Models,
            _ => {
                return Err(ValidationError::new(
                    "sort",
                    "invalid_sort",
                    "sort must be date, name, total, input, output, cost, messages, conversations or models.",
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Total => "total",
            Self::Input => "input",
            Self::Output => "output",
            Self::Cost => "cost",
            Self::Messages => "messages",
            Self::Conversations => "conversations",
            Self::Models => "models",
        }
    }
}

/// Whose usage: one user's, or everyone's (administrators only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatsScope {
    User(UserId),
    All,
}

/// The query string as it arrives: every field text, checked by [`StatsParams::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsParams {
    /// A user id, or `*` for everyone; absent: everyone for an administrator, else the caller.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Without `from`: the range is the last `days` days ending at `to` (default 30).
    #[serde(default)]
    pub days: Option<String>,
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub group_by: Option<String>,
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub page: Option<String>,
    #[serde(default)]
    pub page_size: Option<String>,
}

/// A validated statistics query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    /// `None`: the caller decides (their own, or everyone's for an administrator).
    pub scope: Option<StatsScope>,
    /// The range asked for, inclusive.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub period: Period,
    pub model: Option<ModelName>,
    pub group_by: GroupBy,
    pub sort: StatsSortKey,
    pub direction: SortDirection,
    pub page: u32,
    pub page_size: u32,
}

impl StatsQuery {
    pub const DEFAULT_DAYS: u64 = 30;
    /// About ten years: enough for any history, small enough to answer quickly.
    pub const MAX_DAYS: i64 = 3_660;
    pub const DEFAULT_PAGE_SIZE: u32 = 50;
    pub const MAX_PAGE_SIZE: u32 = 1_000;

    /// The range the rows cover: `from`..=`to` grown to whole periods when grouped by time.
    pub fn effective_range(&self) -> (NaiveDate, NaiveDate) {
        match self.group_by.period() {
            Some(p) => (
                p.bucket_of_day(self.from),
                p.last_day(p.bucket_of_day(self.to)),
            ),
            None => (self.from, self.to),
        }
    }

    /// The period of the stored rollups that answer this query: the grouping's own period, or
    /// days for other groupings (so any range of days is exact).
    pub fn rollup_period(&self) -> Period {
        self.group_by.period().unwrap_or(Period::Day)
    }

    /// The same query for every row at once (for an export): page 1 of everything.
    pub fn unpaged(&self) -> Self {
        Self {
            page: 1,
            page_size: u32::MAX,
            ..self.clone()
        }
    }
}

fn invalid(field: &str, code: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::new(field, code, message)
}

fn parse_date(field: &str, raw: &str) -> Result<NaiveDate, ValidationError> {
    NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").map_err(|_| {
        invalid(
            field,
            &format!("invalid_{field}"),
            format!("{field} must be a date written YYYY-MM-DD, e.g. 2026-11-01; got {raw:?}."),
        )
    })
}

fn parse_count(field: &str, raw: &str, max: u32) -> Result<u32, ValidationError> {
    let code = format!(
        "invalid_{}",
        if field == "pageSize" {
            "page_size"
        } else {
            field
        }
    );
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            field,
            &code,
            format!("{field} must be a whole number from 1 to {max}; got {raw:?}."),
        )),
    }
}

impl StatsParams {
    /// Checks every field; `today` (UTC) is the default end of the range.
    pub fn validate(&self, today: NaiveDate) -> Result<StatsQuery, ValidationError> {
        let scope = match self.user_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("*") => Some(StatsScope::All),
            Some(raw) => Some(StatsScope::User(UserId::parse(raw)?)),
        };
        let to = match self.to.as_deref() {
            Some(raw) => parse_date("to", raw)?,
            None => today,
        };
        let from = match (self.from.as_deref(), self.days.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "days",
                    "conflicting_range",
                    "Give either from or days, not both.",
                ));
            }
            (Some(raw), None) => parse_date("from", raw)?,
            (None, days) => {
                let days = match days {
                    Some(raw) => parse_count("days", raw, StatsQuery::MAX_DAYS as u32)?,
                    None => StatsQuery::DEFAULT_DAYS as u32,
                };
                to.checked_sub_days(Days::new(days as u64 - 1))
                    .unwrap_or(to)
            }
        };
        if from > to {
            return Err(invalid(
                "from",
                "invalid_range",
                format!("from ({from}) must be on or before to ({to})."),
            ));
        }
        if (to - from).num_days() >= StatsQuery::MAX_DAYS {
            return Err(invalid(
                "from",
                "range_too_long",
                format!(
                    "The range may cover at most {} days; ask for a shorter one.",
                    StatsQuery::MAX_DAYS
                ),
            ));
        }
        let period = self.period.as_deref().map(Period::parse).transpose()?;
        let group_by = self.group_by.as_deref().map(GroupBy::parse).transpose()?;
        let (period, group_by) = match (period, group_by) {
            (Some(p), Some(g)) => match g.period() {
                Some(gp) if gp != p => {
                    return Err(invalid(
                        "groupBy",
                        "conflicting_period",
                        format!(
                            "groupBy {} and period {} disagree: give one of them.",
                            g.as_str(),
                            p.as_str()
                        ),
                    ));
                }
                _ => (p, g),
            },
            (Some(p), None) => (p, GroupBy::of_period(p)),
            (None, Some(g)) => (g.period().unwrap_or(Period::Day), g),
            (None, None) => (Period::Day, GroupBy::Day),
        };
        let model = self
            .model
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .map(ModelName::parse)
            .transpose()?;
        let sort = match self.sort.as_deref() {
            Some(raw) => StatsSortKey::parse(raw)?,
            None if group_by.period().is_some() => StatsSortKey::Key,
            None => StatsSortKey::Total,
        };
        let direction = match self.direction.as_deref() {
            Some("asc") => SortDirection::Asc,
            Some("desc") => SortDirection::Desc,
            Some(raw) => {
                return Err(invalid(
                    "direction",
                    "invalid_direction",
                    format!("direction must be asc or desc; got {raw:?}."),
                ));
            }
            None if sort == StatsSortKey::Key => SortDirection::Asc,
            None => SortDirection::Desc,
        };
        let page = match self.page.as_deref() {
            Some(raw) => parse_count("page", raw, u32::MAX)?,
            None => 1,
        };
        let page_size = match self.page_size.as_deref() {
            Some(raw) => parse_count("pageSize", raw, StatsQuery::MAX_PAGE_SIZE)?,
            None => StatsQuery::DEFAULT_PAGE_SIZE,
        };
        Ok(StatsQuery {
            scope,
            from,
            to,
            period,
            model,
            group_by,
            sort,
            direction,
            page,
            page_size,
        })
    }
}

/// One row: a period, or a model, agent, prompt or user, with its sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsRow {
    /// The period's first day (YYYY-MM-DD), or the name; `None` for the events that have no
    /// model (agent, prompt) when grouped by one.
    pub key: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: u64,
    pub cost_micros: u64,
    pub messages: u64,
    /// Distinct conversations, agents and models in the row: known for rows of a period or a
    /// user; `None` for rows of a model, agent or prompt.
    pub conversations: Option<u64>,
    pub agents: Option<u64>,
    pub models: Option<u64>,
    pub last_activity_at: Option<DateTime<Utc>>,
}

impl StatsRow {
    pub fn from_sums(key: Option<String>, s: &Sums) -> Self {
        Self {
            key,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            total_tokens: s.total_tokens,
            cost_picos: s.cost_picos,
            cost_micros: picos_to_micros(s.cost_picos),
            messages: s.messages,
            conversations: None,
            agents: None,
            models: None,
            last_activity_at: s.last_activity,
        }
    }

    fn compare(&self, other: &Self, key: StatsSortKey) -> Ordering {
        match key {
            StatsSortKey::Key => self.key.cmp(&other.key),
            StatsSortKey::Total => self.total_tokens.cmp(&other.total_tokens),
            StatsSortKey::Input => self.input_tokens.cmp(&other.input_tokens),
            StatsSortKey::Output => self.output_tokens.cmp(&other.output_tokens),
            StatsSortKey::Cost => self.cost_picos.cmp(&other.cost_picos),
            StatsSortKey::Messages => self.messages.cmp(&other.messages),
            StatsSortKey::Conversations => self.conversations.cmp(&other.conversations),
            StatsSortKey::Models => self.models.cmp(&other.models),
        }
    }
}

/// The whole range at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSummary {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_picos: u64,
    pub cost_micros: u64,
    pub messages: u64,
    pub conversations: u64,
    pub agents: u64,
    pub models: u64,
    /// Days in the effective range.
    pub days: u64,
    /// Total tokens ÷ days, rounded half up.
    pub average_tokens_per_day: u64,
    pub last_activity_at: Option<DateTime<Utc>>,
}

impl StatsSummary {
    /// The summary of these sums and distinct counts over `days` days.
    pub fn new(s: &Sums, distinct: [u64; 3], days: u64) -> Self {
        let days = days.max(1);
        Self {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            total_tokens: s.total_tokens,
            cost_picos: s.cost_picos,
            cost_micros: picos_to_micros(s.cost_picos),
            messages: s.messages,
            conversations: distinct[0],
            agents: distinct[1],
            models: distinct[2],
            days,
            average_tokens_per_day: (s.total_tokens + days / 2) / days,
            last_activity_at: s.last_activity,
        }
    }
}

/// The answer to a statistics query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// The user, or `None` for everyone.
    pub user_id: Option<String>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub period: Period,
    pub group_by: GroupBy,
    pub model: Option<String>,
    pub rows: Vec<StatsRow>,
    pub summary: StatsSummary,
    pub page: PageInfo,
}

/// Every row of a query and its summary, before sorting and paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsAnswer {
    pub rows: Vec<StatsRow>,
    pub summary: StatsSummary,
}

impl StatsAnswer {
    /// Sorts (ties by key, so the order is total) and cuts out the asked page.
    pub fn into_view(mut self, query: &StatsQuery, user_id: Option<String>) -> StatsView {
        sort_rows(&mut self.rows, query.sort, query.direction);
        let (range, page) = page_bounds(self.rows.len(), query.page, query.page_size);
        let (from, to) = query.effective_range();
        StatsView {
            user_id,
            from,
            to,
            period: query.rollup_period(),
            group_by: query.group_by,
            model: query.model.as_ref().map(|m| m.as_str().to_owned()),
            rows: self.rows.drain(range).collect(),
            summary: self.summary,
            page,
        }
    }
}

pub fn sort_rows(rows: &mut [StatsRow], key: StatsSortKey, direction: SortDirection) {
    rows.sort_by(|a, b| {
        let primary = a.compare(b, key);
        let primary = match direction {
            SortDirection::Asc => primary,
            SortDirection::Desc => primary.reverse(),
        };
        primary.then_with(|| a.key.cmp(&b.key))
    });
}

/// Microseconds since the epoch at the start of `day` (UTC).
pub fn day_start_micros(day: NaiveDate) -> i64 {
    day.and_time(NaiveTime::MIN).and_utc().timestamp_micros()
}

/// The reference answer from raw events (already limited to the query's users): what the store's
/// rollup-based answer must equal. Events outside the effective range or of another model are
/// ignored here.
pub fn stats_of_events(events: &[EventFacts], query: &StatsQuery) -> StatsAnswer {
    let (from, to) = query.effective_range();
    let in_range: Vec<&EventFacts> = events
        .iter()
        .filter(|e| {
            let day = e.at.date_naive();
            day >= from
                && day <= to
                && query
                    .model
                    .as_ref()
                    .is_none_or(|m| e.model.as_deref() == Some(m.as_str()))
        })
        .collect();

    // (sums, conversations as (user, id), agents, models)
    type Group = (
        Sums,
        BTreeSet<(String, String)>,
        BTreeSet<String>,
        BTreeSet<String>,
    );
    let add = |g: &mut Group, e: &EventFacts| {
        g.0.add_event(e);
        if let Some(c) = &e.conversation {
            g.1.insert((e.user_id.clone(), c.clone()));
        }
        g.2.extend(e.agent.clone());
        g.3.extend(e.model.clone());
    };
    let mut whole: Group = Default::default();
    let mut groups: BTreeMap<Option<String>, Group> = BTreeMap::new();
    for e in &in_range {
        add(&mut whole, e);
        let key = match (query.group_by.period(), query.group_by.dimension()) {
            (Some(p), _) => Some(p.bucket(e.at).to_string()),
            (None, Some(d)) => e.value_of(d).map(str::to_owned),
            (None, None) => Some(e.user_id.clone()),
        };
        add(groups.entry(key).or_default(), e);
    }
    let with_counts = query.group_by.dimension().is_none();
    let rows = groups
        .into_iter()
        .map(|(key, g)| {
            let mut row = StatsRow::from_sums(key, &g.0);
            if with_counts {
                row.conversations = Some(g.1.len() as u64);
                row.agents = Some(g.2.len() as u64);
                row.models = Some(g.3.len() as u64);
            }
            row
        })
        .collect();
    let days = (to - from).num_days() as u64 + 1;
    StatsAnswer {
        rows,
        summary: StatsSummary::new(
            &whole.0,
            [
                whole.1.len() as u64,
                whole.2.len() as u64,
                whole.3.len() as u64,
            ],
            days,
        ),
    }
}

/// The CSV export's header row.
pub const CSV_HEADER: [&str; 10] = [
    "key",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "messages",
    "conversations",
    "agents",
    "models",
    "last_activity_at",
];

/// One CSV field as RFC 4180 wants it: quoted when it holds a comma, a quote or a line break,
/// with quotes doubled.
pub fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// One CSV record, fields escaped and ended with CRLF.
pub fn csv_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = String::new();
    if let [only] = fields
        && only.as_ref().is_empty()
    {
        // A lone empty field would be a blank line, which readers skip.
        return "\"\"\r\n".to_owned();
    }
    for (n, field) in fields.iter().enumerate() {
        if n > 0 {
            line.push(',');
        }
        line.push_str(&csv_field(field.as_ref()));
    }
    line.push_str("\r\n");
    line
}

impl StatsRow {
    /// The row's CSV fields, in [`CSV_HEADER`] order; cost in dollars with six decimals
    /// (exact: micro-dollars).
    pub fn csv_fields(&self) -> [String; 10] {
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        [
            self.key.clone().unwrap_or_default(),
            self.input_tokens.to_string(),
            self.output_tokens.to_string(),
            self.total_tokens.to_string(),
            format!(
                "{}.{:06}",
                self.cost_micros / 1_000_000,
                self.cost_micros % 1_000_000
            ),
            self.messages.to_string(),
            opt(self.conversations),
            opt(self.agents),
            opt(self.models),
            self.last_activity_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
        ]
    }
}

/// One ledger event as the events export writes it: what rollups know of it, plus its id and
/// where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub event_id: i64,
    pub source: String,
    pub facts: EventFacts,
}

/// The events export's header row.
pub const EVENTS_CSV_HEADER: [&str; 12] = [
    "event_id",
    "user_id",
    "created_at",
    "source",
    "model",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_picodollars",
    "conversation_id",
    "agent_id",
    "prompt_id",
];

impl EventRow {
    /// The event's CSV record (cost exact, in pico-dollars; time to the microsecond, UTC).
    pub fn csv(&self) -> String {
        let f = &self.facts;
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        csv_record(&[
            self.event_id.to_string(),
            f.user_id.clone(),
            f.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.source.clone(),
            opt(&f.model),
            f.input_tokens.to_string(),
            f.output_tokens.to_string(),
            f.total_tokens.to_string(),
            f.cost_picos.to_string(),
            opt(&f.conversation),
            opt(&f.agent),
            opt(&f.prompt),
        ])
    }
}
