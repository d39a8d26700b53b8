//! Property tests for the domain: seed 000's properties 1–5, 9, 10, 12, 18 and 19, plus the
//! invariants of the math. Each runs hundreds of generated cases.

use chrono::{DateTime, TimeZone, Utc};
use domain::api::{CreateUserBody, RecordUsageBody, SetLimitBody, UserView};
use domain::{
    IdempotencyKey, NewUser, SortDirection, TokenLimit, UsageLevel, UsageSource, UserId,
    UserSortKey, UserUsage, remaining_tokens, sort_users, used_basis_points,
};
use proptest::prelude::*;

const CASES: u32 = 512;

fn valid_user_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._@-]{1,64}"
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800).prop_map(|s| Utc.timestamp_opt(s, 0).single().expect("in range"))
}

fn valid_limit() -> impl Strategy<Value = i64> {
    prop_oneof![1i64..1_000_000, 1i64..=TokenLimit::MAX as i64]
}

fn user() -> impl Strategy<Value = UserUsage> {
    (valid_user_id(), valid_limit(), 0u64..2_000_000, timestamp()).prop_map(
        |(id, limit, used, at)| {
            let id = UserId::parse(&id).expect("valid id");
            NewUser::new(id, None, TokenLimit::new(limit).expect("valid limit"))
                .initial_usage(at)
                .with_recorded(used, at)
        },
    )
}

fn key() -> IdempotencyKey {
    IdempotencyKey::parse("k-1").expect("valid key")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Property 1: a created user starts with zero usage, the given limit and id, stamped now.
    #[test]
    fn creation_initialises_correctly(id in valid_user_id(), limit in valid_limit(), at in timestamp()) {
        let body = CreateUserBody { user_id: id.clone(), token_limit: limit, display_name: None, ..Default::default() };
        let new_user = body.validate().expect("valid body");
        let usage = new_user.initial_usage(at);
        prop_assert_eq!(usage.user_id.as_str(), id.as_str());
        prop_assert_eq!(usage.display_name.as_str(), id.as_str());
        prop_assert_eq!(usage.token_limit.get(), limit as u64);
        prop_assert_eq!(usage.tokens_used, 0);
        prop_assert_eq!(usage.lifetime_tokens, 0);
        prop_assert_eq!(usage.remaining(), limit as u64);
        prop_assert_eq!(usage.updated_at, at);
    }

    /// Property 2: a limit update replaces the limit and leaves usage alone.
    #[test]
    fn limit_updates_persist(u in user(), new_limit in valid_limit(), at in timestamp()) {
        let limit = SetLimitBody { token_limit: new_limit }.validate().expect("valid");
        let updated = u.clone().with_limit(limit, at);
        prop_assert_eq!(updated.token_limit.get(), new_limit as u64);
        prop_assert_eq!(updated.tokens_used, u.tokens_used);
        prop_assert_eq!(updated.lifetime_tokens, u.lifetime_tokens);
        prop_assert_eq!(updated.updated_at, at);
    }

    /// Property 3: what is sent is what is read back (JSON round trip of the wire type).
    #[test]
    fn user_view_round_trips(u in user()) {
        let view = UserView::from(&u);
        let json = serde_json::to_string(&view).expect("serialises");
        let back: UserView = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(&back, &view);
        prop_assert_eq!(back.user_id.as_str(), u.user_id.as_str());
        prop_assert_eq!(back.token_usage, u.tokens_used);
        prop_assert_eq!(back.token_limit, u.token_limit.get());
        prop_assert_eq!(back.last_updated, u.updated_at);
    }

    /// Property 4: zero, negative and too-large limits are rejected with a field and a message.
    #[test]
    fn invalid_limits_are_rejected(limit in prop_oneof![i64::MIN..=0, (TokenLimit::MAX as i64 + 1)..=i64::MAX]) {
        let err = TokenLimit::new(limit).expect_err("invalid limit accepted");
        prop_assert_eq!(err.field.as_str(), "tokenLimit");
        prop_assert_eq!(err.code.as_str(), "invalid_token_limit");
        prop_assert!(err.message.contains(&limit.to_string()));
    }

    /// Property 5: recording n amounts adds exactly their sum to used and lifetime counters.
    #[test]
    fn usage_accumulates(u in user(), amounts in prop::collection::vec(1u64..1_000_000, 0..50), at in timestamp()) {
        let total: u64 = amounts.iter().sum();
        let after = amounts.iter().fold(u.clone(), |acc, a| acc.with_recorded(*a, at));
        prop_assert_eq!(after.tokens_used, u.tokens_used + total);
        prop_assert_eq!(after.lifetime_tokens, u.lifetime_tokens + total);
        prop_assert_eq!(after.token_limit, u.token_limit);
    }

    /// Property 9: remaining = max(limit - used, 0), never above the limit, and
    /// used + remaining == limit whenever used <= limit.
    #[test]
    fn remaining_is_limit_minus_used_floored(used in any::<u64>(), limit in any::<u64>()) {
        let r = remaining_tokens(used, limit);
        prop_assert!(r <= limit);
        if used <= limit {
            prop_assert_eq!(used + r, limit);
        } else {
            prop_assert_eq!(r, 0);
        }
    }

    /// Property 10: percentage in basis points is floor(used * 10000 / limit), monotonic in
    /// usage, 10000 exactly at the limit, and defined (no panic) for every input.
    #[test]
    fn percentage_is_floored_share(used in any::<u64>(), limit in 1u64..=u64::MAX, extra in 0u64..1_000) {
        let bps = used_basis_points(used, limit);
        let exact = used as u128 * 10_000 / limit as u128;
        prop_assert_eq!(bps as u128, exact.min(u64::MAX as u128));
        prop_assert!(used_basis_points(used.saturating_add(extra), limit) >= bps);
        prop_assert_eq!(used_basis_points(limit, limit), 10_000);
        if used < limit {
            prop_assert!(bps < 10_000, "below the limit must show below 100 %");
        }
    }

    /// Levels follow the thresholds (75 %, 90 %, 100 %) and never go down as usage grows.
    #[test]
    fn levels_are_monotonic(a in any::<u64>(), b in any::<u64>()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(UsageLevel::from_bps(lo) <= UsageLevel::from_bps(hi));
        prop_assert_eq!(UsageLevel::from_bps(lo) == UsageLevel::Exhausted, lo >= 10_000);
    }

    /// Property 12: sorting yields a permutation ordered by the key (either direction) with ties
    /// broken by user id, and the same order for any input order.
    #[test]
    fn sorting_orders_by_key(mut users in prop::collection::vec(user(), 0..40), key_ix in 0usize..7, desc in any::<bool>()) {
        let keys = [UserSortKey::UserId, UserSortKey::Name, UserSortKey::Usage, UserSortKey::Limit,
            UserSortKey::Percentage, UserSortKey::Remaining, UserSortKey::LastUpdated];
        let key = keys[key_ix];
        let dir = if desc { SortDirection::Desc } else { SortDirection::Asc };
        let mut ids_before: Vec<String> = users.iter().map(|u| u.user_id.to_string()).collect();
        let mut reversed = users.clone();
        reversed.reverse();
        sort_users(&mut users, key, dir);
        sort_users(&mut reversed, key, dir);
        let mut ids_after: Vec<String> = users.iter().map(|u| u.user_id.to_string()).collect();
        prop_assert_eq!(
            users.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>(),
            reversed.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>()
        );
        ids_before.sort();
        ids_after.sort();
        prop_assert_eq!(ids_before, ids_after);
        for pair in users.windows(2) {
            let ord = key.compare(&pair[0], &pair[1]);
            match dir {
                SortDirection::Asc => prop_assert!(ord != std::cmp::Ordering::Greater),
                SortDirection::Desc => prop_assert!(ord != std::cmp::Ordering::Less),
            }
            if ord == std::cmp::Ordering::Equal {
                prop_assert!(pair[0].user_id <= pair[1].user_id);
            }
        }
        if key == UserSortKey::Percentage {
            for pair in users.windows(2) {
                let (a, b) = (pair[0].used_bps(), pair[1].used_bps());
                let ordered = if desc { a >= b } else { a <= b };
                prop_assert!(ordered, "bps out of order");
            }
        }
    }

    /// Property 18: ids outside the allowed alphabet or length are rejected; valid ones accepted.
    #[test]
    fn user_id_validation(id in "\\PC{0,80}") {
        let valid = !id.is_empty()
            && id.chars().count() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || ".@_-".contains(c));
        prop_assert_eq!(UserId::parse(&id).is_ok(), valid);
    }

    /// Property 18: usage reports with non-positive, oversized or inconsistent numbers are rejected.
    #[test]
    fn usage_report_validation(tokens in any::<i64>(), input in proptest::option::of(any::<i64>()), output in proptest::option::of(any::<i64>())) {
        let body = RecordUsageBody { tokens_consumed: tokens, input_tokens: input, output_tokens: output, model: None, conversation_id: None, agent_id: None, prompt_id: None };
        let id = UserId::parse("u").expect("valid");
        let result = body.validate(id, UsageSource::Api, key());
        let part_ok = |p: Option<i64>| p.is_none_or(|v| (0..=1_000_000_000).contains(&v));
        let in_range = (1..=1_000_000_000).contains(&tokens) && part_ok(input) && part_ok(output);
        let split = input.unwrap_or(0).max(0) as i128 + output.unwrap_or(0).max(0) as i128;
        let consistent = match (input, output) {
            (Some(i), Some(o)) => i as i128 + o as i128 == tokens as i128,
            _ => split <= tokens as i128,
        };
        prop_assert_eq!(result.is_ok(), in_range && consistent);
        if let Ok(r) = result {
            prop_assert_eq!(r.tokens.get(), tokens as u64);
        }
    }

    /// Property 19: every validation error names its field, has a stable snake_case code and a
    /// sentence for a person.
    #[test]
    fn errors_are_descriptive(id in "\\PC{0,80}", limit in any::<i64>(), name in proptest::option::of("\\PC{0,120}")) {
        let body = CreateUserBody { user_id: id, token_limit: limit, display_name: name, ..Default::default() };
        if let Err(e) = body.validate() {
            prop_assert!(["userId", "tokenLimit", "displayName"].contains(&e.field.as_str()));
            prop_assert!(e.code.starts_with("invalid_"));
            prop_assert!(e.code.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            prop_assert!(e.message.len() > 20 && e.message.ends_with('.'));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// The colour and warning thresholds: below 75 % normal, from 75 % warning, from 90 %
    /// critical, from 100 % exhausted — computed from the exact share of used over limit.
    #[test]
    fn levels_follow_the_thresholds(used in 0u64..3_000_000, limit in 1u64..1_000_000) {
        let level = UsageLevel::from_bps(used_basis_points(used, limit));
        let expected = if used * 100 >= limit * 100 {
            UsageLevel::Exhausted
        } else if used * 100 >= limit * 90 {
            UsageLevel::Critical
        } else if used * 100 >= limit * 75 {
            UsageLevel::Warning
        } else {
            UsageLevel::Normal
        };
        prop_assert_eq!(level, expected);
    }
}

mod listing {
    use super::*;
    use domain::{UserQuery, matches_filter, page_bounds, query_users};

    fn users() -> impl Strategy<Value = Vec<UserUsage>> {
        proptest::collection::vec(user(), 0..60).prop_map(|mut v| {
            v.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            v.dedup_by(|a, b| a.user_id == b.user_id);
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        /// Pages cover every item exactly once, in order, and never run past the end.
        #[test]
        fn pages_partition_the_list(total in 0usize..500, size in 1u32..60) {
            let (_, first) = page_bounds(total, 1, size);
            let mut seen = 0;
            for page in 1..=first.pages {
                let (range, info) = page_bounds(total, page, size);
                prop_assert_eq!(range.start, seen);
                prop_assert!(range.len() <= size as usize);
                prop_assert!(range.end <= total);
                prop_assert_eq!(info.total, total as u64);
                prop_assert_eq!(info.page, page);
                seen = range.end;
            }
            prop_assert_eq!(seen, total);
            // A page past the end shows the last one.
            let (range, info) = page_bounds(total, first.pages + 3, size);
            prop_assert_eq!(info.page, first.pages);
            prop_assert_eq!(range.end, total);
        }

        /// The filter keeps exactly the users whose id or name contains the text, any case.
        #[test]
        fn filter_keeps_exactly_the_matches(list in users(), needle in "[a-zA-Z0-9.]{0,3}") {
            let query = UserQuery { filter: needle.clone(), page_size: 500, ..UserQuery::default() };
            let (page, info) = query_users(list.clone(), &query);
            let expected: Vec<_> = list.iter().filter(|u| {
                let n = needle.to_lowercase();
                u.user_id.as_str().to_lowercase().contains(&n)
                    || u.display_name.as_str().to_lowercase().contains(&n)
            }).collect();
            prop_assert_eq!(info.total as usize, expected.len());
            prop_assert_eq!(page.len(), expected.len());
            prop_assert!(page.iter().all(|u| matches_filter(u, &needle)));
        }

        /// Paging through a sorted, filtered list gives the same users in the same order as
        /// sorting the whole filtered list at once.
        #[test]
        fn paging_agrees_with_the_full_sort(
            list in users(),
            key in prop_oneof![Just(UserSortKey::Usage), Just(UserSortKey::Limit), Just(UserSortKey::Percentage), Just(UserSortKey::Name), Just(UserSortKey::LastUpdated)],
            desc in any::<bool>(),
            size in 1u32..20,
        ) {
            let direction = if desc { SortDirection::Desc } else { SortDirection::Asc };
            let mut all = list.clone();
            sort_users(&mut all, key, direction);
            let mut paged = Vec::new();
            let mut page = 1;
            loop {
                let query = UserQuery { sort: key, direction, page, page_size: size, ..UserQuery::default() };
                let (chunk, info) = query_users(list.clone(), &query);
                paged.extend(chunk);
                if page >= info.pages { break; }
                page += 1;
            }
            let ids = |v: &[UserUsage]| v.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>();
            prop_assert_eq!(ids(&paged), ids(&all));
        }

        /// Invalid pages, sizes and filters are refused with the field named.
        #[test]
        fn bad_queries_are_refused(page in 0u32..3, size in 0u32..1000, filter_len in 0usize..150) {
            let query = UserQuery { page, page_size: size, filter: "x".repeat(filter_len), ..UserQuery::default() };
            let ok = page >= 1 && (1..=UserQuery::MAX_PAGE_SIZE).contains(&size) && filter_len <= UserQuery::MAX_FILTER_LEN;
            match query.validate() {
                Ok(()) => prop_assert!(ok),
                Err(e) => {
                    prop_assert!(!ok);
                    prop_assert!(["page", "pageSize", "filter"].contains(&e.field.as_str()));
                }
            }
        }
    }
}
