//! Finding servers: the [`Discovery`] seam between a [`SwarmChain`] and the outside world, and
//! its implementation over the DHT ([`DhtDiscovery`]).
//!
//! A discovery answers two questions: which servers hold blocks of a range (each with its live
//! status and the open stream that status came over, reused for the session), and how to open
//! a fresh stream to a server (for the liveness check of a slow server). The bookkeeping stays
//! in the chain: which servers are banned, which ones earlier discoveries verified.
//! [`DhtDiscovery`] reads provider records and each server's signed record, then exchanges a
//! status request with every server at once (at most [`ChainOptions::max_probes`], sampled
//! over the blocks by [`sample_providers`]), deciding shortly after the answers cover the
//! range (and include as many servers of exactly the range as the query wants). It dials
//! only the announced addresses its [`AddrScope`] allows. It does not plan routes or open
//! sessions.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::PeerId;
use rand::seq::SliceRandom;
use web_time::Instant;

use super::hop::exchange;
use super::{ChainError, ChainOptions, FoundServer, SwarmChain};
use crate::model::ModelId;
use crate::net::node::NodeHandle;
use crate::net::protocol::{Request, Response, PROTOCOL};
use crate::net::record::{block_key, server_key, AddrScope, ServerRecord};
use crate::net::routing::{plan, Candidate};
use crate::net::serve::{BoxStream, LocalServer};

/// What a [`SwarmChain`] asks its [`Discovery`] for.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// The model.
    pub model: ModelId,
    /// Its layers.
    pub n_layers: usize,
    /// Blocks wanted: servers holding any of them are wanted.
    pub range: Range<usize>,
    /// Servers that earlier discoveries verified, with their blocks (a live status must agree).
    pub known: &'a HashMap<PeerId, Range<usize>>,
    /// Ask only the `known` servers (a quick re-route: no network-wide queries).
    pub known_only: bool,
    /// Servers to leave out (banned after a failure, or not wanted: an audit's accused).
    pub banned: &'a HashSet<PeerId>,
    /// Servers of exactly `range` to hear from before deciding, besides a route covering it:
    /// 0 for routing; an audit that wants one more auditor asks for 1, and discovery then
    /// does not settle on servers of parts of the range alone.
    pub want: usize,
    /// The chain's timeouts.
    pub opts: &'a ChainOptions,
}

/// What a [`Discovery`] found.
#[derive(Default)]
pub struct Found {
    /// Usable servers with their live status, each with the stream its status came over.
    pub servers: Vec<(FoundServer, BoxStream)>,
    /// Servers that did not answer; the chain bans them.
    pub unreachable: Vec<PeerId>,
}

/// Where a [`SwarmChain`] finds its servers and opens streams to them.
pub trait Discovery {
    /// The servers holding blocks of `query.range` whose live status says they can take a
    /// session (see [`probe_stream`]), none of them banned, each with an open stream.
    fn find(&self, query: Query<'_>) -> impl Future<Output = Result<Found, ChainError>> + Send;

    /// Opens a fresh stream to `peer` within `limit`.
    fn open(&self, peer: PeerId, limit: Duration) -> impl Future<Output = Result<BoxStream, ChainError>> + Send;

    /// The peer id of this node's own server, reached in-process, if it has one: routing
    /// trusts its speed (this node measured it) over remote claims.
    fn local_peer(&self) -> Option<PeerId> {
        None
    }
}

/// Which of the providers found for each block to ask for their status, at most `cap` in all:
/// every `known` provider first (verified by an earlier discovery), then one provider of each
/// block in turn, each block's providers in random order. Taking blocks in turn means that a
/// flood of fake providers under one block's key crowds out only that block's share; random
/// order means the flood cannot choose which honest servers are left out.
pub fn sample_providers<R: rand::Rng + ?Sized>(
    per_block: &[Vec<PeerId>],
    known: &HashMap<PeerId, Range<usize>>,
    cap: usize,
    rng: &mut R,
) -> Vec<PeerId> {
    let mut chosen: Vec<PeerId> = Vec::new();
    let mut seen: HashSet<PeerId> = HashSet::new();
    let mut queues: Vec<Vec<PeerId>> = per_block
        .iter()
        .map(|peers| {
            let mut q: Vec<PeerId> = peers.iter().filter(|p| !known.contains_key(p)).copied().collect();
            q.shuffle(rng);
            q
        })
        .collect();
    let mut firsts: Vec<PeerId> = per_block.iter().flatten().filter(|p| known.contains_key(p)).copied().collect();
    firsts.sort();
    for p in firsts {
        if chosen.len() < cap && seen.insert(p) {
            chosen.push(p);
        }
    }
    while chosen.len() < cap && queues.iter().any(|q| !q.is_empty()) {
        for q in &mut queues {
            while let Some(p) = q.pop() {
                if seen.insert(p) {
                    chosen.push(p);
                    break;
                }
            }
            if chosen.len() == cap {
                break;
            }
        }
    }
    chosen
}

/// Asks `peer` for its live status over `stream` and checks it against `query`: the model, the
/// blocks (inside the model, and those of its record when known) and a free slot. The round
/// trip counts from `started` (when the stream was asked for). `Ok(None)`: the server answered
/// but cannot be used; `Err`: it did not answer.
pub async fn probe_stream<S: AsyncRead + AsyncWrite + Unpin>(
    peer: PeerId,
    stream: &mut S,
    query: &Query<'_>,
    started: Instant,
) -> Result<Option<FoundServer>, ChainError> {
    let status = match exchange(peer, stream, &Request::Info, query.opts.connect_timeout).await? {
        Response::Info(s) => s,
        other => {
            tracing::debug!(%peer, "unexpected answer to info: {other:?}");
            return Ok(None);
        }
    };
    let rtt_ms = started.elapsed().as_secs_f64() * 1e3;
    // The live status must agree with what we know of it.
    let expected = query.known.get(&peer);
    if status.model != query.model.to_hex()
        || status.start >= status.end
        || status.end > query.n_layers
        || expected.is_some_and(|b| *b != (status.start..status.end))
    {
        tracing::debug!(%peer, "status contradicts its record");
        return Ok(None);
    }
    // A full node is of no use now, unless it queues requests (a charging node).
    if (status.free_slots == 0 && status.queued.is_none()) || !status.ms_per_block.is_finite() {
        return Ok(None);
    }
    let candidate =
        Candidate::new(peer, status.start..status.end, rtt_ms, status.ms_per_block.max(0.0), status.active_sessions);
    Ok(Some(FoundServer { candidate, status }))
}

impl<D: Discovery> SwarmChain<D> {
    /// Finds the servers of blocks `range` with their live status, and the streams of that
    /// exchange (reused for sessions). With `known_only`, only servers of earlier discoveries
    /// are asked. Servers that do not answer are banned; servers the node's reputation book
    /// excludes ([`crate::trust::Reputation::excluded`]) are left out.
    pub async fn discover(
        &mut self,
        range: Range<usize>,
        known_only: bool,
    ) -> Result<Vec<(FoundServer, BoxStream)>, ChainError> {
        self.discover_except(range, known_only, &[], 0).await
    }

    /// [`SwarmChain::discover`], leaving the servers `except` out (they are not asked), and
    /// deciding only once `want` servers of exactly `range` have answered (or the discovery
    /// timeout has passed).
    pub async fn discover_except(
        &mut self,
        range: Range<usize>,
        known_only: bool,
        except: &[PeerId],
        want: usize,
    ) -> Result<Vec<(FoundServer, BoxStream)>, ChainError> {
        let ban = self.opts.ban;
        self.banned.retain(|_, t| t.elapsed() < ban);
        let banned: HashSet<PeerId> = self.banned.keys().chain(except).copied().collect();
        let query = Query {
            model: self.model,
            n_layers: self.n_layers,
            range: range.clone(),
            known: &self.known,
            known_only,
            banned: &banned,
            want,
            opts: &self.opts,
        };
        let mut found = self.discovery.find(query).await?;
        for peer in found.unreachable {
            self.fail(peer);
        }
        let reputation = &self.opts.reputation;
        found.servers.retain(|(f, _)| {
            let excluded = reputation.excluded(&f.candidate.peer);
            if excluded {
                tracing::debug!(peer = %f.candidate.peer, "left out: excluded by its record");
            }
            !excluded
        });
        for (f, _) in &found.servers {
            self.known.insert(f.candidate.peer, f.candidate.blocks.clone());
        }
        tracing::debug!("found {} server(s) for blocks [{}, {})", found.servers.len(), range.start, range.end);
        Ok(found.servers)
    }
}

/// Finds servers through the DHT: provider records per block, each server's signed record,
/// then a live status exchange. This node's own server, when it has one, is reached in-process.
#[derive(Clone)]
pub struct DhtDiscovery {
    node: NodeHandle,
    local: Option<Arc<dyn LocalServer>>,
}

impl DhtDiscovery {
    /// Finds servers through `node`.
    pub fn new(node: NodeHandle) -> DhtDiscovery {
        DhtDiscovery { node, local: None }
    }

    /// The node it finds servers through.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Also uses this node's own server (reached in-process) for the blocks it holds.
    pub fn with_local(mut self, server: Arc<dyn LocalServer>) -> DhtDiscovery {
        self.local = Some(server);
        self
    }

    /// The announced addresses this node may dial: loopback and private ranges only when one
    /// of its connections is on such a range, or when the options allow them.
    async fn addr_scope(&self, opts: &ChainOptions) -> AddrScope {
        if opts.allow_private_addrs {
            return AddrScope::everything();
        }
        let peers = self.node.peers().await.unwrap_or_default();
        AddrScope::of_connections(peers.iter().map(|p| &p.addr))
    }

    /// Reads and checks `peer`'s record (unless `known`), then asks it for its status over a
    /// new stream. `Err(peer)` when it cannot be reached; `Ok(None)` when it is not usable.
    async fn probe(
        &self,
        peer: PeerId,
        query: &Query<'_>,
        known: bool,
    ) -> Result<Option<(FoundServer, BoxStream)>, PeerId> {
        let (settle, limit) = (query.opts.settle, query.opts.discovery_timeout);
        if !known {
            let Ok(copies) = self.node.get_records(server_key(&query.model, &peer), settle, limit).await else {
                return Ok(None);
            };
            let now = crate::net::unix_ms();
            let record = copies
                .iter()
                .filter_map(|bytes| match ServerRecord::verify(bytes, &peer, &query.model, query.n_layers, now) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::debug!(%peer, "ignoring server record: {e}");
                        None
                    }
                })
                .max_by_key(|r| r.expires_ms);
            let Some(record) = record else { return Ok(None) };
            if record.status.end <= query.range.start || record.status.start >= query.range.end {
                return Ok(None);
            }
            let addrs = record.dialable_addrs(self.addr_scope(query.opts).await);
            if self.node.add_addresses(peer, addrs).await.is_err() {
                return Ok(None);
            }
        }
        // Two tries: a connection that closes under the first one (a duplicate connection
        // being pruned, a race with the peer's own dial) is not a dead server.
        let mut tries = 0;
        loop {
            tries += 1;
            let started = Instant::now();
            let error = match self.open(peer, query.opts.connect_timeout).await {
                Ok(mut stream) => match probe_stream(peer, &mut stream, query, started).await {
                    Ok(found) => return Ok(found.map(|f| (f, stream))),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if tries == 2 {
                tracing::debug!(%peer, "status exchange failed: {error}");
                return Err(peer);
            }
            // Give the swarm time to drop the dead connection, so the retry dials anew.
            tracing::debug!(%peer, "status exchange failed, trying again: {error}");
            futures_timer::Delay::new(Duration::from_millis(300)).await;
        }
    }
}

impl Discovery for DhtDiscovery {
    async fn find(&self, query: Query<'_>) -> Result<Found, ChainError> {
        let (settle, limit) = (query.opts.settle, query.opts.discovery_timeout);
        let range = query.range.clone();
        let me = self.node.peer_id();
        let usable = |p: &PeerId| *p != me && !query.banned.contains(p);
        let mut per_block: Vec<Vec<PeerId>> = Vec::new();
        if query.known_only {
            per_block.push(
                query
                    .known
                    .iter()
                    .filter(|(p, b)| b.start < range.end && b.end > range.start && usable(p))
                    .map(|(p, _)| *p)
                    .collect(),
            );
        } else {
            let queries = range.clone().map(|b| self.node.get_providers(block_key(&query.model, b), settle, limit));
            for found in join_all(queries).await {
                per_block.push(found?.into_iter().filter(|p| usable(p)).collect());
            }
        }
        let peers = sample_providers(&per_block, query.known, query.opts.max_probes, &mut unpredictable_rng());
        let mut probes: FuturesUnordered<_> =
            peers.iter().map(|&peer| self.probe(peer, &query, query.known_only).boxed()).collect();
        if self.local.is_some() && !query.banned.contains(&me) {
            probes.push(self.probe(me, &query, true).boxed());
        }
        let mut found = Found::default();
        let deadline = Instant::now() + limit;
        let mut settle_at: Option<Instant> = None;
        loop {
            let until = settle_at.unwrap_or(deadline).min(deadline);
            let Some(next) = crate::net::timeout(until.saturating_duration_since(Instant::now()), probes.next()).await
            else {
                break;
            };
            match next {
                None => break,
                Some(Ok(Some(f))) => found.servers.push(f),
                Some(Ok(None)) => {}
                Some(Err(peer)) => found.unreachable.push(peer),
            }
            if settle_at.is_none() {
                let cands: Vec<Candidate> = found.servers.iter().map(|(f, _)| f.candidate.clone()).collect();
                let exact = cands.iter().filter(|c| c.blocks == range).count();
                if plan(&cands, range.clone()).is_some() && exact >= query.want {
                    settle_at = Some(Instant::now() + settle);
                }
            }
        }
        Ok(found)
    }

    async fn open(&self, peer: PeerId, limit: Duration) -> Result<BoxStream, ChainError> {
        if let Some(local) = self.local.as_ref().filter(|_| peer == self.node.peer_id()) {
            return Ok(local.connect());
        }
        let mut control = self.node.control();
        match crate::net::timeout(limit, control.open_stream(peer, PROTOCOL)).await {
            Some(Ok(s)) => Ok(Box::new(s)),
            Some(Err(e)) => Err(ChainError::Unreachable { peer, detail: e.to_string() }),
            None => Err(ChainError::Unreachable { peer, detail: "timed out opening a stream".into() }),
        }
    }

    fn local_peer(&self) -> Option<PeerId> {
        self.local.as_ref().map(|_| self.node.peer_id())
    }
}

/// A generator whose sequence a remote peer cannot predict: seeded from a random peer id,
/// which libp2p draws from the operating system's CSPRNG (natively and in a browser alike).
pub(crate) fn unpredictable_rng() -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let bytes = PeerId::random().to_bytes();
    let mut seed = [0u8; 32];
    for (i, b) in bytes.iter().rev().take(32).enumerate() {
        seed[i] = *b;
    }
    rand_chacha::ChaCha8Rng::from_seed(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn probes_are_capped_and_shared_between_blocks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let honest: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let flood: Vec<PeerId> = (0..1000).map(|_| PeerId::random()).collect();
        // Block 0's key is flooded with fake providers; blocks 1 and 2 have one honest each.
        let mut block0 = flood.clone();
        block0.push(honest[0]);
        let per_block = vec![block0, vec![honest[1]], vec![honest[2], honest[1]]];
        let known = HashMap::from([(honest[0], 0..1)]);
        let chosen = sample_providers(&per_block, &known, 32, &mut rng);
        assert_eq!(chosen.len(), 32);
        assert_eq!(chosen.iter().collect::<HashSet<_>>().len(), 32, "a peer chosen twice");
        for p in &honest {
            assert!(chosen.contains(p), "honest {p} left out");
        }
        // Under the cap, every provider is asked.
        let few = sample_providers(&per_block[1..], &HashMap::new(), 32, &mut rng);
        assert_eq!(few.len(), 2);
        assert!(sample_providers(&per_block, &known, 0, &mut rng).is_empty());
    }
}
