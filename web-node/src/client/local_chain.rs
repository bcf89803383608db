//! [`LocalChain`]: a [`LayerChain`] of in-process executors.

use std::ops::Range;

use super::LayerChain;
use crate::engine::{Backend, BlockExecutor, EngineError, SessionId};

/// Why a [`LocalChain`] cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum LocalChainError {
    /// The executors' ranges leave a gap or overlap.
    #[error("executors must cover the layers in order: layer {expected} comes next, an executor runs {found:?}")]
    Gap {
        /// The layer the next executor must start at.
        expected: usize,
        /// What it runs.
        found: Range<usize>,
    },
    /// The executors stop before the last layer (or there are none).
    #[error("executors end at layer {end}, the model has {n_layers} layers")]
    Incomplete {
        /// Where the last executor ends.
        end: usize,
        /// Layers of the model (0 when no executor was given).
        n_layers: usize,
    },
    /// `forward` without a sequence begun.
    #[error("forward before begin")]
    NotBegun,
    /// An executor failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A chain of in-process executors that together cover every layer, in order.
pub struct LocalChain<B: Backend> {
    executors: Vec<BlockExecutor<B>>,
    sessions: Vec<Option<SessionId>>,
}

impl<B: Backend> LocalChain<B> {
    /// Builds a chain; the executors' ranges must be contiguous from layer 0 to the last layer.
    pub fn new(executors: Vec<BlockExecutor<B>>) -> Result<Self, LocalChainError> {
        let mut next = 0;
        for e in &executors {
            let r = e.layers();
            if r.start != next {
                return Err(LocalChainError::Gap { expected: next, found: r });
            }
            next = r.end;
        }
        let n_layers = executors.first().map_or(0, |e| e.backend().config().n_layers);
        if executors.is_empty() || next != n_layers {
            return Err(LocalChainError::Incomplete { end: next, n_layers });
        }
        let sessions = vec![None; executors.len()];
        Ok(Self { executors, sessions })
    }

    /// The executors, in order.
    pub fn executors(&self) -> &[BlockExecutor<B>] {
        &self.executors
    }
}

impl<B: Backend> LayerChain for LocalChain<B> {
    type Error = LocalChainError;

    async fn begin(&mut self, max_len: usize) -> Result<(), LocalChainError> {
        self.end().await?;
        for (e, s) in self.executors.iter_mut().zip(&mut self.sessions) {
            *s = Some(e.open_session(max_len)?);
        }
        Ok(())
    }

    async fn forward(&mut self, hidden: &[f32], n_tokens: usize) -> Result<Vec<f32>, LocalChainError> {
        let mut x = hidden.to_vec();
        for (e, s) in self.executors.iter_mut().zip(&self.sessions) {
            let id = s.ok_or(LocalChainError::NotBegun)?;
            x = e.step(id, &x, n_tokens).await?;
        }
        Ok(x)
    }

    async fn end(&mut self) -> Result<(), LocalChainError> {
        for (e, s) in self.executors.iter_mut().zip(&mut self.sessions) {
            if let Some(id) = s.take() {
                e.close_session(id)?;
            }
        }
        Ok(())
    }
}
