//! Spot checks: a hop's inputs replayed on another server of the same layers, as one
//! prefill, and its answers judged by the trust metric ([`crate::trust::deviation`] against
//! [`DELTA_LIMIT`]).
//!
//! What an audit looks like on the wire: a session like any other, an `Open` of the span
//! followed by one `Step` at position 0 carrying every input up to the audited step (split
//! into frames that fit), which is exactly what a failover replay sends to a replacement. The
//! audited node is not contacted at all; the auditor cannot tell an audit from a replay, and
//! the audited node never learns which of its sessions were checked (the draw,
//! [`crate::trust::AuditDraw`], is made after its receipts exist, from the client's secret).
//! One replay up to a step checks every step before it, so an audit costs one prefill.
//! A failed replay is checked by up to two more servers of those layers, drawn from the
//! audited node's signature; a node is judged faulty only when two auditors agree.

use alloy_primitives::Address;
use libp2p::PeerId;

use super::{ChainError, Discovery, SwarmChain};
use crate::net::routing::Candidate;
use crate::net::routing::Hop;
use crate::trust::{
    check_run, deviation, second_opinion_rank, AuditDraw, Checked, Deviation, Event, FraudReport, Judgment,
    ReportError, SignedReceipt, SignedRun, Verdict, DELTA_LIMIT,
};

/// What the client kept of one hop of a sequence, for an audit: the node's receipts, the
/// inputs it was sent and the rows it answered.
#[derive(Clone, Debug)]
pub struct AuditCase {
    /// The audited node and its layers.
    pub hop: Hop,
    /// Its receipts, one per step, in order.
    pub receipts: Vec<SignedReceipt>,
    /// Every input row it was sent, `[tokens, hidden]`.
    pub inputs: Vec<f32>,
    /// Every row it answered, same shape.
    pub outputs: Vec<f32>,
    /// The EVM address it was paid at (its terms named it), when it charged: whom a verdict
    /// about it names on chain.
    pub payee: Option<Address>,
}

/// One auditor's replay of an audited session.
#[derive(Clone, Debug)]
pub struct Opinion {
    /// The server that recomputed the layers.
    pub auditor: PeerId,
    /// How far the audited answers are from its recomputation.
    pub deviation: Deviation,
    /// Whether every token was within [`DELTA_LIMIT`].
    pub passed: bool,
    /// Its signed answers to the replayed inputs (the evidence of a fraud report).
    pub replay: SignedRun,
}

/// What an audit found.
#[derive(Clone, Debug)]
pub struct AuditOutcome {
    /// The audited node and its layers.
    pub audited: Hop,
    /// Tokens replayed (every step up to the audited one).
    pub tokens: usize,
    /// The first auditor's opinion, then the second opinions asked when it failed.
    pub opinions: Vec<Opinion>,
    /// What they come to.
    pub verdict: Verdict,
    /// The evidence of a faulty verdict, for others to check and recompute
    /// ([`crate::net::fraud::spread`]); `None` for any other verdict.
    pub report: Option<FraudReport>,
    /// The audited node's EVM address, when it charged ([`AuditCase::payee`]).
    pub payee: Option<Address>,
}

impl AuditOutcome {
    /// Whether the audit cleared the node.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }
}

/// Why an audit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// What the client kept does not match what the node signed (or is too short).
    #[error("the audit's evidence does not hold: {0}")]
    Evidence(String),
    /// No other server holds exactly these layers.
    #[error("no server other than {peer} holds blocks [{start}, {end})")]
    NoAuditor {
        /// The audited node.
        peer: PeerId,
        /// First block.
        start: usize,
        /// One past the last.
        end: usize,
    },
    /// Finding, opening or running the auditor's session failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Why a fraud report was not acted on; nothing in the node's reputation book changed.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefused {
    /// The report does not hold.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// It is about another model than this chain's.
    #[error("the report is about model {0}, not this chain's")]
    OtherModel(String),
    /// It was counted before.
    #[error("fraud report {0} was counted before")]
    Replayed(String),
    /// No server but the accused and the auditors could recompute it (or the recomputation
    /// failed).
    #[error("no independent recomputation: {0}")]
    Unverified(#[from] AuditError),
}

impl AuditCase {
    /// Checks that the receipts up to step `step` are the node's answers to the first inputs
    /// kept, from position 0 and without gaps, with the outputs kept ([`check_run`]; the
    /// signatures were checked as the answers came); returns the step's end (tokens
    /// replayed).
    fn evidence(&self, step: usize, dim: usize) -> Result<usize, AuditError> {
        let Some(last) = self.receipts.get(step) else {
            return Err(AuditError::Evidence(format!("step {step} of {} receipts", self.receipts.len())));
        };
        let tokens = (last.receipt.pos as usize).saturating_add(last.receipt.n_tokens as usize);
        let rows = tokens.saturating_mul(dim);
        if self.inputs.len() < rows || self.outputs.len() < rows {
            return Err(AuditError::Evidence(format!("{tokens} tokens signed for, fewer kept")));
        }
        let receipts = &self.receipts[..=step];
        check_run(&self.hop.peer, receipts, &self.inputs[..rows], &self.outputs[..rows], dim, false)
            .map_err(|e| AuditError::Evidence(e.to_string()))?;
        Ok(tokens)
    }

    /// The fraud report of a faulty verdict about this case's first `tokens` tokens: the
    /// inputs, the node's signed answers, and the signed replays of the auditors that failed
    /// it.
    fn report(&self, tokens: usize, hidden: usize, opinions: &[Opinion]) -> Option<FraudReport> {
        let rows = tokens * hidden;
        let mut at = 0;
        let receipts: Vec<SignedReceipt> = self
            .receipts
            .iter()
            .take_while(|r| {
                let inside = at < tokens;
                at += r.receipt.n_tokens as usize;
                inside
            })
            .cloned()
            .collect();
        Some(FraudReport {
            hidden: hidden as u32,
            inputs: self.inputs.get(..rows)?.to_vec(),
            accused: SignedRun { node: self.hop.peer, receipts, outputs: self.outputs.get(..rows)?.to_vec() },
            replays: opinions.iter().filter(|o| !o.passed).map(|o| o.replay.clone()).collect(),
        })
    }
}

impl<D: Discovery> SwarmChain<D> {
    /// What an audit of each hop needs, taken from the current sequence's hops and history
    /// (called by `end`, before the sessions close).
    pub(super) fn audit_cases_now(&mut self) -> Vec<AuditCase> {
        let history = &mut self.history;
        self.hops
            .iter_mut()
            .map(|h| AuditCase {
                hop: h.hop(),
                receipts: h.receipts().to_vec(),
                inputs: history.remove(&h.blocks().start).unwrap_or_default(),
                outputs: h.take_outputs(),
                payee: h.payee(),
            })
            .collect()
    }

    /// Audits the sessions `draw` picks in [`SwarmChain::run_audits`].
    pub fn with_audits(mut self, draw: AuditDraw) -> Self {
        self.audit_draw = Some(draw);
        self
    }

    /// Audits the last sequence's hops that the chain's draw ([`SwarmChain::with_audits`])
    /// picks, each up to the step it drew; returns what each audit found, in route order (an
    /// audit that could not be made is an error, and judges nobody). This node's own server
    /// (a seeding tab's, a gateway's) is not audited: others check it. Call it after `end`;
    /// without a draw it does nothing.
    pub async fn run_audits(&mut self) -> Vec<Result<AuditOutcome, AuditError>> {
        let Some(draw) = self.audit_draw.clone() else { return Vec::new() };
        let local = self.discovery.local_peer();
        let picked: Vec<(AuditCase, usize)> = self
            .last_audit
            .iter()
            .filter(|c| Some(c.hop.peer) != local)
            .filter_map(|c| draw.draw(&c.receipts).map(|step| (c.clone(), step)))
            .collect();
        let mut found = Vec::with_capacity(picked.len());
        for (case, step) in picked {
            let outcome = self.audit(&case, step).await;
            if let Err(e) = &outcome {
                tracing::info!(node = %case.hop.peer, "no audit: {e}");
            }
            found.push(outcome);
        }
        found
    }

    /// The last sequence's hops, with what an audit of each needs (kept until the next
    /// sequence ends).
    pub fn audit_cases(&self) -> &[AuditCase] {
        &self.last_audit
    }

    /// The servers of exactly `blocks` but those in `except`, with their streams: who can
    /// audit or recompute a span. The discovery decides once one of them has answered (or
    /// its timeout has passed), not as soon as servers of parts of `blocks` would do.
    async fn others_of(
        &mut self,
        blocks: &std::ops::Range<usize>,
        except: &[PeerId],
    ) -> Result<Vec<(super::FoundServer, super::BoxStream)>, ChainError> {
        let found = self.discover_except(blocks.clone(), false, except, 1).await?;
        Ok(found
            .into_iter()
            .filter(|(f, _)| !except.contains(&f.candidate.peer) && f.candidate.blocks == *blocks)
            .collect())
    }

    /// Replays `inputs` (`tokens` rows) as one prefill on the server `f` found, over `stream`
    /// (paid like any session): its signed answers.
    async fn replay(
        &mut self,
        f: &super::FoundServer,
        stream: super::BoxStream,
        inputs: &[f32],
        tokens: usize,
    ) -> Result<SignedRun, ChainError> {
        let hop = Hop { peer: f.candidate.peer, blocks: f.candidate.blocks.clone() };
        let mut session = self.open_hop(hop, stream, f.candidate.cost_ms(), f.status.pay.clone(), tokens).await?;
        let out = session.step(0, inputs, tokens, self.hidden, &self.opts, &self.discovery).await;
        let receipts = session.receipts().to_vec();
        self.replays_paid += session.close().await;
        Ok(SignedRun { node: f.candidate.peer, receipts, outputs: out? })
    }

    /// Audits `case` up to the end of its step `step`: checks the evidence against the
    /// node's receipts, finds the other servers holding exactly the same layers, and replays
    /// the inputs up to there as one prefill (paid like any session) on the fastest of them,
    /// judging every token. If it fails the node, up to two more servers give a second
    /// opinion, in an order drawn from the node's own signature
    /// ([`crate::trust::second_opinion_rank`]); the [`Verdict`] needs [`QUORUM`](crate::trust::QUORUM) of them to
    /// agree on a failure. A node judged faulty is convicted in the node's reputation book
    /// (left out of every route of every chain that shares it), and so is an auditor whose
    /// opinion the quorum overturned; a pass counts for the node's record.
    pub async fn audit(&mut self, case: &AuditCase, step: usize) -> Result<AuditOutcome, AuditError> {
        let dim = self.hidden;
        let tokens = case.evidence(step, dim)?;
        let blocks = case.hop.blocks.clone();
        let audited = case.hop.peer;
        let mut found = self.others_of(&blocks, &[audited]).await?;
        let Some(fastest) =
            (0..found.len()).min_by(|&a, &b| found[a].0.candidate.cost_ms().total_cmp(&found[b].0.candidate.cost_ms()))
        else {
            return Err(AuditError::NoAuditor { peer: audited, start: blocks.start, end: blocks.end });
        };
        let first = found.remove(fastest);
        let signed = &case.receipts[step];
        found.sort_by_cached_key(|(f, _)| second_opinion_rank(signed, &f.candidate.peer));
        let (inputs, claimed) = (&case.inputs[..tokens * dim], &case.outputs[..tokens * dim]);
        let mut opinions: Vec<Opinion> = Vec::new();
        let mut failure = None;
        let mut queue: std::collections::VecDeque<_> = std::iter::once(first).chain(found).collect();
        // Every server asked so far, and the audited one.
        let mut asked = vec![audited];
        loop {
            let Some((f, stream)) = queue.pop_front() else {
                // The first discovery decided as soon as one auditor answered; a failure
                // needs more opinions, so look again for servers not asked yet (a busy
                // swarm, or one where servers come and go, may answer late).
                let mut more = self.others_of(&blocks, &asked).await.unwrap_or_default();
                if more.is_empty() {
                    break;
                }
                more.sort_by_cached_key(|(f, _)| second_opinion_rank(signed, &f.candidate.peer));
                queue.extend(more);
                continue;
            };
            let auditor = f.candidate.peer;
            asked.push(auditor);
            let replay = match self.replay(&f, stream, inputs, tokens).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(%audited, %auditor, "an auditor could not replay: {e}");
                    if Some(auditor) != self.discovery.local_peer() {
                        self.opts.reputation.record(auditor, Event::Failed);
                    }
                    failure = Some(e);
                    continue;
                }
            };
            let deviation =
                deviation(inputs, &replay.outputs, claimed, dim).map_err(|e| AuditError::Evidence(e.to_string()))?;
            let passed = deviation.within(DELTA_LIMIT);
            tracing::info!(%audited, %auditor, tokens, worst = deviation.worst, passed, "audit opinion");
            opinions.push(Opinion { auditor, deviation, passed, replay });
            if Verdict::settled(&opinions.iter().map(|o| o.passed).collect::<Vec<_>>()) {
                break;
            }
        }
        if opinions.is_empty() {
            return Err(failure.map_or(
                AuditError::NoAuditor { peer: audited, start: blocks.start, end: blocks.end },
                AuditError::Chain,
            ));
        }
        let verdict = Verdict::of(&opinions.iter().map(|o| o.passed).collect::<Vec<_>>());
        match verdict {
            Verdict::Faulty => {
                tracing::warn!(%audited, tokens, "audit: the node's answers are not the computation of its layers");
                self.ban(audited);
                self.opts.reputation.record(audited, Event::Convicted);
            }
            Verdict::Unconfirmed => tracing::warn!(%audited, tokens, "audit: one auditor failed the node, unconfirmed"),
            Verdict::Passed => self.opts.reputation.record(audited, Event::AuditPassed),
        }
        // Auditors the quorum overturned gave a false opinion.
        if opinions.len() > 1 && verdict != Verdict::Unconfirmed {
            for o in opinions.iter().filter(|o| o.passed != (verdict == Verdict::Passed)) {
                tracing::warn!(auditor = %o.auditor, %audited, "audit: the auditor's opinion was overturned");
                self.ban(o.auditor);
                self.opts.reputation.record(o.auditor, Event::Convicted);
            }
        }
        let report = match verdict {
            Verdict::Faulty => case.report(tokens, dim, &opinions),
            _ => None,
        };
        Ok(AuditOutcome { audited: case.hop.clone(), tokens, opinions, verdict, report, payee: case.payee })
    }

    /// Acts on a fraud report someone sent: checks first what costs nothing (its model, row
    /// width and layers are this chain's, its inputs are sane hidden states), then the report
    /// itself ([`FraudReport::check`]), then recomputes its span on a server of its layers
    /// that the report does not involve: this node's own server when it holds them, else the
    /// one routing would weigh cheapest (a record counts). It judges by that
    /// ([`FraudReport::judge`]): the accused is convicted in this node's reputation book when
    /// the recomputation fails it too, and each auditor whose signed outputs are off the
    /// recomputation is convicted (a report by colluding auditors convicts them, not the
    /// node they framed). A recomputation that agrees with nobody (neither the accused nor
    /// any auditor) convicts nobody: the verifier itself may be wrong. A report counts once.
    /// A report refused, or one no server could recompute, changes nothing in the book.
    pub async fn verify_report(&mut self, report: &FraudReport) -> Result<Judgment, ReportRefused> {
        let checked = self.admit_report(report)?;
        let id = hex::encode(&checked.id[..8]);
        // Counted now, so that copies arriving together are recomputed once; forgotten again
        // if no server can recompute it.
        if !self.opts.reputation.count_report(checked.id) {
            return Err(ReportRefused::Replayed(id));
        }
        let judgment = match self.judge_report(report, &checked).await {
            Ok(j) => j,
            Err(e) => {
                self.opts.reputation.forget_report(&checked.id);
                return Err(e);
            }
        };
        if judgment.accused_faulty {
            self.ban(checked.accused);
            self.opts.reputation.record(checked.accused, Event::Convicted);
        }
        for &auditor in &judgment.lying_auditors {
            self.ban(auditor);
            self.opts.reputation.record(auditor, Event::Convicted);
        }
        Ok(judgment)
    }

    /// Judges `report` as [`verify_report`](Self::verify_report) does, and changes nothing:
    /// no count, no conviction. What a tribunal's accused or juror does with a report it may
    /// have acted on before.
    pub async fn recheck_report(&mut self, report: &FraudReport) -> Result<Judgment, ReportRefused> {
        let checked = self.admit_report(report)?;
        self.judge_report(report, &checked).await
    }

    /// What costs nothing to check of a report sent to this chain: its model, row width,
    /// layers, inputs, then the report itself.
    fn admit_report(&self, report: &FraudReport) -> Result<Checked, ReportRefused> {
        let bad = |what: String| ReportRefused::Report(ReportError::Evidence(what));
        let model = report.accused.receipts.first().map(|r| (r.receipt.model, r.receipt.start..r.receipt.end));
        let Some((model, layers)) = model else { return Err(bad("no receipts".into())) };
        if model != self.model {
            return Err(ReportRefused::OtherModel(model.short()));
        }
        if report.hidden as usize != self.hidden {
            return Err(bad(format!("rows of width {}, this model's are {}", report.hidden, self.hidden)));
        }
        if layers.start >= layers.end || layers.end as usize > self.n_layers {
            return Err(bad(format!("layers {}..{} of a {}-layer model", layers.start, layers.end, self.n_layers)));
        }
        super::hop::check_hidden(&report.inputs, self.hidden)
            .map_err(|e| ReportError::Evidence(format!("inputs: {e}")))?;
        Ok(report.check()?)
    }

    /// Recomputes an admitted report and judges by it; a recomputation that agrees with
    /// nobody finds nobody faulty.
    async fn judge_report(&mut self, report: &FraudReport, checked: &Checked) -> Result<Judgment, ReportRefused> {
        let id = hex::encode(&checked.id[..8]);
        let (judgment, verifier) = self.recompute(report, checked).await?;
        tracing::warn!(
            report = %id,
            accused = %checked.accused,
            %verifier,
            faulty = judgment.accused_faulty,
            lying_auditors = judgment.lying_auditors.len(),
            "fraud report recomputed"
        );
        if judgment.accused_faulty && judgment.lying_auditors.len() == checked.auditors.len() {
            tracing::warn!(report = %id, %verifier, "the recomputation agrees with nobody: nobody is convicted");
            return Ok(Judgment { accused_faulty: false, lying_auditors: Vec::new(), ..judgment });
        }
        Ok(judgment)
    }

    /// Recomputes `report`'s span on a server of its layers that it does not involve (this
    /// node's own first, then by routing weight); the judgment and who recomputed it. A
    /// server that cannot is not held against it (the report's inputs may be what failed).
    async fn recompute(
        &mut self,
        report: &FraudReport,
        checked: &Checked,
    ) -> Result<(Judgment, PeerId), ReportRefused> {
        let blocks = checked.layers.start as usize..checked.layers.end as usize;
        let involved: Vec<PeerId> = std::iter::once(checked.accused).chain(checked.auditors.iter().copied()).collect();
        let local = self.discovery.local_peer();
        let mut found = self.others_of(&blocks, &involved).await.map_err(AuditError::Chain)?;
        let reputation = &self.opts.reputation;
        found.sort_by_cached_key(|(f, _)| {
            let c = &f.candidate;
            let weight = Candidate { trust: reputation.trust(&c.peer), ..c.clone() }.route_cost_ms();
            (Some(c.peer) != local, (weight * 1e3) as u64)
        });
        let mut failure = None;
        for (f, stream) in found {
            let verifier = f.candidate.peer;
            match self.replay(&f, stream, &report.inputs, checked.tokens).await {
                Ok(replay) => return Ok((report.judge(&replay.outputs)?, verifier)),
                Err(e) => {
                    tracing::info!(%verifier, "could not recompute a fraud report: {e}");
                    failure = Some(e);
                }
            }
        }
        let (peer, start, end) = (checked.accused, blocks.start, blocks.end);
        Err(ReportRefused::Unverified(failure.map_or(AuditError::NoAuditor { peer, start, end }, AuditError::Chain)))
    }
}
