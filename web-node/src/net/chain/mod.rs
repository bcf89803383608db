//! [`SwarmChain`]: a [`LayerChain`] whose layers run on remote servers.
//!
//! `begin` asks a [`Discovery`] for the servers of every block (by default [`DhtDiscovery`]:
//! DHT providers, each server's signed record, then a live status exchange that also measures
//! the round trip), picks the lowest-latency chain with [`routing::plan`](super::routing::plan),
//! and opens one session per hop. `forward` sends the hidden states through the hops in turn,
//! keeping every input it sent at each hop boundary (the embeddings at boundary 0 included).
//! When a hop fails or times out, its server is banned for a while, only that hop's span is
//! re-routed (possibly over several servers, or, when the span cannot be re-routed on its own,
//! the whole route from layer 0), the history is replayed to the new servers to rebuild their
//! KV caches, and the step goes on.
//!
//! Modules, one job each: `discovery` (finding servers: the [`Discovery`] seam and its DHT
//! implementation), `hop` (one hop's session: open, step, close, liveness), `recovery`
//! (failover and replay). This module holds the chain itself, its options and its errors; it
//! does not speak the wire protocol itself (the hops do).

mod audit;
mod discovery;
mod hop;
mod recovery;
pub mod staked;

pub use audit::{AuditCase, AuditError, AuditOutcome, Opinion, ReportRefused};
pub(crate) use discovery::unpredictable_rng;
pub use discovery::{probe_stream, sample_providers, DhtDiscovery, Discovery, Found, Query};
pub use hop::MAX_HIDDEN_RMS;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, U256};
use futures::future::join_all;
use libp2p::PeerId;
use web_time::Instant;

use super::frame::FrameError;
use super::node::{NetError, NodeHandle};
use super::protocol::{ErrorCode, ServerStatus};
use super::routing::{discount_claims, plan, Candidate, Hop};
use super::serve::{BoxStream, LocalServer};
use crate::client::LayerChain;
use crate::model::ModelId;
use crate::settle::{HopBill, Payer};
use crate::trust::{AuditDraw, Event, Reputation, SignedReceipt};
use hop::HopSession;

/// Timeouts and retry limits of a [`SwarmChain`].
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Opening a stream (dialing if needed) and the status exchange.
    pub connect_timeout: Duration,
    /// Shortest wait for one step on one server. The wait is the larger of this and
    /// [`ChainOptions::timeout_factor`] times the server's estimated step time, plus
    /// [`ChainOptions::per_token_timeout`] per token carried. A server that misses it is
    /// treated as failed unless it answers a status request within 0.5 s (then it is busy, and
    /// the wait goes on): a frozen server, or one whose death the transport does not report
    /// (QUIC), is noticed in about 1.5 s.
    pub step_timeout: Duration,
    /// Multiple of a server's estimated step time (round trip + compute at its load) to wait.
    pub timeout_factor: f64,
    /// Added to the step timeout for each token of a prefill or replay.
    pub per_token_timeout: Duration,
    /// DHT queries.
    pub discovery_timeout: Duration,
    /// Once results cover what is needed, how long to wait for more (DHT answers, server
    /// probes) before deciding. A dead peer costs at most this, not a full timeout.
    pub settle: Duration,
    /// How long a failed server is left out of routing.
    pub ban: Duration,
    /// Re-routes allowed within one `begin` or `forward` before giving up.
    pub max_reroutes: usize,
    /// Shortest patience with a server that misses a step's timeout but keeps answering
    /// status requests (busy with other sessions, or stalling on purpose): the wait for one
    /// frame ends at the larger of this and [`ChainOptions::busy_factor`] times the frame's
    /// timeout, then the server counts as failed.
    pub max_wait: Duration,
    /// Multiple of a frame's timeout that a busy server may take in all (see
    /// [`ChainOptions::max_wait`]): a long replay gets proportionally longer.
    pub busy_factor: f64,
    /// Longest time one `forward` may spend recovering from failures (re-routing and
    /// replaying, all attempts together) before it gives up.
    pub max_recovery: Duration,
    /// Most servers asked for their status per discovery; the providers found beyond that
    /// are sampled (see [`sample_providers`]).
    pub max_probes: usize,
    /// Dial announced addresses on loopback and private ranges even when this node has no
    /// connection on such a range (see [`AddrScope`](super::record::AddrScope)).
    pub allow_private_addrs: bool,
    /// Who pays servers that charge; `None`: only free servers are used.
    pub payer: Option<Arc<Payer>>,
    /// With a payer: pay only servers whose payee the tribunal can slash (`None`: any).
    pub staked: Option<Arc<staked::StakedOnly>>,
    /// What one AIT of price per token is worth in milliseconds of step time when choosing a
    /// route: 0 (the default) takes the fastest route whatever it costs; a large value
    /// ([`ChainOptions::CHEAPEST`]) the cheapest.
    pub ms_per_ait: f64,
    /// Told where a session waits while a full node queues it; `None`: only logged.
    pub on_queued: Option<QueueWatch>,
    /// Told each route chosen (before its first step) and what a token through it costs;
    /// `None`: only logged.
    pub on_route: Option<RouteWatch>,
    /// The node's ratings of servers ([`Reputation`]), updated by this chain's sessions,
    /// failures and audits and used by its routing. Clones of the options share it: give
    /// every chain of a node the same book (the default is a new, empty one).
    pub reputation: Reputation,
}

/// Told where a session waits in a full node's queue: the node, the place (1 for the next
/// in line) and how many wait.
#[derive(Clone)]
pub struct QueueWatch(pub Arc<dyn Fn(PeerId, u32, u32) + Send + Sync>);

impl std::fmt::Debug for QueueWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueWatch")
    }
}

/// Told the route a chain chose (before its first step, and again after each re-route) and
/// what one token through it costs (AIT, smallest unit; zero when every server is free).
#[derive(Clone)]
pub struct RouteWatch(pub Arc<RouteFn>);

/// What a [`RouteWatch`] calls: the route's hops and its price per token.
pub type RouteFn = dyn Fn(&[Hop], U256) + Send + Sync;

impl std::fmt::Debug for RouteWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteWatch")
    }
}

impl ChainOptions {
    /// A [`ChainOptions::ms_per_ait`] that makes price decide the route: a route cheaper by
    /// 10^-12 AIT per token (a millionth of the smallest price one can type in AIT to six
    /// places) outweighs a millisecond.
    pub const CHEAPEST: f64 = 1e12;
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            connect_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(1),
            timeout_factor: 10.0,
            per_token_timeout: Duration::from_millis(50),
            discovery_timeout: Duration::from_secs(15),
            settle: Duration::from_millis(300),
            ban: Duration::from_secs(60),
            max_reroutes: 4,
            max_wait: Duration::from_secs(10),
            busy_factor: 3.0,
            max_recovery: Duration::from_secs(60),
            max_probes: 32,
            allow_private_addrs: false,
            payer: None,
            staked: None,
            ms_per_ait: 0.0,
            on_queued: None,
            on_route: None,
            reputation: Reputation::new(),
        }
    }
}

/// Why the swarm could not run a step.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No set of reachable servers covers the layers.
    #[error("no chain of servers covers blocks [{start}, {end}) of model {model} ({found} server(s) found){after}")]
    NoRoute {
        /// Model (short id).
        model: String,
        /// First block uncovered range starts at.
        start: usize,
        /// End of the range.
        end: usize,
        /// Servers found for the range.
        found: usize,
        /// Empty, or what failed while routing and left a server out (", after: ...").
        after: String,
    },
    /// A server refused or failed a request.
    #[error("server {peer} refused: {message} ({code:?})")]
    Server {
        /// The server.
        peer: PeerId,
        /// Its reason code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// A server sent something that is not a valid answer.
    #[error("server {peer} broke the protocol: {detail}")]
    Protocol {
        /// The server.
        peer: PeerId,
        /// What was wrong.
        detail: String,
    },
    /// The stream to a server failed or timed out.
    #[error("server {peer}: {error}")]
    Stream {
        /// The server.
        peer: PeerId,
        /// The failure.
        error: FrameError,
    },
    /// Paying a server failed on this side (a voucher could not be signed).
    #[error("paying server {peer}: {detail}")]
    Payment {
        /// The server.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// A stream could not be opened.
    #[error("cannot reach server {peer}: {detail}")]
    Unreachable {
        /// The server.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// The local node failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Re-routing failed too often, or took longer than [`ChainOptions::max_recovery`].
    #[error("gave up after {attempts} failed servers; last error: {last}")]
    GaveUp {
        /// Failures.
        attempts: usize,
        /// The last one.
        last: Box<ChainError>,
    },
    /// `forward` without a sequence begun (or after one was dropped on a failure).
    #[error("forward before begin")]
    NotBegun,
    /// A step that does not fit the sequence: past its length, or of the wrong width.
    #[error("step of {n_tokens} tokens ({values} values) at position {pos} does not fit a session of {max_len} tokens of width {hidden}")]
    StepDoesNotFit {
        /// Tokens in the step.
        n_tokens: usize,
        /// Values given.
        values: usize,
        /// Position of the step.
        pos: usize,
        /// Length of the sequence.
        max_len: usize,
        /// The model's width.
        hidden: usize,
    },
}

impl ChainError {
    /// The server the error is about, if it is about one.
    fn peer(&self) -> Option<PeerId> {
        match self {
            ChainError::Server { peer, .. }
            | ChainError::Protocol { peer, .. }
            | ChainError::Stream { peer, .. }
            | ChainError::Unreachable { peer, .. }
            | ChainError::Payment { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// A server found for a model, with its verified record and live status.
#[derive(Clone, Debug)]
pub struct FoundServer {
    /// The routing view of it.
    pub candidate: Candidate,
    /// Its live status.
    pub status: ServerStatus,
}

/// Time spent on one hop of the current route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HopStats {
    /// Steps sent (frames).
    pub steps: usize,
    /// Tokens sent.
    pub tokens: usize,
    /// Wall time from sending a step to having its answer, summed.
    pub wall: Duration,
    /// Compute time the server reported, summed.
    pub compute: Duration,
    /// Protocol bytes sent and received for these steps (frames with their length prefix;
    /// transport overhead not included).
    pub bytes: u64,
}

/// A re-route that happened during a generation.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The server that failed.
    pub failed: PeerId,
    /// Its span.
    pub blocks: Range<usize>,
    /// The blocks routed anew: the failed span, or every block when the span could not be
    /// re-routed within its own bounds and the whole route was planned again.
    pub rerouted: Range<usize>,
    /// The servers that took over `rerouted`.
    pub replacements: Vec<PeerId>,
    /// Tokens replayed to rebuild their caches.
    pub replayed_tokens: usize,
    /// From the failure to the replacements holding the history.
    pub took: Duration,
    /// The failure.
    pub error: String,
}

/// Runs every layer of a model on remote servers found through a [`Discovery`] (by default
/// the DHT, [`DhtDiscovery`]).
pub struct SwarmChain<D = DhtDiscovery> {
    discovery: D,
    model: ModelId,
    n_layers: usize,
    hidden: usize,
    opts: ChainOptions,
    hops: Vec<HopSession>,
    /// Inputs sent at each hop boundary (keyed by first block), for every token so far.
    history: HashMap<usize, Vec<f32>>,
    pos: usize,
    max_len: usize,
    banned: HashMap<PeerId, Instant>,
    recoveries: Vec<Recovery>,
    watch: Arc<Mutex<Vec<Hop>>>,
    /// Servers with a verified record from earlier discoveries, and their blocks: re-routing
    /// tries them first.
    known: HashMap<PeerId, Range<usize>>,
    /// Hop timings of the last sequence, kept by `end`.
    last_stats: Vec<(Hop, HopStats)>,
    /// What an audit of each hop of the last sequence needs, kept by `end`.
    last_audit: Vec<audit::AuditCase>,
    /// Which sessions [`SwarmChain::run_audits`] audits; none without one.
    audit_draw: Option<AuditDraw>,
    /// Measured one-token step time of servers used so far (ms), and when it was measured:
    /// routing prefers it over their claims.
    measured: HashMap<PeerId, (f64, Instant)>,
    /// What the vouchers of the current sequence's sessions that ended (closed, or dropped
    /// after a failure) paid.
    paid_closed: U256,
    /// What the last sequence's vouchers paid in all, kept by `end`.
    last_paid: U256,
    /// What [`SwarmChain::free_left`] was when the last sequence ended.
    last_free_left: Option<u32>,
    /// What the vouchers of audit and recomputation replays paid, since the chain began.
    replays_paid: U256,
}

/// How long a measured step time stands in for a server's claim.
const MEASURED_FOR: Duration = Duration::from_secs(600);

impl SwarmChain<DhtDiscovery> {
    /// A chain for `model` (`n_layers` layers of width `hidden`) through `node`, finding
    /// servers in the DHT.
    pub fn new(node: NodeHandle, model: ModelId, n_layers: usize, hidden: usize, opts: ChainOptions) -> SwarmChain {
        SwarmChain::with_discovery(DhtDiscovery::new(node), model, n_layers, hidden, opts)
    }

    /// The node the chain runs through.
    pub fn node(&self) -> &NodeHandle {
        self.discovery.node()
    }

    /// Lets routing use this node's own server (reached in-process) for the blocks it holds.
    pub fn with_local(mut self, server: Arc<dyn LocalServer>) -> SwarmChain {
        self.discovery = self.discovery.with_local(server);
        self
    }
}

impl<D: Discovery> SwarmChain<D> {
    /// A chain for `model` (`n_layers` layers of width `hidden`) over the servers `discovery`
    /// finds.
    pub fn with_discovery(
        discovery: D,
        model: ModelId,
        n_layers: usize,
        hidden: usize,
        opts: ChainOptions,
    ) -> SwarmChain<D> {
        SwarmChain {
            discovery,
            model,
            n_layers,
            hidden,
            opts,
            hops: Vec::new(),
            history: HashMap::new(),
            pos: 0,
            max_len: 0,
            banned: HashMap::new(),
            recoveries: Vec::new(),
            watch: Arc::default(),
            known: HashMap::new(),
            last_stats: Vec::new(),
            last_audit: Vec::new(),
            audit_draw: None,
            measured: HashMap::new(),
            paid_closed: U256::ZERO,
            last_paid: U256::ZERO,
            last_free_left: None,
            replays_paid: U256::ZERO,
        }
    }

    /// The current route.
    pub fn route(&self) -> Vec<Hop> {
        self.hops.iter().map(HopSession::hop).collect()
    }

    /// Every hop's checked receipts for the steps it answered, in route order, for the
    /// current sequence, or the last one after `end` (the receipts of a hop replaced after a
    /// failure go with it).
    pub fn receipts(&self) -> Vec<(Hop, Vec<SignedReceipt>)> {
        if self.hops.is_empty() {
            return self.last_audit.iter().map(|c| (c.hop.clone(), c.receipts.clone())).collect();
        }
        self.hops.iter().map(|h| (h.hop(), h.receipts().to_vec())).collect()
    }

    /// Per-hop timing of the current route since `begin` (network + queueing = wall - compute),
    /// or of the last one after `end`.
    pub fn hop_stats(&self) -> Vec<(Hop, HopStats)> {
        if self.hops.is_empty() {
            return self.last_stats.clone();
        }
        self.hops.iter().map(|h| (h.hop(), h.stats().clone())).collect()
    }

    /// Tokens the current sequence has run through the chain so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// What the vouchers of the current sequence paid so far (AIT, smallest unit), or of the
    /// last one after `end`: what a generation cost. Zero when every server was free.
    pub fn paid(&self) -> U256 {
        if self.hops.is_empty() {
            return self.last_paid;
        }
        self.hops.iter().fold(self.paid_closed, |a, h| a + h.paid())
    }

    /// What the replays of audits and fraud-report recomputations paid since the chain
    /// began (AIT, smallest unit): their sessions are not part of any sequence, so
    /// [`SwarmChain::paid`] leaves them out.
    pub fn replays_paid(&self) -> U256 {
        self.replays_paid
    }

    /// On a route through free tiers: the fewest tokens left of this client's daily quota
    /// at any of its servers, as they said when the sessions opened less the tokens run since
    /// (of the last sequence after `end`). `None` when no hop runs on a free tier.
    pub fn free_left(&self) -> Option<u32> {
        if self.hops.is_empty() {
            return self.last_free_left;
        }
        self.hops.iter().filter_map(HopSession::free_left).min()
    }

    /// What one token through the current route costs (AIT, smallest unit): each paid hop's
    /// price times its layers.
    pub fn price_per_token(&self) -> U256 {
        self.hops.iter().fold(U256::ZERO, |a, h| a + h.price_per_token())
    }

    /// A shared view of the current route, updated whenever it changes (for dashboards and
    /// tests that watch a generation from outside).
    pub fn route_watch(&self) -> Arc<Mutex<Vec<Hop>>> {
        self.watch.clone()
    }

    /// Re-routes so far.
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// Whether `peer` is banned from this chain's routes now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.get(peer).is_some_and(|t| t.elapsed() < self.opts.ban)
    }

    fn ban(&mut self, peer: PeerId) {
        tracing::warn!(%peer, "banning server for {:?}", self.opts.ban);
        self.banned.insert(peer, Instant::now());
    }

    /// Bans a server that failed a step (or did not answer) and counts the failure against
    /// its record.
    fn fail(&mut self, peer: PeerId) {
        self.ban(peer);
        if Some(peer) != self.discovery.local_peer() {
            self.opts.reputation.record(peer, Event::Failed);
        }
    }

    /// Discovers servers for `range`, plans, and opens a session on every hop. Servers that
    /// fail to open are banned and the plan is redone.
    /// With `fast`, servers already known are tried before asking the whole network.
    async fn route_span(
        &mut self,
        range: Range<usize>,
        failures: &mut usize,
        fast: bool,
    ) -> Result<Vec<HopSession>, ChainError> {
        let mut known_only = fast;
        // What left a server out of this routing, for the error when nothing else covers.
        let mut after = String::new();
        loop {
            let mut found = self.discover(range.clone(), known_only).await?;
            if let (Some(staked), Some(_)) = (self.opts.staked.clone(), &self.opts.payer) {
                drop_unslashable(&staked, self.discovery.local_peer(), &mut found).await;
            }
            let candidates = self.candidates(&found);
            let Some(hops) = plan(&candidates, range.clone()) else {
                if known_only {
                    known_only = false;
                    continue;
                }
                return Err(ChainError::NoRoute {
                    model: self.model.short(),
                    start: range.start,
                    end: range.end,
                    found: candidates.len(),
                    after,
                });
            };
            let expected: HashMap<PeerId, f64> = candidates.iter().map(|c| (c.peer, c.cost_ms())).collect();
            let terms: HashMap<PeerId, _> =
                found.iter().filter_map(|(f, _)| Some((f.candidate.peer, f.status.pay.clone()?))).collect();
            let mut streams: HashMap<PeerId, BoxStream> =
                found.into_iter().map(|(f, s)| (f.candidate.peer, s)).collect();
            let mut opened = Vec::new();
            let mut failed = None;
            for hop in hops {
                let Some(stream) = streams.remove(&hop.peer) else { continue };
                let expected_ms = expected.get(&hop.peer).copied().unwrap_or(0.0);
                let terms = terms.get(&hop.peer).cloned();
                match self.open_hop(hop, stream, expected_ms, terms, self.max_len).await {
                    Ok(session) => opened.push(session),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = failed else { return Ok(opened) };
            let e = self.count_failure(e, failures)?;
            tracing::warn!("opening the route failed, re-planning: {e}");
            after = format!(", after: {e}");
        }
    }

    /// Opens a session of up to `max_len` tokens for `hop` over `stream`, paid on the node's
    /// `terms` when it charges and this chain has a payer (this node's own server does not
    /// charge it). Takes `&mut self` although it changes nothing: a future holding `&self`
    /// would need the chain to be `Sync`, which its streams are not.
    async fn open_hop(
        &mut self,
        hop: Hop,
        stream: BoxStream,
        expected_ms: f64,
        terms: Option<crate::settle::PayTerms>,
        max_len: usize,
    ) -> Result<HopSession, ChainError> {
        let local = self.discovery.local_peer() == Some(hop.peer);
        let bill = match (terms, &self.opts.payer) {
            (Some(t), Some(payer)) if !local => {
                let layers = hop.blocks.len() as u64;
                let bill = HopBill::new(payer, t, self.model.0.into(), layers, crate::settle::unix_s())
                    .map_err(|e| ChainError::Payment { peer: hop.peer, detail: e.to_string() })?;
                Some((bill, payer.clone()))
            }
            _ => None,
        };
        let (limit, watch) = (self.opts.connect_timeout, self.opts.on_queued.as_ref());
        HopSession::open(hop, stream, self.model, max_len, expected_ms, limit, bill, watch).await
    }

    /// The routing view of `found`: each server's measured step time when known, this node's
    /// own server marked, claims discounted ([`discount_claims`]).
    fn candidates(&mut self, found: &[(FoundServer, BoxStream)]) -> Vec<Candidate> {
        self.measured.retain(|_, (_, at)| at.elapsed() < MEASURED_FOR);
        let local = self.discovery.local_peer();
        let payer = self.opts.payer.as_deref();
        let mut candidates: Vec<Candidate> = found
            .iter()
            // A server that charges is used with a payer that pays on its escrow and accepts
            // its price, and with terms that carry a token through its span; without a payer,
            // on its free tier, if it has one.
            .filter(|(f, _)| {
                Some(f.candidate.peer) == local
                    || f.status.pay.as_ref().is_none_or(|t| match payer {
                        Some(p) => p.accepts(t) && t.check(f.candidate.blocks.len() as u64).is_ok(),
                        None => t.free_tokens_per_day > 0,
                    })
            })
            .map(|(f, _)| Candidate {
                measured_ms: self.measured.get(&f.candidate.peer).map(|(ms, _)| *ms),
                local: Some(f.candidate.peer) == local,
                // This node's own server is as trusted as a server can be.
                trust: match Some(f.candidate.peer) == local {
                    true => 1.0 - crate::trust::reputation::MAX_DISCOUNT,
                    false => self.opts.reputation.trust(&f.candidate.peer),
                },
                price_ms: match (&f.status.pay, Some(f.candidate.peer) == local) {
                    (Some(t), false) if payer.is_some() => {
                        crate::settle::ait_f64(t.cost(f.candidate.blocks.len() as u64)) * self.opts.ms_per_ait.max(0.0)
                    }
                    _ => 0.0,
                },
                ..f.candidate.clone()
            })
            .collect();
        discount_claims(&mut candidates);
        candidates
    }

    /// Counts a failure during the current step and bans the server it names; past
    /// [`ChainOptions::max_reroutes`] failures it becomes [`ChainError::GaveUp`].
    fn count_failure(&mut self, e: ChainError, failures: &mut usize) -> Result<ChainError, ChainError> {
        *failures += 1;
        match (e.peer(), &e) {
            // A payment this client could not make is not the server's failure.
            (Some(p), ChainError::Payment { .. }) => self.ban(p),
            (Some(p), _) => self.fail(p),
            (None, _) => {}
        }
        if *failures > self.opts.max_reroutes {
            return Err(ChainError::GaveUp { attempts: *failures, last: Box::new(e) });
        }
        Ok(e)
    }

    fn log_route(&self) {
        let hops = self.route();
        let price = self.price_per_token();
        if let Some(RouteWatch(tell)) = &self.opts.on_route {
            tell(&hops, price);
        }
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = hops;
        let route: Vec<String> = self.hops.iter().map(|h| h.to_string()).collect();
        if price.is_zero() {
            tracing::info!("route: {}", route.join(" -> "));
        } else {
            tracing::info!("route: {} ({} AIT per token)", route.join(" -> "), crate::settle::format_ait(price));
        }
    }
}

/// Closes every session of `hops` at once (each close waits at most a second); returns what
/// their vouchers paid in all.
async fn close_all(hops: Vec<HopSession>) -> U256 {
    join_all(hops.into_iter().map(HopSession::close)).await.into_iter().fold(U256::ZERO, |a, b| a + b)
}

impl<D: Discovery> LayerChain for SwarmChain<D> {
    type Error = ChainError;

    async fn begin(&mut self, max_len: usize) -> Result<(), ChainError> {
        self.end().await?;
        self.max_len = max_len;
        let mut failures = 0;
        self.hops = self.route_span(0..self.n_layers, &mut failures, false).await?;
        self.log_route();
        Ok(())
    }

    async fn forward(&mut self, hidden: &[f32], n_tokens: usize) -> Result<Vec<f32>, ChainError> {
        if self.hops.is_empty() {
            return Err(ChainError::NotBegun);
        }
        if self.pos + n_tokens > self.max_len || hidden.len() != n_tokens * self.hidden {
            return Err(ChainError::StepDoesNotFit {
                n_tokens,
                values: hidden.len(),
                pos: self.pos,
                max_len: self.max_len,
                hidden: self.hidden,
            });
        }
        let mut x = hidden.to_vec();
        let mut failures = 0;
        let mut first_failure: Option<Instant> = None;
        let mut i = 0;
        while i < self.hops.len() {
            let hop = &mut self.hops[i];
            match hop.step(self.pos, &x, n_tokens, self.hidden, &self.opts, &self.discovery).await {
                Ok(out) => {
                    if let Some(ms) = hop.measured_ms() {
                        self.measured.insert(hop.peer(), (ms, Instant::now()));
                    }
                    let start = hop.blocks().start;
                    self.history.entry(start).or_default().extend_from_slice(&x);
                    x = out;
                    i += 1;
                }
                Err(e) => {
                    failures += 1;
                    let failed = hop.peer();
                    let budget = self.opts.max_recovery;
                    let left = budget.saturating_sub(first_failure.get_or_insert_with(Instant::now).elapsed());
                    let result = if failures > self.opts.max_reroutes || left.is_zero() {
                        Err(ChainError::GaveUp { attempts: failures, last: Box::new(e) })
                    } else {
                        // Each part of a recovery has its own timeout; this bounds them all.
                        let recovery = crate::net::timeout(left, self.recover(i, e, &mut failures)).await;
                        recovery.unwrap_or_else(|| {
                            let error = FrameError::Timeout(budget);
                            Err(ChainError::GaveUp {
                                attempts: failures,
                                last: Box::new(ChainError::Stream { peer: failed, error }),
                            })
                        })
                    };
                    match result {
                        // The replacements of hop `i` hold the history: go on from there.
                        Ok(recovery::Resume::Hop) => {}
                        // A new route from layer 0 holds the history: run this step from the
                        // start (its inputs at the new boundaries are not known).
                        Ok(recovery::Resume::Start) => {
                            i = 0;
                            x = hidden.to_vec();
                        }
                        Err(e) => {
                            // The sequence is broken (a gap in the route, history ahead of
                            // `pos`): drop it, so a later `forward` fails instead of skipping
                            // layers.
                            self.end().await?;
                            return Err(e);
                        }
                    }
                    self.log_route();
                }
            }
        }
        self.pos += n_tokens;
        Ok(x)
    }

    async fn end(&mut self) -> Result<(), ChainError> {
        if !self.hops.is_empty() {
            // Every hop that answered a step served its session to the end.
            for h in self.hops.iter().filter(|h| !h.receipts().is_empty()) {
                if Some(h.peer()) != self.discovery.local_peer() {
                    self.opts.reputation.record(h.peer(), Event::Served);
                }
            }
            self.last_stats = self.hop_stats();
            self.last_audit = self.audit_cases_now();
            self.last_free_left = self.free_left();
            let paid = close_all(std::mem::take(&mut self.hops)).await;
            self.last_paid = self.paid_closed + paid;
        }
        self.paid_closed = U256::ZERO;
        self.history.clear();
        self.pos = 0;
        Ok(())
    }
}

/// With a payer that pays only slashable servers (`staked`): drops from `found` the servers
/// that charge and are not (never `local`, this node's own).
async fn drop_unslashable(
    staked: &staked::StakedOnly,
    local: Option<PeerId>,
    found: &mut Vec<(FoundServer, BoxStream)>,
) {
    // The payees first: the servers' streams are not held across the reads.
    let payees: Vec<(Option<Address>, PeerId)> = found
        .iter()
        .map(|(f, _)| {
            let payee = f.status.pay.as_ref().map(|t| t.node).filter(|_| Some(f.candidate.peer) != local);
            (payee, f.candidate.peer)
        })
        .collect();
    let mut keep = Vec::with_capacity(payees.len());
    for (payee, peer) in payees {
        keep.push(match payee {
            Some(payee) => staked.slashable(payee, peer).await,
            None => true,
        });
    }
    let mut keep = keep.into_iter();
    found.retain(|_| keep.next().unwrap_or(true));
}
