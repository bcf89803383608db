//! Chat: pick a model the swarm serves, talk to it, keep conversations in IndexedDB.
//!
//! The tokenizer, embeddings and LM head run in wasm on the CPU (no WebGPU needed); the
//! decoder layers run on the chain of servers that [`SwarmChain`] routes through.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::future::{select, Either};
use leptos::prelude::*;
use leptos::task::spawn_local;
use web_node::client::{generate, FinishReason, GenerateOptions, SamplingParams};
use web_node::model::{ChatMessage, ModelId};
use web_node::net::chain::{ChainOptions, SwarmChain};

use crate::net::{load_client_model, ClientModel};
use crate::store::{self, Conversation, Message};
use crate::{http, Ui};

thread_local! {
    static MODEL: RefCell<Option<Rc<ClientModel>>> = const { RefCell::new(None) };
    static STOP: RefCell<Option<oneshot::Sender<()>>> = const { RefCell::new(None) };
}

/// The client part of model `id`, loaded once per page.
async fn client_model(
    id: ModelId,
    progress: impl FnMut(u64, u64),
) -> Result<(Rc<ClientModel>, Option<String>), String> {
    if let Some(m) = MODEL.with_borrow(|m| m.clone()).filter(|m| m.id == id) {
        return Ok((m, None));
    }
    let (m, warning) = load_client_model(id, progress).await?;
    let m = Rc::new(m);
    MODEL.with_borrow_mut(|slot| *slot = Some(m.clone()));
    Ok((m, warning))
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

fn new_conversation(model: &str) -> Conversation {
    Conversation {
        id: format!("{:015}", js_sys::Date::now() as u64),
        title: String::new(),
        model: model.into(),
        messages: vec![],
    }
}

/// Runs one answer to `messages` through the swarm, streaming text to `on_text`.
async fn answer(
    model_hex: String,
    messages: Vec<Message>,
    temperature: f32,
    progress: impl Fn(String),
    on_text: impl FnMut(&str),
) -> Result<FinishReason, String> {
    let net = crate::net().ok_or("not connected to the swarm yet")?;
    let id = ModelId::from_hex(&model_hex).ok_or("bad model id")?;
    let (model, warning) = client_model(id, |done, total| {
        progress(format!(
            "Loading the model's tokenizer and head: {:.1} / {:.1} MB",
            done as f64 / 1e6,
            total as f64 / 1e6
        ))
    })
    .await?;
    if let Some(w) = warning {
        progress(w);
    } else {
        progress(String::new());
    }
    let msgs: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role.clone(), m.content.clone())).collect();
    let text = model.template.render(&msgs, true).map_err(|e| e.to_string())?;
    let tokens = model.tokenizer.encode(&text).map_err(|e| e.to_string())?;
    let mut chain =
        SwarmChain::new(net.handle.clone(), id, model.config.n_layers, model.config.hidden, ChainOptions::default());
    let opts = GenerateOptions {
        max_tokens: 512,
        sampling: SamplingParams { temperature, ..SamplingParams::default() },
        ..GenerateOptions::default()
    };
    let g = generate(&model.head, &model.tokenizer, &mut chain, &tokens, &opts, on_text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(g.finish)
}

/// The chat panel.
#[component]
pub fn ChatView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let convs = RwSignal::new(Vec::<Conversation>::new());
    let current = RwSignal::new(new_conversation(""));
    let input = RwSignal::new(String::new());
    let streaming = RwSignal::new(String::new());
    let state = RwSignal::new("idle".to_string());
    let notice = RwSignal::new(String::new());
    let first_token_ms = RwSignal::new(0.0f64);
    let temperature =
        RwSignal::new(http::query_param("temperature").and_then(|t| t.parse::<f32>().ok()).unwrap_or(0.7));

    spawn_local(async move {
        match store::load_all().await {
            Ok(v) => convs.set(v),
            Err(e) => notice.set(e),
        }
    });

    let send = move || {
        let text = input.get_untracked().trim().to_string();
        if text.is_empty() || state.get_untracked() == "generating" {
            return;
        }
        let Some(model) = ui.selected.get_untracked() else {
            notice.set("No model yet: wait for the swarm to announce one.".into());
            return;
        };
        input.set(String::new());
        current.update(|c| {
            if c.title.is_empty() {
                c.title = text.chars().take(40).collect();
            }
            c.model = model.clone();
            c.messages.push(Message { role: "user".into(), content: text });
        });
        let messages = current.get_untracked().messages;
        let (tx, rx) = oneshot::channel();
        STOP.with_borrow_mut(|s| *s = Some(tx));
        streaming.set(String::new());
        state.set("generating".into());
        notice.set(String::new());
        let temp = temperature.get_untracked();
        spawn_local(async move {
            let started = now_ms();
            let progress = move |p: String| notice.set(p);
            let on_text = move |t: &str| {
                if first_token_ms.get_untracked() == 0.0 {
                    first_token_ms.set(now_ms());
                    tracing::info!("first token {:.0} ms after sending", now_ms() - started);
                }
                streaming.update(|s| s.push_str(t));
            };
            let gen = std::pin::pin!(answer(model, messages, temp, progress, on_text));
            let outcome = match select(gen, rx).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => Ok(FinishReason::Stop),
            };
            let text = streaming.get_untracked();
            match outcome {
                Ok(_) => {
                    state.set("idle".into());
                }
                Err(e) => {
                    state.set("error".into());
                    notice.set(e);
                }
            }
            if !text.is_empty() {
                current.update(|c| c.messages.push(Message { role: "assistant".into(), content: text }));
            }
            streaming.set(String::new());
            let c = current.get_untracked();
            if let Err(e) = store::save(&c).await {
                notice.set(e);
            }
            convs.update(|v| {
                v.retain(|x| x.id != c.id);
                v.insert(0, c);
            });
        });
    };
    let stop = move |_| {
        STOP.with_borrow_mut(|s| s.take());
    };
    let new_chat = move |_| {
        if state.get_untracked() != "generating" {
            current.set(new_conversation(&ui.selected.get_untracked().unwrap_or_default()));
        }
    };
    let models = move || ui.models.get();

    view! {
        <div class="chat">
            <aside class="convs">
                <button id="new-chat" on:click=new_chat>"New chat"</button>
                <ul>
                    {move || convs.get().into_iter().map(|c| {
                        let id = c.id.clone();
                        let open = c.clone();
                        let title = if c.title.is_empty() { "(empty)".to_string() } else { c.title.clone() };
                        view! {
                            <li class:active=move || current.with(|x| x.id == id)>
                                <a href="#" on:click=move |ev| { ev.prevent_default(); if state.get_untracked() != "generating" { current.set(open.clone()); } }>{title}</a>
                                <button class="del" title="Delete" on:click={
                                    let id = c.id.clone();
                                    move |_| {
                                        let id = id.clone();
                                        convs.update(|v| v.retain(|x| x.id != id));
                                        spawn_local(async move { let _ = store::delete(&id).await; });
                                    }
                                }>"×"</button>
                            </li>
                        }
                    }).collect_view()}
                </ul>
            </aside>
            <div class="talk">
                <div class="picker">
                    <label>"Model "
                        <select id="model" on:change=move |ev| ui.selected.set(Some(event_target_value(&ev)))>
                            {move || models().into_iter().map(|m| {
                                let id = m.id.clone();
                                let sel = ui.selected.get().as_deref() == Some(id.as_str());
                                view! { <option value=id selected=sel>{m.label()}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                    <label>" Temperature "
                        <input type="number" min="0" max="2" step="0.1" class="temp"
                            prop:value=move || temperature.get().to_string()
                            on:change=move |ev| if let Ok(t) = event_target_value(&ev).parse() { temperature.set(t) } />
                    </label>
                </div>
                <p class="coverage">{move || {
                    let sel = ui.selected.get();
                    match models().into_iter().find(|m| Some(&m.id) == sel.as_ref()) {
                        None => "Waiting for the swarm to announce a model…".to_string(),
                        Some(m) if m.covered < m.n_layers => format!(
                            "No chain of servers covers this model now: {} of {} blocks are served. Answers will fail until someone serves the rest (the Seed tab can).",
                            m.covered, m.n_layers),
                        Some(m) => format!("Served by {} node(s) covering all {} blocks.", m.servers, m.n_layers),
                    }
                }}</p>
                <div id="messages">
                    {move || current.get().messages.into_iter().map(|m| {
                        let class = format!("msg {}", m.role);
                        view! { <div class=class>{m.content}</div> }
                    }).collect_view()}
                    <Show when=move || state.get() == "generating">
                        <div class="msg assistant streaming">{move || streaming.get()}</div>
                    </Show>
                </div>
                <p id="chat-notice" data-state=move || state.get() data-first-token-ms=move || first_token_ms.get().to_string()>
                    {move || notice.get()}
                </p>
                <form class="ask" on:submit=move |ev| { ev.prevent_default(); send(); }>
                    <textarea id="prompt" rows="2" placeholder="Ask something…"
                        prop:value=move || input.get()
                        on:input=move |ev| input.set(event_target_value(&ev))
                        on:keydown=move |ev: leptos::ev::KeyboardEvent| if ev.key() == "Enter" && !ev.shift_key() { ev.prevent_default(); send(); }
                    ></textarea>
                    <Show when=move || state.get() == "generating"
                        fallback=|| view! { <button id="send" type="submit">"Send"</button> }>
                        <button id="stop" type="button" on:click=stop>"Stop"</button>
                    </Show>
                </form>
            </div>
        </div>
    }
}
