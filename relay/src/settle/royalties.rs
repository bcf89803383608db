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

use std::collections::HashMap;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use super::bindings::ModelRegistry;
use super::{latest_block, redeemed_events, ChainError, Deployment};

/// Blocks read by default: about a day at two-second blocks.
pub const DEFAULT_BLOCKS: u64 = 43_200;

/// Most blocks one look may read (the relay's endpoint caps what a page asks for).
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
    /// Paid sessions redeemed in the window (one per server of a route).
    pub sessions: u64,
    /// Layer-tokens those sessions' newest vouchers in the window count.
    pub work: U256,
    /// What the redeems paid in all (AIT, smallest unit).
    pub paid: U256,
    /// The creator's share of that: the royalties.
    pub royalties: U256,
    /// The first block read.
    pub from_block: u64,
    /// The latest block read.
    pub to_block: u64,
}

/// A provider that only reads, from `rpc`.
pub fn reader(rpc: &str) -> Result<DynProvider, ChainError> {
    crate::p2p::install_crypto_provider();
    let url = rpc.parse().map_err(|e| ChainError::Rpc(format!("bad RPC address {rpc}: {e}")))?;
    Ok(ProviderBuilder::new().connect_http(url).erased())
}

/// `model`'s registration on `d`'s chain and what redeems paid for it over the last `blocks`
/// blocks (at most [`MAX_BLOCKS`]).
pub async fn model_earnings(
    provider: &DynProvider,
    d: &Deployment,
    model: B256,
    blocks: u64,
) -> Result<ModelEarnings, ChainError> {
    let registry = ModelRegistry::new(d.registry, provider);
    let registration =
        registry.registration(model).call().await.map_err(|e| ChainError::contract("registration", &e))?;
    let royalty = registry.royaltyOf(model).call().await.map_err(|e| ChainError::contract("royaltyOf", &e))?;
    let (latest, _) = latest_block(provider).await?;
    let from_block = latest.saturating_sub(blocks.min(MAX_BLOCKS));
    // The model is not an indexed topic: read the window's redeems and keep its own.
    let redeemed = redeemed_events(provider, d.escrow, None, from_block, latest).await?;
    let mut work: HashMap<(Address, B256, Address), U256> = HashMap::new();
    let (mut paid, mut royalties) = (U256::ZERO, U256::ZERO);
    for (r, _) in redeemed.iter().filter(|(r, _)| r.model == model) {
        paid = paid.saturating_add(r.amount);
        royalties = royalties.saturating_add(r.creatorShare);
        // Vouchers are cumulative: a session's newest counts all its work.
        let w = work.entry((r.payer, r.session, r.node)).or_default();
        *w = (*w).max(r.cumulativeWork);
    }
    Ok(ModelEarnings {
        model,
        creator: registration.creator,
        payout: royalty.payout,
        royalty_bps: royalty.bps,
        sessions: work.len() as u64,
        work: work.values().fold(U256::ZERO, |a, w| a.saturating_add(*w)),
        paid,
        royalties,
        from_block,
        to_block: latest,
    })
}

/// How long a look is served again before the chain is read anew.
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Most looks kept (a page may ask about any model id).
const MAX_KEPT: usize = 256;

/// Most looks at the chain running at once.
const MAX_READING: usize = 2;

/// [`model_earnings`] for a relay's pages: each look is kept [`FRESH_FOR`], and at most
/// [`MAX_READING`] read the chain at once, so pages cannot make the relay flood its RPC.
pub struct Royalties {
    provider: DynProvider,
    deployment: Deployment,
    kept: std::sync::Mutex<HashMap<(B256, u64), (std::time::Instant, ModelEarnings)>>,
    reading: tokio::sync::Semaphore,
}

impl Royalties {
    /// Looks at `deployment`'s chain.
    pub fn new(deployment: Deployment) -> Result<Royalties, ChainError> {
        Ok(Royalties {
            provider: reader(&deployment.rpc)?,
            deployment,
            kept: Default::default(),
            reading: tokio::sync::Semaphore::new(MAX_READING),
        })
    }

    /// `model`'s earnings over the last `blocks` blocks, as read at most [`FRESH_FOR`] ago.
    pub async fn of(&self, model: B256, blocks: u64) -> Result<ModelEarnings, ChainError> {
        let key = (model, blocks.min(MAX_BLOCKS));
        let fresh = |kept: &HashMap<_, (std::time::Instant, ModelEarnings)>| {
            kept.get(&key).filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, e)| e.clone())
        };
        if let Some(e) = fresh(&self.lock()) {
            return Ok(e);
        }
        let _permit = self.reading.acquire().await.map_err(|_| ChainError::Rpc("shutting down".into()))?;
        // Another look may have read it while this one waited.
        if let Some(e) = fresh(&self.lock()) {
            return Ok(e);
        }
        let e = model_earnings(&self.provider, &self.deployment, key.0, key.1).await?;
        let mut kept = self.lock();
        kept.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        if kept.len() < MAX_KEPT {
            kept.insert(key, (std::time::Instant::now(), e.clone()));
        }
        Ok(e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(B256, u64), (std::time::Instant, ModelEarnings)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}
