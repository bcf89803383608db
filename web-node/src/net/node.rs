//! The libp2p side of a node: its behaviour, and an event loop driven through a handle.
//!
//! [`Behaviour`] bundles Kademlia (our own protocol id, so the DHT holds only AI Torrent
//! peers), identify, ping, an optional circuit relay v2 server, and `libp2p-stream` for
//! sessions. The embedding program builds a `Swarm` with its transports, then
//! [`Node::new`] splits it into a [`Node`] (the event loop, to be spawned) and a cloneable
//! [`NodeHandle`] (dial, DHT queries and publications, stream opening). Every handle call
//! returns once the loop has answered, or with [`NetError::Stopped`] if the loop has ended.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, GetProvidersOk, GetRecordOk, InboundRequest, Mode, QueryId, QueryResult, RecordKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, identify, identity::Keypair, ping, relay, Multiaddr, PeerId, StreamProtocol, Swarm};

use super::ip_limit::{self, PeerIps};
use super::limits::NetLimits;
use super::log_limit::LogLimit;
use super::parts::StreamPool;

/// Kademlia protocol id of the AI Torrent DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ait/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/ait/1.0.0";
/// How long DHT records and provider records live without a refresh.
pub const RECORD_TTL: Duration = Duration::from_secs(120);
/// How often a server republishes its provider records.
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(30);
/// Largest DHT record value stored (a signed server record is about 1 KiB).
pub const MAX_RECORD_BYTES: usize = 8 << 10;

/// A node's part in the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A reachable node: DHT server and circuit relay server.
    Server,
    /// A node that only dials (a client, a browser tab): DHT client, no relay service.
    Client,
}

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    // The derive generates `BehaviourEvent`, whose variants carry no docs.
    #![allow(missing_docs)]
    use super::*;

    /// The network behaviour of every AI Torrent node.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Inbound connections per IP address (first: it denies before the others count).
        pub ip_limit: ip_limit::Behaviour,
        /// Connections in total and per peer.
        pub limits: connection_limits::Behaviour,
        /// The DHT.
        pub kad: kad::Behaviour<MemoryStore>,
        /// Exchanges listen addresses and protocols.
        pub identify: identify::Behaviour,
        /// Keeps connections alive and measures them.
        pub ping: ping::Behaviour,
        /// Circuit relay v2 server (servers only).
        pub relay: Toggle<relay::Behaviour>,
        /// Circuit relay v2 client: dials `/p2p-circuit` addresses, and holds reservations
        /// for nodes that cannot be dialed directly (browser tabs).
        pub relay_client: relay::client::Behaviour,
        /// Raw streams for inference sessions.
        pub stream: libp2p_stream::Behaviour,
    }

    impl Behaviour {
        /// The behaviour for `key` in `role` under `limits`, with the relay client that the
        /// swarm builder's `with_relay_client` made.
        pub fn new(key: &Keypair, role: Role, relay_client: relay::client::Behaviour, limits: &NetLimits) -> Behaviour {
            let peer = key.public().to_peer_id();
            let mut cfg = kad::Config::new(KAD_PROTOCOL);
            cfg.set_record_ttl(Some(RECORD_TTL))
                .set_provider_record_ttl(Some(RECORD_TTL))
                .set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
                .set_publication_interval(None)
                .set_query_timeout(Duration::from_secs(10))
                // Records from other peers are checked before they are stored (`dht_filter`).
                .set_record_filtering(kad::StoreInserts::FilterBoth);
            let store = MemoryStore::with_config(
                peer,
                MemoryStoreConfig {
                    max_records: limits.dht_max_records,
                    max_value_bytes: MAX_RECORD_BYTES,
                    max_providers_per_key: limits.dht_max_providers_per_key,
                    ..Default::default()
                },
            );
            let mut kad = kad::Behaviour::with_config(peer, store, cfg);
            kad.set_mode(Some(match role {
                Role::Server => Mode::Server,
                Role::Client => Mode::Client,
            }));
            Behaviour {
                ip_limit: ip_limit::Behaviour::new(
                    limits.max_pending_per_ip,
                    limits.max_established_per_ip,
                    limits.trusted_peers.clone(),
                ),
                limits: connection_limits::Behaviour::new(limits.connection_limits()),
                kad,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                        .with_agent_version(format!("ait/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
                relay: Toggle::from((role == Role::Server).then(|| relay::Behaviour::new(peer, limits.relay_config()))),
                relay_client,
                stream: libp2p_stream::Behaviour::new(),
            }
        }
    }
}

/// The addresses of another node worth dialing from this platform. Natively that drops
/// WebRTC-direct addresses whenever the node has others (TCP and QUIC are sturdier between
/// native nodes, and a dial races all known addresses, so a flaky WebRTC connection could win
/// the race); WebRTC-direct is for browsers.
fn dialable(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    if cfg!(target_arch = "wasm32") {
        return addrs;
    }
    let is_webrtc = |a: &Multiaddr| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::WebRTCDirect));
    if addrs.iter().all(is_webrtc) {
        return addrs;
    }
    addrs.into_iter().filter(|a| !is_webrtc(a)).collect()
}

/// A failure of a network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node's event loop has ended.
    #[error("the network node has stopped")]
    Stopped,
    /// Dialing failed.
    #[error("could not connect to {addr}: {reason}")]
    Dial {
        /// Address dialed.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No peer is known to start a DHT query from.
    #[error("no known peers: bootstrap from a relay first")]
    NoPeers,
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(String),
}

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, NetError>>),
    AddAddresses(PeerId, Vec<Multiaddr>),
    Bootstrap(oneshot::Sender<Result<(), NetError>>),
    Provide(Vec<RecordKey>),
    StopProviding(Vec<RecordKey>),
    PutRecord(RecordKey, Vec<u8>),
    GetProviders(RecordKey, mpsc::UnboundedSender<HashSet<PeerId>>),
    GetRecords(RecordKey, mpsc::UnboundedSender<Vec<u8>>),
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
    AddExternal(Multiaddr),
    ListenOn(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
}

/// A peer this node is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its id.
    pub peer: PeerId,
    /// Address of one connection to it.
    pub addr: Multiaddr,
    /// Its identify agent string (`ait/0.1.0`, `ait-web/0.1.0`), once known.
    pub agent: Option<String>,
    /// Whether it offers the circuit relay service.
    pub is_relay: bool,
}

/// Talks to a running [`Node`]. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    peer: PeerId,
    tx: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    ips: PeerIps,
    part_streams: StreamPool,
}

/// The event loop of a node. Spawn [`Node::run`].
pub struct Node {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    /// Add our listen addresses as external addresses (servers without `--external-addr`).
    announce_listen: bool,
    dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, NetError>>)>,
    providers: HashMap<QueryId, mpsc::UnboundedSender<HashSet<PeerId>>>,
    records: HashMap<QueryId, mpsc::UnboundedSender<Vec<u8>>>,
    bootstraps: HashMap<QueryId, oneshot::Sender<Result<(), NetError>>>,
    peers: HashMap<PeerId, PeerInfo>,
    log: LogLimit,
}

impl Node {
    /// Splits a swarm into its event loop and a handle. With `announce_listen`, every listen
    /// address becomes an external (advertised) address.
    pub fn new(swarm: Swarm<Behaviour>, announce_listen: bool) -> (Node, NodeHandle) {
        let (tx, rx) = mpsc::channel(64);
        let control = swarm.behaviour().stream.new_control();
        let ips = swarm.behaviour().ip_limit.peer_ips();
        let handle = NodeHandle { peer: *swarm.local_peer_id(), tx, control, ips, part_streams: StreamPool::default() };
        let node = Node {
            swarm,
            rx,
            announce_listen,
            dials: HashMap::new(),
            providers: HashMap::new(),
            records: HashMap::new(),
            bootstraps: HashMap::new(),
            peers: HashMap::new(),
            log: LogLimit::new(Duration::from_secs(10)),
        };
        (node, handle)
    }

    /// The swarm, for setup before [`Node::run`] (listening, external addresses).
    pub fn swarm_mut(&mut self) -> &mut Swarm<Behaviour> {
        &mut self.swarm
    }

    /// Runs until every [`NodeHandle`] is dropped.
    pub async fn run(mut self) {
        loop {
            futures::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.rx.next() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return,
                },
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match cmd {
            Command::Dial(addr, reply) => {
                let opts = DialOpts::from(addr.clone());
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial { addr: addr.to_string(), reason: e.to_string() }));
                    }
                }
            }
            Command::AddAddresses(peer, addrs) => {
                for a in dialable(addrs) {
                    self.swarm.add_peer_address(peer, a);
                }
            }
            Command::Bootstrap(reply) => match kad.bootstrap() {
                Ok(id) => {
                    self.bootstraps.insert(id, reply);
                }
                Err(_) => {
                    let _ = reply.send(Err(NetError::NoPeers));
                }
            },
            Command::Provide(keys) => {
                for k in keys {
                    if let Err(e) = kad.start_providing(k) {
                        tracing::warn!("cannot store provider record: {e}");
                    }
                }
            }
            Command::StopProviding(keys) => {
                for k in keys {
                    kad.stop_providing(&k);
                }
            }
            Command::PutRecord(key, value) => {
                if let Err(e) = kad.put_record(kad::Record::new(key, value), kad::Quorum::One) {
                    tracing::warn!("cannot store record: {e}");
                }
            }
            Command::GetProviders(key, reply) => {
                let id = kad.get_providers(key);
                self.providers.insert(id, reply);
            }
            Command::GetRecords(key, reply) => {
                let id = kad.get_record(key);
                self.records.insert(id, reply);
            }
            Command::Addresses(reply) => {
                let mut addrs: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
                if addrs.is_empty() {
                    addrs = self.swarm.listeners().cloned().collect();
                }
                let _ = reply.send(addrs);
            }
            Command::AddExternal(addr) => self.swarm.add_external_address(addr),
            Command::ListenOn(addr, reply) => {
                let r = self.swarm.listen_on(addr.clone()).map(|_| ());
                let _ = reply.send(r.map_err(|e| NetError::Dial { addr: addr.to_string(), reason: e.to_string() }));
            }
            Command::Peers(reply) => {
                let mut peers: Vec<PeerInfo> = self.peers.values().cloned().collect();
                peers.sort_by_key(|p| p.peer.to_string());
                let _ = reply.send(peers);
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
                if self.announce_listen {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                self.peers.entry(peer_id).or_insert_with(|| PeerInfo {
                    peer: peer_id,
                    addr: endpoint.get_remote_address().clone(),
                    agent: None,
                    is_relay: false,
                });
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    // A dialed bootstrap peer: make it a DHT contact right away.
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                    tracing::debug!(%peer_id, %addr, "connected");
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.peers.remove(&peer_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "listen address expired");
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                tracing::info!(?reason, "listener closed: {addresses:?}");
                for a in addresses {
                    self.swarm.remove_external_address(&a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(ev)) => tracing::info!("relay client: {ev:?}"),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => tracing::debug!("relay: {ev:?}"),
            SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial { addr: addr.to_string(), reason: error.to_string() }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.agent = Some(info.agent_version.clone());
                    p.is_relay = info.protocols.iter().any(|p| p.as_ref() == "/libp2p/circuit/relay/0.2.0/hop");
                }
                // Only DHT servers go into the routing table (a tab in client mode does not
                // announce the Kademlia protocol).
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for a in dialable(info.listen_addrs) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => self.on_query(id, result, step.last),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                self.on_inbound_store(request)
            }
            _ => {}
        }
    }

    /// Stores what another peer asks us to store, if [`dht_filter`](super::dht_filter)
    /// accepts it.
    fn on_inbound_store(&mut self, request: InboundRequest) {
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let (what, result) = match request {
            InboundRequest::PutRecord { source, record: Some(record), .. } => {
                let stored = store.get(&record.key).map(|r| r.value.clone());
                let checked =
                    super::dht_filter::check_record(&record.key, &record.value, stored.as_deref(), super::unix_ms());
                let r = match checked {
                    Ok(()) => store.put(record).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (source, r)
            }
            InboundRequest::AddProvider { record: Some(record) } => {
                let source = record.provider;
                let r = match super::dht_filter::check_provider_key(&record.key) {
                    Ok(()) => store.add_provider(record).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (source, r)
            }
            _ => return,
        };
        if let Err(e) = result {
            if let Some(held) = self.log.allow("dht-store") {
                tracing::debug!(peer = %what, held_back = held, "not stored: {e}");
            }
        }
    }

    /// Forgets a query (dropping its result channel) and stops it if it is still running.
    fn finish(&mut self, id: QueryId) {
        self.providers.remove(&id);
        self.records.remove(&id);
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
    }

    /// Dials the providers just found that are not connected. Their addresses (a tab's
    /// circuit address, say) are known only while the lookup that found them runs, so this is
    /// the moment to reach them; a fetcher that opens a stream to one afterwards finds the
    /// connection made (or being made).
    fn connect_providers(&mut self, providers: &HashSet<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let unconnected: Vec<PeerId> =
            providers.iter().copied().filter(|p| *p != me && !self.swarm.is_connected(p)).collect();
        for peer in unconnected {
            let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "cannot dial a provider: {e}");
            }
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(r) => {
                if !self.providers.contains_key(&id) {
                    return;
                }
                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = &r {
                    self.connect_providers(providers);
                }
                if let Some(tx) = self.providers.get(&id) {
                    if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
                        let _ = tx.unbounded_send(providers);
                    }
                    if last || tx.is_closed() {
                        self.finish(id);
                    }
                }
            }
            QueryResult::GetRecord(r) => {
                if let Some(tx) = self.records.get(&id) {
                    if let Ok(GetRecordOk::FoundRecord(rec)) = r {
                        let _ = tx.unbounded_send(rec.record.value);
                    }
                    if last || tx.is_closed() {
                        self.finish(id);
                    }
                }
            }
            QueryResult::Bootstrap(r) if last => {
                if let Some(reply) = self.bootstraps.remove(&id) {
                    let _ = reply.send(r.map(|_| ()).map_err(|e| NetError::Timeout(e.to_string())));
                }
            }
            QueryResult::StartProviding(Err(e)) | QueryResult::RepublishProvider(Err(e)) => {
                tracing::debug!("provider publication incomplete: {e}");
            }
            QueryResult::PutRecord(Err(e)) => tracing::debug!("record publication incomplete: {e}"),
            _ => {}
        }
    }
}

impl NodeHandle {
    /// The IP address `peer` is directly connected from (`None` if it is not connected, or
    /// only through a relay).
    pub fn peer_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        self.ips.get(peer)
    }

    /// Listens on `addr`; for `<relay addr>/p2p-circuit` this asks the relay for a
    /// reservation, and the circuit address appears among [`addresses`](Self::addresses) once
    /// the relay accepts.
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|tx| Command::ListenOn(addr, tx)).await?
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(Command::Peers).await
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// A stream control for opening and accepting protocol streams.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Part streams this node's fetches leave open for its next ones.
    pub fn part_streams(&self) -> &StreamPool {
        &self.part_streams
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.clone().send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    async fn tell(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.clone().send(cmd).await.map_err(|_| NetError::Stopped)
    }

    /// Connects to `addr`; returns the peer reached.
    pub async fn dial(&self, addr: Multiaddr, limit: Duration) -> Result<PeerId, NetError> {
        let what = format!("dialing {addr}");
        super::timeout(limit, self.ask(|tx| Command::Dial(addr, tx))).await.ok_or(NetError::Timeout(what))??
    }

    /// Tells the swarm where `peer` can be reached (natively, WebRTC-direct addresses are
    /// dropped when `peer` has others).
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.tell(Command::AddAddresses(peer, addrs)).await
    }

    /// Adds an address others should use to reach this node.
    pub async fn add_external_address(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.tell(Command::AddExternal(addr)).await
    }

    /// Fills the DHT routing table from the known peers.
    pub async fn bootstrap(&self) -> Result<(), NetError> {
        self.ask(Command::Bootstrap).await?
    }

    /// Announces this node as a provider of `keys` (republished automatically).
    pub async fn provide(&self, keys: Vec<RecordKey>) -> Result<(), NetError> {
        self.tell(Command::Provide(keys)).await
    }

    /// Stops providing `keys` (DHT peers forget this node when their copies expire).
    pub async fn stop_providing(&self, keys: Vec<RecordKey>) -> Result<(), NetError> {
        self.tell(Command::StopProviding(keys)).await
    }

    /// Stores a record in the DHT.
    pub async fn put_record(&self, key: RecordKey, value: Vec<u8>) -> Result<(), NetError> {
        self.tell(Command::PutRecord(key, value)).await
    }

    /// Providers of `key`: the query's results until it ends, or until no new result has come
    /// for `settle` after the first one (so one unresponsive DHT peer does not hold up the
    /// answer), or `limit` passes.
    pub async fn get_providers(
        &self,
        key: RecordKey,
        settle: Duration,
        limit: Duration,
    ) -> Result<HashSet<PeerId>, NetError> {
        let (tx, rx) = mpsc::unbounded();
        self.tell(Command::GetProviders(key, tx)).await?;
        Ok(collect_settled(rx, settle, limit).await.into_iter().flatten().collect())
    }

    /// Copies of the record under `key` (possibly several versions), collected like
    /// [`NodeHandle::get_providers`].
    pub async fn get_records(
        &self,
        key: RecordKey,
        settle: Duration,
        limit: Duration,
    ) -> Result<Vec<Vec<u8>>, NetError> {
        let (tx, rx) = mpsc::unbounded();
        self.tell(Command::GetRecords(key, tx)).await?;
        Ok(collect_settled(rx, settle, limit).await)
    }

    /// The addresses this node advertises (its listen addresses if none are set).
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(Command::Addresses).await
    }
}

/// Reads `rx` until it closes, `limit` passes, or it stays quiet for `settle` after a first item.
async fn collect_settled<T>(mut rx: mpsc::UnboundedReceiver<T>, settle: Duration, limit: Duration) -> Vec<T> {
    let deadline = web_time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(web_time::Instant::now());
        let wait = if out.is_empty() { left } else { left.min(settle) };
        match super::timeout(wait, rx.next()).await {
            Some(Some(v)) => out.push(v),
            _ => return out,
        }
    }
}
