//! `tokenmeter seed-demo`: a handful of realistic users and three weeks of usage, so a new
//! install has something to look at. Deterministic, and does nothing on a database that already
//! has users.

use std::error::Error;

use app::credentials::hash_password;
use app::ports::{AuthStore, Ledger};
use chrono::{Duration, Utc};
use domain::api::DemoLoginView;
use domain::{
    DisplayName, IdempotencyKey, ModelName, NewUser, RecordUsage, Role, TokenLimit, UsageContext,
    UsageSource, UserId,
};

use crate::store::SqlLedger;

/// The demo administrator and the password every demo account has. Public on purpose: the
/// README and the login page (in demo mode only) say them.
pub const DEMO_ADMIN: &str = "admin";
pub const DEMO_ADMIN_PASSWORD: &str = "demo-admin";
pub const DEMO_USER_PASSWORD: &str = "demo-password";

/// The accounts the login page offers in demo mode.
pub fn demo_logins() -> Vec<DemoLoginView> {
    std::iter::once(DemoLoginView {
        user_id: DEMO_ADMIN.to_owned(),
        password: DEMO_ADMIN_PASSWORD.to_owned(),
        role: Role::Admin,
    })
    .chain(DEMO_USERS.iter().map(|(id, ..)| DemoLoginView {
        user_id: (*id).to_owned(),
        password: DEMO_USER_PASSWORD.to_owned(),
        role: Role::User,
    }))
    .collect()
}

/// (id, name, limit, share of the limit to have used, in percent)
const DEMO_USERS: &[(&str, &str, i64, u64)] = &[
    ("ana.silva", "Ana Silva", 500_000, 42),
    ("ben.okafor", "Ben Okafor", 200_000, 81),
    ("chen.wei", "Chen Wei", 1_000_000, 18),
    ("dara.nguyen", "Dara Nguyen", 100_000, 93),
    ("eli.cohen", "Eli Cohen", 250_000, 100),
    ("farah.haddad", "Farah Haddad", 2_000_000, 6),
];

const MODELS: &[&str] = &["claude-sonnet-4-5", "gpt-4o-mini", "tokenmeter-demo"];
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

/// The agents demo usage is spread over.
const DEMO_AGENTS: [&str; 2] = ["support-bot", "research-assistant"];

pub async fn seed_demo(ledger: &SqlLedger) -> Result<Option<Seeded>, Box<dyn Error + Send + Sync>> {
    if !ledger.list_users().await?.is_empty() {
        return Ok(None);
    }
    let now = Utc::now();
    let start = now - Duration::days(DAYS);
    let mut rng = Lcg(0x7e57_5eed);
    let mut events = 0;
    let admin_hash = hash_password(DEMO_ADMIN_PASSWORD.to_owned()).await?;
    let user_hash = hash_password(DEMO_USER_PASSWORD.to_owned()).await?;
    let admin = NewUser::new(
        UserId::parse(DEMO_ADMIN)?,
        Some(DisplayName::parse("Demo Admin")?),
        TokenLimit::new(1_000_000)?,
    )
    .with_role(Role::Admin);
    ledger
        .create_user_with_password(admin, &admin_hash, start)
        .await?;
    let prices = crate::providers::default_prices();
    for &(id, name, limit, percent) in DEMO_USERS {
        let user_id = UserId::parse(id)?;
        let new_user = NewUser::new(
            user_id.clone(),
            Some(DisplayName::parse(name)?),
            TokenLimit::new(limit)?,
        );
        ledger
            .create_user_with_password(new_user, &user_hash, start)
            .await?;

        let target = limit as u64 * percent / 100;
        let mut usages = Vec::new();
        let mut times = Vec::new();
        let mut total = 0;
        while total < target {
            let tokens = (200 + rng.next(3_800)).min(target - total);
            let input = tokens * (55 + rng.next(30)) / 100;
            let model = ModelName::parse(MODELS[rng.next(MODELS.len() as u64) as usize])?;
            let key = IdempotencyKey::parse(&format!("demo-{id}-{}", usages.len()))?;
            // A few messages per conversation; each user works with one or two agents.
            let conversation = format!("{id}-chat-{}", usages.len() / 4);
            let agent = DEMO_AGENTS[rng.next(2) as usize];
            usages.push(
                RecordUsage::new(
                    user_id.clone(),
                    tokens as i64,
                    Some(input as i64),
                    Some((tokens - input) as i64),
                    Some(model),
                    UsageSource::Demo,
                    key,
                )?
                .with_context(UsageContext::parse(
                    Some(&conversation),
                    Some(agent),
                    None,
                )?),
            );
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
        // Each use costs what its model cost on its day.
        for (usage, at) in usages.iter_mut().zip(&times) {
            usage.cost_picos = usage
                .model
                .as_ref()
                .and_then(|m| prices.price_at(m, *at))
                .map(|p| p.cost_picos(&usage.as_call_usage()))
                .unwrap_or(0);
        }
        for outcome in ledger.record_at(&usages, &times).await {
            outcome?;
        }
        events += usages.len();
    }
    Ok(Some(Seeded {
        users: DEMO_USERS.len() + 1,
        events,
    }))
}

/// What `tokenmeter bench-data` made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchData {
    pub users: u64,
    pub events: u64,
}

/// Benchmark data: `users` users (`u0`, `u1`, …) and `events` usage events spread evenly over
/// the `days` days before today, oldest first, each with a model (3), an agent (5), a prompt
/// (20) and a conversation (about 8 messages each), recorded through the ledger in large
/// batches (counters and events stay exact). Deterministic.
pub async fn bench_data(
    ledger: &SqlLedger,
    users: u64,
    events: u64,
    days: u64,
    mut progress: impl FnMut(u64),
) -> Result<BenchData, Box<dyn Error + Send + Sync>> {
    const MODELS: [&str; 3] = ["gpt-4o-mini", "claude-sonnet-4-5", "tokenmeter-demo"];
    const BATCH: u64 = 10_000;
    for n in 0..users {
        let user = NewUser::new(
            UserId::parse(&format!("u{n}"))?,
            None,
            TokenLimit::new(1_000_000_000_000_000)?,
        );
        match ledger.create_user(user, Utc::now()).await {
            Ok(_) | Err(app::ports::LedgerError::UserExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let today = Utc::now().date_naive();
    let start = (today - chrono::Days::new(days))
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let span_us = days as i64 * 86_400_000_000;
    let mut rng = Lcg(0xbe9c_da7a);
    let mut messages = vec![0u64; users as usize];
    let mut done = 0;
    while done < events {
        let size = BATCH.min(events - done);
        let mut usages = Vec::with_capacity(size as usize);
        let mut times = Vec::with_capacity(size as usize);
        for i in done..done + size {
            let user = rng.next(users);
            let tokens = 100 + rng.next(4_000);
            let input = tokens * (50 + rng.next(40)) / 100;
            let sent = messages[user as usize];
            messages[user as usize] += 1;
            let usage = RecordUsage::new(
                UserId::parse(&format!("u{user}"))?,
                tokens as i64,
                Some(input as i64),
                Some((tokens - input) as i64),
                Some(ModelName::parse(MODELS[rng.next(3) as usize])?),
                UsageSource::Demo,
                IdempotencyKey::parse(&format!("bench-{i}"))?,
            )?
            .with_context(UsageContext::parse(
                Some(&format!("conv-{}", sent / 8)),
                Some(&format!("agent-{}", rng.next(5))),
                Some(&format!("prompt-{}", rng.next(20))),
            )?);
            usages.push(RecordUsage {
                cost_picos: tokens * 2_000_000,
                ..usage
            });
            times.push(start + Duration::microseconds(span_us / events as i64 * i as i64));
        }
        for outcome in ledger.record_at(&usages, &times).await {
            outcome?;
        }
        done += size;
        progress(done);
    }
    Ok(BenchData { users, events })
}
