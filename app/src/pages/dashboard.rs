use std::time::Duration;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use crate::api::get_user_usage;
use crate::components::{ErrorNotice, UsageCard};
use crate::session::use_session;

/// How often the dashboard reloads the numbers.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// `/users/{id}`: one user's dashboard (an admin's view of anyone; a user's of themselves).
#[component]
pub fn DashboardPage() -> impl IntoView {
    let params = use_params_map();
    let user_id = Signal::derive(move || params.read().get("user_id").unwrap_or_default());
    view! { <UserDashboard user_id /> }
}

/// `/`: the logged-in user's own dashboard.
#[component]
pub fn MyDashboardPage() -> impl IntoView {
    let session = use_session();
    view! {
        <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match session.me.await {
                    Ok(Some(me)) => view! { <UserDashboard user_id=Signal::stored(me.user_id) /> }.into_any(),
                    Ok(None) => view! { <ErrorNotice error=crate::error::AppError::unauthenticated() /> }.into_any(),
                    Err(error) => view! { <ErrorNotice error /> }.into_any(),
                }
            })}
        </Transition>
    }
}

/// One user's live usage, loaded through a server function, rendered on the server and
/// refreshed in the browser every few seconds.
#[component]
fn UserDashboard(#[prop(into)] user_id: Signal<String>) -> impl IntoView {
    let (refreshes, set_refreshes) = signal(0u64);
    let usage = Resource::new(
        move || (user_id.get(), refreshes.get()),
        |(id, _)| get_user_usage(id),
    );

    // Runs in the browser only: effects do not run during server rendering.
    Effect::new(move |_| {
        if let Ok(handle) =
            set_interval_with_handle(move || set_refreshes.update(|n| *n += 1), REFRESH_EVERY)
        {
            on_cleanup(move || handle.clear());
        }
    });

    view! {
        <Title text="Usage" />
        <section class="page">
            <h1>"Usage"</h1>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading usage…"</p> }>
                {move || Suspend::new(async move {
                    match usage.await {
                        Ok(user) => view! { <UsageCard user /> }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
