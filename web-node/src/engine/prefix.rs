//! Reuse of shared prompt prefixes: the keys, values and outputs of recent sessions' prompts,
//! kept so that a new session whose prompt starts the same way copies them instead of
//! computing them again, chunk by chunk as its prompt arrives (what vLLM and llama-server call prefix or prompt caching). Chat
//! prompts share their system prompt and template, so most of a short request's prefill is
//! the same as the last one's.
//!
//! A prefix is matched on the block's input rows, bit for bit, not on tokens: a block sees
//! hidden states, and attention is causal, so the keys, values and outputs of positions `0..m`
//! depend on input rows `0..m` only. This works on every block of a chain with no change to
//! the protocol. Because a token's result does not depend on how its prefill is chunked (the
//! backends guarantee it, see [`Backend::forward_batch`]), a session that reuses `m` rows and
//! computes the rest from position `m` gets exactly the bits it would have computed alone.

use web_time::Instant;

use super::{Backend, EngineError};

/// Whether `a` and `b` hold the same bits where both have values.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// One kept prompt.
struct Prefix<C> {
    /// Its input rows, `[len, hidden]`.
    inputs: Vec<f32>,
    /// Its output rows, `[len, hidden]`.
    outputs: Vec<f32>,
    /// Keys and values of its `len` positions.
    cache: C,
    last_used: Instant,
}

/// A session's rows while it prefills from position 0 (its prompt so far, in and out), so
/// that its later prompt chunks can go on reusing a kept prefix and its prompt can be kept.
#[derive(Default)]
pub(super) struct Track {
    inputs: Vec<f32>,
    outputs: Vec<f32>,
}

/// Recent sessions' prompts, at most `budget` tokens in all, least recently used dropped
/// first.
pub(super) struct PrefixCache<C> {
    entries: Vec<Prefix<C>>,
    budget: usize,
    /// Steps that reused rows of a kept prompt.
    pub(super) hits: u64,
    /// Tokens reused in all.
    pub(super) reused: u64,
}

/// Rows of a kept prompt that a step reuses: copied into its session's cache already.
pub(super) struct Reuse {
    /// Positions reused, from the step's first.
    pub(super) len: usize,
    /// Their output rows, `[len, hidden]`.
    pub(super) outputs: Vec<f32>,
}

impl<C> PrefixCache<C> {
    /// An empty store of at most `budget` tokens (0: off).
    pub(super) fn new(budget: usize) -> Self {
        PrefixCache { entries: Vec::new(), budget, hits: 0, reused: 0 }
    }

    /// What a new session tracks: nothing when reuse is off.
    pub(super) fn track(&self) -> Option<Track> {
        (self.budget > 0).then(Track::default)
    }

    fn held(&self, dim: usize) -> usize {
        self.entries.iter().map(|e| e.inputs.len() / dim).sum()
    }

    /// For a prompt step of a tracked session (`track` its rows so far, `hidden` the step's
    /// `n_tokens` rows): the most rows of the step that a kept prompt starting with the same
    /// rows has, at most `n_tokens - 1` so the step still computes its last token; their keys
    /// and values are copied into `cache`. `None` when nothing matches or the backend cannot
    /// copy caches.
    pub(super) fn reuse<B: Backend<Cache = C>>(
        &mut self,
        backend: &B,
        track: &Track,
        hidden: &[f32],
        n_tokens: usize,
        cache: &mut C,
    ) -> Result<Option<Reuse>, EngineError> {
        let dim = backend.config().hidden;
        let p = track.inputs.len() / dim;
        if n_tokens < 2 {
            return Ok(None);
        }
        // Rows of the step that entry `e` has after the session's own `p`, if it has those.
        let common = |e: &Prefix<C>| {
            if e.inputs.len() <= track.inputs.len() || !same_bits(&e.inputs[..track.inputs.len()], &track.inputs) {
                return 0;
            }
            let rest = &e.inputs[track.inputs.len()..];
            rest.chunks_exact(dim).zip(hidden.chunks_exact(dim)).take_while(|(a, b)| same_bits(a, b)).count()
        };
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common(e)))
            .max_by_key(|&(i, m)| (m, std::cmp::Reverse(i)));
        let Some((i, m)) = best else { return Ok(None) };
        let m = m.min(n_tokens - 1);
        if m == 0 || !backend.copy_kv(&self.entries[i].cache, cache, p..p + m)? {
            return Ok(None);
        }
        let e = &mut self.entries[i];
        e.last_used = Instant::now();
        self.hits += 1;
        self.reused += m as u64;
        Ok(Some(Reuse { len: m, outputs: e.outputs[p * dim..(p + m) * dim].to_vec() }))
    }

    /// After a tracked session's step (`hidden` in, `outputs` out, `n_tokens` rows; its keys
    /// and values in `cache`): a prompt step extends the track and keeps the prompt so far
    /// (replacing the kept prompt it extends); a decode step, or a prompt past the budget,
    /// ends the tracking (returns `None`).
    pub(super) fn record<B: Backend<Cache = C>>(
        &mut self,
        backend: &B,
        mut track: Track,
        hidden: &[f32],
        outputs: &[f32],
        cache: &C,
    ) -> Result<Option<Track>, EngineError> {
        let dim = backend.config().hidden;
        let len = (track.inputs.len() + hidden.len()) / dim;
        if hidden.len() < 2 * dim || len > self.budget {
            return Ok(None);
        }
        track.inputs.extend_from_slice(hidden);
        track.outputs.extend_from_slice(outputs);
        if self.entries.iter().any(|e| e.inputs.len() >= track.inputs.len() && same_bits(&e.inputs, &track.inputs)) {
            return Ok(Some(track));
        }
        let mut copy = backend.new_cache(len)?;
        if !backend.copy_kv(cache, &mut copy, 0..len)? {
            return Ok(None);
        }
        // A kept prompt that this one extends is no longer needed.
        self.entries.retain(|e| !(e.inputs.len() <= track.inputs.len() && same_bits(&e.inputs, &track.inputs)));
        self.entries.push(Prefix {
            inputs: track.inputs.clone(),
            outputs: track.outputs.clone(),
            cache: copy,
            last_used: Instant::now(),
        });
        while self.held(dim) > self.budget {
            let oldest = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i);
            self.entries.remove(oldest.expect("over budget means not empty"));
        }
        Ok(Some(track))
    }
}
