//! tokenmeter's Leptos app: the shell, routes, pages, components and server functions.
//!
//! Compiled twice: with `ssr` into the server (pages rendered to HTML, server functions run) and
//! with `hydrate` into the WASM (the same pages made interactive). Server-only code lives behind
//! `#[cfg(feature = "ssr")]`.

#![recursion_limit = "256"]

pub mod api;
pub mod components;
#[cfg(feature = "ssr")]
pub mod credentials;
pub mod error;
pub mod format;
pub mod pages;
#[cfg(feature = "ssr")]
pub mod ports;
pub mod retry;
#[cfg(feature = "ssr")]
pub mod service;
pub mod session;
pub mod stream;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;

use leptos::form::ActionForm;

use crate::components::{ToastRegion, Toasts};
use crate::pages::{
    AccountPage, ChatPage, DashboardPage, LimitManagerPage, LoginPage, MyDashboardPage,
    MyUsagePage, NotFoundPage, UserListPage,
};
use crate::session::{AdminOnly, Session, is_admin};

/// The HTML document around the app, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <meta name="color-scheme" content="light dark" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                // ECharts for the usage charts, from this app's own assets (never a CDN).
                <script src="/echarts.min.js" defer></script>
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let session = Session::provide();
    Toasts::provide();
    // Flips to true once the WASM has taken over the server-rendered page (effects run only in
    // the browser); tests wait on it, and it costs nothing.
    let (hydrated, set_hydrated) = signal(false);
    Effect::new(move |_| set_hydrated.set(true));
    view! {
        <Stylesheet id="leptos" href="/pkg/tokenmeter.css" />
        <Title formatter=|page: String| if page.is_empty() { "tokenmeter".to_owned() } else { format!("{page} · tokenmeter") } />
        <Router>
            <header class="topbar">
                <a class="brand" href="/">"tokenmeter"</a>
                <Transition fallback=|| ()>
                    {move || Suspend::new(async move {
                        let me = session.me.await.ok().flatten();
                        me.clone().map(|me| view! {
                            <nav aria-label="Main">
                                <A href="/" exact=true>"Dashboard"</A>
                                <A href="/chat">"Chat"</A>
                                <A href="/usage">"My usage"</A>
                                {is_admin(&Some(me.clone())).then(|| view! {
                                    <A href="/users">"Users"</A>
                                    <A href="/limits">"Limits"</A>
                                })}
                                <A href="/account">"Account"</A>
                            </nav>
                            <div class="account-menu">
                                <span class="who" data-testid="whoami">
                                    {me.display_name.clone()} " "
                                    <span class="muted">"(" {me.user_id.clone()} ", " {me.role.as_str()} ")"</span>
                                </span>
                                <ActionForm action=session.logout>
                                    <button type="submit" class="link-button">"Log out"</button>
                                </ActionForm>
                            </div>
                        })
                    })}
                </Transition>
            </header>
            <main id="main" data-hydrated=move || hydrated.get().to_string()>
                <Routes fallback=NotFoundPage>
                    <Route path=path!("/") view=MyDashboardPage />
                    <Route path=path!("/login") view=LoginPage />
                    <Route path=path!("/users") view=UserListPage />
                    <Route path=path!("/users/:user_id") view=DashboardPage />
                    <Route path=path!("/limits") view=|| view! { <AdminOnly><LimitManagerPage /></AdminOnly> } />
                    <Route path=path!("/account") view=AccountPage />
                    <Route path=path!("/chat") view=ChatPage />
                    <Route path=path!("/usage") view=MyUsagePage />
                </Routes>
            </main>
            <ToastRegion />
        </Router>
    }
}
