//! The settlement contracts, from their compiled artifacts in `contracts/artifacts/` (the
//! test command recompiles them with the pinned solc and fails if they differ).
#![allow(missing_docs, unreachable_pub, clippy::too_many_arguments)]

use alloy::sol;
use alloy::sol_types::SolInterface;

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    AIT,
    "../contracts/artifacts/AIT.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    ModelRegistry,
    "../contracts/artifacts/ModelRegistry.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Treasury,
    "../contracts/artifacts/Treasury.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Staking,
    "../contracts/artifacts/Staking.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Escrow,
    "../contracts/artifacts/Escrow.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Tribunal,
    "../contracts/artifacts/Tribunal.json"
);

/// Revert data named by the contract error it encodes (`NothingToCollect(..)`), if it is one
/// of these contracts' errors.
fn contract_error(data: &[u8]) -> Option<String> {
    fn decoded<E: SolInterface + std::fmt::Debug>(data: &[u8]) -> Option<String> {
        E::abi_decode(data).ok().map(|e| format!("{e:?}"))
    }
    decoded::<Escrow::EscrowErrors>(data)
        .or_else(|| decoded::<ModelRegistry::ModelRegistryErrors>(data))
        .or_else(|| decoded::<Staking::StakingErrors>(data))
        .or_else(|| decoded::<AIT::AITErrors>(data))
        .or_else(|| decoded::<Treasury::TreasuryErrors>(data))
        .or_else(|| decoded::<Tribunal::TribunalErrors>(data))
}

/// A revert named by the contract error it carries (`NothingToCollect(..)`), else the
/// transport's message.
pub fn revert_reason(err: &alloy::contract::Error) -> String {
    err.as_revert_data().and_then(|d| contract_error(&d)).unwrap_or_else(|| err.to_string())
}

/// The contract error a failed JSON-RPC request carries as revert data (a transaction whose
/// gas estimate reverted), named as [`revert_reason`] names it; `None` when it carries none.
pub fn revert_reason_of(err: &alloy::transports::TransportError) -> Option<String> {
    let data = err.as_error_resp()?.as_revert_data()?;
    Some(contract_error(&data).unwrap_or_else(|| format!("reverted ({data})")))
}

impl From<&web_node::settle::Voucher> for Escrow::Voucher {
    fn from(v: &web_node::settle::Voucher) -> Self {
        Escrow::Voucher {
            session: v.session,
            payer: v.payer,
            node: v.node,
            model: v.model,
            cumulativeAmount: v.cumulativeAmount,
            cumulativeWork: v.cumulativeWork,
            receipts: v.receipts,
            expiry: v.expiry,
        }
    }
}

impl From<&web_node::settle::Allocation> for Escrow::Allocation {
    fn from(a: &web_node::settle::Allocation) -> Self {
        Escrow::Allocation {
            payer: a.payer,
            node: a.node,
            cumulativeAllocated: a.cumulativeAllocated,
            deadline: a.deadline,
        }
    }
}
