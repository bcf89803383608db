//! A charging node's [`PaymentGate`]: when a paid session opens, it asks the chain whether the
//! session's key may sign for the payer (or checks the payer's signed authorization, which the
//! [`Redeemer`](super::Redeemer) submits before redeeming) and how much of the payer's
//! allocation to this node is not yet promised; each voucher the session sends is kept in the
//! node's [`Ledger`] before its step is answered.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::DynProvider;
use web_node::settle::{
    recover_signer, GateFuture, PayTerms, Payment, PaymentError, PaymentGate, SignedAuthorization, SignedVoucher,
};

use super::bindings::Escrow;
use super::ledger::Ledger;
use super::{latest_block, ChainError, Deployment};

/// The session server's view of the chain and the ledger.
pub struct ChainGate {
    terms: PayTerms,
    escrow: Escrow::EscrowInstance<DynProvider>,
    provider: DynProvider,
    ledger: Arc<Ledger>,
    rpc_timeout: Duration,
}

impl std::fmt::Debug for ChainGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainGate").field("terms", &self.terms).finish_non_exhaustive()
    }
}

impl ChainGate {
    /// A gate for `node` (its EVM address) charging `price` per layer-token with a credit cap
    /// of `credit_cap`, reading the chain of `deployment` through `provider` and keeping
    /// vouchers in `ledger`.
    pub fn new(
        deployment: &Deployment,
        provider: DynProvider,
        node: Address,
        price: U256,
        credit_cap: U256,
        ledger: Arc<Ledger>,
    ) -> ChainGate {
        ChainGate {
            terms: PayTerms { node, price, credit_cap, chain_id: deployment.chain_id, escrow: deployment.escrow },
            escrow: Escrow::new(deployment.escrow, provider.clone()),
            provider,
            ledger,
            rpc_timeout: Duration::from_secs(10),
        }
    }

    /// The payer's state at the latest block: whether its key signs for it (or will, once its
    /// authorization is submitted) and the credit the session gets.
    async fn check(&self, p: &Payment) -> Result<U256, PaymentError> {
        let unavailable = |e: ChainError| PaymentError::Unavailable(e.to_string());
        let (_, now) = latest_block(&self.provider).await.map_err(unavailable)?;
        let signer = self
            .escrow
            .isSigner(p.payer, p.signer)
            .call()
            .await
            .map_err(|e| unavailable(ChainError::contract("isSigner", &e)))?;
        if !signer {
            let Some(a) = &p.authorization else {
                return Err(PaymentError::Refused(format!(
                    "key {} may not sign for payer {}: authorize it on chain, or open with the payer's signed authorization",
                    p.signer, p.payer
                )));
            };
            self.check_authorization(p, a, now).await?;
        }
        let available = self
            .escrow
            .available(p.payer, self.terms.node)
            .call()
            .await
            .map_err(|e| unavailable(ChainError::contract("available", &e)))?;
        // The payer's other sessions' vouchers not yet collected are promised already.
        let promised = self
            .ledger
            .outstanding_of(p.payer, Some(p.session))
            .map_err(|e| PaymentError::Unavailable(e.to_string()))?;
        let free = available.saturating_sub(promised);
        Ok(free.min(self.terms.credit_cap))
    }

    /// Checks a payer's authorization of the session key off chain (its signature, deadline
    /// and nonce) and keeps it for the redeemer to submit.
    async fn check_authorization(&self, p: &Payment, a: &SignedAuthorization, now: u64) -> Result<(), PaymentError> {
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
        if auth.deadline < U256::from(now + web_node::settle::pay::MIN_VOUCHER_LIFE_S) {
            return Err(PaymentError::Refused(format!("the authorization's deadline {} is too close", auth.deadline)));
        }
        let nonce = self
            .escrow
            .nonces(p.payer)
            .call()
            .await
            .map_err(|e| PaymentError::Unavailable(ChainError::contract("nonces", &e).to_string()))?;
        if auth.nonce != nonce {
            return Err(PaymentError::Refused(format!(
                "the authorization's nonce {} is not the payer's next ({nonce}): it is used or void",
                auth.nonce
            )));
        }
        self.ledger.put_authorization(a).map_err(|e| PaymentError::Unavailable(e.to_string()))
    }
}

impl PaymentGate for ChainGate {
    fn terms(&self) -> &PayTerms {
        &self.terms
    }

    fn open<'a>(&'a self, payment: &'a Payment) -> GateFuture<'a, Result<U256, PaymentError>> {
        Box::pin(async move {
            tokio::time::timeout(self.rpc_timeout, self.check(payment)).await.unwrap_or_else(|_| {
                Err(PaymentError::Unavailable(format!("the chain did not answer in {:?}", self.rpc_timeout)))
            })
        })
    }

    fn store<'a>(&'a self, voucher: &'a SignedVoucher) -> GateFuture<'a, Result<(), PaymentError>> {
        let (ledger, voucher) = (self.ledger.clone(), voucher.clone());
        Box::pin(async move {
            // A durable write waits for the disk: off the async workers.
            tokio::task::spawn_blocking(move || ledger.put(&voucher))
                .await
                .map_err(|e| PaymentError::Unavailable(e.to_string()))?
                .map(|_| ())
                .map_err(|e| PaymentError::Unavailable(e.to_string()))
        })
    }
}
