//! The Anthropic provider against a real local HTTP server that speaks the Messages API: whole
//! and streamed answers, cache reads and writes kept, 401/429/529, an error event mid-stream,
//! a stream cut mid-way; and what these do to a user's budget through `/api/invoke`.

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
use domain::{CallUsage, ChatMessage, ChatRole, FinishReason, ModelName};
use futures::StreamExt;
use reqwest::Client;
use serde_json::{Value, json};
use tokenmeter_server::providers::anthropic::{self, AnthropicProvider};
use tokenmeter_server::providers::{BpeTokenizer, default_prices};

/// The request bodies and headers the fake saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

type SeenRequest = (Value, HeaderMap);

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn start(input: u64, read: u64, write: u64) -> String {
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "usage": {"input_tokens": input, "output_tokens": 1, "cache_read_input_tokens": read, "cache_creation_input_tokens": write}}}),
    )
}

fn text(t: &str) -> String {
    event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
    )
}

fn delta(stop: &str, output: u64) -> String {
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": output}}),
    )
}

fn stream(parts: Vec<String>, clean: bool) -> Response {
    let mut items: Vec<Result<String, std::io::Error>> = parts.into_iter().map(Ok).collect();
    if clean {
        items.push(Ok(event("message_stop", json!({"type": "message_stop"}))));
    } else {
        items.push(Err(std::io::Error::other("connection reset")));
    }
    let body = futures::stream::iter(items).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        i
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

async fn fake_messages(State(seen): State<Seen>, headers: HeaderMap, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    seen.0.lock().unwrap().push((request.clone(), headers));
    let streamed = request["stream"].as_bool().unwrap_or(false);
    let error = |status: u16, kind: &str, message: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
        )
            .into_response()
    };
    match (request["model"].as_str().unwrap_or_default(), streamed) {
        ("ok", false) => axum::Json(json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "from Claude"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 20, "output_tokens": 6, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50}
        }))
        .into_response(),
        ("ok", true) => stream(
            vec![start(20, 100, 50), event("ping", json!({"type": "ping"})), text("Hel"), text("lo"), delta("max_tokens", 6)],
            true,
        ),
        ("cut", true) => stream(vec![start(20, 0, 0), text("Half an"), text(" answer")], false),
        ("overloaded-mid", true) => stream(
            vec![start(20, 0, 0), text("Some"), event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))],
            true,
        ),
        ("unauthorized", _) => error(401, "authentication_error", "invalid x-api-key"),
        ("busy", _) => error(429, "rate_limit_error", "Number of requests has exceeded your rate limit"),
        ("overloaded", _) => error(529, "overloaded_error", "Overloaded"),
        _ => error(404, "not_found_error", "model not found"),
    }
}

async fn fake_anthropic() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/messages", post(fake_messages))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn provider(base: &str) -> AnthropicProvider {
    AnthropicProvider::new(
        base.to_owned(),
        "sk-ant-secret".into(),
        Duration::from_millis(500),
    )
    .unwrap()
}

fn ask(model: &str, streamed: bool) -> ProviderRequest {
    ProviderRequest {
        model: ModelName::parse(model).unwrap(),
        messages: vec![
            ChatMessage {
                role: ChatRole::System,
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: ChatRole::User,
                content: "Say hello".into(),
            },
            ChatMessage {
                role: ChatRole::User,
                content: "Please".into(),
            },
        ],
        max_output: 50,
        stream: streamed,
    }
}

/// The answer with its usage summed over the reports (message_start and message_delta, or
/// one metadata event).
async fn collect(
    p: &AnthropicProvider,
    request: ProviderRequest,
) -> Result<
    (
        String,
        CallUsage,
        Option<FinishReason>,
        Option<ProviderError>,
    ),
    ProviderError,
> {
    let (text, usages, finish, error) = common::collect_events(p, request).await?;
    let usage = usages
        .into_iter()
        .fold(CallUsage::default(), CallUsage::plus);
    Ok((text, usage, finish, error))
}

#[tokio::test]
async fn whole_and_streamed_messages_keep_cache_reads_and_writes() {
    let (base, seen) = fake_anthropic().await;
    let p = provider(&base);
    let expected = CallUsage {
        input_tokens: 170,
        output_tokens: 6,
        cached_tokens: 100,
        cache_write_tokens: 50,
        reasoning_tokens: 0,
    };
    let (text, usage, finish, error) = collect(&p, ask("ok", false)).await.unwrap();
    assert_eq!(
        (text.as_str(), usage, finish, error),
        (
            "Hello from Claude",
            expected,
            Some(FinishReason::Stop),
            None
        )
    );
    let (text, usage, finish, error) = collect(&p, ask("ok", true)).await.unwrap();
    assert_eq!(
        (text.as_str(), usage, finish, error),
        ("Hello", expected, Some(FinishReason::Length), None)
    );

    let requests = seen.0.lock().unwrap().clone();
    let (body, headers) = &requests[0];
    assert_eq!(headers["x-api-key"], "sk-ant-secret");
    assert_eq!(headers["anthropic-version"], anthropic::API_VERSION);
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 50);
    // Consecutive user messages are joined: Anthropic wants the roles to alternate.
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Say hello\n\nPlease"}])
    );
    assert!(!format!("{p:?}").contains("sk-ant-secret"));
}

#[tokio::test]
async fn failures_are_told_apart() {
    let (base, _) = fake_anthropic().await;
    let p = provider(&base);
    assert!(
        matches!(collect(&p, ask("unauthorized", false)).await.err(), Some(ProviderError::Unauthorized(m)) if m.contains("x-api-key"))
    );
    assert!(matches!(
        collect(&p, ask("busy", true)).await.err(),
        Some(ProviderError::RateLimited(_))
    ));
    assert!(matches!(
        collect(&p, ask("overloaded", false)).await.err(),
        Some(ProviderError::Unavailable(_))
    ));
    let (text, usage, _, error) = collect(&p, ask("overloaded-mid", true)).await.unwrap();
    assert_eq!(text, "Some");
    assert_eq!(
        usage.input_tokens, 20,
        "the prompt was reported before the failure"
    );
    assert!(matches!(error, Some(ProviderError::Unavailable(m)) if m == "Overloaded"));
    let (_, _, _, error) = collect(&p, ask("cut", true)).await.unwrap();
    assert!(error.is_some());
}

/// Through `/api/invoke`: a clean answer is priced with cache reads and writes at their own
/// rates; a cut stream charges the prompt the provider reported and the text that arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_calls_reach_the_budget_exactly() {
    let (base, _) = fake_anthropic().await;
    let db = common::sqlite();
    let ledger = common::ledger(&db).await;
    let mut services = common::services(ledger.clone());
    let p = Arc::new(provider(&base));
    let models: Vec<_> = ["ok", "cut", "overloaded"]
        .iter()
        .map(|m| anthropic::entry(ModelName::parse(m).unwrap(), p.clone()))
        .collect();
    // Price "ok" like Claude Sonnet 4.5.
    let sonnet = default_prices()
        .price_at(
            &ModelName::parse("claude-sonnet-4-5").unwrap(),
            chrono::Utc::now(),
        )
        .unwrap()
        .clone();
    let prices = default_prices().overridden_by(vec![domain::ModelPrice {
        model: ModelName::parse("ok").unwrap(),
        ..sonnet
    }]);
    services.models = Arc::new(Models::new(models, None, prices, BpeTokenizer::shared()));
    let admin = common::admin_key(&services, "admin").await;
    let url =
        common::serve_services(services.clone(), Vec::new(), 1 << 20, Default::default()).await;
    let client = Client::new();
    let call = |model: &'static str, streamed: bool| {
        let (client, url, admin) = (client.clone(), url.clone(), admin.clone());
        async move {
            let r = client
                .post(format!("{url}/api/invoke"))
                .bearer_auth(&admin)
                .json(&json!({"prompt": "Say hello", "model": model, "stream": streamed, "maxTokens": 50}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let me = || async {
        let v: Value = client
            .get(format!("{url}/api/users/admin"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["tokenUsage"].as_u64().unwrap(),
            v["tokensReserved"].as_u64().unwrap(),
            v["lifetimeCostPicos"].as_u64().unwrap(),
        )
    };

    let (status, body) = call("overloaded", false).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(me().await, (0, 0, 0));

    let (status, body) = call("ok", true).await;
    assert_eq!(status, 200, "{body}");
    // 20 uncached at $3, 100 cache reads at $0.30, 50 cache writes at $3.75, 6 out at $15.
    let cost = 20 * 3_000_000 + 100 * 300_000 + 50 * 3_750_000 + 6 * 15_000_000;
    assert_eq!(me().await, (176, 0, cost));

    let (status, body) = call("cut", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("event: error"));
    let generated = BpeTokenizer::shared().count("Half an answer");
    let (used, reserved, _) = me().await;
    assert_eq!(reserved, 0);
    assert_eq!(used, 176 + 20 + generated);
    assert!(ledger.audit().await.unwrap().is_exact());
}
