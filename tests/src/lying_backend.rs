//! Lies a node tells about a computation it has done: noise on its answer, its input returned
//! unchanged, or the answer of an earlier position. [`Lie::apply`] is the one copy of each,
//! used both by the in-process chain fixture's lying proxy
//! ([`Fault::Lie`](crate::chain_fixture::Fault::Lie) and its kin) and by
//! [`LyingBackend`], which the test-only `lying_relay` binary serves with: a block server
//! that computes honestly, lies, and signs the lie as its answer.
//!
//! Test-only, like everything in this crate: nothing in `ait` or on the network reaches it.

use std::ops::Range;

use web_node::engine::{Backend, EngineError};
use web_node::model::LlamaConfig;

/// How a node lies about an answer it computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lie {
    /// Noise of a thousandth of each row's root mean square, alternating in sign, on every
    /// value of the answer.
    Noise,
    /// The input rows, unchanged.
    Echo,
    /// Each one-token step after the first answered with the previous step's last row
    /// (states from an earlier position).
    Stale,
}

impl Lie {
    /// Makes `output`, the true answer to `input` of `n_tokens` rows, this lie. `last` holds
    /// the true last row of the previous step of the same session, and is set to this
    /// step's.
    pub fn apply(self, input: &[f32], output: &mut Vec<f32>, n_tokens: usize, last: &mut Option<Vec<f32>>) {
        let dim = output.len() / n_tokens.max(1);
        let truth_last = output[output.len().saturating_sub(dim)..].to_vec();
        match self {
            Lie::Noise => {
                for row in output.chunks_mut(dim.max(1)) {
                    let rms = (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32).sqrt();
                    for (i, v) in row.iter_mut().enumerate() {
                        *v += if i % 2 == 0 { 1e-3 * rms } else { -1e-3 * rms };
                    }
                }
            }
            Lie::Echo => *output = input.to_vec(),
            Lie::Stale => {
                if let (1, Some(previous)) = (n_tokens, last.as_ref()) {
                    *output = previous.clone();
                }
            }
        }
        *last = Some(truth_last);
    }
}

/// A backend that runs `inner` honestly (its caches stay true) and answers every step with
/// the [`Lie`] of the true answer.
pub struct LyingBackend<B> {
    inner: B,
    lie: Lie,
}

impl<B> LyingBackend<B> {
    /// `inner`, lying in `lie`.
    pub fn new(inner: B, lie: Lie) -> Self {
        LyingBackend { inner, lie }
    }
}

/// A session's cache of a [`LyingBackend`]: the inner backend's, and the true last row of the
/// session's previous step ([`Lie::Stale`]).
pub struct LyingCache<C> {
    inner: C,
    last: Option<Vec<f32>>,
}

impl<B: Backend> Backend for LyingBackend<B> {
    type Cache = LyingCache<B::Cache>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn config(&self) -> &LlamaConfig {
        self.inner.config()
    }

    fn layers(&self) -> Range<usize> {
        self.inner.layers()
    }

    fn new_cache(&self, max_len: usize) -> Result<Self::Cache, EngineError> {
        Ok(LyingCache { inner: self.inner.new_cache(max_len)?, last: None })
    }

    async fn forward(
        &self,
        cache: &mut Self::Cache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let mut out = self.inner.forward(&mut cache.inner, hidden, n_tokens, pos).await?;
        self.lie.apply(hidden, &mut out, n_tokens, &mut cache.last);
        Ok(out)
    }

    fn copy_kv(&self, from: &Self::Cache, to: &mut Self::Cache, rows: Range<usize>) -> Result<bool, EngineError> {
        self.inner.copy_kv(&from.inner, &mut to.inner, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lie_changes_the_answer_as_documented() {
        let input = vec![1.0, 2.0, 3.0, 4.0];
        let truth = vec![3.0, 4.0, 0.0, 5.0];
        let mut last = None;
        let mut noisy = truth.clone();
        Lie::Noise.apply(&input, &mut noisy, 2, &mut last);
        // rms of [3, 4] is sqrt(12.5), of [0, 5] sqrt(12.5).
        let e = 1e-3 * 12.5f32.sqrt();
        assert_eq!(noisy, vec![3.0 + e, 4.0 - e, 0.0 + e, 5.0 - e]);
        assert_eq!(last.as_deref(), Some(&[0.0, 5.0][..]), "the true last row");
        let mut echoed = truth.clone();
        Lie::Echo.apply(&input, &mut echoed, 2, &mut last);
        assert_eq!(echoed, input);
        // A stale session: its prefill is true, then each token gets the previous true row.
        let mut last = None;
        let mut prefill = truth.clone();
        Lie::Stale.apply(&input, &mut prefill, 2, &mut last);
        assert_eq!(prefill, truth);
        let mut step = vec![7.0, 8.0];
        Lie::Stale.apply(&[0.5, 0.5], &mut step, 1, &mut last);
        assert_eq!(step, vec![0.0, 5.0]);
        let mut next = vec![9.0, 9.0];
        Lie::Stale.apply(&[0.5, 0.5], &mut next, 1, &mut last);
        assert_eq!(next, vec![7.0, 8.0]);
    }
}
