//! The Bedrock provider against a real local HTTP server that speaks Converse and
//! ConverseStream (binary event-stream frames) and checks every request's SigV4 signature:
//! whole and streamed answers, usage with cache reads and writes, throttling and access errors,
//! an exception mid-stream, a cut stream; and the budget through `/api/invoke`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app::ports::{ProviderError, ProviderRequest, Tokenizer};
use app::service::Models;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::{CallUsage, ChatMessage, ChatRole, FinishReason, ModelName};
use futures::StreamExt;
use reqwest::Client;
use serde_json::{Value, json};
use tokenmeter_server::providers::bedrock::{self, BedrockProvider};
use tokenmeter_server::providers::eventstream::encode;
use tokenmeter_server::providers::sigv4::{self, Credentials, SigningInput};
use tokenmeter_server::providers::{BpeTokenizer, default_prices};

const MODEL_OK: &str = "anthropic.claude-ok-v1:0";

fn credentials() -> Credentials {
    Credentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "test/secret+KEY".into(),
        session_token: Some("session-token-1".into()),
    }
}

fn frame(event: &str, payload: Value) -> Vec<u8> {
    encode(
        &[
            (":event-type", event),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    encode(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({"message": message}).to_string().as_bytes(),
    )
}

fn eventstream(frames: Vec<Vec<u8>>, clean: bool) -> Response {
    let mut items: Vec<Result<Vec<u8>, std::io::Error>> = frames.into_iter().map(Ok).collect();
    if !clean {
        items.push(Err(std::io::Error::other("connection reset")));
    }
    let body = futures::stream::iter(items).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        i
    });
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn aws_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(
            "x-amzn-errortype",
            format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )],
        axum::Json(json!({"message": message})),
    )
        .into_response()
}

/// Checks the signature as AWS would (recomputed from what arrived), then answers by model.
async fn fake_bedrock(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (date, host, token) = (
        header("x-amz-date"),
        header("host"),
        header("x-amz-security-token"),
    );
    let expected = sigv4::authorization(
        &SigningInput {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: &[],
            headers: &[
                ("content-type", &header("content-type")),
                ("host", &host),
                ("x-amz-date", &date),
                ("x-amz-security-token", &token),
            ],
            body: &body,
            region: "eu-west-1",
            service: "bedrock",
            amz_date: &date,
        },
        &credentials(),
    );
    if header("authorization") != expected || token != "session-token-1" {
        return aws_error(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    let path = parts.uri.path().to_owned();
    let request: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(request["system"], json!([{"text": "Be brief."}]));
    assert_eq!(request["inferenceConfig"]["maxTokens"], 50);
    let streamed = path.ends_with("/converse-stream");
    let model = path
        .split('/')
        .nth(2)
        .unwrap_or_default()
        .replace("%3A", ":");
    let usage = json!({"inputTokens": 20, "outputTokens": 6, "totalTokens": 26, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50});
    match (model.as_str(), streamed) {
        (MODEL_OK, false) => axum::Json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock"}]}},
            "stopReason": "end_turn",
            "usage": usage,
        }))
        .into_response(),
        (MODEL_OK, true) => eventstream(
            vec![
                frame("messageStart", json!({"role": "assistant"})),
                frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
                frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo"}})),
                frame("contentBlockStop", json!({"contentBlockIndex": 0})),
                frame("messageStop", json!({"stopReason": "max_tokens"})),
                frame("metadata", json!({"usage": usage, "metrics": {"latencyMs": 12}})),
            ],
            true,
        ),
        ("cut", true) => eventstream(
            vec![
                frame("messageStart", json!({"role": "assistant"})),
                frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Half an answer"}})),
            ],
            false,
        ),
        ("throttled-mid", true) => eventstream(
            vec![
                frame("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Some"}})),
                exception("throttlingException", "Too many tokens, please wait"),
            ],
            true,
        ),
        ("throttled", _) => aws_error(429, "ThrottlingException", "Too many requests"),
        ("denied", _) => aws_error(403, "AccessDeniedException", "You don't have access to the model"),
        _ => aws_error(404, "ResourceNotFoundException", "no such model"),
    }
}

async fn fake() -> String {
    let app = Router::new().fallback(fake_bedrock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn provider(endpoint: &str, credentials: Credentials) -> BedrockProvider {
    BedrockProvider::new(
        "eu-west-1".into(),
        Some(endpoint.to_owned()),
        credentials,
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
        ],
        max_output: 50,
        stream: streamed,
    }
}

/// The answer with its usage summed over the reports (message_start and message_delta, or
/// one metadata event).
async fn collect(
    p: &BedrockProvider,
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
async fn signed_converse_and_converse_stream_carry_the_usage() {
    let endpoint = fake().await;
    let p = provider(&endpoint, credentials());
    let expected = CallUsage {
        input_tokens: 170,
        output_tokens: 6,
        cached_tokens: 100,
        cache_write_tokens: 50,
        reasoning_tokens: 0,
    };
    let (text, usage, finish, error) = collect(&p, ask(MODEL_OK, false)).await.unwrap();
    assert_eq!(
        (text.as_str(), usage, finish, error),
        (
            "Hello from Bedrock",
            expected,
            Some(FinishReason::Stop),
            None
        )
    );
    let (text, usage, finish, error) = collect(&p, ask(MODEL_OK, true)).await.unwrap();
    assert_eq!(
        (text.as_str(), usage, finish, error),
        ("Hello", expected, Some(FinishReason::Length), None)
    );
    assert!(!format!("{p:?}").contains("test/secret+KEY"));

    // A wrong secret is refused by the signature check: credentials matter.
    let wrong = provider(
        &endpoint,
        Credentials {
            secret_access_key: "wrong".into(),
            ..credentials()
        },
    );
    assert!(matches!(
        collect(&wrong, ask(MODEL_OK, false)).await.err(),
        Some(ProviderError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn failures_are_told_apart() {
    let endpoint = fake().await;
    let p = provider(&endpoint, credentials());
    assert!(matches!(
        collect(&p, ask("throttled", false)).await.err(),
        Some(ProviderError::RateLimited(_))
    ));
    assert!(
        matches!(collect(&p, ask("denied", true)).await.err(), Some(ProviderError::Unauthorized(m)) if m.contains("access"))
    );
    let (text, _, _, error) = collect(&p, ask("throttled-mid", true)).await.unwrap();
    assert_eq!(text, "Some");
    assert!(matches!(error, Some(ProviderError::RateLimited(m)) if m.contains("Too many tokens")));
    let (text, usage, _, error) = collect(&p, ask("cut", true)).await.unwrap();
    assert_eq!(text, "Half an answer");
    assert_eq!(usage, CallUsage::default());
    assert!(error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bedrock_calls_reach_the_budget_exactly() {
    let endpoint = fake().await;
    let db = common::sqlite();
    let ledger = common::ledger(&db).await;
    let mut services = common::services(ledger.clone());
    let p = Arc::new(provider(&endpoint, credentials()));
    let entries: Vec<_> = [MODEL_OK, "cut", "throttled"]
        .iter()
        .map(|m| bedrock::entry(ModelName::parse(m).unwrap(), p.clone()))
        .collect();
    let sonnet = default_prices()
        .price_at(
            &ModelName::parse("anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap(),
            chrono::Utc::now(),
        )
        .unwrap()
        .clone();
    let prices = default_prices().overridden_by(vec![domain::ModelPrice {
        model: ModelName::parse(MODEL_OK).unwrap(),
        ..sonnet
    }]);
    services.models = Arc::new(Models::new(entries, None, prices, BpeTokenizer::shared()));
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
                .json(&json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}], "model": model, "stream": streamed, "maxTokens": 50}))
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
    let (status, body) = call("throttled", false).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(me().await, (0, 0, 0));
    let (status, body) = call(MODEL_OK, true).await;
    assert_eq!(status, 200, "{body}");
    let cost = 20 * 3_000_000 + 100 * 300_000 + 50 * 3_750_000 + 6 * 15_000_000;
    assert_eq!(me().await, (176, 0, cost));
    let (status, body) = call("cut", true).await;
    assert_eq!(status, 200, "{body}");
    let tokenizer = BpeTokenizer::shared();
    let prompt = tokenizer.count_conversation(&[
        ChatMessage {
            role: ChatRole::System,
            content: "Be brief.".into(),
        },
        ChatMessage {
            role: ChatRole::User,
            content: "Say hello".into(),
        },
    ]);
    let (used, reserved, _) = me().await;
    assert_eq!(reserved, 0);
    assert_eq!(used, 176 + prompt + tokenizer.count("Half an answer"));
    assert!(ledger.audit().await.unwrap().is_exact());
}
