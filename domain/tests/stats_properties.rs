//! Statistics queries: validation, the reference answer's invariants, sorting and paging, and
//! CSV that any RFC 4180 reader reads back exactly.

use chrono::{NaiveDate, TimeZone, Utc};
use domain::SortDirection;
use domain::rollup::{EventFacts, Period};
use domain::stats::{
    CSV_HEADER, GroupBy, StatsParams, StatsQuery, StatsSortKey, csv_record, sort_rows,
    stats_of_events,
};
use proptest::prelude::*;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

fn params(pairs: &[(&str, &str)]) -> StatsParams {
    let mut p = StatsParams::default();
    for (k, v) in pairs {
        let v = Some(v.to_string());
        match *k {
            "userId" => p.user_id = v,
            "from" => p.from = v,
            "to" => p.to = v,
            "days" => p.days = v,
            "period" => p.period = v,
            "model" => p.model = v,
            "groupBy" => p.group_by = v,
            "sort" => p.sort = v,
            "direction" => p.direction = v,
            "page" => p.page = v,
            "pageSize" => p.page_size = v,
            _ => panic!("unknown {k}"),
        }
    }
    p
}

#[test]
fn defaults_are_the_last_30_days_by_day() {
    let q = params(&[]).validate(today()).unwrap();
    assert_eq!(
        (q.from.to_string(), q.to.to_string()),
        ("2026-10-25".into(), "2026-11-23".into())
    );
    assert_eq!(
        (q.period, q.group_by, q.sort, q.direction),
        (
            Period::Day,
            GroupBy::Day,
            StatsSortKey::Key,
            SortDirection::Asc
        )
    );
    assert_eq!((q.page, q.page_size), (1, 50));
    let q = params(&[("days", "7")]).validate(today()).unwrap();
    assert_eq!(q.from.to_string(), "2026-11-17");
    let q = params(&[("groupBy", "model")]).validate(today()).unwrap();
    assert_eq!(
        (q.sort, q.direction),
        (StatsSortKey::Total, SortDirection::Desc)
    );
    let q = params(&[
        ("period", "weekly"),
        ("from", "2026-11-04"),
        ("to", "2026-11-04"),
    ])
    .validate(today())
    .unwrap();
    assert_eq!(q.group_by, GroupBy::Week);
    // A Wednesday grows to its whole ISO week.
    assert_eq!(
        q.effective_range(),
        (
            NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 8).unwrap()
        )
    );
}

#[test]
fn bad_parameters_say_what_is_wrong() {
    let cases: &[(&[(&str, &str)], &str, &str)] = &[
        (&[("from", "2026-13-01")], "from", "invalid_from"),
        (&[("to", "yesterday")], "to", "invalid_to"),
        (
            &[("from", "2026-11-10"), ("to", "2026-11-01")],
            "from",
            "invalid_range",
        ),
        (
            &[("from", "2000-01-01"), ("to", "2026-01-01")],
            "from",
            "range_too_long",
        ),
        (&[("period", "hourly")], "period", "invalid_period"),
        (&[("groupBy", "colour")], "groupBy", "invalid_group_by"),
        (
            &[("groupBy", "week"), ("period", "month")],
            "groupBy",
            "conflicting_period",
        ),
        (&[("sort", "size")], "sort", "invalid_sort"),
        (&[("direction", "up")], "direction", "invalid_direction"),
        (&[("page", "0")], "page", "invalid_page"),
        (&[("page", "-1")], "page", "invalid_page"),
        (&[("pageSize", "1001")], "pageSize", "invalid_page_size"),
        (&[("pageSize", "ten")], "pageSize", "invalid_page_size"),
        (&[("days", "0")], "days", "invalid_days"),
        (
            &[("days", "7"), ("from", "2026-11-01")],
            "days",
            "conflicting_range",
        ),
        (&[("userId", "no spaces")], "userId", "invalid_user_id"),
        (&[("model", "gpt 4")], "model", "invalid_model"),
    ];
    for (pairs, field, code) in cases {
        let e = params(pairs).validate(today()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code.as_str()),
            (*field, *code),
            "{pairs:?}"
        );
        assert!(e.message.len() > 10, "{pairs:?}: {}", e.message);
    }
}

fn event() -> impl Strategy<Value = EventFacts> {
    (
        0u8..3,
        // 2026-09-01 .. 2026-12-31
        1_788_220_800_000_000i64..1_798_761_600_000_000,
        0u64..5_000,
        0u64..5_000,
        0u64..10_000_000,
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..6),
        proptest::option::of(0u8..2),
    )
        .prop_map(
            |(user, at, input, output, cost, model, conversation, agent)| EventFacts {
                user_id: format!("u{user}"),
                at: Utc.timestamp_micros(at).unwrap(),
                input_tokens: input,
                output_tokens: output,
                total_tokens: input + output,
                cost_picos: cost,
                model: model.map(|m| format!("m{m}")),
                conversation: conversation.map(|c| format!("c{c}")),
                agent: agent.map(|a| format!("a{a}")),
                prompt: None,
            },
        )
}

fn group_by() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("day"),
        Just("week"),
        Just("month"),
        Just("model"),
        Just("agent"),
        Just("prompt"),
        Just("user")
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Rows add up to the summary, every row has messages, and paging shows each row once.
    #[test]
    fn rows_add_up_and_pages_partition_them(
        events in proptest::collection::vec(event(), 0..80),
        group in group_by(),
        page_size in 1u32..7,
        from_day in 0u64..100,
        len in 0u64..60,
    ) {
        let from = NaiveDate::from_ymd_opt(2026, 9, 1).unwrap() + chrono::Days::new(from_day);
        let to = from + chrono::Days::new(len);
        let q = params(&[("groupBy", group), ("from", &from.to_string()), ("to", &to.to_string())]).validate(today()).unwrap();
        let answer = stats_of_events(&events, &q);
        let total: u64 = answer.rows.iter().map(|r| r.total_tokens).sum();
        let messages: u64 = answer.rows.iter().map(|r| r.messages).sum();
        prop_assert_eq!(total, answer.summary.total_tokens);
        prop_assert_eq!(messages, answer.summary.messages);
        prop_assert_eq!(answer.summary.input_tokens + answer.summary.output_tokens, answer.summary.total_tokens);
        prop_assert!(answer.rows.iter().all(|r| r.messages > 0));
        let (first, last) = q.effective_range();
        prop_assert_eq!(answer.summary.days, (last - first).num_days() as u64 + 1);

        let mut seen = Vec::new();
        let mut page = 1;
        loop {
            let q = StatsQuery { page, page_size, ..q.clone() };
            let view = stats_of_events(&events, &q).into_view(&q, None);
            prop_assert!(view.rows.len() <= page_size as usize);
            seen.extend(view.rows.iter().map(|r| r.key.clone()));
            if page >= view.page.pages { break; }
            page += 1;
        }
        prop_assert_eq!(seen.len(), answer.rows.len());
        // A page past the end shows the last one.
        let past = StatsQuery { page: 10_000, page_size, ..q.clone() };
        let view = stats_of_events(&events, &past).into_view(&past, None);
        prop_assert_eq!(view.page.page, view.page.pages);
    }

    /// Sorting is total and follows the key, ties broken by the row's key.
    #[test]
    fn sorting_orders_by_the_key(events in proptest::collection::vec(event(), 0..60), desc in any::<bool>()) {
        let q = params(&[("groupBy", "day"), ("from", "2026-09-01"), ("to", "2026-12-31")]).validate(today()).unwrap();
        let mut rows = stats_of_events(&events, &q).rows;
        let direction = if desc { SortDirection::Desc } else { SortDirection::Asc };
        sort_rows(&mut rows, StatsSortKey::Total, direction);
        for pair in rows.windows(2) {
            let ordered = if desc { pair[0].total_tokens >= pair[1].total_tokens } else { pair[0].total_tokens <= pair[1].total_tokens };
            prop_assert!(ordered);
            if pair[0].total_tokens == pair[1].total_tokens { prop_assert!(pair[0].key < pair[1].key); }
        }
    }

    /// Any text (commas, quotes, line breaks, any Unicode) survives a CSV round trip.
    #[test]
    fn csv_records_read_back_exactly(fields in proptest::collection::vec(any::<String>(), 1..6)) {
        let mut text = csv_record(&CSV_HEADER[..fields.len()]);
        text.push_str(&csv_record(&fields));
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(records.len(), 1);
        let read: Vec<String> = records[0].iter().map(str::to_owned).collect();
        prop_assert_eq!(read, fields);
    }
}

#[test]
fn csv_escapes_commas_quotes_and_line_breaks() {
    assert_eq!(
        csv_record(&["plain", "a,b", "say \"hi\"", "two\nlines", ""]),
        "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n"
    );
}
