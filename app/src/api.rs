//! Server functions: the browser's door to the same service layer the REST API uses.
//! Each is thin: get the services, call one operation, set the HTTP status of an error.

use domain::api::{CreateUserBody, UserView};
use domain::{SortDirection, UserSortKey};
use leptos::prelude::*;

use crate::error::AppError;

#[cfg(feature = "ssr")]
mod ssr {
    use leptos::prelude::*;

    use crate::error::AppError;
    use crate::service::Services;

    pub fn services() -> Result<Services, AppError> {
        use_context::<Services>().ok_or_else(|| {
            tracing::error!("Services missing from the request context");
            AppError::internal()
        })
    }

    /// Sets the response status from the error, so server functions answer 404/422/… like the
    /// REST API does, not a blanket 500.
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

#[server(prefix = "/rpc")]
pub async fn get_user_usage(user_id: String) -> Result<UserView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(async { ssr::services()?.get_user(&parse_user_id(&user_id)?).await }.await)
}

#[server(prefix = "/rpc")]
pub async fn list_users(
    sort: UserSortKey,
    direction: SortDirection,
) -> Result<Vec<UserView>, AppError> {
    ssr::fail(async { ssr::services()?.list_users(sort, direction).await }.await)
}

#[server(prefix = "/rpc")]
pub async fn create_user(body: CreateUserBody) -> Result<UserView, AppError> {
    ssr::fail(async { ssr::services()?.create_user(&body).await }.await)
}

#[server(prefix = "/rpc")]
pub async fn set_token_limit(user_id: String, token_limit: i64) -> Result<UserView, AppError> {
    use crate::service::parse_user_id;
    ssr::fail(
        async {
            let user_id = parse_user_id(&user_id)?;
            ssr::services()?
                .set_limit(&user_id, &domain::api::SetLimitBody { token_limit })
                .await
        }
        .await,
    )
}
