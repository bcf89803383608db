//! Chat: pick a model the swarm serves, talk to it, keep conversations in IndexedDB.
//!
//! The tokenizer, embeddings and LM head run in wasm on the CPU (no WebGPU needed), in
//! [`ClientModel::chat`]; the decoder layers run on the chain of servers that [`SwarmChain`]
//! routes through. [`Chat`] is the panel's state and actions; [`view`] draws it.

pub mod checks;
mod conversation;
pub mod view;

pub use checks::SpotCheck;
pub use conversation::{Conversation, Conversations, Message};
pub use view::ChatView;

use std::fmt;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use futures::future::{select, Either};
use leptos::prelude::*;
use leptos::task::spawn_local;
use web_node::client::{ClientModel, GenerateError, GenerateOptions, LayerChain, SamplingParams};
use web_node::model::{ChatMessage, ModelId};
use web_node::net::chain::{ChainOptions, QueueWatch, RouteWatch, SwarmChain};
use web_node::settle::format_ait;
use web_node::trust::{AuditDraw, Reputation};

use crate::error::AppError;
use crate::net::{load_client_model, Net};
use crate::parts::Transfer;
use crate::swarm::Swarm;
use crate::wallet::Wallet;
use crate::{http, store};

/// Where the chat is. `Display` is the `data-state` of `#chat-notice`: `idle`, `generating`
/// or `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatState {
    /// Waiting for a question.
    Idle,
    /// An answer is streaming in.
    Generating,
    /// The last answer failed (the notice says why).
    Failed,
}

impl fmt::Display for ChatState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChatState::Idle => "idle",
            ChatState::Generating => "generating",
            ChatState::Failed => "error",
        })
    }
}

/// The chat panel's state and actions. Copy: provided as context to its components.
#[derive(Clone, Copy)]
pub struct Chat {
    /// Stored conversations, newest first.
    pub conversations: RwSignal<Conversations>,
    /// The conversation on screen.
    pub current: RwSignal<Conversation>,
    /// The text being typed.
    pub input: RwSignal<String>,
    /// The answer streaming in.
    pub streaming: RwSignal<String>,
    /// Where the chat is.
    pub state: RwSignal<ChatState>,
    /// Progress, warning or error line.
    pub notice: RwSignal<String>,
    /// When the page's first answer token arrived (ms since navigation start; 0 before).
    pub first_token_ms: RwSignal<f64>,
    /// Sampling temperature (`?temperature=`, default 0.7).
    pub temperature: RwSignal<f32>,
    /// What the last answer cost in AIT (smallest unit), when the wallet paid for it.
    pub cost: RwSignal<Option<alloy_primitives::U256>>,
    /// The spot checks of the page's answers, newest first (at most [`checks::KEPT`]).
    pub checks: RwSignal<Vec<SpotCheck>>,
    /// Share of each answer's hop sessions checked afterwards ([`checks::rate`]).
    audit_rate: f64,
    swarm: Swarm,
    /// Pays servers that charge, once its session key is authorized.
    wallet: Wallet,
    /// The client part of the last model used, loaded once per page.
    model: StoredValue<Option<Rc<ClientModel>>, LocalStorage>,
    /// Dropping it stops the answer streaming in.
    stop: StoredValue<Option<oneshot::Sender<()>>, LocalStorage>,
    /// The page's ratings of the servers its answers went through, shared by every answer.
    reputation: StoredValue<Reputation>,
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

impl Chat {
    /// An empty chat on `swarm`, paying through `wallet` when it can; loads the stored
    /// conversations.
    pub fn new(swarm: Swarm, wallet: Wallet) -> Chat {
        let temperature = http::query_param("temperature").and_then(|t| t.parse::<f32>().ok()).unwrap_or(0.7);
        let chat = Chat {
            conversations: RwSignal::new(Conversations::default()),
            current: RwSignal::new(Conversation::new("")),
            input: RwSignal::new(String::new()),
            streaming: RwSignal::new(String::new()),
            state: RwSignal::new(ChatState::Idle),
            notice: RwSignal::new(String::new()),
            first_token_ms: RwSignal::new(0.0),
            temperature: RwSignal::new(temperature),
            cost: RwSignal::new(None),
            checks: RwSignal::new(Vec::new()),
            audit_rate: checks::rate(),
            swarm,
            wallet,
            model: StoredValue::new_local(None),
            stop: StoredValue::new_local(None),
            reputation: StoredValue::new(Reputation::new()),
        };
        spawn_local(async move {
            match store::load_all().await {
                Ok(v) => chat.conversations.set(Conversations(v)),
                Err(e) => chat.notice.set(e.to_string()),
            }
        });
        chat
    }

    fn generating(&self) -> bool {
        self.state.get_untracked() == ChatState::Generating
    }

    /// Sends what was typed and streams the answer.
    pub fn send(self) {
        let text = self.input.get_untracked().trim().to_string();
        if text.is_empty() || self.generating() {
            return;
        }
        let Some(model) = self.swarm.selected.get_untracked() else {
            self.notice.set("No model yet: wait for the swarm to announce one.".into());
            return;
        };
        self.input.set(String::new());
        self.current.update(|c| c.ask(&model, text));
        let messages = self.current.with_untracked(Conversation::chat_messages);
        let (tx, rx) = oneshot::channel();
        self.stop.set_value(Some(tx));
        self.streaming.set(String::new());
        self.state.set(ChatState::Generating);
        self.notice.set(String::new());
        spawn_local(self.answer(model, messages, self.temperature.get_untracked(), rx));
    }

    /// Stops the answer streaming in (what came so far is kept).
    pub fn stop(self) {
        self.stop.update_value(|s| drop(s.take()));
    }

    /// Starts a new conversation (not while an answer streams in).
    pub fn new_chat(self) {
        if !self.generating() {
            self.current.set(Conversation::new(&self.swarm.selected.get_untracked().unwrap_or_default()));
        }
    }

    /// Shows conversation `c` (not while an answer streams in).
    pub fn open(self, c: Conversation) {
        if !self.generating() {
            self.current.set(c);
        }
    }

    /// Deletes conversation `id`.
    pub fn delete(self, id: String) {
        self.conversations.update(|v| v.remove(&id));
        spawn_local(async move {
            let _ = store::delete(&id).await;
        });
    }

    /// Runs one answer (until done, failed or stopped), then keeps the conversation.
    async fn answer(self, model: String, messages: Vec<ChatMessage>, temperature: f32, stop: oneshot::Receiver<()>) {
        match self.generate(model, messages, temperature, stop).await {
            Ok(()) => self.state.set(ChatState::Idle),
            Err(e) => {
                self.state.set(ChatState::Failed);
                self.notice.set(e.to_string());
            }
        }
        let text = self.streaming.get_untracked();
        if !text.is_empty() {
            self.current.update(|c| c.answer(text));
        }
        self.streaming.set(String::new());
        let c = self.current.get_untracked();
        if let Err(e) = store::save(&c).await {
            self.notice.set(e.to_string());
        }
        self.conversations.update(|v| v.put(c));
    }

    /// Generates the answer to `messages` through the swarm into [`Chat::streaming`], until
    /// done, failed or `stop`.
    async fn generate(
        self,
        model: String,
        messages: Vec<ChatMessage>,
        temperature: f32,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), AppError> {
        let started = now_ms();
        let net = self.swarm.net().ok_or(AppError::NotConnected)?;
        let id = ModelId::from_hex(&model).ok_or(AppError::BadModelId(model))?;
        let model = match select(pin!(self.client_model(&net, id)), &mut stop).await {
            Either::Left((m, _)) => m?,
            Either::Right(_) => return Ok(()),
        };
        // With an authorized session key the tab pays servers that charge; without one it
        // uses free servers only.
        let payer = self.wallet.payer();
        let paying = payer.is_some();
        let notice = self.notice;
        // Where the answer waits, then what a token through its route costs: both before
        // its first token.
        let on_queued = QueueWatch(Arc::new(move |_, position, waiting| {
            notice.set(format!("A full server queued this answer: place {position} of {waiting} waiting."))
        }));
        let on_route = RouteWatch(Arc::new(move |hops, price| {
            notice.set(match price.is_zero() {
                true => String::new(),
                false => format!("Route: {} servers, {} AIT per token.", hops.len(), format_ait(price)),
            })
        }));
        let opts = ChainOptions {
            payer,
            on_queued: Some(on_queued),
            on_route: Some(on_route),
            reputation: self.reputation.get_value(),
            ..ChainOptions::default()
        };
        let mut chain = SwarmChain::new(net.handle.clone(), id, model.config.n_layers, model.config.hidden, opts);
        // While the tab seeds, its own blocks serve its chats in the page (and free).
        if let Some(local) = self.swarm.local_server() {
            chain = chain.with_local(local);
        }
        if self.audit_rate > 0.0 {
            chain = chain.with_audits(AuditDraw::new(self.audit_rate));
        }
        let opts = GenerateOptions {
            max_tokens: 512,
            sampling: SamplingParams { temperature, ..SamplingParams::default() },
            ..GenerateOptions::default()
        };
        let on_text = |t: &str| {
            if self.first_token_ms.get_untracked() == 0.0 {
                self.first_token_ms.set(now_ms());
                tracing::info!("first token {:.0} ms after sending", now_ms() - started);
            }
            self.streaming.update(|s| s.push_str(t));
        };
        self.cost.set(None);
        let answered = {
            let chat = pin!(model.chat(&mut chain, &messages, &opts, on_text));
            match select(chat, &mut stop).await {
                Either::Left((answered, _)) => Some(answered.map(drop).map_err(AppError::from)),
                Either::Right(_) => None,
            }
        };
        // Stopped: close the route, which sends the closing vouchers for what came.
        let answered = match answered {
            Some(answered) => answered,
            None => chain.end().await.map_err(|e| AppError::Generate(GenerateError::Chain(e))),
        };
        if paying {
            // What was paid counts, whether the answer completed or not.
            let cost = chain.paid();
            self.cost.set(Some(cost));
            self.current.update(|c| c.spend(cost));
            self.notice.set(format!("This answer cost {} AIT.", format_ait(cost)));
        } else {
            self.wallet.free_left.set(chain.free_left());
        }
        // The sessions the draw picked are checked after the answer, off its path.
        if self.audit_rate > 0.0 {
            spawn_local(self.check(chain, self.current.with_untracked(|c| c.id.clone())));
        }
        answered?;
        Ok(())
    }

    /// Runs the spot checks `chain`'s last answer drew and lists what they found; what their
    /// replays paid counts in `conversation`, whose answer they checked.
    async fn check(self, mut chain: SwarmChain, conversation: String) {
        let (found, cost) = checks::run(&mut chain).await;
        drop(chain);
        self.checks.update(|v| {
            for c in found {
                v.insert(0, c);
            }
            v.truncate(checks::KEPT);
        });
        if cost.is_zero() {
            return;
        }
        // Only while the conversation is still kept (not deleted meanwhile), in its place.
        let in_view = self.current.with_untracked(|c| c.id == conversation);
        if in_view {
            self.current.update(|c| c.spend(cost));
        }
        let mut kept = None;
        self.conversations.update(|v| {
            if let Some(c) = v.0.iter_mut().find(|c| c.id == conversation) {
                c.spend(cost);
                kept = Some(c.clone());
            }
        });
        let Some(kept) = kept else { return };
        let c = if in_view { self.current.get_untracked() } else { kept };
        if let Err(e) = store::save(&c).await {
            self.notice.set(e.to_string());
        }
    }

    /// The client part of model `id` (loaded once per page), saying how the loading goes.
    async fn client_model(self, net: &Net, id: ModelId) -> Result<Rc<ClientModel>, AppError> {
        if let Some(m) = self.model.get_value().filter(|m| m.id == id) {
            self.notice.set(String::new());
            return Ok(m);
        }
        let transfer = Transfer::start();
        let loaded = load_client_model(net, id, |done, total| {
            self.notice.set(format!("Loading the model's tokenizer and head: {}", transfer.line(done, total)))
        })
        .await?;
        let (m, warning) = (loaded.value, loaded.warning);
        tracing::info!("head of {} from {}", id.short(), loaded.origin);
        self.notice.set(warning.map(|w| w.to_string()).unwrap_or_default());
        let m = Rc::new(m);
        self.model.set_value(Some(m.clone()));
        Ok(m)
    }
}
