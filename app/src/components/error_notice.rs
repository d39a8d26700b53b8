use leptos::prelude::*;

use crate::error::{AppError, ErrorKind};

/// An error shown inline, in words: the server's message, never a debug dump.
#[component]
pub fn ErrorNotice(error: AppError) -> impl IntoView {
    let title = match error.kind {
        ErrorKind::NotFound => "Not found",
        ErrorKind::Unavailable => "Temporarily unavailable",
        ErrorKind::Forbidden => "You don't have access to this",
        ErrorKind::Internal => "Something went wrong",
        _ => "That didn't work",
    };
    view! {
        <div class="alert alert-error" role="alert">
            <strong>{title}</strong>
            <p>{error.message}</p>
        </div>
    }
}
