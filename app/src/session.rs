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
