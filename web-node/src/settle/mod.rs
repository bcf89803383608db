//! Settlement: the messages a payer signs off chain and the escrow contract
//! (`contracts/src/Escrow.sol`) checks on chain.
//!
//! A payer deposits AIT into the escrow once and allocates from it to each node it uses. Its
//! wallet key, or a session key the wallet authorized once, then signs cumulative
//! [`Voucher`]s as work is done: each supersedes the last, and a node redeems the newest for
//! what it adds to what was already collected. Everything here builds for wasm32, so a tab
//! signs vouchers with the same code a native node checks them with; talking to a chain is the
//! embedding program's job.

pub mod amount;
pub mod pay;
pub mod voucher;
pub mod wallet;

pub use amount::{ait_f64, format_ait, parse_ait, permit_vrs};
pub use pay::{
    unix_s, GateFuture, HopBill, Meter, PayTerms, Payer, PayerQuote, Payment, PaymentError, PaymentGate,
    SignedAllocation, SignedAuthorization, SignedVoucher, MAX_PAYMENT_BYTES,
};
pub use voucher::{
    escrow_domain, recover_signer, registry_domain, token_domain, Allocation, AuthorizeSigner, Permit, Register,
    SessionKey, SettleError, Voucher,
};
