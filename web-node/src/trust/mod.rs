//! Trust between nodes: what a node signs for each answer ([`receipt`]), how an auditor
//! judges an answer for its layers ([`delta`]), which sessions are audited and what the
//! auditors' opinions come to ([`audit`]), the evidence a faulty verdict leaves for others to
//! check ([`report`]) and which of those a node remembers ([`recent`]), what each node's
//! record is worth to routing ([`reputation`]), and the verdict a node signs for the chain's
//! tribunal after recomputing a report ([`tribunal`]).
//!
//! An auditor recomputes a block range on the inputs a node was given and compares the two
//! outputs by [`deviation`]: the error of what the block added to its input (the residual
//! stream dominates a raw output, so a node that skips its layers would otherwise look
//! close). The limit, [`DELTA_LIMIT`], comes from `ait calibrate`, which measures honest
//! drift between our backends and the same metric for each way a node can lie.

pub mod audit;
pub mod delta;
pub mod receipt;
pub mod recent;
pub mod report;
pub mod reputation;
pub mod tribunal;

pub use audit::{parse_rate, second_opinion_rank, AuditDraw, Verdict, DEFAULT_AUDIT_RATE, MAX_OPINIONS, QUORUM};
pub use delta::{deviation, CompareError, Deviation, DELTA_LIMIT};
pub use receipt::{
    output_hash, public_key_of, InputChain, NodeKey, Receipt, ReceiptChain, ReceiptError, SessionNonce, SignedReceipt,
    MAX_SIGNATURE,
};
pub use report::{check_run, Checked, FraudReport, Judgment, ReportError, SignedRun, Span};
pub use reputation::{Event, Rating, Reputation, StoreError};
