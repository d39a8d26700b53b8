//! Model calls through the real HTTP app, on SQLite and a real Postgres: reply and usage both
//! shown (seed 15), remaining checked before the call (16) and answered after it (17), streams,
//! cancellation, and no overspend under 50 concurrent calls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use app::service::Services;
use domain::api::CreateApiKeyBody;
use domain::sse::SseParser;
use futures::StreamExt;
use reqwest::Client;
use serde_json::{Value, json};
use tokenmeter_server::providers::demo_models;
use tokenmeter_server::store::SqlLedger;

struct Setup {
    base: String,
    admin: String,
    services: Services,
    ledger: Arc<SqlLedger>,
}

/// The app over `db`, with the demo model pacing its stream by `token_delay`.
async fn setup(db: &common::TestDb, token_delay: Duration) -> Setup {
    let ledger = common::ledger(db).await;
    let mut services = common::services(ledger.clone());
    services.models = Arc::new(demo_models(token_delay));
    let admin = common::admin_key(&services, "admin").await;
    let base = common::serve_services(
        services.clone(),
        Vec::new(),
        1024 * 1024,
        Default::default(),
    )
    .await;
    Setup {
        base,
        admin,
        services,
        ledger,
    }
}

impl Setup {
    /// Creates a user with `limit` tokens; answers an API key acting as them.
    async fn user(&self, id: &str, limit: u64) -> String {
        let created = Client::new()
            .post(format!("{}/api/users", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"userId": id, "tokenLimit": limit}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        self.services
            .bootstrap_api_key(
                &domain::UserId::parse(id).unwrap(),
                &CreateApiKeyBody {
                    name: "test".into(),
                    scopes: vec![],
                },
            )
            .await
            .unwrap()
            .key
    }

    async fn invoke(&self, key: &str, body: Value) -> (u16, Value) {
        let response = Client::new()
            .post(format!("{}/api/invoke", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get_user(&self, id: &str) -> Value {
        Client::new()
            .get(format!("{}/api/users/{id}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn estimate(&self, key: &str, prompt: &str, max_tokens: u64) -> Value {
        Client::new()
            .post(format!("{}/api/estimate", self.base))
            .bearer_auth(key)
            .json(&json!({"prompt": prompt, "maxTokens": max_tokens}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn assert_exact(&self) {
        let audit = self.ledger.audit().await.unwrap();
        assert!(audit.is_exact(), "ledger and counters disagree: {audit:?}");
    }
}

/// Reads a whole event stream: (event, parsed data) pairs.
async fn read_events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        for event in parser.push(&chunk.unwrap()) {
            out.push((event.event, serde_json::from_str(&event.data).unwrap()));
        }
    }
    out
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn a_call_shows_reply_usage_cost_and_remaining(db: common::TestDb) {
    let s = setup(&db, Duration::ZERO).await;
    let key = s.user("carol", 10_000).await;
    let estimate = s.estimate(&key, "How many tokens is this?", 30).await;
    let (status, call) = s
        .invoke(
            &key,
            json!({"prompt": "How many tokens is this?", "maxTokens": 30}),
        )
        .await;
    assert_eq!(status, 200, "{call}");
    assert!(call["reply"].as_str().unwrap().starts_with("[Demo model"));
    let usage = &call["usage"];
    let (input, output) = (n(&usage["inputTokens"]), n(&usage["outputTokens"]));
    // The demo counts with the estimator's tokenizer: the estimate is the charge.
    assert_eq!(input, n(&estimate["inputTokens"]));
    assert_eq!(output, 30, "the demo writes until maxTokens");
    assert_eq!(n(&usage["totalTokens"]), input + output);
    // $3 / $15 per million: 3,000,000 and 15,000,000 pico-dollars per token.
    assert_eq!(
        n(&usage["costPicos"]),
        input * 3_000_000 + output * 15_000_000
    );
    assert_eq!(n(&call["remainingTokens"]), 10_000 - input - output);
    assert_eq!(call["finishReason"], "length");
    let user = s.get_user("carol").await;
    assert_eq!(n(&user["tokenUsage"]), input + output);
    assert_eq!(n(&user["tokensReserved"]), 0);
    assert_eq!(n(&user["lifetimeCostPicos"]), n(&usage["costPicos"]));
    assert_eq!(user["remainingTokens"], call["remainingTokens"]);
    s.assert_exact().await;
}

async fn a_stream_sends_deltas_then_the_settled_call(db: common::TestDb) {
    let s = setup(&db, Duration::from_millis(2)).await;
    let key = s.user("dave", 10_000).await;
    let response = Client::new()
        .post(format!("{}/api/invoke", s.base))
        .bearer_auth(&key)
        .json(&json!({"prompt": "Stream me something", "maxTokens": 40, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_events(response).await;
    assert_eq!(events.first().unwrap().0, "start");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert!(events.iter().filter(|(e, _)| e == "delta").count() > 5);
    assert_eq!(deltas, done["reply"].as_str().unwrap());
    let reserved = n(&events[0].1["reservedTokens"]);
    let total = n(&done["usage"]["totalTokens"]);
    assert!(total <= reserved);
    assert_eq!(n(&s.get_user("dave").await["tokenUsage"]), total);
    s.assert_exact().await;
}

/// Seed property 16: with too little left, the call is refused before the model is called, and
/// nothing changes.
async fn at_the_limit_the_model_is_not_called(db: common::TestDb) {
    let s = setup(&db, Duration::ZERO).await;
    let key = s.user("erin", 12).await;
    let before = s.get_user("erin").await;
    let (status, body) = s
        .invoke(
            &key,
            json!({"prompt": "This prompt alone is longer than twelve tokens, surely."}),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "token_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("12 remaining"),
        "{body}"
    );
    assert_eq!(body["error"]["remainingTokens"], 12);
    let after = s.get_user("erin").await;
    assert_eq!(before["tokenUsage"], after["tokenUsage"]);
    assert_eq!(n(&after["tokensReserved"]), 0);
    assert_eq!(s.ledger.audit().await.unwrap().events, 0);
}

/// The promise: a user with room for exactly 10 calls fires 50 at once; 10 reach the model,
/// usage ends exactly at the limit, the ledger equals the counters, no hold is left.
async fn fifty_concurrent_calls_never_overspend(db: common::TestDb) {
    let s = setup(&db, Duration::from_millis(3)).await;
    let probe = s.user("probe", 1_000).await;
    let prompt = "Count me, concurrently.";
    let max_tokens = 8;
    let per_call = n(&s.estimate(&probe, prompt, max_tokens).await["inputTokens"]) + max_tokens;
    let key = s.user("frank", per_call * 10).await;
    let calls = (0..50).map(|i| {
        let s = &s;
        let key = key.clone();
        async move {
            // Half stream, half wait for the whole answer.
            let stream = i % 2 == 0;
            let response = Client::new()
                .post(format!("{}/api/invoke", s.base))
                .bearer_auth(&key)
                .json(&json!({"prompt": prompt, "maxTokens": max_tokens, "stream": stream}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if status == 200 && stream {
                let events = read_events(response).await;
                assert_eq!(events.last().unwrap().0, "done");
            } else if status == 429 {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "token_limit_exceeded");
            }
            status
        }
    });
    let statuses = futures::future::join_all(calls).await;
    let served = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((served, refused), (10, 40), "{statuses:?}");
    let user = s.get_user("frank").await;
    assert_eq!(n(&user["tokenUsage"]), per_call * 10);
    assert!(n(&user["tokenUsage"]) <= n(&user["tokenLimit"]));
    assert_eq!(n(&user["tokensReserved"]), 0);
    assert_eq!(n(&user["remainingTokens"]), 0);
    s.assert_exact().await;
}

/// Stopping a stream half-way: the provider is stopped, what was generated is charged, the rest
/// of the hold comes back.
async fn a_cancelled_stream_charges_what_was_generated(db: common::TestDb) {
    let s = setup(&db, Duration::from_millis(40)).await;
    let key = s.user("gina", 10_000).await;
    let response = Client::new()
        .post(format!("{}/api/invoke", s.base))
        .bearer_auth(&key)
        .json(&json!({"prompt": "Write a long answer", "maxTokens": 200, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    let mut deltas = 0;
    let mut input = 0;
    while deltas < 3 {
        for event in parser.push(&body.next().await.unwrap().unwrap()) {
            match event.event.as_str() {
                "delta" => deltas += 1,
                "start" => {
                    let start: Value = serde_json::from_str(&event.data).unwrap();
                    input = n(&start["reservedTokens"]) - 200;
                }
                _ => {}
            }
        }
    }
    drop(body); // the client goes away
    let mut user = s.get_user("gina").await;
    for _ in 0..100 {
        if n(&user["tokensReserved"]) == 0 && n(&user["tokenUsage"]) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        user = s.get_user("gina").await;
    }
    assert_eq!(n(&user["tokensReserved"]), 0, "the hold was given back");
    let used = n(&user["tokenUsage"]);
    assert!(
        used >= input + 3,
        "the prompt and what was generated are charged: {used}"
    );
    assert!(used < input + 200, "the rest was not: {used}");
    s.assert_exact().await;
}

async fn bad_calls_are_refused_and_change_nothing(db: common::TestDb) {
    let s = setup(&db, Duration::ZERO).await;
    let key = s.user("hank", 10_000).await;
    s.user("ivy", 10_000).await;
    let cases = [
        (
            json!({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
            422,
            "prompt_and_messages",
        ),
        (json!({}), 422, "empty_prompt"),
        (json!({"prompt": "   "}), 422, "empty_prompt"),
        (
            json!({"prompt": "hi", "model": "gpt-nonexistent"}),
            422,
            "unknown_model",
        ),
        (
            json!({"prompt": "hi", "maxTokens": 0}),
            422,
            "invalid_max_tokens",
        ),
        (
            json!({"prompt": "hi", "maxTokens": 100_001}),
            422,
            "invalid_max_tokens",
        ),
        (
            json!({"prompt": "hi", "maxTokens": "ten"}),
            422,
            "invalid_field",
        ),
        (json!({"prompt": "hi", "userId": "ivy"}), 403, "forbidden"),
        (
            json!({"prompt": "hi", "temperature": 2}),
            422,
            "invalid_field",
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            422,
            "invalid_field",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = s.invoke(&key, body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let anonymous = Client::new()
        .post(format!("{}/api/invoke", s.base))
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    for id in ["hank", "ivy"] {
        let user = s.get_user(id).await;
        assert_eq!(n(&user["tokenUsage"]), 0);
        assert_eq!(n(&user["tokensReserved"]), 0);
    }
    // An admin may spend anyone's budget.
    let (status, call) = s
        .invoke(
            &s.admin,
            json!({"prompt": "hi", "userId": "ivy", "maxTokens": 5}),
        )
        .await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["user"]["userId"], "ivy");
    s.assert_exact().await;
}

/// The OpenAI-compatible gateway in OpenAI's shapes (the Python SDK test drives it too).
async fn the_gateway_speaks_openai(db: common::TestDb) {
    let s = setup(&db, Duration::ZERO).await;
    let key = s.user("jane", 10_000).await;
    let client = Client::new();
    let answer = client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&json!({"model": "tokenmeter-demo", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}], "max_tokens": 12, "temperature": 0.2}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let remaining: u64 = answer.headers()["x-tokenmeter-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(n(&body["usage"]["completion_tokens"]), 12);
    let total = n(&body["usage"]["total_tokens"]);
    assert_eq!(remaining, 10_000 - total);
    assert_eq!(n(&s.get_user("jane").await["tokenUsage"]), total);

    // Errors in OpenAI's shape; a session cookie is not enough, a key is needed.
    let anonymous = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let broke = s.user("kurt", 5).await;
    let refused = client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&broke)
        .json(&json!({"messages": [{"role": "user", "content": "hi there, a longer prompt"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_limit_exceeded");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    s.assert_exact().await;
}

/// Usage reported through the API for a priced model is charged at its price; an unknown model
/// costs nothing (and says so by a zero, not a guess).
async fn reported_usage_is_priced(db: common::TestDb) {
    let s = setup(&db, Duration::ZERO).await;
    s.user("lena", 100_000).await;
    let report = |body: Value| {
        let (base, admin) = (s.base.clone(), s.admin.clone());
        async move {
            let response = Client::new()
                .post(format!("{base}/api/users/lena/usage"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    // gpt-4o-mini: $0.15 in, $0.60 out per million.
    let priced = report(json!({"tokensConsumed": 1500, "inputTokens": 1000, "outputTokens": 500, "model": "gpt-4o-mini"})).await;
    assert_eq!(
        n(&priced["lifetimeCostPicos"]),
        1000 * 150_000 + 500 * 600_000
    );
    let unknown = report(json!({"tokensConsumed": 10, "model": "someone-elses-model"})).await;
    assert_eq!(
        n(&unknown["lifetimeCostPicos"]),
        1000 * 150_000 + 500 * 600_000
    );
    s.assert_exact().await;
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::common::postgres().await).await;
                }
            )*
        }
    };
}

on_both_databases!(
    a_call_shows_reply_usage_cost_and_remaining,
    a_stream_sends_deltas_then_the_settled_call,
    at_the_limit_the_model_is_not_called,
    fifty_concurrent_calls_never_overspend,
    a_cancelled_stream_charges_what_was_generated,
    bad_calls_are_refused_and_change_nothing,
    the_gateway_speaks_openai,
    reported_usage_is_priced,
);

/// Two server replicas on one Postgres: 50 calls spread over both still reach the model at
/// most as often as the budget allows, and the ledger stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_never_overspend() {
    let db = common::postgres().await;
    let first = setup(&db, Duration::from_millis(3)).await;
    // A second replica: its own pool and its own HTTP server, the same database.
    let ledger_b = common::ledger(&db).await;
    let mut services_b = common::services(ledger_b);
    services_b.models = Arc::new(demo_models(Duration::from_millis(3)));
    let base_b = common::serve_services(services_b, Vec::new(), 1 << 20, Default::default()).await;

    let probe = first.user("probe2", 1_000).await;
    let prompt = "Two replicas, one budget.";
    let per_call = n(&first.estimate(&probe, prompt, 8).await["inputTokens"]) + 8;
    let key = first.user("olga", per_call * 10).await;
    let calls = (0..50).map(|i| {
        let base = if i % 2 == 0 {
            first.base.clone()
        } else {
            base_b.clone()
        };
        let key = key.clone();
        async move {
            Client::new()
                .post(format!("{base}/api/invoke"))
                .bearer_auth(&key)
                .json(&json!({"prompt": prompt, "maxTokens": 8}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(calls).await;
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(served, 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 40);
    let user = first.get_user("olga").await;
    assert_eq!(n(&user["tokenUsage"]), per_call * 10);
    assert_eq!(n(&user["tokensReserved"]), 0);
    first.assert_exact().await;
}
