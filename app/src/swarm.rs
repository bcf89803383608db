//! What the tab knows of the swarm: its connection to the relay ([`Conn`]), the models and
//! servers in the DHT, the connected peers; and [`Swarm`], which joins the swarm and keeps
//! all of it fresh. Every panel reads it from context.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use leptos::prelude::*;
use web_node::net::directory::{self, head_chars, layers_seen, tail_chars};
use web_node::net::record::{ServerRecord, MAX_LAYERS};

/// How many servers cover each block of a model (bounded: see [`directory::coverage`]).
pub use web_node::net::directory::coverage;

use crate::error::AppError;
use crate::net::{self, Net, OfferedModel, TransportPref};

/// The tab's connection to the relay that served it. `Display` is the `data-state` of
/// `#conn`: `connecting`, `connected` or `error`.
#[derive(Clone, Debug)]
pub enum Conn {
    /// Joining the swarm.
    Connecting,
    /// Connected to the relay.
    Connected {
        /// Transport name (`WebSocket`, `WebRTC-direct`).
        transport: &'static str,
        /// The relay's peer id.
        relay: String,
    },
    /// Was connected, lost the relay, and is dialing it again.
    Lost,
    /// Could not join the swarm.
    Failed(Arc<AppError>),
}

impl Conn {
    /// Whether the tab is connected to its relay.
    pub fn is_connected(&self) -> bool {
        matches!(self, Conn::Connected { .. })
    }

    /// The line shown in the header.
    pub fn line(&self) -> String {
        match self {
            Conn::Connecting => "Connecting to the swarm…".into(),
            Conn::Connected { transport, relay } => {
                format!("Connected over {transport} to relay {}…", tail_chars(relay, 8))
            }
            Conn::Lost => "Lost the relay: reconnecting…".into(),
            Conn::Failed(e) => e.to_string(),
        }
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Connecting => "connecting",
            Conn::Connected { .. } => "connected",
            Conn::Lost | Conn::Failed(_) => "error",
        })
    }
}

/// A model seen in the swarm, for the picker and the network panel.
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

    /// Whether some block is served by no node.
    pub fn has_gaps(&self) -> bool {
        self.covered < self.n_layers
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

impl PeerRow {
    /// What kind of peer it is: `relay`, or its agent string.
    pub fn kind(&self) -> String {
        if self.relay {
            "relay".into()
        } else {
            self.agent.clone()
        }
    }
}

/// Builds the picker's list from the directory and the relay's offer. Layer counts are
/// bounded ([`MAX_LAYERS`]) and ids abbreviated by characters: records come from anyone.
pub fn model_entries(servers: &[ServerRecord], offered: Option<&OfferedModel>) -> Vec<ModelEntry> {
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
            let n_layers = offer.map_or_else(|| layers_seen(servers, &id), |o| o.n_layers.min(MAX_LAYERS));
            let covered = directory::coverage(servers, &id, n_layers).iter().filter(|&&c| c > 0).count();
            let name = offer.map(|o| o.name.clone()).unwrap_or_else(|| format!("model {}", head_chars(&id, 12)));
            ModelEntry { id, name, n_layers, covered, servers: mine.len() }
        })
        .collect()
}

/// The swarm as the page sees it (reactive), and the tab's node. Copy: provided as context.
#[derive(Clone, Copy)]
pub struct Swarm {
    /// The connection to the relay.
    pub conn: RwSignal<Conn>,
    /// The model whose parts the relay offers.
    pub offered: RwSignal<Option<OfferedModel>>,
    /// Server records from the DHT.
    pub servers: RwSignal<Vec<ServerRecord>>,
    /// Models in the swarm (from `servers` and `offered`).
    pub models: Memo<Vec<ModelEntry>>,
    /// The model picked for chat and seeding.
    pub selected: RwSignal<Option<String>>,
    /// Connected peers.
    pub peers: RwSignal<Vec<PeerRow>>,
    /// The tab's node, once connected (not `Send`: local to the page's thread).
    node: StoredValue<Option<Rc<Net>>, LocalStorage>,
}

impl Swarm {
    /// Nothing known yet; call [`Swarm::run`] to join.
    pub fn new() -> Swarm {
        let offered = RwSignal::new(None);
        let servers = RwSignal::new(vec![]);
        Swarm {
            conn: RwSignal::new(Conn::Connecting),
            offered,
            servers,
            models: Memo::new(move |_| servers.with(|s| model_entries(s, offered.get().as_ref()))),
            selected: RwSignal::new(None),
            peers: RwSignal::new(vec![]),
            node: StoredValue::new_local(None),
        }
    }

    /// The tab's node, once connected.
    pub fn net(&self) -> Option<Rc<Net>> {
        self.node.get_value()
    }

    /// The entry of the selected model, if the swarm knows it.
    pub fn selected_entry(&self) -> Option<ModelEntry> {
        let sel = self.selected.get();
        self.models.get().into_iter().find(|m| Some(&m.id) == sel.as_ref())
    }

    /// Joins the swarm through the page's relay, then refreshes the directory and the peers
    /// every 5 s, dialing the relay again whenever it is gone (chat keeps working once it is
    /// back; what is typed meanwhile fails with a clear error). Runs for the page's life.
    pub async fn run(self) {
        let n = match net::connect(TransportPref::from_page()).await {
            Ok(n) => n,
            Err(e) => return self.conn.set(Conn::Failed(Arc::new(e))),
        };
        let connected = Conn::Connected { transport: net::transport_name(&n.relay_addr), relay: n.boot.peer.clone() };
        self.node.set_value(Some(n.clone()));
        self.offered.set(n.boot.model.clone());
        self.conn.set(connected.clone());
        loop {
            self.refresh(&n).await;
            let relay_up = self.peers.with_untracked(|p| p.iter().any(|p| p.peer == n.boot.peer));
            if !relay_up {
                self.conn.set(Conn::Lost);
                if n.handle.dial(n.relay_addr.clone(), Duration::from_secs(10)).await.is_ok() {
                    self.conn.set(connected.clone());
                }
            }
            futures_timer::Delay::new(Duration::from_secs(5)).await;
        }
    }

    /// Reads the DHT directory and the connected peers; picks the best-covered model if none
    /// is picked yet.
    async fn refresh(self, net: &Net) {
        let servers = directory::list(&net.handle, Duration::from_secs(5)).await.unwrap_or_default();
        if self.selected.get_untracked().is_none() {
            let entries = model_entries(&servers, net.boot.model.as_ref());
            self.selected.set(entries.iter().max_by_key(|m| (m.covered, m.servers)).map(|m| m.id.clone()));
        }
        self.servers.set(servers);
        if let Ok(peers) = net.handle.peers().await {
            self.peers.set(
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
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm::new()
    }
}
