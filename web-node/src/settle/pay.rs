//! Paying for work inside the inference protocol: a node's terms, what a paid session's
//! `Open` names, the vouchers a client sends with its steps, and the two counts kept of each
//! paid session: the node's [`Meter`] (work served, paid, and the credit it extends) and the
//! client's [`HopBill`] (work received, signed for).
//!
//! The unit of work is one layer-token: one token through one layer. A node charges
//! `price x layers x tokens`; the client signs a cumulative [`Voucher`] only for work it
//! received, every so often, so the node always holds some unpaid work: at most its credit
//! cap, after which it answers `payment required` and closes the session. A client keeps a
//! node's exposure under half the cap (it signs when the next step would pass that), so an
//! honest client is never refused. The last voucher goes with `Close`.
//!
//! Everything here is off chain and builds for wasm32: what a node checks on chain (the
//! signer, the allocation) and where it keeps vouchers is its [`PaymentGate`]'s job.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use alloy_primitives::{Address, Bytes, B256, U256};
use alloy_sol_types::{sol, Eip712Domain};
use serde::{Deserialize, Serialize};

use crate::trust::{Receipt, ReceiptChain};

use super::voucher::{escrow_domain, recover_signer, Allocation, AuthorizeSigner, SessionKey, Voucher};

sol! {
    /// A session key's proof that it opens this session with this node: signed when the
    /// session opens, so nobody opens a session in a payer's name without its key.
    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct OpenSession {
        /// The session id.
        bytes32 session;
        /// The payer.
        address payer;
        /// The node.
        address node;
        /// Unix seconds after which it does not open a session.
        uint64 notAfter;
    }
}

/// How long a session's opening proof is good for: ten minutes.
pub const OPEN_PROOF_LIFETIME_S: u64 = 600;

/// Largest payment or voucher message, in bytes (JSON): at their widest (every number at its
/// maximum) a voucher takes 705 and a session's payment with an authorization and an
/// allocation 1,213 (`the_widest_payment_messages_fit_the_limit`).
pub const MAX_PAYMENT_BYTES: usize = 2048;

/// How long a client's vouchers stay redeemable: a day.
pub const VOUCHER_LIFETIME_S: u64 = 24 * 3600;

/// The least time a voucher must still be redeemable when a node accepts it: an hour, for the
/// node's redeem rounds and a slow chain.
pub const MIN_VOUCHER_LIFE_S: u64 = 3600;

/// Tokens of unpaid work a session may owe by default (a relay's `--credit-cap` unset, a
/// seeding tab): a client sends a voucher about every half of it.
pub const DEFAULT_CREDIT_TOKENS: u64 = 256;

/// The share of each payment the escrow credits the serving node, in basis points
/// (`Escrow.NODE_BPS`; the creator's and the DAO's shares are the rest).
pub const NODE_SHARE_BPS: u64 = 7_000;

/// What a charging node announces (in its status and signed record): who is paid, the price
/// per layer-token, the most unpaid work it carries per session, and the escrow whose
/// vouchers it takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayTerms {
    /// The node's EVM address: vouchers name it, and `Staking` binds it to the node's peer id.
    pub node: Address,
    /// AIT (smallest unit) per layer-token.
    pub price: U256,
    /// Most AIT (smallest unit) a session may owe unpaid.
    pub credit_cap: U256,
    /// The chain.
    pub chain_id: u64,
    /// The escrow contract.
    pub escrow: Address,
    /// Tokens a day the node serves free to each client without a payment, in lottery slots
    /// only (its free tier; 0: none).
    #[serde(default)]
    pub free_tokens_per_day: u64,
}

impl PayTerms {
    /// The EIP-712 domain vouchers for this node are signed under.
    pub fn domain(&self) -> Eip712Domain {
        escrow_domain(self.chain_id, self.escrow)
    }

    /// The price of `work` layer-tokens.
    pub fn cost(&self, work: u64) -> U256 {
        self.price.saturating_mul(U256::from(work))
    }

    /// Checks that the credit cap carries two tokens through `layers` layers (a client keeps a
    /// node's exposure under half the cap, one token at least).
    pub fn check(&self, layers: u64) -> Result<(), PaymentError> {
        let two = self.cost(layers.saturating_mul(2));
        if self.credit_cap < two {
            return Err(PaymentError::Required(format!(
                "a credit cap of {} does not carry two tokens through {layers} layers ({two})",
                self.credit_cap
            )));
        }
        Ok(())
    }
}

/// A voucher and its signature (`r || s || v`, 65 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// Its signature.
    pub signature: Bytes,
}

/// A payer's authorization of a session key and its signature, for a node to submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAuthorization {
    /// The authorization.
    pub authorization: AuthorizeSigner,
    /// The payer's signature.
    pub signature: Bytes,
}

/// An allocation to a node, signed by the payer or its session key, for the node to submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAllocation {
    /// The allocation.
    pub allocation: Allocation,
    /// Its signature.
    pub signature: Bytes,
}

/// A payer's escrow as a charging node reads it on chain (answered to `Quote`): what a client
/// needs to sign an allocation that adds what its session will cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayerQuote {
    /// Everything the payer ever allocated to this node: the base of the next signed
    /// allocation's `cumulativeAllocated`.
    pub allocated_total: U256,
    /// The allocation to this node, less what thaws and what the payer's other sessions here
    /// already promised: what backs a new session.
    pub available: U256,
}

/// What a paid session's `Open` names: the session (random), whose escrow pays, and the key
/// that signs its vouchers, with the payer's authorization of that key when the chain does
/// not know it yet, and an allocation to the node when the payer's does not cover the
/// session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The session id the vouchers carry.
    pub session: B256,
    /// The payer.
    pub payer: Address,
    /// The key that signs the vouchers (the payer's own, or a session key).
    pub signer: Address,
    /// The payer's authorization of `signer`, if the node should submit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<SignedAuthorization>,
    /// An allocation to the node, if the session needs more than is allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<SignedAllocation>,
    /// When the proof below stops opening a session (Unix seconds).
    pub not_after: u64,
    /// `signer`'s signature of [`OpenSession`] `{session, payer, node, not_after}`.
    pub proof: Bytes,
}

impl Payment {
    /// Checks the opening proof at Unix time `now_s` for `node` under `domain`: signed by the
    /// session's key, not expired, and not good for more than [`OPEN_PROOF_LIFETIME_S`].
    pub fn check_proof(&self, node: Address, domain: &Eip712Domain, now_s: u64) -> Result<(), PaymentError> {
        if self.not_after < now_s || self.not_after > now_s.saturating_add(OPEN_PROOF_LIFETIME_S) {
            return Err(PaymentError::Refused(format!(
                "the session's opening proof is good until {}; now is {now_s}",
                self.not_after
            )));
        }
        let open = OpenSession { session: self.session, payer: self.payer, node, notAfter: self.not_after };
        let who = recover_signer(&open, domain, &self.proof)
            .map_err(|e| PaymentError::Refused(format!("the session's opening proof: {e}")))?;
        if who != self.signer {
            return Err(PaymentError::Refused(format!(
                "the session's opening proof is signed by {who}, not its key {}",
                self.signer
            )));
        }
        Ok(())
    }
}

/// Why a payment was refused. Each ends only the session it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The session owes more than the node carries, or cannot pay at all.
    #[error("payment required: {0}")]
    Required(String),
    /// A voucher, payment or authorization that does not hold.
    #[error("payment refused: {0}")]
    Refused(String),
    /// The node cannot check or keep payments now (its chain or ledger failed).
    #[error("payments unavailable: {0}")]
    Unavailable(String),
}

/// A future a [`PaymentGate`] returns: `Send`, as the session futures that await it are (a
/// native node runs sessions on many threads).
pub type GateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a charging node checks on chain and where it keeps vouchers; the session server
/// does the rest (a [`Meter`] per session).
pub trait PaymentGate: Send + Sync + Debug {
    /// The node's terms.
    fn terms(&self) -> &PayTerms;

    /// What `payer` has allocated to this node and what backs a new session.
    fn quote<'a>(&'a self, payer: Address) -> GateFuture<'a, Result<PayerQuote, PaymentError>>;

    /// Checks a paid session's payer before it opens (its signer may sign for it, its
    /// allocation to this node backs it) and returns the credit the session gets: the cap, or
    /// less when the allocation not yet promised is less.
    fn open<'a>(&'a self, payment: &'a Payment) -> GateFuture<'a, Result<U256, PaymentError>>;

    /// A paid session ended owing `unpaid` (what its work cost beyond its newest voucher).
    fn close(&self, payment: &Payment, unpaid: U256);

    /// Keeps `voucher` (checked by the session's [`Meter`]) durably, replacing the older one
    /// of its session, if the payer's allocation backs it with what its other sessions here
    /// promised; the step it came with is answered only after this returns.
    fn store<'a>(&'a self, voucher: &'a SignedVoucher) -> GateFuture<'a, Result<(), PaymentError>>;

    /// `payer`'s priority score for this node's scored session slots, from chain data only
    /// (higher first); 0 when it cannot be read.
    fn priority<'a>(&'a self, payer: Address) -> GateFuture<'a, f64>;
}

/// Unix seconds now.
pub fn unix_s() -> u64 {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A node's count of one paid session: work served, the newest voucher's amount, and the
/// credit the session gets.
#[derive(Clone, Debug)]
pub struct Meter {
    terms: PayTerms,
    payment: Payment,
    model: B256,
    layers: u64,
    credit: U256,
    served: u64,
    paid: U256,
    /// The receipts signed so far, chained, after each step since the newest voucher's work
    /// (the work served then, and the chain): a voucher must name one of them.
    receipts: VecDeque<(u64, ReceiptChain)>,
}

impl Meter {
    /// A meter for a session of `payment` over `layers` layers of `model`, with `credit` (what
    /// the gate's [`PaymentGate::open`] granted).
    pub fn new(terms: PayTerms, payment: Payment, model: B256, layers: u64, credit: U256) -> Meter {
        Meter {
            terms,
            payment,
            model,
            layers,
            credit,
            served: 0,
            paid: U256::ZERO,
            receipts: VecDeque::from([(0, ReceiptChain::new())]),
        }
    }

    /// The session's payment.
    pub fn payment(&self) -> &Payment {
        &self.payment
    }

    /// Layer-tokens served so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// The newest voucher's amount.
    pub fn paid(&self) -> U256 {
        self.paid
    }

    /// What the work served costs beyond what the newest voucher pays.
    pub fn unpaid(&self) -> U256 {
        self.terms.cost(self.served).saturating_sub(self.paid)
    }

    /// Checks `sv` off chain at Unix time `now_s`: this session, payer, node and model; signed
    /// by the session's key; for no more work than was served, at exactly the price of the
    /// work it names;
    /// above the newest voucher; naming the receipts signed for that work; redeemable for at
    /// least [`MIN_VOUCHER_LIFE_S`].
    pub fn check(&self, sv: &SignedVoucher, now_s: u64) -> Result<(), PaymentError> {
        let v = &sv.voucher;
        let refuse = |m: String| Err(PaymentError::Refused(m));
        if v.session != self.payment.session {
            return refuse(format!("voucher for session {}, not {}", v.session, self.payment.session));
        }
        if v.payer != self.payment.payer || v.node != self.terms.node || v.model != self.model {
            return refuse(format!(
                "voucher of payer {} to node {} for model {}: this session is {} to {} for {}",
                v.payer, v.node, v.model, self.payment.payer, self.terms.node, self.model
            ));
        }
        let signer =
            recover_signer(v, &self.terms.domain(), &sv.signature).map_err(|e| PaymentError::Refused(e.to_string()))?;
        if signer != self.payment.signer {
            return refuse(format!("voucher signed by {signer}; the session's key is {}", self.payment.signer));
        }
        let work = u64::try_from(v.cumulativeWork).unwrap_or(u64::MAX);
        if work > self.served {
            return refuse(format!("voucher for {work} layer-tokens; {} served", self.served));
        }
        let due = self.terms.cost(work);
        if v.cumulativeAmount < due {
            return refuse(format!(
                "voucher pays {} for {work} layer-tokens; the price makes it {due}",
                v.cumulativeAmount
            ));
        }
        // Nor more than the work it names costs: paying ahead would let a session look paid
        // (sums of such amounts overflow), and a voucher that names early work while paying
        // for later work would keep the node holding every step's receipt chain since.
        if v.cumulativeAmount > due {
            return refuse(format!(
                "voucher pays {}, more than the {due} the {work} layer-tokens it names cost",
                v.cumulativeAmount
            ));
        }
        if v.cumulativeAmount <= self.paid {
            return refuse(format!("voucher for {} is not above the {} already paid", v.cumulativeAmount, self.paid));
        }
        match self.receipts.iter().find(|(w, _)| *w == work) {
            Some((_, chain)) if chain.value() == v.receipts.0 => {}
            Some(_) => {
                return refuse(format!(
                    "voucher names receipts {} for {work} layer-tokens; this node signed others",
                    v.receipts
                ))
            }
            None => return refuse(format!("voucher for {work} layer-tokens: no step served ends there")),
        }
        if v.expiry < now_s.saturating_add(MIN_VOUCHER_LIFE_S) {
            return refuse(format!("voucher expires at {}, under {MIN_VOUCHER_LIFE_S} s from now ({now_s})", v.expiry));
        }
        Ok(())
    }

    /// Counts a checked (and stored) voucher.
    pub fn accept(&mut self, sv: &SignedVoucher) {
        self.paid = self.paid.max(sv.voucher.cumulativeAmount);
        // A later voucher pays for more: drop the chains of the work this one paid.
        let work = u64::try_from(sv.voucher.cumulativeWork).unwrap_or(u64::MAX);
        while self.receipts.front().is_some_and(|(w, _)| *w < work) {
            self.receipts.pop_front();
        }
    }

    /// Whether a step of `n_tokens` may run: afterwards the session owes at most its credit.
    pub fn admit(&self, n_tokens: u64) -> Result<(), PaymentError> {
        let after = self.served.saturating_add(n_tokens.saturating_mul(self.layers));
        let unpaid = self.terms.cost(after).saturating_sub(self.paid);
        if unpaid > self.credit {
            return Err(PaymentError::Required(format!(
                "this step would leave {unpaid} unpaid ({} paid for {} layer-tokens served), over the credit of {}",
                self.paid, self.served, self.credit
            )));
        }
        Ok(())
    }

    /// Counts a step of `n_tokens` served, with the receipt the node signs for it.
    pub fn count(&mut self, n_tokens: u64, receipt: &Receipt) {
        self.served = self.served.saturating_add(n_tokens.saturating_mul(self.layers));
        let mut chain = self.receipts.back().map_or_else(ReceiptChain::new, |(_, c)| *c);
        chain.absorb(receipt);
        self.receipts.push_back((self.served, chain));
    }
}

/// Who pays, on a client: the payer's address, the key that signs its vouchers, the escrow,
/// and the most it pays per layer-token.
#[derive(Clone, Debug)]
pub struct Payer {
    /// Whose escrow pays.
    pub payer: Address,
    /// The key that signs vouchers (the payer's own, or a session key it authorized).
    pub key: SessionKey,
    /// The payer's authorization of `key`, for nodes to submit, if the chain lacks it.
    pub authorization: Option<SignedAuthorization>,
    /// The chain.
    pub chain_id: u64,
    /// The escrow.
    pub escrow: Address,
    /// The most paid per layer-token (`None`: any price).
    pub max_price: Option<U256>,
}

impl Payer {
    /// Whether this payer can pay a node with `terms`: the same escrow, a price it accepts.
    pub fn accepts(&self, terms: &PayTerms) -> bool {
        terms.chain_id == self.chain_id
            && terms.escrow == self.escrow
            && self.max_price.is_none_or(|m| terms.price <= m)
    }
}

/// A client's count of one paid session: work received, and the newest voucher it signed.
#[derive(Clone, Debug)]
pub struct HopBill {
    terms: PayTerms,
    payment: Payment,
    model: B256,
    layers: u64,
    received: u64,
    receipts: ReceiptChain,
    signed: U256,
}

impl HopBill {
    /// A bill for a new session over `layers` layers of `model` on a node with `terms`, paid
    /// by `payer` (a fresh random session id, its opening proof signed at Unix time `now_s`).
    pub fn new(payer: &Payer, terms: PayTerms, model: B256, layers: u64, now_s: u64) -> Result<HopBill, PaymentError> {
        if !payer.accepts(&terms) {
            return Err(PaymentError::Refused(format!(
                "node {} charges {} per layer-token on escrow {} of chain {}; this payer pays on {} of chain {} up to {:?}",
                terms.node, terms.price, terms.escrow, terms.chain_id, payer.escrow, payer.chain_id, payer.max_price
            )));
        }
        terms.check(layers)?;
        let mut session = [0u8; 32];
        rand::fill(&mut session);
        let session = B256::from(session);
        let not_after = now_s.saturating_add(OPEN_PROOF_LIFETIME_S);
        let open = OpenSession { session, payer: payer.payer, node: terms.node, notAfter: not_after };
        let proof = payer.key.sign(&open, &terms.domain()).map_err(|e| PaymentError::Refused(e.to_string()))?;
        let payment = Payment {
            session,
            payer: payer.payer,
            signer: payer.key.address(),
            authorization: payer.authorization.clone(),
            allocation: None,
            not_after,
            proof: Bytes::from(proof.as_bytes().to_vec()),
        };
        Ok(HopBill { terms, payment, model, layers, received: 0, receipts: ReceiptChain::new(), signed: U256::ZERO })
    }

    /// After the node's `quote`: when what backs a session there is less than `max_len`
    /// tokens through its layers cost, signs with `key` (at Unix time `now_s`) an allocation
    /// adding the difference, for the node to submit; returns what it adds.
    pub fn allocate(
        &mut self,
        quote: &PayerQuote,
        max_len: usize,
        key: &SessionKey,
        now_s: u64,
    ) -> Result<U256, PaymentError> {
        let need = self.terms.cost(self.layers.saturating_mul(max_len as u64));
        if quote.available >= need {
            return Ok(U256::ZERO);
        }
        let add = need - quote.available;
        let allocation = Allocation {
            payer: self.payment.payer,
            node: self.terms.node,
            cumulativeAllocated: quote.allocated_total.saturating_add(add),
            deadline: now_s.saturating_add(VOUCHER_LIFETIME_S),
        };
        let sig = key.sign(&allocation, &self.terms.domain()).map_err(|e| PaymentError::Refused(e.to_string()))?;
        self.payment.allocation =
            Some(SignedAllocation { allocation, signature: Bytes::from(sig.as_bytes().to_vec()) });
        Ok(add)
    }

    /// What the session's `Open` names.
    pub fn payment(&self) -> &Payment {
        &self.payment
    }

    /// The node's terms.
    pub fn terms(&self) -> &PayTerms {
        &self.terms
    }

    /// Most tokens one frame may carry: their work costs at most half the credit cap (at
    /// least one token).
    pub fn max_tokens_per_frame(&self) -> usize {
        let per_token = self.terms.cost(self.layers).max(U256::from(1u8));
        let n = (self.terms.credit_cap / U256::from(2u8)) / per_token;
        usize::try_from(n).unwrap_or(usize::MAX).max(1)
    }

    /// Whether a voucher goes with the next frame of `n_tokens`: without one, the node would
    /// hold more than half its cap unpaid.
    pub fn due(&self, n_tokens: usize) -> bool {
        let after = self.received.saturating_add((n_tokens as u64).saturating_mul(self.layers));
        self.terms.cost(after).saturating_sub(self.signed) > self.terms.credit_cap / U256::from(2u8)
    }

    /// Counts a frame of `n_tokens` received, with the node's receipt for it (checked).
    pub fn received(&mut self, n_tokens: usize, receipt: &Receipt) {
        self.received = self.received.saturating_add((n_tokens as u64).saturating_mul(self.layers));
        self.receipts.absorb(receipt);
    }

    /// What the vouchers signed so far pay.
    pub fn signed(&self) -> U256 {
        self.signed
    }

    /// What the work received costs: what this session owes the node in all.
    pub fn owed(&self) -> U256 {
        self.terms.cost(self.received)
    }

    /// A voucher for everything received so far, signed with `key` at Unix time `now_s`, if
    /// that is more than the last one signed.
    pub fn sign(&mut self, key: &SessionKey, now_s: u64) -> Result<Option<SignedVoucher>, PaymentError> {
        let amount = self.owed();
        if amount <= self.signed {
            return Ok(None);
        }
        let voucher = Voucher {
            session: self.payment.session,
            payer: self.payment.payer,
            node: self.terms.node,
            model: self.model,
            cumulativeAmount: amount,
            cumulativeWork: U256::from(self.received),
            receipts: B256::from(self.receipts.value()),
            expiry: now_s.saturating_add(VOUCHER_LIFETIME_S),
        };
        let sig = key.sign(&voucher, &self.terms.domain()).map_err(|e| PaymentError::Refused(e.to_string()))?;
        self.signed = amount;
        Ok(Some(SignedVoucher { voucher, signature: Bytes::from(sig.as_bytes().to_vec()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    fn terms() -> PayTerms {
        PayTerms {
            node: address!("00000000000000000000000000000000000000bb"),
            price: U256::from(1_000u64),
            credit_cap: U256::from(100_000u64),
            chain_id: 31337,
            escrow: address!("5FbDB2315678afecb367f032d93F642f64180aa3"),
            free_tokens_per_day: 0,
        }
    }

    /// The receipt of a step of `n` tokens at `pos` (its hashes made up: the meter and the
    /// bill only chain receipts).
    fn receipt(pos: u32, n: u32) -> Receipt {
        Receipt {
            session: [4; 32],
            model: crate::model::ModelId([9; 32]),
            start: 0,
            end: 10,
            pos,
            n_tokens: n,
            inputs: [pos as u8; 32],
            output: [n as u8; 32],
        }
    }

    fn payer() -> Payer {
        let key = SessionKey::from_bytes(&[0x22; 32]).unwrap();
        Payer {
            payer: key.address(),
            key,
            authorization: None,
            chain_id: 31337,
            escrow: terms().escrow,
            max_price: None,
        }
    }

    /// The widest payment messages fit [`MAX_PAYMENT_BYTES`]: a session's opening payment
    /// carrying an authorization and an allocation, and a voucher, every number in them at its
    /// widest (prints their sizes, which the constant's doc quotes).
    #[test]
    fn the_widest_payment_messages_fit_the_limit() {
        let (mut p, t, model) = (payer(), terms(), B256::repeat_byte(9));
        let authorization =
            AuthorizeSigner { payer: p.payer, signer: p.key.address(), nonce: U256::MAX, deadline: U256::MAX };
        p.authorization = Some(SignedAuthorization { authorization, signature: Bytes::from(vec![0xff; 65]) });
        let now = u64::MAX / 2;
        let mut bill = HopBill::new(&p, t.clone(), model, 10, now).unwrap();
        let quote = PayerQuote { allocated_total: U256::MAX, available: U256::ZERO };
        bill.allocate(&quote, 1 << 20, &p.key, now).unwrap();
        let payment = serde_json::to_vec(bill.payment()).unwrap().len();
        let voucher = Voucher {
            session: B256::repeat_byte(0xff),
            payer: p.payer,
            node: t.node,
            model,
            cumulativeAmount: U256::MAX,
            cumulativeWork: U256::MAX,
            receipts: B256::repeat_byte(0xff),
            expiry: u64::MAX,
        };
        let voucher =
            serde_json::to_vec(&SignedVoucher { voucher, signature: Bytes::from(vec![0xff; 65]) }).unwrap().len();
        println!("widest payment {payment} bytes, voucher {voucher} bytes, limit {MAX_PAYMENT_BYTES}");
        assert!(payment.max(voucher) <= MAX_PAYMENT_BYTES, "{payment} and {voucher} bytes");
    }

    #[test]
    fn an_honest_client_keeps_the_node_under_its_cap_and_pays_everything() {
        let (p, t, model) = (payer(), terms(), B256::repeat_byte(9));
        let layers = 10;
        let mut bill = HopBill::new(&p, t.clone(), model, layers, 1_000_000).unwrap();
        // Half the cap is 50,000: 5 tokens of 10 layers at 1,000.
        assert_eq!(bill.max_tokens_per_frame(), 5);
        let mut meter = Meter::new(t.clone(), bill.payment().clone(), model, layers, t.credit_cap);
        let now = 1_000_000;
        let mut vouchers = 0;
        let mut pos = 0;
        for n in [5usize, 1, 1, 1, 1, 1, 4, 5, 1, 1] {
            let v = if bill.due(n) { bill.sign(&p.key, now).unwrap() } else { None };
            if let Some(v) = &v {
                meter.check(v, now).unwrap();
                meter.accept(v);
                vouchers += 1;
            }
            meter.admit(n as u64).unwrap();
            let r = receipt(pos, n as u32);
            pos += n as u32;
            meter.count(n as u64, &r);
            bill.received(n, &r);
            assert!(meter.unpaid() <= t.credit_cap / U256::from(2u8), "{}", meter.unpaid());
        }
        assert!((3..10).contains(&vouchers), "{vouchers} vouchers");
        // The closing voucher pays everything, to the unit.
        let last = bill.sign(&p.key, now).unwrap().unwrap();
        meter.check(&last, now).unwrap();
        meter.accept(&last);
        assert_eq!(meter.unpaid(), U256::ZERO);
        assert_eq!(last.voucher.cumulativeAmount, U256::from(21u64 * 10 * 1_000));
        assert!(bill.sign(&p.key, now).unwrap().is_none());
    }

    #[test]
    fn a_client_that_stops_paying_is_cut_off_at_the_cap() {
        let (p, t, model) = (payer(), terms(), B256::repeat_byte(9));
        let bill = HopBill::new(&p, t.clone(), model, 10, 1_000_000).unwrap();
        let mut meter = Meter::new(t.clone(), bill.payment().clone(), model, 10, t.credit_cap);
        let mut steps = 0;
        while meter.admit(1).is_ok() {
            meter.count(1, &receipt(steps, 1));
            steps += 1;
        }
        assert_eq!(steps, 10);
        assert_eq!(meter.unpaid(), t.credit_cap);
        assert!(matches!(meter.admit(1), Err(PaymentError::Required(_))));
    }

    #[test]
    fn vouchers_that_do_not_hold_are_refused() {
        let (p, t, model) = (payer(), terms(), B256::repeat_byte(9));
        let mut bill = HopBill::new(&p, t.clone(), model, 10, 1_000_000).unwrap();
        let mut meter = Meter::new(t.clone(), bill.payment().clone(), model, 10, t.credit_cap);
        let now = 1_000_000;
        meter.count(3, &receipt(0, 3));
        bill.received(3, &receipt(0, 3));
        let good = bill.sign(&p.key, now).unwrap().unwrap();
        meter.check(&good, now).unwrap();
        let resign = |v: Voucher, key: &SessionKey| SignedVoucher {
            signature: Bytes::from(key.sign(&v, &t.domain()).unwrap().as_bytes().to_vec()),
            voucher: v,
        };
        let stranger = SessionKey::from_bytes(&[0x33; 32]).unwrap();
        let mut cases = vec![("stranger's key", resign(good.voucher.clone(), &stranger))];
        let mut v = good.voucher.clone();
        v.cumulativeWork = U256::from(31u64);
        v.cumulativeAmount = U256::from(31_000u64);
        cases.push(("more work than served", resign(v, &p.key)));
        let mut v = good.voucher.clone();
        v.cumulativeAmount -= U256::from(1u8);
        cases.push(("under the price", resign(v, &p.key)));
        let mut v = good.voucher.clone();
        v.session = B256::repeat_byte(1);
        cases.push(("another session", resign(v, &p.key)));
        let mut v = good.voucher.clone();
        v.node = Address::repeat_byte(1);
        cases.push(("another node", resign(v, &p.key)));
        let mut v = good.voucher.clone();
        v.expiry = now + 60;
        cases.push(("expiring", resign(v, &p.key)));
        let mut forged = good.clone();
        forged.voucher.cumulativeAmount += U256::from(1u8);
        cases.push(("amount changed after signing", forged));
        let mut v = good.voucher.clone();
        v.cumulativeAmount = U256::MAX - U256::from(5u8);
        cases.push(("more than the work served costs", resign(v, &p.key)));
        // Receipts other than those the node signed: another answer, or none.
        let mut other = HopBill::new(&p, t.clone(), model, 10, 1_000_000).unwrap();
        other.received(3, &receipt(1, 3));
        let mut v = other.sign(&p.key, now).unwrap().unwrap().voucher;
        v.session = good.voucher.session;
        cases.push(("receipts of another answer", resign(v, &p.key)));
        let mut v = good.voucher.clone();
        v.receipts = B256::ZERO;
        cases.push(("no receipts", resign(v, &p.key)));
        // Work that ends inside the step served (30 layer-tokens in one step of 3 tokens).
        let mut v = good.voucher.clone();
        v.cumulativeWork = U256::from(20u64);
        v.cumulativeAmount = U256::from(20_000u64);
        cases.push(("work ending inside a step", resign(v, &p.key)));
        let mut short = good.clone();
        short.signature = Bytes::from(vec![1u8; 64]);
        cases.push(("truncated signature", short));
        for (what, sv) in cases {
            assert!(matches!(meter.check(&sv, now), Err(PaymentError::Refused(_))), "{what}");
        }
        // Replayed once accepted.
        meter.accept(&good);
        assert!(matches!(meter.check(&good, now), Err(PaymentError::Refused(_))));
    }

    #[test]
    fn a_voucher_may_pay_up_to_an_earlier_step_and_the_node_forgets_the_chains_paid() {
        let (p, t, model) = (payer(), terms(), B256::repeat_byte(9));
        let mut bill = HopBill::new(&p, t.clone(), model, 10, 1_000_000).unwrap();
        let mut meter = Meter::new(t.clone(), bill.payment().clone(), model, 10, t.credit_cap);
        let now = 1_000_000;
        // Two steps served; the client got the first answer only (the second was lost), and
        // pays for it: the node takes it.
        meter.count(2, &receipt(0, 2));
        bill.received(2, &receipt(0, 2));
        let early = bill.sign(&p.key, now).unwrap().unwrap();
        meter.count(1, &receipt(2, 1));
        meter.check(&early, now).unwrap();
        meter.accept(&early);
        // The rest is paid by the next voucher, with the second receipt chained.
        bill.received(1, &receipt(2, 1));
        let rest = bill.sign(&p.key, now).unwrap().unwrap();
        meter.check(&rest, now).unwrap();
        meter.accept(&rest);
        assert_eq!(meter.unpaid(), U256::ZERO);
        assert_eq!(meter.receipts.len(), 1, "only the chain at the paid work is kept");
    }

    #[test]
    fn only_the_session_key_opens_a_session_and_only_for_a_while() {
        let (p, t) = (payer(), terms());
        let now = 1_000_000;
        let bill = HopBill::new(&p, t.clone(), B256::ZERO, 10, now).unwrap();
        let pay = bill.payment().clone();
        pay.check_proof(t.node, &t.domain(), now).unwrap();
        // Another node, a later time, another claimed key: refused.
        assert!(pay.check_proof(Address::repeat_byte(1), &t.domain(), now).is_err());
        assert!(pay.check_proof(t.node, &t.domain(), now + OPEN_PROOF_LIFETIME_S + 1).is_err());
        let claimed = Payment { signer: Address::repeat_byte(2), ..pay.clone() };
        assert!(claimed.check_proof(t.node, &t.domain(), now).is_err());
        // A proof good for longer than the limit.
        let far = Payment { not_after: now + 10 * OPEN_PROOF_LIFETIME_S, ..pay };
        assert!(far.check_proof(t.node, &t.domain(), now).is_err());
    }

    #[test]
    fn a_payer_refuses_other_escrows_and_prices_over_its_limit() {
        let mut p = payer();
        let t = terms();
        assert!(p.accepts(&t));
        p.max_price = Some(U256::from(999u64));
        assert!(!p.accepts(&t));
        assert!(HopBill::new(&p, t.clone(), B256::ZERO, 10, 1_000_000).is_err());
        let p = payer();
        assert!(!p.accepts(&PayTerms { chain_id: 1, ..t.clone() }));
        // A cap that does not carry two tokens is refused up front.
        let tight = PayTerms { credit_cap: U256::from(19_999u64), ..t };
        assert!(matches!(HopBill::new(&p, tight, B256::ZERO, 10, 1_000_000), Err(PaymentError::Required(_))));
    }
}
