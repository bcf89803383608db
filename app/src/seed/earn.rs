//! A seeding tab that charges for its work, and spends what it earns.
//!
//! With a price set and a wallet connected, the tab serves through the same
//! [`ChainGate`] as a relay: its node address is the connected wallet's, it reads the chain
//! through the wallet (EIP-1193), and keeps vouchers in an in-memory [`Ledger`] whose every
//! write is copied to IndexedDB (`store::ledger_*`) before the step it came with is
//! answered; a reloaded tab restores them. Redeeming and spending are the person's steps,
//! each one wallet transaction or a few: [`Charging::redeem`] submits the payers'
//! authorizations and allocations waiting, then the vouchers in one `redeemBatch`;
//! [`Charging::spend_earned`] moves what the escrow credited this node into its deposit
//! (`depositEarned`), which then pays the tab's own chats through its session key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, U256};
use send_wrapper::SendWrapper;
use serde_json::Value;
use web_node::settle::chain::{earned_from_others, Kept};
use web_node::settle::gate::EARNED_WINDOW_BLOCKS;
use web_node::settle::pay::DEFAULT_CREDIT_TOKENS;
use web_node::settle::wallet::{allocate_by_sig, authorize_signer_by_sig, deposit_earned, redeem_batch};
use web_node::settle::{
    format_ait, ChainGate, ChainReads, GateChain, GateFuture, GateHost, Ledger, PaymentGate, SignedAllocation,
    SignedAuthorization, SignedVoucher,
};
use web_time::Instant;

use crate::error::AppError;
use crate::store;
use crate::wallet::{chain_time, eip1193, send_and_wait, Wallet};

/// The tab's [`GateHost`]: the wallet's JSON-RPC, ledger writes run at once (one thread), and
/// each kept voucher copied to IndexedDB. It also counts what this run's vouchers promise.
#[derive(Default)]
struct TabHost {
    /// Each session's newest voucher amount received since seeding began.
    received: Mutex<HashMap<(Address, B256), U256>>,
}

fn voucher_key(payer: Address, session: B256) -> String {
    format!("voucher:{payer}:{session}")
}

fn kept_record(kept: Kept<'_>) -> Result<(String, Value), String> {
    let json = |v: serde_json::Result<Value>| v.map_err(|e| e.to_string());
    Ok(match kept {
        Kept::Voucher(v) => (voucher_key(v.voucher.payer, v.voucher.session), json(serde_json::to_value(v))?),
        Kept::Authorization(a) => {
            (format!("auth:{}:{}", a.authorization.payer, a.authorization.signer), json(serde_json::to_value(a))?)
        }
        Kept::Allocation(a) => (format!("alloc:{}", a.allocation.payer), json(serde_json::to_value(a))?),
    })
}

impl GateHost for TabHost {
    fn rpc<'a>(&'a self, method: &'a str, params: Value) -> GateFuture<'a, Result<Value, String>> {
        // The page has one thread: the wallet's promise never leaves it.
        Box::pin(SendWrapper::new(async move { eip1193::request(method, params).await.map_err(|e| e.to_string()) }))
    }

    fn blocking(&self, job: Box<dyn FnOnce() + Send>) {
        job();
    }

    fn persist<'a>(&'a self, kept: Kept<'a>) -> GateFuture<'a, Result<(), String>> {
        if let Kept::Voucher(v) = kept {
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            let newest = received.entry((v.voucher.payer, v.voucher.session)).or_default();
            *newest = (*newest).max(v.voucher.cumulativeAmount);
        }
        let record = kept_record(kept);
        Box::pin(SendWrapper::new(async move {
            let (key, value) = record?;
            store::ledger_put(&key, &value).await.map_err(|e| e.to_string())
        }))
    }
}

/// What the Seed panel shows of a charging tab's earnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Earnings {
    /// What the vouchers kept and not yet redeemed add to what was collected.
    pub pending: U256,
    /// Sessions with such vouchers.
    pub pending_sessions: usize,
    /// This node's share of what redeems paid it over the last day (from `Redeemed` events).
    pub redeemed: U256,
    /// Credited to this node in the escrow and not yet withdrawn or spent.
    pub earned: U256,
    /// This node's share (70%) of what this run's vouchers promise, per hour since it began.
    pub per_hour: U256,
}

/// A charging tab's gate, ledger and chain.
pub struct Charging {
    gate: Arc<ChainGate>,
    ledger: Arc<Ledger>,
    host: Arc<TabHost>,
    reads: ChainReads<TabHost>,
    node: Address,
    escrow: Address,
    started: Instant,
}

/// The share of each payment that goes to the serving node (the escrow's `NODE_BPS`).
const NODE_SHARE_BPS: u64 = 7_000;

impl Charging {
    /// Charges `price` per layer-token for `layers` layers, paid to the wallet's address, with
    /// the ledger restored from IndexedDB.
    pub async fn start(wallet: &Wallet, price: U256, layers: u64) -> Result<Charging, AppError> {
        let (node, chain) = wallet.connected()?;
        let host = Arc::new(TabHost::default());
        let ledger = Arc::new(Ledger::in_memory().map_err(|e| AppError::Wallet(e.to_string()))?);
        restore(&ledger, node).await?;
        let cap = price * U256::from(layers) * U256::from(DEFAULT_CREDIT_TOKENS);
        let gate_chain = GateChain { chain_id: chain.chain_id, escrow: chain.escrow, staking: chain.staking };
        let gate = ChainGate::new(gate_chain, host.clone(), node, price, cap, ledger.clone());
        gate.terms().check(layers).map_err(|e| AppError::Wallet(e.to_string()))?;
        let reads = ChainReads::new(host.clone(), chain.escrow, chain.staking);
        Ok(Charging { gate: Arc::new(gate), ledger, host, reads, node, escrow: chain.escrow, started: Instant::now() })
    }

    /// The gate the tab's sessions are charged through.
    pub fn gate(&self) -> Arc<dyn PaymentGate> {
        self.gate.clone()
    }

    /// Reads the earnings: the ledger's pending vouchers, and from the chain what was
    /// redeemed over the last day and what is credited now.
    pub async fn earnings(&self) -> Result<Earnings, AppError> {
        let read = |e: web_node::settle::ReadError| AppError::Wallet(e.to_string());
        let entries = self.ledger.entries().map_err(|e| AppError::Wallet(e.to_string()))?;
        let pending: Vec<_> = entries.iter().filter(|e| !e.outstanding().is_zero()).collect();
        let (latest, _) = self.reads.latest_block().await.map_err(read)?;
        let from = latest.saturating_sub(EARNED_WINDOW_BLOCKS);
        let events = self.reads.redeemed_events(Some(self.node), from, latest).await.map_err(read)?;
        let received = {
            let r = self.host.received.lock().unwrap_or_else(|p| p.into_inner());
            r.values().fold(U256::ZERO, |a, v| a.saturating_add(*v))
        };
        let hours_e6 = (self.started.elapsed().as_secs_f64() / 3600.0 * 1e6).max(1.0) as u64;
        let per_hour = received * U256::from(NODE_SHARE_BPS) / U256::from(10_000u64) * U256::from(1_000_000u64)
            / U256::from(hours_e6);
        Ok(Earnings {
            pending: pending.iter().fold(U256::ZERO, |a, e| a.saturating_add(e.outstanding())),
            pending_sessions: pending.len(),
            redeemed: earned_from_others(&events, self.node),
            earned: self.reads.earned(self.node).await.map_err(read)?,
            per_hour,
        })
    }

    /// Redeems what the ledger holds: first the payers' authorizations and allocations the
    /// chain lacks, then every voucher that adds to what was collected, in one batch. Returns
    /// what the panel says.
    pub async fn redeem(&self) -> Result<String, AppError> {
        let ledger_err = |e: web_node::settle::LedgerError| AppError::Wallet(e.to_string());
        let read = |e: web_node::settle::ReadError| AppError::Wallet(e.to_string());
        let (me, escrow) = (self.node, self.escrow);
        for a in self.ledger.authorizations().map_err(ledger_err)? {
            let SignedAuthorization { authorization: auth, .. } = &a;
            if !self.reads.is_signer(auth.payer, auth.signer).await.map_err(read)? {
                send_and_wait(me, escrow, &authorize_signer_by_sig(&a).to_string()).await?;
            }
            self.ledger.remove_authorization(auth.payer, auth.signer).map_err(ledger_err)?;
            store::ledger_delete(&format!("auth:{}:{}", auth.payer, auth.signer)).await?;
        }
        for a in self.ledger.allocations().map_err(ledger_err)? {
            let SignedAllocation { allocation: al, .. } = &a;
            if al.cumulativeAllocated > self.reads.allocated_total(al.payer, al.node).await.map_err(read)? {
                send_and_wait(me, escrow, &allocate_by_sig(&a).to_string()).await?;
            }
            self.ledger.remove_allocation(al.payer, al.cumulativeAllocated).map_err(ledger_err)?;
            store::ledger_delete(&format!("alloc:{}", al.payer)).await?;
        }
        // From sending until the ledger records what was collected, the gate waits (it
        // would see the allocation lowered and the vouchers still promising it).
        let backing = self.gate.backing();
        let _redeeming = backing.redeeming().await;
        let now = chain_time().await?;
        let mut due: Vec<(SignedVoucher, U256)> = Vec::new();
        let mut expired = 0;
        for e in self.ledger.entries().map_err(ledger_err)? {
            let v = &e.voucher.voucher;
            let collected = self.reads.collected(v.payer, v.session, v.node).await.map_err(read)?;
            if v.cumulativeAmount <= collected || v.expiry < now {
                expired += usize::from(v.cumulativeAmount > collected);
                self.forget(v.payer, v.session, v.cumulativeAmount).await?;
            } else {
                due.push((e.voucher.clone(), collected));
            }
        }
        if due.is_empty() {
            return Ok(match expired {
                0 => "Nothing to redeem.".into(),
                n => format!("Nothing to redeem; {n} expired voucher(s) dropped."),
            });
        }
        send_and_wait(me, escrow, &redeem_batch(due.iter().map(|(v, _)| v)).to_string()).await?;
        let mut total = U256::ZERO;
        for (v, collected) in &due {
            let v = &v.voucher;
            let paid = v.cumulativeAmount - *collected;
            total += paid;
            backing.collected(v.payer, paid);
            self.ledger.set_collected(v.payer, v.session, v.cumulativeAmount).map_err(ledger_err)?;
            self.forget(v.payer, v.session, v.cumulativeAmount).await?;
        }
        Ok(format!(
            "Redeemed {} voucher(s): {} AIT paid, {} AIT of it to this node.",
            due.len(),
            format_ait(total),
            format_ait(total * U256::from(NODE_SHARE_BPS) / U256::from(10_000u64))
        ))
    }

    /// Drops the ledger's voucher of (`payer`, `session`) if it is not above `amount` (a
    /// session still open may have sent a newer one meanwhile), here and in IndexedDB.
    async fn forget(&self, payer: Address, session: B256, amount: U256) -> Result<(), AppError> {
        let ledger_err = |e: web_node::settle::LedgerError| AppError::Wallet(e.to_string());
        self.ledger.remove_up_to(payer, session, amount).map_err(ledger_err)?;
        if !self.ledger.has(payer, session).map_err(ledger_err)? {
            store::ledger_delete(&voucher_key(payer, session)).await?;
        }
        Ok(())
    }

    /// Moves everything the escrow credited this node into its deposit (one transaction):
    /// from then on the tab's chats pay with it.
    pub async fn spend_earned(&self) -> Result<U256, AppError> {
        let earned = self.reads.earned(self.node).await.map_err(|e| AppError::Wallet(e.to_string()))?;
        if earned.is_zero() {
            return Err(AppError::Wallet("nothing earned to spend yet: redeem the vouchers first".into()));
        }
        send_and_wait(self.node, self.escrow, &deposit_earned(earned).to_string()).await?;
        Ok(earned)
    }
}

/// Puts back into `ledger` what IndexedDB kept of this node's ledger (vouchers and
/// allocations for `node`, and every authorization).
async fn restore(ledger: &Ledger, node: Address) -> Result<(), AppError> {
    let bad = |e: String| AppError::Idb(format!("a kept voucher record: {e}"));
    for (key, value) in store::ledger_all().await? {
        let restored = if key.starts_with("voucher:") {
            let v: SignedVoucher = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            if v.voucher.node != node {
                continue;
            }
            ledger.put(&v).map(|_| ())
        } else if key.starts_with("auth:") {
            let a: SignedAuthorization = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            ledger.put_authorization(&a)
        } else if key.starts_with("alloc:") {
            let a: SignedAllocation = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            if a.allocation.node != node {
                continue;
            }
            ledger.put_allocation(&a)
        } else {
            continue;
        };
        restored.map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}
