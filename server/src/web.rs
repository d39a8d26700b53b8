//! The whole HTTP application: pages (server-rendered Leptos), server functions, the REST API,
//! static files, and the layers around them (body limit, CORS).

use app::service::Services;
use app::{App, shell};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{LeptosRoutes, generate_route_list};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::http::api_router;
use crate::http::auth::{AuthLayerConfig, AuthState, authenticate};

pub struct WebConfig {
    pub leptos: LeptosOptions,
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub auth: AuthLayerConfig,
}

/// Leptos options from cargo-leptos's environment variables, with defaults that let the binary
/// run on its own from the repository root (site under `target/site`).
pub fn leptos_options() -> LeptosOptions {
    let built_by_cargo_leptos = option_env!("LEPTOS_OUTPUT_NAME").is_some();
    let mut options = if built_by_cargo_leptos || std::env::var_os("LEPTOS_OUTPUT_NAME").is_some() {
        leptos::config::get_configuration(None)
            .map(|c| c.leptos_options)
            .unwrap_or_else(|e| panic!("invalid LEPTOS_* configuration: {e}"))
    } else {
        LeptosOptions::builder()
            .output_name("tokenmeter")
            .site_root(std::env::var("LEPTOS_SITE_ROOT").unwrap_or_else(|_| "target/site".into()))
            .build()
    };
    if std::env::var_os("LEPTOS_ENV").is_none() {
        // Only `cargo leptos watch` serves the live-reload socket the DEV page would dial.
        options.env = leptos::config::Env::PROD;
    }
    options
}

pub fn build_app(services: Services, config: WebConfig) -> Router {
    let routes = generate_route_list(App);
    let context = {
        let services = services.clone();
        move || provide_context(services.clone())
    };
    let pages = Router::new()
        .leptos_routes_with_context(&config.leptos, routes, context.clone(), {
            let options = config.leptos.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler_with_context(
            context, shell,
        ))
        .with_state(config.leptos.clone());

    let auth_state = AuthState {
        services: services.clone(),
        config: config.auth,
    };
    let mut app = api_router(services)
        .merge(pages)
        .layer(axum::middleware::from_fn_with_state(
            auth_state,
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let origins: Vec<HeaderValue> = config
        .cors_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::AUTHORIZATION,
                    HeaderName::from_static("idempotency-key"),
                ]),
        );
    }
    app
}
