//! `/usage`: the logged-in user's own usage, in the same dialog admins open from the user list.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::components::{ErrorNotice, TokenUsageModal};
use crate::session::use_session;

#[component]
pub fn MyUsagePage() -> impl IntoView {
    let session = use_session();
    let open = RwSignal::new(false);
    view! {
        <Title text="My usage" />
        <section class="page">
            <h1>"My usage"</h1>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match session.me.await {
                        Ok(Some(me)) => view! {
                            <p>"Your tokens and spending by day, week or month, as a chart and a table you can export."</p>
                            <button type="button" on:click=move |_| open.set(true)>"View usage"</button>
                            {move || open.get().then(|| view! {
                                <TokenUsageModal
                                    user_id=me.user_id.clone()
                                    display_name=me.display_name.clone()
                                    on_close=move |_| open.set(false)
                                />
                            })}
                        }.into_any(),
                        Ok(None) => view! { <ErrorNotice error=crate::error::AppError::unauthenticated() /> }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
