//! `tokenmeter seed-demo`: a handful of realistic users and three weeks of usage, so a new
//! install has something to look at. Deterministic, and does nothing on a database that already
//! has users.

use std::error::Error;

use app::ports::Ledger;
use chrono::{Duration, Utc};
use domain::{
    DisplayName, IdempotencyKey, ModelName, NewUser, RecordUsage, TokenLimit, UsageSource, UserId,
};

use crate::store::SqlLedger;

/// (id, name, limit, share of the limit to have used, in percent)
const DEMO_USERS: &[(&str, &str, i64, u64)] = &[
    ("ana.silva", "Ana Silva", 500_000, 42),
    ("ben.okafor", "Ben Okafor", 200_000, 81),
    ("chen.wei", "Chen Wei", 1_000_000, 18),
    ("dara.nguyen", "Dara Nguyen", 100_000, 93),
    ("eli.cohen", "Eli Cohen", 250_000, 100),
    ("farah.haddad", "Farah Haddad", 2_000_000, 6),
];

const MODELS: &[&str] = &["claude-sonnet-4-5", "gpt-4o-mini", "demo-echo"];
const DAYS: i64 = 21;

/// A small deterministic generator (64-bit LCG): the demo is the same on every machine.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// What seeding did.
pub struct Seeded {
    pub users: usize,
    pub events: usize,
}

pub async fn seed_demo(ledger: &SqlLedger) -> Result<Option<Seeded>, Box<dyn Error + Send + Sync>> {
    if !ledger.list_users().await?.is_empty() {
        return Ok(None);
    }
    let now = Utc::now();
    let start = now - Duration::days(DAYS);
    let mut rng = Lcg(0x7e57_5eed);
    let mut events = 0;
    for &(id, name, limit, percent) in DEMO_USERS {
        let user_id = UserId::parse(id)?;
        let new_user = NewUser::new(
            user_id.clone(),
            Some(DisplayName::parse(name)?),
            TokenLimit::new(limit)?,
        );
        ledger.create_user(new_user, start).await?;

        let target = limit as u64 * percent / 100;
        let mut usages = Vec::new();
        let mut times = Vec::new();
        let mut total = 0;
        while total < target {
            let tokens = (200 + rng.next(3_800)).min(target - total);
            let input = tokens * (55 + rng.next(30)) / 100;
            let model = ModelName::parse(MODELS[rng.next(MODELS.len() as u64) as usize])?;
            let key = IdempotencyKey::parse(&format!("demo-{id}-{}", usages.len()))?;
            usages.push(RecordUsage::new(
                user_id.clone(),
                tokens as i64,
                Some(input as i64),
                Some((tokens - input) as i64),
                Some(model),
                UsageSource::Demo,
                key,
            )?);
            total += tokens;
        }
        // Spread the events over the weeks, in time order.
        let span = (now - start).num_seconds() as u64;
        let mut offsets: Vec<u64> = (0..usages.len()).map(|_| rng.next(span)).collect();
        offsets.sort_unstable();
        times.extend(
            offsets
                .into_iter()
                .map(|s| start + Duration::seconds(s as i64)),
        );
        for outcome in ledger.record_at(&usages, &times).await {
            outcome?;
        }
        events += usages.len();
    }
    Ok(Some(Seeded {
        users: DEMO_USERS.len(),
        events,
    }))
}
