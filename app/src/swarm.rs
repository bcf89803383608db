//! What the tab knows of the swarm: its connection to the relay ([`Conn`]), the models and
//! servers in the DHT, the connected peers; and [`Swarm`], which joins the swarm and keeps
//! all of it fresh. Every panel reads it from context.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use leptos::prelude::*;
use libp2p::PeerId;
use web_node::model::card::ModelCard;
use web_node::model::ModelId;
use web_node::net::directory::{self, head_chars, layers_seen, tail_chars};
use web_node::net::node::NodeHandle;
use web_node::net::parts::fetch_card;
use web_node::net::record::{model_key, ServerRecord, MAX_LAYERS};
use web_node::net::seeders::{providers, PROBE};
use web_node::net::serve::LocalServer;
use web_time::Instant;

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
    /// Its creator's labels ([`ModelCard::summary`]), once its signed card is known.
    pub labels: Option<String>,
}

impl ModelEntry {
    /// The picker's text.
    pub fn label(&self) -> String {
        let labels = self.labels.as_ref().map(|l| format!(" — {l}")).unwrap_or_default();
        format!("{}{labels} ({}/{} blocks served)", self.name, self.covered, self.n_layers)
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

/// Builds the picker's list from the directory, the relay's offer and the models' signed
/// cards (a card's name replaces the relay's). Layer counts are bounded ([`MAX_LAYERS`]) and
/// ids abbreviated by characters: records come from anyone.
pub fn model_entries(
    servers: &[ServerRecord],
    offered: Option<&OfferedModel>,
    cards: &HashMap<String, ModelCard>,
) -> Vec<ModelEntry> {
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
            let card = cards.get(&id);
            let name = card.map(|c| c.name.clone()).or_else(|| offer.map(|o| o.name.clone()));
            let name = name.unwrap_or_else(|| format!("model {}", head_chars(&id, 12)));
            let labels = card.map(ModelCard::summary);
            ModelEntry { id, name, n_layers, covered, servers: mine.len(), labels }
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
    /// Models' signed cards, by id (hex).
    pub cards: RwSignal<HashMap<String, ModelCard>>,
    /// Models in the swarm (from `servers`, `offered` and `cards`).
    pub models: Memo<Vec<ModelEntry>>,
    /// The model picked for chat and seeding.
    pub selected: RwSignal<Option<String>>,
    /// Connected peers.
    pub peers: RwSignal<Vec<PeerRow>>,
    /// The tab's node, once connected (not `Send`: local to the page's thread).
    node: StoredValue<Option<Rc<Net>>, LocalStorage>,
    /// When each model's card was last asked for.
    card_asked: StoredValue<HashMap<String, Instant>, LocalStorage>,
    /// The tab's own server while it seeds: its chats reach it in the page, free.
    local: StoredValue<Option<Arc<dyn LocalServer>>, LocalStorage>,
}

impl Swarm {
    /// Nothing known yet; call [`Swarm::run`] to join.
    pub fn new() -> Swarm {
        let offered = RwSignal::new(None);
        let servers = RwSignal::new(vec![]);
        let cards = RwSignal::new(HashMap::new());
        Swarm {
            conn: RwSignal::new(Conn::Connecting),
            offered,
            servers,
            cards,
            models: Memo::new(move |_| servers.with(|s| cards.with(|c| model_entries(s, offered.get().as_ref(), c)))),
            card_asked: StoredValue::new_local(HashMap::new()),
            selected: RwSignal::new(None),
            peers: RwSignal::new(vec![]),
            node: StoredValue::new_local(None),
            local: StoredValue::new_local(None),
        }
    }

    /// The tab's own server, while it seeds.
    pub fn local_server(&self) -> Option<Arc<dyn LocalServer>> {
        self.local.get_value()
    }

    /// Sets (or, with `None`, clears) the tab's own server.
    pub fn set_local_server(&self, server: Option<Arc<dyn LocalServer>>) {
        self.local.set_value(server);
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
            let entries = self.cards.with_untracked(|c| model_entries(&servers, net.boot.model.as_ref(), c));
            self.selected.set(entries.iter().max_by_key(|m| (m.covered, m.servers)).map(|m| m.id.clone()));
        }
        self.servers.set(servers);
        self.ask_cards(net);
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

impl Swarm {
    /// Asks for the cards of the listed models that have none yet (each at most once a
    /// minute), in the background: from the page's relay, else from the model's providers.
    fn ask_cards(self, net: &Net) {
        let now = Instant::now();
        let due: Vec<String> = self.models.with_untracked(|m| {
            m.iter()
                .filter(|e| e.labels.is_none())
                .map(|e| e.id.clone())
                .filter(|id| self.card_asked.with_value(|a| a.get(id).is_none_or(|t| now - *t > CARD_RETRY)))
                .collect()
        });
        for id in due {
            self.card_asked.update_value(|a| {
                a.insert(id.clone(), now);
            });
            let Some(model) = ModelId::from_hex(&id) else { continue };
            let (handle, relay) = (net.handle.clone(), net.relay_peer());
            leptos::task::spawn_local(async move {
                if let Some(card) = find_card(&handle, relay, &model).await {
                    self.cards.update(|c| {
                        c.insert(id, card);
                    });
                }
            });
        }
    }
}

/// How long before a model without a card is asked about again.
const CARD_RETRY: Duration = Duration::from_secs(60);

/// The signed card of model `id`: from `relay`, else from the first provider of the model that
/// has one that opens (signed, about this model).
async fn find_card(handle: &NodeHandle, relay: PeerId, id: &ModelId) -> Option<ModelCard> {
    let ask = |peer: PeerId| {
        let handle = handle.clone();
        async move {
            let got = web_node::net::timeout(PROBE, fetch_card(&mut handle.control(), peer, id)).await;
            got.and_then(Result::ok).map(|(card, _, _)| card)
        }
    };
    if let Some(card) = ask(relay).await {
        return Some(card);
    }
    for peer in providers(handle, model_key(id)).await.ok()?.into_iter().filter(|p| *p != relay).take(4) {
        if let Some(card) = ask(peer).await {
            return Some(card);
        }
    }
    None
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm::new()
    }
}
