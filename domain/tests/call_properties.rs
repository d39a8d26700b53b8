//! Properties of model calls: planning never reserves more than remains, cost is exact integer
//! arithmetic, prices parse without floats, and the event-stream reader survives any split.

use chrono::{TimeZone, Utc};
use domain::pricing::{parse_usd_per_million, usd_per_million_text};
use domain::sse::{SseEvent, SseParser, encode_event};
use domain::{
    CallUsage, ChatMessage, ChatRole, Conversation, InvokeBody, ModelName, ModelPrice, PriceTable,
    format_usd, input_allowance, picos_to_micros, plan_call,
};
use proptest::prelude::*;

fn usage() -> impl Strategy<Value = CallUsage> {
    (
        0u64..=1_000_000_000,
        0u64..=1_000_000_000,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(input, output, cached, write, reasoning)| CallUsage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached % (input + 1),
            cache_write_tokens: write % (input - cached % (input + 1) + 1),
            reasoning_tokens: reasoning % (output + 1),
        })
}

fn price() -> impl Strategy<Value = ModelPrice> {
    let p = 0u64..=domain::pricing::MAX_PRICE_MICROS_PER_MILLION;
    (p.clone(), p.clone(), p.clone(), p).prop_map(|(input, output, cache_read, cache_write)| {
        ModelPrice {
            model: ModelName::parse("m").unwrap(),
            effective_from: Utc.timestamp_opt(0, 0).unwrap(),
            input,
            output,
            cache_read,
            cache_write,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Seed property 16: a planned call never holds more than remains, never asks for more
    /// output than requested or allowed, and is refused only when not one output token fits.
    #[test]
    fn a_plan_fits_in_what_remains(
        estimate in 0u64..200_000,
        exact in any::<bool>(),
        requested in proptest::option::of(1u64..=100_000),
        default_out in 1u64..=8_192,
        max_out in 1u64..=100_000,
        remaining in 0u64..1_000_000,
    ) {
        let allowance = input_allowance(estimate, exact);
        prop_assert!(allowance >= estimate);
        match plan_call(allowance, requested, default_out, max_out, remaining) {
            Ok(plan) => {
                prop_assert!(plan.reserve() <= remaining);
                prop_assert!(plan.max_output >= 1);
                prop_assert!(plan.max_output <= requested.unwrap_or(default_out).min(max_out));
                prop_assert_eq!(plan.input_allowance, allowance);
                // Capped only by what remains.
                let wanted = requested.unwrap_or(default_out).min(max_out);
                prop_assert_eq!(plan.max_output, wanted.min(remaining - allowance));
            }
            Err(no_room) => {
                prop_assert!(remaining <= allowance);
                prop_assert_eq!(no_room.remaining, remaining);
                prop_assert_eq!(no_room.needed, allowance + 1);
            }
        }
    }

    /// Cost is the exact sum of the four parts at their prices, and adding tokens never lowers it.
    #[test]
    fn cost_is_exact_and_monotone(u in usage(), p in price(), extra in 0u64..1_000_000) {
        let cost = p.cost_picos(&u) as u128;
        let uncached = (u.input_tokens - u.cached_tokens - u.cache_write_tokens) as u128;
        let expected = uncached * p.input as u128
            + u.cached_tokens as u128 * p.cache_read as u128
            + u.cache_write_tokens as u128 * p.cache_write as u128
            + u.output_tokens as u128 * p.output as u128;
        prop_assert_eq!(cost, expected);
        // Fits the i64 column for any allowed call.
        prop_assert!(cost <= i64::MAX as u128);
        let more = CallUsage { output_tokens: u.output_tokens + extra, ..u };
        prop_assert!(p.cost_picos(&more) as u128 >= cost);
    }

    /// A multi-step exchange costs what its steps cost together (prices are linear).
    #[test]
    fn steps_add_up(a in usage(), b in usage(), p in price()) {
        let together = p.cost_picos(&a.plus(b)) as u128;
        prop_assert_eq!(together, p.cost_picos(&a) as u128 + p.cost_picos(&b) as u128);
        prop_assert_eq!(a.plus(b).total(), a.total() + b.total());
    }

    /// Rounding to micro-dollars is to the nearest, halves up, and off by at most half a micro.
    #[test]
    fn micros_round_to_nearest(picos in any::<u64>()) {
        let micros = picos_to_micros(picos) as u128;
        let diff = (micros * 1_000_000).abs_diff(picos as u128);
        prop_assert!(diff <= 500_000);
        if diff == 500_000 { prop_assert!(micros * 1_000_000 > picos as u128); }
    }

    /// A displayed cost is never "$0" for a non-zero cost, and cents are exact to the cent.
    #[test]
    fn shown_costs_are_never_zero_for_something(picos in 1u64..u64::MAX / 2) {
        let shown = format_usd(picos);
        prop_assert_ne!(&shown, "$0");
        prop_assert!(shown.starts_with('$') || shown.starts_with("<$"));
        if picos >= 100_000_000_000 {
            let cents = (picos as u128 + 5_000_000_000) / 10_000_000_000;
            prop_assert_eq!(shown, format!("${}.{:02}", cents / 100, cents % 100));
        }
    }

    /// Prices written as dollar text parse exactly and print back the same.
    #[test]
    fn prices_round_trip(micros in 0u64..=domain::pricing::MAX_PRICE_MICROS_PER_MILLION) {
        let text = usd_per_million_text(micros);
        prop_assert_eq!(parse_usd_per_million("input", &text), Ok(micros));
    }

    /// Anything that is not a plain decimal in range is refused with the field named.
    #[test]
    fn bad_prices_are_refused(raw in "[-+eE0-9.,$ ]{0,12}") {
        let is_plain = {
            let t = raw.trim();
            let (w, f) = t.split_once('.').unwrap_or((t, ""));
            !w.is_empty() && w.len() <= 4 && w.bytes().all(|b| b.is_ascii_digit())
                && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit())
                && (w.parse::<u64>().unwrap() < 1000 || (w == "1000" && f.bytes().all(|b| b == b'0')))
        };
        match parse_usd_per_million("output", &raw) {
            Ok(_) => prop_assert!(is_plain, "{:?} accepted", raw),
            Err(e) => {
                prop_assert!(!is_plain, "{:?} refused", raw);
                prop_assert_eq!(e.field, "output");
                prop_assert_eq!(e.code, "invalid_price");
            }
        }
    }

    /// The price charged is the latest one in effect at the call, so old events keep theirs.
    #[test]
    fn the_price_in_effect_is_charged(days in proptest::collection::btree_set(0i64..1000, 1..6), at in -10i64..1100) {
        let model = ModelName::parse("m").unwrap();
        let day = |d: i64| Utc.timestamp_opt(d * 86_400, 0).unwrap();
        let prices: Vec<ModelPrice> = days.iter().map(|&d| ModelPrice {
            model: model.clone(), effective_from: day(d), input: d as u64, output: 0, cache_read: 0, cache_write: 0,
        }).collect();
        let table = PriceTable::new(prices);
        let charged = table.price_at(&model, day(at)).map(|p| p.input as i64);
        let expected = days.iter().rev().find(|&&d| d <= at).copied();
        prop_assert_eq!(charged, expected);
    }

    /// However the network splits a stream, the same events come out, in order.
    #[test]
    fn sse_survives_any_split(
        events in proptest::collection::vec(("[a-z]{1,8}", "[ -~\\n]{0,40}"), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        crlf in any::<bool>(),
    ) {
        let mut wire = String::new();
        for (event, data) in &events {
            wire.push_str(&encode_event(event, data));
        }
        if crlf { wire = wire.replace('\n', "\r\n"); }
        let bytes = wire.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort();
        let mut parser = SseParser::new();
        let mut got: Vec<SseEvent> = Vec::new();
        let mut from = 0;
        for p in points.into_iter().chain(std::iter::once(bytes.len())) {
            got.extend(parser.push(&bytes[from..p]));
            from = p;
        }
        let expected: Vec<SseEvent> = events.iter().map(|(e, d)| SseEvent { event: e.clone(), data: d.clone() }).collect();
        prop_assert_eq!(got, expected);
    }

    /// Requests carry a prompt or messages, never both or neither, and a user message with text.
    #[test]
    fn a_call_needs_something_to_answer(prompt in proptest::option::of("[ a-z]{0,10}"), with_messages in any::<bool>()) {
        let body = InvokeBody {
            prompt: prompt.clone(),
            messages: with_messages.then(|| vec![ChatMessage { role: ChatRole::User, content: "hi".into() }]),
            ..InvokeBody::default()
        };
        let result = body.validate();
        let ok = match (&prompt, with_messages) {
            (Some(p), false) => !p.trim().is_empty(),
            (None, true) => true,
            _ => false,
        };
        prop_assert_eq!(result.is_ok(), ok, "{:?}", result);
        if let Err(e) = result { prop_assert!(!e.message.is_empty()); }
    }
}

#[test]
fn conversations_without_a_question_are_refused() {
    let only_system = vec![ChatMessage {
        role: ChatRole::System,
        content: "be brief".into(),
    }];
    assert_eq!(
        Conversation::new(only_system).unwrap_err().code,
        "empty_prompt"
    );
    let too_long = "x".repeat(domain::chat::MAX_PROMPT_CHARS + 1);
    assert_eq!(
        Conversation::from_prompt(&too_long).unwrap_err().code,
        "prompt_too_long"
    );
}

#[test]
fn costs_read_like_money() {
    // Claude Sonnet 4.5: $3 / $15 per million; 1,000 in + 500 out = $0.003 + $0.0075.
    let sonnet = ModelPrice {
        model: ModelName::parse("claude-sonnet-4-5").unwrap(),
        effective_from: Utc.timestamp_opt(0, 0).unwrap(),
        input: 3_000_000,
        output: 15_000_000,
        cache_read: 300_000,
        cache_write: 3_750_000,
    };
    let call = CallUsage {
        input_tokens: 1_000,
        output_tokens: 500,
        ..CallUsage::default()
    };
    assert_eq!(sonnet.cost_picos(&call), 10_500_000_000);
    assert_eq!(picos_to_micros(10_500_000_000), 10_500);
    assert_eq!(format_usd(10_500_000_000), "$0.0105");
    assert_eq!(format_usd(1_250_000_000_000), "$1.25");
    assert_eq!(format_usd(0), "$0");
    assert_eq!(parse_usd_per_million("cacheWrite", "18.75"), Ok(18_750_000));
}
