//! The `usage_event` ledger and the single writer that appends to it.
//!
//! Every usage report goes through one writer task per process. The writer takes every report
//! waiting in its queue and commits them in **one** transaction: the events are inserted and the
//! accounts' counters raised together, so at every moment a reader sees
//! `sum(usage_event.tokens) == account.lifetime_tokens`. One durable commit (one fsync) then
//! serves a whole batch, which is what makes tens of thousands of reports per second possible.
//!
//! Several processes may share one Postgres: each has its own writer; row locks on `account`
//! (taken in account-id order, so two batches never deadlock) serialise their updates, and the
//! unique index on `(idempotency_key, account_id)` keeps a report from being recorded twice.
//!
//! The writer runs in its own task, so a caller that goes away mid-request (a closed connection)
//! cannot leave a transaction half-done; its report is still committed or rolled back whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use app::ports::{LedgerError, Recorded};
use chrono::Utc;
use domain::{RecordUsage, UserUsage};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AssertSqlSafe, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::accounts::{self, usage_from_row};
use super::{Db, Dialect, from_micros, ledger_error, many_parameters, micros};

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most reports committed in one transaction.
    pub max_batch: usize,
    /// Reports that may wait for the writer before senders wait too (back-pressure).
    pub queue_capacity: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            queue_capacity: 8_192,
        }
    }
}

struct Job {
    usage: RecordUsage,
    reply: oneshot::Sender<Result<Recorded, LedgerError>>,
}

pub(super) struct WriterHandle {
    queue: mpsc::Sender<Job>,
}

impl WriterHandle {
    pub(super) fn spawn(db: Db, config: WriterConfig) -> Self {
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        tokio::spawn(run_writer(db, jobs, config.max_batch));
        Self { queue }
    }

    pub(super) async fn record(&self, usage: RecordUsage) -> Result<Recorded, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { usage, reply })
            .await
            .map_err(|_| LedgerError::Unavailable("the ledger writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| LedgerError::Internal("the ledger writer dropped a report".into()))?
    }
}

async fn run_writer(db: Db, mut jobs: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    // The writer keeps its own connection between batches: no pool round trip per batch.
    let mut conn = None;
    while jobs.recv_many(&mut batch, max_batch).await > 0 {
        let (usages, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|j| (j.usage, j.reply)).unzip();
        let now = vec![micros(Utc::now()); usages.len()];
        let started = std::time::Instant::now();
        let turn = db.write_turn().await;
        let outcomes = write_batch_with_retries(&db, &mut conn, &usages, &now).await;
        drop(turn);
        tracing::trace!(
            size = usages.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "usage batch"
        );
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away no longer needs its answer; the write stands.
            let _ = reply.send(outcome);
        }
    }
}

/// Why a batch transaction did not commit.
enum BatchError {
    /// Lost a race (deadlock, serialization failure, a key another process inserted first, a
    /// busy SQLite file): roll back and run the whole batch again.
    Retry(String),
    Fatal(LedgerError),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let code = db.code().unwrap_or_default();
            // Postgres: deadlock_detected, serialization_failure, unique_violation.
            // SQLite: SQLITE_BUSY and its extended codes.
            let busy = code.parse::<i64>().is_ok_and(|c| c & 0xff == 5);
            if matches!(code.as_ref(), "40P01" | "40001" | "23505") || busy {
                return Self::Retry(e.to_string());
            }
        }
        Self::Fatal(ledger_error(e))
    }
}

const MAX_ATTEMPTS: u32 = 8;

/// Writes a batch, `at[i]` being the time of report `i` (microseconds since the epoch).
/// `conn` is the writer's connection, taken from the pool when missing and dropped after an
/// error (so a broken connection is never reused).
pub(super) async fn write_batch_with_retries(
    db: &Db,
    conn: &mut Option<PoolConnection<Any>>,
    usages: &[RecordUsage],
    at: &[i64],
) -> Vec<Result<Recorded, LedgerError>> {
    let mut attempt = 1;
    // First try on the assumption that no key was recorded before (retries are rare); if one
    // was, the insert says so, and the batch runs again looking every key up first.
    let mut look_up_keys = false;
    loop {
        let result = match conn {
            Some(c) => write_batch(db.dialect, c, usages, at, look_up_keys).await,
            None => match db.pool.acquire().await {
                Ok(c) => write_batch(db.dialect, conn.insert(c), usages, at, look_up_keys).await,
                Err(e) => Err(BatchError::from(e)),
            },
        };
        if matches!(result, Err(BatchError::Fatal(_))) {
            *conn = None;
        }
        match result {
            Ok(outcomes) => return outcomes,
            Err(BatchError::Retry(why)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, %why, "retrying a usage batch");
                // After the optimistic try, go again at once; after that, back off.
                let optimistic_try_failed = !look_up_keys;
                look_up_keys = true;
                if optimistic_try_failed {
                    attempt += 1;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
                attempt += 1;
            }
            Err(BatchError::Retry(why)) => {
                tracing::warn!(%why, "usage batch kept conflicting");
                return usages
                    .iter()
                    .map(|_| Err(LedgerError::Unavailable(why.clone())))
                    .collect();
            }
            Err(BatchError::Fatal(e)) => {
                tracing::error!(error = %e, "usage batch failed");
                return usages.iter().map(|_| Err(e.clone())).collect();
            }
        }
    }
}

/// An event already in the ledger, as a retry needs it.
struct StoredEvent {
    event_id: i64,
    tokens: i64,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    model: Option<String>,
    context: [Option<String>; 3],
    tokens_used_after: i64,
    lifetime_tokens_after: i64,
    token_limit_at: i64,
    created_at: i64,
}

impl StoredEvent {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            event_id: row.try_get("usage_event_id")?,
            tokens: row.try_get("tokens")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            model: row.try_get("model")?,
            context: [
                row.try_get("conversation_id")?,
                row.try_get("agent_id")?,
                row.try_get("prompt_id")?,
            ],
            tokens_used_after: row.try_get("tokens_used_after")?,
            lifetime_tokens_after: row.try_get("lifetime_tokens_after")?,
            token_limit_at: row.try_get("token_limit_at")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn matches(&self, usage: &RecordUsage) -> bool {
        self.tokens == usage.tokens.get() as i64
            && self.input_tokens == usage.input_tokens.map(|v| v as i64)
            && self.output_tokens == usage.output_tokens.map(|v| v as i64)
            && self.model.as_deref() == usage.model.as_ref().map(|m| m.as_str())
            && self.context
                == [
                    &usage.context.conversation_id,
                    &usage.context.agent_id,
                    &usage.context.prompt_id,
                ]
                .map(|c| c.as_ref().map(|c| c.as_str().to_owned()))
    }

    /// The first result again: the user as they were right after this event.
    fn replay(&self, current: &UserUsage) -> Result<Recorded, LedgerError> {
        let bad = || LedgerError::Internal("usage_event row has invalid counters".into());
        let mut user = current.clone();
        user.tokens_used = u64::try_from(self.tokens_used_after).map_err(|_| bad())?;
        user.lifetime_tokens = u64::try_from(self.lifetime_tokens_after).map_err(|_| bad())?;
        user.token_limit = domain::TokenLimit::new(self.token_limit_at).map_err(|_| bad())?;
        user.tokens_reserved = 0;
        user.updated_at = from_micros(self.created_at);
        Ok(Recorded {
            event_id: self.event_id,
            tokens: u64::try_from(self.tokens).map_err(|_| bad())?,
            user,
            replayed: true,
        })
    }
}

type EventKey = (String, String);

fn event_key(usage: &RecordUsage) -> EventKey {
    (
        usage.user_id.to_string(),
        usage.idempotency_key.as_str().to_owned(),
    )
}

/// What happens to each report of a batch.
enum Plan {
    /// Recorded earlier (committed before this batch): answer the first result.
    AlreadyRecorded(EventKey),
    /// The same key appears earlier in this batch: answer that report's result.
    SameAsEarlier(usize),
    /// New: to be written now.
    New,
}

/// One transaction for the whole batch. Returns one outcome per report, in order.
async fn write_batch(
    dialect: Dialect,
    conn: &mut AnyConnection,
    usages: &[RecordUsage],
    at: &[i64],
    look_up_keys: bool,
) -> Result<Vec<Result<Recorded, LedgerError>>, BatchError> {
    let begin = match dialect {
        // Take the write lock up front: a deferred transaction that reads first could fail to
        // upgrade to a writer when another connection commits in between.
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    let mut tx = conn.begin_with(begin).await?;

    // 1. Which keys were recorded before? (Skipped on the optimistic first try.)
    let mut existing: HashMap<EventKey, StoredEvent> = HashMap::new();
    if look_up_keys {
        let mut keys: Vec<&str> = usages.iter().map(|u| u.idempotency_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let sql = format!(
            "SELECT usage_event_id, account_id, idempotency_key, tokens, input_tokens, output_tokens, model, \
             conversation_id, agent_id, prompt_id, tokens_used_after, lifetime_tokens_after, token_limit_at, created_at \
             FROM usage_event WHERE idempotency_key IN ({})",
            placeholders(1, keys.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(many_parameters(dialect, sql)));
        for key in &keys {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut *tx).await? {
            let key: EventKey = (row.try_get("account_id")?, row.try_get("idempotency_key")?);
            existing.insert(key, StoredEvent::from_row(&row)?);
        }
    }

    // 2. Plan each report; group the new ones by account, in account-id order.
    let mut plans = Vec::with_capacity(usages.len());
    let mut first_in_batch: HashMap<EventKey, usize> = HashMap::new();
    let mut new_by_account: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, usage) in usages.iter().enumerate() {
        let key = event_key(usage);
        if existing.contains_key(&key) {
            plans.push(Plan::AlreadyRecorded(key));
        } else if let Some(&first) = first_in_batch.get(&key) {
            plans.push(Plan::SameAsEarlier(first));
        } else {
            first_in_batch.insert(key, i);
            new_by_account
                .entry(usage.user_id.as_str())
                .or_default()
                .push(i);
            plans.push(Plan::New);
        }
    }

    // 3. Raise each account's counters once for all its new reports, and work out each
    //    report's own running totals from the account's new totals.
    let mut outcomes: Vec<Option<Result<Recorded, LedgerError>>> =
        (0..usages.len()).map(|_| None).collect();
    let mut to_insert: Vec<(usize, i64, i64, i64)> = Vec::new(); // (report, used_after, lifetime_after, limit)
    let mut user_after: HashMap<usize, UserUsage> = HashMap::new();
    let accounts: Vec<(&str, &Vec<usize>)> = new_by_account.iter().map(|(a, m)| (*a, m)).collect();
    for chunk in accounts.chunks(UPDATE_CHUNK) {
        if dialect == Dialect::Postgres && chunk.len() > 1 {
            // Lock the rows in account-id order first: two processes' batches then always
            // lock in the same order and cannot deadlock.
            let sql = format!(
                "SELECT account_id FROM account WHERE account_id IN ({}) ORDER BY account_id FOR UPDATE",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (account, _) in chunk {
                query = query.bind(*account);
            }
            query.fetch_all(&mut *tx).await?;
        }
        // One statement raises every account of the chunk by the sum of its reports, unless
        // that would overflow a 64-bit counter.
        let rows_sql: Vec<String> = (0..chunk.len())
            .map(|n| {
                let p = n * 6 + 1;
                format!(
                    "(CAST(${p} AS TEXT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS BIGINT), \
                      CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect();
        let sql = format!(
            "WITH d (d_id, d_delta, d_max, d_at, d_cost, d_cost_max) AS (VALUES {}) \
             UPDATE account SET tokens_used = tokens_used + d_delta, \
                 lifetime_tokens = lifetime_tokens + d_delta, updated_at = d_at, \
                 lifetime_cost_picos = lifetime_cost_picos + d_cost \
             FROM d WHERE account_id = d_id AND tokens_used <= d_max AND lifetime_tokens <= d_max \
                 AND lifetime_cost_picos <= d_cost_max \
             RETURNING account_id, display_name, token_limit, role, tokens_used, tokens_reserved, lifetime_tokens, lifetime_cost_picos, updated_at",
            rows_sql.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(many_parameters(dialect, sql)));
        let mut deltas: HashMap<&str, (i64, i64)> = HashMap::new();
        for (account, members) in chunk {
            let delta: i64 = members.iter().map(|&i| usages[i].tokens.get() as i64).sum();
            // Each cost fits an i64 (see domain::pricing); a batch's sum saturates, and the
            // overflow guard below then refuses it.
            let cost: i64 = members
                .iter()
                .map(|&i| i64::try_from(usages[i].cost_picos).unwrap_or(i64::MAX))
                .fold(0i64, |a, c| a.saturating_add(c));
            let updated_at = members.iter().map(|&i| at[i]).max().unwrap_or_default();
            deltas.insert(account, (delta, cost));
            query = query
                .bind(*account)
                .bind(delta)
                .bind(i64::MAX - delta)
                .bind(updated_at)
                .bind(cost)
                .bind(i64::MAX - cost);
        }
        let mut updated: HashMap<String, UserUsage> = HashMap::new();
        for row in query.fetch_all(&mut *tx).await? {
            let after = usage_from_row(&row).map_err(BatchError::Fatal)?;
            updated.insert(after.user_id.to_string(), after);
        }

        let missing: Vec<&str> = chunk
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| !updated.contains_key(*a))
            .collect();
        let mut existing_accounts: HashSet<String> = HashSet::new();
        if !missing.is_empty() {
            let sql = format!(
                "SELECT account_id FROM account WHERE account_id IN ({})",
                placeholders(1, missing.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(many_parameters(dialect, sql)));
            for account in &missing {
                query = query.bind(*account);
            }
            for row in query.fetch_all(&mut *tx).await? {
                existing_accounts.insert(row.try_get("account_id")?);
            }
        }

        for (account, members) in chunk {
            let Some(after) = updated.get(*account) else {
                for &i in members.iter() {
                    outcomes[i] = Some(Err(if existing_accounts.contains(*account) {
                        LedgerError::CounterOverflow
                    } else {
                        LedgerError::UserNotFound
                    }));
                }
                continue;
            };
            // Each report's own running totals, in the order the reports came.
            let (delta, cost_delta) = deltas[account];
            let mut used = after.tokens_used as i64 - delta;
            let mut lifetime = after.lifetime_tokens as i64 - delta;
            let mut cost = after.lifetime_cost_picos as i64 - cost_delta;
            for &i in members.iter() {
                used += usages[i].tokens.get() as i64;
                lifetime += usages[i].tokens.get() as i64;
                cost += usages[i].cost_picos as i64;
                to_insert.push((i, used, lifetime, after.token_limit.get() as i64));
                let mut user = after.clone();
                user.tokens_used = used as u64;
                user.lifetime_tokens = lifetime as u64;
                user.lifetime_cost_picos = cost as u64;
                user.updated_at = from_micros(at[i]);
                user_after.insert(i, user);
            }
        }
    }

    // 4. Append the events. A key recorded before (not looked up on the optimistic try) or by
    //    another process since step 1 makes the insert skip that row: then the whole batch is
    //    rolled back and retried with the keys looked up, so nothing is counted twice.
    let mut event_ids: HashMap<EventKey, i64> = HashMap::new();
    for chunk in to_insert.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO usage_event (account_id, tokens, input_tokens, output_tokens, model, source, \
             idempotency_key, tokens_used_after, lifetime_tokens_after, token_limit_at, created_at, \
             cached_tokens, cache_write_tokens, reasoning_tokens, cost_picos, conversation_id, agent_id, \
             prompt_id) VALUES ",
        );
        for (n, _) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&placeholders(n * EVENT_PARAMS + 1, EVENT_PARAMS));
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (idempotency_key, account_id) DO NOTHING \
             RETURNING usage_event_id, account_id, idempotency_key",
        );
        let mut query = sqlx::query(AssertSqlSafe(many_parameters(dialect, sql)));
        for &(i, used_after, lifetime_after, limit) in chunk {
            let u = &usages[i];
            query = query
                .bind(u.user_id.as_str())
                .bind(u.tokens.get() as i64)
                .bind(u.input_tokens.map(|v| v as i64))
                .bind(u.output_tokens.map(|v| v as i64))
                .bind(u.model.as_ref().map(|m| m.as_str()))
                .bind(u.source.as_str())
                .bind(u.idempotency_key.as_str())
                .bind(used_after)
                .bind(lifetime_after)
                .bind(limit)
                .bind(at[i])
                .bind(u.cached_tokens as i64)
                .bind(u.cache_write_tokens as i64)
                .bind(u.reasoning_tokens as i64)
                .bind(u.cost_picos as i64)
                .bind(u.context.conversation_id.as_ref().map(|c| c.as_str()))
                .bind(u.context.agent_id.as_ref().map(|c| c.as_str()))
                .bind(u.context.prompt_id.as_ref().map(|c| c.as_str()));
        }
        let rows = query.fetch_all(&mut *tx).await?;
        if rows.len() != chunk.len() {
            return Err(BatchError::Retry(
                "an idempotency key was recorded concurrently".into(),
            ));
        }
        for row in rows {
            event_ids.insert(
                (row.try_get("account_id")?, row.try_get("idempotency_key")?),
                row.try_get("usage_event_id")?,
            );
        }
    }

    // 5. Current users for replays (rare: only retried requests).
    let mut replay_users: HashMap<String, UserUsage> = HashMap::new();
    for plan in &plans {
        if let Plan::AlreadyRecorded((account, _)) = plan
            && !replay_users.contains_key(account)
        {
            let user = accounts::get(&mut *tx, account)
                .await
                .map_err(BatchError::Fatal)?
                .ok_or_else(|| {
                    BatchError::Fatal(LedgerError::Internal("event without its account".into()))
                })?;
            replay_users.insert(account.clone(), user);
        }
    }

    tx.commit().await?;

    // 6. Answers, in the order the reports came.
    for (i, plan) in plans.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let usage = &usages[i];
        outcomes[i] = Some(match plan {
            Plan::AlreadyRecorded(key) => {
                let stored = &existing[key];
                if stored.matches(usage) {
                    stored.replay(&replay_users[&key.0])
                } else {
                    Err(LedgerError::KeyReused)
                }
            }
            Plan::New => {
                let key = event_key(usage);
                Ok(Recorded {
                    event_id: event_ids[&key],
                    tokens: usage.tokens.get(),
                    user: user_after
                        .remove(&i)
                        .expect("every new report has its user"),
                    replayed: false,
                })
            }
            Plan::SameAsEarlier(_) => continue,
        });
    }
    // Duplicates within the batch answer like a retry of their first occurrence.
    for (i, plan) in plans.iter().enumerate() {
        if let Plan::SameAsEarlier(first) = plan {
            outcomes[i] = Some(match &outcomes[*first] {
                Some(Ok(first_result)) if usages[*first].same_request_as(&usages[i]) => {
                    Ok(Recorded {
                        replayed: true,
                        ..first_result.clone()
                    })
                }
                Some(Ok(_)) => Err(LedgerError::KeyReused),
                Some(Err(e)) => Err(e.clone()),
                None => Err(LedgerError::Internal("report without an outcome".into())),
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Err(LedgerError::Internal("report without an outcome".into())))
        })
        .collect())
}

/// Accounts per multi-row UPDATE (6 parameters each).
const UPDATE_CHUNK: usize = 256;

/// Parameters per inserted event.
const EVENT_PARAMS: usize = 18;

/// Rows per multi-row INSERT: 18 parameters each stays well under both databases' limits
/// (SQLite 32,766; Postgres 65,535).
const INSERT_CHUNK: usize = 256;

/// `$first, $first+1, …` (count of them).
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ledger checked against the counters: every account's lifetime counter must equal the sum
/// of its events, and its used counter too while nothing has reset it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAudit {
    pub accounts: i64,
    pub events: i64,
    pub event_tokens: i64,
    pub lifetime_tokens: i64,
    /// Accounts whose counter differs from their events: (account, counter, sum of events).
    pub mismatches: Vec<(String, i64, i64)>,
    /// Accounts whose reserved tokens differ from their reservations: (account, counter, sum).
    pub reservation_mismatches: Vec<(String, i64, i64)>,
    /// Accounts whose lifetime cost differs from their events' costs: (account, counter, sum).
    pub cost_mismatches: Vec<(String, i64, i64)>,
}

impl LedgerAudit {
    pub fn is_exact(&self) -> bool {
        self.mismatches.is_empty()
            && self.reservation_mismatches.is_empty()
            && self.cost_mismatches.is_empty()
            && self.event_tokens == self.lifetime_tokens
    }
}

pub(super) async fn audit(db: &Db) -> Result<LedgerAudit, LedgerError> {
    // One statement, so both sums come from the same snapshot even while writers run.
    let rows = sqlx::query(
        "SELECT a.account_id, a.lifetime_tokens, a.lifetime_cost_picos, \
                CAST(COALESCE(e.total, 0) AS BIGINT) AS event_total, \
                CAST(COALESCE(e.n, 0) AS BIGINT) AS event_count, \
                CAST(COALESCE(e.cost, 0) AS BIGINT) AS event_cost \
         FROM account a \
         LEFT JOIN (SELECT account_id, SUM(tokens) AS total, COUNT(*) AS n, SUM(cost_picos) AS cost \
                    FROM usage_event GROUP BY account_id) e \
           ON e.account_id = a.account_id",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(ledger_error)?;
    let mut audit = LedgerAudit {
        accounts: 0,
        events: 0,
        event_tokens: 0,
        lifetime_tokens: 0,
        mismatches: Vec::new(),
        reservation_mismatches: Vec::new(),
        cost_mismatches: Vec::new(),
    };
    for row in rows {
        let account: String = row.try_get("account_id").map_err(ledger_error)?;
        let lifetime: i64 = row.try_get("lifetime_tokens").map_err(ledger_error)?;
        let total: i64 = row.try_get("event_total").map_err(ledger_error)?;
        let count: i64 = row.try_get("event_count").map_err(ledger_error)?;
        let cost: i64 = row.try_get("lifetime_cost_picos").map_err(ledger_error)?;
        let event_cost: i64 = row.try_get("event_cost").map_err(ledger_error)?;
        if cost != event_cost {
            audit
                .cost_mismatches
                .push((account.clone(), cost, event_cost));
        }
        audit.accounts += 1;
        audit.events += count;
        audit.event_tokens += total;
        audit.lifetime_tokens += lifetime;
        if total != lifetime {
            audit.mismatches.push((account, lifetime, total));
        }
    }
    Ok(audit)
}
