//! The OpenAI-compatible gateway driven by the real OpenAI Python SDK (installed by
//! `scripts/setup.sh` into `.venv`): an existing client is metered and limited by changing only
//! its base URL and key; streaming and not; the limit arrives as the SDK's RateLimitError.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use domain::api::CreateApiKeyBody;
use domain::{NewUser, TokenLimit, UserId};
use serde_json::Value;
use tokenmeter_server::providers::demo_models;

/// The Python with the `openai` package: `TOKENMETER_TEST_PYTHON`, or the project's `.venv`.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TOKENMETER_TEST_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh (it installs the OpenAI SDK for this test)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_python_sdk_is_metered_through_the_gateway() {
    let db = common::sqlite();
    let ledger = common::ledger(&db).await;
    let mut services = common::services(ledger.clone());
    services.models = Arc::new(demo_models(Duration::from_millis(1)));
    let base =
        common::serve_services(services.clone(), Vec::new(), 1 << 20, Default::default()).await;
    let key_for = |id: &'static str, limit: i64| {
        let services = services.clone();
        async move {
            let user_id = UserId::parse(id).unwrap();
            services
                .auth
                .create_user_with_password(
                    NewUser::new(user_id.clone(), None, TokenLimit::new(limit).unwrap()),
                    "unused-hash",
                    chrono::Utc::now(),
                )
                .await
                .unwrap();
            services
                .bootstrap_api_key(
                    &user_id,
                    &CreateApiKeyBody {
                        name: "sdk".into(),
                        scopes: vec![],
                    },
                )
                .await
                .unwrap()
                .key
        }
    };
    let key = key_for("sdk-user", 10_000).await;
    let broke = key_for("sdk-broke", 5).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(&base)
            .arg(&key)
            .arg(&broke)
            .output()
    })
    .await
    .unwrap()
    .expect("run the Python SDK client");
    assert!(
        output.status.success(),
        "the SDK client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_slice(&output.stdout).expect("the client prints JSON");

    let whole = &found["whole"];
    assert!(
        whole["text"].as_str().unwrap().starts_with("[Demo model"),
        "{found}"
    );
    assert_eq!(whole["finish"], "length");
    assert_eq!(whole["completion"], 20);
    let stream = &found["stream"];
    assert!(
        stream["pieces"].as_u64().unwrap() > 3,
        "it streamed: {found}"
    );
    assert_eq!(stream["completion"], 15);
    assert!(stream["text"].as_str().unwrap().starts_with("[Demo model"));
    assert_eq!(found["limit"]["status"], 429, "{found}");
    assert_eq!(found["limit"]["code"], "token_limit_exceeded");
    assert!(
        found["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "tokenmeter-demo")
    );

    // What the SDK was told is what the ledger holds.
    use app::ports::Ledger;
    let user = ledger
        .get_user(&UserId::parse("sdk-user").unwrap())
        .await
        .unwrap()
        .unwrap();
    let told = whole["total"].as_u64().unwrap() + stream["total"].as_u64().unwrap();
    assert_eq!(user.tokens_used, told);
    assert_eq!(user.tokens_reserved, 0);
    let broke = ledger
        .get_user(&UserId::parse("sdk-broke").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broke.tokens_used, 0, "a refused call charges nothing");
    assert!(ledger.audit().await.unwrap().is_exact());
}
