use domain::UsageLevel;
use domain::api::UserView;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use crate::api::get_user_usage;
use crate::components::{ErrorNotice, Modal, UsageCard, use_toasts};
use crate::format::thousands;
use crate::retry::{is_transient, with_retry};
use crate::session::use_session;

/// How often the dashboard reloads the numbers, in milliseconds.
const REFRESH_EVERY_MS: u32 = 5_000;

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

/// The local time of day in the browser, e.g. `14:05:09`.
fn browser_time_now() -> Option<String> {
    #[cfg(feature = "hydrate")]
    {
        let date = js_sys::Date::new_0();
        Some(format!(
            "{:02}:{:02}:{:02}",
            date.get_hours(),
            date.get_minutes(),
            date.get_seconds()
        ))
    }
    #[cfg(not(feature = "hydrate"))]
    None
}

/// One user's live usage, loaded through a server function, rendered on the server and
/// refreshed in the browser every few seconds while the tab is visible. A refresh that fails
/// for a moment keeps the last numbers on screen and says so in a toast.
#[component]
fn UserDashboard(#[prop(into)] user_id: Signal<String>) -> impl IntoView {
    let toasts = use_toasts();
    let (refreshes, set_refreshes) = signal(0u64);
    let last_good = RwSignal::new(None::<UserView>);
    let refreshed_at = RwSignal::new(None::<String>);
    let limit_notice_closed = RwSignal::new(false);
    let usage = Resource::new(
        move || (user_id.get(), refreshes.get()),
        |(id, _)| async move { with_retry(|| get_user_usage(id.clone())).await },
    );

    // Browser only (effects do not run on the server): tick every 5 s, skipping ticks while the
    // tab is hidden so a background tab costs nothing.
    Effect::new(move |_| {
        #[cfg(feature = "hydrate")]
        {
            let interval = gloo_timers::callback::Interval::new(REFRESH_EVERY_MS, move || {
                if !document().hidden() {
                    set_refreshes.update(|n| *n += 1);
                }
            });
            let interval = send_wrapper::SendWrapper::new(interval);
            on_cleanup(move || drop(interval));
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (set_refreshes, REFRESH_EVERY_MS);
    });

    let card = move |user: UserView| {
        let exhausted = user.level == UsageLevel::Exhausted;
        let limit = user.token_limit;
        view! {
            <UsageCard user />
            <Show when=move || exhausted && !limit_notice_closed.get()>
                <Modal title="Token limit reached".to_owned() on_close=move |_| limit_notice_closed.set(true)>
                    <p>{format!("All {} tokens of this limit are used. Model calls are blocked until an administrator raises the limit.", thousands(limit))}</p>
                    <div class="modal-actions">
                        <button type="button" on:click=move |_| limit_notice_closed.set(true)>"I understand"</button>
                    </div>
                </Modal>
            </Show>
        }
    };

    view! {
        <Title text="Usage" />
        <section class="page">
            <div class="page-head">
                <h1>"Usage"</h1>
                <p class="muted refreshed" data-testid="refreshed">
                    {move || match refreshed_at.get() {
                        Some(at) => format!("Updated {at} · refreshes every 5 s"),
                        None => "Refreshes every 5 s".to_owned(),
                    }}
                </p>
            </div>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading usage…"</p> }>
                {move || Suspend::new(async move {
                    match usage.await {
                        Ok(user) => {
                            last_good.set(Some(user.clone()));
                            refreshed_at.set(browser_time_now());
                            card(user).into_any()
                        }
                        Err(error) if is_transient(&error) && last_good.get_untracked().is_some() => {
                            toasts.push(format!("Could not refresh the numbers: {} Showing the last ones.", error.message));
                            card(last_good.get_untracked().unwrap_or_else(|| unreachable!())).into_any()
                        }
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
