//! Conversations as plain data: what is stored in IndexedDB and what the chat panel shows.

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};
use web_node::model::ChatMessage;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// The message as the chat template takes it.
    pub fn to_chat(&self) -> ChatMessage {
        ChatMessage::new(self.role.clone(), self.content.clone())
    }

    /// The classes of its bubble (`msg user`, `msg assistant`).
    pub fn class(&self) -> String {
        format!("msg {}", self.role)
    }
}

/// A conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Key (creation time in ms, as text).
    pub id: String,
    /// The first words of the first message.
    pub title: String,
    /// Model id (hex) it was held with.
    pub model: String,
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// What its answers paid the servers that charge (AIT, smallest unit; zero when every
    /// answer was free). Conversations stored before payments existed read as zero.
    #[serde(default)]
    pub spent: U256,
}

impl Conversation {
    /// An empty conversation with `model`, keyed by the time now.
    pub fn new(model: &str) -> Conversation {
        Conversation {
            id: format!("{:015}", js_sys::Date::now() as u64),
            title: String::new(),
            model: model.into(),
            messages: vec![],
            spent: U256::ZERO,
        }
    }

    /// The title shown in the list.
    pub fn display_title(&self) -> String {
        if self.title.is_empty() {
            "(empty)".into()
        } else {
            self.title.clone()
        }
    }

    /// Adds the user's `text`, asked of `model` (the first one gives the title).
    pub fn ask(&mut self, model: &str, text: String) {
        if self.title.is_empty() {
            self.title = text.chars().take(40).collect();
        }
        self.model = model.into();
        self.messages.push(Message { role: "user".into(), content: text });
    }

    /// Adds the assistant's answer.
    pub fn answer(&mut self, text: String) {
        self.messages.push(Message { role: "assistant".into(), content: text });
    }

    /// Counts what an answer paid.
    pub fn spend(&mut self, cost: U256) {
        self.spent = self.spent.saturating_add(cost);
    }

    /// The messages as the chat template takes them.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        self.messages.iter().map(Message::to_chat).collect()
    }
}

/// The stored conversations, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversations(pub Vec<Conversation>);

impl Conversations {
    /// What all of them paid (AIT, smallest unit).
    pub fn spent(&self) -> U256 {
        self.0.iter().fold(U256::ZERO, |a, c| a.saturating_add(c.spent))
    }

    /// Puts `c` first, replacing its older copy.
    pub fn put(&mut self, c: Conversation) {
        self.remove(&c.id);
        self.0.insert(0, c);
    }

    /// Removes the conversation keyed `id`.
    pub fn remove(&mut self, id: &str) {
        self.0.retain(|x| x.id != id);
    }
}
