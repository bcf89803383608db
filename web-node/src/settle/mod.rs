//! Settlement: the messages a payer signs off chain and the escrow contract
//! (`contracts/src/Escrow.sol`) checks on chain.
//!
//! A payer deposits AIT into the escrow once and allocates from it to each node it uses. Its
//! wallet key, or a session key the wallet authorized once, then signs cumulative
//! [`Voucher`]s as work is done: each supersedes the last, and a node redeems the newest for
//! what it adds to what was already collected. Everything here builds for wasm32, so a tab
//! signs vouchers with the same code a native node checks them with, and a seeding tab charges
//! with the same [`ChainGate`] and [`Ledger`] as a relay; the chain's JSON-RPC and sending
//! transactions are the embedding program's ([`GateHost`]).

pub mod amount;
pub mod backing;
pub mod chain;
pub mod gate;
pub mod ledger;
pub mod pay;
pub mod redeem;
pub mod voucher;
pub mod wallet;

pub use amount::{ait_f64, format_ait, parse_ait, permit_vrs};
pub use backing::Backing;
pub use chain::{ChainReads, GateHost, ReadError, RedeemedLog, SendError};
pub use gate::{ChainGate, GateChain};
pub use ledger::{Entry, Ledger, LedgerContents, LedgerError};
pub use pay::{
    unix_s, GateFuture, HopBill, Meter, PayTerms, Payer, PayerQuote, Payment, PaymentError, PaymentGate,
    SignedAllocation, SignedAuthorization, SignedVoucher, MAX_PAYMENT_BYTES, NODE_SHARE_BPS,
};
pub use redeem::{RedeemError, RedeemReport, Redeemer, VoucherError};
pub use voucher::{
    escrow_domain, recover_signer, registry_domain, token_domain, Allocation, AuthorizeSigner, Permit, Register,
    SessionKey, SettleError, Voucher,
};
