use leptos::prelude::*;
use leptos_router::components::Redirect;
use leptos_router::hooks::use_location;

use crate::error::{AppError, ErrorKind};

/// An error shown inline, in words: the server's message, never a debug dump. A session that
/// ended sends the person to the login page (and back here after it); a refusal says plainly
/// that this is not theirs to see.
#[component]
pub fn ErrorNotice(error: AppError) -> impl IntoView {
    if error.kind == ErrorKind::Unauthenticated {
        let location = use_location();
        let here = format!(
            "{}{}",
            location.pathname.get_untracked(),
            location.search.get_untracked()
        );
        return view! { <Redirect path=domain::access::login_path_for(&here) /> }.into_any();
    }
    if error.kind == ErrorKind::Forbidden {
        return view! {
            <div class="alert alert-error not-allowed" role="alert">
                <strong>"Not allowed"</strong>
                <p>{error.message}</p>
                <p>"If you need this, ask an administrator. " <a href="/">"Go to your dashboard"</a> "."</p>
            </div>
        }
        .into_any();
    }
    let title = match error.kind {
        ErrorKind::NotFound => "Not found",
        ErrorKind::Unavailable => "Temporarily unavailable",
        ErrorKind::Internal => "Something went wrong",
        ErrorKind::LimitReached => "Please wait",
        _ => "That didn't work",
    };
    view! {
        <div class="alert alert-error" role="alert">
            <strong>{title}</strong>
            <p>{error.message}</p>
        </div>
    }
    .into_any()
}
