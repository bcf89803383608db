//! What a node with a wallet does about the tribunal's cases on its own
//! (`contracts/src/Tribunal.sol`, docs/ARCHITECTURE.md "Slashing"), a pass at a time
//! ([`Duty::tick`]):
//!
//! - **Accused**, it fetches the case's report from the judges and recomputes it. When its
//!   own recomputation does not find it faulty, or nobody shows the report, it appeals
//!   (putting up the bond) and draws the jury; when it does, it lets the verdict stand.
//! - **Juror** (enlisted with `--jury`), it fetches the report from the judges or the accused,
//!   recomputes it and votes. With no report shown by the second half of the jury's window,
//!   it votes the accused cleared: the accusers carry the burden of showing their evidence.
//! - **Judge**, it draws the jury of its appealed cases.
//! - Any party closes its cases whose window ran out (`execute`): a judge is paid, locks lift.
//!
//! Cases are found in the tribunal's `Accused` and `JuryDrawn` events, read from
//! [`LOOKBACK_BLOCKS`] before the start on.

use std::collections::HashMap;

use alloy::primitives::{Address, B256};
use alloy::providers::DynProvider;
use futures::future::BoxFuture;
use libp2p::PeerId;
use web_node::settle::chain::log_chunks;
use web_node::trust::FraudReport;

use super::bindings::{Staking, Tribunal};
use super::{latest_block, mined, ChainError, Deployment};

/// Blocks read back for open cases when a node starts: longer than the appeal and jury
/// windows of a chain with 12 s blocks (3 + 2 + 2 days).
pub const LOOKBACK_BLOCKS: u64 = 60_000;

/// How often a relay does its duties.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// it could not recompute it (asked again next pass).
    fn faulty<'a>(&'a self, report: &'a FraudReport) -> BoxFuture<'a, Result<bool, String>>;
}

/// A node's part in one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// It is accused.
    Accused,
    /// It signed a verdict the accusation named.
    Judge,
    /// It was drawn for the jury.
    Juror,
}

/// What a pass did: what the tests and the logs read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acts {
    /// Cases appealed.
    pub appealed: usize,
    /// Accusations let stand after this node's own recomputation confirmed them.
    pub conceded: usize,
    /// Juries drawn.
    pub drawn: usize,
    /// Votes cast: faulty, cleared.
    pub voted: (usize, usize),
    /// Cases closed by `execute`.
    pub executed: usize,
}

/// A node's standing duties to the tribunal.
pub struct Duty<E> {
    me: Address,
    tribunal: Tribunal::TribunalInstance<DynProvider>,
    staking: Staking::StakingInstance<DynProvider>,
    d: Deployment,
    provider: DynProvider,
    evidence: E,
    cases: HashMap<(B256, Address), Party>,
    /// Accusations this node let stand: not looked at again.
    conceded: std::collections::HashSet<(B256, Address)>,
    /// The next block whose events are read.
    next_block: u64,
}

impl<E: Evidence> Duty<E> {
    /// The duties of the wallet `provider` signs with (at `me`) on `d`'s tribunal, judging
    /// with `evidence`; reads events from [`LOOKBACK_BLOCKS`] back.
    pub async fn new(d: &Deployment, provider: DynProvider, me: Address, evidence: E) -> Result<Self, ChainError> {
        if d.tribunal.is_zero() {
            return Err(ChainError::Rpc("the chain's deployment file names no tribunal (deploy again)".into()));
        }
        let (latest, _) = latest_block(&provider).await?;
        Ok(Duty {
            me,
            tribunal: Tribunal::new(d.tribunal, provider.clone()),
            staking: Staking::new(d.staking, provider.clone()),
            d: d.clone(),
            provider,
            evidence,
            cases: HashMap::new(),
            conceded: Default::default(),
            next_block: latest.saturating_sub(LOOKBACK_BLOCKS),
        })
    }

    /// Enlists the wallet for juries (its stake stays locked while it is enlisted).
    pub async fn enlist(&self) -> Result<(), ChainError> {
        mined("Tribunal.enlist", self.tribunal.enlist().send().await).await
    }

    /// The open cases this node is a party to, as far as it has read.
    pub fn cases(&self) -> &HashMap<(B256, Address), Party> {
        &self.cases
    }

    /// One pass: reads the new events, then does what each open case asks of this node.
    /// A step that fails is logged and tried again next pass.
    pub async fn tick(&mut self) -> Result<Acts, ChainError> {
        self.read_events().await?;
        let (_, now) = latest_block(&self.provider).await?;
        let mut acts = Acts::default();
        let cases: Vec<_> = self.cases.iter().map(|(k, p)| (*k, *p)).collect();
        for ((report, accused), party) in cases {
            match self.act(report, accused, party, now, &mut acts).await {
                Ok(true) => {
                    self.cases.remove(&(report, accused));
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(report = %short(report), %accused, ?party, "tribunal duty: {e}"),
            }
        }
        Ok(acts)
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
        let rpc = |e: alloy::contract::Error| ChainError::Rpc(format!("reading tribunal events: {e}"));
        for (from, to) in log_chunks(self.next_block, latest) {
            for (e, _) in self.tribunal.Accused_filter().from_block(from).to_block(to).query().await.map_err(rpc)? {
                if e.accused == self.me {
                    self.cases.insert((e.report, e.accused), Party::Accused);
                } else if e.judges.contains(&self.me) {
                    self.cases.insert((e.report, e.accused), Party::Judge);
                }
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

    /// Does what the case asks of this node now; `true` once the case needs nothing more.
    async fn act(
        &mut self,
        report: B256,
        accused: Address,
        party: Party,
        now: u64,
        acts: &mut Acts,
    ) -> Result<bool, ChainError> {
        let c = self.tribunal.caseOf(report, accused).call().await.map_err(|e| ChainError::contract("caseOf", &e))?;
        if c.stage == CLOSED || c.stage == 0 {
            return Ok(true);
        }
        if now >= c.deadline {
            mined("Tribunal.execute", self.tribunal.execute(report, accused).send().await).await?;
            acts.executed += 1;
            return Ok(true);
        }
        match (c.stage, party) {
            (ACCUSED, Party::Accused) if !self.conceded.contains(&(report, accused)) => {
                let shown = self.evidence.report(report.0, self.holders(report, accused, false).await?).await;
                let confirmed = match &shown {
                    Some(r) => self.evidence.faulty(r).await.unwrap_or_else(|e| {
                        tracing::warn!(report = %short(report), "could not recompute the report against us: {e}");
                        false
                    }),
                    None => false,
                };
                if confirmed {
                    tracing::warn!(report = %short(report), "our own recomputation confirms the verdict: no appeal");
                    self.conceded.insert((report, accused));
                    acts.conceded += 1;
                } else {
                    tracing::warn!(report = %short(report), shown = shown.is_some(), "accused: appealing");
                    super::tribunal::appeal(&self.d, &self.provider, report).await?;
                    acts.appealed += 1;
                }
            }
            (APPEALED, Party::Accused | Party::Judge) => {
                // The seed block must exist, and be past: the draw is tried next pass if not.
                let (latest, _) = latest_block(&self.provider).await?;
                let seed = self.seed_block(report, accused).await?;
                if latest > seed {
                    mined("Tribunal.draw", self.tribunal.draw(report, accused).send().await).await?;
                    acts.drawn += 1;
                }
            }
            (DRAWN, Party::Juror) => {
                let mine = self.tribunal.voteOf(report, accused, self.me).call().await;
                if mine.map_err(|e| ChainError::contract("voteOf", &e))? != NO_VOTE {
                    return Ok(false);
                }
                let shown = self.evidence.report(report.0, self.holders(report, accused, true).await?).await;
                let faulty = match &shown {
                    Some(r) => match self.evidence.faulty(r).await {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(report = %short(report), "juror: could not recompute yet: {e}");
                            return Ok(false);
                        }
                    },
                    None => {
                        let window = self.tribunal.juryWindow().call().await;
                        let window = window.map_err(|e| ChainError::contract("juryWindow", &e))?;
                        if now < c.deadline.saturating_sub(window / 2) {
                            return Ok(false);
                        }
                        tracing::warn!(report = %short(report), "juror: nobody showed the report; voting cleared");
                        false
                    }
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

    /// The block whose hash draws an appealed case's jury.
    async fn seed_block(&self, report: B256, accused: Address) -> Result<u64, ChainError> {
        let filter = self.tribunal.Appealed_filter().topic1(report).topic2(accused.into_word());
        let events = filter.from_block(self.next_block.saturating_sub(LOOKBACK_BLOCKS)).query().await;
        let events = events.map_err(|e| ChainError::Rpc(format!("reading the appeal: {e}")))?;
        events.last().map(|(e, _)| e.seedBlock).ok_or_else(|| ChainError::Rpc("no Appealed event".into()))
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
