use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{ChangePassword, CreateApiKey, RevokeApiKey, list_api_keys};
use crate::components::ErrorNotice;
use crate::format::utc as date_time;
use crate::session::use_session;

/// The caller's own account: API keys for programs, and the password.
#[component]
pub fn AccountPage() -> impl IntoView {
    let session = use_session();
    view! {
        <Title text="Account" />
        <section class="page">
            <h1>"Account"</h1>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match session.me.await {
                        Ok(Some(me)) => view! {
                            <p>"Signed in as " <strong>{me.display_name.clone()}</strong> " (" <code>{me.user_id.clone()}</code> ", " {me.role.as_str()} ")."</p>
                            <ApiKeys user_id=me.user_id can_grant_scopes=me.role == domain::Role::Admin />
                            <ChangePasswordForm />
                        }.into_any(),
                        Ok(None) => view! { <p>"You are not logged in. " <a href="/login?next=/account">"Log in"</a></p> }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

/// A user's API keys: list, create (shown once), revoke. Admins also see the recording scope.
#[component]
pub fn ApiKeys(user_id: String, #[prop(optional)] can_grant_scopes: bool) -> impl IntoView {
    let create = ServerAction::<CreateApiKey>::new();
    let revoke = ServerAction::<RevokeApiKey>::new();
    let keys = {
        let user_id = user_id.clone();
        Resource::new(
            move || (create.version().get(), revoke.version().get()),
            move |_| list_api_keys(user_id.clone()),
        )
    };
    let created = move || create.value().get();
    let revoke_error = move || revoke.value().get().and_then(Result::err);
    view! {
        <section class="card" aria-labelledby="keys-heading">
            <h2 id="keys-heading">"API keys"</h2>
            <p class="muted">"Programs use a key as " <code>"Authorization: Bearer <key>"</code> " and act as you. A key is shown once, when it is created; only its first characters are kept to recognise it."</p>
            <ActionForm action=create attr:class="form inline-form">
                <input type="hidden" name="user_id" value=user_id.clone() />
                <label for="key-name">"Key name"</label>
                <input id="key-name" name="name" type="text" placeholder="e.g. laptop script" maxlength="64" required />
                <button type="submit">"Create key"</button>
                {can_grant_scopes.then(|| view! {
                    <label class="checkbox">
                        <input type="checkbox" name="scopes[0]" value="usage:record" />
                        " May report usage for every user (usage:record, for backends)"
                    </label>
                })}
            </ActionForm>
            {move || created().map(|result| match result {
                Ok(new_key) => view! {
                    <div class="alert alert-success" role="status">
                        <strong>"New key “" {new_key.api_key.name.clone()} "”"</strong>
                        <p>"Copy it now: it will not be shown again."</p>
                        <code class="secret" data-testid="new-api-key">{new_key.key.clone()}</code>
                    </div>
                }.into_any(),
                Err(error) => view! { <ErrorNotice error /> }.into_any(),
            })}
            {move || revoke_error().map(|error| view! { <ErrorNotice error /> })}
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading keys…"</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Ok(list) if list.is_empty() => view! { <p class="empty">"No API keys yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="keys">
                                <thead><tr>
                                    <th scope="col">"Name"</th><th scope="col">"Key"</th><th scope="col">"Scopes"</th>
                                    <th scope="col">"Created"</th><th scope="col">"Last used"</th><th scope="col">"Status"</th>
                                </tr></thead>
                                <tbody>
                                    {list.into_iter().map(|k| {
                                        let scopes = if k.scopes.is_empty() { "—".to_owned() } else { domain::Scope::join(&k.scopes) };
                                        let last_used = k.last_used_at.map(date_time).unwrap_or_else(|| "never".to_owned());
                                        let revoke_label = format!("Revoke key {}", k.name);
                                        let status = match k.revoked_at {
                                            Some(at) => view! { <span class="muted">"revoked " {date_time(at)}</span> }.into_any(),
                                            None => view! {
                                                <ActionForm action=revoke>
                                                    <input type="hidden" name="user_id" value=k.user_id.clone() />
                                                    <input type="hidden" name="key_id" value=k.key_id.to_string() />
                                                    <button type="submit" class="danger" aria-label=revoke_label>"Revoke"</button>
                                                </ActionForm>
                                            }.into_any(),
                                        };
                                        view! {
                                            <tr>
                                                <td>{k.name.clone()}</td>
                                                <td><code>{format!("{}…", k.prefix)}</code></td>
                                                <td>{scopes}</td>
                                                <td>{date_time(k.created_at)}</td>
                                                <td>{last_used}</td>
                                                <td>{status}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn ChangePasswordForm() -> impl IntoView {
    let change = ServerAction::<ChangePassword>::new();
    view! {
        <section class="card" aria-labelledby="password-heading">
            <h2 id="password-heading">"Password"</h2>
            <ActionForm action=change attr:class="form">
                <label for="current_password">"Current password"</label>
                <input id="current_password" name="current_password" type="password" autocomplete="current-password" required />
                <label for="new_password">"New password (at least 8 characters)"</label>
                <input id="new_password" name="new_password" type="password" autocomplete="new-password" minlength="8" maxlength="128" required />
                <button type="submit">"Change password"</button>
            </ActionForm>
            {move || change.value().get().map(|result| match result {
                Ok(()) => view! {
                    <p class="alert alert-success" role="status">"Password changed. Every session has ended: " <a href="/login" rel="external">"log in again"</a> " with the new password."</p>
                }.into_any(),
                Err(error) => view! { <ErrorNotice error /> }.into_any(),
            })}
        </section>
    }
}
