//! The OpenAI-compatible provider against a real local HTTP server that speaks Chat Completions:
//! whole and streamed answers, usage extraction (seed property 14), multi-step totals, 401/429/5xx,
//! timeouts, malformed bodies, a stream cut mid-way; and what each of these does to a user's
//! budget when called through `/api/invoke`.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::ports::{ProviderError, ProviderRequest, Tokenizer};
use app::service::Models;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use domain::{CallUsage, ChatMessage, ChatRole, FinishReason, ModelName, PriceConfig};
use futures::StreamExt;
use reqwest::Client;
use serde_json::{Value, json};
use tokenmeter_server::providers::openai::{self, OpenAiProvider};
use tokenmeter_server::providers::{BpeTokenizer, default_prices};

/// What the fake provider saw: request bodies and Authorization headers.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

/// A request body and its Authorization header.
type SeenRequest = (Value, Option<String>);

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(text) => json!({"content": text}),
        None => json!({}),
    };
    let value = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {value}\n\n")
}

fn usage_chunk(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> String {
    let value = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning}}});
    format!("data: {value}\n\n")
}

fn sse(parts: Vec<String>, finish_cleanly: bool) -> Response {
    let mut items: Vec<Result<String, std::io::Error>> = parts.into_iter().map(Ok).collect();
    if finish_cleanly {
        items.push(Ok("data: [DONE]\n\n".to_owned()));
    } else {
        // The connection breaks: the body ends with an error after what was sent.
        items.push(Err(std::io::Error::other("connection reset")));
    }
    let stream = futures::stream::iter(items).then(|item| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        item
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Behaves according to the requested model's name.
async fn fake_completions(State(seen): State<Seen>, headers: HeaderMap, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.0.lock().unwrap().push((request.clone(), auth));
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let error = |status: StatusCode, message: &str| {
        (
            status,
            axum::Json(json!({"error": {"message": message, "type": "x"}})),
        )
            .into_response()
    };
    match (model.as_str(), stream) {
        ("ok", false) => axum::Json(json!({
            "id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from fake"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16,
                      "prompt_tokens_details": {"cached_tokens": 4},
                      "completion_tokens_details": {"reasoning_tokens": 2}}
        }))
        .into_response(),
        ("ok", true) => sse(
            vec![
                chunk(Some("Hel"), None),
                chunk(Some("lo"), None),
                chunk(None, Some("length")),
                usage_chunk(11, 5, 4, 2),
            ],
            true,
        ),
        // Two steps of a tool-using exchange, each reporting its own usage.
        ("multi", true) => sse(
            vec![
                chunk(Some("step one "), None),
                usage_chunk(10, 3, 0, 0),
                chunk(Some("step two"), Some("stop")),
                usage_chunk(20, 4, 8, 1),
            ],
            true,
        ),
        ("cut", true) => sse(
            vec![chunk(Some("Half an"), None), chunk(Some(" answer"), None)],
            false,
        ),
        ("garbage", false) => (StatusCode::OK, "this is not json").into_response(),
        ("garbage", true) => sse(vec!["data: {oops\n\n".to_owned()], true),
        ("unauthorized", _) => error(StatusCode::UNAUTHORIZED, "Incorrect API key provided"),
        ("busy", _) => error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached"),
        ("too-long", _) => error(StatusCode::BAD_REQUEST, "This model's maximum context length is 8 tokens"),
        ("broken", _) => error(StatusCode::INTERNAL_SERVER_ERROR, "The server had an error"),
        ("slow", _) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            error(StatusCode::INTERNAL_SERVER_ERROR, "too late")
        }
        _ => error(StatusCode::NOT_FOUND, "unknown model"),
    }
}

async fn fake_provider() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(fake_completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

fn provider(base: &str) -> OpenAiProvider {
    OpenAiProvider::new(
        base.to_owned(),
        Some("sk-test-secret".into()),
        Duration::from_millis(500),
    )
    .unwrap()
}

fn ask(model: &str, stream: bool) -> ProviderRequest {
    ProviderRequest {
        model: ModelName::parse(model).unwrap(),
        messages: vec![ChatMessage {
            role: ChatRole::User,
            content: "Say hello".into(),
        }],
        max_output: 50,
        stream,
    }
}

/// Collects a call: the text, the usages, the finish, and the error that ended it (if any).
async fn collect(
    p: &OpenAiProvider,
    request: ProviderRequest,
) -> Result<common::Gathered, ProviderError> {
    common::collect_events(p, request).await
}

#[tokio::test]
async fn whole_and_streamed_answers_carry_the_providers_usage() {
    let (base, seen) = fake_provider().await;
    let p = provider(&base);
    let expected = CallUsage {
        input_tokens: 11,
        output_tokens: 5,
        cached_tokens: 4,
        cache_write_tokens: 0,
        reasoning_tokens: 2,
    };
    let (text, usages, finish, error) = collect(&p, ask("ok", false)).await.unwrap();
    assert_eq!(
        (text.as_str(), usages, finish, error),
        (
            "Hello from fake",
            vec![expected],
            Some(FinishReason::Stop),
            None
        )
    );
    let (text, usages, finish, error) = collect(&p, ask("ok", true)).await.unwrap();
    assert_eq!(
        (text.as_str(), usages, finish, error),
        ("Hello", vec![expected], Some(FinishReason::Length), None)
    );

    let requests = seen.0.lock().unwrap().clone();
    let (first, auth) = &requests[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-secret"));
    assert_eq!(first["max_tokens"], 50);
    assert_eq!(
        first["messages"][0],
        json!({"role": "user", "content": "Say hello"})
    );
    let (streamed, _) = &requests[1];
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["stream_options"]["include_usage"], true);
    // The key never shows in a debug print.
    assert!(!format!("{p:?}").contains("sk-test-secret"));
}

#[tokio::test]
async fn a_multi_step_exchange_reports_each_step() {
    let (base, _) = fake_provider().await;
    let (text, usages, _, error) = collect(&provider(&base), ask("multi", true)).await.unwrap();
    assert_eq!(text, "step one step two");
    assert!(error.is_none());
    let total = usages.iter().fold(CallUsage::default(), |a, u| a.plus(*u));
    assert_eq!(
        (
            total.input_tokens,
            total.output_tokens,
            total.cached_tokens,
            total.reasoning_tokens
        ),
        (30, 7, 8, 1)
    );
}

#[tokio::test]
async fn failures_are_told_apart() {
    let (base, _) = fake_provider().await;
    let p = provider(&base);
    let refused = |model: &'static str| {
        let p = &p;
        async move { collect(p, ask(model, false)).await.err() }
    };
    assert!(
        matches!(refused("unauthorized").await, Some(ProviderError::Unauthorized(m)) if m.contains("Incorrect API key"))
    );
    assert!(matches!(
        refused("busy").await,
        Some(ProviderError::RateLimited(_))
    ));
    assert!(
        matches!(refused("too-long").await, Some(ProviderError::Refused(m)) if m.contains("maximum context length"))
    );
    assert!(matches!(
        refused("broken").await,
        Some(ProviderError::Unavailable(_))
    ));
    assert!(matches!(
        refused("slow").await,
        Some(ProviderError::Timeout)
    ));
    assert!(matches!(
        refused("garbage").await,
        Some(ProviderError::BadResponse(_))
    ));
    // Nobody listening.
    let nobody = provider("http://127.0.0.1:9");
    assert!(matches!(
        collect(&nobody, ask("ok", false)).await.err(),
        Some(ProviderError::Unavailable(_))
    ));
}

#[tokio::test]
async fn broken_streams_end_in_an_error_after_what_arrived() {
    let (base, _) = fake_provider().await;
    let p = provider(&base);
    let (text, usages, _, error) = collect(&p, ask("cut", true)).await.unwrap();
    assert_eq!(text, "Half an answer");
    assert!(usages.is_empty());
    assert!(error.is_some(), "a cut stream is an error");
    let (_, _, _, error) = collect(&p, ask("garbage", true)).await.unwrap();
    assert!(matches!(error, Some(ProviderError::BadResponse(_))));
}

/// Seed property 14 over arbitrary numbers: whatever the provider reports is what is read, with
/// the parts kept inside their wholes.
#[test]
fn usage_extraction_reads_every_count() {
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(300), |(p in 0u64..1_000_000, c in 0u64..1_000_000, cached in 0u64..2_000_000, reasoning in 0u64..2_000_000)| {
        let value = json!({"usage": {"prompt_tokens": p, "completion_tokens": c,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}});
        let usage = openai::usage_from(&value).unwrap();
        prop_assert_eq!(usage.input_tokens, p);
        prop_assert_eq!(usage.output_tokens, c);
        prop_assert_eq!(usage.cached_tokens, cached.min(p));
        prop_assert_eq!(usage.reasoning_tokens, reasoning.min(c));
        prop_assert_eq!(usage.total(), p + c);
    });
    assert_eq!(openai::usage_from(&json!({"choices": []})), None);
}

/// Through `/api/invoke`: a refusal charges nothing and gives the hold back; a cut stream charges
/// what arrived; a clean answer charges the provider's count at the configured price.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_outcomes_reach_the_budget_exactly() {
    let (base, _) = fake_provider().await;
    let db = common::sqlite();
    let ledger = common::ledger(&db).await;
    let mut services = common::services(ledger.clone());
    let p = Arc::new(provider(&base));
    let entries = ["ok", "cut", "broken", "busy"]
        .iter()
        .map(|m| openai::entry(ModelName::parse(m).unwrap(), p.clone()))
        .collect();
    let prices = default_prices().overridden_by(vec![
        PriceConfig {
            model: "ok".into(),
            effective_from: "2025-01-01T00:00:00Z".parse().unwrap(),
            input: "2".into(),
            output: "8".into(),
            cache_read: Some("0.5".into()),
            cache_write: None,
        }
        .validate()
        .unwrap(),
    ]);
    services.models = Arc::new(Models::new(entries, None, prices, BpeTokenizer::shared()));
    let admin = common::admin_key(&services, "admin").await;
    let base_url =
        common::serve_services(services.clone(), Vec::new(), 1 << 20, Default::default()).await;
    let client = Client::new();
    let call = |model: &'static str, stream: bool| {
        let (client, base_url, admin) = (client.clone(), base_url.clone(), admin.clone());
        async move {
            let response = client
                .post(format!("{base_url}/api/invoke"))
                .bearer_auth(&admin)
                .json(&json!({"prompt": "Say hello", "model": model, "stream": stream, "maxTokens": 50}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let usage = || async {
        let me: Value = client
            .get(format!("{base_url}/api/users/admin"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            me["tokenUsage"].as_u64().unwrap(),
            me["tokensReserved"].as_u64().unwrap(),
            me["lifetimeCostPicos"].as_u64().unwrap(),
        )
    };

    let (status, body) = call("broken", false).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("provider_unavailable"));
    let (status, body) = call("busy", true).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("provider_rate_limited"));
    assert_eq!(
        usage().await,
        (0, 0, 0),
        "refusals charge nothing and hold nothing"
    );

    let (status, body) = call("ok", false).await;
    assert_eq!(status, 200, "{body}");
    // 11 in (4 cached) and 5 out at $2 / $0.50 cached / $8: 7×2e6 + 4×0.5e6 + 5×8e6 picos.
    assert_eq!(
        usage().await,
        (16, 0, 7 * 2_000_000 + 4 * 500_000 + 5 * 8_000_000)
    );

    let (status, body) = call("cut", true).await;
    assert_eq!(status, 200, "the stream had started: {body}");
    assert!(body.contains("event: error"), "{body}");
    let tokenizer = BpeTokenizer::shared();
    let prompt = tokenizer.count_conversation(&[ChatMessage {
        role: ChatRole::User,
        content: "Say hello".into(),
    }]);
    let generated = tokenizer.count("Half an answer");
    let (used, reserved, _) = usage().await;
    assert_eq!(reserved, 0);
    assert_eq!(
        used,
        16 + prompt + generated,
        "the cut call charged its prompt and what arrived"
    );
    assert!(ledger.audit().await.unwrap().is_exact());
}
