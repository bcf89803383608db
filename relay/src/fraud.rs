//! The relay's part in fraud reports: it takes reports from its peers (`/ait/fraud/1`),
//! recomputes each on a server of the report's layers that the report does not involve (its
//! own, when it holds them), convicts in the reputation book its API gateway routes by, and
//! passes on the reports its recomputation confirmed. Clients and gateways send the reports
//! their own audits leave ([`publish`]). Counted in `/metrics` as
//! `ait_fraud_reports_total{answer="convicted"|"cleared"|"known"|"refused"}`.

use std::sync::Arc;

use web_node::client::ClientModel;
use web_node::net::chain::{AuditOutcome, ChainOptions, ReportRefused, SwarmChain};
use web_node::net::fraud::{spread, Answer, FraudInbox, IncomingReport};
use web_node::net::node::NodeHandle;
use web_node::net::serve::LocalServer;
use web_node::trust::FraudReport;

/// Reports recomputed at once; others wait their turn.
const VERIFYING_AT_ONCE: usize = 2;

/// What recomputes reports for a relay.
pub struct Verifier {
    node: NodeHandle,
    model: Arc<ClientModel>,
    local: Option<Arc<dyn LocalServer>>,
    /// The gateway's options: their reputation book is the one reports convict in.
    opts: ChainOptions,
    busy: tokio::sync::Semaphore,
}

impl Verifier {
    /// A verifier of reports about `model`, through `node` (and its own server `local`), that
    /// convicts in `opts`' reputation book.
    pub fn new(
        node: NodeHandle,
        model: Arc<ClientModel>,
        local: Option<Arc<dyn LocalServer>>,
        opts: ChainOptions,
    ) -> Verifier {
        Verifier { node, model, local, opts, busy: tokio::sync::Semaphore::new(VERIFYING_AT_ONCE) }
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
            Ok(report) => self.judge(&report, from).await,
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
    /// on to this node's other peers.
    pub async fn judge(&self, report: &FraudReport, from: libp2p::PeerId) -> Answer {
        let Ok(_turn) = self.busy.acquire().await else { return Answer::Refused("shutting down".into()) };
        let m = &self.model;
        let mut chain = SwarmChain::new(self.node.clone(), m.id, m.config.n_layers, m.config.hidden, self.opts.clone());
        if let Some(local) = &self.local {
            chain = chain.with_local(local.clone());
        }
        match chain.verify_report(report).await {
            Ok(j) if j.accused_faulty => {
                let (node, report) = (self.node.clone(), report.clone());
                let except = [from, report.accused.node];
                tokio::spawn(async move { spread(&node, &report, &except).await });
                Answer::Convicted
            }
            Ok(j) if !j.lying_auditors.is_empty() => Answer::Cleared,
            Ok(_) => Answer::Refused("the recomputation agreed with nobody; nobody was convicted".into()),
            Err(ReportRefused::Replayed(_)) => Answer::Known,
            Err(e) => Answer::Refused(e.to_string()),
        }
    }
}

/// Sends the fraud report of each faulty verdict in `found` to every node `node` is
/// connected to; returns how many confirmed it (convicted the node in their books).
pub async fn publish(node: &NodeHandle, found: &[AuditOutcome]) -> usize {
    let mut confirmed = 0;
    for report in found.iter().filter_map(|a| a.report.as_ref()) {
        let answers = spread(node, report, &[report.accused.node]).await;
        confirmed += answers.iter().filter(|(_, a)| matches!(a, Ok(Answer::Convicted))).count();
    }
    confirmed
}
