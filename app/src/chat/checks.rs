//! Spot checks by the tab. After an answer, the hop sessions the tab's draw picked
//! (`?audit=SHARE`, default [`DEFAULT_AUDIT_RATE`]; `?audit=0` audits nothing) are replayed
//! on other servers of the same layers ([`SwarmChain::run_audits`], paid like any session).
//! A server judged faulty is convicted in the tab's reputation book, so its later answers
//! route around it, and the fraud report goes to the relays the tab is connected to, which
//! recompute it and spread it further. The panel lists what each check found.

use alloy_primitives::U256;
use web_node::net::chain::{AuditError, AuditOutcome, SwarmChain};
use web_node::net::fraud::{convictions, spread};
use web_node::trust::{parse_rate, DEFAULT_AUDIT_RATE, DELTA_LIMIT};

use crate::http;

/// Checks the panel keeps, newest first.
pub const KEPT: usize = 20;

/// The share of hop sessions the tab audits: `?audit=` when it is a share between 0 and 1,
/// else [`DEFAULT_AUDIT_RATE`].
pub fn rate() -> f64 {
    http::query_param("audit").as_deref().and_then(parse_rate).unwrap_or(DEFAULT_AUDIT_RATE)
}

/// What one spot check found, as the panel shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpotCheck {
    /// The checked server's peer id.
    pub audited: String,
    /// `passed`, `faulty`, `unconfirmed`, or `not_made` when no other server could replay it.
    pub verdict: &'static str,
    /// The servers that replayed it, in order.
    pub auditors: Vec<String>,
    /// The largest deviation any of them found (none when the check was not made).
    pub worst: Option<f32>,
    /// Tokens replayed.
    pub tokens: usize,
    /// The check in words.
    pub line: String,
}

impl SpotCheck {
    fn of(found: &Result<AuditOutcome, AuditError>) -> SpotCheck {
        match found {
            Ok(a) => {
                let worst = a.opinions.iter().map(|o| o.deviation.worst).reduce(f32::max);
                SpotCheck {
                    audited: a.audited.peer.to_string(),
                    verdict: a.verdict.name(),
                    auditors: a.opinions.iter().map(|o| o.auditor.to_string()).collect(),
                    worst,
                    tokens: a.tokens,
                    line: format!(
                        "Server {} (blocks {}..{}) {} over {} tokens, replayed by {} server(s); worst deviation {:.1e}, limit {:.0e}.",
                        short(&a.audited.peer.to_string()),
                        a.audited.blocks.start,
                        a.audited.blocks.end,
                        a.verdict.name(),
                        a.tokens,
                        a.opinions.len(),
                        worst.unwrap_or(0.0),
                        DELTA_LIMIT,
                    ),
                }
            }
            Err(e) => SpotCheck {
                audited: String::new(),
                verdict: "not_made",
                auditors: Vec::new(),
                worst: None,
                tokens: 0,
                line: format!("Not made: {e}."),
            },
        }
    }
}

/// The last characters of a peer id, enough to tell servers apart on screen.
fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

/// Runs the checks the chain's draw picked from its last answer; sends the fraud report of
/// each faulty verdict to the relays the tab is connected to. Returns what each check found
/// and what the replays cost (AIT, smallest unit; zero when the tab does not pay).
pub async fn run(chain: &mut SwarmChain) -> (Vec<SpotCheck>, U256) {
    let paid_before = chain.replays_paid();
    let found = chain.run_audits().await;
    let mut checks = Vec::with_capacity(found.len());
    for f in &found {
        let mut check = SpotCheck::of(f);
        if let Ok(AuditOutcome { report: Some(report), .. }) = f {
            let answers = spread(chain.node(), report, &[report.accused.node], None).await;
            check.line.push_str(&format!(" Reported: {} relay(s) confirmed it.", convictions(&answers)));
        }
        tracing::info!("spot check: {}", check.line);
        checks.push(check);
    }
    (checks, chain.replays_paid().saturating_sub(paid_before))
}
