use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

use crate::api::demo_logins;
use crate::session::use_session;

/// The login form. Works before the WASM arrives (a plain form post); after login the server
/// sends the browser on to the page it asked for, or to the caller's start page.
#[component]
pub fn LoginPage() -> impl IntoView {
    let session = use_session();
    let login = session.login;
    let query = use_query_map();
    let next = move || query.read().get("next").unwrap_or_default();
    let demo = Resource::new(|| (), |_| demo_logins());
    let error = move || login.value().get().and_then(Result::err);

    view! {
        <Title text="Log in" />
        <section class="page login-page">
            <h1>"Log in"</h1>
            <ActionForm action=login attr:class="form card" attr:aria-describedby="login-error">
                <input type="hidden" name="next" prop:value=next />
                <label for="user_id">"User id"</label>
                <input id="user_id" name="user_id" type="text" autocomplete="username" required autofocus />
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" autocomplete="current-password" required />
                <button type="submit" disabled=move || login.pending().get()>
                    {move || if login.pending().get() { "Logging in…" } else { "Log in" }}
                </button>
                <div id="login-error" aria-live="polite">
                    {move || error().map(|e| view! {
                        <p class="alert alert-error" role="alert">{e.message}</p>
                    })}
                </div>
            </ActionForm>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    let logins = demo.await.unwrap_or_default();
                    (!logins.is_empty()).then(|| view! {
                        <aside class="card demo-logins" aria-label="Demo accounts">
                            <h2>"Demo accounts"</h2>
                            <p class="muted">"This server runs with demo data. Log in as one of these:"</p>
                            <table>
                                <thead><tr><th scope="col">"User id"</th><th scope="col">"Password"</th><th scope="col">"Role"</th></tr></thead>
                                <tbody>
                                    {logins.into_iter().map(|l| view! {
                                        <tr><td><code>{l.user_id}</code></td><td><code>{l.password}</code></td><td>{l.role.as_str()}</td></tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </aside>
                    })
                })}
            </Transition>
        </section>
    }
}
