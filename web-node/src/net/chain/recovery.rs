//! Failover: replacing a failed hop and replaying the sequence's history to its replacements.
//!
//! The failed server is banned and only its span is routed again, possibly over several
//! servers; the inputs the chain kept at the span's first boundary are replayed through the
//! replacements to rebuild their KV caches, recording the inputs at the new boundaries. When
//! the span cannot be routed within its own bounds (the failed server held `[10, 20)` and the
//! others hold `[5, 15)` and `[15, 30)`), every block is routed again from layer 0, the other
//! sessions are closed, and the whole sequence is replayed from the embeddings kept at
//! boundary 0. Either way the generation goes on with identical output.

use std::ops::Range;

use libp2p::PeerId;
use web_time::Instant;

use super::hop::HopSession;
use super::{close_all, ChainError, Discovery, Recovery, SwarmChain};

/// Where a step goes on after a recovery.
pub(super) enum Resume {
    /// At the same hop index: the replacements of the failed hop stand there, holding the
    /// history up to this step.
    Hop,
    /// At the first hop, with the step's own input: the whole route is new.
    Start,
}

impl<D: Discovery> SwarmChain<D> {
    /// Replaces hop `i` after `error`: bans its server, routes its span again and replays the
    /// span's history; when the span cannot be routed on its own, routes and replays everything
    /// from layer 0. A replacement that fails during the replay is banned in turn and the span
    /// routed again; `failures` counts every failure of the current step.
    pub(super) async fn recover(
        &mut self,
        i: usize,
        error: ChainError,
        failures: &mut usize,
    ) -> Result<Resume, ChainError> {
        let started = Instant::now();
        let (failed, span) = (self.hops[i].peer(), self.hops[i].blocks().clone());
        tracing::warn!(%failed, "blocks [{}, {}) failed: {error}", span.start, span.end);
        self.fail(failed);
        // The failed session is dropped, not closed: its stream is broken or stuck.
        self.paid_closed += self.hops.remove(i).paid();
        let all = 0..self.n_layers;
        let (rerouted, replacements, resume) = match self.reroute(i, span.clone(), failures).await {
            Ok(replacements) => (span.clone(), replacements, Resume::Hop),
            Err(ChainError::NoRoute { .. }) if span != all => {
                tracing::warn!(
                    "blocks [{}, {}) cannot be re-routed on their own; routing every block",
                    span.start,
                    span.end
                );
                self.paid_closed += close_all(std::mem::take(&mut self.hops)).await;
                // Of the inputs kept, only the embeddings (boundary 0) are sure to be needed by
                // the new route; the replay records those at its other boundaries.
                self.history.retain(|&start, _| start == 0);
                (all.clone(), self.reroute(0, all, failures).await?, Resume::Start)
            }
            Err(e) => return Err(e),
        };
        let took = started.elapsed();
        tracing::info!(
            "re-routed blocks [{}, {}) from {failed} to {} in {:.1} ms ({} tokens replayed)",
            rerouted.start,
            rerouted.end,
            replacements.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            took.as_secs_f64() * 1e3,
            self.pos
        );
        self.recoveries.push(Recovery {
            failed,
            blocks: span,
            rerouted,
            replacements,
            replayed_tokens: self.pos,
            took,
            error: error.to_string(),
        });
        Ok(resume)
    }

    /// Routes `span` anew, puts its sessions at hop index `at`, and replays the inputs kept at
    /// the span's first boundary (the sequence so far, `pos` tokens) through them, recording
    /// the inputs at the new boundaries. Returns the new servers.
    async fn reroute(
        &mut self,
        at: usize,
        span: Range<usize>,
        failures: &mut usize,
    ) -> Result<Vec<PeerId>, ChainError> {
        let n = self.pos;
        let mut input = self.history.get(&span.start).cloned().unwrap_or_default();
        // Hops before the failed one may already hold this step's input: not part of the replay.
        input.truncate(n * self.hidden);
        loop {
            let new = self.route_span(span.clone(), failures, true).await?;
            let n_new = new.len();
            let replacements: Vec<PeerId> = new.iter().map(HopSession::peer).collect();
            self.hops.splice(at..at, new);
            let mut x = input.clone();
            let mut replay_error = None;
            for k in at..at + n_new {
                let hop = &mut self.hops[k];
                self.history.insert(hop.blocks().start, x.clone());
                if n == 0 {
                    continue;
                }
                match hop.step(0, &x, n, self.hidden, &self.opts, &self.discovery).await {
                    Ok(out) => x = out,
                    Err(e) => {
                        replay_error = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = replay_error else { return Ok(replacements) };
            for dropped in self.hops.drain(at..at + n_new) {
                self.paid_closed += dropped.paid();
            }
            let e = self.count_failure(e, failures)?;
            tracing::warn!("replay to the replacement failed, routing again: {e}");
        }
    }
}
