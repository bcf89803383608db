//! [`SwarmChain`]: a [`LayerChain`] whose layers run on servers found through the DHT.
//!
//! `begin` discovers the servers of every block (provider records, then each server's signed
//! record, then a live status exchange that also measures the round trip), picks the
//! lowest-latency chain with [`routing::plan`](super::routing::plan), and opens one session
//! stream per hop. `forward` sends the hidden states through the hops in turn, keeping every
//! input it sent at each hop boundary. When a hop fails or times out, its server is banned for
//! a while, only that hop's span is re-routed (possibly over several servers), the span's
//! history is replayed to the replacements to rebuild their KV caches, and the step goes on.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use web_time::Instant;

use super::frame::{read_frame, write_frame, FrameError, MAX_FRAME};
use super::node::{NetError, NodeHandle};
use super::protocol::{ErrorCode, Request, Response, ServerStatus, PROTOCOL};
use super::record::{block_key, server_key, ServerRecord};
use super::routing::{plan, Candidate, Hop};
use crate::client::{ClientError, LayerChain};
use crate::model::ModelId;

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
    /// Longest wait for one step from a server that keeps answering status requests (busy
    /// with other sessions, not dead).
    pub max_wait: Duration,
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
            max_wait: Duration::from_secs(300),
        }
    }
}

/// Why the swarm could not run a step.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// No set of reachable servers covers the layers.
    #[error("no chain of servers covers blocks [{start}, {end}) of model {model} ({found} server(s) found)")]
    NoRoute {
        /// Model (short id).
        model: String,
        /// First block uncovered range starts at.
        start: usize,
        /// End of the range.
        end: usize,
        /// Servers found for the range.
        found: usize,
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
    /// Re-routing failed too often.
    #[error("gave up after {attempts} failed servers; last error: {last}")]
    GaveUp {
        /// Failures.
        attempts: usize,
        /// The last one.
        last: Box<ChainError>,
    },
    /// `forward` without `begin`, or past the session length.
    #[error("{0}")]
    State(String),
}

impl ChainError {
    fn peer(&self) -> Option<PeerId> {
        match self {
            ChainError::Server { peer, .. }
            | ChainError::Protocol { peer, .. }
            | ChainError::Stream { peer, .. }
            | ChainError::Unreachable { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// A byte stream carrying one session: a libp2p stream, or an in-process pipe to this node's
/// own server.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> SessionStream for T {}

/// A boxed [`SessionStream`].
pub type BoxStream = Box<dyn SessionStream>;

/// Blocks this node serves itself: the chain reaches them without the network.
pub trait LocalServer: Send + Sync {
    /// Opens a session stream to it (served by [`Server::serve_local`](super::serve::Server::serve_local)).
    fn connect(&self) -> BoxStream;
}

/// A server found for a model, with its verified record and live status.
#[derive(Clone, Debug)]
pub struct FoundServer {
    /// The routing view of it.
    pub candidate: Candidate,
    /// Its live status.
    pub status: ServerStatus,
}

/// An open session on one server.
struct HopSession {
    peer: PeerId,
    blocks: Range<usize>,
    stream: BoxStream,
    /// Estimated time of one decode step, from routing.
    expected_ms: f64,
    stats: HopStats,
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
    /// The servers that took over.
    pub replacements: Vec<PeerId>,
    /// Tokens replayed to rebuild their caches.
    pub replayed_tokens: usize,
    /// From the failure to the replacements holding the history.
    pub took: Duration,
    /// The failure.
    pub error: String,
}

/// Runs every layer of a model on remote servers.
pub struct SwarmChain {
    node: NodeHandle,
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
    /// Servers with a verified record from the last discovery: re-routing tries them first.
    known: HashMap<PeerId, Candidate>,
    /// Hop timings of the last sequence, kept by `end`.
    last_stats: Vec<(Hop, HopStats)>,
    /// This node's own server, if it serves blocks of the model.
    local: Option<Arc<dyn LocalServer>>,
}

impl SwarmChain {
    /// A chain for `model` (`n_layers` layers of width `hidden`) through `node`.
    pub fn new(node: NodeHandle, model: ModelId, n_layers: usize, hidden: usize, opts: ChainOptions) -> SwarmChain {
        SwarmChain {
            node,
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
            local: None,
        }
    }

    /// The current route.
    pub fn route(&self) -> Vec<Hop> {
        self.hops.iter().map(|h| Hop { peer: h.peer, blocks: h.blocks.clone() }).collect()
    }

    /// Lets routing use this node's own server (reached in-process) for the blocks it holds.
    pub fn with_local(mut self, server: Arc<dyn LocalServer>) -> SwarmChain {
        self.local = Some(server);
        self
    }

    /// Per-hop timing of the current route since `begin` (network + queueing = wall - compute),
    /// or of the last one after `end`.
    pub fn hop_stats(&self) -> Vec<(Hop, HopStats)> {
        if self.hops.is_empty() {
            return self.last_stats.clone();
        }
        self.hops.iter().map(|h| (Hop { peer: h.peer, blocks: h.blocks.clone() }, h.stats.clone())).collect()
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

    fn is_banned(&mut self, peer: &PeerId) -> bool {
        let ban = self.opts.ban;
        self.banned.retain(|_, t| t.elapsed() < ban);
        self.banned.contains_key(peer)
    }

    fn ban(&mut self, peer: PeerId) {
        tracing::warn!(%peer, "banning server for {:?}", self.opts.ban);
        self.banned.insert(peer, Instant::now());
    }

    /// Finds the servers of blocks `range`: DHT providers, their signed records, and a live
    /// status exchange. Returns them with the streams of that exchange (reused for sessions).
    /// With `known_only`, only servers of the last discovery are asked (no DHT queries).
    pub async fn discover(
        &mut self,
        range: Range<usize>,
        known_only: bool,
    ) -> Result<Vec<(FoundServer, BoxStream)>, ChainError> {
        let (settle, limit) = (self.opts.settle, self.opts.discovery_timeout);
        let mut peers: HashSet<PeerId> = HashSet::new();
        if known_only {
            peers.extend(
                self.known
                    .values()
                    .filter(|c| c.blocks.start < range.end && c.blocks.end > range.start)
                    .map(|c| c.peer),
            );
        } else {
            let queries = range.clone().map(|b| self.node.get_providers(block_key(&self.model, b), settle, limit));
            for found in join_all(queries).await {
                peers.extend(found?);
            }
        }
        peers.remove(&self.node.peer_id());
        let peers: Vec<PeerId> = peers.into_iter().filter(|p| !self.is_banned(p)).collect();
        let ctx = Arc::new(ProbeCtx {
            node: self.node.clone(),
            model: self.model,
            n_layers: self.n_layers,
            opts: self.opts.clone(),
            local: self.local.clone(),
            known: self.known.iter().map(|(p, c)| (*p, c.blocks.clone())).collect(),
        });
        let mut probes: FuturesUnordered<_> =
            peers.iter().map(|&peer| ctx.clone().probe(peer, range.clone(), known_only).boxed()).collect();
        let me = self.node.peer_id();
        if self.local.is_some() && !self.is_banned(&me) {
            probes.push(ctx.clone().probe(me, range.clone(), true).boxed());
        }
        let mut found: Vec<(FoundServer, BoxStream)> = Vec::new();
        let mut unreachable = Vec::new();
        let deadline = Instant::now() + limit;
        let mut settle_at: Option<Instant> = None;
        loop {
            let until = settle_at.unwrap_or(deadline).min(deadline);
            let Some(next) = super::timeout(until.saturating_duration_since(Instant::now()), probes.next()).await
            else {
                break;
            };
            match next {
                None => break,
                Some(Ok(Some(f))) => found.push(f),
                Some(Ok(None)) => {}
                Some(Err(peer)) => unreachable.push(peer),
            }
            if settle_at.is_none() {
                let cands: Vec<Candidate> = found.iter().map(|(f, _)| f.candidate.clone()).collect();
                if plan(&cands, range.clone()).is_some() {
                    settle_at = Some(Instant::now() + settle);
                }
            }
        }
        drop(probes);
        for peer in unreachable {
            self.ban(peer);
        }
        for (f, _) in &found {
            self.known.insert(f.candidate.peer, f.candidate.clone());
        }
        tracing::debug!("found {} server(s) for blocks [{}, {})", found.len(), range.start, range.end);
        Ok(found)
    }

    /// Discovers servers for `range`, plans, and opens a session on every hop. Servers that
    /// fail to open are banned and the plan is redone.
    /// With `fast`, servers already known are tried before asking the DHT.
    async fn route_span(
        &mut self,
        range: Range<usize>,
        failures: &mut usize,
        fast: bool,
    ) -> Result<Vec<HopSession>, ChainError> {
        let mut known_only = fast;
        loop {
            let found = self.discover(range.clone(), known_only).await?;
            let candidates: Vec<Candidate> = found.iter().map(|(f, _)| f.candidate.clone()).collect();
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
                });
            };
            let expected: HashMap<PeerId, f64> = candidates.iter().map(|c| (c.peer, c.cost_ms())).collect();
            let mut streams: HashMap<PeerId, BoxStream> =
                found.into_iter().map(|(f, s)| (f.candidate.peer, s)).collect();
            let mut opened = Vec::new();
            let mut failed = None;
            for hop in hops {
                let Some(mut stream) = streams.remove(&hop.peer) else { continue };
                let req = Request::Open {
                    model: self.model,
                    start: hop.blocks.start as u32,
                    end: hop.blocks.end as u32,
                    max_len: self.max_len as u32,
                };
                match exchange(hop.peer, &mut stream, &req, self.opts.connect_timeout).await {
                    Ok(Response::Opened { .. }) => {
                        let expected_ms = expected.get(&hop.peer).copied().unwrap_or(0.0);
                        opened.push(HopSession {
                            peer: hop.peer,
                            blocks: hop.blocks,
                            stream,
                            expected_ms,
                            stats: HopStats::default(),
                        })
                    }
                    Ok(other) => {
                        failed =
                            Some(ChainError::Protocol { peer: hop.peer, detail: format!("answered {other:?} to open") })
                    }
                    Err(e) => failed = Some(e),
                }
                if failed.is_some() {
                    break;
                }
            }
            match failed {
                None => return Ok(opened),
                Some(e) => {
                    *failures += 1;
                    if let Some(p) = e.peer() {
                        self.ban(p);
                    }
                    if *failures > self.opts.max_reroutes {
                        return Err(ChainError::GaveUp { attempts: *failures, last: Box::new(e) });
                    }
                    tracing::warn!("opening the route failed, re-planning: {e}");
                }
            }
        }
    }

    /// Sends `n` tokens at position `pos` through one hop, splitting into frames that fit.
    async fn step_hop(&mut self, i: usize, pos: usize, x: &[f32], n: usize) -> Result<Vec<f32>, ChainError> {
        let dim = self.hidden;
        let per_frame = ((MAX_FRAME - 64) / (dim * 4)).max(1);
        let per_token = self.opts.per_token_timeout;
        let max_wait = self.opts.max_wait;
        let (node, local) = (self.node.clone(), self.local.clone());
        let hop = &mut self.hops[i];
        let expected = Duration::from_secs_f64((hop.expected_ms * self.opts.timeout_factor / 1e3).clamp(0.0, 3600.0));
        let step_timeout = self.opts.step_timeout.max(expected);
        let peer = hop.peer;
        let mut out = Vec::with_capacity(x.len());
        let mut done = 0;
        while done < n {
            let take = per_frame.min(n - done);
            let hidden = x[done * dim..(done + take) * dim].to_vec();
            let req = Request::Step { pos: (pos + done) as u32, n_tokens: take as u32, hidden };
            let limit = step_timeout + per_token * take as u32;
            let started = Instant::now();
            let io = |error| ChainError::Stream { peer, error };
            let encoded = req.encode();
            super::timeout(limit, write_frame(&mut hop.stream, &encoded))
                .await
                .ok_or(io(FrameError::Timeout(limit)))?
                .map_err(io)?;
            // A server busy with other sessions' work still answers a status request (the
            // compute queue is not involved); a frozen or dead one does not. Keep waiting while
            // it is alive, up to `max_wait`.
            let frame = loop {
                match read_frame(&mut hop.stream, MAX_FRAME, limit, limit).await {
                    Ok(f) => break f,
                    Err(FrameError::Timeout(_)) if started.elapsed() < max_wait && alive(&node, &local, peer).await => {
                        tracing::debug!(%peer, "step slow but server alive; waiting");
                    }
                    Err(e) => return Err(io(e)),
                }
            };
            let reply = Response::decode(&frame).map_err(|e| ChainError::Protocol { peer, detail: e.to_string() })?;
            if let Response::Error { code, message } = reply {
                return Err(ChainError::Server { peer, code, message });
            }
            match reply {
                Response::Hidden { n_tokens, compute_us, hidden }
                    if n_tokens as usize == take && hidden.len() == take * dim =>
                {
                    out.extend_from_slice(&hidden);
                    hop.stats.steps += 1;
                    hop.stats.tokens += take;
                    hop.stats.wall += started.elapsed();
                    hop.stats.compute += Duration::from_micros(u64::from(compute_us));
                    hop.stats.bytes += (encoded.len() + frame.len() + 8) as u64;
                }
                other => {
                    return Err(ChainError::Protocol {
                        peer,
                        detail: format!("expected {take} rows of hidden states, got {}", describe(&other)),
                    })
                }
            }
            done += take;
        }
        Ok(out)
    }

    /// Replaces hop `i` after a failure: ban, route its span again, replay its history. A
    /// replacement that fails during the replay is banned in turn and the span routed again.
    async fn recover(&mut self, i: usize, error: ChainError, failures: &mut usize) -> Result<(), ChainError> {
        let started = Instant::now();
        let failed = self.hops[i].peer;
        let span = self.hops[i].blocks.clone();
        tracing::warn!(%failed, "blocks [{}, {}) failed: {error}", span.start, span.end);
        self.ban(failed);
        self.hops.remove(i);
        let n = self.pos;
        let replacements = loop {
            let new = self.route_span(span.clone(), failures, true).await?;
            let n_new = new.len();
            let replacements: Vec<PeerId> = new.iter().map(|h| h.peer).collect();
            for (k, h) in new.into_iter().enumerate() {
                self.hops.insert(i + k, h);
            }
            // Replay: push the span's input history through the new hops, recording the
            // inputs at the new boundaries.
            let mut x = self.history.get(&span.start).cloned().unwrap_or_default();
            let mut replay_error = None;
            for k in i..i + n_new {
                if n == 0 {
                    break;
                }
                let start = self.hops[k].blocks.start;
                self.history.insert(start, x.clone());
                match self.step_hop(k, 0, &x, n).await {
                    Ok(out) => x = out,
                    Err(e) => {
                        replay_error = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = replay_error else { break replacements };
            *failures += 1;
            if let Some(p) = e.peer() {
                self.ban(p);
            }
            self.hops.drain(i..i + n_new);
            if *failures > self.opts.max_reroutes {
                return Err(ChainError::GaveUp { attempts: *failures, last: Box::new(e) });
            }
            tracing::warn!("replay to the replacement failed, routing again: {e}");
        };
        let took = started.elapsed();
        tracing::info!(
            "re-routed blocks [{}, {}) from {failed} to {} in {:.1} ms ({n} tokens replayed)",
            span.start,
            span.end,
            replacements.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            took.as_secs_f64() * 1e3
        );
        self.recoveries.push(Recovery {
            failed,
            blocks: span,
            replacements,
            replayed_tokens: n,
            took,
            error: error.to_string(),
        });
        Ok(())
    }

    fn log_route(&self) {
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = self.route();
        let route: Vec<String> =
            self.hops.iter().map(|h| format!("[{}, {}) {}", h.blocks.start, h.blocks.end, h.peer)).collect();
        tracing::info!("route: {}", route.join(" -> "));
    }
}

/// Whether `peer` answers a status request within half a second (over a fresh stream, or the
/// in-process pipe for this node's own server).
async fn alive(node: &NodeHandle, local: &Option<Arc<dyn LocalServer>>, peer: PeerId) -> bool {
    let limit = Duration::from_millis(500);
    let mut stream: BoxStream = match local {
        Some(l) if peer == node.peer_id() => l.connect(),
        _ => {
            let mut control = node.control();
            match super::timeout(limit, control.open_stream(peer, PROTOCOL)).await {
                Some(Ok(s)) => Box::new(s),
                _ => return false,
            }
        }
    };
    matches!(exchange(peer, &mut stream, &Request::Info, limit).await, Ok(Response::Info(_)))
}

/// What a server probe needs (cloned out of the chain so probes can run concurrently).
struct ProbeCtx {
    node: NodeHandle,
    model: ModelId,
    n_layers: usize,
    opts: ChainOptions,
    local: Option<Arc<dyn LocalServer>>,
    known: HashMap<PeerId, Range<usize>>,
}

impl ProbeCtx {
    /// Reads and checks `peer`'s record (unless `known`), then asks it for its status over a
    /// new stream. `Err(peer)` when it cannot be reached; `Ok(None)` when it is not usable.
    async fn probe(
        self: Arc<Self>,
        peer: PeerId,
        range: Range<usize>,
        known: bool,
    ) -> Result<Option<(FoundServer, BoxStream)>, PeerId> {
        let (settle, limit) = (self.opts.settle, self.opts.discovery_timeout);
        if !known {
            let Ok(copies) = self.node.get_records(server_key(&self.model, &peer), settle, limit).await else {
                return Ok(None);
            };
            let now = super::unix_ms();
            let record = copies
                .iter()
                .filter_map(|bytes| match ServerRecord::verify(bytes, &peer, &self.model, self.n_layers, now) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::debug!(%peer, "ignoring server record: {e}");
                        None
                    }
                })
                .max_by_key(|r| r.expires_ms);
            let Some(record) = record else { return Ok(None) };
            if record.status.end <= range.start || record.status.start >= range.end {
                return Ok(None);
            }
            if self.node.add_addresses(peer, record.multiaddrs()).await.is_err() {
                return Ok(None);
            }
        }
        // Two tries: a connection that closes under the first one (a duplicate connection
        // being pruned, a race with the peer's own dial) is not a dead server.
        let mut tries = 0;
        let (started, stream, status) = loop {
            tries += 1;
            let started = Instant::now();
            let opened = match &self.local {
                Some(local) if peer == self.node.peer_id() => Ok(local.connect()),
                _ => self.open_stream(peer).await.map_err(|e| e.to_string()),
            };
            let error = match opened {
                Ok(mut stream) => match exchange(peer, &mut stream, &Request::Info, self.opts.connect_timeout).await {
                    Ok(Response::Info(s)) => break (started, stream, s),
                    Ok(other) => {
                        tracing::debug!(%peer, "unexpected answer to info: {other:?}");
                        return Ok(None);
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e,
            };
            if tries == 2 {
                tracing::debug!(%peer, "status exchange failed: {error}");
                return Err(peer);
            }
            // Give the swarm time to drop the dead connection, so the retry dials anew.
            tracing::debug!(%peer, "status exchange failed, trying again: {error}");
            futures_timer::Delay::new(Duration::from_millis(300)).await;
        };
        let rtt_ms = started.elapsed().as_secs_f64() * 1e3;
        // The live status must agree with what we know of it.
        let expected = self.known.get(&peer).cloned();
        if status.model != self.model.to_hex()
            || status.start >= status.end
            || status.end > self.n_layers
            || expected.is_some_and(|b| b != (status.start..status.end))
        {
            tracing::debug!(%peer, "status contradicts its record");
            return Ok(None);
        }
        if status.free_slots == 0 || !status.ms_per_block.is_finite() {
            return Ok(None);
        }
        let candidate = Candidate {
            peer,
            blocks: status.start..status.end,
            rtt_ms,
            ms_per_block: status.ms_per_block.max(0.0),
            active_sessions: status.active_sessions,
        };
        Ok(Some((FoundServer { candidate, status }, stream)))
    }

    async fn open_stream(&self, peer: PeerId) -> Result<BoxStream, ChainError> {
        let mut control = self.node.control();
        match super::timeout(self.opts.connect_timeout, control.open_stream(peer, PROTOCOL)).await {
            Some(Ok(s)) => Ok(Box::new(s)),
            Some(Err(e)) => Err(ChainError::Unreachable { peer, detail: e.to_string() }),
            None => Err(ChainError::Unreachable { peer, detail: "timed out opening a stream".into() }),
        }
    }
}

/// Sends one request and reads one answer; an error answer becomes [`ChainError::Server`].
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    peer: PeerId,
    stream: &mut S,
    req: &Request,
    limit: Duration,
) -> Result<Response, ChainError> {
    let io = |error| ChainError::Stream { peer, error };
    super::timeout(limit, write_frame(stream, &req.encode()))
        .await
        .ok_or(io(FrameError::Timeout(limit)))?
        .map_err(io)?;
    let frame = read_frame(stream, MAX_FRAME, limit, limit).await.map_err(io)?;
    let resp = Response::decode(&frame).map_err(|e| ChainError::Protocol { peer, detail: e.to_string() })?;
    if let Response::Error { code, message } = resp {
        return Err(ChainError::Server { peer, code, message });
    }
    Ok(resp)
}

fn describe(r: &Response) -> String {
    match r {
        Response::Hidden { n_tokens, hidden, .. } => format!("{n_tokens} rows ({} values)", hidden.len()),
        other => format!("{other:?}"),
    }
}

impl LayerChain for SwarmChain {
    async fn begin(&mut self, max_len: usize) -> Result<(), ClientError> {
        self.end().await?;
        self.max_len = max_len;
        let mut failures = 0;
        self.hops = self.route_span(0..self.n_layers, &mut failures, false).await?;
        self.log_route();
        Ok(())
    }

    async fn forward(&mut self, hidden: &[f32], n_tokens: usize) -> Result<Vec<f32>, ClientError> {
        if self.hops.is_empty() {
            return Err(ChainError::State("forward before begin".into()).into());
        }
        if self.pos + n_tokens > self.max_len || hidden.len() != n_tokens * self.hidden {
            return Err(ChainError::State(format!(
                "step of {n_tokens} tokens at position {} does not fit a session of {}",
                self.pos, self.max_len
            ))
            .into());
        }
        let mut x = hidden.to_vec();
        let mut failures = 0;
        let mut i = 0;
        while i < self.hops.len() {
            match self.step_hop(i, self.pos, &x, n_tokens).await {
                Ok(out) => {
                    let start = self.hops[i].blocks.start;
                    self.history.entry(start).or_default().extend_from_slice(&x);
                    x = out;
                    i += 1;
                }
                Err(e) => {
                    failures += 1;
                    let result = if failures > self.opts.max_reroutes {
                        Err(ChainError::GaveUp { attempts: failures, last: Box::new(e) })
                    } else {
                        self.recover(i, e, &mut failures).await
                    };
                    if let Err(e) = result {
                        // The sequence is broken (a gap in the route, history ahead of `pos`):
                        // drop it, so a later `forward` fails instead of skipping layers.
                        self.end().await?;
                        return Err(e.into());
                    }
                    self.log_route();
                }
            }
        }
        self.pos += n_tokens;
        Ok(x)
    }

    async fn end(&mut self) -> Result<(), ClientError> {
        if !self.hops.is_empty() {
            self.last_stats = self.hop_stats();
        }
        let hops = std::mem::take(&mut self.hops);
        let closes = hops.into_iter().map(|mut h| async move {
            let _ = super::timeout(Duration::from_secs(1), write_frame(&mut h.stream, &Request::Close.encode())).await;
        });
        join_all(closes).await;
        self.history.clear();
        self.pos = 0;
        Ok(())
    }
}
