//! Finding out who calls, once per request, before any handler runs: an `Authorization: Bearer`
//! API key or the session cookie. The answer ([`Identity`]) and a few facts about the request
//! ([`RequestInfo`]) go into the request's extensions, where REST handlers ([`Authenticated`])
//! and server functions (`app::api::ssr::caller`) read it. Pages need a session: anyone else is
//! sent to the login page, and comes back after it.

use std::net::SocketAddr;

use app::error::AppError;
use app::service::Services;
use app::service::auth::{Identity, RequestInfo, session_token_from_cookies, start_page};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use domain::Caller;
use domain::access::login_path_for;

use super::error::ApiError;

/// How the authentication layer treats the network around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthLayerConfig {
    /// Always mark cookies `Secure` (set when TLS ends at a proxy that does not say so).
    pub secure_cookies: bool,
    /// Believe `X-Forwarded-For` / `X-Forwarded-Proto` (only behind a proxy that sets them).
    pub trust_proxy: bool,
}

#[derive(Clone)]
pub struct AuthState {
    pub services: Services,
    pub config: AuthLayerConfig,
}

fn client_addr(req: &Request, trust_proxy: bool) -> String {
    if trust_proxy
        && let Some(forwarded) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
    {
        return forwarded.trim().to_owned();
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn is_tls(headers: &HeaderMap, config: AuthLayerConfig) -> bool {
    config.secure_cookies
        || (config.trust_proxy
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")))
}

/// A page a person navigates to (not the API, server functions, assets or health checks).
fn is_page(method: &Method, path: &str) -> bool {
    let machine = ["/api/", "/rpc/", "/pkg/", "/v1/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        || matches!(path, "/api" | "/healthz" | "/livez");
    // User ids may contain dots, so only known file types count as assets.
    const ASSET_TYPES: [&str; 10] = [
        ".css",
        ".js",
        ".wasm",
        ".svg",
        ".ico",
        ".png",
        ".map",
        ".txt",
        ".json",
        ".webmanifest",
    ];
    let asset = ASSET_TYPES.iter().any(|ext| path.ends_with(ext));
    (method == Method::GET || method == Method::HEAD) && !machine && !asset
}

pub async fn authenticate(
    State(state): State<AuthState>,
    mut req: Request,
    next: Next,
) -> Response {
    let info = RequestInfo {
        client_addr: client_addr(&req, state.config.trust_proxy),
        secure: is_tls(req.headers(), state.config),
        session_token: req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_token_from_cookies)
            .map(str::to_owned),
    };
    let identity = if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        match value.to_str() {
            Ok(value) => state.services.identify_bearer(value).await,
            Err(_) => state.services.identify_bearer("").await,
        }
    } else if let Some(token) = &info.session_token {
        state.services.identify_session(token).await
    } else {
        Ok(Identity::Anonymous)
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => return ApiError(e).into_response(),
    };

    let path = req.uri().path();
    if is_page(req.method(), path) {
        match (&identity, path) {
            (Identity::Known { caller, .. }, "/login") => {
                return Redirect::to(start_page(caller.role)).into_response();
            }
            (Identity::Known { .. }, _) | (_, "/login") => {}
            _ => {
                let wanted = req
                    .uri()
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                let location = login_path_for(wanted);
                return (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
            }
        }
    }
    req.extensions_mut().insert(identity);
    req.extensions_mut().insert(info);
    next.run(req).await
}

/// The authenticated caller of a REST request, or a 401 answer.
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let identity = parts
            .extensions
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous);
        Ok(Self(identity.require().cloned().map_err(ApiError)?))
    }
}

/// The request facts noted by [`authenticate`].
pub struct Info(pub RequestInfo);

impl<S: Send + Sync> FromRequestParts<S> for Info {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<RequestInfo>()
                .cloned()
                .ok_or_else(|| ApiError(AppError::internal()))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_guarded_and_machines_are_not() {
        for page in ["/", "/users", "/users/alice.b", "/keys", "/login", "/nope"] {
            assert!(is_page(&Method::GET, page), "{page}");
        }
        for other in [
            "/api/users",
            "/rpc/whoami",
            "/pkg/x.wasm",
            "/favicon.svg",
            "/healthz",
        ] {
            assert!(!is_page(&Method::GET, other), "{other}");
        }
        assert!(!is_page(&Method::POST, "/users"));
    }
}
