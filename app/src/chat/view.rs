//! The chat panel's components. Each takes the [`Chat`] (and [`Swarm`]) from context.

use leptos::prelude::*;

use super::{Chat, ChatState, Conversation};
use crate::swarm::Swarm;

/// The chat panel: conversations on the side, the talk beside them.
#[component]
pub fn ChatView() -> impl IntoView {
    view! {
        <div class="chat">
            <aside class="convs">
                <NewChatButton/>
                <ConversationList/>
            </aside>
            <div class="talk">
                <ModelPicker/>
                <CoverageLine/>
                <MessageList/>
                <ChatNotice/>
                <Composer/>
                <SpotChecks/>
            </div>
        </div>
    }
}

#[component]
fn NewChatButton() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! { <button id="new-chat" on:click=move |_| chat.new_chat()>"New chat"</button> }
}

#[component]
fn ConversationList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <ul>
            {move || {
                chat.conversations.get().0.into_iter().map(|c| view! { <ConversationItem conv=c/> }).collect_view()
            }}
        </ul>
    }
}

#[component]
fn ConversationItem(conv: Conversation) -> impl IntoView {
    let chat = expect_context::<Chat>();
    let (id, del) = (conv.id.clone(), conv.id.clone());
    let title = conv.display_title();
    view! {
        <li class:active=move || chat.current.with(|x| x.id == id)>
            <a href="#" on:click=move |ev| { ev.prevent_default(); chat.open(conv.clone()); }>{title}</a>
            <button class="del" title="Delete" on:click=move |_| chat.delete(del.clone())>"×"</button>
        </li>
    }
}

#[component]
fn ModelPicker() -> impl IntoView {
    let (chat, swarm) = (expect_context::<Chat>(), expect_context::<Swarm>());
    view! {
        <div class="picker">
            <label>"Model "
                <select id="model" on:change=move |ev| swarm.selected.set(Some(event_target_value(&ev)))>
                    {move || swarm.models.get().into_iter().map(|m| {
                        let sel = swarm.selected.get().as_deref() == Some(m.id.as_str());
                        view! { <option value=m.id.clone() selected=sel>{m.label()}</option> }
                    }).collect_view()}
                </select>
            </label>
            <label>" Temperature "
                <input type="number" min="0" max="2" step="0.1" class="temp"
                    prop:value=move || chat.temperature.get().to_string()
                    on:change=move |ev| if let Ok(t) = event_target_value(&ev).parse() { chat.temperature.set(t) } />
            </label>
        </div>
    }
}

#[component]
fn CoverageLine() -> impl IntoView {
    let swarm = expect_context::<Swarm>();
    let line = move || match swarm.selected_entry() {
        None => "Waiting for the swarm to announce a model…".to_string(),
        Some(m) if m.has_gaps() => format!(
            "No chain of servers covers this model now: {} of {} blocks are served. Answers will fail until \
             someone serves the rest (the Seed tab can).",
            m.covered, m.n_layers
        ),
        Some(m) => format!("Served by {} node(s) covering all {} blocks.", m.servers, m.n_layers),
    };
    view! { <p class="coverage">{line}</p> }
}

#[component]
fn MessageList() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <div id="messages">
            {move || chat.current.get().messages.into_iter().map(|m| {
                let class = m.class();
                view! { <div class=class>{m.content}</div> }
            }).collect_view()}
            <Show when=move || chat.state.get() == ChatState::Generating>
                <div class="msg assistant streaming">{move || chat.streaming.get()}</div>
            </Show>
        </div>
    }
}

#[component]
fn ChatNotice() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <p id="chat-notice" data-state=move || chat.state.get().to_string()
            data-first-token-ms=move || chat.first_token_ms.get().to_string()
            data-cost=move || chat.cost.get().map(|c| c.to_string()).unwrap_or_default()>
            {move || chat.notice.get()}
        </p>
    }
}

/// The spot checks of the page's answers, newest first: each `li` carries the verdict, the
/// checked server, the servers that replayed it and the worst deviation as data attributes.
#[component]
fn SpotChecks() -> impl IntoView {
    let chat = expect_context::<Chat>();
    view! {
        <ul id="spot-checks">
            {move || {
                chat.checks
                    .get()
                    .into_iter()
                    .map(|c| {
                        view! {
                            <li data-verdict=c.verdict data-audited=c.audited.clone()
                                data-auditors=c.auditors.join(",")
                                data-worst=c.worst.map(|w| w.to_string()).unwrap_or_default()
                                data-tokens=c.tokens.to_string()>
                                "Spot check: " {c.line.clone()}
                            </li>
                        }
                    })
                    .collect_view()
            }}
        </ul>
    }
}

#[component]
fn Composer() -> impl IntoView {
    let chat = expect_context::<Chat>();
    let on_key = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" && !ev.shift_key() {
            ev.prevent_default();
            chat.send();
        }
    };
    view! {
        <form class="ask" on:submit=move |ev| { ev.prevent_default(); chat.send(); }>
            <textarea id="prompt" rows="2" placeholder="Ask something…"
                prop:value=move || chat.input.get()
                on:input=move |ev| chat.input.set(event_target_value(&ev))
                on:keydown=on_key
            ></textarea>
            <Show when=move || chat.state.get() == ChatState::Generating
                fallback=|| view! { <button id="send" type="submit">"Send"</button> }>
                <button id="stop" type="button" on:click=move |_| chat.stop()>"Stop"</button>
            </Show>
        </form>
    }
}
