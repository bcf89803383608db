//! One type over every backend, chosen at run time.

use std::ops::Range;
use std::sync::Arc;

use super::cpu::{CpuBackend, CpuCache};
use super::gpu::{GpuBackend, GpuCache, GpuContext};
use super::{Backend, BatchItem, EngineError};
use crate::model::{LayerWeights, LlamaConfig};

/// A backend picked at run time: the CPU, or our WGSL kernels through wgpu.
pub enum AnyBackend {
    /// [`CpuBackend`].
    Cpu(CpuBackend),
    /// [`GpuBackend`].
    Gpu(GpuBackend),
}

/// The per-session cache of an [`AnyBackend`].
pub enum AnyCache {
    /// Cache of the CPU backend.
    Cpu(CpuCache),
    /// Cache of the GPU backend.
    Gpu(GpuCache),
}

impl AnyBackend {
    /// A CPU backend over `layers` (the weights of `range`).
    pub fn cpu(config: LlamaConfig, range: Range<usize>, layers: Vec<LayerWeights>) -> Result<Self, EngineError> {
        CpuBackend::new(config, range, layers).map(AnyBackend::Cpu)
    }

    /// A wgpu backend on `ctx`, uploading `layers` (the weights of `range`).
    pub fn gpu(
        ctx: Arc<GpuContext>,
        config: LlamaConfig,
        range: Range<usize>,
        layers: &[LayerWeights],
    ) -> Result<Self, EngineError> {
        GpuBackend::new(ctx, config, range, layers).map(AnyBackend::Gpu)
    }
}

impl Backend for AnyBackend {
    type Cache = AnyCache;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Cpu(b) => b.name(),
            AnyBackend::Gpu(b) => b.name(),
        }
    }

    fn config(&self) -> &LlamaConfig {
        match self {
            AnyBackend::Cpu(b) => b.config(),
            AnyBackend::Gpu(b) => b.config(),
        }
    }

    fn layers(&self) -> Range<usize> {
        match self {
            AnyBackend::Cpu(b) => b.layers(),
            AnyBackend::Gpu(b) => b.layers(),
        }
    }

    fn new_cache(&self, max_len: usize) -> Result<AnyCache, EngineError> {
        Ok(match self {
            AnyBackend::Cpu(b) => AnyCache::Cpu(b.new_cache(max_len)?),
            AnyBackend::Gpu(b) => AnyCache::Gpu(b.new_cache(max_len)?),
        })
    }

    fn copy_kv(&self, from: &AnyCache, to: &mut AnyCache, rows: Range<usize>) -> Result<bool, EngineError> {
        match (self, from, to) {
            (AnyBackend::Cpu(b), AnyCache::Cpu(f), AnyCache::Cpu(t)) => b.copy_kv(f, t, rows),
            (AnyBackend::Gpu(b), AnyCache::Gpu(f), AnyCache::Gpu(t)) => b.copy_kv(f, t, rows),
            _ => Err(EngineError::WrongCache),
        }
    }

    async fn forward(
        &self,
        cache: &mut AnyCache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        match (self, cache) {
            (AnyBackend::Cpu(b), AnyCache::Cpu(c)) => b.forward(c, hidden, n_tokens, pos).await,
            (AnyBackend::Gpu(b), AnyCache::Gpu(c)) => b.forward(c, hidden, n_tokens, pos).await,
            _ => Err(EngineError::WrongCache),
        }
    }

    async fn forward_batch(&self, items: Vec<BatchItem<'_, AnyCache>>) -> Result<Vec<Vec<f32>>, EngineError> {
        /// The items' caches as `B`'s, or [`EngineError::WrongCache`].
        fn unwrap<'a, C>(
            items: Vec<BatchItem<'a, AnyCache>>,
            pick: impl Fn(&'a mut AnyCache) -> Option<&'a mut C>,
        ) -> Result<Vec<BatchItem<'a, C>>, EngineError> {
            items
                .into_iter()
                .map(|it| {
                    let cache = pick(it.cache).ok_or(EngineError::WrongCache)?;
                    Ok(BatchItem { cache, hidden: it.hidden, n_tokens: it.n_tokens, pos: it.pos })
                })
                .collect()
        }
        match self {
            AnyBackend::Cpu(b) => {
                b.forward_batch(unwrap(items, |c| if let AnyCache::Cpu(c) = c { Some(c) } else { None })?).await
            }
            AnyBackend::Gpu(b) => {
                b.forward_batch(unwrap(items, |c| if let AnyCache::Gpu(c) = c { Some(c) } else { None })?).await
            }
        }
    }
}
