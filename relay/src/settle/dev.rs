//! `ait chain dev`: a local chain for development: anvil with the settlement contracts
//! deployed and AIT handed to its dev accounts, described in a file that nodes and tests read.

use std::path::PathBuf;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};

use super::anvil::{Anvil, AnvilOpts};
use super::bindings::AIT;
use super::deploy::{deploy, load_json, save_json, DeployParams, Deployment, TribunalParams, AIT_UNIT};
use super::ChainError;

/// `ait chain ...`.
#[derive(clap::Args, Debug)]
pub struct ChainOpt {
    #[command(subcommand)]
    cmd: ChainCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ChainCmd {
    /// Start a local chain (anvil) with the contracts deployed and AIT in every dev account,
    /// write where they are to --out, and run until stopped.
    Dev(DevOpt),
    /// Deploy the contracts to a chain from this node's wallet and write where they are.
    Deploy(Box<super::cli::DeployOpt>),
}

/// `ait chain dev` options.
#[derive(clap::Args, Clone, Debug)]
pub struct DevOpt {
    /// The file to write: the deployment, and the dev accounts with their keys.
    #[arg(long, default_value = "ait-chain.json")]
    pub out: PathBuf,
    /// Interface the chain's RPC listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the chain's RPC (0: any).
    #[arg(long, default_value_t = 8545)]
    pub port: u16,
    /// Dev accounts (the first deploys, owns the DAO and may slash).
    #[arg(long, default_value_t = 10)]
    pub accounts: u32,
    /// AIT each dev account gets.
    #[arg(long, default_value_t = 100_000)]
    pub ait_each: u64,
    /// The escrow's thaw period in seconds (in production: longer than the audit window).
    #[arg(long, default_value_t = 3600)]
    pub thaw_seconds: u64,
    /// Staking's unbonding period in seconds (in production: longer than audit and escalation).
    #[arg(long, default_value_t = 7200)]
    pub unbonding_seconds: u64,
    /// Seconds an accused node has to appeal a verdict (the tribunal's appeal window).
    #[arg(long, default_value_t = 1800)]
    pub appeal_seconds: u64,
    /// Seconds an appeal's jury has to be drawn, and then to rule.
    #[arg(long, default_value_t = 1200)]
    pub jury_seconds: u64,
}

/// AIT the deployer gives the tribunal on a dev chain, to pay bounties from.
pub const DEV_BOUNTY_FUND_AIT: u64 = 1_000;

/// A dev account: a development chain's key is no secret, and the file says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevAccount {
    /// Its address.
    pub address: Address,
    /// Its secret key (a random dev key, worthless off this chain).
    pub key: B256,
}

/// What `ait chain dev` writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevChain {
    /// Where the contracts are.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// The dev accounts, each with ETH and AIT; the first is the deployer, DAO and arbiter.
    pub accounts: Vec<DevAccount>,
}

impl DevChain {
    /// Writes it (atomically).
    pub fn save(&self, path: &std::path::Path) -> Result<(), ChainError> {
        save_json(self, path)
    }

    /// Reads a file `ait chain dev` wrote.
    pub fn load(path: &std::path::Path) -> Result<DevChain, ChainError> {
        load_json(path)
    }
}

/// A chain started by [`start`]: anvil, the contracts and funded accounts.
#[derive(Debug)]
pub struct RunningDevChain {
    /// The chain process (dropping it stops the chain).
    pub anvil: Anvil,
    /// What was deployed, and the accounts.
    pub chain: DevChain,
}

/// Starts anvil, deploys the contracts from the first dev account, gives every other account
/// `opts.ait_each` AIT and the tribunal [`DEV_BOUNTY_FUND_AIT`] for bounties.
pub async fn start(opts: &DevOpt) -> Result<RunningDevChain, ChainError> {
    let anvil = Anvil::start(&AnvilOpts {
        host: opts.host.clone(),
        port: opts.port,
        accounts: opts.accounts.max(1),
        ..AnvilOpts::default()
    })
    .await?;
    let accounts: Vec<DevAccount> = anvil
        .keys
        .iter()
        .map(|key| {
            let signer = PrivateKeySigner::from_bytes(key).map_err(|e| ChainError::Anvil(e.to_string()))?;
            Ok(DevAccount { address: signer.address(), key: *key })
        })
        .collect::<Result<_, ChainError>>()?;
    let owner = accounts[0].clone();
    let provider = wallet_provider(&anvil.rpc, &owner.key)?;
    let each = U256::from(opts.ait_each) * U256::from(AIT_UNIT);
    let params = DeployParams {
        // Enough for every account and as much again for the deployer.
        supply: each * U256::from(2 * accounts.len() as u64),
        dao: owner.address,
        arbiter: owner.address,
        thaw_seconds: opts.thaw_seconds,
        unbonding_seconds: opts.unbonding_seconds,
        tribunal: TribunalParams::standard(opts.appeal_seconds, opts.jury_seconds),
    };
    let mut deployment = deploy(&provider, &anvil.rpc, owner.address, &params).await?;
    // Anvil mines a block per transaction and none in between: no depth ever grows.
    deployment.confirmations = 0;
    let token = AIT::new(deployment.token, &provider);
    let fund = (deployment.tribunal, U256::from(DEV_BOUNTY_FUND_AIT) * U256::from(AIT_UNIT));
    for (to, amount) in accounts[1..].iter().map(|a| (a.address, each)).chain([fund]) {
        token
            .transfer(to, amount)
            .send()
            .await
            .map_err(|e| ChainError::contract("AIT.transfer", &e))?
            .get_receipt()
            .await
            .map_err(|e| ChainError::pending("AIT.transfer", e))?;
    }
    Ok(RunningDevChain { anvil, chain: DevChain { deployment, accounts } })
}

/// A provider that signs with `key` and fills gas, nonce and chain id.
///
/// The nonce is asked of the chain for every transaction: alloy's default cache keeps the
/// nonce of a transaction that was never sent (its gas estimate reverted), and every later
/// transaction then waits forever behind the gap. So one key sends one transaction at a time.
pub fn wallet_provider(rpc: &str, key: &B256) -> Result<DynProvider, ChainError> {
    crate::p2p::install_crypto_provider();
    let signer = PrivateKeySigner::from_bytes(key).map_err(|e| ChainError::Rpc(format!("bad key: {e}")))?;
    let url = rpc.parse().map_err(|e| ChainError::Rpc(format!("bad RPC address {rpc}: {e}")))?;
    Ok(ProviderBuilder::default()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url)
        .erased())
}

/// Resolves on Ctrl-C, or on SIGTERM where there are signals.
async fn stopped() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

/// Runs `ait chain ...`.
pub fn run(opt: ChainOpt) -> anyhow::Result<()> {
    let opts = match opt.cmd {
        ChainCmd::Dev(opts) => opts,
        ChainCmd::Deploy(o) => return super::cli::deploy_cmd(*o),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let running = start(&opts).await?;
        running.chain.save(&opts.out)?;
        let d = &running.chain.deployment;
        println!("chain: {} (chain id {})", d.rpc, d.chain_id);
        println!("AIT {}  escrow {}  registry {}", d.token, d.escrow, d.registry);
        println!("staking {}  treasury {}  tribunal {}", d.staking, d.treasury, d.tribunal);
        println!(
            "{} dev accounts with {} AIT each: {}",
            running.chain.accounts.len(),
            opts.ait_each,
            opts.out.display()
        );
        println!("ready");
        stopped().await?;
        eprintln!("shutting down");
        let _ = std::fs::remove_file(&opts.out);
        running.anvil.stop().await;
        anyhow::Ok(())
    })
}
