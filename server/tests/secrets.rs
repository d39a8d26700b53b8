//! Passwords, session tokens and API keys never appear in clear: not in the database files, not
//! in the server's logs (at debug level), not in any answer after the one that created them.
//! Runs the real binary on a SQLite file so every byte it writes can be searched.

mod common;

use std::process::Stdio;

use reqwest::Client;
use serde_json::{Value, json};

fn cookie_token(res: &reqwest::Response) -> String {
    let cookie = res.headers()["set-cookie"].to_str().expect("cookie");
    cookie
        .split(';')
        .next()
        .and_then(|c| c.strip_prefix("tm_session="))
        .expect("session cookie")
        .to_owned()
}

#[tokio::test]
async fn secrets_never_appear_in_clear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_path = dir.path().join("secrets.db");
    let url = format!("sqlite:{}", db_path.display());
    let log_path = dir.path().join("server.log");

    // The bootstrap prints the admin's password once: that is its one showing.
    let out = common::cli(&url, &["create-admin", "--user-id", "root"]);
    let admin_password = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a printed password")
        .to_owned();

    let log = std::fs::File::create(&log_path).expect("log file");
    let server = common::start_server_logging(
        &url,
        &[("RUST_LOG", "debug")],
        Stdio::from(log.try_clone().expect("clone")),
        Stdio::from(log),
    )
    .await;
    let http = Client::new();
    let base = &server.base;
    let mut secrets = vec![admin_password.clone()];
    let mut later_answers = String::new();

    let login = |user: &str, password: &str| {
        http.post(format!("{base}/api/session"))
            .json(&json!({"userId": user, "password": password}))
            .send()
    };
    let res = login("root", &admin_password).await.expect("login");
    assert_eq!(res.status(), 200);
    let admin_session = cookie_token(&res);
    secrets.push(admin_session.clone());
    let admin =
        |req: reqwest::RequestBuilder| req.header("cookie", format!("tm_session={admin_session}"));

    let carol_password = "carol-Secret-passphrase-1";
    secrets.push(carol_password.to_owned());
    let res = admin(http.post(format!("{base}/api/users")))
        .json(&json!({"userId": "carol", "tokenLimit": 1000, "password": carol_password}))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    assert!(created.get("initialPassword").is_none());
    assert!(!created.to_string().contains(carol_password));

    let res = admin(http.post(format!("{base}/api/users")))
        .json(&json!({"userId": "dave", "tokenLimit": 1000}))
        .send()
        .await
        .expect("create");
    let dave: Value = res.json().await.expect("json");
    let dave_password = dave["initialPassword"]
        .as_str()
        .expect("generated")
        .to_owned();
    secrets.push(dave_password.clone());

    let res = admin(http.post(format!("{base}/api/users/carol/keys")))
        .json(&json!({"name": "carol's script"}))
        .send()
        .await
        .expect("key");
    let key: Value = res.json().await.expect("json");
    let api_key = key["key"].as_str().expect("key").to_owned();
    secrets.push(api_key.clone());

    let res = login("carol", carol_password).await.expect("login");
    secrets.push(cookie_token(&res));
    let res = login("dave", &dave_password).await.expect("login");
    assert_eq!(res.status(), 200);
    secrets.push(cookie_token(&res));
    let wrong_guess = "carol-Wrong-guess-2";
    secrets.push(wrong_guess.to_owned());
    assert_eq!(
        login("carol", wrong_guess).await.expect("login").status(),
        401
    );

    // Every answer after creation: lists, keys, who-am-I, with each credential.
    for path in [
        "/api/users",
        "/api/users/carol/keys",
        "/api/users/carol",
        "/api/me",
    ] {
        let text = admin(http.get(format!("{base}{path}")))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        later_answers.push_str(&text);
        let text = http
            .get(format!("{base}{path}"))
            .bearer_auth(&api_key)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        later_answers.push_str(&text);
    }
    drop(server);

    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("listening"), "the log was captured: {log}");
    let mut database = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", db_path.display());
        if let Ok(bytes) = std::fs::read(&file) {
            database.extend(bytes);
        }
    }
    assert!(database.len() > 10_000, "the database files were read");
    let in_bytes =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The search finds what is there (ids, names), so finding no secret means something.
    assert!(in_bytes(&database, "carol's script") && in_bytes(&database, "dave"));
    for secret in &secrets {
        assert!(
            !in_bytes(&database, secret),
            "a secret is in the database in clear: {secret}"
        );
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the log: {secret}"
        );
        assert!(
            !later_answers.contains(secret.as_str()),
            "a secret came back in an answer: {secret}"
        );
    }

    // What is stored instead: argon2id hashes and SHA-256 digests.
    let conn = tokenmeter_server::store::Db::connect(&url)
        .await
        .expect("db");
    let hashes: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM credential")
        .fetch_all(&conn.pool)
        .await
        .expect("hashes");
    assert_eq!(hashes.len(), 3);
    assert!(
        hashes.iter().all(|h| h.starts_with("$argon2id$v=19$")),
        "{hashes:?}"
    );
    let digests: Vec<String> = sqlx::query_scalar("SELECT secret_hash FROM api_key")
        .fetch_all(&conn.pool)
        .await
        .expect("digests");
    assert!(
        digests
            .iter()
            .all(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))
    );
}

/// A provider key set in the environment reaches the provider and nowhere else: not the log (at
/// debug level, through successful and refused calls), not any answer, not the pages.
#[tokio::test]
async fn provider_keys_stay_on_the_server() {
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    const KEY: &str = "sk-canary-4f1d9c0e7b2a";
    // A Chat Completions stand-in that notes the key it was sent; refuses model "bad-key".
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post({
                let seen = seen.clone();
                move |headers: HeaderMap, body: String| {
                    let seen = seen.clone();
                    async move {
                        let auth = headers["authorization"].to_str().unwrap().to_owned();
                        seen.lock().unwrap().push(auth);
                        let request: Value = serde_json::from_str(&body).unwrap();
                        if request["model"] == "bad-key" {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                axum::Json(json!({"error": {"message": "Incorrect API key provided"}})),
                            );
                        }
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(json!({
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
                            })),
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("keys.db").display());
    let out = common::cli(&url, &["create-admin", "--user-id", "root"]);
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a printed password")
        .to_owned();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = common::start_server_logging(
        &url,
        &[
            ("RUST_LOG", "debug"),
            ("OPENAI_API_KEY", KEY),
            ("TOKENMETER_OPENAI_BASE_URL", &fake),
            ("TOKENMETER_OPENAI_MODELS", "gpt-4o-mini,bad-key"),
        ],
        Stdio::from(log.try_clone().expect("clone")),
        Stdio::from(log),
    )
    .await;
    let http = Client::new();
    let base = &server.base;
    let res = http
        .post(format!("{base}/api/session"))
        .json(&json!({"userId": "root", "password": password}))
        .send()
        .await
        .unwrap();
    let session = format!("tm_session={}", cookie_token(&res));
    let mut answers = String::new();
    for model in ["gpt-4o-mini", "bad-key"] {
        for stream in [false, true] {
            let res = http
                .post(format!("{base}/api/invoke"))
                .header("cookie", &session)
                .json(&json!({"prompt": "hello", "model": model, "stream": stream}))
                .send()
                .await
                .unwrap();
            answers.push_str(&format!("{res:?}"));
            answers.push_str(&res.text().await.unwrap());
        }
    }
    for path in ["/api/models", "/chat", "/"] {
        let res = http
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        answers.push_str(&res.text().await.unwrap());
    }
    assert!(
        answers.contains("provider_auth_failed"),
        "the refused call was answered: {answers}"
    );
    drop(server);

    // Positive control: the provider did get the key.
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|a| a == &format!("Bearer {KEY}"))
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "every call reached the provider"
    );
    let logged = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        logged.contains("model call refused"),
        "the log has the refusal"
    );
    assert!(!logged.contains(KEY), "the provider key is in the log");
    assert!(!answers.contains(KEY), "the provider key is in an answer");
}
