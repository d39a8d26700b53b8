//! The prices tokenmeter ships with, in dollars per million tokens as the providers publish
//! them. Each has the date it took effect, so a later change is added (not edited) and old
//! events keep the price they were charged at. Override or extend with `TOKENMETER_PRICES_FILE`.

use chrono::{DateTime, Utc};
use domain::{PriceConfig, PriceTable};

/// (model, effective from, input, output, cache read, cache write)
const DEFAULTS: &[(&str, &str, &str, &str, &str, &str)] = &[
    // The demo model is priced like Claude Sonnet 4.5, so its costs look like real ones.
    (
        "tokenmeter-demo",
        "2025-01-01T00:00:00Z",
        "3",
        "15",
        "0.3",
        "3.75",
    ),
    // Anthropic (Messages API and Bedrock ids).
    (
        "claude-sonnet-4-5",
        "2025-09-29T00:00:00Z",
        "3",
        "15",
        "0.3",
        "3.75",
    ),
    (
        "claude-sonnet-4-5-20250929",
        "2025-09-29T00:00:00Z",
        "3",
        "15",
        "0.3",
        "3.75",
    ),
    (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "2025-09-29T00:00:00Z",
        "3",
        "15",
        "0.3",
        "3.75",
    ),
    (
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "2025-09-29T00:00:00Z",
        "3",
        "15",
        "0.3",
        "3.75",
    ),
    (
        "claude-haiku-4-5",
        "2025-10-15T00:00:00Z",
        "1",
        "5",
        "0.1",
        "1.25",
    ),
    (
        "claude-haiku-4-5-20251001",
        "2025-10-15T00:00:00Z",
        "1",
        "5",
        "0.1",
        "1.25",
    ),
    (
        "claude-opus-4-1",
        "2025-08-05T00:00:00Z",
        "15",
        "75",
        "1.5",
        "18.75",
    ),
    // OpenAI.
    ("gpt-4o", "2024-08-06T00:00:00Z", "2.5", "10", "1.25", "2.5"),
    (
        "gpt-4o-mini",
        "2024-07-18T00:00:00Z",
        "0.15",
        "0.6",
        "0.075",
        "0.15",
    ),
    ("gpt-4.1", "2025-04-14T00:00:00Z", "2", "8", "0.5", "2"),
    (
        "gpt-4.1-mini",
        "2025-04-14T00:00:00Z",
        "0.4",
        "1.6",
        "0.1",
        "0.4",
    ),
    (
        "gpt-4.1-nano",
        "2025-04-14T00:00:00Z",
        "0.1",
        "0.4",
        "0.025",
        "0.1",
    ),
];

pub fn defaults() -> PriceTable {
    PriceTable::new(
        DEFAULTS
            .iter()
            .map(|&(model, from, input, output, read, write)| {
                PriceConfig {
                    model: model.to_owned(),
                    effective_from: from.parse::<DateTime<Utc>>().expect("a valid date"),
                    input: input.to_owned(),
                    output: output.to_owned(),
                    cache_read: Some(read.to_owned()),
                    cache_write: Some(write.to_owned()),
                }
                .validate()
                .expect("the shipped prices are valid")
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_price_is_valid_and_sonnet_costs_3_and_15() {
        let table = defaults();
        assert_eq!(table.all().len(), DEFAULTS.len());
        let sonnet = table
            .price_at(
                &domain::ModelName::parse("claude-sonnet-4-5").unwrap(),
                chrono::Utc::now(),
            )
            .unwrap();
        assert_eq!((sonnet.input, sonnet.output), (3_000_000, 15_000_000));
    }
}
