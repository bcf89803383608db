//! Chooses which servers run which layers: the chain with the lowest estimated latency.
//!
//! Like Petals' sequence manager, this is a shortest path over block boundaries: node `i` is
//! "layers before `i` are done", and a server serving `[a, b)` is an edge `a -> b`. The cost
//! of an edge is the server's round-trip time, plus its measured time per block times the
//! blocks, scaled up by its current load (sessions already running share its device), plus a
//! small fixed cost per hop so that, other things equal, fewer hops win. Unlike Petals it
//! counts live load. Servers run whole spans (a session covers the server's full range).
//!
//! A server's speed is its own claim until this node has timed it: [`discount_claims`] lets
//! measured step times replace claims, floors every claim at [`MIN_CLAIMED_MS_PER_BLOCK`],
//! and never lets an unmeasured claim beat this node's own in-process blocks (whose speed it
//! measured itself). A server that charges weighs its price too ([`Candidate::price_ms`]:
//! what the client says a unit of price is worth in step time), so a client can prefer the
//! cheapest route, the fastest, or a balance. And a server with a record in this node's
//! reputation book weighs less ([`Candidate::trust`]): a stranger wins only where it is
//! clearly faster.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use libp2p::PeerId;

/// Fixed cost added to every hop, in milliseconds (serialization, scheduling).
pub const HOP_COST_MS: f64 = 0.2;

/// Lowest decode time per block per token a server's claim counts for, in milliseconds. A
/// block is about ten kernels, and a kernel launch alone takes 5 µs or more on any GPU, so
/// 50 µs per block is below what any device does (the default model takes about 0.4 ms per
/// block on a CPU core); a claim under it is a lie or a rounding, and counts as this.
pub const MIN_CLAIMED_MS_PER_BLOCK: f64 = 0.05;

/// A server the router may use.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its peer id.
    pub peer: PeerId,
    /// Layers it serves.
    pub blocks: Range<usize>,
    /// Measured round-trip time, in milliseconds.
    pub rtt_ms: f64,
    /// Its decode time per block per token, in milliseconds.
    pub ms_per_block: f64,
    /// Sessions running on it now.
    pub active_sessions: usize,
    /// Wall time of one decode step through it as this node measured it on earlier routes, in
    /// milliseconds (round trip, queueing and compute, at the load it had then); when known
    /// it replaces the estimate from `rtt_ms` and `ms_per_block`.
    pub measured_ms: Option<f64>,
    /// This node's own server, reached in-process: its speed is this node's measurement, not
    /// a claim.
    pub local: bool,
    /// What its price is worth to this client in milliseconds of step time (0: it serves free,
    /// or price does not count); [`Candidate::route_cost_ms`] adds it.
    pub price_ms: f64,
    /// What its record takes off its cost, as a factor ([`crate::trust::Reputation::trust`]):
    /// 1 for a stranger, down to 0.75 for a long clean record; [`Candidate::route_cost_ms`]
    /// multiplies by it.
    pub trust: f64,
}

impl Candidate {
    /// A candidate from a server's live status, not yet measured nor local.
    pub fn new(peer: PeerId, blocks: Range<usize>, rtt_ms: f64, ms_per_block: f64, active_sessions: usize) -> Self {
        Candidate {
            peer,
            blocks,
            rtt_ms,
            ms_per_block,
            active_sessions,
            measured_ms: None,
            local: false,
            price_ms: 0.0,
            trust: 1.0,
        }
    }

    /// Estimated time for one decode step through this server, in milliseconds: its measured
    /// step time when known, else its round trip plus its compute at its load.
    pub fn cost_ms(&self) -> f64 {
        if let Some(measured) = self.measured_ms.filter(|m| m.is_finite()) {
            return HOP_COST_MS + measured.max(0.0);
        }
        let compute = self.ms_per_block * self.blocks.len() as f64 * (1.0 + self.active_sessions as f64);
        HOP_COST_MS + self.rtt_ms.max(0.0) + compute.max(0.0)
    }

    /// What [`plan`] weighs this server at: its step time weighed by its record
    /// ([`Candidate::trust`], at least 0.5), plus its price.
    pub fn route_cost_ms(&self) -> f64 {
        let trust = if self.trust.is_finite() { self.trust.clamp(0.5, 1.0) } else { 1.0 };
        self.cost_ms() * trust + self.price_ms.max(0.0)
    }
}

/// Makes the servers' claimed speeds count for no more than they are worth, before [`plan`]:
///
/// - a local candidate (this node's own server, in-process) has no network round trip;
/// - an unmeasured remote claim counts for at least [`MIN_CLAIMED_MS_PER_BLOCK`], and at
///   least the local server's own speed per block when there is one: a remote server may
///   claim to be faster than this node's hardware, but it wins the blocks this node holds
///   only once a measured step shows it (`measured_ms`, which [`Candidate::cost_ms`] prefers).
pub fn discount_claims(candidates: &mut [Candidate]) {
    let local_ms =
        candidates.iter().filter(|c| c.local && c.ms_per_block.is_finite()).map(|c| c.ms_per_block).reduce(f64::min);
    let floor = local_ms.unwrap_or(0.0).max(MIN_CLAIMED_MS_PER_BLOCK);
    for c in candidates.iter_mut() {
        if c.local {
            c.rtt_ms = 0.0;
        } else if !c.ms_per_block.is_finite() || c.ms_per_block < floor {
            c.ms_per_block = floor;
        }
    }
}

/// One hop of a chosen chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The server.
    pub peer: PeerId,
    /// Layers it runs.
    pub blocks: Range<usize>,
}

#[derive(PartialEq)]
struct State {
    cost: f64,
    at: usize,
}

impl Eq for State {}

impl Ord for State {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on cost; ties by position so the order is total.
        other.cost.total_cmp(&self.cost).then_with(|| other.at.cmp(&self.at))
    }
}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The cheapest chain of candidates covering `range` exactly, or `None` if no chain covers it.
/// Candidates whose blocks stick out of `range` are not used. Ties go to the lower peer id, so
/// the choice is deterministic.
pub fn plan(candidates: &[Candidate], range: Range<usize>) -> Option<Vec<Hop>> {
    if range.is_empty() {
        return Some(Vec::new());
    }
    let n = range.end - range.start;
    let mut usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.blocks.start >= range.start && c.blocks.end <= range.end && !c.blocks.is_empty())
        .collect();
    usable.sort_by_key(|c| c.peer);
    let mut best = vec![f64::INFINITY; n + 1];
    let mut via: Vec<Option<usize>> = vec![None; n + 1];
    let mut heap = BinaryHeap::new();
    best[0] = 0.0;
    heap.push(State { cost: 0.0, at: 0 });
    while let Some(State { cost, at }) = heap.pop() {
        if cost > best[at] {
            continue;
        }
        if at == n {
            break;
        }
        for (ci, c) in usable.iter().enumerate() {
            if c.blocks.start - range.start != at {
                continue;
            }
            let to = c.blocks.end - range.start;
            let next = cost + c.route_cost_ms();
            if next < best[to] {
                best[to] = next;
                via[to] = Some(ci);
                heap.push(State { cost: next, at: to });
            }
        }
    }
    if !best[n].is_finite() {
        return None;
    }
    let mut hops = Vec::new();
    let mut at = n;
    while at > 0 {
        let c = usable[via[at]?];
        hops.push(Hop { peer: c.peer, blocks: c.blocks.clone() });
        at = c.blocks.start - range.start;
    }
    hops.reverse();
    Some(hops)
}

/// Which blocks of `0..n_layers` at least one candidate serves, as a count per block.
pub fn coverage(candidates: &[Candidate], n_layers: usize) -> Vec<usize> {
    let mut count = vec![0; n_layers];
    for c in candidates {
        for b in c.blocks.clone().filter(|&b| b < n_layers) {
            count[b] += 1;
        }
    }
    count
}

/// The span a new server should take, given how many servers cover each block: `want` if
/// given (checked against the model), else the `max_blocks`-long span covered least (ties: the
/// first).
pub fn least_covered_span(
    cover: &[usize],
    max_blocks: usize,
    want: Option<Range<usize>>,
) -> Result<Range<usize>, String> {
    let n = cover.len();
    if let Some(r) = want {
        if r.start >= r.end || r.end > n {
            return Err(format!("blocks {}..{} are not within the model's {n} blocks", r.start, r.end));
        }
        return Ok(r);
    }
    if n == 0 {
        return Err("the model has no blocks".into());
    }
    let k = max_blocks.clamp(1, n);
    (0..=n - k)
        .min_by_key(|&s| (cover[s..s + k].iter().sum::<usize>(), s))
        .map(|s| s..s + k)
        .ok_or_else(|| "the model has no blocks".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(blocks: Range<usize>, rtt_ms: f64, ms_per_block: f64) -> Candidate {
        Candidate::new(PeerId::random(), blocks, rtt_ms, ms_per_block, 0)
    }

    fn route(mut cands: Vec<Candidate>) -> Vec<PeerId> {
        discount_claims(&mut cands);
        plan(&cands, 0..30).unwrap().iter().map(|h| h.peer).collect()
    }

    /// Regression test for issue 11: a server claiming 0 ms per block won every route.
    #[test]
    fn a_claim_of_zero_does_not_beat_an_honest_fast_server() {
        let liar = cand(0..30, 1.0, 0.0);
        let honest = cand(0..30, 0.5, MIN_CLAIMED_MS_PER_BLOCK);
        assert_eq!(route(vec![liar, honest.clone()]), vec![honest.peer]);
    }

    #[test]
    fn no_unmeasured_claim_beats_the_local_server() {
        let local = Candidate { local: true, ..cand(0..30, 0.5, 0.4) };
        let liar = cand(0..30, 0.1, 0.0);
        let fast_gpu = cand(0..30, 0.1, 0.1);
        assert_eq!(route(vec![local.clone(), liar.clone(), fast_gpu.clone()]), vec![local.peer]);
        // Once measured faster than the local server, the remote one wins.
        let measured = Candidate { measured_ms: Some(3.0), ..fast_gpu };
        assert_eq!(route(vec![local.clone(), liar.clone(), measured.clone()]), vec![measured.peer]);
        // And a measured slow liar loses to an honest claim.
        let caught = Candidate { measured_ms: Some(500.0), ..liar };
        let honest = cand(0..30, 5.0, 1.0);
        assert_eq!(route(vec![caught, honest.clone()]), vec![honest.peer]);
    }

    #[test]
    fn covers_exactly_and_prefers_fast_servers() {
        let a = cand(0..10, 1.0, 0.5);
        let b_slow = cand(10..20, 50.0, 0.5);
        let b_fast = cand(10..20, 1.0, 0.5);
        let c = cand(20..30, 1.0, 0.5);
        let hops = plan(&[a.clone(), b_slow.clone(), b_fast.clone(), c.clone()], 0..30).unwrap();
        let peers: Vec<_> = hops.iter().map(|h| h.peer).collect();
        assert_eq!(peers, vec![a.peer, b_fast.peer, c.peer]);
        // Without the fast one the slow one is used; without any [10,20) there is no chain.
        let hops = plan(&[a.clone(), b_slow.clone(), c.clone()], 0..30).unwrap();
        assert_eq!(hops[1].peer, b_slow.peer);
        assert_eq!(plan(&[a.clone(), c.clone()], 0..30), None);
        // Re-routing a sub-span uses only servers inside it.
        let whole = cand(0..30, 0.1, 0.1);
        let hops = plan(&[a.clone(), b_slow.clone(), whole.clone(), c.clone()], 10..20).unwrap();
        assert_eq!(hops, vec![Hop { peer: b_slow.peer, blocks: 10..20 }]);
        // One fast server for everything beats three hops.
        let hops = plan(&[a, b_fast, c, whole.clone()], 0..30).unwrap();
        assert_eq!(hops, vec![Hop { peer: whole.peer, blocks: 0..30 }]);
    }

    #[test]
    fn price_counts_as_much_as_the_client_says_it_is_worth() {
        // A fast server that charges and a slower free one, priced at 0 and at 10 ms.
        let (d, f) = (cand(0..30, 1.0, 0.5), cand(0..30, 5.0, 0.5));
        assert_eq!(route(vec![d.clone(), f.clone()]), vec![d.peer], "fastest when price does not count");
        let d = Candidate { price_ms: 10.0, ..d };
        assert_eq!(route(vec![d, f.clone()]), vec![f.peer], "cheapest when price counts");
    }

    #[test]
    fn a_record_wins_close_calls_but_not_against_a_much_faster_stranger() {
        let (known, stranger) = (cand(0..30, 1.0, 0.5), cand(0..30, 1.0, 0.45));
        assert_eq!(route(vec![known.clone(), stranger.clone()]), vec![stranger.peer], "no record: the faster");
        let known = Candidate { trust: 0.8, ..known };
        assert_eq!(route(vec![known.clone(), stranger.clone()]), vec![known.peer], "a record wins a close call");
        let much_faster = cand(0..30, 1.0, 0.2);
        assert_eq!(route(vec![known.clone(), much_faster.clone()]), vec![much_faster.peer]);
        // A trust factor out of range counts for no more than halving the cost.
        let forged = Candidate { trust: 0.0, ..cand(0..30, 1.0, 5.0) };
        assert_eq!(forged.route_cost_ms(), forged.cost_ms() / 2.0);
        assert_eq!(route(vec![known.clone(), forged]), vec![known.peer]);
    }

    #[test]
    fn load_moves_traffic_to_idle_servers() {
        let busy = Candidate { active_sessions: 3, ..cand(0..30, 1.0, 1.0) };
        let idle = cand(0..30, 5.0, 1.0);
        let hops = plan(&[busy, idle.clone()], 0..30).unwrap();
        assert_eq!(hops[0].peer, idle.peer);
    }

    #[test]
    fn coverage_counts_servers_per_block() {
        let cov = coverage(&[cand(0..2, 0.0, 0.0), cand(1..3, 0.0, 0.0)], 4);
        assert_eq!(cov, vec![1, 2, 1, 0]);
    }

    #[test]
    fn a_new_server_takes_the_least_covered_span() {
        let mut cover = vec![1usize; 30];
        cover[10..20].iter_mut().for_each(|c| *c = 0);
        assert_eq!(least_covered_span(&cover, 10, None).unwrap(), 10..20);
        assert_eq!(least_covered_span(&cover, 40, None).unwrap(), 0..30);
        assert_eq!(least_covered_span(&cover, 5, Some(3..8)).unwrap(), 3..8);
        assert!(least_covered_span(&cover, 5, Some(25..31)).is_err());
        assert!(least_covered_span(&cover, 5, Some(8..8)).is_err());
        assert!(least_covered_span(&[], 5, None).is_err());
    }
}
