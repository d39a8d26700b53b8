//! Background jobs of a serving process: the rollup aggregator, the nightly rollup check and
//! the expiry of reservations.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveTime, Utc};

use crate::store::{AGGREGATE_BATCH, SqlLedger, Verification};

/// How often the aggregator looks for new ledger events.
pub const AGGREGATE_EVERY: Duration = Duration::from_millis(500);

/// Keeps the rollups current: every half second, folds what the ledger gained in one step
/// (more at once only while a step comes back full). Chasing the few events that arrive during
/// a step with steps of their own cost a write transaction each for a handful of events.
pub async fn aggregate_rollups(ledger: Arc<SqlLedger>) {
    let mut tick = tokio::time::interval(AGGREGATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match ledger.aggregate_once(AGGREGATE_BATCH).await {
                Ok(n) if n as i64 >= AGGREGATE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(%e, "rollup aggregation failed; retrying");
                    break;
                }
            }
        }
    }
}

/// When the nightly check runs, UTC (the seed's plan: 01:00, after the day is complete).
pub const NIGHTLY_AT: NaiveTime = NaiveTime::from_hms_opt(1, 0, 0).unwrap();

/// Every night at 01:00 UTC verifies yesterday's rollups (and any day since the last check,
/// e.g. while the server was down) against the ledger and repairs differences. A server that
/// starts after 01:00 with yesterday unchecked checks at once.
pub async fn nightly_rollup_check(ledger: Arc<SqlLedger>) {
    loop {
        let now = Utc::now();
        let today = now.date_naive();
        if now.time() >= NIGHTLY_AT
            && let Some(yesterday) = today.pred_opt()
        {
            match ledger.nightly_check(yesterday).await {
                Ok(Some((from, v))) => log_check(from, yesterday, &v),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%e, "nightly rollup check failed; retrying in 10 minutes")
                }
            }
        }
        let next = if now.time() >= NIGHTLY_AT {
            today
                .succ_opt()
                .unwrap_or(today)
                .and_time(NIGHTLY_AT)
                .and_utc()
        } else {
            today.and_time(NIGHTLY_AT).and_utc()
        };
        let wait = (next - Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(wait.min(Duration::from_secs(600))).await;
    }
}

fn log_check(from: chrono::NaiveDate, to: chrono::NaiveDate, v: &Verification) {
    if v.matches() {
        tracing::info!(%from, %to, events = v.events, days = v.days, "rollups verified: they match the ledger");
    } else {
        tracing::warn!(%from, %to, day_differences = v.day_differences.len(), member_differences = v.member_differences.len(), repaired = v.repaired, "rollups differed from the ledger");
    }
}

/// The expiry job: every 30 s, holds of calls that never ended (a crashed server, a lost
/// connection) are given back.
pub async fn release_expired_reservations(ledger: Arc<SqlLedger>) {
    use app::ports::Ledger;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        match ledger.release_expired(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "expired reservations released"),
            Err(e) => tracing::warn!(%e, "could not release expired reservations"),
        }
    }
}
