//! Reputation: a Glicko rating per node, kept by each client (and each relay acting as a
//! gateway) from what it saw, and used by its routing.
//!
//! Every event is a game against a fixed reference (rating [`INITIAL_RATING`], no deviation):
//! a session the node served to its end, or an audit it passed, is a win; a step it failed
//! (timeout, dropped stream, refused or unsigned answer) is a loss. A node's rating is then
//! about `1500 + 400 log10(served / failed)`. Glicko's rating deviation (RD) says how much
//! the rating is worth: it starts at [`INITIAL_RD`], shrinks with every game and grows back
//! with time ([`RD_GROWTH_PER_HOUR`]).
//!
//! Routing uses two bounds of the rating, each two deviations from it:
//! - the conservative score, rating minus two deviations ([`Rating::score`]), earns a node a
//!   discount on its cost in routing ([`Reputation::trust`]) once it is above the reference:
//!   a stranger scores 800 and earns none; 5 clean sessions reach the reference, 100 earn
//!   about 93% of [`MAX_DISCOUNT`], and a record of 99% served over 300 sessions all of it. A new node is used
//!   where it is clearly the best, not trusted with much until it has a record;
//! - the optimistic score, rating plus two deviations, excludes a node when it is under
//!   [`FLOOR`] (the reference): this client is then about 95% sure the node fails more
//!   sessions than it serves (5 failures in a row for a stranger; over 300 sessions, a
//!   record of 30% served is out and one of 45% in).
//!
//! A node judged faulty (by a quorum of auditors, or by a checked fraud report) or an
//! auditor the quorum overturned is convicted: its rating drops to 0 for good, and it is left
//! out of routes for as long as the book lives.
//!
//! The ratings are this node's own view; they are not gossiped (a node could invent a
//! rival's failures). What is shared is a fraud report that anyone can check
//! ([`crate::trust::report`]), which convicts the node in every book that checks it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use web_time::Instant;

use super::recent::RecentIds;

/// A stranger's rating: the reference every event is played against.
pub const INITIAL_RATING: f64 = 1500.0;

/// A stranger's rating deviation, and the most it grows back to.
pub const INITIAL_RD: f64 = 350.0;

/// The least a deviation shrinks to, so an old record keeps moving.
pub const MIN_RD: f64 = 30.0;

/// How much a deviation grows per hour without events (Glicko's `c`): from [`MIN_RD`] back
/// to [`INITIAL_RD`] in about 22 days.
pub const RD_GROWTH_PER_HOUR: f64 = 15.0;

/// A stranger's conservative score ([`INITIAL_RATING`] minus two [`INITIAL_RD`]).
pub const STRANGER_SCORE: f64 = INITIAL_RATING - 2.0 * INITIAL_RD;

/// Nodes whose optimistic score (rating plus two deviations) is under this are left out of
/// routes: every convicted node, and a node this client is about 95% sure fails more
/// sessions than it serves. A stranger is far above it.
pub const FLOOR: f64 = INITIAL_RATING;

/// The largest share of a node's cost in routing that its record can take off.
pub const MAX_DISCOUNT: f64 = 0.25;

/// The conservative score from which a record earns a discount: this client is about 95%
/// sure the node serves more sessions than it fails.
pub const TRUSTED_FROM: f64 = INITIAL_RATING;

/// How far above [`TRUSTED_FROM`] the discount reaches [`MAX_DISCOUNT`].
pub const DISCOUNT_SPAN: f64 = 500.0;

/// Glicko's scale constant, ln 10 / 400.
const Q: f64 = std::f64::consts::LN_10 / 400.0;

/// What happened with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// It served a session to its end.
    Served,
    /// An audit replayed its answers and passed them.
    AuditPassed,
    /// It failed a step: no answer in time, a dropped stream, an error, a bad signature.
    Failed,
    /// It was judged faulty by a quorum of auditors (or by a checked fraud report), or it was
    /// an auditor whose opinion the quorum overturned.
    Convicted,
}

/// One node's rating.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rating {
    /// The Glicko rating.
    pub rating: f64,
    /// Its deviation.
    pub rd: f64,
    /// Whether it was convicted (its rating is then 0 for good).
    pub convicted: bool,
    /// Games counted (wins and losses).
    pub games: u32,
}

impl Default for Rating {
    fn default() -> Self {
        Rating { rating: INITIAL_RATING, rd: INITIAL_RD, convicted: false, games: 0 }
    }
}

impl Rating {
    /// The conservative score: rating minus two deviations (what earns a discount).
    pub fn score(&self) -> f64 {
        self.rating - 2.0 * self.rd
    }

    /// The optimistic score: rating plus two deviations (what keeps a node in routes).
    pub fn optimistic(&self) -> f64 {
        self.rating + 2.0 * self.rd
    }

    /// Whether routing leaves the node out: convicted, or its optimistic score under
    /// [`FLOOR`].
    pub fn excluded(&self) -> bool {
        self.convicted || self.optimistic() < FLOOR
    }

    /// The rating after `hours` without events: the deviation grows back toward
    /// [`INITIAL_RD`].
    pub fn aged(mut self, hours: f64) -> Rating {
        if hours > 0.0 && !self.convicted {
            self.rd = (self.rd * self.rd + RD_GROWTH_PER_HOUR * RD_GROWTH_PER_HOUR * hours).sqrt().min(INITIAL_RD);
        }
        self
    }

    /// The rating after one event (Glicko's update for one game against the reference).
    pub fn after(mut self, event: Event) -> Rating {
        if self.convicted {
            return self;
        }
        let s = match event {
            Event::Served | Event::AuditPassed => 1.0,
            Event::Failed => 0.0,
            Event::Convicted => {
                return Rating { rating: 0.0, rd: MIN_RD, convicted: true, games: self.games + 1 };
            }
        };
        // Against a reference with no deviation, g = 1.
        let expected = 1.0 / (1.0 + 10f64.powf(-(self.rating - INITIAL_RATING) / 400.0));
        let d2_inv = Q * Q * expected * (1.0 - expected);
        let precision = 1.0 / (self.rd * self.rd) + d2_inv;
        self.rating += Q / precision * (s - expected);
        self.rd = (1.0 / precision).sqrt().max(MIN_RD);
        self.games += 1;
        self
    }
}

struct Book {
    nodes: HashMap<PeerId, (Rating, Instant)>,
    /// Ids of the fraud reports counted (at most [`MAX_REPORTS`]).
    reports: RecentIds,
}

impl Default for Book {
    fn default() -> Self {
        Book { nodes: HashMap::new(), reports: RecentIds::new(MAX_REPORTS) }
    }
}

/// Most fraud report ids a book remembers (a report counted earlier than that and sent
/// again convicts nobody new: its accused stays convicted).
pub const MAX_REPORTS: usize = 100_000;

/// A node's book of ratings, shared by every chain of the node (clones share it). Opened on
/// a file ([`Reputation::open`]), it keeps its convictions there, so a node convicted before
/// a restart stays convicted; the rest of a record is rebuilt from new events.
#[derive(Clone, Default)]
pub struct Reputation {
    book: Arc<Mutex<Book>>,
    store: Option<Arc<redb::Database>>,
}

/// The convicted nodes a book keeps on disk: peer id bytes to when (unix seconds).
const CONVICTED: redb::TableDefinition<&[u8], u64> = redb::TableDefinition::new("convicted");

/// Why the book's file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("reputation store: {0}")]
pub struct StoreError(#[from] redb::Error);

fn store_error<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError(e.into())
}

impl std::fmt::Debug for Reputation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reputation")
            .field("nodes", &self.lock().nodes.len())
            .field("stored", &self.store.is_some())
            .finish()
    }
}

/// Most nodes a book keeps; past it the one heard of longest ago is forgotten (it becomes a
/// stranger again; a convicted node only when every node in the book is convicted), so a
/// flood of fresh peer ids cannot grow it without bound.
pub const MAX_NODES: usize = 100_000;

impl Reputation {
    /// An empty book, in memory.
    pub fn new() -> Reputation {
        Reputation::default()
    }

    /// A book that keeps its convictions in the database at `path` (created if missing),
    /// starting with the nodes convicted there (at most [`MAX_NODES`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Reputation, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let db = redb::Database::create(path).map_err(store_error)?;
        let txn = db.begin_write().map_err(store_error)?;
        txn.open_table(CONVICTED).map_err(store_error)?;
        txn.commit().map_err(store_error)?;
        let mut book = Book::default();
        {
            let txn = db.begin_read().map_err(store_error)?;
            let table = txn.open_table(CONVICTED).map_err(store_error)?;
            for entry in table.iter().map_err(store_error)?.take(MAX_NODES) {
                let (peer, _) = entry.map_err(store_error)?;
                match PeerId::from_bytes(peer.value()) {
                    Ok(peer) => {
                        let convicted = Rating::default().after(Event::Convicted);
                        book.nodes.insert(peer, (convicted, Instant::now()));
                    }
                    Err(e) => tracing::warn!("a stored conviction names no peer: {e}"),
                }
            }
        }
        tracing::info!(convicted = book.nodes.len(), "reputation book opened at {}", path.display());
        Ok(Reputation { book: Arc::new(Mutex::new(book)), store: Some(Arc::new(db)) })
    }

    /// Writes `peer`'s conviction to the book's file, if it has one.
    fn store_conviction(&self, peer: &PeerId) {
        let Some(db) = &self.store else { return };
        let now = crate::settle::unix_s();
        let written = (|| -> Result<(), StoreError> {
            let txn = db.begin_write().map_err(store_error)?;
            txn.open_table(CONVICTED)
                .map_err(store_error)?
                .insert(peer.to_bytes().as_slice(), now)
                .map_err(store_error)?;
            txn.commit().map_err(store_error)
        })();
        if let Err(e) = written {
            tracing::warn!(%peer, "a conviction was not stored: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `peer`'s rating now (a stranger's when unknown).
    pub fn rating(&self, peer: &PeerId) -> Rating {
        match self.lock().nodes.get(peer) {
            Some((r, at)) => r.aged(at.elapsed().as_secs_f64() / 3600.0),
            None => Rating::default(),
        }
    }

    /// Records `event` for `peer`.
    pub fn record(&self, peer: PeerId, event: Event) {
        let mut book = self.lock();
        if book.nodes.len() >= MAX_NODES && !book.nodes.contains_key(&peer) {
            // The node heard of longest ago goes; a convicted one only when every node is.
            let oldest = |convicted: bool| {
                book.nodes
                    .iter()
                    .filter(|(_, (r, _))| convicted || !r.convicted)
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(p, _)| *p)
            };
            if let Some(p) = oldest(false).or_else(|| oldest(true)) {
                book.nodes.remove(&p);
            }
        }
        let (rating, at) = book.nodes.get(&peer).copied().unwrap_or((Rating::default(), Instant::now()));
        let now = rating.aged(at.elapsed().as_secs_f64() / 3600.0).after(event);
        let newly_convicted = event == Event::Convicted && !rating.convicted;
        book.nodes.insert(peer, (now, Instant::now()));
        drop(book);
        if newly_convicted {
            tracing::warn!(%peer, "convicted: left out of routes");
            self.store_conviction(&peer);
        }
    }

    /// Whether routing leaves `peer` out ([`Rating::excluded`]).
    pub fn excluded(&self, peer: &PeerId) -> bool {
        self.rating(peer).excluded()
    }

    /// What `peer`'s record takes off its cost in routing, as a factor: 1 for a stranger
    /// (or any score up to [`TRUSTED_FROM`]), down to `1 -` [`MAX_DISCOUNT`] for a score
    /// [`DISCOUNT_SPAN`] above it.
    pub fn trust(&self, peer: &PeerId) -> f64 {
        trust_of(self.rating(peer).score())
    }

    /// Whether the fraud report `id` ([`crate::trust::FraudReport::id`]) was counted.
    pub fn report_counted(&self, id: &[u8; 32]) -> bool {
        self.lock().reports.contains(id)
    }

    /// Forgets that the fraud report `id` was counted (its recomputation could not be made).
    pub fn forget_report(&self, id: &[u8; 32]) {
        self.lock().reports.remove(id);
    }

    /// Remembers that the fraud report `id` was counted; `false` if it already was.
    pub fn count_report(&self, id: [u8; 32]) -> bool {
        self.lock().reports.insert(id)
    }

    /// Every node in the book, with its rating now.
    pub fn ratings(&self) -> Vec<(PeerId, Rating)> {
        let book = self.lock();
        book.nodes.iter().map(|(p, (r, at))| (*p, r.aged(at.elapsed().as_secs_f64() / 3600.0))).collect()
    }
}

/// The routing cost factor of a conservative `score` (see [`Reputation::trust`]).
pub fn trust_of(score: f64) -> f64 {
    1.0 - MAX_DISCOUNT * ((score - TRUSTED_FROM) / DISCOUNT_SPAN).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn played(events: impl IntoIterator<Item = Event>) -> Rating {
        events.into_iter().fold(Rating::default(), Rating::after)
    }

    /// A record of `sessions` in which every `fail_every`-th failed.
    fn record(sessions: usize, fail_every: usize) -> Rating {
        played((0..sessions).map(|i| if i % fail_every == fail_every - 1 { Event::Failed } else { Event::Served }))
    }

    #[test]
    fn a_record_earns_a_discount_that_a_stranger_has_not() {
        let stranger = Rating::default();
        assert_eq!(stranger.score(), STRANGER_SCORE);
        assert_eq!(trust_of(stranger.score()), 1.0);
        assert!(!stranger.excluded());
        let (three, ten, hundred) =
            (played([Event::Served; 3]), played([Event::Served; 10]), played([Event::Served; 100]));
        assert_eq!(trust_of(three.score()), 1.0, "{three:?}");
        assert!(trust_of(ten.score()) < 1.0 && trust_of(ten.score()) > 1.0 - MAX_DISCOUNT / 2.0, "{ten:?}");
        assert!(trust_of(hundred.score()) < 1.0 - 0.8 * MAX_DISCOUNT, "{hundred:?}");
        assert!(hundred.rd < 100.0, "{hundred:?}");
        // A loss costs rating; the deviation keeps shrinking whatever the result.
        let lost = ten.after(Event::Failed);
        assert!(lost.rating < ten.rating && lost.rd < ten.rd);
        // A record with failures earns less than a clean one of the same length.
        assert!(record(300, 10).score() < record(300, 100).score());
        // Half its sessions served: a conservative score under the reference, no discount.
        let half = record(300, 2);
        assert!(half.score() < TRUSTED_FROM && !half.excluded(), "{half:?}");
    }

    #[test]
    fn convicted_nodes_and_nodes_that_mostly_fail_are_left_out() {
        let good = played([Event::Served; 50]);
        let convicted = good.after(Event::Convicted);
        assert!(convicted.convicted && convicted.excluded());
        assert_eq!(convicted.after(Event::Served).after(Event::AuditPassed), convicted);
        assert_eq!(convicted.aged(10_000.0), convicted);
        // A stranger is left out after five failures in a row, not four.
        assert!(!played([Event::Failed; 4]).excluded());
        assert!(played([Event::Failed; 5]).excluded());
        // A known node that serves two sessions in three stays in; one in five does not.
        assert!(!record(300, 3).excluded(), "{:?}", record(300, 3));
        let mostly_failing = played((0..300).map(|i| if i % 5 == 0 { Event::Served } else { Event::Failed }));
        assert!(mostly_failing.excluded(), "{mostly_failing:?}");
        // Time gives an excluded node (not a convicted one) another chance.
        assert!(!mostly_failing.aged(24.0 * 30.0).excluded());
    }

    #[test]
    fn convictions_outlive_a_restart_and_the_rest_does_not() {
        let dir = std::env::temp_dir().join(format!("ait-reputation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("reputation.redb");
        let (liar, served) = (PeerId::random(), PeerId::random());
        {
            let book = Reputation::open(&path).expect("a new book");
            book.record(liar, Event::Convicted);
            book.record(liar, Event::Convicted);
            book.record(served, Event::Served);
        }
        let book = Reputation::open(&path).expect("the book again");
        assert!(book.rating(&liar).convicted && book.excluded(&liar));
        assert_eq!(book.rating(&served), Rating::default(), "only convictions are kept");
        assert_eq!(book.ratings().len(), 1);
        drop(book);
        std::fs::write(&path, b"not a database").unwrap();
        assert!(Reputation::open(&path).is_err(), "a file that is not a book is an error");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_deviation_grows_back_with_time() {
        let r = played([Event::Served; 100]);
        assert!(r.aged(24.0).rd > r.rd);
        assert_eq!(r.aged(1e6).rd, INITIAL_RD);
        assert_eq!(r.aged(0.0), r);
    }

    #[test]
    fn the_book_is_shared_by_clones() {
        let book = Reputation::new();
        let (a, b) = (PeerId::random(), PeerId::random());
        let other = book.clone();
        for _ in 0..10 {
            other.record(a, Event::Served);
        }
        other.record(b, Event::Convicted);
        assert_eq!(book.rating(&a).games, 10);
        assert!(book.excluded(&b) && !book.excluded(&a) && !book.excluded(&PeerId::random()));
        assert!(book.trust(&a) < 1.0);
        assert_eq!(book.ratings().len(), 2);
        assert!(!book.report_counted(&[1; 32]));
        assert!(other.count_report([1; 32]) && !book.count_report([1; 32]) && book.report_counted(&[1; 32]));
    }
}
