//! `ait tribunal ...`: what a node's operator does about the tribunal's cases by hand
//! (`contracts/src/Tribunal.sol`): enlist for juries (and resign and release), read a case, appeal an
//! accusation of its own node, draw an appealed case's jury, and close a case whose time ran
//! out. A case is one report against one address. Relays with a wallet do all of this on
//! their own ([`super::duty`]), and vote in their juries with `--jury`.

use alloy::primitives::{Address, B256};
use anyhow::Context;

use super::bindings::Tribunal;
use super::cli::{runtime, WalletArgs};
use super::mined as send;

/// `ait tribunal ...`.
#[derive(clap::Subcommand, Debug)]
pub enum CourtCmd {
    /// Make this wallet eligible for juries (it needs the tribunal's minimum stake, which
    /// stays locked until it resigns).
    Enlist,
    /// Stop being drawn for juries (the stake stays locked while a draw may still pick this
    /// wallet: `release` it about 257 blocks later).
    Resign,
    /// Unlock the stake of a wallet that resigned, once no draw can pick it.
    Release,
    /// Print a case: its stage, outcome, deadline, judges and jury.
    Case {
        /// The fraud report's id (hex, 32 bytes).
        report: B256,
        /// The accused's address.
        accused: Address,
    },
    /// Appeal an accusation of this wallet (within the appeal window), putting up the
    /// tribunal's appeal bond from the stake (slashed too if the jury confirms the verdict):
    /// a jury is drawn.
    Appeal {
        /// The fraud report's id.
        report: B256,
    },
    /// Draw the jury of an appealed case (once the block after the appeal exists, and within
    /// 256 blocks of it).
    Draw {
        /// The fraud report's id.
        report: B256,
        /// The accused's address.
        accused: Address,
    },
    /// Close a case whose window ran out: slash the accused if it was not appealed, dismiss
    /// it if its jury did not rule.
    Execute {
        /// The fraud report's id.
        report: B256,
        /// The accused's address.
        accused: Address,
    },
}

/// Stage and outcome names, as the contract numbers them.
const STAGES: [&str; 5] = ["none", "accused", "appealed", "jury drawn", "closed"];
const OUTCOMES: [&str; 4] = ["open", "slashed", "overturned", "dismissed"];

/// Runs `ait tribunal CMD` with the wallet and chain of `args`.
pub fn run(cmd: CourtCmd, args: &WalletArgs) -> anyhow::Result<()> {
    let (_, d, provider) = args.connect()?;
    anyhow::ensure!(!d.tribunal.is_zero(), "the chain's deployment file names no tribunal (deploy again)");
    let tribunal = Tribunal::new(d.tribunal, &provider);
    runtime()?.block_on(async {
        match cmd {
            CourtCmd::Enlist => {
                send("enlist", tribunal.enlist().send().await).await?;
                println!("enlisted for juries");
            }
            CourtCmd::Resign => {
                send("resign", tribunal.resign().send().await).await?;
                println!("resigned from juries: `ait tribunal release` unlocks the stake after 257 blocks");
            }
            CourtCmd::Release => {
                send("release", tribunal.release().send().await).await?;
                println!("released: the stake is unlocked");
            }
            CourtCmd::Case { report, accused } => {
                let c = tribunal.caseOf(report, accused).call().await.context("caseOf")?;
                let parties = tribunal.partiesOf(report, accused).call().await.context("partiesOf")?;
                let name = |names: &[&'static str], i: u8| names.get(usize::from(i)).copied().unwrap_or("?");
                println!("stage    {}", name(&STAGES, c.stage));
                println!("outcome  {}", name(&OUTCOMES, c.outcome));
                println!("accused  {accused}");
                println!("deadline {}", c.deadline);
                let list = |a: &[alloy::primitives::Address]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
                println!("judges   {}", list(&parties.judges).join(" "));
                println!("jury     {}", list(&parties.jury).join(" "));
            }
            CourtCmd::Appeal { report } => {
                send("appeal", tribunal.appeal(report).send().await).await?;
                println!("appealed: draw the jury once the next block exists (`ait tribunal draw`), within 256 blocks");
            }
            CourtCmd::Draw { report, accused } => {
                send("draw", super::send_with_gas_margin(tribunal.draw(report, accused)).await).await?;
                let jury = tribunal.partiesOf(report, accused).call().await.context("partiesOf")?.jury;
                println!("jury: {}", jury.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" "));
            }
            CourtCmd::Execute { report, accused } => {
                send("execute", tribunal.execute(report, accused).send().await).await?;
                let c = tribunal.caseOf(report, accused).call().await.context("caseOf")?;
                println!("closed: {}", OUTCOMES.get(usize::from(c.outcome)).copied().unwrap_or("?"));
            }
        }
        anyhow::Ok(())
    })
}
