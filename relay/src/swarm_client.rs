//! A native client of the swarm: a node that only dials, and chains through it. The model's
//! client part is [`web_node::client::ClientModel`].

use anyhow::Context;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use web_node::client::ClientModel;
use web_node::net::chain::{AuditError, AuditOutcome, ChainOptions, SwarmChain};
use web_node::net::node::{NodeHandle, Role};
use web_node::trust::{AuditDraw, DEFAULT_AUDIT_RATE};

/// Starts a client node (it only dials) and joins the swarm through `bootstrap`.
pub async fn connect(bootstrap: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    connect_from(bootstrap, &[]).await
}

/// Like [`connect`], with listeners on `listen`: TCP dials then leave from a listener's
/// address (port reuse), so a client listening on `/ip4/127.0.0.2/tcp/0` reaches others
/// from 127.0.0.2.
pub async fn connect_from(bootstrap: &[Multiaddr], listen: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    connect_as(Keypair::generate_ed25519(), bootstrap, listen).await
}

/// Like [`connect_from`], as the identity `key` (a node that signs its own records).
pub async fn connect_as(key: Keypair, bootstrap: &[Multiaddr], listen: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    let cert =
        libp2p_webrtc::tokio::Certificate::generate(&mut rand_webrtc::rng()).context("generating a certificate")?;
    let (handle, _) = crate::p2p::start(key, cert, Role::Client, listen, false, &Default::default()).await?;
    crate::p2p::bootstrap(&handle, bootstrap).await?;
    Ok(handle)
}

/// A chain over the swarm for `model`.
pub fn chain(handle: NodeHandle, model: &ClientModel, opts: ChainOptions) -> SwarmChain {
    SwarmChain::new(handle, model.id, model.config.n_layers, model.config.hidden, opts)
}

/// Spot checks of the servers by a client: `ait generate --swarm`, `ait chat --swarm`, and
/// `ait relay` as an API gateway. On by default, at [`DEFAULT_AUDIT_RATE`].
#[derive(clap::Args, Clone, Debug)]
pub struct AuditOpt {
    /// Share of each generation's hop sessions to audit afterwards (0 to 1; 0 audits
    /// nothing): the hop's inputs are replayed as one prefill on another server of the same
    /// layers, paid like any session, and a node whose answers deviate is banned from this
    /// client's routes and reported to the nodes it is connected to.
    #[arg(long, env = "AIT_AUDIT_RATE", default_value_t = DEFAULT_AUDIT_RATE, value_parser = audit_rate)]
    pub audit_rate: f64,
}

fn audit_rate(s: &str) -> Result<f64, String> {
    web_node::trust::parse_rate(s).ok_or_else(|| format!("{s} is not a share between 0 and 1"))
}

impl AuditOpt {
    /// `chain`, drawing its audits at this rate (unchanged at 0).
    pub fn apply(&self, chain: SwarmChain) -> SwarmChain {
        if self.audit_rate > 0.0 {
            chain.with_audits(AuditDraw::new(self.audit_rate))
        } else {
            chain
        }
    }
}

/// Runs the audits the last generation drew and says on stderr what each found, one line
/// each (after the generation's text), and what their replays paid; sends the fraud report
/// of each faulty verdict to the nodes this client is connected to, and says how many
/// confirmed it; with an `accuser`, accuses the node on chain once two judges signed its
/// verdict.
pub async fn audit(chain: &mut SwarmChain, accuser: Option<&crate::settle::tribunal::Accuser>) {
    let paid_before = chain.replays_paid();
    let found = chain.run_audits().await;
    if !found.is_empty() {
        eprintln!();
    }
    let mut outcomes = Vec::new();
    for found in found {
        count_audit(&found);
        match found {
            Ok(a) => {
                let opinions: Vec<String> = a
                    .opinions
                    .iter()
                    .map(|o| {
                        let said = if o.passed { "pass" } else { "FAIL" };
                        format!("{} {said} (worst {:.2e})", o.auditor, o.deviation.worst)
                    })
                    .collect();
                eprintln!(
                    "audit: {} (blocks {}..{}) {} over {} tokens, limit {:.0e}: {}",
                    a.audited.peer,
                    a.audited.blocks.start,
                    a.audited.blocks.end,
                    a.verdict.name(),
                    a.tokens,
                    web_node::trust::DELTA_LIMIT,
                    opinions.join(", "),
                );
                outcomes.push(a);
            }
            Err(e) => eprintln!("audit: not made: {e}"),
        }
    }
    for a in outcomes.iter().filter(|a| a.report.is_some()) {
        let confirmed = crate::fraud::publish(chain.node(), std::slice::from_ref(a), accuser).await;
        eprintln!("fraud report on {}: confirmed by {confirmed} node(s) that recomputed it", a.audited.peer);
    }
    let paid = chain.replays_paid().saturating_sub(paid_before);
    if !paid.is_zero() {
        eprintln!("audit replays cost: {} AIT", web_node::settle::format_ait(paid));
    }
}

/// Counts an audit in the metrics:
/// `ait_audits_total{result="passed"|"faulty"|"unconfirmed"|"not_made"}`.
pub fn count_audit(found: &Result<AuditOutcome, AuditError>) {
    let result = match found {
        Ok(a) => a.verdict.name(),
        Err(_) => "not_made",
    };
    metrics::counter!("ait_audits_total", "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditOpt,
    }

    #[test]
    fn clients_audit_by_default_and_the_rate_is_a_share() {
        let rate = |args: &[&str]| Cli::try_parse_from([&["ait"][..], args].concat()).map(|c| c.audit.audit_rate);
        // The environment sets the default where it names a rate (the tests' processes: 0).
        let default = std::env::var("AIT_AUDIT_RATE").ok().map_or(DEFAULT_AUDIT_RATE, |r| r.parse().unwrap());
        assert_eq!(rate(&[]).unwrap(), default);
        const { assert!(DEFAULT_AUDIT_RATE > 0.0) };
        assert_eq!(rate(&["--audit-rate", "0"]).unwrap(), 0.0);
        assert_eq!(rate(&["--audit-rate", "1"]).unwrap(), 1.0);
        for bad in ["1.5", "-1", "x"] {
            let e = rate(&[&format!("--audit-rate={bad}")]).unwrap_err().to_string();
            assert!(e.contains("is not a share between 0 and 1"), "{e}");
        }
    }
}
