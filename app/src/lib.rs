//! tokenmeter's Leptos app: the shell, routes, pages, components and server functions.
//!
//! Compiled twice: with `ssr` into the server (pages rendered to HTML, server functions run) and
//! with `hydrate` into the WASM (the same pages made interactive). Server-only code lives behind
//! `#[cfg(feature = "ssr")]`.

pub mod api;
pub mod components;
pub mod error;
pub mod format;
pub mod pages;
#[cfg(feature = "ssr")]
pub mod ports;
#[cfg(feature = "ssr")]
pub mod service;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;

use crate::pages::{DashboardPage, HomePage, NotFoundPage};

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
                <nav aria-label="Main">
                    <A href="/" exact=true>"Dashboard"</A>
                </nav>
            </header>
            <main id="main" data-hydrated=move || hydrated.get().to_string()>
                <Routes fallback=NotFoundPage>
                    <Route path=path!("/") view=HomePage />
                    <Route path=path!("/users/:user_id") view=DashboardPage />
                </Routes>
            </main>
        </Router>
    }
}
