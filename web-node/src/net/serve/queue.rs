//! Who gets a session slot on a charging node when it is full: BitTorrent's choking, for
//! sessions.
//!
//! The node's slots split about 80 / 20 ([`SlotQueue::new`]). The larger share, the *scored*
//! slots, goes to paying clients by their priority score (read from the chain: stake, and AIT
//! earned serving others; see the gate), best first. The smaller share, the *lottery* slots,
//! goes by a draw among everyone waiting, paying or not (the optimistic unchoke): the free tier
//! gets these only, so no number of free-tier keys takes a scored slot from a contributor. A
//! request that finds no slot it may take waits in the queue, and sees its place
//! ([`SlotQueue::place`]), rather than being refused; only a full queue refuses.
//!
//! Pure bookkeeping: the [`Server`](super::Server) holds it under its admission lock and
//! hands grants over [`oneshot`] channels.

use futures::channel::oneshot;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a session may claim.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Standing {
    /// A paying client and its priority score (higher first).
    Paying(f64),
    /// A client on the free tier: lottery slots only.
    Free,
}

impl Standing {
    fn score(self) -> Option<f64> {
        match self {
            Standing::Paying(s) => Some(if s.is_finite() { s } else { 0.0 }),
            Standing::Free => None,
        }
    }
}

/// The share of slots a session holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Given by priority score, to paying clients.
    Scored,
    /// Given by lottery, to anyone.
    Lottery,
}

impl Pool {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Pool::Scored => "scored",
            Pool::Lottery => "lottery",
        }
    }
}

/// A place in the queue: this many requests go before it (by score; the lottery may draw it
/// sooner), of this many waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// 1 for the next in line.
    pub position: usize,
    /// Requests waiting, this one included.
    pub waiting: usize,
}

/// What [`SlotQueue::arrive`] gave.
#[derive(Debug)]
pub enum Arrival {
    /// A slot now.
    Granted(Pool),
    /// A place in the queue: the ticket names it, the receiver gets the slot.
    Queued(u64, oneshot::Receiver<Pool>),
    /// The queue is full too.
    Full,
}

struct Waiter {
    ticket: u64,
    standing: Standing,
    grant: oneshot::Sender<Pool>,
}

/// The slots of one node, by pool, and who waits for them.
pub struct SlotQueue {
    scored_cap: usize,
    lottery_cap: usize,
    scored: usize,
    lottery: usize,
    waiting: Vec<Waiter>,
    max_waiting: usize,
    next_ticket: u64,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for SlotQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotQueue")
            .field("scored", &(self.scored, self.scored_cap))
            .field("lottery", &(self.lottery, self.lottery_cap))
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl SlotQueue {
    /// `slots` sessions at once, a fifth of them (at least one) by lottery and the rest by
    /// score; at most `max_waiting` requests wait; the lottery draws from `seed`.
    pub fn new(slots: usize, max_waiting: usize, seed: u64) -> SlotQueue {
        let slots = slots.max(1);
        let lottery_cap = slots.div_ceil(5).max(1);
        SlotQueue {
            scored_cap: slots - lottery_cap,
            lottery_cap,
            scored: 0,
            lottery: 0,
            waiting: Vec::new(),
            max_waiting,
            next_ticket: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Slots free now, of both pools.
    pub fn free(&self) -> usize {
        (self.scored_cap - self.scored) + (self.lottery_cap - self.lottery)
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The best score among paying requests waiting, if any wait.
    pub fn best_waiting(&self) -> Option<f64> {
        self.waiting.iter().filter_map(|w| w.standing.score()).reduce(f64::max)
    }

    /// Free-tier requests waiting.
    pub fn waiting_free(&self) -> usize {
        self.waiting.iter().filter(|w| w.standing == Standing::Free).count()
    }

    /// Whether a scored slot is free now (a paying request would not wait).
    pub fn scored_free(&self) -> bool {
        self.scored < self.scored_cap
    }

    /// A request of `standing` arrives: a paying one takes a free scored slot, anyone a free
    /// lottery slot when nobody waits; otherwise it waits, unless the queue is full. Free-tier
    /// requests may fill half the queue at most, so fresh keys cannot crowd paying ones out.
    pub fn arrive(&mut self, standing: Standing) -> Arrival {
        if standing.score().is_some() && self.scored < self.scored_cap {
            self.scored += 1;
            return Arrival::Granted(Pool::Scored);
        }
        if self.lottery < self.lottery_cap && self.waiting.is_empty() {
            self.lottery += 1;
            return Arrival::Granted(Pool::Lottery);
        }
        let free_full = standing == Standing::Free && self.waiting_free() >= self.max_waiting / 2;
        if free_full {
            return Arrival::Full;
        }
        let (grant, rx) = oneshot::channel();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiter = Waiter { ticket, standing, grant };
        if self.waiting.len() >= self.max_waiting {
            // Full: the arrival takes the place of the last in line (a free-tier request
            // first, else the lowest score), if it ranks ahead of it; that one is told the
            // queue closed on it (its grant's sender is dropped).
            let last = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| in_line(&waiter, w).is_lt())
                .max_by(|(_, a), (_, b)| in_line(a, b));
            let Some((i, _)) = last else { return Arrival::Full };
            self.waiting.remove(i);
        }
        self.waiting.push(waiter);
        Arrival::Queued(ticket, rx)
    }

    /// A slot of `pool` was freed: it goes to whoever is next.
    pub fn release(&mut self, pool: Pool) {
        match pool {
            Pool::Scored => self.scored = self.scored.saturating_sub(1),
            Pool::Lottery => self.lottery = self.lottery.saturating_sub(1),
        }
        self.dispatch();
    }

    /// The request of `ticket` stopped waiting (its client left, or it waited too long):
    /// `false` if it is no longer in the queue, because its slot was granted meanwhile (the
    /// caller then takes that grant from its receiver and releases it).
    pub fn leave(&mut self, ticket: u64) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.ticket != ticket);
        self.waiting.len() != before
    }

    /// Where the request of `ticket` stands: paying requests by score (ties by arrival), then
    /// free ones by arrival; `None` once it left the queue.
    pub fn place(&self, ticket: u64) -> Option<Place> {
        let me = self.waiting.iter().find(|w| w.ticket == ticket)?;
        let ahead = self.waiting.iter().filter(|w| in_line(w, me).is_lt()).count();
        Some(Place { position: ahead + 1, waiting: self.waiting.len() })
    }

    /// Gives free slots to waiting requests: scored slots to the best paying request, lottery
    /// slots to a request drawn among all. A request whose client is gone is skipped.
    fn dispatch(&mut self) {
        loop {
            let pick = if self.scored < self.scored_cap {
                let best = self
                    .waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.standing.score().is_some())
                    .min_by(|(_, a), (_, b)| in_line(a, b))
                    .map(|(i, _)| i);
                best.map(|i| (i, Pool::Scored))
            } else {
                None
            };
            let pick = pick.or_else(|| {
                (self.lottery < self.lottery_cap && !self.waiting.is_empty())
                    .then(|| (self.rng.random_range(0..self.waiting.len()), Pool::Lottery))
            });
            let Some((i, pool)) = pick else { return };
            let w = self.waiting.remove(i);
            if w.grant.send(pool).is_ok() {
                match pool {
                    Pool::Scored => self.scored += 1,
                    Pool::Lottery => self.lottery += 1,
                }
            }
        }
    }
}

/// The order of the line (`Less`: `a` goes before `b`): paying before free, higher scores
/// first, then earlier arrivals.
fn in_line(a: &Waiter, b: &Waiter) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.standing.score(), b.standing.score()) {
        (Some(x), Some(y)) if x != y => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        _ => a.ticket.cmp(&b.ticket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(rx: &mut oneshot::Receiver<Pool>) -> Option<Pool> {
        rx.try_recv().ok().flatten()
    }

    #[test]
    fn slots_split_eighty_twenty() {
        let q = SlotQueue::new(10, 4, 0);
        assert_eq!((q.scored_cap, q.lottery_cap), (8, 2));
        let q = SlotQueue::new(5, 4, 0);
        assert_eq!((q.scored_cap, q.lottery_cap), (4, 1));
        let q = SlotQueue::new(1, 4, 0);
        assert_eq!((q.scored_cap, q.lottery_cap), (0, 1));
    }

    #[test]
    fn the_free_tier_gets_lottery_slots_only() {
        let mut q = SlotQueue::new(5, 16, 0);
        assert!(matches!(q.arrive(Standing::Free), Arrival::Granted(Pool::Lottery)));
        // Four scored slots are free, but not for the free tier.
        let Arrival::Queued(_, mut rx) = q.arrive(Standing::Free) else { panic!("not queued") };
        assert_eq!(q.free(), 4);
        for _ in 0..4 {
            assert!(matches!(q.arrive(Standing::Paying(0.0)), Arrival::Granted(Pool::Scored)));
        }
        assert!(granted(&mut rx).is_none());
        q.release(Pool::Lottery);
        assert_eq!(granted(&mut rx), Some(Pool::Lottery));
    }

    #[test]
    fn scored_slots_go_to_the_best_paying_request_and_fresh_free_keys_do_not_starve_it() {
        let mut q = SlotQueue::new(2, 64, 7);
        assert!(matches!(q.arrive(Standing::Paying(1.0)), Arrival::Granted(Pool::Scored)));
        assert!(matches!(q.arrive(Standing::Free), Arrival::Granted(Pool::Lottery)));
        // A stream of free-tier requests (fresh keys), then three paying ones.
        let mut free: Vec<_> = (0..20)
            .map(|_| match q.arrive(Standing::Free) {
                Arrival::Queued(t, rx) => (t, rx),
                other => panic!("{other:?}"),
            })
            .collect();
        let mut paying: Vec<_> = [1.0, 5.0, 3.0]
            .into_iter()
            .map(|s| match q.arrive(Standing::Paying(s)) {
                Arrival::Queued(t, rx) => (t, rx),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(q.place(paying[1].0), Some(Place { position: 1, waiting: 23 }));
        assert_eq!(q.place(paying[0].0), Some(Place { position: 3, waiting: 23 }));
        assert_eq!(q.place(free[0].0), Some(Place { position: 4, waiting: 23 }));
        // Each freed scored slot goes to the best paying request, whatever waits for the
        // lottery.
        let mut order = Vec::new();
        for _ in 0..3 {
            q.release(Pool::Scored);
            for (i, (_, rx)) in paying.iter_mut().enumerate() {
                if let Some(p) = granted(rx) {
                    assert_eq!(p, Pool::Scored);
                    order.push(i);
                }
            }
        }
        assert_eq!(order, vec![1, 2, 0]);
        // The lottery slot goes to a free request; all of them get one in turn.
        let mut served = 0;
        for _ in 0..20 {
            q.release(Pool::Lottery);
            served += free.iter_mut().filter_map(|(_, rx)| granted(rx)).count();
        }
        assert_eq!(served, 20);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn free_tier_requests_fill_half_the_queue_at_most_and_give_way_when_it_is_full() {
        let mut q = SlotQueue::new(5, 8, 0);
        assert!(matches!(q.arrive(Standing::Free), Arrival::Granted(Pool::Lottery)));
        let mut held = Vec::new();
        for _ in 0..4 {
            let Arrival::Queued(_, rx) = q.arrive(Standing::Free) else { panic!("not queued") };
            held.push(rx);
        }
        assert!(matches!(q.arrive(Standing::Free), Arrival::Full));
        for _ in 0..4 {
            assert!(matches!(q.arrive(Standing::Paying(0.0)), Arrival::Granted(Pool::Scored)));
        }
        for _ in 0..4 {
            let Arrival::Queued(_, rx) = q.arrive(Standing::Paying(0.0)) else { panic!("not queued") };
            held.push(rx);
        }
        // A full queue: a better request takes the place of the last in line (a free one),
        // which learns that its queue closed; one no better than all is refused.
        let Arrival::Queued(_, _best) = q.arrive(Standing::Paying(9.0)) else { panic!("not queued") };
        let closed = held.iter_mut().map(|rx| rx.try_recv()).filter(|r| matches!(r, Err(oneshot::Canceled))).count();
        assert_eq!(closed, 1);
        assert_eq!(q.waiting(), 8);
        assert_eq!(q.waiting_free(), 3);
        assert!(matches!(q.arrive(Standing::Free), Arrival::Full));
        for _ in 0..3 {
            assert!(matches!(q.arrive(Standing::Paying(0.5)), Arrival::Queued(..)));
        }
        assert_eq!(q.waiting_free(), 0);
        assert!(matches!(q.arrive(Standing::Paying(0.0)), Arrival::Full));
    }

    #[test]
    fn a_request_that_leaves_gives_its_place_or_its_slot_back() {
        let mut q = SlotQueue::new(1, 2, 0);
        assert!(matches!(q.arrive(Standing::Free), Arrival::Granted(Pool::Lottery)));
        let Arrival::Queued(a, rx_a) = q.arrive(Standing::Free) else { panic!() };
        let Arrival::Queued(_, mut rx_b) = q.arrive(Standing::Paying(1.0)) else { panic!() };
        assert!(matches!(q.arrive(Standing::Free), Arrival::Full));
        // A client gone before its turn: skipped.
        drop(rx_a);
        assert!(q.leave(a));
        q.release(Pool::Lottery);
        assert_eq!(granted(&mut rx_b), Some(Pool::Lottery));
        // A grant sent to a receiver already gone is not counted.
        let Arrival::Queued(c, rx_c) = q.arrive(Standing::Free) else { panic!() };
        drop(rx_c);
        q.release(Pool::Lottery);
        assert!(!q.leave(c));
        assert_eq!(q.free(), 1);
    }
}
