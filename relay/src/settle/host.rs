//! The relay's [`GateHost`]: the chain's JSON-RPC and the node's transactions through the
//! alloy provider the relay already holds (its wallet signs), and the ledger's blocking writes
//! on tokio's blocking pool. The relay's ledger is a file (`ledger.redb`) whose writes are
//! durable when they return, so nothing more is persisted.

use std::borrow::Cow;
use std::sync::Arc;

use alloy::primitives::{Address, Bytes};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionRequest;
use serde_json::Value;
use web_node::settle::{GateChain, GateFuture, GateHost, Ledger, Redeemer, SendError};

use super::bindings::revert_reason_of;
use super::Deployment;

/// A [`GateHost`] on an alloy provider and the tokio runtime.
#[derive(Clone, Debug)]
pub struct ProviderHost {
    provider: DynProvider,
}

impl ProviderHost {
    /// A host reading the chain through `provider` and sending with its wallet.
    pub fn new(provider: DynProvider) -> Self {
        ProviderHost { provider }
    }
}

impl GateHost for ProviderHost {
    fn rpc<'a>(&'a self, method: &'a str, params: Value) -> GateFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            self.provider
                .raw_request::<Value, Value>(Cow::Owned(method.to_string()), params)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn send<'a>(&'a self, to: Address, data: Bytes) -> GateFuture<'a, Result<u64, SendError>> {
        Box::pin(async move {
            let tx = TransactionRequest::default().to(to).input(data.into());
            // A revert shows when the gas is estimated: the chain refused it.
            let pending = self.provider.send_transaction(tx).await.map_err(|e| match revert_reason_of(&e) {
                Some(reason) => SendError::Refused(reason),
                None => SendError::Failed(e.to_string()),
            })?;
            let receipt = pending.get_receipt().await.map_err(|e| SendError::Failed(e.to_string()))?;
            if receipt.status() {
                receipt.block_number.ok_or_else(|| SendError::Failed("a receipt without a block number".into()))
            } else {
                Err(SendError::Refused("reverted".into()))
            }
        })
    }

    fn blocking(&self, job: Box<dyn FnOnce() + Send>) {
        tokio::task::spawn_blocking(job);
    }
}

/// The relay's [`Redeemer`] for `node` on `d`'s chain: it reads the chain and sends its
/// redeems through `provider` (whose wallet pays the gas), final at the deployment's depth.
pub fn redeemer(d: &Deployment, provider: DynProvider, node: Address, ledger: Arc<Ledger>) -> Redeemer {
    let chain = GateChain { chain_id: d.chain_id, escrow: d.escrow, staking: d.staking };
    Redeemer::new(chain, d.confirmations, Arc::new(ProviderHost::new(provider)), node, ledger)
}
