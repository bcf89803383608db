//! A serving node's side of vouchers: check each voucher off chain before counting it, keep
//! only the newest per (payer, session), redeem them in batches, and let one go only once the
//! chain shows it collected `confirmations` blocks deep, so a reorg that drops a redeem
//! means it is sent again, and nothing is paid twice (the escrow pays only what a voucher
//! adds to what was collected).
//!
//! The chain is the record of what was paid: a held voucher is due while `collected` at the
//! latest block is below its amount, and done when `collected` at the final block (latest
//! minus `confirmations`) reaches it. So the redeemer keeps no transaction hashes and needs no
//! bookkeeping that a reorg could invalidate. What it holds is the node's [`Ledger`]: every
//! round starts from what the ledger keeps (the session server writes vouchers there as they
//! come), so a node started again after a crash redeems what it was owed.
//!
//! It reads the chain through its [`GateHost`]'s JSON-RPC and sends its transactions through
//! the host ([`GateHost::send`]: a relay's wallet, a tab's EIP-1193 wallet), so a relay's
//! redeem loop and a seeding tab's Redeem button run this same round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, Bytes, Signature, B256, U256};
use alloy_sol_types::Eip712Domain;

use super::chain::{ChainReads, GateHost, ReadError, SendError};
use super::gate::GateChain;
use super::wallet::{allocate_by_sig, authorize_signer_by_sig, redeem_batch, redeem_one};
use super::{escrow_domain, recover_signer, SettleError, SignedVoucher, Voucher};
use super::{Backing, Ledger, LedgerError};
use crate::time::timeout;

/// Why a redeem round, or a check of a voucher against the chain, failed: the chain could not
/// be read or a transaction's outcome is unknown (the next round reads the chain again), or
/// the ledger failed. Nothing held is lost.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The chain did not answer, or answered something that does not decode.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A transaction could not be sent, or whether it was mined is unknown.
    #[error("{call}: {reason}")]
    Send {
        /// What was sent.
        call: &'static str,
        /// Why.
        reason: String,
    },
    /// The node's voucher ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Most vouchers redeemed in one transaction.
pub const MAX_BATCH: usize = 200;

/// Why a voucher was not accepted. Each is the payer's (or an impostor's) fault, and leaves
/// what the node held as it was.
#[derive(Debug, thiserror::Error)]
pub enum VoucherError {
    /// It pays another node.
    #[error("voucher pays {0}, not this node")]
    WrongNode(Address),
    /// Malformed, or no key recovers from it.
    #[error(transparent)]
    Signature(#[from] SettleError),
    /// Signed by a key that is neither the payer nor one of its signers on chain.
    #[error("signed by {0}, which may not sign for the payer")]
    UnauthorizedSigner(Address),
    /// It expires before the node could redeem it.
    #[error("voucher expires at {expiry}, too soon to redeem (now {now})")]
    Expired {
        /// Its expiry (Unix seconds).
        expiry: u64,
        /// The chain's latest block time.
        now: u64,
    },
    /// Not above the newest voucher held, or what was collected, for the session: a replay or
    /// an older one.
    #[error("voucher for {amount} is not above the {held} already held or collected for this session")]
    Stale {
        /// Its cumulative amount.
        amount: U256,
        /// The newest held or collected.
        held: U256,
    },
    /// The payer's allocation to this node, less what thaws, does not cover it with what the
    /// payer's other sessions still owe.
    #[error("the payer's allocation ({allocation} not thawing) does not cover {owed} owed")]
    Unbacked {
        /// What it adds to what was collected.
        owed: U256,
        /// The allocation's balance.
        allocation: U256,
    },
    /// The chain could not be asked.
    #[error(transparent)]
    Chain(#[from] ReadError),
    /// The ledger could not keep it.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A held voucher.
#[derive(Clone, Debug)]
struct Held {
    voucher: Voucher,
    /// `r || s || v` with `v` 27 or 28, as the chain's `ecrecover` wants it.
    signature: Bytes,
    /// What the chain had collected for its session when last read.
    collected: U256,
    /// The last time a redeem of it failed, and why.
    refused: Option<String>,
}

impl Held {
    /// What it promises beyond what was collected when last read.
    fn outstanding(&self) -> U256 {
        self.voucher.cumulativeAmount.saturating_sub(self.collected)
    }
}

/// What one [`Redeemer::redeem_due`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedeemReport {
    /// Vouchers sent in the batch (or one by one after the batch reverted).
    pub sent: usize,
    /// Vouchers that stay held because the chain refused them (reason per voucher).
    pub refused: Vec<String>,
    /// Vouchers let go: collected at the final block.
    pub finalized: usize,
    /// The cumulative amounts of the vouchers let go, summed (what their sessions paid in all,
    /// earlier redeems included; the node gets 70% of it).
    pub finalized_amount: U256,
    /// Vouchers dropped because they expired before they were collected.
    pub expired: usize,
}

/// Keeps a node's vouchers until the chain has paid them for good.
pub struct Redeemer {
    host: Arc<dyn GateHost>,
    reads: ChainReads<dyn GateHost>,
    escrow: Address,
    domain: Eip712Domain,
    node: Address,
    /// Blocks a redeem must be under before its voucher is let go.
    confirmations: u64,
    /// A voucher must stay redeemable this long after it is accepted.
    expiry_margin: u64,
    /// How long one chain round may take.
    rpc_timeout: Option<Duration>,
    /// What the ledger held at the last round or accept, with refusals seen since.
    held: BTreeMap<(Address, B256), Held>,
    ledger: Arc<Ledger>,
    /// What the node's gate counts as each payer's backing, lowered as redeems collect.
    backing: Arc<Backing>,
}

impl Redeemer {
    /// A redeemer for `node` on `chain`, reading it and sending its redeems through `host`
    /// (whose wallet pays the gas; the AIT goes to `node` whoever sends them), final
    /// `confirmations` blocks deep, redeeming what `ledger` holds.
    pub fn new(
        chain: GateChain,
        confirmations: u64,
        host: Arc<dyn GateHost>,
        node: Address,
        ledger: Arc<Ledger>,
    ) -> Redeemer {
        let mut r = Redeemer {
            reads: ChainReads::new(host.clone(), chain.escrow, chain.staking),
            host,
            escrow: chain.escrow,
            domain: escrow_domain(chain.chain_id, chain.escrow),
            node,
            confirmations,
            expiry_margin: 600,
            rpc_timeout: Some(Duration::from_secs(30)),
            held: BTreeMap::new(),
            ledger,
            backing: Arc::default(),
        };
        if let Err(e) = r.load() {
            tracing::warn!("reading the voucher ledger: {e}");
        }
        r.recall_newest_block();
        r
    }

    /// Gives the backing the block of this node's newest redeem that the ledger kept: a node
    /// started again reads no block before it either.
    fn recall_newest_block(&self) {
        match self.ledger.newest_block() {
            Ok(block) => self.backing.saw(block),
            Err(e) => tracing::warn!("reading the newest redeem's block from the voucher ledger: {e}"),
        }
    }

    /// Takes what the ledger holds (vouchers the session server kept since), keeping the
    /// refusals seen so far.
    fn load(&mut self) -> Result<(), LedgerError> {
        let mut held = BTreeMap::new();
        for e in self.ledger.entries()? {
            let v = e.voucher.voucher;
            let key = (v.payer, v.session);
            let refused = self.held.get(&key).and_then(|h| h.refused.clone());
            held.insert(key, Held { voucher: v, signature: e.voucher.signature, collected: e.collected, refused });
        }
        self.held = held;
        Ok(())
    }

    /// Shares `backing` with the node's gate: a redeem lowers it by what it collects, and the
    /// gate reads the chain only between redeems recorded (default: a backing of its own).
    pub fn with_backing(mut self, backing: Arc<Backing>) -> Self {
        self.backing = backing;
        self.recall_newest_block();
        self
    }

    /// Blocks a redeem must be under before its voucher is let go.
    pub fn with_confirmations(mut self, blocks: u64) -> Self {
        self.confirmations = blocks;
        self
    }

    /// How long one chain round may take before it fails (default 30 s).
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = Some(timeout);
        self
    }

    /// No limit on a round as a whole (a tab's, which waits for the person at each wallet
    /// prompt): each read still gives up after its own timeout, and each transaction after the
    /// host's wait for it to be mined.
    pub fn without_round_limit(mut self) -> Self {
        self.rpc_timeout = None;
        self
    }

    /// Vouchers held (newest per payer and session).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// What the held vouchers promise in all (collected or not).
    pub fn held_amount(&self) -> U256 {
        self.held.values().map(|h| h.voucher.cumulativeAmount).fold(U256::ZERO, |a, b| a.saturating_add(b))
    }

    /// What the held vouchers promise beyond what the chain had collected when last read.
    pub fn outstanding(&self) -> U256 {
        self.held.values().map(Held::outstanding).fold(U256::ZERO, |a, b| a.saturating_add(b))
    }

    /// Whether a round is worth its gas now, from what the ledger holds: what the vouchers add
    /// to what was collected reaches `min` (and is more than zero), or one expires before
    /// `expiring_before` (Unix seconds), or one was collected and waits to become final, or a
    /// payer's authorization or allocation waits to be submitted.
    pub fn due(&mut self, min: U256, expiring_before: u64) -> Result<bool, LedgerError> {
        self.load()?;
        if !self.ledger.authorizations()?.is_empty() || !self.ledger.allocations()?.is_empty() {
            return Ok(true);
        }
        let outstanding = self.outstanding();
        Ok((!outstanding.is_zero() && outstanding >= min)
            || self.held.values().any(|h| h.voucher.expiry < expiring_before || h.outstanding().is_zero()))
    }

    /// Checks `voucher` off chain and against the chain's view of its payer, and keeps it
    /// when it is newer than what is held for its session; returns what it adds.
    pub async fn accept(&mut self, voucher: Voucher, signature: &[u8]) -> Result<U256, VoucherError> {
        if voucher.node != self.node {
            return Err(VoucherError::WrongNode(voucher.node));
        }
        let signer = recover_signer(&voucher, &self.domain, signature)?;
        // Kept with v as 27 or 28 whatever form it came in: the chain's ecrecover takes only those.
        let normalized = Signature::try_from(signature)
            .map_err(|e| VoucherError::Signature(SettleError::Signature(e.to_string())))?
            .as_bytes();
        let key = (voucher.payer, voucher.session);
        let held = self.held.get(&key).map(|h| h.voucher.cumulativeAmount).unwrap_or_default();
        if voucher.cumulativeAmount <= held {
            return Err(VoucherError::Stale { amount: voucher.cumulativeAmount, held });
        }
        let limit = self.rpc_timeout.unwrap_or(Duration::from_secs(30));
        let (now, authorized, collected, allocation) = timeout(limit, self.payer_state(&voucher, signer))
            .await
            .unwrap_or_else(|| Err(ReadError(format!("no answer in {limit:?}"))))?;
        if voucher.expiry < now.saturating_add(self.expiry_margin) {
            return Err(VoucherError::Expired { expiry: voucher.expiry, now });
        }
        if !authorized {
            return Err(VoucherError::UnauthorizedSigner(signer));
        }
        if voucher.cumulativeAmount <= collected {
            return Err(VoucherError::Stale { amount: voucher.cumulativeAmount, held: collected });
        }
        // One allocation backs all of the payer's sessions with this node: what the others
        // still promise counts against it too.
        let others = self
            .held
            .iter()
            .filter(|((payer, session), _)| *payer == voucher.payer && *session != voucher.session)
            .map(|(_, h)| h.outstanding())
            .fold(U256::ZERO, |a, b| a.saturating_add(b));
        let owed = voucher.cumulativeAmount - collected + others;
        if owed > allocation {
            return Err(VoucherError::Unbacked { owed, allocation });
        }
        let added = voucher.cumulativeAmount - held.max(collected);
        let signature = Bytes::from(normalized.to_vec());
        self.ledger.put(&SignedVoucher { voucher: voucher.clone(), signature: signature.clone() })?;
        self.ledger.set_collected(voucher.payer, voucher.session, collected)?;
        self.held.insert(key, Held { voucher, signature, collected, refused: None });
        Ok(added)
    }

    /// The chain's time, whether `signer` signs for the payer, what was collected for the
    /// session and the payer's allocation to this node that is not thawing, all at the latest
    /// block.
    async fn payer_state(&self, v: &Voucher, signer: Address) -> Result<(u64, bool, U256, U256), ReadError> {
        let (block, now) = self.latest().await?;
        let at = self.reads.at(block);
        let authorized = at.is_signer(v.payer, signer).await?;
        let collected = at.collected(v.payer, v.session, self.node).await?;
        // What thaws does not count: a thaw that ran its period can be withdrawn at any moment.
        let allocation = at.available(v.payer, self.node).await?;
        Ok((now, authorized, collected, allocation))
    }

    /// The latest block and its time, never a block before the newest this node saw (shared
    /// with the gate through the backing), which it becomes.
    async fn latest(&self) -> Result<(u64, u64), ReadError> {
        let (block, now) = self.reads.latest_block_since(self.backing.newest()).await?;
        self.backing.saw(block);
        Ok((block, now))
    }

    /// What was collected for `v`'s (payer, session) and this node, at block `at`.
    async fn collected(&self, v: &Voucher, at: u64) -> Result<U256, ReadError> {
        self.reads.at(at).collected(v.payer, v.session, self.node).await
    }

    /// Sends `data` to the escrow and waits until it is mined: `Ok(Ok(()))` when it succeeded,
    /// `Ok(Err(reason))` when the chain refused it (the contract's error), `Err` when it could
    /// not be sent or its outcome is unknown.
    async fn send(&self, call: &'static str, data: Bytes) -> Result<Result<(), String>, RedeemError> {
        match self.host.send(self.escrow, data).await {
            Ok(block) => {
                // Later reads are at this block or after it, where the chain shows what it did,
                // after a restart too.
                self.backing.saw(block);
                if let Err(e) = self.ledger.saw_block(block) {
                    tracing::warn!("keeping the redeem's block {block} in the voucher ledger: {e}");
                }
                Ok(Ok(()))
            }
            Err(SendError::Refused(reason)) => Ok(Err(reason)),
            Err(SendError::Failed(reason)) => Err(RedeemError::Send { call, reason }),
        }
    }

    /// One round: lets go of vouchers collected at the final block, and redeems in one batch
    /// those the latest block has not collected (after a reorg dropped a redeem, that is it
    /// again). A batch the chain refuses is retried voucher by voucher, and a refused voucher
    /// stays held with its reason. A chain that is down or slow is an error; nothing is lost.
    pub async fn redeem_due(&mut self) -> Result<RedeemReport, RedeemError> {
        let Some(limit) = self.rpc_timeout else { return self.round().await };
        timeout(limit, self.round())
            .await
            .unwrap_or_else(|| Err(RedeemError::Read(ReadError(format!("the round took over {limit:?}")))))
    }

    async fn round(&mut self) -> Result<RedeemReport, RedeemError> {
        self.load()?;
        let mut report = RedeemReport::default();
        let (latest, now) = self.latest().await?;
        self.authorize(now).await?;
        self.allocate(now).await?;
        let final_block = latest.saturating_sub(self.confirmations);
        let (mut done, mut send, mut seen) = (Vec::new(), Vec::new(), Vec::new());
        for (key, held) in &self.held {
            let v = &held.voucher;
            let at_final = self.collected(v, final_block).await?;
            if at_final >= v.cumulativeAmount {
                report.finalized += 1;
                report.finalized_amount += v.cumulativeAmount;
                done.push(*key);
                continue;
            }
            // Collected at the latest block but not yet final: wait. Not collected: send it,
            // unless it expired (the chain would refuse it, and the whole batch with it).
            let at_latest = if self.confirmations == 0 { at_final } else { self.collected(v, latest).await? };
            seen.push((*key, at_latest));
            if at_latest < v.cumulativeAmount {
                if v.expiry < now {
                    tracing::warn!(payer = %key.0, session = %key.1, "voucher expired before it was redeemed; dropped");
                    report.expired += 1;
                    done.push(*key);
                } else {
                    send.push(*key);
                }
            }
        }
        seen.retain(|(key, collected)| self.held.get(key).is_some_and(|h| h.collected != *collected));
        if !seen.is_empty() {
            // A redeem this node did not record (a round cut short after it was mined, or the
            // payer's own): the backing first, then the ledger, as in `collected_now`.
            let backing = self.backing.clone();
            let _recording = backing.redeeming().await;
            for (key, collected) in seen {
                if let Some(h) = self.held.get_mut(&key) {
                    self.backing.collected(key.0, collected.saturating_sub(h.collected));
                    self.ledger.set_collected(key.0, key.1, collected)?;
                    h.collected = collected;
                }
            }
        }
        for key in &done {
            if let Some(h) = self.held.remove(key) {
                self.ledger.remove_up_to(key.0, key.1, h.voucher.cumulativeAmount)?;
            }
        }
        if send.is_empty() {
            return Ok(report);
        }
        // A batch stays far under a block's gas (about 25,000 gas a voucher); the rest go in
        // the next round.
        send.truncate(MAX_BATCH);
        report.sent = send.len();
        let vouchers: Vec<SignedVoucher> = send
            .iter()
            .map(|k| SignedVoucher { voucher: self.held[k].voucher.clone(), signature: self.held[k].signature.clone() })
            .collect();
        // From sending until the ledger records what was collected, the gate does not read
        // the chain (it would see the allocation lowered and the vouchers still promising).
        let backing = self.backing.clone();
        let recording = backing.redeeming().await;
        match self.send("redeemBatch", redeem_batch(&vouchers)).await? {
            Ok(()) => {
                for key in &send {
                    self.collected_now(key)?;
                }
            }
            Err(reason) if send.len() > 1 => {
                drop(recording);
                tracing::warn!(%reason, "batch redeem refused; redeeming one by one");
                for (key, v) in send.iter().zip(&vouchers) {
                    // One redeem at a time keeps the gate out (for as long as the host takes to
                    // send it: a wallet prompt, in a tab).
                    let _recording = backing.redeeming().await;
                    let outcome = self.send("redeem", redeem_one(v)).await?;
                    self.after(key, outcome, &mut report)?;
                }
            }
            Err(reason) => self.after(&send[0], Err(reason), &mut report)?,
        }
        Ok(report)
    }

    /// Submits the payer authorizations of session keys that paid sessions brought (the
    /// session server checked their signatures when it took them), before the vouchers those
    /// keys signed are redeemed; drops those applied, expired or void.
    async fn authorize(&mut self, now: u64) -> Result<(), RedeemError> {
        for a in self.ledger.authorizations()? {
            let (payer, signer) = (a.authorization.payer, a.authorization.signer);
            let on_chain = self.reads.is_signer(payer, signer).await?;
            if !on_chain && a.authorization.deadline >= U256::from(now) {
                match self.send("authorizeSignerBySig", authorize_signer_by_sig(&a)).await? {
                    Ok(()) => tracing::info!(%payer, %signer, "submitted the payer's authorization of its session key"),
                    Err(reason) => {
                        tracing::warn!(%payer, %signer, %reason, "the payer's authorization is void; dropped");
                    }
                }
            } else if !on_chain {
                tracing::warn!(%payer, %signer, "the payer's authorization expired before it was submitted; dropped");
            }
            self.ledger.remove_authorization(payer, signer)?;
        }
        Ok(())
    }

    /// Submits the signed allocations paid sessions brought, after the authorizations of the
    /// keys that signed them and before the vouchers they back are redeemed; drops those
    /// applied, expired or void.
    async fn allocate(&mut self, now: u64) -> Result<(), RedeemError> {
        for a in self.ledger.allocations()? {
            let payer = a.allocation.payer;
            let cumulative = a.allocation.cumulativeAllocated;
            let total = self.reads.allocated_total(payer, self.node).await?;
            if cumulative > total && a.allocation.deadline >= now {
                match self.send("allocateBySig", allocate_by_sig(&a)).await? {
                    Ok(()) => tracing::info!(%payer, added = %(cumulative - total), "submitted the payer's allocation"),
                    Err(reason) => {
                        tracing::warn!(%payer, %reason, "the payer's allocation is void; dropped");
                    }
                }
            } else if cumulative > total {
                tracing::warn!(%payer, "the payer's allocation expired before it was submitted; dropped");
            }
            self.ledger.remove_allocation(payer, cumulative)?;
        }
        Ok(())
    }

    /// Records that the held voucher of `key` was just redeemed: a redeem pays in full or
    /// reverts, so the chain's latest block collected all of it. The ledger says so at once,
    /// so what it counts as still promised (and a charging node's sessions are backed
    /// against) does not count it twice until the redeem is final and the voucher let go.
    fn collected_now(&mut self, key: &(Address, B256)) -> Result<(), RedeemError> {
        if let Some(h) = self.held.get_mut(key) {
            h.refused = None;
            // The backing first: until the ledger records it too, a voucher is refused
            // rather than let through on a backing that no longer holds.
            self.backing.collected(key.0, h.voucher.cumulativeAmount.saturating_sub(h.collected));
            h.collected = h.voucher.cumulativeAmount;
            self.ledger.set_collected(key.0, key.1, h.collected)?;
        }
        Ok(())
    }

    /// Records a redeem's outcome: a refusal stays with the voucher; a chain failure ends the round.
    fn after(
        &mut self,
        key: &(Address, B256),
        outcome: Result<(), String>,
        report: &mut RedeemReport,
    ) -> Result<(), RedeemError> {
        match outcome {
            Ok(()) => self.collected_now(key),
            Err(reason) => {
                tracing::warn!(payer = %key.0, session = %key.1, %reason, "voucher refused on chain; kept");
                report.refused.push(reason.clone());
                if let Some(h) = self.held.get_mut(key) {
                    h.refused = Some(reason);
                }
                Ok(())
            }
        }
    }

    /// Why the chain last refused the held voucher of (payer, session), if it did.
    pub fn refusal(&self, payer: Address, session: B256) -> Option<&str> {
        self.held.get(&(payer, session)).and_then(|h| h.refused.as_deref())
    }
}
