//! What backs each payer's vouchers at a charging node, shared by the [`ChainGate`](super::ChainGate),
//! which sets it from the chain, and the node's redeemer, whose redeems lower it.
//!
//! A payer's backing is its allocation to this node on chain (less what thaws) with what
//! pending allocations add; the vouchers its sessions here promise beyond what was collected
//! must stay within it. A redeem moves what it collects out of the allocation, so two readings
//! would disagree in the moment between the chain mining a redeem and the ledger recording
//! what it collected: the allocation already lower, the vouchers still promising it. The
//! redeemer therefore holds [`Backing::redeeming`] from sending a redeem until the ledger
//! records it (and lowers the backing the gate read before by what it collected), and the gate
//! reads the chain and the ledger together under [`Backing::reading`].
//!
//! Both also keep the newest block either has seen ([`Backing::saw`]) and read the chain at
//! that block or later ([`ChainReads::latest_block_since`](super::ChainReads::latest_block_since)):
//! behind a load-balanced RPC, "latest" may be a block before a redeem the ledger recorded,
//! where the allocation still holds what the redeem collected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use alloy_primitives::{Address, U256};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Each payer's backing as last read, and the lock that keeps it consistent with the ledger.
#[derive(Debug, Default)]
pub struct Backing {
    by_payer: Mutex<HashMap<Address, U256>>,
    redeem: RwLock<()>,
    newest: AtomicU64,
}

impl Backing {
    /// `payer`'s backing as last read (zero if never).
    pub fn of(&self, payer: Address) -> U256 {
        self.map().get(&payer).copied().unwrap_or_default()
    }

    /// Sets `payer`'s backing to what was just read.
    pub fn set(&self, payer: Address, backing: U256) {
        self.map().insert(payer, backing);
    }

    /// A redeem just collected `amount` from `payer`'s allocation.
    pub fn collected(&self, payer: Address, amount: U256) {
        if let Some(b) = self.map().get_mut(&payer) {
            *b = b.saturating_sub(amount);
        }
    }

    /// Held while the chain and the ledger are read together: no redeem is between mined and
    /// recorded meanwhile.
    pub async fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.redeem.read().await
    }

    /// Held from sending a redeem until the ledger records what it collected.
    pub async fn redeeming(&self) -> RwLockWriteGuard<'_, ()> {
        self.redeem.write().await
    }

    /// Records that block `block` exists (this node read there, or mined a redeem there).
    pub fn saw(&self, block: u64) {
        self.newest.fetch_max(block, Ordering::Relaxed);
    }

    /// The newest block recorded by [`Backing::saw`] (0 if none): reads pin to it or later.
    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Address, U256>> {
        self.by_payer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redeem_lowers_the_backing_it_collected_from() {
        let b = Backing::default();
        let payer = Address::repeat_byte(1);
        b.set(payer, U256::from(100));
        b.collected(payer, U256::from(30));
        assert_eq!(b.of(payer), U256::from(70));
        b.collected(payer, U256::from(100));
        assert_eq!(b.of(payer), U256::ZERO);
        // A payer never read stays unread.
        b.collected(Address::repeat_byte(2), U256::from(5));
        assert_eq!(b.of(Address::repeat_byte(2)), U256::ZERO);
    }

    #[test]
    fn the_newest_block_seen_never_goes_back() {
        let b = Backing::default();
        assert_eq!(b.newest(), 0);
        b.saw(7);
        b.saw(5);
        assert_eq!(b.newest(), 7);
        b.saw(9);
        assert_eq!(b.newest(), 9);
    }
}
