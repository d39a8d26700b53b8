use leptos::html;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

const FOCUSABLE: &str = "button:not([disabled]), [href], input:not([disabled]), select, textarea, [tabindex]:not([tabindex='-1'])";

#[cfg(feature = "hydrate")]
type Opener = send_wrapper::SendWrapper<web_sys::HtmlElement>;
#[cfg(not(feature = "hydrate"))]
type Opener = ();

/// A real dialog for what must not be missed (a limit reached, a confirmation): it takes the
/// focus, keeps Tab inside, closes on Escape, and gives the focus back to where it was.
#[component]
pub fn Modal(
    /// The dialog's heading, also its accessible name.
    title: String,
    #[prop(into)] on_close: Callback<()>,
    children: Children,
) -> impl IntoView {
    let dialog = NodeRef::<html::Div>::new();
    let title_id = format!(
        "dialog-{}",
        title
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );

    // Browser only: remember who had the focus, move it into the dialog, give it back on close.
    // Only the browser holds an element; a page rendered on the server (on any thread) holds
    // nothing tied to a thread, which would panic when dropped elsewhere.
    let opener = StoredValue::new(None::<Opener>);
    #[cfg(not(feature = "hydrate"))]
    let _ = opener;
    Effect::new(move |_| {
        if let Some(el) = dialog.get() {
            #[cfg(feature = "hydrate")]
            opener.set_value(
                document()
                    .active_element()
                    .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
                    .map(send_wrapper::SendWrapper::new),
            );
            if let Ok(Some(first)) = el.query_selector(FOCUSABLE)
                && let Ok(first) = first.dyn_into::<web_sys::HtmlElement>()
            {
                let _ = first.focus();
            }
        }
    });
    on_cleanup(move || {
        #[cfg(feature = "hydrate")]
        if let Some(Some(el)) = opener.try_get_value() {
            let _ = el.focus();
        }
    });

    let on_keydown = move |ev: web_sys::KeyboardEvent| {
        if ev.key() == "Escape" {
            ev.prevent_default();
            on_close.run(());
            return;
        }
        if ev.key() != "Tab" {
            return;
        }
        let Some(el) = dialog.get_untracked() else {
            return;
        };
        let Ok(list) = el.query_selector_all(FOCUSABLE) else {
            return;
        };
        let (Some(first), Some(last)) = (list.item(0), list.item(list.length().saturating_sub(1)))
        else {
            return;
        };
        let active = document().active_element();
        let on = |node: &web_sys::Node| active.as_ref().is_some_and(|a| a.is_same_node(Some(node)));
        let target = if ev.shift_key() && on(&first) {
            Some(last)
        } else if !ev.shift_key() && on(&last) {
            Some(first)
        } else {
            None
        };
        if let Some(target) = target.and_then(|t| t.dyn_into::<web_sys::HtmlElement>().ok()) {
            ev.prevent_default();
            let _ = target.focus();
        }
    };

    view! {
        <div class="modal-backdrop">
            <div
                class="modal"
                role="dialog"
                aria-modal="true"
                aria-labelledby=title_id.clone()
                node_ref=dialog
                on:keydown=on_keydown
            >
                <h2 id=title_id.clone()>{title}</h2>
                {children()}
            </div>
        </div>
    }
}
