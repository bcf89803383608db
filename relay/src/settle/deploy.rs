//! Deploying the settlement contracts, and the file that tells nodes where they are.

use std::path::Path;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use serde::{Deserialize, Serialize};

use super::bindings::{Escrow, ModelRegistry, Staking, Treasury, Tribunal, AIT};
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
    /// Who may slash besides the tribunal (zero for nobody).
    pub arbiter: Address,
    /// Seconds a withdraw or a session key's revocation waits: longer than the audit window.
    pub thaw_seconds: u64,
    /// Seconds a stake takes to unbond: longer than the audit and escalation window.
    pub unbonding_seconds: u64,
    /// The tribunal's settings.
    pub tribunal: TribunalParams,
}

/// What the tribunal (`contracts/src/Tribunal.sol`) slashes and pays, and how long it waits.
/// docs/ARCHITECTURE.md ("Slashing") shows why these amounts make cheating lose money.
#[derive(Clone, Debug)]
pub struct TribunalParams {
    /// Bonded stake a judge or juror needs, smallest unit.
    pub min_stake: U256,
    /// Taken from a node found faulty.
    pub slash: U256,
    /// Taken from each judge a jury overturns.
    pub judge_penalty: U256,
    /// Paid to each judge or juror on the winning side (from the tribunal's own balance).
    pub bounty: U256,
    /// Seconds the accused has to appeal.
    pub appeal_seconds: u64,
    /// Seconds a jury has to be drawn, and then to rule.
    pub jury_seconds: u64,
    /// Stake an appeal puts up besides the slash: slashed too when the jury confirms.
    pub appeal_bond: U256,
    /// Taken from each drawn juror that neither voted nor abstained in time.
    pub juror_penalty: U256,
}

impl TribunalParams {
    /// The amounts docs/ARCHITECTURE.md derives, with windows of `appeal_seconds` and
    /// `jury_seconds` (their sum with a second jury window must stay under the unbonding
    /// period, or the deployment fails).
    pub fn standard(appeal_seconds: u64, jury_seconds: u64) -> TribunalParams {
        let ait = |n: u64| U256::from(n) * U256::from(AIT_UNIT);
        TribunalParams {
            min_stake: ait(MIN_STAKE_AIT),
            slash: ait(SLASH_AIT),
            judge_penalty: ait(JUDGE_PENALTY_AIT),
            bounty: ait(BOUNTY_AIT),
            appeal_seconds,
            jury_seconds,
            appeal_bond: ait(APPEAL_BOND_AIT),
            juror_penalty: ait(JUROR_PENALTY_AIT),
        }
    }
}

/// Bonded AIT a judge or juror needs.
pub const MIN_STAKE_AIT: u64 = 1_000;
/// AIT a node found faulty loses.
pub const SLASH_AIT: u64 = 1_000;
/// AIT an overturned judge loses.
pub const JUDGE_PENALTY_AIT: u64 = 500;
/// AIT a judge or juror on the winning side is paid.
pub const BOUNTY_AIT: u64 = 5;
/// AIT of stake an appeal puts up besides the slash (slashed when the jury confirms).
pub const APPEAL_BOND_AIT: u64 = 100;
/// AIT a drawn juror that neither votes nor abstains in time loses.
pub const JUROR_PENALTY_AIT: u64 = 100;

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
    /// Verdicts, appeals and slashing (zero in a file written before it existed).
    #[serde(default)]
    pub tribunal: Address,
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

/// Deploys AIT, the treasury, the registry, staking, the escrow and the tribunal from the
/// provider's wallet, `holder`, which receives the whole AIT supply. When that wallet is the
/// DAO it grants the tribunal staking's ARBITER_ROLE; otherwise the DAO must.
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
    let t = &params.tribunal;
    let tribunal = Tribunal::deploy(
        provider,
        *staking.address(),
        *token.address(),
        t.min_stake,
        t.slash,
        t.judge_penalty,
        t.bounty,
        t.appeal_seconds,
        t.jury_seconds,
        t.appeal_bond,
        t.juror_penalty,
    )
    .await
    .map_err(|e| ChainError::contract("deploy Tribunal", &e))?;
    if holder == params.dao {
        let role = staking.ARBITER_ROLE().call().await.map_err(|e| ChainError::contract("ARBITER_ROLE", &e))?;
        super::mined("Staking.grantRole", staking.grantRole(role, *tribunal.address()).send().await).await?;
    }
    Ok(Deployment {
        rpc: rpc.to_string(),
        chain_id,
        token: *token.address(),
        registry: *registry.address(),
        treasury: *treasury.address(),
        staking: *staking.address(),
        escrow: *escrow.address(),
        tribunal: *tribunal.address(),
        thaw_seconds: params.thaw_seconds,
        unbonding_seconds: params.unbonding_seconds,
        confirmations: default_confirmations(),
    })
}
