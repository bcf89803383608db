//! A seeding tab that charges for its work, and spends what it earns.
//!
//! With a price set and a wallet connected, the tab serves through the same [`ChainGate`] as
//! a relay and redeems with the same [`Redeemer`]: its node address is the connected wallet's,
//! it reads the chain and sends its transactions through the wallet (EIP-1193), and keeps
//! vouchers in an in-memory [`Ledger`] whose whole content is written to IndexedDB
//! ([`store::ledger_save`]) after every change the gate makes, before the step it came with is
//! answered, and after each redeem round; starting to seed again restores it. Redeeming and
//! spending are the person's steps (every transaction is a wallet prompt):
//! [`Charging::redeem`] runs one redeem round (the payers' authorizations and allocations
//! waiting, then the vouchers in one `redeemBatch`, one by one if the batch is refused);
//! [`Charging::spend_earned`] moves what the escrow credited this node into its deposit
//! (`depositEarned`), which then pays the tab's own chats through its session key.

use std::sync::{Arc, Mutex, OnceLock};

use alloy_primitives::{Address, Bytes, U256};
use send_wrapper::SendWrapper;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use web_node::settle::chain::earned_from_others;
use web_node::settle::gate::EARNED_WINDOW_BLOCKS;
use web_node::settle::pay::DEFAULT_CREDIT_TOKENS;
use web_node::settle::wallet::deposit_earned;
use web_node::settle::{
    ChainGate, ChainReads, Entry, GateChain, GateFuture, GateHost, Ledger, LedgerContents, PaymentGate, Redeemer,
    SendError, NODE_SHARE_BPS,
};
use web_time::Instant;

use crate::error::AppError;
use crate::store;
use crate::wallet::{eip1193, send_and_wait, send_tx, Wallet};

/// What IndexedDB keeps of a charging tab's ledger: everything it holds, and whose it is.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// The node (wallet) the vouchers pay.
    node: Address,
    /// The chain and escrow they are redeemed on.
    chain_id: u64,
    escrow: Address,
    /// The ledger's vouchers, authorizations, allocations and newest redeem's block.
    #[serde(flatten)]
    ledger: LedgerContents,
}

/// The tab's [`GateHost`]: the wallet's JSON-RPC and transactions, ledger writes run at once
/// (one thread), and the ledger written to IndexedDB after each change.
struct TabHost {
    node: Address,
    chain: GateChain,
    /// The ledger it makes durable (set once the gate is built on this host).
    ledger: OnceLock<Arc<Ledger>>,
    /// What this page's vouchers promise, since `started`.
    received: Mutex<Received>,
    /// When this page began charging for this node.
    started: Instant,
    /// Held from taking a snapshot until IndexedDB has it: writes land in the order their
    /// snapshots were taken, so the last one kept is the newest.
    persisting: futures::lock::Mutex<()>,
}

/// Each session's newest voucher amount seen, and their sum when seeding began.
#[derive(Default)]
struct Received {
    newest: std::collections::HashMap<(Address, alloy_primitives::B256), U256>,
    at_start: U256,
}

impl TabHost {
    /// Where IndexedDB keeps this node's ledger on this chain and escrow (another wallet's, or
    /// another deployment's, is kept apart).
    fn key(&self) -> String {
        format!("ledger:{}:{}:{}", self.chain.chain_id, self.chain.escrow, self.node)
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        let ledger = self.ledger.get().ok_or("no ledger yet")?;
        Ok(Snapshot {
            node: self.node,
            chain_id: self.chain.chain_id,
            escrow: self.chain.escrow,
            ledger: ledger.contents().map_err(|e| e.to_string())?,
        })
    }

    /// Counts the newest amount of each session's voucher seen this run.
    fn count(&self, vouchers: &[Entry]) -> U256 {
        let mut r = self.received.lock().unwrap_or_else(|p| p.into_inner());
        for e in vouchers {
            let v = &e.voucher.voucher;
            let newest = r.newest.entry((v.payer, v.session)).or_default();
            *newest = (*newest).max(v.cumulativeAmount);
        }
        r.newest.values().fold(U256::ZERO, |a, v| a.saturating_add(*v)).saturating_sub(r.at_start)
    }
}

impl GateHost for TabHost {
    fn rpc<'a>(&'a self, method: &'a str, params: Value) -> GateFuture<'a, Result<Value, String>> {
        // The page has one thread: the wallet's promise never leaves it.
        Box::pin(SendWrapper::new(async move { eip1193::request(method, params).await.map_err(|e| e.to_string()) }))
    }

    fn send<'a>(&'a self, to: Address, data: Bytes) -> GateFuture<'a, Result<u64, SendError>> {
        let from = self.node;
        Box::pin(SendWrapper::new(async move { send_tx(from, to, &data.to_string()).await }))
    }

    fn blocking(&self, job: Box<dyn FnOnce() + Send>) {
        job();
    }

    fn persist(&self) -> GateFuture<'_, Result<(), String>> {
        Box::pin(SendWrapper::new(async move {
            let _in_order = self.persisting.lock().await;
            // Taken once the earlier writes landed: it holds every change made before it.
            let snapshot = self.snapshot().and_then(|s| {
                self.count(&s.ledger.vouchers);
                serde_json::to_value(&s).map_err(|e| e.to_string())
            })?;
            store::ledger_save(&self.key(), &snapshot).await.map_err(|e| e.to_string())
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
    /// Payers' authorizations and allocations waiting to be submitted (until they are, the
    /// tab serves each such payer at most one credit cap).
    pub waiting: usize,
    /// This node's share of what redeems paid it over the last day (from `Redeemed` events).
    pub redeemed: U256,
    /// Credited to this node in the escrow and not yet withdrawn or spent.
    pub earned: U256,
    /// This node's share of what this run's vouchers promise, per hour since it began.
    pub per_hour: U256,
}

/// A charging tab's gate, ledger, redeemer and chain.
pub struct Charging {
    gate: Arc<ChainGate>,
    ledger: Arc<Ledger>,
    host: Arc<TabHost>,
    reads: ChainReads<TabHost>,
    redeemer: futures::lock::Mutex<Redeemer>,
    node: Address,
    escrow: Address,
}

impl Charging {
    /// Charges `price` per layer-token for `layers` layers, paid to the wallet's address, with
    /// the ledger restored from IndexedDB.
    pub async fn start(wallet: &Wallet, price: U256, layers: u64) -> Result<Charging, AppError> {
        let (node, info) = wallet.connected()?;
        let chain = GateChain { chain_id: info.chain_id, escrow: info.escrow, staking: info.staking };
        let host = host_for(node, chain).await?;
        let ledger = host.ledger.get().cloned().ok_or_else(|| AppError::Wallet("no ledger".into()))?;
        let cap = price * U256::from(layers) * U256::from(DEFAULT_CREDIT_TOKENS);
        let gate = ChainGate::new(chain, host.clone(), node, price, cap, ledger.clone()).without_redeem_loop();
        gate.terms().check(layers).map_err(|e| AppError::Wallet(e.to_string()))?;
        // A round waits for the person at each wallet prompt: no limit on the round as a whole.
        let redeemer = Redeemer::new(chain, info.confirmations, host.clone(), node, ledger.clone())
            .with_backing(gate.backing())
            .without_round_limit();
        let reads = ChainReads::new(host.clone(), chain.escrow, chain.staking);
        Ok(Charging {
            gate: Arc::new(gate),
            ledger,
            host,
            reads,
            redeemer: futures::lock::Mutex::new(redeemer),
            node,
            escrow: chain.escrow,
        })
    }

    /// The gate the tab's sessions are charged through.
    pub fn gate(&self) -> Arc<dyn PaymentGate> {
        self.gate.clone()
    }

    /// Reads the earnings: the ledger's pending vouchers, and from the chain what was
    /// redeemed over the last day and what is credited now.
    pub async fn earnings(&self) -> Result<Earnings, AppError> {
        let read = |e: web_node::settle::ReadError| AppError::Wallet(e.to_string());
        let ledger = |e: web_node::settle::LedgerError| AppError::Wallet(e.to_string());
        let entries = self.ledger.entries().map_err(ledger)?;
        let pending: Vec<_> = entries.iter().filter(|e| !e.outstanding().is_zero()).collect();
        let waiting =
            self.ledger.authorizations().map_err(ledger)?.len() + self.ledger.allocations().map_err(ledger)?.len();
        let (latest, _) = self.reads.latest_block().await.map_err(read)?;
        let from = latest.saturating_sub(EARNED_WINDOW_BLOCKS);
        let events = self.reads.redeemed_events(Some(self.node), from, latest).await.map_err(read)?;
        let received = self.host.count(&entries);
        let hours_e6 = (self.host.started.elapsed().as_secs_f64() / 3600.0 * 1e6).max(1.0) as u64;
        let per_hour = node_share(received) * U256::from(1_000_000u64) / U256::from(hours_e6);
        Ok(Earnings {
            pending: pending.iter().fold(U256::ZERO, |a, e| a.saturating_add(e.outstanding())),
            pending_sessions: pending.len(),
            waiting,
            redeemed: earned_from_others(&events, self.node),
            earned: self.reads.earned(self.node).await.map_err(read)?,
            per_hour,
        })
    }

    /// Runs one redeem round (see the module's note) and writes the ledger to IndexedDB;
    /// returns what the panel says.
    pub async fn redeem(&self) -> Result<String, AppError> {
        let mut redeemer = self.redeemer.lock().await;
        let round = redeemer.redeem_due().await;
        // Whatever the round did is kept, even when it ended early.
        let kept = self.host.persist().await;
        let report = match (round, kept) {
            (Ok(report), Ok(())) => report,
            (Ok(_), Err(e)) => return Err(AppError::Idb(format!("redeemed, but keeping the ledger failed: {e}"))),
            (Err(e), Ok(())) => return Err(AppError::Wallet(e.to_string())),
            (Err(e), Err(k)) => return Err(AppError::Wallet(format!("{e}; keeping the ledger failed too: {k}"))),
        };
        let mut said = match report.sent - report.refused.len() {
            0 => "Nothing to redeem.".to_string(),
            n => format!("Redeemed {n} voucher(s)."),
        };
        if report.finalized > 0 {
            said += &format!(" {} voucher(s) final.", report.finalized);
        }
        if report.expired > 0 {
            said += &format!(" {} expired before they were redeemed, dropped.", report.expired);
        }
        if !report.refused.is_empty() {
            said += &format!(" The chain refused {}: {}.", report.refused.len(), report.refused.join("; "));
        }
        Ok(said)
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

/// The node's share of `amount` (the escrow pays it [`NODE_SHARE_BPS`]).
fn node_share(amount: U256) -> U256 {
    amount * U256::from(NODE_SHARE_BPS) / U256::from(10_000u64)
}

thread_local! {
    /// The page's ledgers by node and chain: seeding again in the same page goes on with the
    /// same one (the earlier run's sessions may still be writing to it).
    static HOSTS: std::cell::RefCell<std::collections::HashMap<String, Arc<TabHost>>> = Default::default();
}

/// The page's host and ledger for `node` on `chain`: the one it has, or one restored from
/// IndexedDB, once this page holds the ledger's Web Lock (one page at a time writes a
/// wallet's ledger, so no page's snapshot overwrites another's).
async fn host_for(node: Address, chain: GateChain) -> Result<Arc<TabHost>, AppError> {
    let host = TabHost {
        node,
        chain,
        ledger: OnceLock::new(),
        received: Mutex::default(),
        started: Instant::now(),
        persisting: futures::lock::Mutex::new(()),
    };
    let key = host.key();
    if let Some(h) = HOSTS.with(|h| h.borrow().get(&key).cloned()) {
        return Ok(h);
    }
    // A page just reloaded may hold it a moment longer: ask a few times.
    let mut held = false;
    for _ in 0..5 {
        held = store::hold_lock(&key).await?;
        if held {
            break;
        }
        futures_timer::Delay::new(std::time::Duration::from_millis(400)).await;
    }
    if !held {
        return Err(AppError::Wallet(format!(
            "another tab charges for {node} on this chain: charge from one tab at a time (or use another wallet)"
        )));
    }
    if let Some(h) = HOSTS.with(|h| h.borrow().get(&key).cloned()) {
        return Ok(h);
    }
    let ledger = Arc::new(Ledger::in_memory().map_err(|e| AppError::Wallet(e.to_string()))?);
    restore(&ledger, &host).await?;
    let _ = host.ledger.set(ledger);
    let restored = host.snapshot().map_err(AppError::Wallet)?;
    host.count(&restored.ledger.vouchers);
    {
        let mut r = host.received.lock().unwrap_or_else(|p| p.into_inner());
        r.at_start = r.newest.values().fold(U256::ZERO, |a, v| a.saturating_add(*v));
    }
    let host = Arc::new(host);
    HOSTS.with(|h| h.borrow_mut().insert(key, host.clone()));
    Ok(host)
}

/// Puts back into `ledger` what IndexedDB kept of this node's ledger on this chain and escrow.
async fn restore(ledger: &Ledger, host: &TabHost) -> Result<(), AppError> {
    let Some(value) = store::ledger_load(&host.key()).await? else { return Ok(()) };
    let bad = |e: String| AppError::Idb(format!("the kept voucher ledger: {e}"));
    let s: Snapshot = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    ledger.restore(&s.ledger).map_err(|e| bad(e.to_string()))
}
