//! Server functions: the browser's door to the same service layer the REST API uses.
//! Each is thin: who is calling, one service call (which authorizes), the HTTP status of an error.
//! Endpoints are named explicitly so their URLs are stable (`/rpc/<name>`).

use domain::api::{
    ApiKeyView, CreateUserBody, CreatedApiKeyView, CreatedUserView, DemoLoginView, MeView,
    UserPageView, UserView,
};
use domain::stats::{StatsParams, StatsView};
use domain::{SortDirection, UserQuery, UserSortKey};
use leptos::prelude::*;

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod ssr {
    use domain::Caller;
    use leptos::prelude::*;

    use crate::error::AppError;
    use crate::service::auth::RequestInfo;
    use crate::service::{Identity, Services};

    pub fn services() -> Result<Services, AppError> {
        use_context::<Services>().ok_or_else(|| {
            tracing::error!("Services missing from the request context");
            AppError::internal()
        })
    }

    fn extension<T: Clone + Send + Sync + 'static>() -> Option<T> {
        use_context::<http::request::Parts>().and_then(|p| p.extensions.get::<T>().cloned())
    }

    /// Who is calling, as the authentication layer found out before this request was handled.
    pub fn identity() -> Identity {
        extension::<Identity>().unwrap_or(Identity::Anonymous)
    }

    /// The caller, or 401.
    pub fn caller() -> Result<Caller, AppError> {
        identity().require().cloned()
    }

    pub fn request_info() -> RequestInfo {
        extension::<RequestInfo>().unwrap_or_default()
    }

    pub fn set_cookie(cookie: String) {
        if let Some(opts) = use_context::<leptos_axum::ResponseOptions>()
            && let Ok(value) = http::HeaderValue::from_str(&cookie)
        {
            opts.append_header(http::header::SET_COOKIE, value);
        }
    }

    /// Sets the response status from the error, so server functions answer 401/403/404/422/…
    /// like the REST API does, not a blanket 500.
    pub fn fail<T>(result: Result<T, AppError>) -> Result<T, AppError> {
        if let Err(e) = &result
            && let Some(opts) = use_context::<leptos_axum::ResponseOptions>()
            && let Ok(status) = http::StatusCode::from_u16(e.status())
        {
            opts.set_status(status);
        }
        result
    }
}

/// Who is logged in, or nothing.
#[server(prefix = "/rpc", endpoint = "whoami")]
pub async fn whoami() -> Result<Option<MeView>, AppError> {
    Ok(ssr::identity().me())
}

/// The demo accounts and passwords, in demo mode only.
#[server(prefix = "/rpc", endpoint = "demo_logins")]
pub async fn demo_logins() -> Result<Vec<DemoLoginView>, AppError> {
    Ok(ssr::services()?.demo_logins())
}

/// Logs in: sets the session cookie and sends the browser on to `next` (a path on this site)
/// or to the caller's start page.
#[server(prefix = "/rpc", endpoint = "login")]
pub async fn login(
    user_id: String,
    password: String,
    next: Option<String>,
) -> Result<(), AppError> {
    use crate::service::auth::{session_cookie, start_page};
    ssr::fail(
        async {
            let info = ssr::request_info();
            let body = domain::api::LoginBody { user_id, password };
            let services = ssr::services()?;
            let logged_in = services
                .login(&body, &info.client_addr, info.session_token.as_deref())
                .await?;
            ssr::set_cookie(session_cookie(
                &logged_in.token,
                services.settings.session_ttl,
                info.secure,
            ));
            let to = next
                .as_deref()
                .and_then(domain::access::safe_next_path)
                .filter(|p| !p.starts_with("/login"))
                .map(str::to_owned)
                .unwrap_or_else(|| start_page(logged_in.me.role).to_owned());
            leptos_axum::redirect(&to);
            Ok(())
        }
        .await,
    )
}

/// Ends this browser's session and goes back to the login page.
#[server(prefix = "/rpc", endpoint = "logout")]
pub async fn logout() -> Result<(), AppError> {
    use crate::service::auth::cleared_session_cookie;
    ssr::fail(
        async {
            let info = ssr::request_info();
            if let Some(token) = &info.session_token {
                ssr::services()?.logout(token).await?;
            }
            ssr::set_cookie(cleared_session_cookie(info.secure));
            leptos_axum::redirect("/login");
            Ok(())
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "get_user_usage")]
pub async fn get_user_usage(user_id: String) -> Result<UserView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let user_id = parse_user_id(&user_id)?;
            ssr::services()?.get_user(&caller, &user_id).await
        }
        .await,
    )
}

/// Usage statistics for the usage dialog: the same query and answer as `GET /api/usage/stats`.
#[server(prefix = "/rpc", endpoint = "usage_stats")]
pub async fn usage_stats(params: StatsParams) -> Result<StatsView, AppError> {
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            ssr::services()?.usage_stats(&caller, &params).await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "list_users")]
pub async fn list_users(
    sort: UserSortKey,
    direction: SortDirection,
    #[server(default)] filter: String,
) -> Result<Vec<UserView>, AppError> {
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            ssr::services()?
                .list_users(&caller, sort, direction, &filter)
                .await
        }
        .await,
    )
}

/// One page of the user list (admins), filtered and sorted.
#[server(prefix = "/rpc", endpoint = "list_users_page")]
pub async fn list_users_page(query: UserQuery) -> Result<UserPageView, AppError> {
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            ssr::services()?.list_users_page(&caller, &query).await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "create_user")]
pub async fn create_user(body: CreateUserBody) -> Result<CreatedUserView, AppError> {
    // A form leaves optional fields empty: empty means "not given".
    let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let body = CreateUserBody {
        display_name: given(body.display_name),
        role: given(body.role),
        password: given(body.password),
        ..body
    };
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            ssr::services()?.create_user(&caller, &body).await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "set_token_limit")]
pub async fn set_token_limit(user_id: String, token_limit: i64) -> Result<UserView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let user_id = parse_user_id(&user_id)?;
            let body = domain::api::SetLimitBody { token_limit };
            ssr::services()?.set_limit(&caller, &user_id, &body).await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "list_api_keys")]
pub async fn list_api_keys(user_id: String) -> Result<Vec<ApiKeyView>, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let user_id = parse_user_id(&user_id)?;
            ssr::services()?.list_api_keys(&caller, &user_id).await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "create_api_key")]
pub async fn create_api_key(
    user_id: String,
    name: String,
    #[server(default)] scopes: Vec<String>,
) -> Result<CreatedApiKeyView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let user_id = parse_user_id(&user_id)?;
            let body = domain::api::CreateApiKeyBody { name, scopes };
            ssr::services()?
                .create_api_key(&caller, &user_id, &body)
                .await
        }
        .await,
    )
}

#[server(prefix = "/rpc", endpoint = "revoke_api_key")]
pub async fn revoke_api_key(user_id: String, key_id: i64) -> Result<ApiKeyView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let user_id = parse_user_id(&user_id)?;
            ssr::services()?
                .revoke_api_key(&caller, &user_id, key_id)
                .await
        }
        .await,
    )
}

/// Changes the caller's own password (the current one is required). Every session of the
/// account ends, this one included, so the browser logs in again.
#[server(prefix = "/rpc", endpoint = "change_password")]
pub async fn change_password(
    current_password: String,
    new_password: String,
) -> Result<(), AppError> {
    use crate::service::auth::cleared_session_cookie;
    ssr::fail(
        async {
            let caller = ssr::caller()?;
            let body = domain::api::SetPasswordBody {
                current_password: Some(current_password),
                new_password,
            };
            ssr::services()?
                .set_password(&caller, &caller.user_id, &body)
                .await?;
            ssr::set_cookie(cleared_session_cookie(ssr::request_info().secure));
            Ok(())
        }
        .await,
    )
}

/// The models this server offers, the default first, with their prices.
#[server(prefix = "/rpc", endpoint = "list_models")]
pub async fn list_models() -> Result<Vec<domain::api::ModelView>, AppError> {
    ssr::fail(
        async {
            ssr::caller()?;
            Ok(ssr::services()?.list_models())
        }
        .await,
    )
}

/// A prompt's tokens and the most its call could cost, before it is sent (TokenPreview).
#[server(prefix = "/rpc", endpoint = "estimate_prompt")]
pub async fn estimate_prompt(
    body: domain::api::EstimateBody,
) -> Result<domain::api::EstimateView, AppError> {
    ssr::fail(
        async {
            ssr::caller()?;
            ssr::services()?.estimate(&body)
        }
        .await,
    )
}
