//! The relay's [`GateHost`]: the chain's JSON-RPC through the alloy provider the relay already
//! holds, and the ledger's blocking writes on tokio's blocking pool. The relay's ledger is a
//! file (`ledger.redb`) whose writes are durable when they return, so nothing more is
//! persisted.

use std::borrow::Cow;

use alloy::providers::{DynProvider, Provider};
use serde_json::Value;
use web_node::settle::{GateFuture, GateHost};

/// A [`GateHost`] on an alloy provider and the tokio runtime.
#[derive(Clone, Debug)]
pub struct ProviderHost {
    provider: DynProvider,
}

impl ProviderHost {
    /// A host reading the chain through `provider`.
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

    fn blocking(&self, job: Box<dyn FnOnce() + Send>) {
        tokio::task::spawn_blocking(job);
    }
}
