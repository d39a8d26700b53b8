use std::time::Duration;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use crate::api::get_user_usage;
use crate::components::{ErrorNotice, UsageCard};

/// How often the dashboard reloads the numbers.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// One user's live usage, loaded through a server function, rendered on the server and
/// refreshed in the browser every few seconds.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let params = use_params_map();
    let user_id = move || params.read().get("user_id").unwrap_or_default();
    let (refreshes, set_refreshes) = signal(0u64);
    let usage = Resource::new(
        move || (user_id(), refreshes.get()),
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
