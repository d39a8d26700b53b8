//! Hydrates the server-rendered page in the browser.

// The usage dialog and the user table nest deep view types; their layouts need more room.
#![recursion_limit = "256"]

#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
