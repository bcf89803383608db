//! The relay's part in fraud reports: it takes reports from its peers (`/ait/fraud/2`),
//! recomputes each on a server of the report's layers that the report does not involve (its
//! own, when it holds them), convicts in the reputation book its API gateway routes by, and
//! passes on the reports its recomputation confirmed. With `--judge` it also signs the
//! verdict of a report it confirmed for the chain's tribunal, when the sender asks about an
//! address the chain binds to the accused, and keeps the report as evidence
//! ([`EvidenceStore`]). It is also what a node's tribunal duties judge by
//! ([`duty::Evidence`](crate::settle::duty::Evidence)): reports fetched by id from a case's
//! parties, recomputed without touching the book. Clients and gateways send the reports
//! their own audits leave ([`publish`]) and, with a wallet, accuse the node on chain once two
//! judges signed. Counted in `/metrics` as
//! `ait_fraud_reports_total{answer="convicted"|"cleared"|"known"|"refused"}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::Address;
use futures::future::BoxFuture;

use web_node::model::{Manifest, ModelId};
use web_node::net::chain::{AuditOutcome, ChainOptions, ReportRefused, SwarmChain};
use web_node::net::fraud::{convictions, spread, Answer, FraudInbox, IncomingReport};
use web_node::net::node::NodeHandle;
use web_node::net::serve::LocalServer;
use web_node::trust::recent::RecentIds;
use web_node::trust::tribunal::SignedVerdict;
use web_node::trust::FraudReport;

use crate::evidence::EvidenceStore;
use crate::settle::duty::Evidence;
use crate::settle::tribunal::{Accuser, Judge};

/// Reports recomputed at once; others wait their turn.
const VERIFYING_AT_ONCE: usize = 2;

/// Reports whose accused this relay's recomputation convicted, remembered to sign their
/// verdict when asked again later.
const CONVICTING_REMEMBERED: usize = 10_000;

/// Longest a copy of a report waits for this relay's recomputation of it to finish.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest signing a verdict may wait for the chain (its binding read).
const SIGN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What recomputes reports for a relay.
pub struct Verifier {
    node: NodeHandle,
    /// The model reports are about, its layers and row width.
    model: (ModelId, usize, usize),
    local: Option<Arc<dyn LocalServer>>,
    /// The gateway's options: their reputation book is the one reports convict in.
    opts: ChainOptions,
    busy: tokio::sync::Semaphore,
    judge: Option<Judge>,
    evidence: Option<Arc<EvidenceStore>>,
    convicting: Mutex<RecentIds>,
    in_flight: Mutex<HashMap<[u8; 32], usize>>,
}

/// Counts a report id as being recomputed for as long as it lives (copies that arrive
/// together are each counted; a copy that finds the id counted elsewhere waits for zero).
struct InFlight<'a> {
    counts: &'a Mutex<HashMap<[u8; 32], usize>>,
    id: [u8; 32],
}

impl<'a> InFlight<'a> {
    fn start(counts: &'a Mutex<HashMap<[u8; 32], usize>>, id: [u8; 32]) -> InFlight<'a> {
        *counts.lock().expect("in-flight lock").entry(id).or_default() += 1;
        InFlight { counts, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("in-flight lock");
        if let Some(n) = counts.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

impl Verifier {
    /// A verifier of reports about the model of `manifest`, through `node` (and its own
    /// server `local`), that convicts in `opts`' reputation book, and signs verdicts with
    /// `judge` when given, keeping the reports it signs or fetches in `evidence`.
    pub fn new(
        node: NodeHandle,
        manifest: &Manifest,
        local: Option<Arc<dyn LocalServer>>,
        opts: ChainOptions,
        judge: Option<Judge>,
        evidence: Option<Arc<EvidenceStore>>,
    ) -> Verifier {
        let busy = tokio::sync::Semaphore::new(VERIFYING_AT_ONCE);
        let convicting = Mutex::new(RecentIds::new(CONVICTING_REMEMBERED));
        let model = (manifest.id(), manifest.n_layers, manifest.hidden);
        Verifier { node, model, local, opts, busy, judge, evidence, convicting, in_flight: Mutex::default() }
    }

    /// A chain for recomputing reports on this relay's swarm (its own server first).
    fn chain(&self) -> SwarmChain {
        let (id, n_layers, hidden) = self.model;
        let chain = SwarmChain::new(self.node.clone(), id, n_layers, hidden, self.opts.clone());
        match &self.local {
            Some(local) => chain.with_local(local.clone()),
            None => chain,
        }
    }

    /// Keeps `report` as evidence, when this relay keeps any.
    fn keep(&self, report: &FraudReport) {
        if let Some(Err(e)) = self.evidence.as_ref().map(|s| s.keep(report)) {
            tracing::warn!("{e}");
        }
    }

    /// Takes the reports its node's peers send, until the node stops.
    pub fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let mut inbox = FraudInbox::new(&mut self.node.control())?;
        tokio::spawn(async move {
            while let Some(incoming) = inbox.next().await {
                tokio::spawn(self.clone().take(incoming));
            }
        });
        Ok(())
    }

    async fn take(self: Arc<Self>, mut incoming: IncomingReport) {
        let from = incoming.peer;
        let answer = match incoming.read().await {
            Ok((report, ask)) => self.judge(&report, from, ask).await,
            Err(why) => Answer::Refused(why),
        };
        match &answer {
            Answer::Refused(why) => tracing::info!(%from, "fraud report refused: {why}"),
            a => tracing::info!(%from, answer = a.name(), "fraud report"),
        }
        metrics::counter!("ait_fraud_reports_total", "answer" => answer.name()).increment(1);
        incoming.answer(&answer).await;
    }

    /// Recomputes `report` (sent by `from`) and acts on it; a report that convicts is passed
    /// on to this node's other peers, and its verdict about the accused at `ask` is signed
    /// when this relay judges and the chain binds that address to the accused.
    pub async fn judge(&self, report: &FraudReport, from: libp2p::PeerId, ask: Option<Address>) -> Answer {
        let id = report.id();
        let verified = {
            let Ok(_turn) = self.busy.acquire().await else { return Answer::Refused("shutting down".into()) };
            let mut chain = self.chain();
            let _flight = InFlight::start(&self.in_flight, id);
            let verified = chain.verify_report(report).await;
            if verified.as_ref().is_ok_and(|j| j.accused_faulty) {
                self.convicting.lock().expect("convicting lock").insert(id);
            }
            verified
        };
        // Signing reads the chain: not while holding a recomputation's turn.
        match verified.as_ref().map(|j| j.accused()) {
            Ok(Some(true)) => {
                let (node, spread_report) = (self.node.clone(), report.clone());
                let except = [from, report.accused.node];
                tokio::spawn(async move { spread(&node, &spread_report, &except, None).await });
                Answer::Convicted(self.sign(report, ask).await)
            }
            Ok(Some(false)) => Answer::Cleared,
            Ok(None) => Answer::Refused("the recomputation agreed with nobody; nobody was convicted".into()),
            Err(ReportRefused::Replayed(_)) => {
                // A copy that came while this relay still recomputes the report waits for the
                // result, so that its sender gets the verdict too.
                let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
                while self.in_flight.lock().expect("in-flight lock").contains_key(&id)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                let convicted = self.convicting.lock().expect("convicting lock").contains(&id);
                Answer::Known(if convicted { self.sign(report, ask).await } else { None })
            }
            Err(e) => Answer::Refused(e.to_string()),
        }
    }

    /// This relay's signed verdict that `report`'s accused, at `ask`, is faulty: `None`
    /// when nothing was asked, this relay does not judge, or the chain does not bind `ask`
    /// to the accused.
    async fn sign(&self, report: &FraudReport, ask: Option<Address>) -> Option<SignedVerdict> {
        let (judge, accused) = (self.judge.as_ref()?, ask?);
        let signed = tokio::time::timeout(SIGN_TIMEOUT, judge.sign(report, accused)).await;
        match signed.unwrap_or_else(|_| Err("the chain did not answer in time".into())) {
            Ok(signed) => {
                self.keep(report);
                Some(signed)
            }
            Err(e) => {
                tracing::info!(%accused, "no verdict signed: {e}");
                None
            }
        }
    }
}

impl Evidence for Verifier {
    fn report(&self, id: [u8; 32], holders: Vec<libp2p::PeerId>) -> BoxFuture<'_, Option<FraudReport>> {
        Box::pin(async move {
            if let Some(Ok(Some(bytes))) = self.evidence.as_ref().map(|s| s.get(&id)) {
                if let Ok(report) = FraudReport::decode(&bytes) {
                    return Some(report);
                }
            }
            let report = web_node::net::evidence::fetch_any(&self.node.control(), &holders, id).await?;
            self.keep(&report);
            Some(report)
        })
    }

    fn faulty<'a>(&'a self, report: &'a FraudReport) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let _turn = self.busy.acquire().await.map_err(|_| "shutting down".to_string())?;
            let judgment = self.chain().recheck_report(report).await.map_err(|e| e.to_string())?;
            judgment.accused().ok_or_else(|| "the recomputation agreed with nobody".to_string())
        })
    }
}

/// Sends the fraud report of each faulty verdict in `found` to every node `node` is
/// connected to; returns how many confirmed it (convicted the node in their books). With an
/// `accuser`, it asks them for signed verdicts about the node's EVM address (known when the
/// node charged) and accuses it on chain once two judges signed.
pub async fn publish(node: &NodeHandle, found: &[AuditOutcome], accuser: Option<&Accuser>) -> usize {
    let mut confirmed = 0;
    for a in found {
        let Some(report) = &a.report else { continue };
        let ask = accuser.and(a.payee);
        let answers = spread(node, report, &[report.accused.node], ask).await;
        confirmed += convictions(&answers);
        let (Some(accuser), Some(accused)) = (accuser, ask) else { continue };
        let signed: Vec<SignedVerdict> =
            answers.iter().filter_map(|(_, a)| a.as_ref().ok()?.verdict().cloned()).collect();
        match accuser.accuse(report, accused, &signed).await {
            Ok(judges) => tracing::info!(%accused, judges = judges.len(), "accused on chain"),
            Err(e) => tracing::warn!(%accused, "not accused on chain: {e}"),
        }
    }
    confirmed
}
