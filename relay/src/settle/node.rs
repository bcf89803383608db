//! A relay's settlement: with `--price` it charges for the blocks it serves (its
//! [`ChainGate`], its [`Ledger`] under the data directory, and a redeem loop), with `--pay` it
//! pays servers that charge for its own requests (the HTTP API) from its wallet's escrow.
//! Without `--chain` none of this runs and the relay serves and uses the swarm free.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::DynProvider;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context};
use web_node::net::chain::staked::StakedOnly;
use web_node::net::chain::{ChainOptions, RouteWatch};
use web_node::settle::{format_ait, parse_ait, unix_s, ChainReads, GateHost, Payer, SessionKey};

use super::bindings::{Escrow, Staking};
use super::cli::WalletArgs;
use super::dev::wallet_provider;
use super::tribunal::{Accuser, Judge};
use super::{redeemer, ChainGate, Deployment, Ledger, ProviderHost, Redeemer};
use web_node::settle::GateChain;

pub use web_node::settle::pay::DEFAULT_CREDIT_TOKENS;

/// Tokens a day a charging relay serves free to each client by default (`--free-tokens`):
/// a few short chats.
pub const DEFAULT_FREE_TOKENS: u64 = 4096;

/// `ait relay`'s settlement flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SettleOpt {
    /// Charge for the blocks served: AIT (decimal) per layer-token (one token through one
    /// layer). Needs --chain and the wallet (--keystore); vouchers are kept in
    /// DATA_DIR/ledger.redb and redeemed in batches.
    #[arg(long, value_name = "AIT")]
    pub price: Option<String>,
    /// Most AIT a session may owe unpaid; past it the session gets `payment required`.
    /// Default: the price of 256 tokens through the blocks served.
    #[arg(long, value_name = "AIT")]
    pub credit_cap: Option<String>,
    /// With --price: tokens a day served free to each client that does not pay (its free
    /// tier), in the lottery fifth of the session slots only; 0: none.
    #[arg(long, value_name = "TOKENS", default_value_t = DEFAULT_FREE_TOKENS)]
    pub free_tokens: u64,
    /// Paying for this relay's own requests (the HTTP API).
    #[command(flatten)]
    pub paying: PayFlags,
    /// Seconds between redeem rounds.
    #[arg(long, default_value_t = 60)]
    pub redeem_every: u64,
    /// Redeem once the vouchers not yet collected pay this much (AIT, decimal; set it from
    /// the gas break-even `cargo bench --bench settlement` prints), or when one nears expiry.
    #[arg(long, value_name = "AIT")]
    pub redeem_min: Option<String>,
    /// Sign, with the wallet, the verdict of each fraud report this relay's recomputation
    /// confirms, for the chain's tribunal (when the sender asks about the EVM address the
    /// chain binds to the accused). Needs --chain; a verdict counts on chain only while the
    /// wallet has the tribunal's minimum stake.
    #[arg(long)]
    pub judge: bool,
    /// Enlist the wallet for the tribunal's juries (its stake stays locked while enlisted:
    /// `ait tribunal resign` ends it) and sit on those it is drawn for: recompute the case's
    /// report and vote. Needs --chain and the tribunal's minimum stake.
    #[arg(long)]
    pub jury: bool,
    /// The wallet's keystore (default: DATA_DIR/wallet.json).
    #[arg(long)]
    pub keystore: Option<PathBuf>,
    /// A file holding the keystore's password (else $AIT_WALLET_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl SettleOpt {
    /// Whether any settlement flag asks for the wallet.
    pub fn wants_wallet(&self) -> bool {
        self.price.is_some() || self.paying.pay || self.judge || self.jury
    }
}

/// How a client pays servers that charge: `ait relay`'s API, `ait generate --swarm` and
/// `ait chat --swarm`.
#[derive(clap::Args, Clone, Debug)]
pub struct PayFlags {
    /// Pay servers that charge, from the wallet's escrow (it needs --chain). Without it only
    /// free servers are used.
    #[arg(long)]
    pub pay: bool,
    /// With --pay: the most paid per layer-token (AIT, decimal); dearer servers are not used.
    #[arg(long, value_name = "AIT")]
    pub max_price: Option<String>,
    /// With --pay: whether a route is chosen for speed or for price.
    #[arg(long, value_enum, default_value_t = Prefer::Fastest)]
    pub prefer: Prefer,
    /// With --pay: route only through servers the tribunal can slash (the address a server
    /// is paid at binds its peer id and holds the tribunal's slash bonded); others are not
    /// used for routes (audits still replay on any server of the span).
    #[arg(long)]
    pub staked_only: bool,
}

impl PayFlags {
    /// With `--pay --staked-only`: the check that keeps servers the tribunal cannot slash out
    /// of routes, reading `d`'s chain through `provider`.
    async fn staked(&self, d: &Deployment, provider: &DynProvider) -> anyhow::Result<Option<Arc<StakedOnly>>> {
        if !(self.pay && self.staked_only) {
            return Ok(None);
        }
        anyhow::ensure!(!d.tribunal.is_zero(), "--staked-only: the chain's deployment file names no tribunal");
        let slash = super::bindings::Tribunal::new(d.tribunal, provider)
            .slashAmount()
            .call()
            .await
            .context("--staked-only: reading the tribunal's slash")?;
        let host: Arc<dyn GateHost> = Arc::new(ProviderHost::new(provider.clone()));
        Ok(Some(Arc::new(StakedOnly::new(ChainReads::new(host, d.escrow, d.staking), slash))))
    }

    /// The payer these flags ask for, paying from `wallet`'s escrow on `deployment` (`None`
    /// without `--pay`).
    fn payer(&self, deployment: &Deployment, wallet: &PrivateKeySigner) -> anyhow::Result<Option<Arc<Payer>>> {
        if !self.pay {
            return Ok(None);
        }
        let max_price = self.max_price.as_deref().map(parse_ait).transpose().context("--max-price")?;
        Ok(Some(Arc::new(Payer {
            payer: wallet.address(),
            key: SessionKey::from_bytes(wallet.to_bytes().as_slice())?,
            authorization: None,
            chain_id: deployment.chain_id,
            escrow: deployment.escrow,
            max_price,
        })))
    }
}

/// `ait generate --swarm`'s and `ait chat --swarm`'s payment flags: how to pay, and with
/// `--pay` the chain and the wallet.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientPayOpt {
    /// How to pay.
    #[command(flatten)]
    pub flags: PayFlags,
    /// With --pay: the chain and the wallet that pays.
    #[command(flatten)]
    pub wallet: WalletArgs,
}

impl ClientPayOpt {
    /// The chain options of a client that pays as these flags say (the defaults without
    /// `--pay`), and what accuses on chain the nodes its audits find faulty: with `--pay` it
    /// opens the wallet (once), which pays from what it deposited into the escrow and sends
    /// the accusations (none when the chain has no tribunal).
    pub async fn open(&self) -> anyhow::Result<(ChainOptions, Option<Accuser>)> {
        if !self.flags.pay {
            return Ok((ChainOptions::default(), None));
        }
        let deployment = Deployment::load(&self.wallet.chain)
            .with_context(|| format!("--pay needs the chain's deployment file ({})", self.wallet.chain.display()))?;
        let wallet = self.wallet.signer()?;
        let provider = wallet_provider(&deployment.rpc, &wallet.to_bytes())?;
        let payer = self.flags.payer(&deployment, &wallet)?;
        if payer.is_some() {
            check_voucher_type(&provider, deployment.escrow).await?;
        }
        let opts = ChainOptions {
            payer,
            staked: self.flags.staked(&deployment, &provider).await?,
            ms_per_ait: self.flags.prefer.ms_per_ait(),
            on_route: Some(print_route_price()),
            ..ChainOptions::default()
        };
        let accuser =
            Accuser::new(&deployment, provider).inspect_err(|e| tracing::warn!("no accusations on chain: {e}")).ok();
        Ok((opts, accuser))
    }
}

/// Says on stderr what a token through each route costs, before the route's first step (the
/// [`ChainOptions::on_route`] of the command-line clients that pay).
fn print_route_price() -> RouteWatch {
    RouteWatch(Arc::new(|hops, price| {
        if !price.is_zero() {
            eprintln!("route: {} servers, {} AIT per token", hops.len(), format_ait(price));
        }
    }))
}

/// How a paying client chooses among servers that charge.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// The fastest route, whatever it costs (within --max-price).
    Fastest,
    /// The cheapest route; speed breaks ties.
    Cheapest,
}

impl Prefer {
    /// What one AIT of price per token is worth in ms of step time when routing.
    pub fn ms_per_ait(self) -> f64 {
        match self {
            Prefer::Fastest => 0.0,
            Prefer::Cheapest => web_node::net::chain::ChainOptions::CHEAPEST,
        }
    }
}

/// What a relay's settlement gives the rest of the relay.
pub struct Settlement {
    /// The chain.
    pub deployment: Deployment,
    /// The wallet's address.
    pub address: Address,
    provider: DynProvider,
    wallet: PrivateKeySigner,
}

impl Settlement {
    /// Opens the wallet for `chain` when the flags ask for it (`None` when they do not).
    pub fn open(o: &SettleOpt, chain: Option<&Deployment>, data_dir: &Path) -> anyhow::Result<Option<Settlement>> {
        if !o.wants_wallet() {
            return Ok(None);
        }
        let Some(d) = chain else { bail!("--price, --pay, --judge and --jury need the chain: pass --chain FILE") };
        let args = WalletArgs {
            chain: PathBuf::new(),
            data_dir: data_dir.to_path_buf(),
            keystore: o.keystore.clone(),
            password_file: o.password_file.clone(),
        };
        let signer: PrivateKeySigner = args.signer()?;
        let provider = wallet_provider(&d.rpc, &signer.to_bytes())?;
        Ok(Some(Settlement { deployment: d.clone(), address: signer.address(), provider, wallet: signer }))
    }

    /// With `--judge`, what signs this relay's verdicts.
    pub fn judge(&self, o: &SettleOpt) -> anyhow::Result<Option<Judge>> {
        if !o.judge {
            return Ok(None);
        }
        Ok(Some(Judge::new(&self.deployment, &self.wallet, self.provider.clone()).context("--judge")?))
    }

    /// This wallet's standing duties to the tribunal, judging with `evidence` and keeping its
    /// cases in `store` (`None`, with a warning, when the chain has no tribunal); with
    /// `--jury`, enlisted first. Warns when the chain does not bind this wallet to `peer`:
    /// jurors would not find this relay's evidence.
    pub async fn duty<E: super::duty::Evidence>(
        &self,
        o: &SettleOpt,
        evidence: E,
        peer: libp2p::PeerId,
        store: std::sync::Arc<crate::evidence::EvidenceStore>,
    ) -> anyhow::Result<Option<super::duty::Duty<E>>> {
        match Staking::new(self.deployment.staking, &self.provider).peerIdOf(self.address).call().await {
            Ok(bound) if bound.as_ref() == peer.to_bytes().as_slice() => {}
            Ok(_) => tracing::warn!(
                "the chain does not bind this wallet to this relay's peer id (`ait stake` does): \
                 jurors will not find the reports this relay keeps"
            ),
            Err(e) => tracing::warn!("reading this wallet's peer id: {e}"),
        }
        let duty = match super::duty::Duty::new(&self.deployment, self.provider.clone(), self.address, evidence).await {
            Ok(duty) => duty.keeping_cases_in(store).context("the tribunal cases kept")?,
            Err(e) => {
                tracing::warn!("no tribunal duties: {e}");
                return Ok(None);
            }
        };
        if o.jury {
            duty.enlist().await.context("--jury: enlisting")?;
            tracing::info!("enlisted for the tribunal's juries");
        }
        Ok(Some(duty))
    }

    /// What accuses on chain the nodes this relay's audits find faulty, from its wallet
    /// (`None`, with a warning, when the chain has no tribunal).
    pub fn accuser(&self) -> Option<Accuser> {
        Accuser::new(&self.deployment, self.provider.clone())
            .inspect_err(|e| tracing::warn!("faulty nodes will not be accused on chain: {e}"))
            .ok()
    }

    /// The chain options of this relay's own requests: with `--pay`, paying from its wallet.
    pub async fn chain_options(&self, o: &SettleOpt) -> anyhow::Result<ChainOptions> {
        let payer = o.paying.payer(&self.deployment, &self.wallet)?;
        if payer.is_some() {
            check_voucher_type(&self.provider, self.deployment.escrow).await?;
        }
        Ok(ChainOptions {
            payer,
            staked: o.paying.staked(&self.deployment, &self.provider).await?,
            ms_per_ait: o.paying.prefer.ms_per_ait(),
            ..ChainOptions::default()
        })
    }

    /// With `--price`: the gate that charges for `layers` layers served, its ledger in
    /// `data_dir`, and the redeem loop (spawned). Warns when the chain does not bind this
    /// wallet to `peer` (`ait stake` does).
    pub async fn charge(
        &self,
        o: &SettleOpt,
        data_dir: &Path,
        layers: u64,
        peer: libp2p::PeerId,
    ) -> anyhow::Result<Option<Arc<ChainGate>>> {
        let Some(price) = &o.price else { return Ok(None) };
        let price = parse_ait(price).context("--price")?;
        let cap = match &o.credit_cap {
            Some(c) => parse_ait(c).context("--credit-cap")?,
            None => price * U256::from(layers) * U256::from(DEFAULT_CREDIT_TOKENS),
        };
        let ledger = Arc::new(Ledger::open(&data_dir.join("ledger.redb")).context("opening the voucher ledger")?);
        if let Err(e @ web_node::settle::LedgerError::Entry(_)) = ledger.entries() {
            bail!(
                "{e}: {} holds vouchers of another version of ait (before vouchers named their receipts?); \
                 redeem them with that version, or move the file aside",
                data_dir.join("ledger.redb").display()
            );
        }
        let d = &self.deployment;
        let chain = GateChain { chain_id: d.chain_id, escrow: d.escrow, staking: d.staking };
        let host = Arc::new(ProviderHost::new(self.provider.clone()));
        let gate = ChainGate::new(chain, host, self.address, price, cap, ledger.clone()).with_free_tier(o.free_tokens);
        web_node::settle::PaymentGate::terms(&gate).check(layers).context("--credit-cap")?;
        check_voucher_type(&self.provider, d.escrow).await?;
        match Staking::new(d.staking, &self.provider).peerIdOf(self.address).call().await {
            Ok(bound) if bound.as_ref() == peer.to_bytes().as_slice() => {}
            Ok(_) => tracing::warn!(
                address = %self.address,
                "the chain does not bind this wallet to this node's peer id: run `ait stake` from this data directory"
            ),
            Err(e) => tracing::warn!("reading the binding of this wallet: {e}"),
        }
        let redeemer = redeemer(d, self.provider.clone(), self.address, ledger).with_backing(gate.backing());
        let min = o.redeem_min.as_deref().map(parse_ait).transpose().context("--redeem-min")?.unwrap_or_default();
        tokio::spawn(redeem_loop(redeemer, Duration::from_secs(o.redeem_every.max(1)), min, gate.wake()));
        println!(
            "charging: {} AIT per layer-token to {}, credit cap {} AIT per session, free tier {} tokens a day",
            format_ait(price),
            self.address,
            format_ait(cap),
            o.free_tokens
        );
        Ok(Some(Arc::new(gate)))
    }
}

/// Refuses an escrow that hashes vouchers as another version of `ait` did (deployed before
/// vouchers named their receipts, say): their signatures would recover someone else on chain,
/// so a node would serve work it can never redeem, and a payer would pay nobody. A chain that
/// does not answer only warns.
async fn check_voucher_type(provider: &DynProvider, escrow: Address) -> anyhow::Result<()> {
    use alloy::sol_types::SolStruct;
    let want = alloy::primitives::keccak256(web_node::settle::Voucher::eip712_encode_type().as_bytes());
    match Escrow::new(escrow, provider).VOUCHER_TYPEHASH().call().await {
        Ok(have) if have == want => Ok(()),
        Ok(have) => bail!(
            "the escrow at {escrow} takes vouchers of another type ({have}; this ait signs {want}): \
             it was deployed by another version of ait; deploy the contracts again"
        ),
        Err(e) => {
            tracing::warn!("reading the escrow's voucher type: {e}");
            Ok(())
        }
    }
}

/// Every `every` (or when `wake` says an authorization or allocation waits), redeems the
/// ledger's vouchers when what they add passes `min` or one of them expires within two hours,
/// and submits what waits; a failed round is retried at the next.
async fn redeem_loop(mut r: Redeemer, every: Duration, min: U256, wake: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        // The ledger may have grown since the last round: `due` reads it first.
        match r.due(min, unix_s() + 2 * 3600) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!("reading the voucher ledger: {e}");
                continue;
            }
        }
        metrics::counter!("ait_redeem_rounds_total").increment(1);
        match r.redeem_due().await {
            Ok(report) if report.sent > 0 || report.finalized > 0 || !report.refused.is_empty() => {
                metrics::counter!("ait_vouchers_redeemed_total").increment(report.sent as u64);
                metrics::counter!("ait_vouchers_final_total").increment(report.finalized as u64);
                metrics::counter!("ait_redeem_refusals_total").increment(report.refused.len() as u64);
                metrics::counter!("ait_vouchers_expired_total").increment(report.expired as u64);
                tracing::info!(
                    sent = report.sent,
                    finalized = report.finalized,
                    refused = report.refused.len(),
                    expired = report.expired,
                    "redeem round"
                );
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("ait_redeem_failures_total").increment(1);
                tracing::warn!("redeem round failed (retried next round): {e}");
            }
        }
    }
}
