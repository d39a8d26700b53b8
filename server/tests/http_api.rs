//! The REST API through real HTTP on 127.0.0.1:0: every endpoint, its success and each of its
//! errors, and that a refused request changed nothing.

mod common;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

struct Api {
    base: String,
    http: Client,
    /// An admin's API key: every request here is an admin's unless a test says otherwise.
    key: String,
}

impl Api {
    async fn new() -> (
        Self,
        common::TestDb,
        std::sync::Arc<tokenmeter_server::store::SqlLedger>,
    ) {
        let db = common::sqlite();
        let ledger = common::ledger(&db).await;
        let base = common::serve(ledger.clone()).await;
        let key = common::admin_key(&common::services(ledger.clone()), "root").await;
        (
            Self {
                base,
                http: Client::new(),
                key,
            },
            db,
            ledger,
        )
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.key)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }

    async fn usage(&self, user: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/users/{user}/usage", self.base))
            .bearer_auth(&self.key)
            .json(&body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Everything the API knows, to compare before and after a refused request.
    async fn snapshot(&self) -> Value {
        self.send("GET", "/api/users", None).await.1
    }
}

/// An error answer has the documented shape and the expected status and code.
fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "status for {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "code in {}", got.1);
    let message = got.1["error"]["message"].as_str().expect("a message");
    assert!(
        message.len() > 10,
        "message should say what went wrong: {message}"
    );
}

#[tokio::test]
async fn create_and_read_users() {
    let (api, _db, _) = Api::new().await;
    let (status, user) = api
        .send(
            "POST",
            "/api/users",
            Some(json!({"userId": "ana.silva", "tokenLimit": 1000, "displayName": "Ana Silva"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(user["userId"], "ana.silva");
    assert_eq!(user["displayName"], "Ana Silva");
    assert_eq!(user["tokenLimit"], 1000);
    assert_eq!(user["tokenUsage"], 0);
    assert_eq!(user["remainingTokens"], 1000);
    assert_eq!(user["percentageUsed"], 0.0);
    assert!(user["lastUpdated"].as_str().expect("time").ends_with('Z'));

    // No password in the request: one was generated and is answered this once.
    let mut user = user;
    let password = user
        .as_object_mut()
        .expect("object")
        .remove("initialPassword")
        .expect("a generated first password");
    assert_eq!(password.as_str().expect("text").len(), 20);
    let (status, got) = api.send("GET", "/api/users/ana.silva", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, user);
    assert!(got.get("initialPassword").is_none());

    let (_, second) = api
        .send(
            "POST",
            "/api/users",
            Some(json!({"userId": "ben", "tokenLimit": 10})),
        )
        .await;
    assert_eq!(second["displayName"], "ben", "the id is the default name");
    let (status, list) = api.send("GET", "/api/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list.as_array().expect("array").len(),
        3,
        "ana.silva, ben and the admin root"
    );

    assert_error(
        &api.send("GET", "/api/users/nobody", None).await,
        404,
        "user_not_found",
    );
    assert_error(
        &api.send("GET", "/api/users/bad$id", None).await,
        422,
        "invalid_user_id",
    );
}

#[tokio::test]
async fn create_user_errors_change_nothing() {
    let (api, _db, _) = Api::new().await;
    api.send(
        "POST",
        "/api/users",
        Some(json!({"userId": "ana", "tokenLimit": 100})),
    )
    .await;
    let before = api.snapshot().await;

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"userId": "ana", "tokenLimit": 5}),
            409,
            "user_exists",
        ),
        (
            json!({"userId": "", "tokenLimit": 5}),
            422,
            "invalid_user_id",
        ),
        (
            json!({"userId": "has space", "tokenLimit": 5}),
            422,
            "invalid_user_id",
        ),
        (
            json!({"userId": "x".repeat(65), "tokenLimit": 5}),
            422,
            "invalid_user_id",
        ),
        (
            json!({"userId": "new", "tokenLimit": 0}),
            422,
            "invalid_token_limit",
        ),
        (
            json!({"userId": "new", "tokenLimit": -5}),
            422,
            "invalid_token_limit",
        ),
        (
            json!({"userId": "new", "tokenLimit": 10_000_000_000_000_000i64}),
            422,
            "invalid_token_limit",
        ),
        (
            json!({"userId": "new", "tokenLimit": 18446744073709551615u64}),
            422,
            "invalid_field",
        ),
        (
            json!({"userId": "new", "tokenLimit": 1.5}),
            422,
            "invalid_field",
        ),
        (
            json!({"userId": "new", "tokenLimit": "100"}),
            422,
            "invalid_field",
        ),
        (json!({"userId": "new"}), 422, "invalid_field"),
        (
            json!({"userId": "new", "tokenLimit": 5, "tokenlimit": 5}),
            422,
            "invalid_field",
        ),
        (
            json!({"userId": "new", "tokenLimit": 5, "displayName": "   "}),
            422,
            "invalid_display_name",
        ),
        (json!([1, 2]), 422, "invalid_field"),
    ];
    for (body, status, code) in cases {
        let got = api.send("POST", "/api/users", Some(body.clone())).await;
        assert_error(&got, status, code);
        if code == "invalid_token_limit" {
            assert_eq!(got.1["error"]["field"], "tokenLimit", "{body}");
        }
    }
    let huge = format!(
        r#"{{"userId":"new","tokenLimit":5,"displayName":"{}"}}"#,
        "a".repeat(100_000)
    );
    let valid = r#"{"userId":"new","tokenLimit":5}"#.to_owned();
    let raw_cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (
            Some("application/json"),
            "{\"userId\": ".into(),
            400,
            "malformed_json",
        ),
        (
            Some("application/json"),
            format!("{valid} trailing"),
            400,
            "malformed_json",
        ),
        (
            Some("text/plain"),
            valid.clone(),
            415,
            "unsupported_media_type",
        ),
        (None, valid, 415, "unsupported_media_type"),
        (Some("application/json"), huge, 413, "payload_too_large"),
    ];
    for (content_type, body, status, code) in raw_cases {
        assert_error(
            &api.raw("POST", "/api/users", content_type, body).await,
            status,
            code,
        );
    }

    assert_eq!(
        api.snapshot().await,
        before,
        "refused requests must change nothing"
    );
}

#[tokio::test]
async fn set_limit() {
    let (api, _db, _) = Api::new().await;
    api.send(
        "POST",
        "/api/users",
        Some(json!({"userId": "ana", "tokenLimit": 100})),
    )
    .await;
    api.usage("ana", json!({"tokensConsumed": 80}), None).await;

    let (status, user) = api
        .send(
            "PUT",
            "/api/users/ana/limit",
            Some(json!({"tokenLimit": 400})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (user["tokenLimit"].as_u64(), user["tokenUsage"].as_u64()),
        (Some(400), Some(80))
    );
    assert_eq!(user["percentageUsed"], 20.0);

    // Below usage: allowed; usage stays, percentage goes above 100.
    let (_, lowered) = api
        .send(
            "PUT",
            "/api/users/ana/limit",
            Some(json!({"tokenLimit": 40})),
        )
        .await;
    assert_eq!(lowered["percentageUsed"], 200.0);
    assert_eq!(lowered["remainingTokens"], 0);
    assert_eq!(lowered["level"], "exhausted");

    let before = api.snapshot().await;
    assert_error(
        &api.send(
            "PUT",
            "/api/users/nobody/limit",
            Some(json!({"tokenLimit": 5})),
        )
        .await,
        404,
        "user_not_found",
    );
    assert_error(
        &api.send(
            "PUT",
            "/api/users/ana/limit",
            Some(json!({"tokenLimit": 0})),
        )
        .await,
        422,
        "invalid_token_limit",
    );
    assert_error(
        &api.send(
            "PUT",
            "/api/users/ana/limit",
            Some(json!({"tokenLimit": null})),
        )
        .await,
        422,
        "invalid_field",
    );
    assert_error(
        &api.send(
            "PUT",
            "/api/users/a%20b/limit",
            Some(json!({"tokenLimit": 5})),
        )
        .await,
        422,
        "invalid_user_id",
    );
    assert_error(
        &api.raw(
            "PUT",
            "/api/users/ana/limit",
            Some("application/json"),
            "nope",
        )
        .await,
        400,
        "malformed_json",
    );
    assert_eq!(api.snapshot().await, before);
}

#[tokio::test]
async fn record_usage_and_retries() {
    let (api, _db, ledger) = Api::new().await;
    api.send(
        "POST",
        "/api/users",
        Some(json!({"userId": "ana", "tokenLimit": 1000})),
    )
    .await;

    let body = json!({"tokensConsumed": 120, "inputTokens": 100, "outputTokens": 20, "model": "claude-sonnet-4-5"});
    let (status, first) = api.usage("ana", body.clone(), Some("req-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["tokenUsage"], 120);
    assert_eq!(first["remainingTokens"], 880);
    assert_eq!(first["tokensRecorded"], 120);
    assert_eq!(first["replayed"], false);

    let (status, replay) = api.usage("ana", body.clone(), Some("req-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["eventId"], first["eventId"]);
    assert_eq!(replay["tokenUsage"], 120);
    assert_eq!(
        api.send("GET", "/api/users/ana", None).await.1["tokenUsage"],
        120,
        "recorded once"
    );

    let (_, no_key) = api.usage("ana", json!({"tokensConsumed": 5}), None).await;
    assert_eq!(no_key["tokenUsage"], 125);

    let before = api.snapshot().await;
    let cases: Vec<(&str, Value, Option<&str>, u16, &str)> = vec![
        (
            "ana",
            json!({"tokensConsumed": 121}),
            Some("req-1"),
            409,
            "idempotency_key_reused",
        ),
        (
            "nobody",
            json!({"tokensConsumed": 1}),
            None,
            404,
            "user_not_found",
        ),
        (
            "bad!id",
            json!({"tokensConsumed": 1}),
            None,
            422,
            "invalid_user_id",
        ),
        (
            "ana",
            json!({"tokensConsumed": 0}),
            None,
            422,
            "invalid_tokens_consumed",
        ),
        (
            "ana",
            json!({"tokensConsumed": -10}),
            None,
            422,
            "invalid_tokens_consumed",
        ),
        (
            "ana",
            json!({"tokensConsumed": 1_000_000_001}),
            None,
            422,
            "invalid_tokens_consumed",
        ),
        (
            "ana",
            json!({"tokensConsumed": 9_223_372_036_854_775_808u64}),
            None,
            422,
            "invalid_field",
        ),
        (
            "ana",
            json!({"tokensConsumed": "12"}),
            None,
            422,
            "invalid_field",
        ),
        (
            "ana",
            json!({"tokensConsumed": 10, "inputTokens": 8, "outputTokens": 8}),
            None,
            422,
            "inconsistent_token_split",
        ),
        (
            "ana",
            json!({"tokensConsumed": 10, "inputTokens": -1}),
            None,
            422,
            "invalid_input_tokens",
        ),
        (
            "ana",
            json!({"tokensConsumed": 10, "model": "has spaces"}),
            None,
            422,
            "invalid_model",
        ),
        (
            "ana",
            json!({"tokensConsumed": 10}),
            Some(""),
            422,
            "invalid_idempotency_key",
        ),
        ("ana", json!({"tokens": 10}), None, 422, "invalid_field"),
    ];
    for (user, body, key, status, code) in cases {
        assert_error(&api.usage(user, body, key).await, status, code);
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "refused reports must change nothing"
    );
    assert!(ledger.audit().await.expect("audit").is_exact());
}

#[tokio::test]
async fn list_sorting() {
    let (api, _db, _) = Api::new().await;
    for (id, limit, used) in [("a", 100, 90), ("b", 1000, 100), ("c", 50, 10)] {
        api.send(
            "POST",
            "/api/users",
            Some(json!({"userId": id, "tokenLimit": limit})),
        )
        .await;
        api.usage(id, json!({"tokensConsumed": used}), None).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|u| u["userId"].as_str().expect("id").to_owned())
            .filter(|id| id != "root")
            .collect()
    };
    for (query, want) in [
        ("", ["a", "b", "c"]),
        ("?sort=usage&direction=desc", ["b", "a", "c"]),
        ("?sort=limit", ["c", "a", "b"]),
        ("?sort=percentage&direction=desc", ["a", "c", "b"]),
        ("?sort=remaining", ["a", "c", "b"]),
    ] {
        let want: Vec<&str> = want.to_vec();
        let (status, list) = api.send("GET", &format!("/api/users{query}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&list), want, "{query}");
    }
    // A case-insensitive filter on id or name.
    let (status, list) = api.send("GET", "/api/users?filter=B", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&list), ["b"]);
    assert_error(
        &api.send(
            "GET",
            &format!("/api/users?filter={}", "x".repeat(101)),
            None,
        )
        .await,
        422,
        "invalid_filter",
    );
    assert_error(
        &api.send("GET", "/api/users?sort=height", None).await,
        422,
        "invalid_sort",
    );
    assert_error(
        &api.send("GET", "/api/users?direction=up", None).await,
        422,
        "invalid_direction",
    );
}

#[tokio::test]
async fn routes_health_and_cors() {
    let (api, _db, ledger) = Api::new().await;
    assert_error(
        &api.send("GET", "/api/nothing-here", None).await,
        404,
        "route_not_found",
    );
    assert_error(
        &api.send("DELETE", "/api/users", None).await,
        405,
        "method_not_allowed",
    );
    let (status, body) = api.send("GET", "/livez", None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _) = api.send("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    // CORS: only configured origins are allowed.
    let base = common::serve_with(
        ledger.clone(),
        vec!["https://admin.example.com".into()],
        64 * 1024,
    )
    .await;
    let preflight = |origin: &'static str| {
        let http = api.http.clone();
        let url = format!("{base}/api/users");
        async move {
            http.request(reqwest::Method::OPTIONS, url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .send()
                .await
                .expect("preflight")
        }
    };
    let allowed = preflight("https://admin.example.com").await;
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://admin.example.com")
    );
    let other = preflight("https://evil.example.net").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The database goes away: health says so.
    ledger.db().pool.close().await;
    assert_error(&api.send("GET", "/healthz", None).await, 503, "unavailable");
}

#[tokio::test]
async fn pages_render_on_the_server() {
    let (api, _db, _) = Api::new().await;
    api.send(
        "POST",
        "/api/users",
        Some(json!({"userId": "ana", "tokenLimit": 1000, "displayName": "Ana Silva"})),
    )
    .await;
    api.usage("ana", json!({"tokensConsumed": 250}), None).await;
    // Without credentials a page sends the browser to log in, and back here after.
    let no_redirects = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let anonymous = no_redirects
        .get(format!("{}/users/ana", api.base))
        .send()
        .await
        .expect("page");
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()["location"], "/login?next=/users/ana");
    let page = api
        .http
        .get(format!("{}/users/ana", api.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Ana Silva") && html.contains("250") && html.contains("25.00 %"),
        "{html}"
    );
    let missing = api
        .http
        .get(format!("{}/no/such/page", api.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect("page");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(
        missing
            .text()
            .await
            .expect("html")
            .contains("Page not found")
    );
}
