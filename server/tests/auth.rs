//! Who may do what, through real HTTP on both databases: the authorization matrix over every REST
//! endpoint and server function (anonymous, user A, user B, admin, a recording key), sessions
//! (fixation, logout, expiry, password changes), API keys (shown once, hashed, revocable, scopes)
//! and the failed-login throttle.

mod common;

use std::sync::Arc;

use app::service::AuthSettings;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokenmeter_server::http::auth::AuthLayerConfig;
use tokenmeter_server::services_for;
use tokenmeter_server::store::SqlLedger;

/// One way of calling: nothing, a session cookie, or an API key.
#[derive(Clone, Debug)]
enum As {
    Anonymous,
    Cookie(String),
    Key(String),
}

struct World {
    base: String,
    http: Client,
    ledger: Arc<SqlLedger>,
    admin: As,
    alice: As,
    bob: As,
    /// A backend's key with `usage:record`, owned by a plain user.
    recorder: As,
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl World {
    async fn new(db: &common::TestDb) -> Self {
        Self::with_settings(db, AuthSettings::default()).await
    }

    async fn with_settings(db: &common::TestDb, settings: AuthSettings) -> Self {
        let ledger = common::ledger(db).await;
        let services = services_for(ledger.clone(), settings);
        let admin_key = common::admin_key(&services, "root").await;
        let base =
            common::serve_services(services, Vec::new(), 64 * 1024, AuthLayerConfig::default())
                .await;
        let mut world = Self {
            base,
            http: client(),
            ledger,
            admin: As::Key(admin_key),
            alice: As::Anonymous,
            bob: As::Anonymous,
            recorder: As::Anonymous,
        };
        for id in ["alice", "bob", "svc"] {
            let (status, _) = world
                .call(
                    &world.admin.clone(),
                    "POST",
                    "/api/users",
                    Some(json!({"userId": id, "tokenLimit": 100_000, "password": format!("{id}-password")})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        world.alice = world.login("alice", "alice-password").await;
        world.bob = world.login("bob", "bob-password").await;
        let (status, key) = world
            .call(
                &world.admin.clone(),
                "POST",
                "/api/users/svc/keys",
                Some(json!({"name": "backend", "scopes": ["usage:record"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        world.recorder = As::Key(key["key"].as_str().expect("key").to_owned());
        world
    }

    fn request(&self, who: &As, method: &str, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        match who {
            As::Anonymous => req,
            As::Cookie(token) => req.header("cookie", format!("tm_session={token}")),
            As::Key(key) => req.bearer_auth(key),
        }
    }

    async fn call(
        &self,
        who: &As,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(who, method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A server function, called the way the browser does (a form-encoded POST).
    async fn rpc(&self, who: &As, name: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let res = self
            .request(who, "POST", &format!("/rpc/{name}"))
            .form(form)
            .send()
            .await
            .expect("rpc");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn login_response(
        &self,
        user: &str,
        password: &str,
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/api/session", self.base))
            .json(&json!({"userId": user, "password": password}));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("tm_session={c}"));
        }
        req.send().await.expect("login")
    }

    async fn login(&self, user: &str, password: &str) -> As {
        let res = self.login_response(user, password, None).await;
        assert_eq!(res.status(), StatusCode::OK, "login {user}");
        As::Cookie(session_token(&res).expect("a session cookie"))
    }
}

fn session_token(res: &reqwest::Response) -> Option<String> {
    let cookie = res.headers().get("set-cookie")?.to_str().ok()?;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let value = cookie.split(';').next()?.strip_prefix("tm_session=")?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// (method, path, body, [anonymous, alice, bob, admin, recorder]) — the data is alice's.
type Row = (&'static str, &'static str, Option<Value>, [u16; 5]);

fn rest_matrix() -> Vec<Row> {
    vec![
        ("GET", "/api/me", None, [401, 200, 200, 200, 200]),
        ("GET", "/api/users", None, [401, 403, 403, 200, 403]),
        ("GET", "/api/users/alice", None, [401, 200, 403, 200, 403]),
        // Guessing ids: a user learns nothing about whether someone else exists.
        ("GET", "/api/users/nobody", None, [401, 403, 403, 404, 403]),
        ("GET", "/api/users/root", None, [401, 403, 403, 200, 403]),
        (
            "PUT",
            "/api/users/alice/limit",
            Some(json!({"tokenLimit": 999_999})),
            [401, 403, 403, 200, 403],
        ),
        (
            "POST",
            "/api/users/alice/usage",
            Some(json!({"tokensConsumed": 5})),
            [401, 403, 403, 200, 200],
        ),
        (
            "POST",
            "/api/users/bob/usage",
            Some(json!({"tokensConsumed": 5})),
            [401, 403, 403, 200, 200],
        ),
        // A bad new password: authorized callers reach validation (422) and nothing changes.
        (
            "PUT",
            "/api/users/alice/password",
            Some(json!({"newPassword": "short"})),
            [401, 422, 403, 422, 403],
        ),
        (
            "GET",
            "/api/users/alice/keys",
            None,
            [401, 200, 403, 200, 403],
        ),
        (
            "POST",
            "/api/users/alice/keys",
            Some(json!({"name": "matrix"})),
            [401, 201, 403, 201, 403],
        ),
        (
            "POST",
            "/api/users/alice/keys",
            Some(json!({"name": "sneaky", "scopes": ["usage:record"]})),
            [401, 403, 403, 201, 403],
        ),
        (
            "DELETE",
            "/api/users/alice/keys/999999",
            None,
            [401, 404, 403, 404, 403],
        ),
        ("GET", "/healthz", None, [200, 200, 200, 200, 200]),
        ("GET", "/livez", None, [200, 200, 200, 200, 200]),
    ]
}

/// (server function, form, [anonymous, alice, bob, admin, recorder])
type RpcRow = (&'static str, Vec<(&'static str, &'static str)>, [u16; 5]);

fn rpc_matrix() -> Vec<RpcRow> {
    vec![
        ("whoami", vec![], [200, 200, 200, 200, 200]),
        ("demo_logins", vec![], [200, 200, 200, 200, 200]),
        (
            "list_users",
            vec![("sort", "userId"), ("direction", "asc")],
            [401, 403, 403, 200, 403],
        ),
        (
            "get_user_usage",
            vec![("user_id", "alice")],
            [401, 200, 403, 200, 403],
        ),
        (
            "get_user_usage",
            vec![("user_id", "nobody")],
            [401, 403, 403, 404, 403],
        ),
        (
            "create_user",
            vec![("body[userId]", "made-by-rpc"), ("body[tokenLimit]", "10")],
            [401, 403, 403, 200, 403],
        ),
        (
            "set_token_limit",
            vec![("user_id", "alice"), ("token_limit", "777777")],
            [401, 403, 403, 200, 403],
        ),
        (
            "list_api_keys",
            vec![("user_id", "alice")],
            [401, 200, 403, 200, 403],
        ),
        (
            "create_api_key",
            vec![("user_id", "alice"), ("name", "rpc")],
            [401, 200, 403, 200, 403],
        ),
        (
            "revoke_api_key",
            vec![("user_id", "alice"), ("key_id", "999999")],
            [401, 404, 403, 404, 403],
        ),
        (
            "change_password",
            vec![
                ("current_password", "wrong-password"),
                ("new_password", "short"),
            ],
            [401, 422, 422, 422, 403],
        ),
    ]
}

async fn authorization_matrix(db: common::TestDb) {
    let w = World::new(&db).await;
    let callers = [
        ("anonymous", As::Anonymous),
        ("alice", w.alice.clone()),
        ("bob", w.bob.clone()),
        ("admin", w.admin.clone()),
        ("recorder", w.recorder.clone()),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in rest_matrix() {
        for ((name, who), want) in callers.iter().zip(expected) {
            let (status, answer) = w.call(who, method, path, body.clone()).await;
            if status.as_u16() != want {
                failures.push(format!(
                    "{method} {path} as {name}: {status} (want {want}) {answer}"
                ));
            }
            if status.as_u16() >= 400 {
                assert!(
                    answer["error"]["code"].is_string(),
                    "{method} {path}: {answer}"
                );
            }
        }
    }
    for (name_fn, form, expected) in rpc_matrix() {
        for ((name, who), want) in callers.iter().zip(expected) {
            // Each creation needs a fresh id.
            let unique = format!("rpc-{name}");
            let form: Vec<(&str, &str)> = form
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        if *v == "made-by-rpc" {
                            unique.as_str()
                        } else {
                            *v
                        },
                    )
                })
                .collect();
            let (status, answer) = w.rpc(who, name_fn, &form).await;
            if status.as_u16() != want {
                failures.push(format!(
                    "rpc {name_fn} as {name}: {status} (want {want}) {answer}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // After all that: alice's limit was changed only by the admin, her usage only by the admin
    // and the recorder, and the ledger is exact.
    let (_, alice) = w.call(&w.admin, "GET", "/api/users/alice", None).await;
    assert_eq!(alice["tokenLimit"], 777_777);
    assert_eq!(alice["tokenUsage"], 10);
    let (_, bob) = w.call(&w.admin, "GET", "/api/users/bob", None).await;
    assert_eq!(bob["tokenUsage"], 10);
    assert!(w.ledger.audit().await.expect("audit").is_exact());
    // whoami tells each caller who they are, and nobody else.
    let (_, me) = w.rpc(&w.bob, "whoami", &[]).await;
    assert_eq!(me["userId"], "bob");
    assert_eq!(me["role"], "user");
    let (_, anon) = w.rpc(&As::Anonymous, "whoami", &[]).await;
    assert_eq!(anon, Value::Null);
}

#[tokio::test]
async fn authorization_matrix_sqlite() {
    authorization_matrix(common::sqlite()).await;
}

#[tokio::test]
async fn authorization_matrix_postgres() {
    authorization_matrix(common::postgres().await).await;
}

async fn sessions(db: common::TestDb) {
    let w = World::new(&db).await;
    let As::Cookie(alice) = w.alice.clone() else {
        unreachable!()
    };
    assert_eq!(
        w.call(&w.alice, "GET", "/api/me", None).await.0,
        StatusCode::OK
    );

    // Fixation: a session id planted before login is never promoted; the login issues its own.
    let planted = "a".repeat(64);
    let res = w
        .login_response("bob", "bob-password", Some(&planted))
        .await;
    let fresh = session_token(&res).expect("cookie");
    assert_ne!(fresh, planted);
    let planted_as = As::Cookie(planted);
    assert_eq!(
        w.call(&planted_as, "GET", "/api/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Logging in again from a browser with a live session replaces it.
    let res = w
        .login_response("alice", "alice-password", Some(&alice))
        .await;
    let second = session_token(&res).expect("cookie");
    assert_ne!(second, alice);
    assert_eq!(
        w.call(&w.alice, "GET", "/api/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let alice_now = As::Cookie(second.clone());
    assert_eq!(
        w.call(&alice_now, "GET", "/api/me", None).await.0,
        StatusCode::OK
    );

    // Logout: the cookie is deleted and the old value is dead on the server.
    let res = w
        .request(&alice_now, "DELETE", "/api/session")
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = res.headers()["set-cookie"].to_str().expect("cookie");
    assert!(
        cleared.starts_with("tm_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        w.call(&alice_now, "GET", "/api/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The same through the logout server function.
    let bob_again = As::Cookie(fresh);
    let (status, _) = w.rpc(&bob_again, "logout", &[]).await;
    assert!(status.is_success() || status.is_redirection(), "{status}");
    assert_eq!(
        w.call(&bob_again, "GET", "/api/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Changing the password ends every session of the account, and the old password is dead.
    let a1 = w.login("alice", "alice-password").await;
    let a2 = w.login("alice", "alice-password").await;
    let (status, answer) = w
        .call(
            &a1,
            "PUT",
            "/api/users/alice/password",
            Some(json!({"currentPassword": "wrong-one!", "newPassword": "a-new-password"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), answer["error"]["code"].as_str()),
        (422, Some("wrong_current_password"))
    );
    let (status, _) = w
        .call(
            &a1,
            "PUT",
            "/api/users/alice/password",
            Some(json!({"currentPassword": "alice-password", "newPassword": "a-new-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for old in [&a1, &a2] {
        assert_eq!(
            w.call(old, "GET", "/api/me", None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        w.login_response("alice", "alice-password", None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    w.login("alice", "a-new-password").await;
    // An admin resets a password without knowing it.
    let (status, _) = w
        .call(
            &w.admin,
            "PUT",
            "/api/users/bob/password",
            Some(json!({"newPassword": "reset-by-admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    w.login("bob", "reset-by-admin").await;
    let (status, answer) = w
        .call(
            &w.admin,
            "PUT",
            "/api/users/nobody/password",
            Some(json!({"newPassword": "reset-by-admin"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    // A key cannot change its owner's password (a leaked key must not take over the account).
    let (_, key) = w
        .call(
            &w.login("bob", "reset-by-admin").await,
            "POST",
            "/api/users/bob/keys",
            Some(json!({"name": "k"})),
        )
        .await;
    let bob_key = As::Key(key["key"].as_str().expect("key").to_owned());
    let (status, _) = w
        .call(
            &bob_key,
            "PUT",
            "/api/users/bob/password",
            Some(json!({"currentPassword": "reset-by-admin", "newPassword": "taken-over!"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn sessions_sqlite() {
    sessions(common::sqlite()).await;
}

#[tokio::test]
async fn sessions_postgres() {
    sessions(common::postgres().await).await;
}

#[tokio::test]
async fn sessions_expire() {
    let db = common::sqlite();
    let w = World::with_settings(
        &db,
        AuthSettings {
            session_ttl: chrono::Duration::seconds(1),
            ..AuthSettings::default()
        },
    )
    .await;
    let cookie = w.login("bob", "bob-password").await;
    assert_eq!(
        w.call(&cookie, "GET", "/api/me", None).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        w.call(&cookie, "GET", "/api/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn api_keys(db: common::TestDb) {
    let w = World::new(&db).await;
    let (status, created) = w
        .call(
            &w.alice,
            "POST",
            "/api/users/alice/keys",
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["key"].as_str().expect("key").to_owned();
    let prefix = created["apiKey"]["prefix"].as_str().expect("prefix");
    assert!(key.starts_with(prefix) && key.starts_with("tm_") && key.len() > prefix.len() + 32);
    let key_id = created["apiKey"]["keyId"].as_i64().expect("id");

    // The key acts as alice, with alice's role.
    let as_key = As::Key(key.clone());
    let (status, me) = w.call(&as_key, "GET", "/api/me", None).await;
    assert_eq!(
        (status, me["userId"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    assert_eq!(
        w.call(&as_key, "GET", "/api/users", None).await.0,
        StatusCode::FORBIDDEN
    );

    // Listed afterwards without the secret, with when it was last used.
    // (The last use is noted off the request's path, so it may take a moment to show.)
    let mut listed = Value::Null;
    for _ in 0..50 {
        let (_, list) = w.call(&w.alice, "GET", "/api/users/alice/keys", None).await;
        assert!(!list.to_string().contains(&key[3..]), "{list}");
        listed = list
            .as_array()
            .expect("array")
            .iter()
            .find(|k| k["keyId"] == key_id)
            .expect("listed")
            .clone();
        if listed["lastUsedAt"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed["name"], "laptop");
    assert!(listed["lastUsedAt"].is_string(), "{listed}");
    assert!(listed["revokedAt"].is_null());

    // Bob cannot revoke it; alice can, and it stops working at once.
    let path = format!("/api/users/alice/keys/{key_id}");
    assert_eq!(
        w.call(&w.bob, "DELETE", &path, None).await.0,
        StatusCode::FORBIDDEN
    );
    let wrong_owner = format!("/api/users/bob/keys/{key_id}");
    assert_eq!(
        w.call(&w.bob, "DELETE", &wrong_owner, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, revoked) = w.call(&w.alice, "DELETE", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revokedAt"].is_string());
    let (status, answer) = w.call(&as_key, "GET", "/api/me", None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );

    // Garbage in the Authorization header is a clear 401, not a crash or an anonymous pass.
    for bad in ["Bearer tm_nope", "Basic YWxpY2U6eA==", "Bearer "] {
        let res = w
            .http
            .get(format!("{}/api/me", w.base))
            .header("authorization", bad)
            .send()
            .await
            .expect("req");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }

    // Bad key requests are refused with a field and change nothing.
    let (status, answer) = w
        .call(
            &w.alice,
            "POST",
            "/api/users/alice/keys",
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), answer["error"]["field"].as_str()),
        (422, Some("name"))
    );
    let (status, _) = w
        .call(
            &w.admin,
            "POST",
            "/api/users/alice/keys",
            Some(json!({"name": "x", "scopes": ["everything"]})),
        )
        .await;
    assert_eq!(status.as_u16(), 422);
    let (status, _) = w
        .call(
            &w.admin,
            "POST",
            "/api/users/nobody/keys",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, after) = w.call(&w.alice, "GET", "/api/users/alice/keys", None).await;
    assert_eq!(after.as_array().expect("array").len(), 1);

    // The recording key reports usage for anyone and reads nothing.
    let (status, _) = w
        .call(
            &w.recorder,
            "POST",
            "/api/users/bob/usage",
            Some(json!({"tokensConsumed": 42})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        w.call(&w.recorder, "GET", "/api/users/bob", None).await.0,
        StatusCode::FORBIDDEN
    );
    // Users never report, lower or erase their own usage.
    for body in [json!({"tokensConsumed": 1}), json!({"tokensConsumed": -42})] {
        let (status, _) = w
            .call(&w.bob, "POST", "/api/users/bob/usage", Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (_, bob) = w.call(&w.bob, "GET", "/api/users/bob", None).await;
    assert_eq!(bob["tokenUsage"], 42);
}

#[tokio::test]
async fn api_keys_sqlite() {
    api_keys(common::sqlite()).await;
}

#[tokio::test]
async fn api_keys_postgres() {
    api_keys(common::postgres().await).await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_per_address() {
    let db = common::sqlite();
    let w = World::new(&db).await;
    // Five wrong passwords for bob: the sixth attempt is refused even with the right one.
    for _ in 0..5 {
        let res = w.login_response("bob", "not-bobs-password", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_credentials");
    }
    let res = w.login_response("bob", "bob-password", None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_login_attempts");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("minutes")
    );
    // The same through the login server function.
    let (status, _) = w
        .rpc(
            &As::Anonymous,
            "login",
            &[("user_id", "bob"), ("password", "bob-password")],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Other accounts are not locked by bob's... until this address has failed too often.
    w.login("alice", "alice-password").await;
    for i in 0..15 {
        let res = w
            .login_response(&format!("ghost{i}"), "whatever-it-is", None)
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = w.login_response("alice", "alice-password", None).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "20 failures from one address"
    );
    // Unknown and known accounts fail alike: no telling which ids exist.
    let unknown = w.login_response("nobody-at-all", "x-password", None).await;
    assert_eq!(unknown.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn pages_need_a_login_and_say_when_not_allowed() {
    let db = common::sqlite();
    let w = World::new(&db).await;
    let get = |who: As, path: &'static str| {
        let req = w.request(&who, "GET", path);
        async move { req.send().await.expect("page") }
    };
    for (path, location) in [
        ("/", "/login"),
        ("/users", "/login?next=/users"),
        ("/users/alice?x=1", "/login?next=/users/alice%3Fx%3D1"),
        ("/account", "/login?next=/account"),
    ] {
        let res = get(As::Anonymous, path).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.headers()["location"], location, "{path}");
    }
    let login = get(As::Anonymous, "/login").await;
    assert_eq!(login.status(), StatusCode::OK);
    assert!(login.text().await.expect("html").contains("Log in"));
    // Logged in, the login page sends each role to its start page.
    let res = get(w.bob.clone(), "/login").await;
    assert_eq!(res.headers()["location"], "/");
    let admin = w.login("root", &admin_password(&w).await).await;
    let res = get(admin.clone(), "/login").await;
    assert_eq!(res.headers()["location"], "/users");

    // A user on the admin page: a clear "not allowed", with the status to match.
    let res = get(w.bob.clone(), "/users").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let html = res.text().await.expect("html");
    assert!(
        html.contains("Not allowed") && html.contains("Only an administrator"),
        "{html}"
    );
    let res = get(w.bob.clone(), "/users/alice").await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Their own dashboard and the admin's list work.
    let res = get(w.bob.clone(), "/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.expect("html").contains("bob"));
    let res = get(admin, "/users").await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.expect("html");
    assert!(html.contains("alice") && html.contains("bob"), "{html}");
}

/// Gives root a known password (through the API, as an admin may) and answers it.
async fn admin_password(w: &World) -> String {
    let password = "root-password".to_owned();
    let (status, _) = w
        .call(
            &w.admin,
            "PUT",
            "/api/users/root/password",
            Some(json!({"newPassword": password})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    password
}

#[tokio::test]
async fn the_user_list_pages_filters_and_sorts_for_admins() {
    let db = common::sqlite();
    let w = World::new(&db).await;
    let page = |filter: &'static str, page: &'static str, size: &'static str| {
        let admin = w.admin.clone();
        let w = &w;
        async move {
            w.rpc(
                &admin,
                "list_users_page",
                &[
                    ("query[sort]", "userId"),
                    ("query[direction]", "desc"),
                    ("query[filter]", filter),
                    ("query[page]", page),
                    ("query[pageSize]", size),
                ],
            )
            .await
        }
    };
    let (status, body) = page("", "1", "2").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["userId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["svc", "root"]);
    assert_eq!(body["page"]["total"], 4);
    assert_eq!(body["page"]["pages"], 2);
    let (_, body) = page("", "9", "2").await;
    assert_eq!(
        body["page"]["page"], 2,
        "a page past the end shows the last one"
    );
    let (_, body) = page("BO", "1", "25").await;
    assert_eq!(body["users"][0]["userId"], "bob");
    assert_eq!(body["page"]["total"], 1);
    let (status, body) = page("", "0", "25").await;
    assert_eq!(status.as_u16(), 422);
    assert_eq!(body["field"], "page");
    let (status, _) = page("", "1", "501").await;
    assert_eq!(status.as_u16(), 422);
}
