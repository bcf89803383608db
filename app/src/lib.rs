//! The AI Torrent web app: a Leptos client-side-rendered page, built by Trunk and served by
//! `ait relay` on its HTTP port.
//!
//! The page runs a libp2p node (`web_node::net::browser`) that joins the swarm through the
//! relay that served it ([`swarm`]). Five panels: [`chat`] (talk to a model the swarm serves;
//! works without WebGPU), [`seed`] (lend this tab's GPU: serve blocks through the relay's
//! circuit), [`network`] (relays, nodes and which blocks of each model are covered) and
//! [`publish`] (a creator's GGUF file, cut, hashed and seeded from the tab) and [`wallet`]
//! (a wallet through EIP-1193: deposit with a permit, authorize the tab's session key). Model
//! parts come from the swarm and are seeded back ([`parts`]).
//!
//! State lives in plain Rust with methods ([`swarm::Swarm`], [`chat::Chat`],
//! [`seed::Seeder`]: Copy handles of signals), provided as context to small components.
//! Failures are [`error::AppError`]s; their `Display` is what the page shows.
//!
//! Page parameters: `?transport=webrtc` dials the relay over WebRTC-direct instead of
//! WebSocket; `?seed=A..B` (or `all`) starts seeding blocks A..B at load; `?temperature=T`
//! sets the chat temperature.
#![deny(missing_docs)]

pub mod chat;
pub mod error;
pub mod http;
pub mod net;
pub mod network;
pub mod parts;
pub mod publish;
pub mod seed;
pub mod store;
pub mod swarm;
pub mod wallet;

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::chat::{Chat, ChatView};
use crate::network::NetworkView;
use crate::publish::{PublishView, Publisher};
use crate::seed::{SeedView, Seeder};
use crate::swarm::Swarm;
use crate::wallet::{Wallet, WalletView};

/// The page's tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Talk to a model.
    Chat,
    /// Lend the GPU.
    Seed,
    /// What the swarm holds.
    Network,
    /// Publish a model.
    Publish,
    /// Connect a wallet and pay.
    Wallet,
}

impl Tab {
    /// The tab's button label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Chat => "Chat",
            Tab::Seed => "Seed",
            Tab::Network => "Network",
            Tab::Publish => "Publish",
            Tab::Wallet => "Wallet",
        }
    }

    /// The tab's button id (`tab-chat`, …).
    pub fn id(self) -> &'static str {
        match self {
            Tab::Chat => "tab-chat",
            Tab::Seed => "tab-seed",
            Tab::Network => "tab-network",
            Tab::Publish => "tab-publish",
            Tab::Wallet => "tab-wallet",
        }
    }
}

/// The whole page: joins the swarm, and provides [`Swarm`], [`Chat`] and [`Seeder`] to the
/// panels.
#[component]
pub fn App() -> impl IntoView {
    let swarm = Swarm::new();
    provide_context(swarm);
    let wallet = Wallet::new();
    provide_context(Chat::new(swarm, wallet));
    provide_context(Seeder::new(swarm, wallet));
    provide_context(Publisher::new(swarm));
    provide_context(wallet);
    spawn_local(swarm.run());
    let tab = RwSignal::new(if http::query_param("seed").is_some() { Tab::Seed } else { Tab::Chat });
    // Panels that poll do it only while shown.
    provide_context(tab);
    view! {
        <header>
            <h1>"AI Torrent"</h1>
            <ConnLine/>
        </header>
        <nav>
            <TabButton tab=tab which=Tab::Chat/>
            <TabButton tab=tab which=Tab::Seed/>
            <TabButton tab=tab which=Tab::Network/>
            <TabButton tab=tab which=Tab::Publish/>
            <TabButton tab=tab which=Tab::Wallet/>
        </nav>
        <main>
            <section class:hidden=move || tab.get() != Tab::Chat><ChatView/></section>
            <section class:hidden=move || tab.get() != Tab::Seed><SeedView/></section>
            <section class:hidden=move || tab.get() != Tab::Network><NetworkView/></section>
            <section class:hidden=move || tab.get() != Tab::Publish><PublishView/></section>
            <section class:hidden=move || tab.get() != Tab::Wallet><WalletView/></section>
        </main>
    }
}

#[component]
fn ConnLine() -> impl IntoView {
    let conn = expect_context::<Swarm>().conn;
    view! {
        <span id="conn" data-state=move || conn.with(ToString::to_string)>{move || conn.with(swarm::Conn::line)}</span>
    }
}

#[component]
fn TabButton(tab: RwSignal<Tab>, which: Tab) -> impl IntoView {
    view! {
        <button id=which.id() class:active=move || tab.get() == which on:click=move |_| tab.set(which)>
            {which.label()}
        </button>
    }
}
