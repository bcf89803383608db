//! A serving node's voucher ledger: the newest voucher of every (payer, session) it was paid
//! with, and the payer authorizations it has to submit, in a `redb` database. A voucher is
//! written (and the write made durable) before the step it came with is answered, and is
//! removed only once its redeem is final, so a node killed at any point and started again
//! redeems everything it was owed, once (the escrow pays only what a voucher adds to what was
//! collected). It also keeps the block of the node's newest redeem ([`Ledger::saw_block`]):
//! started again behind an RPC whose "latest" lags, the node still reads no block before it.

use std::path::Path;

use super::{SignedAllocation, SignedAuthorization, SignedVoucher};
use alloy_primitives::{Address, Signature, B256, U256};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Newest voucher per (payer, session): key `payer || session` (52 bytes), value [`Entry`] as
/// JSON.
const VOUCHERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("vouchers");
/// Payer authorizations of session keys to submit: key `payer || signer` (40 bytes), value a
/// [`SignedAuthorization`] as JSON.
const AUTHORIZATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("authorizations");
/// Signed allocations to submit, the newest per payer: key `payer` (20 bytes), value a
/// [`SignedAllocation`] as JSON.
const ALLOCATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("allocations");
/// [`NEWEST_BLOCK`] → the newest block a redeem of this node was mined in.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEWEST_BLOCK: &str = "newest_block";

/// Why the ledger failed. Nothing a peer sends causes one; each means the disk or the
/// database file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("voucher ledger: {0}")]
    Db(#[from] redb::Error),
    /// A stored entry does not decode.
    #[error("voucher ledger entry: {0}")]
    Entry(String),
}

fn db<E: Into<redb::Error>>(e: E) -> LedgerError {
    LedgerError::Db(e.into())
}

/// One stored voucher and what the chain had collected for its session when last read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The voucher, its signature's `v` as 27 or 28 (what the chain's `ecrecover` takes).
    pub voucher: SignedVoucher,
    /// Collected on chain for its session when last read.
    pub collected: U256,
}

impl Entry {
    /// What it promises beyond what was collected when last read.
    pub fn outstanding(&self) -> U256 {
        self.voucher.voucher.cumulativeAmount.saturating_sub(self.collected)
    }
}

fn key(payer: Address, session: B256) -> [u8; 52] {
    let mut k = [0u8; 52];
    k[..20].copy_from_slice(payer.as_slice());
    k[20..].copy_from_slice(session.as_slice());
    k
}

/// Everything a ledger holds, as plain data: a tab's ledger lives in memory, and IndexedDB
/// keeps a copy of this ([`Ledger::contents`]) to put back ([`Ledger::restore`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerContents {
    /// Every stored voucher.
    pub vouchers: Vec<Entry>,
    /// Every authorization waiting to be submitted.
    pub authorizations: Vec<SignedAuthorization>,
    /// Every allocation waiting to be submitted.
    pub allocations: Vec<SignedAllocation>,
    /// [`Ledger::newest_block`] (0 in copies made before it was kept).
    #[serde(default)]
    pub newest_block: u64,
}

/// The node's voucher ledger.
pub struct Ledger {
    db: Database,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Self::init(Database::create(path).map_err(db)?)
    }

    /// A ledger in memory (for one-shot commands and tests: it keeps nothing across a crash).
    pub fn in_memory() -> Result<Ledger, LedgerError> {
        Self::init(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(db)?)
    }

    fn init(database: Database) -> Result<Ledger, LedgerError> {
        let txn = database.begin_write().map_err(db)?;
        txn.open_table(VOUCHERS).map_err(db)?;
        txn.open_table(AUTHORIZATIONS).map_err(db)?;
        txn.open_table(ALLOCATIONS).map_err(db)?;
        txn.open_table(META).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Ledger { db: database })
    }

    /// Records, durably, that block `block` exists (a redeem of this node was mined in it),
    /// unless a newer one is recorded.
    pub fn saw_block(&self, block: u64) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(META).map_err(db)?;
            let kept = table.get(NEWEST_BLOCK).map_err(db)?.map(|g| g.value()).unwrap_or(0);
            if block > kept {
                table.insert(NEWEST_BLOCK, block).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// The newest block recorded by [`Ledger::saw_block`] (0 if none).
    pub fn newest_block(&self) -> Result<u64, LedgerError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(META).map_err(db)?;
        let block = table.get(NEWEST_BLOCK).map_err(db)?.map(|g| g.value()).unwrap_or(0);
        Ok(block)
    }

    /// Stores `voucher` as its session's newest, durably, unless the one stored is newer or
    /// the same; returns whether it was stored. The signature is kept with `v` as 27 or 28.
    pub fn put(&self, voucher: &SignedVoucher) -> Result<bool, LedgerError> {
        let sig = Signature::try_from(voucher.signature.as_ref()).map_err(|e| LedgerError::Entry(e.to_string()))?;
        let mut voucher = voucher.clone();
        voucher.signature = sig.as_bytes().to_vec().into();
        let v = &voucher.voucher;
        let k = key(v.payer, v.session);
        let txn = self.db.begin_write().map_err(db)?;
        let stored = {
            let mut table = txn.open_table(VOUCHERS).map_err(db)?;
            let old = match table.get(k.as_slice()).map_err(db)? {
                Some(g) => Some(decode::<Entry>(g.value())?),
                None => None,
            };
            if old.as_ref().is_some_and(|o| o.voucher.voucher.cumulativeAmount >= v.cumulativeAmount) {
                false
            } else {
                let collected = old.map_or(U256::ZERO, |o| o.collected);
                let entry = serde_json::to_vec(&Entry { voucher: voucher.clone(), collected })
                    .map_err(|e| LedgerError::Entry(e.to_string()))?;
                table.insert(k.as_slice(), entry.as_slice()).map_err(db)?;
                true
            }
        };
        txn.commit().map_err(db)?;
        Ok(stored)
    }

    /// Records what the chain collected for the session of (payer, session).
    pub fn set_collected(&self, payer: Address, session: B256, collected: U256) -> Result<(), LedgerError> {
        let k = key(payer, session);
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(VOUCHERS).map_err(db)?;
            let entry = match table.get(k.as_slice()).map_err(db)? {
                Some(g) => Some(decode::<Entry>(g.value())?),
                None => None,
            };
            if let Some(mut e) = entry {
                e.collected = collected;
                let bytes = serde_json::to_vec(&e).map_err(|e| LedgerError::Entry(e.to_string()))?;
                table.insert(k.as_slice(), bytes.as_slice()).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Removes the voucher of (payer, session) if the one stored pays at most `amount` (a
    /// newer one that came in meanwhile stays).
    pub fn remove_up_to(&self, payer: Address, session: B256, amount: U256) -> Result<(), LedgerError> {
        let k = key(payer, session);
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(VOUCHERS).map_err(db)?;
            let stored = match table.get(k.as_slice()).map_err(db)? {
                Some(g) => Some(decode::<Entry>(g.value())?),
                None => None,
            };
            if stored.is_some_and(|e| e.voucher.voucher.cumulativeAmount <= amount) {
                table.remove(k.as_slice()).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Keeps a payer's authorization of a session key until it is on chain.
    pub fn put_authorization(&self, a: &SignedAuthorization) -> Result<(), LedgerError> {
        let k = auth_key(a.authorization.payer, a.authorization.signer);
        let bytes = serde_json::to_vec(a).map_err(|e| LedgerError::Entry(e.to_string()))?;
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(AUTHORIZATIONS).map_err(db)?.insert(k.as_slice(), bytes.as_slice()).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Drops the authorization of `signer` by `payer` (applied, or void).
    pub fn remove_authorization(&self, payer: Address, signer: Address) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(AUTHORIZATIONS).map_err(db)?.remove(auth_key(payer, signer).as_slice()).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Every authorization waiting to be submitted.
    pub fn authorizations(&self) -> Result<Vec<SignedAuthorization>, LedgerError> {
        self.all(AUTHORIZATIONS)
    }

    /// Keeps a payer's signed allocation to this node until it is on chain, unless the one
    /// kept allocates as much or more.
    pub fn put_allocation(&self, a: &SignedAllocation) -> Result<(), LedgerError> {
        let k = a.allocation.payer;
        if self.allocation(k)?.is_some_and(|old| old.allocation.cumulativeAllocated >= a.allocation.cumulativeAllocated)
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(a).map_err(|e| LedgerError::Entry(e.to_string()))?;
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(ALLOCATIONS).map_err(db)?.insert(k.as_slice(), bytes.as_slice()).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// The signed allocation of `payer` waiting to be submitted, if any.
    pub fn allocation(&self, payer: Address) -> Result<Option<SignedAllocation>, LedgerError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ALLOCATIONS).map_err(db)?;
        let value = table.get(payer.as_slice()).map_err(db)?;
        value.map(|v| decode(v.value())).transpose()
    }

    /// Every signed allocation waiting to be submitted.
    pub fn allocations(&self) -> Result<Vec<SignedAllocation>, LedgerError> {
        self.all(ALLOCATIONS)
    }

    /// Drops the allocation of `payer` if it allocates at most `cumulative` (applied, or void).
    pub fn remove_allocation(&self, payer: Address, cumulative: U256) -> Result<(), LedgerError> {
        if self.allocation(payer)?.is_some_and(|a| a.allocation.cumulativeAllocated > cumulative) {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(ALLOCATIONS).map_err(db)?.remove(payer.as_slice()).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Whether a voucher of (payer, session) is kept.
    pub fn has(&self, payer: Address, session: B256) -> Result<bool, LedgerError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(VOUCHERS).map_err(db)?;
        let found = table.get(key(payer, session).as_slice()).map_err(db)?.is_some();
        Ok(found)
    }

    /// What the chain had collected for (payer, session) when last read, if a voucher of it
    /// is kept.
    pub fn collected_of(&self, payer: Address, session: B256) -> Result<Option<U256>, LedgerError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(VOUCHERS).map_err(db)?;
        let entry = table.get(key(payer, session).as_slice()).map_err(db)?;
        entry.map(|v| decode::<Entry>(v.value()).map(|e| e.collected)).transpose()
    }

    /// Every value of `table`, decoded.
    fn all<T: serde::de::DeserializeOwned>(&self, table: TableDefinition<&[u8], &[u8]>) -> Result<Vec<T>, LedgerError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(table).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Every stored voucher.
    pub fn entries(&self) -> Result<Vec<Entry>, LedgerError> {
        self.all(VOUCHERS)
    }

    /// Everything the ledger holds.
    pub fn contents(&self) -> Result<LedgerContents, LedgerError> {
        Ok(LedgerContents {
            vouchers: self.entries()?,
            authorizations: self.authorizations()?,
            allocations: self.allocations()?,
            newest_block: self.newest_block()?,
        })
    }

    /// Puts `contents` back into the ledger, meant for an empty one (a tab's, when the page
    /// starts seeding again).
    pub fn restore(&self, contents: &LedgerContents) -> Result<(), LedgerError> {
        for e in &contents.vouchers {
            let v = &e.voucher.voucher;
            self.put(&e.voucher)?;
            self.set_collected(v.payer, v.session, e.collected)?;
        }
        for a in &contents.authorizations {
            self.put_authorization(a)?;
        }
        for a in &contents.allocations {
            self.put_allocation(a)?;
        }
        self.saw_block(contents.newest_block)
    }

    /// What the stored vouchers of `payer` promise beyond what was collected, except
    /// `session`'s.
    pub fn outstanding_of(&self, payer: Address, except: Option<B256>) -> Result<U256, LedgerError> {
        Ok(self
            .entries()?
            .iter()
            .filter(|e| e.voucher.voucher.payer == payer && Some(e.voucher.voucher.session) != except)
            .fold(U256::ZERO, |a, e| a.saturating_add(e.outstanding())))
    }
}

fn auth_key(payer: Address, signer: Address) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(payer.as_slice());
    k[20..].copy_from_slice(signer.as_slice());
    k
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Entry(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::{SessionKey, Voucher};

    fn signed(session: u8, amount: u64) -> SignedVoucher {
        let key = SessionKey::from_bytes(&[0x44; 32]).unwrap();
        let voucher = Voucher {
            session: B256::repeat_byte(session),
            payer: key.address(),
            node: Address::repeat_byte(9),
            model: B256::repeat_byte(1),
            cumulativeAmount: U256::from(amount),
            cumulativeWork: U256::from(amount / 10),
            receipts: B256::repeat_byte(2),
            expiry: 2_000_000_000,
        };
        let d = crate::settle::escrow_domain(31337, Address::repeat_byte(5));
        let signature = key.sign(&voucher, &d).unwrap().as_bytes().to_vec().into();
        SignedVoucher { voucher, signature }
    }

    #[test]
    fn the_newest_voucher_and_block_survive_reopening_and_older_ones_never_replace_them() {
        let dir = std::env::temp_dir().join(format!("ait-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.redb");
        let _ = std::fs::remove_file(&path);
        let (a1, a2, b) = (signed(1, 100), signed(1, 250), signed(2, 70));
        {
            let l = Ledger::open(&path).unwrap();
            assert!(l.put(&a1).unwrap());
            assert!(l.put(&a2).unwrap());
            assert!(!l.put(&a1).unwrap(), "an older voucher replaced a newer one");
            assert!(!l.put(&a2).unwrap(), "the same voucher twice");
            assert!(l.put(&b).unwrap());
            l.set_collected(a2.voucher.payer, a2.voucher.session, U256::from(100u64)).unwrap();
            assert_eq!(l.newest_block().unwrap(), 0);
            l.saw_block(12).unwrap();
            l.saw_block(9).unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.newest_block().unwrap(), 12, "the newest redeem's block went back or was lost");
        let mut entries = l.entries().unwrap();
        entries.sort_by_key(|e| e.voucher.voucher.session);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].voucher.voucher, a2.voucher);
        assert_eq!(entries[0].outstanding(), U256::from(150u64));
        let payer = a2.voucher.payer;
        assert_eq!(l.outstanding_of(payer, None).unwrap(), U256::from(220u64));
        assert_eq!(l.outstanding_of(payer, Some(b.voucher.session)).unwrap(), U256::from(150u64));
        // Removing up to an older amount keeps the newer voucher.
        l.remove_up_to(payer, a2.voucher.session, U256::from(100u64)).unwrap();
        assert_eq!(l.entries().unwrap().len(), 2);
        l.remove_up_to(payer, a2.voucher.session, U256::from(250u64)).unwrap();
        assert_eq!(l.entries().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a tab copies to IndexedDB and puts back on reload: every voucher (with what was
    /// collected), authorization, allocation and the newest redeem's block, through JSON.
    #[test]
    fn contents_copied_out_and_restored_are_the_same_ledger() {
        let l = Ledger::in_memory().unwrap();
        let (a, b) = (signed(1, 250), signed(2, 70));
        l.put(&a).unwrap();
        l.put(&b).unwrap();
        l.set_collected(a.voucher.payer, a.voucher.session, U256::from(100u64)).unwrap();
        let (payer, signer) = (Address::repeat_byte(3), Address::repeat_byte(4));
        let authorization =
            crate::settle::AuthorizeSigner { payer, signer, nonce: U256::from(1u64), deadline: U256::from(9u64) };
        l.put_authorization(&SignedAuthorization { authorization, signature: vec![7; 65].into() }).unwrap();
        let allocation = crate::settle::Allocation {
            payer,
            node: Address::repeat_byte(9),
            cumulativeAllocated: U256::from(500u64),
            deadline: 77,
        };
        l.put_allocation(&SignedAllocation { allocation, signature: vec![8; 65].into() }).unwrap();
        l.saw_block(41).unwrap();
        let contents = l.contents().unwrap();
        let json = serde_json::to_string(&contents).unwrap();

        let back = Ledger::in_memory().unwrap();
        back.restore(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.newest_block().unwrap(), 41, "the newest redeem's block was not restored");
        assert_eq!(back.collected_of(a.voucher.payer, a.voucher.session).unwrap(), Some(U256::from(100u64)));
        assert_eq!(back.contents().unwrap(), contents);

        // A copy made before the block was kept restores with none.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("newest_block");
        let older = Ledger::in_memory().unwrap();
        older.restore(&serde_json::from_value(old).unwrap()).unwrap();
        assert_eq!(older.newest_block().unwrap(), 0);
        assert_eq!(older.entries().unwrap().len(), 2);
    }
}
