//! Settlement on an EVM chain: bindings to the contracts in `contracts/` (their committed
//! artifacts, loaded by alloy's `sol!`), deploying them, a local `anvil` for development and
//! tests, and `ait chain dev`. The messages a payer signs are web-node's
//! ([`web_node::settle`]), so a tab and a native node sign and check the same bytes.

pub mod anvil;
pub mod bindings;
pub mod cli;
pub mod court;
pub mod deploy;
pub mod dev;
pub mod duty;
pub mod host;
pub mod node;
pub mod royalties;
pub mod tribunal;

pub use anvil::Anvil;
pub use deploy::{deploy, DeployParams, Deployment};
pub use host::{redeemer, ProviderHost};
pub use web_node::settle::{
    Backing, ChainGate, Ledger, LedgerError, RedeemError, RedeemReport, Redeemer, VoucherError,
};

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The local chain process could not start or answer.
    #[error("anvil: {0}")]
    Anvil(String),
    /// The RPC endpoint failed or refused the request.
    #[error("chain RPC: {0}")]
    Rpc(String),
    /// A contract call reverted or could not be sent; the text names the contract's error.
    #[error("{call}: {reason}")]
    Contract {
        /// What was called.
        call: String,
        /// The decoded revert (`NothingToCollect(..)`) or the transport's error.
        reason: String,
    },
    /// The node's voucher ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A redeem round failed (the chain, a transaction's outcome, or the ledger).
    #[error(transparent)]
    Redeem(#[from] RedeemError),
    /// A deployment file could not be read or written.
    #[error("deployment file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl ChainError {
    /// A failed contract call: a revert, decoded against every contract's errors, is the
    /// contract's refusal; anything else (no connection, a timeout) is the RPC's failure.
    pub fn contract(call: impl Into<String>, err: &alloy::contract::Error) -> Self {
        let call = call.into();
        if err.as_revert_data().is_some() {
            ChainError::Contract { call, reason: bindings::revert_reason(err) }
        } else {
            ChainError::Rpc(format!("{call}: {err}"))
        }
    }

    /// Waiting for a transaction's receipt failed: the chain did not answer, so whether it was
    /// mined is unknown (the caller reads the chain again).
    pub fn pending(call: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ChainError::Rpc(format!("{}: {err}", call.into()))
    }
}

/// The latest block's number and time (Unix seconds): the chain's clock.
pub async fn latest_block<P: alloy::providers::Provider>(provider: &P) -> Result<(u64, u64), ChainError> {
    let block = provider
        .get_block_by_number(Default::default())
        .await
        .map_err(|e| ChainError::Rpc(e.to_string()))?
        .ok_or_else(|| ChainError::Rpc("no latest block".into()))?;
    Ok((block.header.number, block.header.timestamp))
}

/// A sent transaction, or why it could not be sent.
pub type Sent = Result<alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>, alloy::contract::Error>;

/// Sends `call` with twice the node's gas estimate as its limit (unused gas is not paid). For
/// the jury draw, whose cost depends on which pool entries its seeded tries hit and on the
/// stakes it reads: an estimate can fall short of what the mined call spends (on anvil about
/// one draw in eight ran out of gas on its estimate).
pub async fn send_with_gas_margin<P, D>(call: alloy::contract::CallBuilder<P, D>) -> Sent
where
    P: alloy::providers::Provider,
    D: alloy::contract::CallDecoder,
{
    // Estimated in the block the transaction would land in, as the provider's gas filler does
    // (in the latest one the draw would still be too early).
    let call = call.block(alloy::eips::BlockId::pending());
    let estimate = call.estimate_gas().await?;
    call.gas(estimate.saturating_mul(2)).send().await
}

/// Longest [`mined`] waits for a receipt.
pub const RECEIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits for a sent transaction's receipt: `Ok` when it succeeded; a refusal names the
/// contract's error (`call: NotThawed(..)`), a mined revert says so.
pub async fn mined(call: &str, sent: Sent) -> Result<(), ChainError> {
    use alloy::consensus::Transaction as _;
    use alloy::providers::Provider as _;
    let pending = sent.map_err(|e| ChainError::contract(call, &e))?;
    let (provider, hash) = (pending.provider().clone(), *pending.tx_hash());
    let receipt = tokio::time::timeout(RECEIPT_TIMEOUT, pending.get_receipt())
        .await
        .map_err(|_| ChainError::pending(call, format!("no receipt in {RECEIPT_TIMEOUT:?}")))?
        .map_err(|e| ChainError::pending(call, e))?;
    if receipt.status() {
        return Ok(());
    }
    // A mined revert carries no reason: tell running out of gas from the contract's refusal.
    let used = receipt.gas_used;
    let reason = match provider.get_transaction_by_hash(hash).await {
        Ok(Some(tx)) if used >= tx.gas_limit() => format!("ran out of gas (its limit: {used})"),
        Ok(Some(tx)) => format!("reverted after {used} of its {} gas", tx.gas_limit()),
        _ => format!("reverted after {used} gas"),
    };
    Err(ChainError::Contract { call: call.into(), reason })
}

/// The escrow's `Redeemed` events of blocks `from..=to`, those naming `node` as the node
/// when given (read in pieces public RPCs accept: [`web_node::settle::chain::log_chunks`]).
pub async fn redeemed_events(
    provider: &alloy::providers::DynProvider,
    escrow: alloy::primitives::Address,
    node: Option<alloy::primitives::Address>,
    from: u64,
    to: u64,
) -> Result<Vec<web_node::settle::RedeemedLog>, ChainError> {
    let host = std::sync::Arc::new(ProviderHost::new(provider.clone()));
    // Only the escrow is read here; a wide window's pieces may take a slow RPC a while each.
    let reads = web_node::settle::ChainReads::new(host, escrow, alloy::primitives::Address::ZERO)
        .with_timeout(std::time::Duration::from_secs(60));
    reads.redeemed_events(node, from, to).await.map_err(|e| ChainError::Rpc(e.0))
}
