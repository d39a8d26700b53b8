//! `/chat`: the ModelInteraction screen. A conversation with a configured model whose reply
//! streams in; each reply shows its tokens, cost and time; the usage card updates right after.
//! Before sending, a live estimate of the prompt's tokens and its maximum cost (TokenPreview).
//! At the limit the input is disabled and a dialog says why and what to do.

use domain::api::{EstimateBody, EstimateView, InvokeView, ModelView, UserView};
use domain::{ChatMessage, ChatRole, FinishReason, InvokeBody, format_usd};
use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{estimate_prompt, get_user_usage, list_models};
use crate::components::{ErrorNotice, Modal, UsageCard};
use crate::error::{AppError, ErrorKind};
use crate::format::thousands;
use crate::retry::with_retry;
use crate::session::use_session;

/// One message of the conversation as shown.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    role: ChatRole,
    text: String,
    /// Still arriving.
    pending: bool,
    /// The settled call (assistant turns).
    result: Option<InvokeView>,
    /// Why the call failed, in words.
    error: Option<String>,
    /// Stopped by the person before the end.
    stopped: bool,
}

impl Turn {
    fn user(text: String) -> Self {
        Self {
            role: ChatRole::User,
            text,
            pending: false,
            result: None,
            error: None,
            stopped: false,
        }
    }

    fn reply() -> Self {
        Self {
            role: ChatRole::Assistant,
            pending: true,
            ..Self::user(String::new())
        }
    }
}

/// The conversation to send: every complete exchange so far (failed replies left out).
fn history(turns: &[Turn]) -> Vec<ChatMessage> {
    turns
        .iter()
        .filter(|t| !t.pending && t.error.is_none() && !t.text.is_empty())
        .map(|t| ChatMessage {
            role: t.role,
            content: t.text.clone(),
        })
        .collect()
}

/// "12 in · 40 out · $0.000636 · 0.4 s"
fn reply_meta(view: &InvokeView) -> String {
    format!(
        "{} in · {} out tokens · {} · {:.1} s",
        thousands(view.usage.input_tokens),
        thousands(view.usage.output_tokens),
        format_usd(view.usage.cost_picos),
        view.latency_ms as f64 / 1000.0
    )
}

fn model_label(m: &ModelView) -> String {
    match (&m.input_usd_per_million, &m.output_usd_per_million) {
        (Some(i), Some(o)) => format!("{} — ${i} in / ${o} out per million tokens", m.label),
        _ => format!("{} — no price configured", m.label),
    }
}

#[component]
pub fn ChatPage() -> impl IntoView {
    let session = use_session();
    view! {
        <Title text="Chat" />
        <Transition fallback=|| view! { <p class="loading" role="status">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match session.me.await {
                    Ok(Some(me)) => view! { <Chat user_id=me.user_id /> }.into_any(),
                    Ok(None) => view! { <ErrorNotice error=AppError::unauthenticated() /> }.into_any(),
                    Err(error) => view! { <ErrorNotice error /> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Chat(user_id: String) -> impl IntoView {
    let turns = RwSignal::new(Vec::<Turn>::new());
    // The conversation the replies' usage is grouped under; a new one with each New chat.
    let conversation_id = RwSignal::new(new_conversation_id());
    let prompt = RwSignal::new(String::new());
    let model = RwSignal::new(String::new());
    let busy = RwSignal::new(false);
    // The dialog at the limit: its message, while open.
    let limit_notice = RwSignal::new(None::<String>);
    let limit_notice_dismissed = RwSignal::new(false);
    let (usage_version, set_usage_version) = signal(0u64);
    let estimate = RwSignal::new(None::<Result<EstimateView, AppError>>);
    let abort = StoredValue::new(None::<AbortHandle>);

    let usage = Resource::new(
        move || usage_version.get(),
        move |_| {
            let id = user_id.clone();
            async move { with_retry(|| get_user_usage(id.clone())).await }
        },
    );
    let models = Resource::new(|| (), |_| async { with_retry(list_models).await });

    // What is left, once the usage has loaded (read, not written, while rendering).
    let remaining =
        Signal::derive(move || usage.get().and_then(|r| r.ok()).map(|u| u.remaining_tokens));
    let at_limit = move || remaining.get() == Some(0);
    // The prompt (with the conversation) does not fit in what is left.
    let too_big = move || match (estimate.get(), remaining.get()) {
        (Some(Ok(e)), Some(left)) => e.input_tokens + 1 > left,
        _ => false,
    };

    // TokenPreview: re-estimate 300 ms after the prompt or model last changed.
    let estimate_seq = StoredValue::new(0u64);
    Effect::new(move |_| {
        let text = prompt.get();
        let chosen = model.get();
        estimate_seq.update_value(|n| *n += 1);
        let seq = estimate_seq.get_value();
        if text.trim().is_empty() {
            estimate.set(None);
            return;
        }
        let mut messages = history(&turns.get_untracked());
        messages.push(ChatMessage {
            role: ChatRole::User,
            content: text,
        });
        leptos::task::spawn_local(async move {
            crate::retry::sleep_ms(300).await;
            if estimate_seq.get_value() != seq {
                return;
            }
            let body = EstimateBody {
                messages: Some(messages),
                model: (!chosen.is_empty()).then_some(chosen),
                ..EstimateBody::default()
            };
            let result = estimate_prompt(body).await;
            if estimate_seq.get_value() == seq {
                estimate.set(Some(result));
            }
        });
    });

    let send = move |text: String| {
        if busy.get_untracked() || text.trim().is_empty() {
            return;
        }
        let mut messages = history(&turns.get_untracked());
        messages.push(ChatMessage {
            role: ChatRole::User,
            content: text.clone(),
        });
        turns.update(|t| {
            t.push(Turn::user(text.clone()));
            t.push(Turn::reply());
        });
        prompt.set(String::new());
        busy.set(true);
        let chosen = model.get_untracked();
        let body = InvokeBody {
            conversation_id: Some(conversation_id.get_untracked()),
            messages: Some(messages),
            model: (!chosen.is_empty()).then_some(chosen),
            ..InvokeBody::default()
        };
        leptos::task::spawn_local(async move {
            let outcome = run_call(body, turns, abort).await;
            match outcome {
                CallOutcome::Finished => {}
                CallOutcome::Stopped => turns.update(|t| {
                    if let Some(last) = t.last_mut() {
                        last.pending = false;
                        last.stopped = true;
                    }
                }),
                CallOutcome::Refused(e) if e.kind == ErrorKind::LimitReached => {
                    // Nothing was sent to the model: take the turn back, keep the text.
                    turns.update(|t| {
                        t.pop();
                        t.pop();
                    });
                    prompt.set(text);
                    limit_notice_dismissed.set(false);
                    limit_notice.set(Some(e.message));
                }
                CallOutcome::Refused(e) => turns.update(|t| {
                    if let Some(last) = t.last_mut() {
                        last.pending = false;
                        last.error = Some(e.message);
                    }
                }),
            }
            busy.set(false);
            // A stopped call is settled by the server just after: give it a moment.
            crate::retry::sleep_ms(300).await;
            set_usage_version.update(|n| *n += 1);
        });
    };

    let stop = move |_| {
        #[cfg(feature = "hydrate")]
        abort.with_value(|c| {
            if let Some(c) = c {
                c.abort();
            }
        });
    };

    let retry = move |index: usize| {
        let question = turns.with_untracked(|t| {
            index
                .checked_sub(1)
                .and_then(|i| t.get(i))
                .filter(|q| q.role == ChatRole::User)
                .map(|q| q.text.clone())
        });
        if let Some(question) = question {
            turns.update(|t| t.truncate(index - 1));
            send(question);
        }
    };

    let usage_panel = move || {
        Suspend::new(async move {
            match usage.await {
                Ok(user) => view! { <UsageCard user /> }.into_any(),
                Err(error) => view! { <ErrorNotice error /> }.into_any(),
            }
        })
    };

    let transcript = view! {
                    <ol class="transcript" aria-live="polite" data-testid="transcript">
                        <Show when={move || turns.with(|t| t.is_empty())}>
                            <li class="muted empty">"No messages yet. Write a prompt below."</li>
                        </Show>
                        <For
                            each={move || turns.get().into_iter().enumerate().collect::<Vec<_>>()}
                            key={|(i, t): &(usize, Turn)| (*i, t.text.len(), t.pending, t.result.is_some(), t.error.is_some(), t.stopped)}
                            let((index, turn))
                        >
                            <TurnView turn index retry />
                        </For>
                    </ol>
    }
    .into_any();
    let composer = view! {
                    <form
                        class="composer"
                        on:submit=move |ev| {
                            ev.prevent_default();
                            if !too_big() {
                                send(prompt.get_untracked());
                            }
                        }
                    >
                        <label for="model">"Model"</label>
                        <Transition fallback=|| view! { <select id="model" disabled=true><option>"Loading models…"</option></select> }>
                            {move || Suspend::new(async move {
                                match models.await {
                                    Ok(list) => view! {
                                        <select id="model" data-testid="model-picker" on:change=move |ev| model.set(event_target_value(&ev))>
                                            {list.into_iter().map(|m| {
                                                let label = model_label(&m);
                                                view! { <option value=m.model.clone() selected=m.default>{label}</option> }
                                            }).collect_view()}
                                        </select>
                                    }.into_any(),
                                    Err(error) => view! { <ErrorNotice error /> }.into_any(),
                                }
                            })}
                        </Transition>
                        <label for="prompt">"Prompt"</label>
                        <textarea
                            id="prompt"
                            data-testid="prompt"
                            rows="4"
                            placeholder=move || if at_limit() { "Your token limit is reached: ask an administrator to raise it." } else { "Ask something… (Ctrl+Enter sends)" }
                            prop:value=move || prompt.get()
                            disabled=at_limit
                            on:input=move |ev| prompt.set(event_target_value(&ev))
                            on:keydown=move |ev| {
                                if ev.key() == "Enter" && (ev.ctrl_key() || ev.meta_key()) {
                                    ev.prevent_default();
                                    if !too_big() {
                                        send(prompt.get_untracked());
                                    }
                                }
                            }
                        ></textarea>
                        <p class="token-preview muted" data-testid="token-preview" aria-live="polite">
                            {move || match estimate.get() {
                                None => "Type a prompt to see its tokens and its maximum cost.".to_owned(),
                                Some(Ok(e)) => format!(
                                    "About {} tokens to send · reply up to {} tokens · at most {}",
                                    thousands(e.input_tokens),
                                    thousands(e.max_output_tokens),
                                    format_usd(e.max_cost_picos)
                                ),
                                Some(Err(e)) => e.message,
                            }}
                        </p>
                        {move || too_big().then(|| view! {
                            <p class="alert alert-warning" role="alert" data-testid="prompt-too-big">
                                {move || format!(
                                    "This conversation needs more tokens than you have left ({}). Start a new chat or shorten the prompt.",
                                    thousands(remaining.get().unwrap_or(0))
                                )}
                            </p>
                        })}
                        <div class="composer-actions">
                            <button
                                type="submit"
                                data-testid="send"
                                disabled={move || busy.get() || at_limit() || too_big() || prompt.with(|p| p.trim().is_empty())}
                            >
                                {move || if busy.get() { "Answering…" } else { "Send" }}
                            </button>
                            <Show when=move || busy.get()>
                                <button type="button" class="secondary" data-testid="stop" on:click=stop>"Stop"</button>
                            </Show>
                            <button
                                type="button"
                                class="link-button"
                                disabled={move || busy.get() || turns.with(|t| t.is_empty())}
                                on:click=move |_| {
                                    turns.set(Vec::new());
                                    conversation_id.set(new_conversation_id());
                                }
                            >
                                "New chat"
                            </button>
                        </div>
                    </form>
    }
    .into_any();
    let dialog_message = move || {
        limit_notice.get().or_else(|| {
            let user = usage.get().and_then(|r| r.ok())?;
            (user.remaining_tokens == 0 && !limit_notice_dismissed.get())
                .then(|| exhausted_message(&user))
        })
    };
    let limit_dialog = view! {
            <Show when=move || dialog_message().is_some()>
                <Modal
                    title="Token limit reached".to_owned()
                    on_close=move |_| {
                        limit_notice.set(None);
                        limit_notice_dismissed.set(true);
                    }
                >
                    <p data-testid="limit-message">{move || dialog_message().unwrap_or_default()}</p>
                    <p>"Model calls are refused before any model is called, so nothing more is charged. An administrator can raise your limit on the Limits page."</p>
                    <div class="modal-actions">
                        <button type="button" on:click=move |_| {
                            limit_notice.set(None);
                            limit_notice_dismissed.set(true);
                        }>"I understand"</button>
                    </div>
                </Modal>
            </Show>
    }
    .into_any();

    view! {
        <section class="page chat-page">
            <div class="page-head">
                <h1>"Chat"</h1>
                <p class="muted">"Every reply is metered: tokens in and out, cost and time."</p>
            </div>
            <div class="chat-layout">
                <div class="chat-main">
                    {transcript}
                    {composer}
                </div>
                <aside class="chat-usage" aria-label="Your usage">
                    <Transition fallback=|| view! { <p class="loading" role="status">"Loading usage…"</p> }>
                        {usage_panel}
                    </Transition>
                </aside>
            </div>
            {limit_dialog}
        </section>
    }
}

fn exhausted_message(user: &UserView) -> String {
    format!(
        "You have used all {} tokens of your limit{}.",
        thousands(user.token_limit),
        if user.tokens_reserved > 0 {
            " (some are held by calls still running)"
        } else {
            ""
        }
    )
}

#[component]
fn TurnView(
    turn: Turn,
    index: usize,
    retry: impl Fn(usize) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let who = match turn.role {
        ChatRole::User => "You",
        ChatRole::Assistant => "Model",
        ChatRole::System => "System",
    };
    let class = format!("turn turn-{}", turn.role.as_str());
    let failed = turn.error.is_some() || turn.stopped;
    let cut = turn
        .result
        .as_ref()
        .is_some_and(|r| r.finish_reason == FinishReason::Length);
    view! {
        <li class=class data-testid="turn" data-role=turn.role.as_str() aria-busy=turn.pending.to_string()>
            <p class="turn-who">{who}</p>
            <div class="turn-text" data-testid="turn-text">{turn.text.clone()}</div>
            {turn.pending.then(|| view! { <p class="muted" role="status">"Writing…"</p> })}
            {turn.result.as_ref().map(|r| view! {
                <p class="turn-meta muted" data-testid="reply-meta">
                    {reply_meta(r)}
                    {cut.then_some(" · stopped at the length limit")}
                </p>
            })}
            {turn.stopped.then(|| view! {
                <p class="turn-meta muted" data-testid="reply-stopped">"Stopped. The part already generated was charged."</p>
            })}
            {turn.error.clone().map(|message| view! { <p class="alert alert-error" role="alert">{message}</p> })}
            {failed.then(|| view! {
                <button type="button" class="link-button" on:click=move |_| retry(index)>"Retry"</button>
            })}
        </li>
    }
}

/// Stops the call in flight. Only the browser ever holds one; the page rendered on the server
/// (on any thread) holds nothing that is tied to a thread.
#[cfg(feature = "hydrate")]
type AbortHandle = send_wrapper::SendWrapper<web_sys::AbortController>;
#[cfg(not(feature = "hydrate"))]
type AbortHandle = ();

/// How a call ended, for the page.
#[cfg_attr(
    not(feature = "hydrate"),
    allow(dead_code, reason = "only the browser runs calls")
)]
enum CallOutcome {
    Finished,
    Stopped,
    /// Refused or failed before or while streaming.
    Refused(AppError),
}

/// Streams the call into the last turn (browser only; a server render never sends).
async fn run_call(
    body: InvokeBody,
    turns: RwSignal<Vec<Turn>>,
    abort: StoredValue<Option<AbortHandle>>,
) -> CallOutcome {
    #[cfg(feature = "hydrate")]
    {
        use crate::stream::{StreamEvent, invoke_streaming};
        let Ok(controller) = web_sys::AbortController::new() else {
            return CallOutcome::Refused(AppError::internal());
        };
        let signal = controller.signal();
        abort.set_value(Some(send_wrapper::SendWrapper::new(controller)));
        let update = move |f: &dyn Fn(&mut Turn)| {
            turns.update(|t| {
                if let Some(last) = t.last_mut() {
                    f(last)
                }
            })
        };
        let mut failed = None;
        let result = invoke_streaming(&body, &signal, |event| match event {
            StreamEvent::Start(_) => {}
            StreamEvent::Delta(text) => update(&|t| t.text.push_str(&text)),
            StreamEvent::Done(view) => update(&|t| {
                t.pending = false;
                t.text = view.reply.clone();
                t.result = Some((*view).clone());
            }),
            StreamEvent::Failed(error, partial) => failed = Some((error, partial)),
        })
        .await;
        abort.set_value(None);
        if signal.aborted() {
            return CallOutcome::Stopped;
        }
        if let Some((error, partial)) = failed {
            update(&|t| t.result = partial.as_deref().cloned());
            return CallOutcome::Refused(error);
        }
        match result {
            Ok(()) => CallOutcome::Finished,
            Err(e) => CallOutcome::Refused(e),
        }
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (body, turns, abort);
        CallOutcome::Refused(AppError::internal())
    }
}

/// A fresh conversation id, e.g. `chat-1a2b3c4d5e6f` (random in the browser; the server never
/// sends a conversation, so its placeholder is never used).
fn new_conversation_id() -> String {
    #[cfg(feature = "hydrate")]
    {
        let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
        let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
        format!("chat-{:016x}", (a << 32) | b)
    }
    #[cfg(not(feature = "hydrate"))]
    "chat-server".to_owned()
}
