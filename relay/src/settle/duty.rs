//! What a node with a wallet does about the tribunal's cases on its own
//! (`contracts/src/Tribunal.sol`, docs/ARCHITECTURE.md "Slashing"), a pass at a time
//! ([`Duty::tick`]):
//!
//! - **Accused**, it appeals (putting up the bond from its stake), having fetched the report
//!   from the judges to show the jurors. It does not weigh the report itself: its own server
//!   is the one accused, so its check would run on a server others chose, and an honest
//!   node's appeal costs it nothing (the bond is slashed only when the jury confirms).
//! - **Juror** (enlisted with `--jury`), it fetches the report from the judges or the accused,
//!   recomputes it and votes. With no report shown by the second half of the jury's window,
//!   it votes the accused cleared: the accusers carry the burden of showing their evidence.
//!   When it cannot recompute the report by then (another model, no server of its layers),
//!   it abstains.
//! - **Anyone** draws the jury of an appealed case once its seed block is past, so a liar
//!   that appeals cannot let the seed expire.
//! - Any party closes its cases whose window ran out (`execute`): a judge is paid, locks lift.
//!
//! Cases are found in the tribunal's `Accused`, `Appealed` and `JuryDrawn` events. With a
//! store ([`Duty::keeping_cases_in`], the relay's `evidence.redb`), the open cases and the next
//! block to read are kept there: a restarted node goes on from where it stopped, and the
//! reports its open cases name are never dropped for newer ones. Without one, or on its first
//! start, it reads from [`LOOKBACK_BLOCKS`] back. A step that fails is tried again after
//! [`BACKOFF`], and no step takes longer than [`STEP_TIMEOUT`].

use std::collections::HashMap;
use std::sync::Arc;

use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider};
use futures::future::BoxFuture;
use libp2p::PeerId;
use web_node::settle::chain::log_chunks;
use web_node::trust::FraudReport;

use super::bindings::{Staking, Tribunal};
use super::{latest_block, mined, send_with_gas_margin, ChainError, Deployment};
use crate::evidence::{EvidenceStore, EvidenceStoreError, KeptCase};

/// Blocks read back for open cases when a node starts with nothing kept: longer than the
/// appeal and jury windows of a chain with 12 s blocks (3 + 2 + 2 days).
pub const LOOKBACK_BLOCKS: u64 = 60_000;

/// Blocks the next block to read moves on before it is saved with unchanged cases.
pub const SAVE_EVERY_BLOCKS: u64 = 100;

/// How often a relay does its duties.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a case whose step failed is left alone.
pub const BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest one case's step may take (fetching, recomputing, a transaction).
pub const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

/// Stages, as the contract numbers them.
const ACCUSED: u8 = 1;
const APPEALED: u8 = 2;
const DRAWN: u8 = 3;
const CLOSED: u8 = 4;

/// A juror's vote, as the contract numbers it: none yet.
const NO_VOTE: u8 = 0;

/// What a node knows of a case's evidence: fetching a report by id, and its own judgment.
pub trait Evidence: Send + Sync {
    /// The report `id`, asked of `holders` in turn (checked, and of that id); `None` when
    /// nobody shows it.
    fn report(&self, id: [u8; 32], holders: Vec<PeerId>) -> BoxFuture<'_, Option<FraudReport>>;
    /// Whether this node's recomputation of `report` finds the accused faulty; an error when
    /// it could not recompute it, or the recomputation agreed with nobody (the recomputing
    /// server says more about itself than about the accused).
    fn faulty<'a>(&'a self, report: &'a FraudReport) -> BoxFuture<'a, Result<bool, String>>;
}

/// A node's part in one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// It is accused.
    Accused = 1,
    /// It signed a verdict the accusation named.
    Judge = 2,
    /// It was drawn for the jury.
    Juror = 3,
    /// None of these: it only draws the jury of an appealed case.
    Bystander = 4,
}

impl Party {
    /// The part numbered `n` (as kept on disk).
    fn from_number(n: u8) -> Option<Party> {
        [Party::Accused, Party::Judge, Party::Juror, Party::Bystander].into_iter().find(|p| *p as u8 == n)
    }
}

/// What a pass did: what the tests and the logs read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acts {
    /// Cases appealed.
    pub appealed: usize,
    /// Juries drawn.
    pub drawn: usize,
    /// Votes cast: faulty, cleared.
    pub voted: (usize, usize),
    /// Juries abstained from.
    pub abstained: usize,
    /// Cases closed by `execute`.
    pub executed: usize,
}

/// A node's standing duties to the tribunal.
pub struct Duty<E> {
    me: Address,
    tribunal: Tribunal::TribunalInstance<DynProvider>,
    staking: Staking::StakingInstance<DynProvider>,
    provider: DynProvider,
    evidence: E,
    cases: HashMap<(B256, Address), Party>,
    /// The seed block of each appealed case, from its `Appealed` event.
    seeds: HashMap<(B256, Address), u64>,
    /// Cases whose last step failed, and when they are tried again.
    backoff: HashMap<(B256, Address), std::time::Instant>,
    /// The next block whose events are read.
    next_block: u64,
    /// What the cases are read from: the chain id, its genesis block's hash, the tribunal's
    /// address and this wallet's.
    scope: Vec<u8>,
    /// Where the cases and the next block are kept, and what was kept last.
    store: Option<(Arc<EvidenceStore>, Saved)>,
}

/// The cases and the next block to read, as last saved.
type Saved = (Vec<KeptCase>, u64);

impl<E: Evidence> Duty<E> {
    /// The duties of the wallet `provider` signs with (at `me`) on `d`'s tribunal, judging
    /// with `evidence`; reads events from [`LOOKBACK_BLOCKS`] back.
    pub async fn new(d: &Deployment, provider: DynProvider, me: Address, evidence: E) -> Result<Self, ChainError> {
        if d.tribunal.is_zero() {
            return Err(ChainError::Rpc("the chain's deployment file names no tribunal (deploy again)".into()));
        }
        let (latest, _) = latest_block(&provider).await?;
        // The genesis block tells a chain reset under the same id apart.
        let genesis = provider
            .get_block_by_number(0u64.into())
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?
            .ok_or_else(|| ChainError::Rpc("no genesis block".into()))?
            .header
            .hash;
        Ok(Duty {
            me,
            tribunal: Tribunal::new(d.tribunal, provider.clone()),
            staking: Staking::new(d.staking, provider.clone()),
            provider,
            evidence,
            cases: HashMap::new(),
            seeds: HashMap::new(),
            backoff: HashMap::new(),
            next_block: latest.saturating_sub(LOOKBACK_BLOCKS),
            scope: [&d.chain_id.to_be_bytes()[..], genesis.as_slice(), d.tribunal.as_slice(), me.as_slice()].concat(),
            store: None,
        })
    }

    /// Keeps the open cases and the next block to read in `store`, taking up those kept there
    /// for this chain, tribunal and wallet (if any: else reading from [`LOOKBACK_BLOCKS`]
    /// back, as without a store).
    pub fn keeping_cases_in(mut self, store: Arc<EvidenceStore>) -> Result<Self, EvidenceStoreError> {
        let (kept, next) = store.cases(&self.scope)?;
        for c in &kept {
            let Some(party) = Party::from_number(c.party) else {
                tracing::warn!(report = %hex::encode(&c.report[..8]), part = c.party, "a kept case of an unknown part: left out");
                continue;
            };
            let key = (B256::from(c.report), Address::from(c.accused));
            self.cases.insert(key, party);
            if let Some(seed) = c.seed {
                self.seeds.insert(key, seed);
            }
        }
        if let Some(next) = next {
            self.next_block = next;
        }
        self.store = Some((store, (kept, next.unwrap_or(0))));
        Ok(self)
    }

    /// The next block whose events are read.
    pub fn next_block(&self) -> u64 {
        self.next_block
    }

    /// Saves the cases and the next block to read when the cases changed since the last save,
    /// or the next block moved [`SAVE_EVERY_BLOCKS`] on (a restart reads those again).
    fn save(&mut self) {
        let Some((store, last)) = &mut self.store else { return };
        let mut cases: Vec<KeptCase> = self
            .cases
            .iter()
            .map(|((report, accused), party)| KeptCase {
                report: report.0,
                accused: accused.0 .0,
                party: *party as u8,
                seed: self.seeds.get(&(*report, *accused)).copied(),
            })
            .collect();
        cases.sort_by_key(|c| (c.report, c.accused));
        if last.0 == cases && self.next_block < last.1.saturating_add(SAVE_EVERY_BLOCKS) {
            return;
        }
        let now = (cases, self.next_block);
        match store.save_cases(&self.scope, &now.0, now.1) {
            Ok(()) => *last = now,
            Err(e) => tracing::warn!("keeping the tribunal cases: {e}"),
        }
    }

    /// Enlists the wallet for juries (its stake stays locked while it is enlisted).
    pub async fn enlist(&self) -> Result<(), ChainError> {
        mined("Tribunal.enlist", self.tribunal.enlist().send().await).await
    }

    /// The open cases this node is a party to, as far as it has read.
    pub fn cases(&self) -> &HashMap<(B256, Address), Party> {
        &self.cases
    }

    /// One pass: reads the new events, then does what each open case asks of this node
    /// (the cases known already, even when reading the events failed). A step that fails is
    /// logged and tried again after [`BACKOFF`].
    pub async fn tick(&mut self) -> Result<Acts, ChainError> {
        let read = self.read_events().await;
        let (latest, now) = latest_block(&self.provider).await?;
        let mut acts = Acts::default();
        let cases: Vec<_> = self.cases.iter().map(|(k, p)| (*k, *p)).collect();
        for (key, party) in cases {
            if self.backoff.get(&key).is_some_and(|at| at.elapsed() < BACKOFF) {
                continue;
            }
            let (report, accused) = key;
            let step = self.act(report, accused, party, (latest, now), &mut acts);
            let step = tokio::time::timeout(STEP_TIMEOUT, step).await;
            match step.unwrap_or_else(|_| Err(ChainError::Rpc(format!("no step in {STEP_TIMEOUT:?}")))) {
                Ok(done) => {
                    self.backoff.remove(&key);
                    if done {
                        self.cases.remove(&key);
                        self.seeds.remove(&key);
                    }
                }
                Err(e) => {
                    tracing::warn!(report = %short(report), %accused, ?party, "tribunal duty: {e}");
                    self.backoff.insert(key, std::time::Instant::now());
                }
            }
        }
        self.save();
        read.map(|()| acts)
    }

    /// Runs [`tick`](Self::tick) every `every`, forever.
    pub async fn run(mut self, every: std::time::Duration) {
        loop {
            match self.tick().await {
                Ok(acts) if acts != Acts::default() => tracing::info!(?acts, "tribunal duties done"),
                Ok(_) => {}
                Err(e) => tracing::warn!("tribunal duties: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Adds the cases that the events since the last read make this node a party to.
    async fn read_events(&mut self) -> Result<(), ChainError> {
        let (latest, _) = latest_block(&self.provider).await?;
        if self.next_block > latest + 1 {
            // The chain is behind what was read (reset under the same id): read it again.
            tracing::warn!(
                next = self.next_block,
                latest,
                "the chain is behind the tribunal events read; reading back"
            );
            self.next_block = latest.saturating_sub(LOOKBACK_BLOCKS);
        }
        let rpc = |e: alloy::contract::Error| ChainError::Rpc(format!("reading tribunal events: {e}"));
        for (from, to) in log_chunks(self.next_block, latest) {
            for (e, _) in self.tribunal.Accused_filter().from_block(from).to_block(to).query().await.map_err(rpc)? {
                if e.accused == self.me {
                    self.cases.insert((e.report, e.accused), Party::Accused);
                } else if e.judges.contains(&self.me) {
                    self.cases.insert((e.report, e.accused), Party::Judge);
                }
            }
            for (e, _) in self.tribunal.Appealed_filter().from_block(from).to_block(to).query().await.map_err(rpc)? {
                self.cases.entry((e.report, e.accused)).or_insert(Party::Bystander);
                self.seeds.insert((e.report, e.accused), e.seedBlock);
            }
            for (e, _) in self.tribunal.JuryDrawn_filter().from_block(from).to_block(to).query().await.map_err(rpc)? {
                if e.jury.contains(&self.me) {
                    self.cases.insert((e.report, e.accused), Party::Juror);
                }
            }
        }
        self.next_block = latest + 1;
        Ok(())
    }

    /// Does what the case asks of this node now (the chain's latest block and its time);
    /// `true` once the case needs nothing more.
    async fn act(
        &mut self,
        report: B256,
        accused: Address,
        party: Party,
        (latest, now): (u64, u64),
        acts: &mut Acts,
    ) -> Result<bool, ChainError> {
        let c = self.tribunal.caseOf(report, accused).call().await.map_err(|e| ChainError::contract("caseOf", &e))?;
        if c.stage == CLOSED || c.stage == 0 {
            return Ok(true);
        }
        if now >= c.deadline {
            if party == Party::Bystander {
                return Ok(true);
            }
            mined("Tribunal.execute", self.tribunal.execute(report, accused).send().await).await?;
            acts.executed += 1;
            return Ok(true);
        }
        match (c.stage, party) {
            (ACCUSED, Party::Accused) => {
                tracing::warn!(report = %short(report), "accused: appealing");
                mined("Tribunal.appeal", self.tribunal.appeal(report).send().await).await?;
                acts.appealed += 1;
                // Then the report is fetched and kept, to show the jurors (nothing a judge
                // does can hold up the appeal).
                let holders = self.holders(report, accused, false).await?;
                let shown = self.evidence.report(report.0, holders).await;
                tracing::info!(report = %short(report), shown = shown.is_some(), "accused: evidence");
            }
            (APPEALED, _) => {
                // The seed block must exist, and be past: the draw is tried next pass if not.
                let seed = self.seeds.get(&(report, accused));
                let seed = *seed.ok_or_else(|| ChainError::Rpc("the case's Appealed event was not read".into()))?;
                if latest > seed {
                    mined("Tribunal.draw", send_with_gas_margin(self.tribunal.draw(report, accused)).await).await?;
                    acts.drawn += 1;
                }
            }
            (DRAWN, Party::Juror) => {
                let mine = self.tribunal.voteOf(report, accused, self.me).call().await;
                if mine.map_err(|e| ChainError::contract("voteOf", &e))? != NO_VOTE {
                    return Ok(false);
                }
                let window = self.tribunal.juryWindow().call().await;
                let window = window.map_err(|e| ChainError::contract("juryWindow", &e))?;
                let second_half = now >= c.deadline.saturating_sub(window / 2);
                let shown = self.evidence.report(report.0, self.holders(report, accused, true).await?).await;
                let faulty = match &shown {
                    Some(r) => match self.evidence.faulty(r).await {
                        Ok(f) => f,
                        Err(e) if second_half => {
                            tracing::warn!(report = %short(report), "juror: cannot recompute the report, abstaining: {e}");
                            mined("Tribunal.abstain", self.tribunal.abstain(report, accused).send().await).await?;
                            acts.abstained += 1;
                            return Ok(false);
                        }
                        Err(e) => {
                            tracing::warn!(report = %short(report), "juror: could not recompute yet: {e}");
                            return Ok(false);
                        }
                    },
                    None if second_half => {
                        tracing::warn!(report = %short(report), "juror: nobody showed the report; voting cleared");
                        false
                    }
                    None => return Ok(false),
                };
                mined("Tribunal.vote", self.tribunal.vote(report, accused, faulty).send().await).await?;
                if faulty {
                    acts.voted.0 += 1;
                } else {
                    acts.voted.1 += 1;
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// Who may hold a case's report: its judges' peers, and the accused's when `accused_too`.
    async fn holders(&self, report: B256, accused: Address, accused_too: bool) -> Result<Vec<PeerId>, ChainError> {
        let parties =
            self.tribunal.partiesOf(report, accused).call().await.map_err(|e| ChainError::contract("partiesOf", &e))?;
        let mut who = parties.judges;
        if accused_too {
            who.push(accused);
        }
        let mut peers = Vec::new();
        for a in who {
            let bytes = self.staking.peerIdOf(a).call().await.map_err(|e| ChainError::contract("peerIdOf", &e))?;
            match PeerId::from_bytes(&bytes) {
                Ok(p) => peers.push(p),
                Err(_) => tracing::debug!(%a, "no peer id bound"),
            }
        }
        Ok(peers)
    }
}

fn short(report: B256) -> String {
    hex::encode(&report[..8])
}

impl<T: Evidence + ?Sized> Evidence for std::sync::Arc<T> {
    fn report(&self, id: [u8; 32], holders: Vec<PeerId>) -> BoxFuture<'_, Option<FraudReport>> {
        (**self).report(id, holders)
    }

    fn faulty<'a>(&'a self, report: &'a FraudReport) -> BoxFuture<'a, Result<bool, String>> {
        (**self).faulty(report)
    }
}
