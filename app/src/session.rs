//! Who is logged in, as the pages see it: the login and logout actions and the current user,
//! shared through context. The server decides; this only mirrors its answer for display.

use domain::Role;
use domain::api::MeView;
use leptos::prelude::*;

use crate::api::{Login, Logout, whoami};
use crate::error::AppError;

#[derive(Clone, Copy)]
pub struct Session {
    pub login: ServerAction<Login>,
    pub logout: ServerAction<Logout>,
    /// Reloads after every login and logout.
    pub me: Resource<Result<Option<MeView>, AppError>>,
}

impl Session {
    pub fn provide() -> Self {
        let login = ServerAction::<Login>::new();
        let logout = ServerAction::<Logout>::new();
        let me = Resource::new(
            move || (login.version().get(), logout.version().get()),
            |_| whoami(),
        );
        let session = Self { login, logout, me };
        provide_context(session);
        session
    }
}

pub fn use_session() -> Session {
    expect_context::<Session>()
}

pub fn is_admin(me: &Option<MeView>) -> bool {
    me.as_ref().is_some_and(|m| m.role == Role::Admin)
}

/// Shows `children` to admins only; anyone else sees why not (and, on the server, gets a 403).
/// The server functions behind the page check the role again: this is for people, not a guard.
#[component]
pub fn AdminOnly(children: ChildrenFn) -> impl IntoView {
    let session = use_session();
    let children = StoredValue::new(children);
    view! {
        <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let me = session.me.await;
                match me {
                    Ok(me) if is_admin(&me) => children.read_value()().into_any(),
                    Ok(None) => view! { <crate::components::ErrorNotice error=AppError::unauthenticated() /> }.into_any(),
                    Ok(Some(_)) => {
                        let error = AppError::new(
                            crate::error::ErrorKind::Forbidden,
                            "admin_only",
                            "Only an administrator can do this.",
                        );
                        #[cfg(feature = "ssr")]
                        if let Some(opts) = use_context::<leptos_axum::ResponseOptions>() {
                            opts.set_status(http::StatusCode::FORBIDDEN);
                        }
                        view! { <crate::components::ErrorNotice error /> }.into_any()
                    }
                    Err(error) => view! { <crate::components::ErrorNotice error /> }.into_any(),
                }
            })}
        </Transition>
    }
}
