//! A node's part in slashing (`contracts/src/Tribunal.sol`): as a judge, it signs the verdict
//! of a fraud report its own recomputation confirmed, about the EVM address the chain binds
//! to the accused's peer id ([`Judge`]); as an accuser, it submits two or three judges'
//! signatures to the tribunal ([`Accuser`]). See docs/ARCHITECTURE.md, "Slashing".

use alloy::primitives::{Address, Bytes};
use alloy::providers::DynProvider;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use web_node::settle::SessionKey;
use web_node::trust::tribunal::{tribunal_domain, SignedVerdict, Verdict};
use web_node::trust::FraudReport;

use super::bindings::{Staking, Tribunal};
use super::{mined, ChainError, Deployment};

/// Most judges an accusation names (`Tribunal.MAX_JUDGES`).
pub const MAX_JUDGES: usize = 3;
/// Fewest judges an accusation needs (`Tribunal.QUORUM`).
pub const QUORUM: usize = 2;

/// The tribunal's domain on `d`'s chain; an error when `d` names no tribunal (a deployment
/// file written before it existed).
fn domain(d: &Deployment) -> Result<Eip712Domain, ChainError> {
    if d.tribunal == Address::ZERO {
        return Err(ChainError::Rpc("the chain's deployment file names no tribunal (deploy again)".into()));
    }
    Ok(tribunal_domain(d.chain_id, d.tribunal))
}

/// What signs verdicts for a node: its wallet's key, and the chain's `Staking` to check that
/// the address asked about is the accused's.
pub struct Judge {
    key: SessionKey,
    domain: Eip712Domain,
    staking: Staking::StakingInstance<DynProvider>,
}

impl Judge {
    /// A judge signing with `wallet` for the tribunal of `d`, reading through `provider`.
    pub fn new(d: &Deployment, wallet: &PrivateKeySigner, provider: DynProvider) -> Result<Judge, ChainError> {
        let key = SessionKey::from_bytes(wallet.to_bytes().as_slice()).map_err(|e| ChainError::Rpc(e.to_string()))?;
        Ok(Judge { key, domain: domain(d)?, staking: Staking::new(d.staking, provider) })
    }

    /// Signs the faulty verdict on `report` about `accused`, once the chain shows that
    /// `accused` bound the report's accused peer id (the tribunal checks the same).
    pub async fn sign(&self, report: &FraudReport, accused: Address) -> Result<SignedVerdict, String> {
        let peer = report.accused.node;
        let bound =
            self.staking.peerIdOf(accused).call().await.map_err(|e| format!("reading {accused}'s peer id: {e}"))?;
        if bound.as_ref() != peer.to_bytes().as_slice() {
            return Err(format!("{accused} is not bound to {peer}"));
        }
        Verdict::new(report.id(), accused, &peer, true).signed_by(&self.key, &self.domain).map_err(|e| e.to_string())
    }
}

/// What submits accusations for a node: its wallet's provider and the chain's tribunal.
pub struct Accuser {
    domain: Eip712Domain,
    tribunal: Tribunal::TribunalInstance<DynProvider>,
}

/// Why an accusation was not made.
#[derive(Debug, thiserror::Error)]
pub enum AccuseError {
    /// Fewer than [`QUORUM`] distinct judges signed this verdict.
    #[error("{0} judge(s) signed; the tribunal needs {QUORUM}")]
    Quorum(usize),
    /// The chain refused it, or it could not be sent.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl Accuser {
    /// An accuser sending from `provider`'s wallet to the tribunal of `d`.
    pub fn new(d: &Deployment, provider: DynProvider) -> Result<Accuser, ChainError> {
        Ok(Accuser { domain: domain(d)?, tribunal: Tribunal::new(d.tribunal, provider) })
    }

    /// Opens the tribunal's case of `report` against `accused` with the judges' `signed`
    /// verdicts: those that do not sign this verdict, and repeated judges, are left out; the
    /// first [`MAX_JUDGES`] of the rest go, at least [`QUORUM`]. Returns the judges named.
    pub async fn accuse(
        &self,
        report: &FraudReport,
        accused: Address,
        signed: &[SignedVerdict],
    ) -> Result<Vec<Address>, AccuseError> {
        let verdict = Verdict::new(report.id(), accused, &report.accused.node, true);
        let mut judges: Vec<&SignedVerdict> = Vec::new();
        for s in signed.iter().filter(|s| s.signs(&verdict, &self.domain)) {
            if judges.len() < MAX_JUDGES && judges.iter().all(|j| j.judge != s.judge) {
                judges.push(s);
            }
        }
        if judges.len() < QUORUM {
            return Err(AccuseError::Quorum(judges.len()));
        }
        let (addrs, sigs): (Vec<Address>, Vec<Bytes>) = judges.iter().map(|s| (s.judge, s.signature.clone())).unzip();
        let call = self.tribunal.accuse(verdict.report, accused, verdict.accusedPeer.clone(), addrs.clone(), sigs);
        mined("Tribunal.accuse", call.send().await).await?;
        Ok(addrs)
    }
}
