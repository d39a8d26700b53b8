//! Properties of periods and rollups (the reference the store's aggregator will be held to).

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use domain::rollup::{DeltaBuilder, EventFacts, Period, RollupDelta, day_batches, rollups_of};
use proptest::prelude::*;

fn moment() -> impl Strategy<Value = DateTime<Utc>> {
    // 2020-01-01 .. 2030-01-01, to the microsecond.
    (1_577_836_800_000_000i64..1_893_456_000_000_000)
        .prop_map(|us| Utc.timestamp_micros(us).unwrap())
}

fn event() -> impl Strategy<Value = EventFacts> {
    (
        0u8..4,
        moment(),
        0u64..10_000,
        0u64..10_000,
        0u64..1_000_000_000,
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..5),
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..4),
    )
        .prop_map(
            |(user, at, input, output, cost, model, conversation, agent, prompt)| EventFacts {
                user_id: format!("u{user}"),
                at,
                input_tokens: input,
                output_tokens: output,
                total_tokens: input + output,
                cost_picos: cost,
                model: model.map(|m| format!("m{m}")),
                conversation: conversation.map(|c| format!("c{c}")),
                agent: agent.map(|a| format!("a{a}")),
                prompt: prompt.map(|p| format!("p{p}")),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A bucket starts on its period's first day (Monday for ISO weeks, the 1st for months), on
    /// or before the moment, and the moment falls inside it.
    #[test]
    fn buckets_contain_their_moments(at in moment()) {
        let day = at.date_naive();
        prop_assert_eq!(Period::Day.bucket(at), day);
        let week = Period::Week.bucket(at);
        prop_assert_eq!(week.weekday(), Weekday::Mon);
        prop_assert!(week <= day && (day - week).num_days() < 7);
        prop_assert_eq!(week.iso_week(), day.iso_week());
        let month = Period::Month.bucket(at);
        prop_assert_eq!(month.day(), 1);
        prop_assert_eq!((month.year(), month.month()), (day.year(), day.month()));
    }

    /// Every period's rollups add up to the same totals as the events; each event counts once
    /// per period; distinct counts never exceed messages; order does not matter.
    #[test]
    fn rollups_are_sums_of_the_events(mut events in proptest::collection::vec(event(), 0..60)) {
        let rollups = rollups_of(&events);
        for period in Period::ALL {
            let of_period: Vec<_> = rollups.iter().filter(|((_, p, _), _)| *p == period).map(|(_, r)| r).collect();
            prop_assert_eq!(of_period.iter().map(|r| r.total_tokens).sum::<u64>(), events.iter().map(|e| e.total_tokens).sum::<u64>());
            prop_assert_eq!(of_period.iter().map(|r| r.cost_picos).sum::<u64>(), events.iter().map(|e| e.cost_picos).sum::<u64>());
            prop_assert_eq!(of_period.iter().map(|r| r.messages).sum::<u64>(), events.len() as u64);
            for r in &of_period {
                prop_assert_eq!(r.input_tokens + r.output_tokens, r.total_tokens);
                prop_assert!(r.conversations <= r.messages && r.agents <= r.messages && r.models <= r.messages);
                prop_assert!(r.conversations <= 5 && r.agents <= 3 && r.models <= 3);
            }
        }
        // A month holds at least as much as any of its days.
        for ((user, period, bucket), r) in &rollups {
            if *period == Period::Day {
                let at = Utc.from_utc_datetime(&bucket.and_hms_opt(12, 0, 0).unwrap());
                let month = &rollups[&(user.clone(), Period::Month, Period::Month.bucket(at))];
                prop_assert!(month.total_tokens >= r.total_tokens && month.messages >= r.messages);
                prop_assert!(month.conversations >= r.conversations);
            }
        }
        events.reverse();
        prop_assert_eq!(rollups_of(&events), rollups);
    }

    /// The aggregator's way: events folded batch by batch (any cut) into day deltas that are
    /// added up gives, for every period, the same rollups as computing them from scratch.
    #[test]
    fn deltas_in_any_batches_add_up_to_the_reference(
        events in proptest::collection::vec(event(), 0..80),
        cuts in proptest::collection::vec(0usize..80, 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
        cuts.push(0);
        cuts.push(events.len());
        cuts.sort_unstable();
        let mut total = RollupDelta::default();
        for pair in cuts.windows(2) {
            total.merge(&RollupDelta::of(&events[pair[0]..pair[1]]));
        }
        prop_assert_eq!(total.to_rollups(), rollups_of(&events));
    }

    /// The builder that backfills and checks use gives exactly the delta of adding the events
    /// one by one (within 70 days, so they share days, weeks and months).
    #[test]
    fn the_builder_gives_the_delta_of_the_events(
        events in proptest::collection::vec(event(), 0..120),
    ) {
        let events: Vec<EventFacts> = events
            .into_iter()
            .map(|e| {
                let offset = e.at.timestamp_micros().rem_euclid(70 * 86_400_000_000);
                EventFacts { at: Utc.timestamp_micros(1_767_000_000_000_000 + offset).unwrap(), ..e }
            })
            .collect();
        let mut builder = DeltaBuilder::default();
        for e in &events {
            builder.add(e);
        }
        prop_assert_eq!(builder.finish(), RollupDelta::of(&events));
    }

    /// A split always adds up to the total and keeps a known output.
    #[test]
    fn splits_add_up(total in 0u64..1_000_000, input in proptest::option::of(0u64..1_000_000), output in proptest::option::of(0u64..1_000_000)) {
        let input = input.map(|i| i.min(total));
        let output = output.map(|o| o.min(total - input.unwrap_or(0)));
        let (i, o) = EventFacts::split(total, input, output);
        prop_assert_eq!(i + o, total);
        if let Some(known) = output { prop_assert_eq!(o, known); }
        if let (Some(known), None) = (input, output) { prop_assert_eq!(i, known); }
    }

    /// A period's last day is in the same period and the next day starts the next one.
    #[test]
    fn last_days_end_their_periods(at in moment()) {
        for period in Period::ALL {
            let bucket = period.bucket(at);
            let last = period.last_day(bucket);
            prop_assert_eq!(period.bucket_of_day(last), bucket);
            prop_assert_eq!(period.bucket_of_day(last.succ_opt().unwrap()), last.succ_opt().unwrap());
        }
    }

    /// Backfill batches cover the range exactly, in order, each at most `days` long and inside
    /// one month; with `days` ≥ 31 they are whole months cut to the range.
    #[test]
    fn batches_cover_the_range_within_months(
        from in moment(),
        length in 0u64..800,
        days in 1u32..=366,
    ) {
        let from = from.date_naive();
        let to = from + chrono::Days::new(length);
        let batches = day_batches(from, to, days);
        prop_assert_eq!(batches.first().map(|b| b.0), Some(from));
        prop_assert_eq!(batches.last().map(|b| b.1), Some(to));
        for pair in batches.windows(2) {
            prop_assert_eq!(pair[0].1.succ_opt(), Some(pair[1].0));
        }
        for &(start, end) in &batches {
            prop_assert!(start <= end);
            prop_assert!((end - start).num_days() < days as i64);
            prop_assert_eq!(Period::Month.bucket_of_day(start), Period::Month.bucket_of_day(end));
            let month = Period::Month.bucket_of_day(start);
            if days >= 31 {
                prop_assert_eq!(start, month.max(from));
                prop_assert_eq!(end, Period::Month.last_day(month).min(to));
            }
        }
    }
}

#[test]
fn weeks_cross_months_and_years() {
    // Thursday 2026-01-01 belongs to the ISO week that started Monday 2025-12-29.
    let new_year = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(Period::Week.bucket(new_year).to_string(), "2025-12-29");
    assert_eq!(Period::Month.bucket(new_year).to_string(), "2026-01-01");
    // The last microsecond of a day is still that day.
    let late = Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 59).unwrap()
        + chrono::Duration::microseconds(999_999);
    assert_eq!(Period::Day.bucket(late).to_string(), "2026-11-22");
    assert_eq!(Period::parse("weekly"), Ok(Period::Week));
    assert_eq!(Period::parse("yearly").unwrap_err().code, "invalid_period");
}
