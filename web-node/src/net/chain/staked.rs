//! Paying only servers the tribunal can slash (`ChainOptions::staked`): a server that
//! charges is routed through only when the address its terms pay binds its peer id in
//! `Staking` and holds at least the tribunal's slash bonded (stake already unbonding may be
//! withdrawn before an accusation lands, so it does not count). A lie of such a server
//! costs it that stake once two judges confirm the report (docs/ARCHITECTURE.md,
//! "Slashing"); a server paid elsewhere can only be convicted off chain. Free servers and
//! this node's own server are not checked: nobody pays them. This filters the servers a
//! route is planned through; audits and recomputations still use any server of the span.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use libp2p::PeerId;
use web_time::Instant;

use crate::settle::{ChainReads, GateHost};

/// How long an answer is trusted before the chain is read again.
pub const STAKE_FRESH_FOR: Duration = Duration::from_secs(300);

/// How long a failed read counts the payee as not slashable before it is tried again.
const FAILED_READ_FOR: Duration = Duration::from_secs(30);

/// Payees kept in the cache; the whole cache is dropped beyond this.
const MAX_PAYEES: usize = 10_000;

/// Which payees can be slashed, read from the chain and cached.
pub struct StakedOnly {
    reads: ChainReads<dyn GateHost>,
    min: U256,
    cache: Mutex<HashMap<(Address, PeerId), (bool, Instant)>>,
}

impl std::fmt::Debug for StakedOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StakedOnly").field("min", &self.min).finish()
    }
}

impl StakedOnly {
    /// Payees need `min` (the tribunal's slash) bonded, read through `reads`.
    pub fn new(reads: ChainReads<dyn GateHost>, min: U256) -> StakedOnly {
        StakedOnly { reads, min, cache: Mutex::new(HashMap::new()) }
    }

    /// Whether `payee` binds `peer` and holds the slash; a read that fails says no.
    pub async fn slashable(&self, payee: Address, peer: PeerId) -> bool {
        let key = (payee, peer);
        if let Some((ok, at)) = self.cache.lock().expect("stake cache").get(&key) {
            let fresh = if *ok { STAKE_FRESH_FOR } else { FAILED_READ_FOR.min(STAKE_FRESH_FOR) };
            if at.elapsed() < fresh {
                return *ok;
            }
        }
        let ok = match self.read(payee, peer).await {
            Ok(ok) => ok,
            Err(e) => {
                tracing::info!(%payee, %peer, "stake not read, so not paid: {e}");
                false
            }
        };
        let mut cache = self.cache.lock().expect("stake cache");
        if cache.len() >= MAX_PAYEES {
            cache.clear();
        }
        cache.insert(key, (ok, Instant::now()));
        ok
    }

    async fn read(&self, payee: Address, peer: PeerId) -> Result<bool, crate::settle::ReadError> {
        if self.reads.peer_id_of(payee).await?.as_ref() != peer.to_bytes().as_slice() {
            tracing::info!(%payee, %peer, "the payee does not bind the server's peer id: not paid");
            return Ok(false);
        }
        let staked = self.reads.stake_of(payee).await?;
        let ok = staked >= self.min;
        if !ok {
            tracing::info!(%payee, %peer, %staked, "the payee holds less than the slash: not paid");
        }
        Ok(ok)
    }
}
