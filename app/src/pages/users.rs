use domain::{SortDirection, UserSortKey};
use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::list_users;
use crate::components::ErrorNotice;
use crate::format::{percent, thousands};

/// Admins' list of every user with their usage, each linking to their dashboard. The server
/// refuses the list to anyone else; the page then says they are not allowed.
#[component]
pub fn UserListPage() -> impl IntoView {
    let users = Resource::new(
        || (),
        |_| list_users(UserSortKey::UserId, SortDirection::Asc),
    );
    view! {
        <Title text="Users" />
        <section class="page">
            <h1>"Users"</h1>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading users…"</p> }>
                {move || Suspend::new(async move {
                    match users.await {
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty">"No users yet. Create one with " <code>"POST /api/users"</code> "."</p>
                        }.into_any(),
                        Ok(list) => view! {
                            <ul class="user-links">
                                {list.into_iter().map(|u| {
                                    let href = format!("/users/{}", u.user_id);
                                    view! {
                                        <li>
                                            <a href=href>{u.display_name.clone()}</a>
                                            <span class="muted">
                                                {format!(" {} of {} tokens ({})", thousands(u.token_usage), thousands(u.token_limit), percent(u.used_basis_points))}
                                            </span>
                                        </li>
                                    }
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
