//! Deploying the settlement contracts, and the file that tells nodes where they are.

use std::path::Path;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use serde::{Deserialize, Serialize};

use super::bindings::{Escrow, ModelRegistry, Staking, Treasury, AIT};
use super::ChainError;

/// One AIT in its smallest unit (18 decimals).
pub const AIT_UNIT: u128 = 1_000_000_000_000_000_000;

/// What to deploy with.
#[derive(Clone, Debug)]
pub struct DeployParams {
    /// AIT minted, in the smallest unit, all to the deployer.
    pub supply: U256,
    /// The DAO: owner of the treasury and the registry, admin of staking.
    pub dao: Address,
    /// Who may slash (the trust issue's audit quorum; zero for none yet).
    pub arbiter: Address,
    /// Seconds a withdraw or a session key's revocation waits: longer than the audit window.
    pub thaw_seconds: u64,
    /// Seconds a stake takes to unbond: longer than the audit and escalation window.
    pub unbonding_seconds: u64,
}

/// Where the contracts are: the file `ait chain dev` writes and nodes read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The chain's JSON-RPC endpoint.
    pub rpc: String,
    /// The chain id, which every EIP-712 signature commits to.
    pub chain_id: u64,
    /// The AIT token.
    pub token: Address,
    /// The model registry.
    pub registry: Address,
    /// The DAO fund.
    pub treasury: Address,
    /// Node identities and stakes.
    pub staking: Address,
    /// Deposits, allocations and vouchers.
    pub escrow: Address,
    /// The escrow's thaw period, in seconds.
    pub thaw_seconds: u64,
    /// Staking's unbonding period, in seconds.
    pub unbonding_seconds: u64,
    /// Blocks under which a transaction counts as final on this chain (a node lets a voucher
    /// go only then). A dev chain mines a block only per transaction, so it says 0.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
}

fn default_confirmations() -> u64 {
    3
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Deployment, ChainError> {
        load_json(path)
    }

    /// Writes it (to a temporary file renamed into place, so a reader never sees half).
    pub fn save(&self, path: &Path) -> Result<(), ChainError> {
        save_json(self, path)
    }
}

/// Reads `path` as JSON.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ChainError> {
    let file_err = |reason: String| ChainError::File { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))
}

/// Writes `value` as JSON to `path` through a temporary file renamed into place.
pub(crate) fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<(), ChainError> {
    let file_err = |reason: String| ChainError::File { path: path.display().to_string(), reason };
    let text = serde_json::to_string_pretty(value).map_err(|e| file_err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| file_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(e.to_string()))
}

/// Deploys AIT, the treasury, the registry, staking and the escrow from the provider's
/// wallet; `holder` receives the whole AIT supply.
pub async fn deploy<P: Provider>(
    provider: &P,
    rpc: &str,
    holder: Address,
    params: &DeployParams,
) -> Result<Deployment, ChainError> {
    let chain_id = provider.get_chain_id().await.map_err(|e| ChainError::Rpc(e.to_string()))?;
    let token =
        AIT::deploy(provider, holder, params.supply).await.map_err(|e| ChainError::contract("deploy AIT", &e))?;
    let treasury = Treasury::deploy(provider, *token.address(), params.dao)
        .await
        .map_err(|e| ChainError::contract("deploy Treasury", &e))?;
    let registry = ModelRegistry::deploy(provider, params.dao)
        .await
        .map_err(|e| ChainError::contract("deploy ModelRegistry", &e))?;
    let staking = Staking::deploy(
        provider,
        *token.address(),
        *treasury.address(),
        params.unbonding_seconds,
        params.dao,
        params.arbiter,
    )
    .await
    .map_err(|e| ChainError::contract("deploy Staking", &e))?;
    let escrow =
        Escrow::deploy(provider, *token.address(), *registry.address(), *treasury.address(), params.thaw_seconds)
            .await
            .map_err(|e| ChainError::contract("deploy Escrow", &e))?;
    Ok(Deployment {
        rpc: rpc.to_string(),
        chain_id,
        token: *token.address(),
        registry: *registry.address(),
        treasury: *treasury.address(),
        staking: *staking.address(),
        escrow: *escrow.address(),
        thaw_seconds: params.thaw_seconds,
        unbonding_seconds: params.unbonding_seconds,
        confirmations: default_confirmations(),
    })
}
