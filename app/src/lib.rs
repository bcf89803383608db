//! The AI Torrent web app: a Leptos client-side-rendered page, built by Trunk and served by
//! `ait relay` on its HTTP port.
//!
//! The page runs a libp2p node (`web_node::net::browser`) that joins the swarm through the
//! relay that served it. Three panels: [`chat`] (talk to a model the swarm serves; works
//! without WebGPU), [`seed`] (lend this tab's GPU: serve blocks through the relay's circuit),
//! and [`network`] (relays, nodes and which blocks of each model are covered).
//!
//! Page parameters: `?transport=webrtc` dials the relay over WebRTC-direct instead of
//! WebSocket; `?seed=A..B` starts seeding blocks A..B at load; `?temperature=T` sets the chat
//! temperature.
#![deny(missing_docs)]

pub mod chat;
pub mod http;
pub mod net;
pub mod network;
pub mod seed;
pub mod store;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_node::net::announce::directory;
use web_node::net::record::ServerRecord;

use crate::net::{Net, TransportPref};

thread_local! {
    static NET: RefCell<Option<Rc<Net>>> = const { RefCell::new(None) };
}

/// The tab's node, once connected.
pub fn net() -> Option<Rc<Net>> {
    NET.with_borrow(|n| n.clone())
}

/// Whether this browser exposes WebGPU (`navigator.gpu` is present).
pub fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::get(&window.navigator(), &"gpu".into()).map(|g| !g.is_undefined()).unwrap_or(false)
}

/// A model seen in the swarm, for the picker.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// Content id (hex).
    pub id: String,
    /// Display name (the relay's name for it, else a short id).
    pub name: String,
    /// Decoder layers (0 when unknown).
    pub n_layers: usize,
    /// Blocks served by at least one node.
    pub covered: usize,
    /// Nodes serving some of it.
    pub servers: usize,
}

impl ModelEntry {
    /// The picker's text.
    pub fn label(&self) -> String {
        format!("{} ({}/{} blocks served)", self.name, self.covered, self.n_layers)
    }
}

/// A peer the tab is connected to, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRow {
    /// Peer id.
    pub peer: String,
    /// Address of the connection.
    pub addr: String,
    /// Agent string.
    pub agent: String,
    /// Offers the circuit relay service.
    pub relay: bool,
}

/// Reactive state shared by the panels.
#[derive(Clone, Copy)]
pub struct Ui {
    /// `connecting`, `connected` or `error`.
    pub conn: RwSignal<String>,
    /// Line describing the connection.
    pub conn_text: RwSignal<String>,
    /// Models in the swarm.
    pub models: RwSignal<Vec<ModelEntry>>,
    /// The model picked for chat and seeding.
    pub selected: RwSignal<Option<String>>,
    /// Server records from the DHT.
    pub servers: RwSignal<Vec<ServerRecord>>,
    /// Connected peers.
    pub peers: RwSignal<Vec<PeerRow>>,
}

/// Builds the picker's list from the directory and the relay's offer.
pub fn model_entries(servers: &[ServerRecord], offered: Option<&net::OfferedModel>) -> Vec<ModelEntry> {
    let mut ids: Vec<String> = servers.iter().map(|r| r.status.model.clone()).collect();
    if let Some(o) = offered {
        ids.push(o.id.clone());
    }
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let mine: Vec<&ServerRecord> = servers.iter().filter(|r| r.status.model == id).collect();
            let offer = offered.filter(|o| o.id == id);
            let n_layers = offer.map(|o| o.n_layers).or_else(|| mine.iter().map(|r| r.status.end).max()).unwrap_or(0);
            let covered =
                (0..n_layers).filter(|&b| mine.iter().any(|r| r.status.start <= b && b < r.status.end)).count();
            let name = offer.map(|o| o.name.clone()).unwrap_or_else(|| format!("model {}", &id[..12.min(id.len())]));
            ModelEntry { id, name, n_layers, covered, servers: mine.len() }
        })
        .collect()
}

/// Reads the DHT directory and the connected peers into `ui`.
async fn refresh(ui: Ui, net: &Net) {
    let servers = directory(&net.handle, Duration::from_secs(5)).await.unwrap_or_default();
    let entries = model_entries(&servers, net.boot.model.as_ref());
    if ui.selected.get_untracked().is_none() {
        ui.selected.set(entries.iter().max_by_key(|m| (m.covered, m.servers)).map(|m| m.id.clone()));
    }
    ui.models.set(entries);
    ui.servers.set(servers);
    if let Ok(peers) = net.handle.peers().await {
        ui.peers.set(
            peers
                .into_iter()
                .map(|p| PeerRow {
                    peer: p.peer.to_string(),
                    addr: p.addr.to_string(),
                    agent: p.agent.unwrap_or_default(),
                    relay: p.is_relay,
                })
                .collect(),
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tab {
    Chat,
    Seed,
    Network,
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let ui = Ui {
        conn: RwSignal::new("connecting".into()),
        conn_text: RwSignal::new("Connecting to the swarm…".into()),
        models: RwSignal::new(vec![]),
        selected: RwSignal::new(None),
        servers: RwSignal::new(vec![]),
        peers: RwSignal::new(vec![]),
    };
    provide_context(ui);
    spawn_local(async move {
        match net::connect(TransportPref::from_page()).await {
            Ok(n) => {
                ui.conn_text.set(format!(
                    "Connected over {} to relay {}…",
                    net::transport_name(&n.relay_addr),
                    &n.boot.peer[n.boot.peer.len().saturating_sub(8)..]
                ));
                NET.with_borrow_mut(|slot| *slot = Some(n.clone()));
                ui.conn.set("connected".into());
                let connected_text = ui.conn_text.get_untracked();
                loop {
                    refresh(ui, &n).await;
                    // The relay went away: say so, and dial it again (chat keeps working once
                    // it is back; what is typed meanwhile fails with a clear error).
                    let relay_up = ui.peers.with_untracked(|p| p.iter().any(|p| p.peer == n.boot.peer));
                    if !relay_up {
                        ui.conn.set("error".into());
                        ui.conn_text.set("Lost the relay: reconnecting…".into());
                        if n.handle.dial(n.relay_addr.clone(), Duration::from_secs(10)).await.is_ok() {
                            ui.conn.set("connected".into());
                            ui.conn_text.set(connected_text.clone());
                        }
                    }
                    futures_timer::Delay::new(Duration::from_secs(5)).await;
                }
            }
            Err(e) => {
                ui.conn.set("error".into());
                ui.conn_text.set(e);
            }
        }
    });
    let tab = RwSignal::new(if http::query_param("seed").is_some() { Tab::Seed } else { Tab::Chat });
    let tab_button = move |t: Tab, label: &'static str, id: &'static str| {
        view! { <button id=id class:active=move || tab.get() == t on:click=move |_| tab.set(t)>{label}</button> }
    };
    view! {
        <header>
            <h1>"AI Torrent"</h1>
            <span id="conn" data-state=move || ui.conn.get()>{move || ui.conn_text.get()}</span>
        </header>
        <nav>
            {tab_button(Tab::Chat, "Chat", "tab-chat")}
            {tab_button(Tab::Seed, "Seed", "tab-seed")}
            {tab_button(Tab::Network, "Network", "tab-network")}
        </nav>
        <main>
            <section class:hidden=move || tab.get() != Tab::Chat><chat::ChatView/></section>
            <section class:hidden=move || tab.get() != Tab::Seed><seed::SeedView/></section>
            <section class:hidden=move || tab.get() != Tab::Network><network::NetworkView/></section>
        </main>
    }
}
