use leptos::prelude::*;

/// Short-lived messages for transient trouble (the network, a 5xx): they appear in a corner,
/// are announced to screen readers, and go away by themselves after a few seconds.
#[derive(Clone, Copy)]
pub struct Toasts {
    items: RwSignal<Vec<(u64, String)>>,
    next_id: StoredValue<u64>,
}

/// How long a toast stays.
const TOAST_MS: u32 = 6_000;

impl Toasts {
    pub fn provide() -> Self {
        let toasts = Self {
            items: RwSignal::new(Vec::new()),
            next_id: StoredValue::new(0),
        };
        provide_context(toasts);
        toasts
    }

    /// Shows a message unless the same one is already showing.
    pub fn push(&self, message: impl Into<String>) {
        let message = message.into();
        if self
            .items
            .with_untracked(|v| v.iter().any(|(_, m)| *m == message))
        {
            return;
        }
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        self.items.update(|v| v.push((id, message)));
        #[cfg(feature = "hydrate")]
        {
            let toasts = *self;
            gloo_timers::callback::Timeout::new(TOAST_MS, move || toasts.dismiss(id)).forget();
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = TOAST_MS;
    }

    pub fn dismiss(&self, id: u64) {
        self.items.update(|v| v.retain(|(i, _)| *i != id));
    }
}

pub fn use_toasts() -> Toasts {
    expect_context::<Toasts>()
}

/// Where toasts appear; rendered once, in the shell.
#[component]
pub fn ToastRegion() -> impl IntoView {
    let toasts = use_toasts();
    view! {
        <div class="toasts" aria-live="polite" aria-atomic="false">
            <For each=move || toasts.items.get() key=|(id, _)| *id let:item>
                <div class="toast" data-testid="toast">
                    <span>{item.1.clone()}</span>
                    <button type="button" class="link-button" aria-label="Dismiss message" on:click=move |_| toasts.dismiss(item.0)>
                        "×"
                    </button>
                </div>
            </For>
        </div>
    }
}
