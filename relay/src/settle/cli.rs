//! The settlement subcommands of `ait`: a node's (or a payer's) EVM wallet, kept encrypted
//! as a Web3 Secret Storage v3 keystore and never printed; deposits, withdrawals, stake,
//! redeeming vouchers, registering a model, and deploying the contracts to a chain.
//!
//! Every command reads where the contracts are from `--chain FILE` (what `ait chain dev` or
//! `ait chain deploy` wrote) and the keystore from `--keystore` (default: `wallet.json` in
//! the node's data directory, beside its libp2p key). The keystore's password comes from
//! `--password-file` or `$AIT_WALLET_PASSWORD`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::utils::format_units;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context};
use web_node::settle::{format_ait as ait, parse_ait, permit_vrs, token_domain, Permit, SessionKey};

use super::bindings::{Escrow, ModelRegistry, Staking, AIT};
use super::deploy::{deploy, DeployParams, Deployment, TribunalParams, AIT_UNIT};
use super::dev::{wallet_provider, DevChain};
use super::{latest_block, mined as send, ChainError};

/// How long `ait redeem` waits for its redeems to become final.
const FINAL_WAIT: Duration = Duration::from_secs(600);

/// Where the wallet and the chain are.
#[derive(clap::Args, Clone, Debug)]
pub struct WalletArgs {
    /// The chain's deployment file (`ait chain dev --out` or `ait chain deploy --out`).
    #[arg(long, default_value = "ait-chain.json", global = true)]
    pub chain: PathBuf,
    /// The node's data directory (the default keystore lives there).
    #[arg(long, default_value_os_t = crate::p2p::default_data_dir(), global = true)]
    pub data_dir: PathBuf,
    /// The encrypted keystore (default: DATA_DIR/wallet.json).
    #[arg(long, global = true)]
    pub keystore: Option<PathBuf>,
    /// A file holding the keystore's password (else $AIT_WALLET_PASSWORD).
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
}

/// The settlement subcommands (each field is the subcommand's arguments, documented there).
#[allow(missing_docs)]
#[derive(clap::Subcommand, Debug)]
pub enum SettleCmd {
    /// The node's EVM wallet: `new`, `show`, `balance`.
    Wallet {
        #[command(subcommand)]
        cmd: WalletCmd,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Deposit AIT into the escrow (one transaction, with a permit).
    Deposit {
        /// AIT to deposit (decimal).
        #[arg(allow_negative_numbers = true)]
        amount: String,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Allocate AMOUNT AIT of the deposit to NODE (what backs its vouchers).
    Allocate {
        /// The node's EVM address.
        node: Address,
        /// AIT to allocate (decimal).
        #[arg(allow_negative_numbers = true)]
        amount: String,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Withdraw from the escrow: start a thaw of AMOUNT, `--finish` once it has thawed, or
    /// `--earned AMOUNT` of earnings (at once).
    Withdraw {
        /// AIT to start thawing (decimal).
        #[arg(allow_negative_numbers = true)]
        amount: Option<String>,
        /// Withdraw what has thawed.
        #[arg(long)]
        finish: bool,
        /// Withdraw this much of what the node earned (decimal AIT).
        #[arg(long, value_name = "AMOUNT")]
        earned: Option<String>,
        /// The allocation to this node instead of the free balance.
        #[arg(long)]
        node: Option<Address>,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Stake AIT (with a permit), binding the node's libp2p peer id to this wallet.
    Stake {
        /// AIT to stake (decimal).
        #[arg(allow_negative_numbers = true)]
        amount: String,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Unstake: start unbonding AMOUNT, or `--finish` once it has unbonded.
    Unstake {
        /// AIT to start unbonding (decimal).
        #[arg(allow_negative_numbers = true)]
        amount: Option<String>,
        /// Withdraw what has unbonded.
        #[arg(long)]
        finish: bool,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Redeem vouchers (JSON lines of `{"voucher": {...}, "signature": "0x..."}`) paying this
    /// wallet, in one batch, and wait until they are final.
    Redeem {
        /// The vouchers.
        #[arg(long)]
        vouchers: PathBuf,
        /// Blocks a redeem must be under before it counts as final (default: the chain file's).
        #[arg(long)]
        confirmations: Option<u64>,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// What this wallet earned by serving: vouchers redeemed (from the escrow's `Redeemed`
    /// events), per model and per hour, what can be withdrawn, and vouchers not yet redeemed
    /// (from the node's ledger, when no relay holds it open).
    Earnings {
        /// How many recent blocks to read events from.
        #[arg(long, default_value_t = 100_000)]
        blocks: u64,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// Models on chain: `register ID --payout ADDRESS`, `earnings ID`.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
        #[command(flatten)]
        args: WalletArgs,
    },
    /// The tribunal's cases: `enlist`, `resign`, `release`, `case ID ADDR`, `appeal ID`,
    /// `draw ID ADDR`, `execute ID ADDR`.
    Tribunal {
        #[command(subcommand)]
        cmd: super::court::CourtCmd,
        #[command(flatten)]
        args: WalletArgs,
    },
}

/// `ait wallet ...`.
#[derive(clap::Subcommand, Debug)]
pub enum WalletCmd {
    /// Create the keystore with a new random key (or, with --dev-account N, the key of the
    /// dev chain's account N) and print its address.
    New {
        /// Import this dev account of the `ait chain dev` file instead of a new key.
        #[arg(long)]
        dev_account: Option<usize>,
    },
    /// Print the wallet's address.
    Show,
    /// Print the wallet's ETH and AIT, its escrow balances, earnings and stake.
    Balance,
}

/// `ait model ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ModelCmd {
    /// Register a model id with this wallet as its creator.
    Register {
        /// The model id (64 hex digits).
        id: B256,
        /// Where royalties go.
        #[arg(long)]
        payout: Address,
    },
    /// What a model earned its creator (from chain data only, no wallet needed): its
    /// registration, and the paid sessions, layer-tokens, payments and royalties of the
    /// escrow's redeems that name it.
    Earnings {
        /// The model id (64 hex digits).
        id: B256,
        /// How many recent blocks to read events from.
        #[arg(long, default_value_t = super::royalties::DEFAULT_BLOCKS)]
        blocks: u64,
    },
}

/// `ait chain deploy` options.
#[derive(clap::Args, Clone, Debug)]
pub struct DeployOpt {
    /// The chain's JSON-RPC endpoint.
    #[arg(long)]
    pub rpc: String,
    /// Where to write the deployment.
    #[arg(long, default_value = "ait-chain.json")]
    pub out: PathBuf,
    /// The DAO's address (default: this wallet).
    #[arg(long)]
    pub dao: Option<Address>,
    /// Who may slash besides the tribunal (default: nobody).
    #[arg(long)]
    pub arbiter: Option<Address>,
    /// AIT to mint to this wallet.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub supply: u64,
    /// The escrow's thaw period, seconds (longer than the audit window).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub thaw_seconds: u64,
    /// Staking's unbonding period, seconds (longer than audit and escalation).
    #[arg(long, default_value_t = 14 * 24 * 3600)]
    pub unbonding_seconds: u64,
    /// Seconds an accused node has to appeal a verdict.
    #[arg(long, default_value_t = 3 * 24 * 3600)]
    pub appeal_seconds: u64,
    /// Seconds an appeal's jury has to be drawn, and then to rule (twice this plus the appeal
    /// window must stay under the unbonding period).
    #[arg(long, default_value_t = 2 * 24 * 3600)]
    pub jury_seconds: u64,
    /// The keystore and its password.
    #[command(flatten)]
    pub args: WalletArgs,
}

impl WalletArgs {
    fn keystore(&self) -> PathBuf {
        self.keystore.clone().unwrap_or_else(|| self.data_dir.join("wallet.json"))
    }

    fn password(&self) -> anyhow::Result<String> {
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            return Ok(text.trim_end_matches(['\n', '\r']).to_string());
        }
        std::env::var("AIT_WALLET_PASSWORD")
            .context("the keystore's password: pass --password-file FILE or set AIT_WALLET_PASSWORD")
    }

    /// The wallet, decrypted.
    pub(crate) fn signer(&self) -> anyhow::Result<PrivateKeySigner> {
        let path = self.keystore();
        if !path.is_file() {
            bail!("no wallet at {} (create one with `ait wallet new`)", path.display());
        }
        PrivateKeySigner::decrypt_keystore(&path, self.password()?)
            .with_context(|| format!("opening {} (wrong password?)", path.display()))
    }

    pub(crate) fn deployment(&self) -> anyhow::Result<Deployment> {
        Ok(Deployment::load(&self.chain)?)
    }

    /// The wallet, the chain, and a provider that signs with the wallet.
    pub(crate) fn connect(&self) -> anyhow::Result<(PrivateKeySigner, Deployment, DynProvider)> {
        let signer = self.signer()?;
        let d = self.deployment()?;
        let provider = wallet_provider(&d.rpc, &signer.to_bytes())?;
        Ok((signer, d, provider))
    }
}

/// An EIP-2612 permit of `value` AIT from the wallet to `spender`, valid for an hour.
async fn permit(
    signer: &PrivateKeySigner,
    d: &Deployment,
    provider: &DynProvider,
    spender: Address,
    value: U256,
) -> anyhow::Result<(U256, u8, B256, B256)> {
    let owner = signer.address();
    let nonce =
        AIT::new(d.token, provider).nonces(owner).call().await.map_err(|e| ChainError::contract("nonces", &e))?;
    let (_, now) = latest_block(provider).await?;
    let deadline = U256::from(now + 3600);
    let key = SessionKey::from_bytes(signer.to_bytes().as_slice())?;
    let sig = key.sign(&Permit { owner, spender, value, nonce, deadline }, &token_domain(d.chain_id, d.token))?;
    let (v, r, s) = permit_vrs(&sig);
    Ok((deadline, v, r, s))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// `ait chain deploy`: deploys the contracts from the wallet and writes the deployment file.
pub fn deploy_cmd(o: DeployOpt) -> anyhow::Result<()> {
    let signer = o.args.signer()?;
    let provider = wallet_provider(&o.rpc, &signer.to_bytes())?;
    let me = signer.address();
    let params = DeployParams {
        supply: U256::from(o.supply) * U256::from(AIT_UNIT),
        dao: o.dao.unwrap_or(me),
        arbiter: o.arbiter.unwrap_or(Address::ZERO),
        thaw_seconds: o.thaw_seconds,
        unbonding_seconds: o.unbonding_seconds,
        tribunal: TribunalParams::standard(o.appeal_seconds, o.jury_seconds),
    };
    let d = runtime()?.block_on(deploy(&provider, &o.rpc, me, &params))?;
    d.save(&o.out)?;
    println!("deployed on chain {}: AIT {} escrow {} registry {}", d.chain_id, d.token, d.escrow, d.registry);
    println!("staking {} treasury {} tribunal {}; written to {}", d.staking, d.treasury, d.tribunal, o.out.display());
    if params.dao != me {
        println!("the DAO must grant the tribunal staking's ARBITER_ROLE before anyone can be slashed");
    }
    Ok(())
}

/// Runs a settlement subcommand.
pub fn run(cmd: SettleCmd) -> anyhow::Result<()> {
    match cmd {
        SettleCmd::Wallet { cmd, args } => wallet(cmd, &args),
        SettleCmd::Deposit { amount, args } => {
            let value = parse_ait(&amount)?;
            let (signer, d, provider) = args.connect()?;
            runtime()?.block_on(async {
                let (deadline, v, r, s) = permit(&signer, &d, &provider, d.escrow, value).await?;
                let escrow = Escrow::new(d.escrow, &provider);
                send(
                    "depositWithPermit",
                    escrow.depositWithPermit(signer.address(), value, deadline, v, r, s).send().await,
                )
                .await?;
                println!("deposited {} AIT", ait(value));
                anyhow::Ok(())
            })
        }
        SettleCmd::Allocate { node, amount, args } => {
            let value = parse_ait(&amount)?;
            let (_, d, provider) = args.connect()?;
            runtime()?.block_on(async {
                send("allocate", Escrow::new(d.escrow, &provider).allocate(node, value).send().await).await?;
                println!("allocated {} AIT to {node}", ait(value));
                anyhow::Ok(())
            })
        }
        SettleCmd::Withdraw { amount, finish, earned, node, args } => {
            let (_, d, provider) = args.connect()?;
            let account = node.unwrap_or(Address::ZERO);
            runtime()?.block_on(async {
                let escrow = Escrow::new(d.escrow, &provider);
                match (amount, finish, earned) {
                    (Some(a), false, None) => {
                        let value = parse_ait(&a)?;
                        send("thaw", escrow.thaw(account, value).send().await).await?;
                        println!("thawing {} AIT: withdraw it with --finish after {} s", ait(value), d.thaw_seconds);
                    }
                    (None, true, None) => {
                        send("withdraw", escrow.withdraw(account).send().await).await?;
                        println!("withdrawn");
                    }
                    (None, false, Some(e)) => {
                        let value = parse_ait(&e)?;
                        send("withdrawEarned", escrow.withdrawEarned(value).send().await).await?;
                        println!("withdrew {} AIT of earnings", ait(value));
                    }
                    _ => bail!("give one of: AMOUNT (start a thaw), --finish, --earned AMOUNT"),
                }
                Ok(())
            })
        }
        SettleCmd::Stake { amount, args } => {
            let value = parse_ait(&amount)?;
            let (signer, d, provider) = args.connect()?;
            if !args.data_dir.join(crate::p2p::KEY_FILE).is_file() {
                bail!(
                    "no node identity in {}: stake from the data directory of the relay you run (--data-dir)",
                    args.data_dir.display()
                );
            }
            let peer = crate::p2p::load_or_create_key(&args.data_dir)?.public().to_peer_id();
            runtime()?.block_on(async {
                let staking = Staking::new(d.staking, &provider);
                send("bind", staking.bind(Bytes::from(peer.to_bytes())).send().await).await?;
                let (deadline, v, r, s) = permit(&signer, &d, &provider, d.staking, value).await?;
                send(
                    "stakeWithPermit",
                    staking.stakeWithPermit(signer.address(), value, deadline, v, r, s).send().await,
                )
                .await?;
                println!("staked {} AIT; bound {} to peer {peer}", ait(value), signer.address());
                anyhow::Ok(())
            })
        }
        SettleCmd::Unstake { amount, finish, args } => {
            let (_, d, provider) = args.connect()?;
            runtime()?.block_on(async {
                let staking = Staking::new(d.staking, &provider);
                match (amount, finish) {
                    (Some(a), false) => {
                        let value = parse_ait(&a)?;
                        send("unbond", staking.unbond(value).send().await).await?;
                        println!(
                            "unbonding {} AIT: withdraw it with --finish after {} s",
                            ait(value),
                            d.unbonding_seconds
                        );
                    }
                    (None, true) => {
                        send("withdraw", staking.withdraw().send().await).await?;
                        println!("unstaked");
                    }
                    _ => bail!("give one of: AMOUNT (start unbonding), --finish"),
                }
                Ok(())
            })
        }
        SettleCmd::Redeem { vouchers, confirmations, args } => redeem(&vouchers, confirmations, &args),
        SettleCmd::Earnings { blocks, args } => earnings(blocks, &args),
        SettleCmd::Tribunal { cmd, args } => super::court::run(cmd, &args),
        SettleCmd::Model { cmd: ModelCmd::Register { id, payout }, args } => {
            let (_, d, provider) = args.connect()?;
            runtime()?.block_on(async {
                let registry = ModelRegistry::new(d.registry, &provider);
                send("register", registry.register(id, payout).send().await).await?;
                println!("registered model {id}: royalties to {payout}");
                anyhow::Ok(())
            })
        }
        SettleCmd::Model { cmd: ModelCmd::Earnings { id, blocks }, args } => {
            let d = args.deployment()?;
            let provider = super::royalties::reader(&d.rpc)?;
            let e = runtime()?.block_on(super::royalties::model_earnings(&provider, &d, id, blocks))?;
            println!("model      {id}");
            match e.creator.is_zero() {
                true => println!("creator    (not registered: its royalties go to the DAO)"),
                false => println!("creator    {} (royalties {} bps to {})", e.creator, e.royalty_bps, e.payout),
            }
            println!("blocks     {}..={}", e.from_block, e.to_block);
            println!("sessions   {} paid (one per server of a route)", e.totals.sessions);
            println!("work       {} layer-tokens", e.totals.work);
            println!("paid       {} AIT", ait(e.totals.paid));
            println!("royalties  {} AIT", ait(e.totals.royalties));
            Ok(())
        }
    }
}

fn wallet(cmd: WalletCmd, args: &WalletArgs) -> anyhow::Result<()> {
    match cmd {
        WalletCmd::New { dev_account } => {
            let path = args.keystore();
            if path.exists() {
                bail!("{} exists: a wallet is never overwritten", path.display());
            }
            let secret = match dev_account {
                Some(i) => {
                    let chain = DevChain::load(&args.chain)?;
                    chain.accounts.get(i).with_context(|| format!("the dev chain has no account {i}"))?.key
                }
                None => B256::from(SessionKey::random().to_bytes()),
            };
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let name = path.file_name().and_then(|n| n.to_str()).context("keystore file name")?;
            let (signer, _) = PrivateKeySigner::encrypt_keystore(
                dir,
                &mut rand_08::thread_rng(),
                secret.as_slice(),
                args.password()?,
                Some(name),
            )?;
            println!("{}", signer.address());
            Ok(())
        }
        WalletCmd::Show => {
            println!("{}", args.signer()?.address());
            Ok(())
        }
        WalletCmd::Balance => {
            let (signer, d, provider) = args.connect()?;
            let me = signer.address();
            runtime()?.block_on(async {
                let err = |call: &'static str| move |e: alloy::contract::Error| ChainError::contract(call, &e);
                let eth = provider.get_balance(me).await.map_err(|e| ChainError::Rpc(e.to_string()))?;
                let token = AIT::new(d.token, &provider).balanceOf(me).call().await.map_err(err("balanceOf"))?;
                let escrow = Escrow::new(d.escrow, &provider);
                let free = escrow.freeBalance(me).call().await.map_err(err("freeBalance"))?;
                let earned = escrow.earned(me).call().await.map_err(err("earned"))?;
                let stake = Staking::new(d.staking, &provider).stakeOf(me).call().await.map_err(err("stakeOf"))?;
                println!("address   {me}");
                println!("eth       {}", format_units(eth, 18).unwrap_or_default());
                println!("ait       {}", ait(token));
                println!("deposited {} (thawing {})", ait(free.balance), ait(free.thawing));
                println!("earned    {}", ait(earned));
                println!("staked    {} (unbonding {})", ait(stake.staked), ait(stake.unbonding));
                anyhow::Ok(())
            })
        }
    }
}

fn earnings(blocks: u64, args: &WalletArgs) -> anyhow::Result<()> {
    let (signer, d, provider) = args.connect()?;
    let me = signer.address();
    runtime()?.block_on(async {
        let escrow = Escrow::new(d.escrow, &provider);
        let (latest, now) = latest_block(&provider).await?;
        let events =
            super::redeemed_events(&provider, d.escrow, Some(me), latest.saturating_sub(blocks), latest).await?;
        let (mut total, mut day) = (U256::ZERO, U256::ZERO);
        let mut by_model: std::collections::BTreeMap<B256, (usize, U256)> = Default::default();
        let mut times: std::collections::HashMap<u64, u64> = Default::default();
        for web_node::settle::RedeemedLog { event: e, block } in &events {
            total += e.nodeShare;
            let m = by_model.entry(e.model).or_default();
            m.0 += 1;
            m.1 += e.nodeShare;
            let block = *block;
            let at = match times.get(&block).copied() {
                Some(t) => t,
                None => {
                    let b = provider
                        .get_block_by_number(block.into())
                        .await
                        .map_err(|e| ChainError::Rpc(e.to_string()))?
                        .map_or(now, |b| b.header.timestamp);
                    times.insert(block, b);
                    b
                }
            };
            if now.saturating_sub(at) < 24 * 3600 {
                day += e.nodeShare;
            }
        }
        let earned = escrow.earned(me).call().await.map_err(|e| ChainError::contract("earned", &e))?;
        println!("node      {me}");
        println!("redeemed  {} AIT (node share) in {} redeems over the last {blocks} blocks", ait(total), events.len());
        println!("per hour  {} AIT (last 24 h)", ait(day / U256::from(24u8)));
        for (model, (n, amount)) in &by_model {
            println!("model     {model}: {} AIT in {n} redeems", ait(*amount));
        }
        println!("earned    {} AIT, withdrawable (`ait withdraw --earned`)", ait(earned));
        let path = args.data_dir.join("ledger.redb");
        if path.is_file() {
            match super::Ledger::open(&path) {
                Ok(ledger) => {
                    let entries = ledger.entries()?;
                    let owed = entries.iter().fold(U256::ZERO, |a, e| a + e.outstanding());
                    let n = entries.iter().filter(|e| !e.outstanding().is_zero()).count();
                    println!("pending   {} AIT in {n} vouchers not yet redeemed", ait(owed));
                }
                Err(_) => println!("pending   (the relay holds the ledger open: see its /metrics)"),
            }
        }
        anyhow::Ok(())
    })
}

fn redeem(file: &Path, confirmations: Option<u64>, args: &WalletArgs) -> anyhow::Result<()> {
    let (signer, d, provider) = args.connect()?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut vouchers = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: web_node::settle::SignedVoucher = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a signed voucher", file.display(), i + 1))?;
        vouchers.push(v);
    }
    runtime()?.block_on(async {
        let depth = confirmations.unwrap_or(d.confirmations);
        // The vouchers are in the file: a ledger in memory holds them while they are redeemed.
        let ledger = std::sync::Arc::new(super::Ledger::in_memory()?);
        let mut r = super::redeemer(&d, provider, signer.address(), ledger).with_confirmations(depth);
        let (mut refused, mut owed) = (0, U256::ZERO);
        for v in vouchers {
            let (session, payer) = (v.voucher.session, v.voucher.payer);
            match r.accept(v.voucher, &v.signature).await {
                Ok(added) => owed += added,
                Err(e) => {
                    eprintln!("refused the voucher of {payer} for session {session}: {e}");
                    refused += 1;
                }
            }
        }
        println!("{} vouchers to redeem ({} AIT not yet collected), {refused} refused", r.held(), ait(owed));
        let started = std::time::Instant::now();
        while r.held() > 0 {
            if started.elapsed() > FINAL_WAIT {
                bail!(
                    "{} vouchers not final after {FINAL_WAIT:?} ({depth} blocks deep); run `ait redeem` again",
                    r.held()
                );
            }
            let report = r.redeem_due().await?;
            if report.expired > 0 {
                eprintln!("{} vouchers expired before they were redeemed", report.expired);
            }
            if !report.refused.is_empty() {
                bail!("the chain refused {} vouchers: {}", report.refused.len(), report.refused.join("; "));
            }
            if r.held() > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        println!("redeemed {} AIT, final", ait(owed));
        Ok(())
    })
}
