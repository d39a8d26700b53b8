use domain::access::percent_encode;
use domain::api::{UserPageView, UserView};
use domain::{SortDirection, UserQuery, UserSortKey};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::NavigateOptions;
use leptos_router::hooks::{use_navigate, use_query_map};

use crate::api::{CreateUser, list_users_page};
use crate::components::{ErrorNotice, TokenUsageModal, UsageCard};
use crate::format::{percent, thousands, utc};
use crate::pages::ApiKeys;
use crate::retry::with_retry;

/// The columns of the list: label, sort key, and whether the values are numbers.
const COLUMNS: [(&str, UserSortKey, bool); 7] = [
    ("User id", UserSortKey::UserId, false),
    ("Name", UserSortKey::Name, false),
    ("Used", UserSortKey::Usage, true),
    ("Limit", UserSortKey::Limit, true),
    ("Remaining", UserSortKey::Remaining, true),
    ("Used %", UserSortKey::Percentage, true),
    ("Last updated", UserSortKey::LastUpdated, false),
];

fn key_name(key: UserSortKey) -> &'static str {
    match key {
        UserSortKey::UserId => "userId",
        UserSortKey::Name => "name",
        UserSortKey::Usage => "usage",
        UserSortKey::Limit => "limit",
        UserSortKey::Percentage => "percentage",
        UserSortKey::Remaining => "remaining",
        UserSortKey::LastUpdated => "lastUpdated",
    }
}

fn key_from(name: &str) -> Option<UserSortKey> {
    COLUMNS.iter().map(|c| c.1).find(|k| key_name(*k) == name)
}

/// The list's state lives in the address (`?sort=&dir=&q=&page=&user=`), so deep links,
/// reloads and the back button all work.
#[derive(Clone, PartialEq)]
struct ListState {
    query: UserQuery,
    selected: Option<String>,
}

impl ListState {
    fn href(&self) -> String {
        let q = &self.query;
        let mut parts = vec![
            format!("sort={}", key_name(q.sort)),
            format!(
                "dir={}",
                if q.direction == SortDirection::Desc {
                    "desc"
                } else {
                    "asc"
                }
            ),
        ];
        if !q.filter.is_empty() {
            parts.push(format!("q={}", percent_encode(&q.filter, "")));
        }
        if q.page > 1 {
            parts.push(format!("page={}", q.page));
        }
        if let Some(user) = &self.selected {
            parts.push(format!("user={}", percent_encode(user, "")));
        }
        format!("/users?{}", parts.join("&"))
    }
}

/// Admins' list of every user: sortable by each column in both directions, filtered by text,
/// paged, with a details panel for the selected user. Anyone else gets a clear refusal.
#[component]
pub fn UserListPage() -> impl IntoView {
    let params = use_query_map();
    let state = Memo::new(move |_| {
        let p = params.read();
        ListState {
            query: UserQuery {
                sort: p
                    .get("sort")
                    .as_deref()
                    .and_then(key_from)
                    .unwrap_or(UserSortKey::UserId),
                direction: if p.get("dir").as_deref() == Some("desc") {
                    SortDirection::Desc
                } else {
                    SortDirection::Asc
                },
                filter: p.get("q").unwrap_or_default(),
                page: p
                    .get("page")
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= 1)
                    .unwrap_or(1),
                page_size: UserQuery::DEFAULT_PAGE_SIZE,
            },
            selected: p.get("user"),
        }
    });
    let create = ServerAction::<CreateUser>::new();
    // Whose usage dialog is open: (user id, display name).
    let usage_of = RwSignal::new(None::<(String, String)>);
    let users = Resource::new(
        move || (state.get().query, create.version().get()),
        |(query, _)| async move { with_retry(|| list_users_page(query.clone())).await },
    );
    let navigate = use_navigate();
    let go = move |next: ListState| {
        navigate(
            &next.href(),
            NavigateOptions {
                replace: true,
                scroll: false,
                ..Default::default()
            },
        );
    };

    view! {
        <Title text="Users" />
        <section class="page">
            <h1>"Users"</h1>
            <CreateUserForm create />
            <div class="toolbar">
                <label for="user-filter">"Filter"</label>
                <input
                    id="user-filter"
                    type="search"
                    placeholder="id or name"
                    maxlength="100"
                    prop:value=move || state.get().query.filter
                    on:input={
                        let go = go.clone();
                        move |ev| {
                            let mut next = state.get_untracked();
                            next.query.filter = event_target_value(&ev);
                            next.query.page = 1;
                            go(next);
                        }
                    }
                />
            </div>
            <div class="list-layout">
                <div class="list-main">
                <Transition fallback=|| view! { <p class="loading" role="status">"Loading users…"</p> }>
                    {
                        let go = go.clone();
                        move || {
                            let go = go.clone();
                            Suspend::new(async move {
                                match users.await {
                                    Ok(page) => view! { <UserTable page state go usage_of /> }.into_any(),
                                    Err(error) => view! { <ErrorNotice error /> }.into_any(),
                                }
                            })
                        }
                    }
                </Transition>
                </div>
                {move || state.get().selected.map(|id| view! { <UserDetails user_id=id /> })}
            </div>
            {move || usage_of.get().map(|(id, name)| view! {
                <TokenUsageModal user_id=id display_name=name on_close=move |_| usage_of.set(None) />
            })}
        </section>
    }
}

#[component]
fn UserTable(
    page: UserPageView,
    state: Memo<ListState>,
    go: impl Fn(ListState) + Clone + Send + Sync + 'static,
    usage_of: RwSignal<Option<(String, String)>>,
) -> impl IntoView {
    let info = page.page;
    if page.users.is_empty() {
        let filtered = !state.get_untracked().query.filter.is_empty();
        return view! {
            <p class="empty">
                {if filtered { "No user matches this filter." } else { "No users yet. Create one with POST /api/users." }}
            </p>
        }
        .into_any();
    }
    let header = COLUMNS
        .iter()
        .map(|&(label, key, numeric)| {
            let go = go.clone();
            let current = move || state.get().query;
            let aria_sort = move || {
                let q = current();
                if q.sort != key {
                    "none"
                } else if q.direction == SortDirection::Asc {
                    "ascending"
                } else {
                    "descending"
                }
            };
            let arrow = move || match aria_sort() {
                "ascending" => "▲",
                "descending" => "▼",
                _ => "↕",
            };
            view! {
                <th scope="col" aria-sort=aria_sort class:numeric=numeric>
                    <button type="button" class="sort" on:click=move |_| {
                        let mut next = state.get_untracked();
                        next.query.direction = if next.query.sort == key && next.query.direction == SortDirection::Asc {
                            SortDirection::Desc
                        } else {
                            SortDirection::Asc
                        };
                        next.query.sort = key;
                        next.query.page = 1;
                        go(next);
                    }>
                        {label} <span aria-hidden="true" class="arrow">{arrow}</span>
                    </button>
                </th>
            }
        })
        .collect_view();
    let rows = page
        .users
        .into_iter()
        .map(|u| {
            let go = go.clone();
            let id = u.user_id.clone();
            let selected = {
                let id = id.clone();
                move || state.get().selected.as_deref() == Some(id.as_str())
            };
            view! {
                <tr class:selected=selected.clone() aria-selected=move || selected().to_string()>
                    <td>
                        <button type="button" class="link-button row-select" aria-label=format!("Show details of {}", u.user_id) on:click={
                            let id = id.clone();
                            move |_| {
                                let mut next = state.get_untracked();
                                next.selected = Some(id.clone());
                                go(next);
                            }
                        }>{u.user_id.clone()}</button>
                    </td>
                    <td><a href=format!("/users/{}", u.user_id)>{u.display_name.clone()}</a></td>
                    <td class="numeric">{thousands(u.token_usage)}</td>
                    <td class="numeric">{thousands(u.token_limit)}</td>
                    <td class="numeric">{thousands(u.remaining_tokens)}</td>
                    <td class="numeric"><MiniBar user=u.clone() /></td>
                    <td>{utc(u.last_updated)}</td>
                    <td>
                        <button type="button" class="link-button" aria-label=format!("View usage of {}", u.user_id) on:click={
                            let (id, name) = (u.user_id.clone(), u.display_name.clone());
                            move |_| usage_of.set(Some((id.clone(), name.clone())))
                        }>"View usage"</button>
                    </td>
                </tr>
            }
        })
        .collect_view();
    let pager = {
        let link = move |page: u32| {
            let mut next = state.get_untracked();
            next.query.page = page;
            next.href()
        };
        view! {
            <nav class="pager" aria-label="Pages">
                {(info.page > 1).then(|| view! { <a href=link(info.page - 1) rel="prev">"← Previous"</a> })}
                <span data-testid="page-info">{format!("Page {} of {} · {} users", info.page, info.pages, thousands(info.total))}</span>
                {(info.page < info.pages).then(|| view! { <a href=link(info.page + 1) rel="next">"Next →"</a> })}
            </nav>
        }
    };
    view! {
        <div class="table-scroll">
            <table class="users" aria-label="Users and their token usage">
                <thead><tr>{header}<th scope="col">"Usage"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
        {pager}
    }
    .into_any()
}

/// The share used as a small bar with the number beside it.
#[component]
fn MiniBar(user: UserView) -> impl IntoView {
    let width = format!("{}%", user.used_basis_points.min(10_000) as f64 / 100.0);
    view! {
        <span class=format!("minibar meter-{}", user.level.as_str())>
            <span class="minibar-track" aria-hidden="true"><span class="meter-fill" style:width=width></span></span>
            <span>{percent(user.used_basis_points)}</span>
        </span>
    }
}

/// The selected user's details and what an admin can do next.
#[component]
fn UserDetails(user_id: String) -> impl IntoView {
    let id = user_id.clone();
    let user = Resource::new(
        move || id.clone(),
        |id| async move { with_retry(|| crate::api::get_user_usage(id.clone())).await },
    );
    view! {
        <aside class="details" aria-label="Selected user">
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match user.await {
                        Ok(u) => {
                            let id = u.user_id.clone();
                            view! {
                                <UsageCard user=u />
                                <div class="actions">
                                    <a class="button" href=format!("/limits?user={id}")>"Change limit"</a>
                                    <a class="button secondary" href=format!("/users/{id}")>"Open usage"</a>
                                </div>
                                <ApiKeys user_id=id can_grant_scopes=true />
                            }.into_any()
                        }
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </aside>
    }
}

/// Adding a user: id, name, limit, role and, optionally, a first password (otherwise one is made
/// up and shown here once).
#[component]
fn CreateUserForm(create: ServerAction<CreateUser>) -> impl IntoView {
    view! {
        <details class="card create-user">
            <summary>"Add a user"</summary>
            <ActionForm action=create attr:class="form">
                <label for="new-user-id">"User id"</label>
                <input id="new-user-id" name="body[userId]" type="text" required maxlength="64" placeholder="e.g. jo.smith" />
                <label for="new-user-name">"Display name (optional)"</label>
                <input id="new-user-name" name="body[displayName]" type="text" maxlength="100" />
                <label for="new-user-limit">"Token limit"</label>
                <input id="new-user-limit" name="body[tokenLimit]" type="number" min="1" step="1" required placeholder="e.g. 250000" />
                <label for="new-user-role">"Role"</label>
                <select id="new-user-role" name="body[role]">
                    <option value="user" selected>"user: sees only their own usage"</option>
                    <option value="admin">"admin: manages everyone"</option>
                </select>
                <label for="new-user-password">"First password (optional, at least 8 characters)"</label>
                <input id="new-user-password" name="body[password]" type="password" autocomplete="new-password" />
                <button type="submit" disabled=move || create.pending().get()>"Add user"</button>
            </ActionForm>
            {move || create.value().get().map(|result| match result {
                Ok(created) => view! {
                    <div class="alert alert-success" role="status">
                        <strong>{format!("Added {}.", created.user.user_id)}</strong>
                        {created.initial_password.map(|p| view! {
                            <p>"Their first password (shown once; give it to them): " <code class="secret" data-testid="initial-password">{p}</code></p>
                        })}
                    </div>
                }.into_any(),
                Err(error) => view! { <ErrorNotice error /> }.into_any(),
            })}
        </details>
    }
}
