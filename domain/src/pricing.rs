//! Prices and cost, in integers only.
//!
//! A price is **micro-dollars per million tokens** (`$3.00 / M` = `3_000_000`), which is the same
//! number as pico-dollars per token. A cost is **pico-dollars** (10^-12 USD): the product of a
//! token count and a price, exact, with no rounding until it is shown. Prices are capped at
//! $1,000 per million tokens and a call at 10^9 tokens per kind, so a call's cost (at most
//! 4 × 10^18 pico-dollars) fits an `i64` column.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ModelName, ValidationError};

/// Pico-dollars in one micro-dollar.
pub const PICOS_PER_MICRO: u64 = 1_000_000;

/// The highest price accepted: $1,000 per million tokens, in micro-dollars per million.
pub const MAX_PRICE_MICROS_PER_MILLION: u64 = 1_000_000_000;

/// What one model call consumed, as the provider reported it (or as counted, when it did not).
///
/// `input_tokens` is every prompt token, including those read from or written to a prompt cache;
/// `cached_tokens` and `cache_write_tokens` say how many of them were. `output_tokens` is every
/// generated token, including hidden reasoning; `reasoning_tokens` says how many were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl CallUsage {
    /// Input and output together: what counts against a token limit.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Keeps the parts inside their wholes (a provider may report them inconsistently): cache
    /// reads and writes within the input, reasoning within the output.
    pub fn normalized(mut self) -> Self {
        self.cached_tokens = self.cached_tokens.min(self.input_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .min(self.input_tokens - self.cached_tokens);
        self.reasoning_tokens = self.reasoning_tokens.min(self.output_tokens);
        self
    }

    /// The usage of a multi-step exchange: the sum over its steps.
    pub fn plus(self, other: CallUsage) -> CallUsage {
        CallUsage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cached_tokens: self.cached_tokens.saturating_add(other.cached_tokens),
            cache_write_tokens: self
                .cache_write_tokens
                .saturating_add(other.cache_write_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(other.reasoning_tokens),
        }
    }
}

/// A model's price from a moment on. Each field is micro-dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    pub model: ModelName,
    pub effective_from: DateTime<Utc>,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl ModelPrice {
    /// The cost of a call in pico-dollars: uncached input, cache reads, cache writes and output,
    /// each at its own price. Exact; never rounds.
    pub fn cost_picos(&self, usage: &CallUsage) -> u64 {
        let u = usage.normalized();
        let uncached = u.input_tokens - u.cached_tokens - u.cache_write_tokens;
        let picos = uncached as u128 * self.input as u128
            + u.cached_tokens as u128 * self.cache_read as u128
            + u.cache_write_tokens as u128 * self.cache_write as u128
            + u.output_tokens as u128 * self.output as u128;
        u64::try_from(picos).unwrap_or(u64::MAX)
    }
}

/// Every price the server knows, with their histories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    prices: Vec<ModelPrice>,
}

impl PriceTable {
    pub fn new(mut prices: Vec<ModelPrice>) -> Self {
        prices.sort_by(|a, b| {
            (a.model.as_str(), a.effective_from).cmp(&(b.model.as_str(), b.effective_from))
        });
        Self { prices }
    }

    /// Adds prices; one with the same model and date as an existing price replaces it.
    pub fn overridden_by(self, overrides: Vec<ModelPrice>) -> Self {
        let mut prices = self.prices;
        for new in overrides {
            prices.retain(|p| !(p.model == new.model && p.effective_from == new.effective_from));
            prices.push(new);
        }
        Self::new(prices)
    }

    /// The price charged for `model` at `at`: the latest one effective on or before `at`.
    pub fn price_at(&self, model: &ModelName, at: DateTime<Utc>) -> Option<&ModelPrice> {
        self.prices
            .iter()
            .filter(|p| &p.model == model && p.effective_from <= at)
            .max_by_key(|p| p.effective_from)
    }

    pub fn all(&self) -> &[ModelPrice] {
        &self.prices
    }
}

/// A cost in pico-dollars, rounded to micro-dollars for the API: to the nearest, halves up.
pub fn picos_to_micros(picos: u64) -> u64 {
    picos / PICOS_PER_MICRO + u64::from(picos % PICOS_PER_MICRO >= PICOS_PER_MICRO / 2)
}

/// A cost in pico-dollars as people read it: `$1.25`, `$0.0105`, `$0.000123`, `$0`.
///
/// Ten cents or more show cents (rounded to the nearest, halves up). Smaller costs show three
/// significant figures (trailing zeros dropped), down to a millionth of a cent; anything smaller
/// but not zero shows as `<$0.00000001`.
pub fn format_usd(picos: u64) -> String {
    const PICOS_PER_DOLLAR: u128 = 1_000_000_000_000;
    let picos = picos as u128;
    if picos == 0 {
        return "$0".to_owned();
    }
    if picos * 10 >= PICOS_PER_DOLLAR {
        let cents = (picos + PICOS_PER_DOLLAR / 200) / (PICOS_PER_DOLLAR / 100);
        return format!("${}.{:02}", cents / 100, cents % 100);
    }
    for decimals in 3..=8u32 {
        let unit = PICOS_PER_DOLLAR / 10u128.pow(decimals);
        let scaled = (picos + unit / 2) / unit;
        if scaled >= 100 || (decimals == 8 && scaled > 0) {
            let digits = format!("{:0width$}", scaled, width = decimals as usize);
            let kept = digits.trim_end_matches('0');
            let kept = if kept.len() < 2 { &digits[..2] } else { kept };
            return format!("$0.{kept}");
        }
    }
    "<$0.00000001".to_owned()
}

/// Parses a price in dollars per million tokens, as people write it (`"3"`, `"0.075"`,
/// `"18.75"`), into micro-dollars per million without floating point. At most six decimals and
/// at most $1,000.
pub fn parse_usd_per_million(field: &str, raw: &str) -> Result<u64, ValidationError> {
    let bad = || {
        ValidationError::new(
            field,
            "invalid_price",
            format!(
                "{field} must be a price in dollars per million tokens from 0 to 1000 with at most 6 decimals, like 3 or 0.075; got {raw:?}."
            ),
        )
    };
    let raw_trimmed = raw.trim();
    let (whole, fraction) = raw_trimmed.split_once('.').unwrap_or((raw_trimmed, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 4
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 6
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let fraction: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().map_err(|_| bad())?
    };
    let micros = whole * 1_000_000 + fraction;
    if micros > MAX_PRICE_MICROS_PER_MILLION {
        return Err(bad());
    }
    Ok(micros)
}

/// Writes micro-dollars per million back as dollars (`3000000` → `"3"`, `75000` → `"0.075"`).
pub fn usd_per_million_text(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    if fraction == 0 {
        whole.to_string()
    } else {
        let digits = format!("{fraction:06}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A price as configured: dollars per million tokens written as text, so that no float is ever
/// involved (`{"model": "gpt-4o", "effectiveFrom": "2024-08-06T00:00:00Z", "input": "2.5", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceConfig {
    pub model: String,
    pub effective_from: DateTime<Utc>,
    pub input: String,
    pub output: String,
    #[serde(default)]
    pub cache_read: Option<String>,
    #[serde(default)]
    pub cache_write: Option<String>,
}

impl PriceConfig {
    /// Validates a configured price; missing cache prices default to the input price.
    pub fn validate(&self) -> Result<ModelPrice, ValidationError> {
        let model = ModelName::parse(&self.model)?;
        let input = parse_usd_per_million("input", &self.input)?;
        let output = parse_usd_per_million("output", &self.output)?;
        let cache_read = match &self.cache_read {
            Some(raw) => parse_usd_per_million("cacheRead", raw)?,
            None => input,
        };
        let cache_write = match &self.cache_write {
            Some(raw) => parse_usd_per_million("cacheWrite", raw)?,
            None => input,
        };
        Ok(ModelPrice {
            model,
            effective_from: self.effective_from,
            input,
            output,
            cache_read,
            cache_write,
        })
    }
}
