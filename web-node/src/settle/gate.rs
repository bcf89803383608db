//! A charging node's [`PaymentGate`]: it answers a payer's quote (what it allocated to this
//! node and what backs a new session) and, when a paid session opens, asks the chain whether
//! the session's key may sign for the payer (or checks the payer's signed authorization) and
//! checks the allocation the session brings, both of which the node's
//! [`Redeemer`](super::Redeemer) submits before redeeming. Each voucher a session sends must be
//! backed by the payer's allocation with what its other sessions here promised, and is kept in
//! the node's
//! [`Ledger`] (made durable by its [`GateHost`]) before its step is answered. The chain is
//! read through the host's JSON-RPC ([`ChainReads`]), so a native relay and a seeding tab run
//! this same gate.
//!
//! It also scores payers for the node's scored session slots ([`ChainGate::priority`]), from
//! chain data only: the payer's stake, plus what it earned serving others (the node shares of
//! `Redeemed` events naming it as node, from payers other than itself) over the last
//! [`EARNED_WINDOW_BLOCKS`] blocks, in AIT. Self-dealing does not buy score cheaply: what a
//! node pays itself from its own wallet does not count, and paying it from a second wallet
//! costs the 30% creator and DAO shares of every AIT for 0.7 AIT of score, while staking the
//! same AIT gives the same score at no cost but a lock-up (and the stake can be slashed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use futures::channel::oneshot;
use tokio::sync::Notify;
use web_time::Instant;

use super::chain::{earned_from_others, ChainReads, GateHost, ReadError};
use super::ledger::Ledger;
use super::pay::MIN_VOUCHER_LIFE_S;
use super::Backing;
use super::{
    ait_f64, recover_signer, unix_s, GateFuture, PayTerms, PayerQuote, Payment, PaymentError, PaymentGate,
    SignedAllocation, SignedAuthorization, SignedVoucher,
};
use crate::time::timeout;

/// Blocks over which what a payer earned serving others counts for its priority (about a
/// day at two-second blocks).
pub const EARNED_WINDOW_BLOCKS: u64 = 43_200;

/// How long a payer's priority score is used before it is read again.
const SCORE_FOR: Duration = Duration::from_secs(10);

/// Longest a payer's priority score is waited for.
const SCORE_TIMEOUT: Duration = Duration::from_secs(3);

/// A poisoned lock's data is still consistent here (every critical section is a plain map
/// update): use it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The chain contracts a [`ChainGate`] reads, and the chain's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateChain {
    /// The chain id every signature commits to.
    pub chain_id: u64,
    /// The escrow.
    pub escrow: Address,
    /// The staking contract (priority scores).
    pub staking: Address,
}

/// The session server's view of the chain and the ledger.
pub struct ChainGate {
    terms: PayTerms,
    chain: ChainReads<dyn GateHost>,
    host: Arc<dyn GateHost>,
    /// Priority scores as last read, and when.
    scores: Mutex<HashMap<Address, (f64, Instant)>>,
    ledger: Arc<Ledger>,
    rpc_timeout: Duration,
    /// What backs each payer's vouchers here, as of its latest session's opening (or the
    /// latest voucher that needed a fresh look), lowered by redeems since: see
    /// [`ChainGate::backing_of`].
    backing: Arc<Backing>,
    /// Paid sessions open now, by (payer, session).
    open: Mutex<HashSet<(Address, B256)>>,
    /// What payers' paid sessions here ended owing, unpaid.
    debts: Mutex<HashMap<Address, U256>>,
    /// Held across a voucher's backing check and its ledger write, so two sessions of one
    /// payer cannot both pass against the same backing.
    store_lock: Arc<Mutex<()>>,
    /// Wakes the redeem loop when an authorization or allocation waits to be submitted.
    wake: Arc<Notify>,
    /// Whether a redeem loop answers `wake` (a relay's does; a tab redeems when the person
    /// says).
    redeem_loop: bool,
}

impl std::fmt::Debug for ChainGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainGate").field("terms", &self.terms).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> PaymentError {
    PaymentError::Unavailable(e.to_string())
}

/// A payer's escrow with this node at the latest block, with what the ledger adds.
struct Escrowed {
    /// The block everything was read at: a check reads the rest there too.
    block: u64,
    /// The chain's time.
    now: u64,
    /// `allocatedTotal` on chain.
    total: U256,
    /// The allocation less what thaws.
    available: U256,
    /// The signed allocation waiting to be submitted, if any.
    pending: Option<SignedAllocation>,
}

impl Escrowed {
    /// The allocation total once the pending allocation is applied.
    fn total_with(&self, extra: Option<&SignedAllocation>) -> U256 {
        [self.pending.as_ref(), extra]
            .into_iter()
            .flatten()
            .map(|a| a.allocation.cumulativeAllocated)
            .fold(self.total, U256::max)
    }

    /// What backs vouchers once the pending allocation (and `extra`) is applied.
    fn backing_with(&self, extra: Option<&SignedAllocation>) -> U256 {
        self.available + (self.total_with(extra) - self.total)
    }
}

impl ChainGate {
    /// A gate for `node` (its EVM address) charging `price` per layer-token with a credit cap
    /// of `credit_cap`, reading `chain` through `host` and keeping vouchers in `ledger`. It
    /// serves no free tier until [`ChainGate::with_free_tier`].
    pub fn new(
        chain: GateChain,
        host: Arc<dyn GateHost>,
        node: Address,
        price: U256,
        credit_cap: U256,
        ledger: Arc<Ledger>,
    ) -> ChainGate {
        ChainGate {
            terms: PayTerms {
                node,
                price,
                credit_cap,
                chain_id: chain.chain_id,
                escrow: chain.escrow,
                free_tokens_per_day: 0,
            },
            chain: ChainReads::new(host.clone(), chain.escrow, chain.staking),
            host,
            scores: Mutex::default(),
            ledger,
            rpc_timeout: Duration::from_secs(10),
            backing: Arc::default(),
            open: Mutex::default(),
            debts: Mutex::default(),
            store_lock: Arc::default(),
            wake: Arc::default(),
            redeem_loop: true,
        }
    }

    /// No redeem loop submits what paid sessions bring (a tab redeems when the person says):
    /// a voucher that only a pending authorization or allocation would back is refused at
    /// once instead of waiting for it to land.
    pub fn without_redeem_loop(mut self) -> Self {
        self.redeem_loop = false;
        self
    }

    /// Serves `tokens` a day free to each client that does not pay, in lottery slots.
    pub fn with_free_tier(mut self, tokens: u64) -> Self {
        self.terms.free_tokens_per_day = tokens;
        self
    }

    /// `payer`'s priority score: its stake plus what it earned serving others over the last
    /// [`EARNED_WINDOW_BLOCKS`] blocks, in AIT (see the module's note).
    pub async fn score_of(&self, payer: Address) -> Result<f64, ReadError> {
        let stake = self.chain.stake_of(payer).await?;
        let (latest, _) = self.chain.latest_block().await?;
        let from = latest.saturating_sub(EARNED_WINDOW_BLOCKS);
        let redeemed = self.chain.redeemed_events(Some(payer), from, latest).await?;
        Ok(ait_f64(stake) + ait_f64(earned_from_others(&redeemed, payer)))
    }

    /// What backs each payer here, for the redeemer to lower as it collects.
    pub fn backing(&self) -> Arc<Backing> {
        self.backing.clone()
    }

    /// What wakes the redeem loop early (an authorization or allocation to submit).
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Whether an authorization of one of `payer`'s keys waits to be submitted here.
    fn pending_authorization(&self, payer: Address) -> Result<bool, PaymentError> {
        Ok(self.ledger.authorizations().map_err(unavailable)?.iter().any(|a| a.authorization.payer == payer))
    }

    /// Reads `payer`'s backing here from the chain again (after collections, or once what was
    /// pending landed); returns what the chain collected for `session` (a session whose
    /// vouchers were redeemed for good is no longer in the ledger, but its next voucher adds
    /// only what it adds to that).
    async fn refresh(&self, payer: Address, session: B256) -> Result<U256, PaymentError> {
        let _consistent = self.backing.reading().await;
        let e = self.escrowed(payer).await?;
        let collected = self.chain.at(e.block).collected(payer, session, self.terms.node).await.map_err(unavailable)?;
        let key_pending = self.pending_authorization(payer)?;
        let promised = self.promised(payer, None)?;
        let backing = self.backing_of(&e, None, key_pending, promised);
        self.backing.set(payer, backing);
        Ok(collected)
    }

    /// What backs a payer's vouchers here: its allocation on chain less what thaws, plus what
    /// signed allocations not yet on chain add, but of that at most the credit cap (the payer
    /// can still void them by withdrawing); while the key's authorization is not on chain
    /// (the payer can void it by revoking), at most the cap beyond what is `promised` already.
    /// Anything pending wakes the redeemer to submit it now.
    fn backing_of(&self, e: &Escrowed, extra: Option<&SignedAllocation>, key_pending: bool, promised: U256) -> U256 {
        let cap = self.terms.credit_cap;
        let unsure = e.backing_with(extra) - e.available;
        let mut backing = e.available.saturating_add(unsure.min(cap));
        if key_pending {
            backing = backing.min(promised.saturating_add(cap));
        }
        if key_pending || !unsure.is_zero() {
            self.wake.notify_one();
        }
        backing
    }

    /// The ledger its sessions' vouchers go to.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The payer's escrow here at the latest block (never one before the newest this node
    /// saw). Every read of one check is at that block: behind a load-balanced RPC, "latest"
    /// can be another block at each call, and a key's state read one block before its
    /// allocation would mix two states of the chain.
    async fn escrowed(&self, payer: Address) -> Result<Escrowed, PaymentError> {
        let node = self.terms.node;
        let (block, now) = self.chain.latest_block_since(self.backing.newest()).await.map_err(unavailable)?;
        self.backing.saw(block);
        let at = self.chain.at(block);
        let total = at.allocated_total(payer, node).await.map_err(unavailable)?;
        let available = at.available(payer, node).await.map_err(unavailable)?;
        let pending = self.ledger.allocation(payer).map_err(unavailable)?;
        Ok(Escrowed { block, now, total, available, pending })
    }

    /// What the payer's stored vouchers here promise beyond what was collected, except
    /// `session`'s.
    fn promised(&self, payer: Address, except: Option<B256>) -> Result<U256, PaymentError> {
        self.ledger.outstanding_of(payer, except).map_err(unavailable)
    }

    async fn quote_of(&self, payer: Address) -> Result<PayerQuote, PaymentError> {
        let _consistent = self.backing.reading().await;
        let e = self.escrowed(payer).await?;
        let available = e.backing_with(None).saturating_sub(self.promised(payer, None)?);
        Ok(PayerQuote { allocated_total: e.total_with(None), available })
    }

    /// Checks a paid session's payer and returns the credit it gets.
    async fn check(&self, p: &Payment) -> Result<U256, PaymentError> {
        // The session's key opened it (nobody opens a session in a payer's name without it).
        p.check_proof(self.terms.node, &self.terms.domain(), unix_s())?;
        let debt = lock(&self.debts).get(&p.payer).copied().unwrap_or_default();
        if debt >= self.terms.credit_cap {
            return Err(PaymentError::Required(format!(
                "payer {} left {debt} unpaid in earlier sessions here",
                p.payer
            )));
        }
        // A new session: a session id that was paid before would replay its vouchers.
        let key = (p.payer, p.session);
        // The chain and the ledger, read together (no redeem between mined and recorded).
        let _consistent = self.backing.reading().await;
        if lock(&self.open).contains(&key) || self.ledger.has(p.payer, p.session).map_err(unavailable)? {
            return Err(PaymentError::Refused(format!("session {} is not new", p.session)));
        }
        let e = self.escrowed(p.payer).await?;
        let at = self.chain.at(e.block);
        let collected = at.collected(p.payer, p.session, self.terms.node).await.map_err(unavailable)?;
        if !collected.is_zero() {
            return Err(PaymentError::Refused(format!("session {} was paid before", p.session)));
        }
        let until = at.signer_until(p.payer, p.signer).await.map_err(unavailable)?;
        let signer = p.signer == p.payer || until > e.now;
        if signer && p.signer != p.payer && until != u64::MAX {
            // Its vouchers redeem only until then, and this node may redeem later.
            return Err(PaymentError::Refused(format!(
                "key {} is being revoked by payer {}: it stops signing at {until}",
                p.signer, p.payer
            )));
        }
        if !signer {
            let Some(a) = &p.authorization else {
                return Err(PaymentError::Refused(format!(
                    "key {} may not sign for payer {}: authorize it on chain, or open with the payer's signed authorization",
                    p.signer, p.payer
                )));
            };
            self.check_authorization(p, a, &e).await?;
        }
        if let Some(a) = &p.allocation {
            self.check_allocation(p, a, &e).await?;
        }
        // The payer's other sessions' vouchers not yet collected are promised already.
        let promised = self.promised(p.payer, Some(p.session))?;
        let key_pending = !signer;
        let backing = self.backing_of(&e, p.allocation.as_ref(), key_pending, promised);
        let free = backing.saturating_sub(promised);
        let credit = free.min(self.terms.credit_cap);
        if !credit.is_zero() {
            self.backing.set(p.payer, backing);
            lock(&self.open).insert(key);
        }
        Ok(credit)
    }

    /// Checks a payer's authorization of the session key off chain (its signature, deadline
    /// and nonce, at the block of `e`) and keeps it for the redeemer to submit.
    async fn check_authorization(
        &self,
        p: &Payment,
        a: &SignedAuthorization,
        e: &Escrowed,
    ) -> Result<(), PaymentError> {
        let auth = &a.authorization;
        if auth.payer != p.payer || auth.signer != p.signer {
            return Err(PaymentError::Refused(format!(
                "the authorization is of key {} by {}, not of this session's key {} by {}",
                auth.signer, auth.payer, p.signer, p.payer
            )));
        }
        let who = recover_signer(auth, &self.terms.domain(), &a.signature)
            .map_err(|e| PaymentError::Refused(format!("the authorization: {e}")))?;
        if who != p.payer {
            return Err(PaymentError::Refused(format!(
                "the authorization is signed by {who}, not the payer {}",
                p.payer
            )));
        }
        // It must still be good when the redeemer submits it.
        if auth.deadline < U256::from(e.now + MIN_VOUCHER_LIFE_S) {
            return Err(PaymentError::Refused(format!("the authorization's deadline {} is too close", auth.deadline)));
        }
        // Read at the block the key was found not signing at: an authorization another node
        // submitted since shows in neither.
        let nonce = self.chain.at(e.block).nonce(p.payer).await.map_err(unavailable)?;
        if auth.nonce != nonce {
            return Err(PaymentError::Refused(format!(
                "the authorization's nonce {} is not the payer's next ({nonce}): it is used or void",
                auth.nonce
            )));
        }
        self.ledger.put_authorization(a).map_err(unavailable)?;
        self.host.persist().await.map_err(unavailable)?;
        Ok(())
    }

    /// Checks an allocation a session brings off chain (to this node, signed by the payer or
    /// the session's key, good long enough) and against the payer's free balance, and keeps
    /// it for the redeemer to submit.
    async fn check_allocation(&self, p: &Payment, a: &SignedAllocation, e: &Escrowed) -> Result<(), PaymentError> {
        let al = &a.allocation;
        if al.payer != p.payer || al.node != self.terms.node {
            return Err(PaymentError::Refused(format!(
                "the allocation is of payer {} to node {}, not {} to this node",
                al.payer, al.node, p.payer
            )));
        }
        let who = recover_signer(al, &self.terms.domain(), &a.signature)
            .map_err(|err| PaymentError::Refused(format!("the allocation: {err}")))?;
        if who != p.payer && who != p.signer {
            return Err(PaymentError::Refused(format!("the allocation is signed by {who}, not the payer or its key")));
        }
        if al.deadline < e.now + MIN_VOUCHER_LIFE_S {
            return Err(PaymentError::Refused(format!("the allocation's deadline {} is too close", al.deadline)));
        }
        let added = e.total_with(Some(a)) - e.total_with(None);
        if added.is_zero() {
            return Ok(());
        }
        let free = self.chain.at(e.block).free_balance(p.payer).await.map_err(unavailable)?;
        let spare = free.balance.saturating_sub(free.thawing);
        // What a pending allocation already takes from the free balance counts too.
        let pending = e.total_with(None) - e.total;
        if added + pending > spare {
            return Err(PaymentError::Required(format!(
                "the allocation adds {added} to {pending} pending; the payer's free balance not thawing is {spare}"
            )));
        }
        self.ledger.put_allocation(a).map_err(unavailable)?;
        self.host.persist().await.map_err(unavailable)
    }

    /// `f`, or the payment unavailable if the chain takes longer than `limit` to answer.
    async fn within<T>(
        &self,
        limit: Duration,
        f: impl std::future::Future<Output = Result<T, PaymentError>>,
    ) -> Result<T, PaymentError> {
        timeout(limit, f).await.unwrap_or_else(|| Err(unavailable(format!("the chain did not answer in {limit:?}"))))
    }

    /// Keeps `v` if the payer's backing covers what it adds to what its session was collected
    /// (as the ledger last saw it, or at least `collected`), with what the payer's other
    /// sessions here promise; the check and the write under one lock. `Ok(false)` when the
    /// backing falls short.
    async fn keep(&self, voucher: &SignedVoucher, collected: U256) -> Result<bool, PaymentError> {
        let (ledger, backing, guard, v) =
            (self.ledger.clone(), self.backing.clone(), self.store_lock.clone(), voucher.clone());
        // The durable write waits for the disk: off the async workers (the host's).
        let (tx, rx) = oneshot::channel();
        let job = move || {
            let _held = lock(&guard);
            let payer = v.voucher.payer;
            let session = v.voucher.session;
            // The ledger before the backing: a redeem recorded between the two reads then
            // shows as less backing with as much promised (a refusal, then a fresh look), never
            // the other way round.
            let promised = ledger.outstanding_of(payer, Some(session)).map_err(unavailable)?;
            let kept = ledger.collected_of(payer, session).map_err(unavailable)?.unwrap_or_default();
            let backing = backing.of(payer);
            // A redeem took what it collected out of the backing: count only the rest.
            let collected = kept.max(collected);
            let owed = v.voucher.cumulativeAmount.saturating_sub(collected);
            if owed.saturating_add(promised) > backing {
                return Ok(false);
            }
            if !ledger.put(&v).map_err(unavailable)? {
                return Err(PaymentError::Refused("the voucher is not above the one kept for its session".into()));
            }
            // A session whose earlier voucher was redeemed for good and let go: its new entry
            // starts from what the chain collected, not from zero.
            if kept < collected {
                ledger.set_collected(payer, session, collected).map_err(unavailable)?;
            }
            Ok(true)
        };
        self.host.blocking(Box::new(move || {
            let _ = tx.send(job());
        }));
        let kept = rx.await.map_err(|_| unavailable("the ledger write was dropped"))??;
        // Where the ledger is not durable itself (a tab's), its copy is made before the step
        // is answered.
        if kept {
            self.host.persist().await.map_err(unavailable)?;
        }
        Ok(kept)
    }
}

impl PaymentGate for ChainGate {
    fn terms(&self) -> &PayTerms {
        &self.terms
    }

    fn quote<'a>(&'a self, payer: Address) -> GateFuture<'a, Result<PayerQuote, PaymentError>> {
        Box::pin(async move { self.within(self.rpc_timeout, self.quote_of(payer)).await })
    }

    fn open<'a>(&'a self, payment: &'a Payment) -> GateFuture<'a, Result<U256, PaymentError>> {
        Box::pin(async move { self.within(self.rpc_timeout, self.check(payment)).await })
    }

    fn store<'a>(&'a self, voucher: &'a SignedVoucher) -> GateFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            if self.keep(voucher, U256::ZERO).await? {
                return Ok(());
            }
            // Short of backing as last read: read the chain again (collections lower what is
            // promised; an authorization or allocation may have landed), then decide. While
            // the payer's authorization or allocation is on its way (the redeemer was woken
            // to submit it), wait for it, up to the RPC timeout.
            let payer = voucher.voucher.payer;
            let started = Instant::now();
            loop {
                let left = self.rpc_timeout.saturating_sub(started.elapsed());
                let collected = self.within(left, self.refresh(payer, voucher.voucher.session)).await?;
                if self.keep(voucher, collected).await? {
                    return Ok(());
                }
                let pending = self.redeem_loop
                    && (self.pending_authorization(payer)?
                        || self.ledger.allocation(payer).map_err(unavailable)?.is_some());
                if !pending || started.elapsed() >= self.rpc_timeout {
                    break;
                }
                futures_timer::Delay::new(Duration::from_millis(100)).await;
            }
            let backing = self.backing.of(payer);
            Err(PaymentError::Required(format!(
                "the payer's backing here ({backing}) does not cover this voucher with its other sessions': allocate more"
            )))
        })
    }

    fn priority<'a>(&'a self, payer: Address) -> GateFuture<'a, f64> {
        Box::pin(async move {
            if let Some((score, at)) = lock(&self.scores).get(&payer) {
                if at.elapsed() < SCORE_FOR {
                    return *score;
                }
            }
            // A queued request waits for this: a short look, 0 if the chain is slow.
            let score = match timeout(SCORE_TIMEOUT, self.score_of(payer)).await {
                Some(Ok(score)) => score,
                Some(Err(e)) => {
                    tracing::warn!(%payer, "reading the payer's priority: {e}");
                    0.0
                }
                None => {
                    tracing::warn!(%payer, "reading the payer's priority: the chain did not answer");
                    0.0
                }
            };
            let mut scores = lock(&self.scores);
            // Only fresh scores are used: the rest go, so the map holds the payers of the
            // last few seconds.
            scores.retain(|_, (_, at)| at.elapsed() < SCORE_FOR);
            scores.insert(payer, (score, Instant::now()));
            score
        })
    }

    fn close(&self, payment: &Payment, unpaid: U256) {
        lock(&self.open).remove(&(payment.payer, payment.session));
        if !unpaid.is_zero() {
            let mut debts = lock(&self.debts);
            let debt = debts.entry(payment.payer).or_default();
            *debt = debt.saturating_add(unpaid);
        }
    }
}
