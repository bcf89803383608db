//! What a model earned its creator, from chain data only: its registration in the
//! `ModelRegistry` (creator, payout address, royalty share) and the escrow's `Redeemed`
//! events that name it (what each redeem paid, its creator share, and the work its voucher
//! counts), over a window of recent blocks. The relay serves it to the app's Creator view
//! (`GET /ait/models/{id}/earnings`) and `ait model earnings ID` prints it.
//!
//! The chain knows paid sessions, not requests: a client opens one session per server of its
//! route, each with its own id, so one answer through three servers is three sessions. The
//! work is exact: a voucher counts the layer-tokens its session ran, so the tokens that went
//! through the model are the work over its number of layers (on routes where every server
//! charges; free servers leave no trace on chain).

use crate::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use super::bindings::ModelRegistry;
use super::{latest_block, redeemed_events, ChainError, Deployment};
use web_node::settle::chain::Redeemed;

/// Blocks read by default: about a day at two-second blocks.
pub const DEFAULT_BLOCKS: u64 = 43_200;

/// Most blocks one look reads (`ait model earnings --blocks` is capped at it).
pub const MAX_BLOCKS: u64 = 1_000_000;

/// A model's registration and what redeems paid for it over a window of blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEarnings {
    /// The model id.
    pub model: B256,
    /// Who registered it (zero when it is not registered: then its royalties go to the DAO).
    pub creator: Address,
    /// Where its royalties go (zero when not registered).
    pub payout: Address,
    /// The royalty share, basis points of each payment.
    pub royalty_bps: u16,
    /// What its redeems in the window add up to.
    pub totals: Totals,
    /// The first block read.
    pub from_block: u64,
    /// The latest block read.
    pub to_block: u64,
}

/// What the redeems of one model in a window add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Paid sessions (one per server of a route).
    pub sessions: u64,
    /// Layer-tokens: each session's newest voucher in the window counts all its work (also
    /// work paid before the window, for a session redeemed across its start).
    pub work: U256,
    /// What the redeems paid.
    pub paid: U256,
    /// The creator shares of that.
    pub royalties: U256,
}

/// Adds `redeemed` up by model: per session (payer, session, node) its newest cumulative
/// work, and every redeem's amount and creator share.
pub fn totals_by_model<'a>(redeemed: impl IntoIterator<Item = &'a Redeemed>) -> HashMap<B256, Totals> {
    let mut work: HashMap<(B256, Address, B256, Address), U256> = HashMap::new();
    let mut by_model: HashMap<B256, Totals> = HashMap::new();
    for r in redeemed {
        let t = by_model.entry(r.model).or_default();
        t.paid = t.paid.saturating_add(r.amount);
        t.royalties = t.royalties.saturating_add(r.creatorShare);
        // Vouchers are cumulative: a session's newest counts all its work.
        let w = work.entry((r.model, r.payer, r.session, r.node)).or_default();
        *w = (*w).max(r.cumulativeWork);
    }
    for ((model, ..), w) in work {
        let t = by_model.entry(model).or_default();
        t.sessions += 1;
        t.work = t.work.saturating_add(w);
    }
    by_model
}

/// A provider that only reads, from `rpc`.
pub fn reader(rpc: &str) -> Result<DynProvider, ChainError> {
    crate::p2p::install_crypto_provider();
    let url = rpc.parse().map_err(|e| ChainError::Rpc(format!("bad RPC address {rpc}: {e}")))?;
    Ok(ProviderBuilder::new().connect_http(url).erased())
}

/// The redeems of the last `blocks` blocks (at most [`MAX_BLOCKS`]) by model, and the window.
async fn window_totals(provider: &DynProvider, d: &Deployment, blocks: u64) -> Result<Window, ChainError> {
    let (latest, _) = latest_block(provider).await?;
    let from = latest.saturating_sub(blocks.min(MAX_BLOCKS));
    // The model is not an indexed topic: read the window's redeems and add them up by model.
    let redeemed = redeemed_events(provider, d.escrow, None, from, latest).await?;
    Ok((totals_by_model(redeemed.iter().map(|r| &r.event)), (from, latest)))
}

/// A model's creator, payout address and royalty share (basis points).
type Registration = (Address, Address, u16);

/// The redeems of a window of blocks by model, and the window (first and last block).
type Window = (HashMap<B256, Totals>, (u64, u64));

/// `model`'s creator, payout address and royalty share.
async fn registration(provider: &DynProvider, d: &Deployment, model: B256) -> Result<Registration, ChainError> {
    let registry = ModelRegistry::new(d.registry, provider);
    let r = registry.registration(model).call().await.map_err(|e| ChainError::contract("registration", &e))?;
    let royalty = registry.royaltyOf(model).call().await.map_err(|e| ChainError::contract("royaltyOf", &e))?;
    Ok((r.creator, royalty.payout, royalty.bps))
}

fn earnings(
    model: B256,
    (creator, payout, royalty_bps): Registration,
    totals: Totals,
    window: (u64, u64),
) -> ModelEarnings {
    ModelEarnings { model, creator, payout, royalty_bps, totals, from_block: window.0, to_block: window.1 }
}

/// `model`'s registration on `d`'s chain and what redeems paid for it over the last `blocks`
/// blocks (at most [`MAX_BLOCKS`]).
pub async fn model_earnings(
    provider: &DynProvider,
    d: &Deployment,
    model: B256,
    blocks: u64,
) -> Result<ModelEarnings, ChainError> {
    let reg = registration(provider, d, model).await?;
    let (mut totals, span) = window_totals(provider, d, blocks).await?;
    Ok(earnings(model, reg, totals.remove(&model).unwrap_or_default(), span))
}

/// How long a look is served again before the chain is read anew.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// Longest a look at the chain may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most models whose registration is kept.
const MAX_KEPT: usize = 256;

/// Why a page's look at a model's earnings got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookError {
    /// Both reads allowed at once are running: ask again shortly.
    #[error("the relay is reading the chain for other pages: try again shortly")]
    Busy,
    /// The chain failed or did not answer in time (the details go to the relay's log).
    #[error("the chain did not answer")]
    Chain,
}

/// What models earned over the last [`DEFAULT_BLOCKS`] blocks, for a relay's pages: the
/// window's redeems are read once for every model and kept [`FRESH_FOR`], each model's
/// registration too (the latest [`MAX_KEPT`]); one read runs at a time (a look that would
/// wait is [`LookError::Busy`]) and none longer than [`READ_TIMEOUT`], so pages cannot make
/// the relay flood its RPC or hold connections waiting on it.
pub struct Royalties {
    provider: DynProvider,
    deployment: Deployment,
    window: Mutex<Option<(Instant, Window)>>,
    registrations: Mutex<HashMap<B256, (Instant, Registration)>>,
    reading: tokio::sync::Semaphore,
}

impl Royalties {
    /// Looks at `deployment`'s chain.
    pub fn new(deployment: Deployment) -> Result<Royalties, ChainError> {
        Ok(Royalties {
            provider: reader(&deployment.rpc)?,
            deployment,
            window: Mutex::default(),
            registrations: Mutex::default(),
            reading: tokio::sync::Semaphore::new(1),
        })
    }

    /// `model`'s earnings over the last [`DEFAULT_BLOCKS`] blocks, as read at most
    /// [`FRESH_FOR`] ago.
    pub async fn of(&self, model: B256) -> Result<ModelEarnings, LookError> {
        if let Some(e) = self.kept(model) {
            return Ok(e);
        }
        let _permit = self.reading.try_acquire().map_err(|_| LookError::Busy)?;
        // Read what is not fresh, within the time allowed.
        let read = async {
            if self.kept_window().is_none() {
                let window = window_totals(&self.provider, &self.deployment, DEFAULT_BLOCKS).await?;
                *lock(&self.window) = Some((Instant::now(), window));
            }
            if self.kept_registration(model).is_none() {
                let reg = registration(&self.provider, &self.deployment, model).await?;
                let mut kept = lock(&self.registrations);
                kept.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
                if kept.len() >= MAX_KEPT {
                    let oldest = kept.iter().min_by_key(|(_, (at, _))| *at).map(|(m, _)| *m);
                    kept.retain(|m, _| Some(*m) != oldest);
                }
                kept.insert(model, (Instant::now(), reg));
            }
            Ok::<(), ChainError>(())
        };
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(%model, "reading a model's earnings: {e}");
                return Err(LookError::Chain);
            }
            Err(_) => {
                tracing::warn!(%model, "reading a model's earnings: no answer in {READ_TIMEOUT:?}");
                return Err(LookError::Chain);
            }
        }
        self.kept(model).ok_or(LookError::Chain)
    }

    fn kept_window(&self) -> Option<Window> {
        let w = lock(&self.window);
        w.as_ref().filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, window)| window.clone())
    }

    fn kept_registration(&self, model: B256) -> Option<Registration> {
        lock(&self.registrations).get(&model).filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, r)| *r)
    }

    fn kept(&self, model: B256) -> Option<ModelEarnings> {
        let reg = self.kept_registration(model)?;
        let (mut totals, span) = self.kept_window()?;
        Some(earnings(model, reg, totals.remove(&model).unwrap_or_default(), span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redeem(model: u8, session: u8, node: u8, amount: u64, work: u64) -> Redeemed {
        Redeemed {
            payer: Address::repeat_byte(1),
            node: Address::repeat_byte(node),
            session: B256::repeat_byte(session),
            model: B256::repeat_byte(model),
            amount: U256::from(amount),
            cumulativeWork: U256::from(work),
            receipts: B256::repeat_byte(session),
            nodeShare: U256::from(amount * 7 / 10),
            creatorShare: U256::from(amount * 2 / 10),
            daoShare: U256::from(amount - amount * 7 / 10 - amount * 2 / 10),
        }
    }

    #[test]
    fn a_sessions_newest_voucher_counts_its_work_and_every_redeem_its_pay() {
        let events = [
            // Model 1: session 1 at node 9 redeemed twice (cumulative work 10, then 30).
            redeem(1, 1, 9, 100, 10),
            redeem(1, 1, 9, 200, 30),
            // The same session id at another node is another session.
            redeem(1, 1, 8, 50, 10),
            // Model 2.
            redeem(2, 3, 9, 1000, 70),
        ];
        let t = totals_by_model(events.iter());
        let one = &t[&B256::repeat_byte(1)];
        assert_eq!((one.sessions, one.work, one.paid), (2, U256::from(40), U256::from(350)));
        assert_eq!(one.royalties, U256::from(20 + 40 + 10));
        let two = &t[&B256::repeat_byte(2)];
        assert_eq!(
            (two.sessions, two.work, two.paid, two.royalties),
            (1, U256::from(70), U256::from(1000), U256::from(200))
        );
        assert_eq!(t.len(), 2);
    }
}
