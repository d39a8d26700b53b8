//! The `usage_event` ledger and the single writer that appends to it.
//!
//! Every usage report goes through one writer per process. The writer takes every report
//! waiting in its queue and commits them in **one** transaction: the events are inserted and the
//! accounts' counters raised together, so at every moment a reader sees
//! `sum(usage_event.tokens) == account.lifetime_tokens`. One durable commit (one fsync) then
//! serves a whole batch, which is what makes tens of thousands of reports per second possible.
//!
//! What a batch does is written once ([`write_batch`]) over the statements it needs
//! ([`BatchStatements`]), which each driver runs its own way: on Postgres through sqlx, with
//! multi-row statements; on SQLite on a thread of its own with rusqlite and one prepared
//! statement per row (see [`super::usage_sqlite`]), so a batch costs no hop between threads
//! per statement.
//!
//! Several processes may share one Postgres: each has its own writer; row locks on `account`
//! (taken in account-id order, so two batches never deadlock) serialise their updates, and the
//! unique index on `(idempotency_key, account_id)` keeps a report from being recorded twice.
//!
//! The writer runs on a thread of its own (on Postgres with its own runtime and connection), so
//! a caller that goes away mid-request (a closed connection) cannot leave a transaction
//! half-done; its report is still committed or rolled back whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use app::ports::{LedgerError, Recorded};
use chrono::Utc;
use domain::{RecordUsage, UserUsage};
use sqlx::{Any, AssertSqlSafe, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::accounts::{self, ACCOUNT_COLUMNS, usage_from_row};
use super::sqlite_read::Columns;
use super::{Db, Dialect, from_micros, ledger_error, many_parameters, micros, usage_sqlite};

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

pub(super) struct Job {
    pub(super) usage: RecordUsage,
    pub(super) reply: oneshot::Sender<Outcome>,
}

/// What became of one report.
pub(super) type Outcome = Result<Recorded, LedgerError>;

pub(super) struct WriterHandle {
    queue: mpsc::Sender<Job>,
}

impl WriterHandle {
    pub(super) fn spawn(db: Db, config: WriterConfig) -> Self {
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        match db.sqlite_file.clone() {
            Some(file) => usage_sqlite::spawn_writer(db, file, jobs, config.max_batch),
            None => spawn_writer_thread(db, jobs, config.max_batch),
        }
        Self { queue }
    }

    pub(super) async fn record(&self, usage: RecordUsage) -> Outcome {
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

/// Splits a batch of jobs into the reports, the times they are recorded at (now) and where
/// their answers go.
pub(super) fn unpack(
    batch: &mut Vec<Job>,
) -> (Vec<RecordUsage>, Vec<i64>, Vec<oneshot::Sender<Outcome>>) {
    let (usages, replies): (Vec<_>, Vec<_>) = batch.drain(..).map(|j| (j.usage, j.reply)).unzip();
    let now = vec![micros(Utc::now()); usages.len()];
    (usages, now, replies)
}

/// Sends each report's outcome to its caller; `started` is when the writer took the batch.
pub(super) fn answer(
    replies: Vec<oneshot::Sender<Outcome>>,
    outcomes: Vec<Outcome>,
    started: std::time::Instant,
) {
    tracing::trace!(
        size = outcomes.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "usage batch"
    );
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that went away no longer needs its answer; the write stands.
        let _ = reply.send(outcome);
    }
}

/// Starts the writer on Postgres: a thread of its own, running its own single-threaded runtime
/// and its own connection. A batch is a chain of round trips (begin, lock, update, insert,
/// commit). As a task on the HTTP runtime, each waited its turn behind the request tasks. On its
/// own thread the spread benchmark ran 7–28 % faster (docs/PERFORMANCE.md).
fn spawn_writer_thread(db: Db, jobs: mpsc::Receiver<Job>, max_batch: usize) {
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the ledger writer's runtime starts");
            runtime.block_on(run_writer(db, jobs, max_batch));
        })
        .expect("the ledger writer thread starts");
}

/// How long the writer tries to connect, as long as the pool waits for a connection. The
/// batch's reports then answer "unavailable" (503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn run_writer(db: Db, mut jobs: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    // The writer keeps its own connection between batches, opened on this thread's runtime
    // (a pooled one would belong to the HTTP runtime's reactor).
    let options = db.pool.connect_options();
    let connect = || async {
        match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::ConnectOptions::connect(&*options)).await
        {
            Ok(connected) => connected.map(Box::new),
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the ledger writer could not connect to the database",
            ))),
        }
    };
    let mut conn = None;
    while jobs.recv_many(&mut batch, max_batch).await > 0 {
        let (usages, now, replies) = unpack(&mut batch);
        let started = std::time::Instant::now();
        let turn = db.write_turn().await;
        let outcomes =
            write_batch_with_retries(db.dialect, &mut conn, connect, &usages, &now).await;
        drop(turn);
        answer(replies, outcomes, started);
    }
}

/// Why a batch transaction did not commit.
pub(super) enum BatchError {
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

/// How a batch is tried again after it lost a race.
pub(super) struct Retries {
    attempt: u32,
    look_up_keys: bool,
}

impl Retries {
    pub(super) fn new() -> Self {
        // First try on the assumption that no key was recorded before (retries are rare); if
        // one was, the insert says so, and the batch runs again looking every key up first.
        Self {
            attempt: 1,
            look_up_keys: false,
        }
    }

    /// Whether this attempt looks up every key before writing.
    pub(super) fn look_up_keys(&self) -> bool {
        self.look_up_keys
    }

    /// After a failed attempt: how long to wait before the next one, or every report's answer
    /// when there is none. After a fatal error the writer's connection is dropped, so a broken
    /// connection is never reused.
    pub(super) fn after<C>(
        &mut self,
        error: BatchError,
        reports: usize,
        conn: &mut Option<C>,
    ) -> Result<Duration, Vec<Outcome>> {
        if matches!(error, BatchError::Fatal(_)) {
            *conn = None;
        }
        match error {
            BatchError::Retry(why) if self.attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt = self.attempt, %why, "retrying a usage batch");
                // After the optimistic try, go again at once; after that, back off.
                let optimistic_try_failed = !self.look_up_keys;
                self.look_up_keys = true;
                let wait = if optimistic_try_failed {
                    Duration::ZERO
                } else {
                    Duration::from_millis(2u64 << self.attempt.min(6))
                };
                self.attempt += 1;
                Ok(wait)
            }
            BatchError::Retry(why) => {
                tracing::warn!(%why, "usage batch kept conflicting");
                Err((0..reports)
                    .map(|_| Err(LedgerError::Unavailable(why.clone())))
                    .collect())
            }
            BatchError::Fatal(e) => {
                tracing::error!(error = %e, "usage batch failed");
                Err((0..reports).map(|_| Err(e.clone())).collect())
            }
        }
    }
}

/// Writes a batch through sqlx, `at[i]` being the time of report `i` (microseconds since the
/// epoch). `conn` is the writer's connection, made by `connect` when missing and dropped
/// after an error (so a broken connection is never reused).
pub(super) async fn write_batch_with_retries<C, F>(
    dialect: Dialect,
    conn: &mut Option<C>,
    connect: impl Fn() -> F,
    usages: &[RecordUsage],
    at: &[i64],
) -> Vec<Outcome>
where
    C: std::ops::DerefMut<Target = sqlx::AnyConnection>,
    F: Future<Output = Result<C, sqlx::Error>>,
{
    let mut retries = Retries::new();
    loop {
        let result = match conn {
            Some(c) => write_batch_sqlx(dialect, c, usages, at, retries.look_up_keys()).await,
            None => match connect().await {
                Ok(c) => {
                    let c = conn.insert(c);
                    write_batch_sqlx(dialect, c, usages, at, retries.look_up_keys()).await
                }
                Err(e) => Err(BatchError::from(e)),
            },
        };
        match result.map_err(|e| retries.after(e, usages.len(), conn)) {
            Ok(outcomes) => return outcomes,
            Err(Ok(wait)) => tokio::time::sleep(wait).await,
            Err(Err(answers)) => return answers,
        }
    }
}

async fn write_batch_sqlx(
    dialect: Dialect,
    conn: &mut sqlx::AnyConnection,
    usages: &[RecordUsage],
    at: &[i64],
    look_up_keys: bool,
) -> Result<Vec<Outcome>, BatchError> {
    let begin = match dialect {
        // Take the write lock up front: a deferred transaction that reads first could fail to
        // upgrade to a writer when another connection commits in between.
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    let tx = conn.begin_with(begin).await?;
    write_batch(SqlxBatch { tx, dialect }, usages, at, look_up_keys).await
}

/// An event already in the ledger, as a retry needs it.
pub(super) struct StoredEvent {
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

/// The columns [`StoredEvent::from_row`] reads.
pub(super) const STORED_EVENT_COLUMNS: &str = "usage_event_id, account_id, idempotency_key, tokens, \
     input_tokens, output_tokens, model, conversation_id, agent_id, prompt_id, tokens_used_after, \
     lifetime_tokens_after, token_limit_at, created_at";

impl StoredEvent {
    /// The event and its key.
    pub(super) fn from_row(row: &impl Columns) -> Result<(EventKey, Self), sqlx::Error> {
        let key = (row.text("account_id")?, row.text("idempotency_key")?);
        Ok((
            key,
            Self {
                event_id: row.int("usage_event_id")?,
                tokens: row.int("tokens")?,
                input_tokens: row.opt_int("input_tokens")?,
                output_tokens: row.opt_int("output_tokens")?,
                model: row.opt_text("model")?,
                context: [
                    row.opt_text("conversation_id")?,
                    row.opt_text("agent_id")?,
                    row.opt_text("prompt_id")?,
                ],
                tokens_used_after: row.int("tokens_used_after")?,
                lifetime_tokens_after: row.int("lifetime_tokens_after")?,
                token_limit_at: row.int("token_limit_at")?,
                created_at: row.int("created_at")?,
            },
        ))
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
    fn replay(&self, current: &UserUsage) -> Outcome {
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

/// (account id, idempotency key): what makes a report unique.
pub(super) type EventKey = (String, String);

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

/// One account's share of a batch: its counters go up by these sums, unless one would
/// overflow a 64-bit counter.
pub(super) struct CounterRaise<'a> {
    pub(super) account: &'a str,
    pub(super) tokens: i64,
    pub(super) cost_picos: i64,
    /// The time of the account's latest report in the batch.
    pub(super) updated_at: i64,
}

/// One event row to append: the report and the account's counters right after it.
pub(super) struct NewEvent<'a> {
    pub(super) usage: &'a RecordUsage,
    pub(super) tokens_used_after: i64,
    pub(super) lifetime_tokens_after: i64,
    pub(super) token_limit_at: i64,
    pub(super) created_at: i64,
}

/// The columns of a `usage_event` row as [`NewEvent::values`] gives them.
pub(super) const NEW_EVENT_COLUMNS: &str = "account_id, tokens, input_tokens, output_tokens, model, \
     source, idempotency_key, tokens_used_after, lifetime_tokens_after, token_limit_at, created_at, \
     cached_tokens, cache_write_tokens, reasoning_tokens, cost_picos, conversation_id, agent_id, \
     prompt_id";

/// A value to bind, whichever driver binds it.
pub(super) enum EventValue<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
}

impl<'a> NewEvent<'a> {
    /// The values of [`NEW_EVENT_COLUMNS`], in order.
    pub(super) fn values(&self) -> [EventValue<'a>; EVENT_PARAMS] {
        use EventValue::*;
        let u = self.usage;
        let context = &u.context;
        [
            Text(u.user_id.as_str()),
            Int(u.tokens.get() as i64),
            OptInt(u.input_tokens.map(|v| v as i64)),
            OptInt(u.output_tokens.map(|v| v as i64)),
            OptText(u.model.as_ref().map(|m| m.as_str())),
            Text(u.source.as_str()),
            Text(u.idempotency_key.as_str()),
            Int(self.tokens_used_after),
            Int(self.lifetime_tokens_after),
            Int(self.token_limit_at),
            Int(self.created_at),
            Int(u.cached_tokens as i64),
            Int(u.cache_write_tokens as i64),
            Int(u.reasoning_tokens as i64),
            Int(u.cost_picos as i64),
            OptText(context.conversation_id.as_ref().map(|c| c.as_str())),
            OptText(context.agent_id.as_ref().map(|c| c.as_str())),
            OptText(context.prompt_id.as_ref().map(|c| c.as_str())),
        ]
    }
}

/// The statements of a batch transaction. Dropping it without [`BatchStatements::commit`]
/// rolls everything back.
pub(super) trait BatchStatements {
    /// The events already recorded under any of these idempotency keys.
    async fn recorded_events(
        &mut self,
        keys: &[&str],
    ) -> Result<Vec<(EventKey, StoredEvent)>, BatchError>;

    /// Raises the counters of these accounts (given in account-id order) and answers each
    /// raised account as it is now. An account that does not exist or would overflow is left
    /// out of the answer.
    async fn raise_counters(
        &mut self,
        raises: &[CounterRaise<'_>],
    ) -> Result<Vec<UserUsage>, BatchError>;

    /// Which of these accounts exist.
    async fn existing_accounts(&mut self, ids: &[&str]) -> Result<HashSet<String>, BatchError>;

    /// Appends the events and answers their ids. A key that is already in the ledger (a
    /// report recorded concurrently) is [`BatchError::Retry`].
    async fn append_events(
        &mut self,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<(EventKey, i64)>, BatchError>;

    /// An account as it is now.
    async fn account(&mut self, id: &str) -> Result<Option<UserUsage>, BatchError>;

    async fn commit(self) -> Result<(), BatchError>;
}

/// One transaction for the whole batch. Returns one outcome per report, in order.
pub(super) async fn write_batch(
    mut tx: impl BatchStatements,
    usages: &[RecordUsage],
    at: &[i64],
    look_up_keys: bool,
) -> Result<Vec<Outcome>, BatchError> {
    // 1. Which keys were recorded before? (Skipped on the optimistic first try.)
    let mut existing: HashMap<EventKey, StoredEvent> = HashMap::new();
    if look_up_keys {
        let mut keys: Vec<&str> = usages.iter().map(|u| u.idempotency_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        existing.extend(tx.recorded_events(&keys).await?);
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
    let raises: Vec<CounterRaise> = new_by_account
        .iter()
        .map(|(account, members)| CounterRaise {
            account,
            tokens: members.iter().map(|&i| usages[i].tokens.get() as i64).sum(),
            // Each cost fits an i64 (see domain::pricing); a batch's sum saturates, and the
            // overflow guard then refuses it.
            cost_picos: members
                .iter()
                .map(|&i| i64::try_from(usages[i].cost_picos).unwrap_or(i64::MAX))
                .fold(0i64, |a, c| a.saturating_add(c)),
            updated_at: members.iter().map(|&i| at[i]).max().unwrap_or_default(),
        })
        .collect();
    let mut updated: HashMap<String, UserUsage> = tx
        .raise_counters(&raises)
        .await?
        .into_iter()
        .map(|after| (after.user_id.to_string(), after))
        .collect();
    let missing: Vec<&str> = raises
        .iter()
        .map(|r| r.account)
        .filter(|a| !updated.contains_key(*a))
        .collect();
    let existing_accounts = if missing.is_empty() {
        HashSet::new()
    } else {
        tx.existing_accounts(&missing).await?
    };

    let mut outcomes: Vec<Option<Outcome>> = (0..usages.len()).map(|_| None).collect();
    let mut to_append: Vec<NewEvent> = Vec::with_capacity(usages.len());
    let mut user_after: HashMap<usize, UserUsage> = HashMap::new();
    for (raise, members) in raises.iter().zip(new_by_account.values()) {
        let Some(after) = updated.remove(raise.account) else {
            for &i in members {
                outcomes[i] = Some(Err(if existing_accounts.contains(raise.account) {
                    LedgerError::CounterOverflow
                } else {
                    LedgerError::UserNotFound
                }));
            }
            continue;
        };
        // Each report's own running totals, in the order the reports came.
        let mut used = after.tokens_used as i64 - raise.tokens;
        let mut lifetime = after.lifetime_tokens as i64 - raise.tokens;
        let mut cost = after.lifetime_cost_picos as i64 - raise.cost_picos;
        for &i in members {
            used += usages[i].tokens.get() as i64;
            lifetime += usages[i].tokens.get() as i64;
            cost += usages[i].cost_picos as i64;
            to_append.push(NewEvent {
                usage: &usages[i],
                tokens_used_after: used,
                lifetime_tokens_after: lifetime,
                token_limit_at: after.token_limit.get() as i64,
                created_at: at[i],
            });
            let mut user = after.clone();
            user.tokens_used = used as u64;
            user.lifetime_tokens = lifetime as u64;
            user.lifetime_cost_picos = cost as u64;
            user.updated_at = from_micros(at[i]);
            user_after.insert(i, user);
        }
    }

    // 4. Append the events. A key recorded before (not looked up on the optimistic try) or by
    //    another process since step 1 makes the append fail: then the whole batch is rolled
    //    back and retried with the keys looked up, so nothing is counted twice.
    let event_ids: HashMap<EventKey, i64> = if to_append.is_empty() {
        HashMap::new()
    } else {
        tx.append_events(&to_append).await?.into_iter().collect()
    };

    // 5. Current users for replays (rare: only retried requests).
    let mut replay_users: HashMap<String, UserUsage> = HashMap::new();
    for plan in &plans {
        if let Plan::AlreadyRecorded((account, _)) = plan
            && !replay_users.contains_key(account)
        {
            let user = tx.account(account).await?.ok_or_else(|| {
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

/// A batch through sqlx: multi-row statements, so a batch is a few round trips whatever its
/// size.
struct SqlxBatch<'c> {
    tx: sqlx::Transaction<'c, Any>,
    dialect: Dialect,
}

impl SqlxBatch<'_> {
    fn query(&self, sql: String) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
        sqlx::query(AssertSqlSafe(many_parameters(self.dialect, sql)))
    }
}

impl BatchStatements for SqlxBatch<'_> {
    async fn recorded_events(
        &mut self,
        keys: &[&str],
    ) -> Result<Vec<(EventKey, StoredEvent)>, BatchError> {
        let mut query = self.query(format!(
            "SELECT {STORED_EVENT_COLUMNS} FROM usage_event WHERE idempotency_key IN ({})",
            placeholders(1, keys.len())
        ));
        for key in keys {
            query = query.bind(key.to_string());
        }
        let rows = query.fetch_all(&mut *self.tx).await?;
        Ok(rows
            .iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn raise_counters(
        &mut self,
        raises: &[CounterRaise<'_>],
    ) -> Result<Vec<UserUsage>, BatchError> {
        let mut raised = Vec::with_capacity(raises.len());
        for chunk in raises.chunks(UPDATE_CHUNK) {
            if self.dialect == Dialect::Postgres && chunk.len() > 1 {
                // Lock the rows in account-id order first: two processes' batches then always
                // lock in the same order and cannot deadlock.
                let mut query = self.query(format!(
                    "SELECT account_id FROM account WHERE account_id IN ({}) ORDER BY account_id FOR UPDATE",
                    placeholders(1, chunk.len())
                ));
                for raise in chunk {
                    query = query.bind(raise.account.to_owned());
                }
                query.fetch_all(&mut *self.tx).await?;
            }
            // One statement raises every account of the chunk by the sum of its reports,
            // unless that would overflow a 64-bit counter.
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
            // The same ids again, as a condition on `account` itself: without it the planner,
            // which cannot see how few rows the VALUES list holds, reads every account (a hash
            // join over a sequential scan) instead of the batch's rows through the key.
            let ids_sql: Vec<String> = (0..chunk.len())
                .map(|n| format!("${}", n * 6 + 1))
                .collect();
            let mut query = self.query(format!(
                "WITH d (d_id, d_delta, d_max, d_at, d_cost, d_cost_max) AS (VALUES {}) \
                 UPDATE account SET tokens_used = tokens_used + d_delta, \
                     lifetime_tokens = lifetime_tokens + d_delta, updated_at = d_at, \
                     lifetime_cost_picos = lifetime_cost_picos + d_cost \
                 FROM d WHERE account_id = d_id AND tokens_used <= d_max AND lifetime_tokens <= d_max \
                     AND lifetime_cost_picos <= d_cost_max AND account_id IN ({}) \
                 RETURNING {ACCOUNT_COLUMNS}",
                rows_sql.join(", "),
                ids_sql.join(", ")
            ));
            for raise in chunk {
                query = query
                    .bind(raise.account.to_owned())
                    .bind(raise.tokens)
                    .bind(i64::MAX - raise.tokens)
                    .bind(raise.updated_at)
                    .bind(raise.cost_picos)
                    .bind(i64::MAX - raise.cost_picos);
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                raised.push(usage_from_row(&row).map_err(BatchError::Fatal)?);
            }
        }
        Ok(raised)
    }

    async fn existing_accounts(&mut self, ids: &[&str]) -> Result<HashSet<String>, BatchError> {
        let mut query = self.query(format!(
            "SELECT account_id FROM account WHERE account_id IN ({})",
            placeholders(1, ids.len())
        ));
        for id in ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&mut *self.tx).await?;
        Ok(rows
            .iter()
            .map(|r| r.text("account_id"))
            .collect::<Result<_, _>>()?)
    }

    async fn append_events(
        &mut self,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<(EventKey, i64)>, BatchError> {
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_CHUNK) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|n| format!("({})", placeholders(n * EVENT_PARAMS + 1, EVENT_PARAMS)))
                .collect();
            let mut query = self.query(format!(
                "INSERT INTO usage_event ({NEW_EVENT_COLUMNS}) VALUES {} \
                 ON CONFLICT (idempotency_key, account_id) DO NOTHING \
                 RETURNING usage_event_id, account_id, idempotency_key",
                rows.join(", ")
            ));
            for event in chunk {
                for value in event.values() {
                    query = match value {
                        EventValue::Int(v) => query.bind(v),
                        EventValue::OptInt(v) => query.bind(v),
                        EventValue::Text(v) => query.bind(v.to_owned()),
                        EventValue::OptText(v) => query.bind(v.map(str::to_owned)),
                    };
                }
            }
            let rows = query.fetch_all(&mut *self.tx).await?;
            if rows.len() != chunk.len() {
                return Err(BatchError::Retry(
                    "an idempotency key was recorded concurrently".into(),
                ));
            }
            for row in rows {
                ids.push((
                    (row.text("account_id")?, row.text("idempotency_key")?),
                    row.int("usage_event_id")?,
                ));
            }
        }
        Ok(ids)
    }

    async fn account(&mut self, id: &str) -> Result<Option<UserUsage>, BatchError> {
        accounts::get(&mut *self.tx, id)
            .await
            .map_err(BatchError::Fatal)
    }

    async fn commit(self) -> Result<(), BatchError> {
        Ok(self.tx.commit().await?)
    }
}

/// Accounts per multi-row UPDATE (6 parameters each).
const UPDATE_CHUNK: usize = 256;

/// Parameters per inserted event.
pub(super) const EVENT_PARAMS: usize = 18;

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
