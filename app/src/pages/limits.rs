use domain::api::UserView;
use domain::{TokenLimit, UserQuery, UserSortKey};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::{SetTokenLimit, get_user_usage, list_users_page};
use crate::components::{ErrorNotice, Modal};
use crate::format::{percent, thousands};
use crate::retry::with_retry;

/// What the limit field holds, checked before anything is sent (the server checks again).
fn parse_limit(raw: &str) -> Result<i64, String> {
    let cleaned: String = raw
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' '))
        .collect();
    match cleaned.parse::<i64>() {
        Ok(n) => TokenLimit::new(n)
            .map(|l| l.get() as i64)
            .map_err(|e| e.message),
        Err(_) if cleaned.is_empty() => {
            Err("Enter the new limit, a whole number of tokens.".to_owned())
        }
        Err(_) => Err("The limit must be a whole number of tokens, like 250000.".to_owned()),
    }
}

/// Admins set a user's token limit: pick the user (searchable), see their usage beside the form,
/// enter the new limit. Lowering it below what is already used asks first.
#[component]
pub fn LimitManagerPage() -> impl IntoView {
    let query = use_query_map();
    let user_text = RwSignal::new(query.get_untracked().get("user").unwrap_or_default());
    let limit_text = RwSignal::new(String::new());
    let field_error = RwSignal::new(None::<String>);
    let confirming = RwSignal::new(None::<(String, i64, UserView)>);
    let set_limit = ServerAction::<SetTokenLimit>::new();

    let suggestions = Resource::new(
        move || user_text.get(),
        |text| async move {
            let query = UserQuery {
                sort: UserSortKey::UserId,
                filter: text,
                page_size: 8,
                ..UserQuery::default()
            };
            list_users_page(query).await
        },
    );
    // The chosen user's current numbers; reloaded after each change.
    let current = Resource::new(
        move || (user_text.get(), set_limit.version().get()),
        |(id, _)| async move {
            if domain::UserId::parse(id.trim()).is_err() {
                return None;
            }
            Some(with_retry(|| get_user_usage(id.trim().to_owned())).await)
        },
    );

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        field_error.set(None);
        let id = user_text.get_untracked().trim().to_owned();
        if domain::UserId::parse(&id).is_err() {
            field_error.set(Some("Choose a user from the list.".to_owned()));
            return;
        }
        let limit = match parse_limit(&limit_text.get_untracked()) {
            Ok(n) => n,
            Err(message) => {
                field_error.set(Some(message));
                return;
            }
        };
        let known = current.get_untracked().flatten().and_then(Result::ok);
        match known {
            Some(user) if (limit as u64) < user.token_usage => {
                confirming.set(Some((id, limit, user)))
            }
            _ => {
                set_limit.dispatch(SetTokenLimit {
                    user_id: id,
                    token_limit: limit,
                });
            }
        }
    };

    view! {
        <Title text="Limits" />
        <section class="page">
            <h1>"Token limits"</h1>
            <div class="limit-layout">
                <form class="form card" on:submit=submit novalidate aria-describedby="limit-feedback">
                    <label for="limit-user">"User"</label>
                    <input
                        id="limit-user"
                        type="text"
                        list="limit-user-options"
                        autocomplete="off"
                        placeholder="Search by id or name"
                        prop:value=move || user_text.get()
                        on:input=move |ev| user_text.set(event_target_value(&ev))
                    />
                    <datalist id="limit-user-options">
                        <Transition fallback=|| ()>
                            {move || Suspend::new(async move {
                                suggestions.await.map(|page| page.users.into_iter().map(|u| view! {
                                    <option value=u.user_id.clone()>{u.display_name.clone()}</option>
                                }).collect_view()).ok()
                            })}
                        </Transition>
                    </datalist>
                    <label for="limit-value">"New limit (tokens)"</label>
                    <input
                        id="limit-value"
                        type="text"
                        inputmode="numeric"
                        placeholder="e.g. 250000"
                        aria-invalid=move || field_error.get().is_some().to_string()
                        prop:value=move || limit_text.get()
                        on:input=move |ev| limit_text.set(event_target_value(&ev))
                    />
                    <button type="submit" disabled=move || set_limit.pending().get()>
                        {move || if set_limit.pending().get() { "Saving…" } else { "Set limit" }}
                    </button>
                    <div id="limit-feedback" aria-live="polite">
                        {move || field_error.get().map(|message| view! { <p class="alert alert-error" role="alert">{message}</p> })}
                        {move || set_limit.value().get().map(|result| match result {
                            Ok(user) => view! {
                                <p class="alert alert-success" role="status">
                                    {format!("The limit of {} is now {} tokens.", user.user_id, thousands(user.token_limit))}
                                </p>
                            }.into_any(),
                            Err(error) => view! { <ErrorNotice error /> }.into_any(),
                        })}
                    </div>
                </form>
                <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
                    {move || Suspend::new(async move {
                        match current.await {
                            None => view! { <p class="muted">"Choose a user to see their usage."</p> }.into_any(),
                            Some(Ok(u)) => view! {
                                <aside class="card current-usage" aria-label="Current usage" data-testid="current-usage">
                                    <h2>{u.display_name.clone()}</h2>
                                    <p>{format!("Uses {} of {} tokens ({}).", thousands(u.token_usage), thousands(u.token_limit), percent(u.used_basis_points))}</p>
                                </aside>
                            }.into_any(),
                            Some(Err(error)) => view! { <ErrorNotice error /> }.into_any(),
                        }
                    })}
                </Transition>
            </div>
            {move || confirming.get().map(|(id, limit, user)| {
                let (id_ok, id_text) = (id.clone(), id.clone());
                view! {
                    <Modal title="Lower the limit below current usage?".to_owned() on_close=move |_| confirming.set(None)>
                        <p>{format!(
                            "{} has already used {} tokens. With a limit of {} they are over it at once: their model calls are blocked until the limit is raised again.",
                            id_text, thousands(user.token_usage), thousands(limit as u64)
                        )}</p>
                        <div class="modal-actions">
                            <button type="button" class="danger" on:click=move |_| {
                                set_limit.dispatch(SetTokenLimit { user_id: id_ok.clone(), token_limit: limit });
                                confirming.set(None);
                            }>"Lower the limit"</button>
                            <button type="button" class="secondary" on:click=move |_| confirming.set(None)>"Cancel"</button>
                        </div>
                    </Modal>
                }
            })}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::parse_limit;

    #[test]
    fn limits_are_checked_before_sending() {
        assert_eq!(parse_limit("250,000"), Ok(250_000));
        assert_eq!(parse_limit(" 1 000 "), Ok(1_000));
        for bad in ["", "0", "-5", "1.5", "ten", "99999999999999999999"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }
}
