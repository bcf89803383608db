//! Runs contiguous ranges of decoder layers.
//!
//! Main types: the [`Backend`] trait (one implementation per compute device: [`cpu`] and
//! [`gpu`], our WGSL kernels through wgpu) and [`BlockExecutor`], which holds a backend for
//! layers `[a, b)` and runs independent sessions on it (each with its own KV cache and
//! position). Activations are f32 on every backend; weights stay in their stored format and
//! are dequantized inside the kernels.
//!
//! This module does not tokenize, embed or sample (see [`crate::client`]) and does no I/O.

mod any;
pub mod cpu;
mod executor;
pub mod gpu;
mod prefix;
pub mod reference;
mod rope;
pub mod window;

pub use any::{AnyBackend, AnyCache};
pub use executor::{BatchStep, BlockExecutor, ExecutorConfig, SessionId, DEFAULT_PREFIX_CACHE_TOKENS};
pub use rope::{rope_inv_freq, rope_inv_freq_local, uses_local_rope};

use std::future::Future;
use std::ops::Range;

use crate::model::LlamaConfig;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An input tensor has the wrong length.
    #[error("{what}: expected {expected} values, got {actual}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Values expected.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// A step would run past the session's KV-cache capacity.
    #[error("session {session}: {pos} + {n_tokens} tokens exceeds its capacity of {capacity}")]
    ContextFull {
        /// Session.
        session: u64,
        /// Tokens already in the cache.
        pos: usize,
        /// Tokens in this step.
        n_tokens: usize,
        /// Cache capacity.
        capacity: usize,
    },
    /// A step named another position than the session has reached (the client and the
    /// server disagree on the sequence).
    #[error("session {session} holds {held} tokens, a step at position {asked} was asked")]
    WrongPosition {
        /// Session.
        session: u64,
        /// Tokens the session holds (the only position it can continue at).
        held: usize,
        /// Position asked for.
        asked: usize,
    },
    /// No session with that id (never opened, or closed).
    #[error("unknown session {0}")]
    UnknownSession(u64),
    /// The executor already runs its maximum number of sessions.
    #[error("too many sessions: limit is {0}")]
    TooManySessions(usize),
    /// A session asked for more tokens than the executor allows.
    #[error("session length {asked} exceeds the limit of {limit}")]
    SessionTooLong {
        /// Length asked for.
        asked: usize,
        /// Limit.
        limit: usize,
    },
    /// The layer weights do not fit the configuration.
    #[error("layer {layer}: {what}")]
    BadWeights {
        /// Layer index in the model.
        layer: usize,
        /// What is wrong.
        what: String,
    },
    /// A session cache was handed to a backend of another kind.
    #[error("cache belongs to another backend")]
    WrongCache,
    /// The GPU backend failed (no adapter, limits too small, device lost, ...).
    #[error("gpu: {0}")]
    Gpu(String),
    /// The GPU device is lost (driver reset, removed, destroyed): every later operation fails
    /// with this until the node builds a new device.
    #[error("gpu device lost: {0}")]
    DeviceLost(String),
    /// The device ran out of memory allocating or running something; nothing else was
    /// changed, so other sessions go on and the same request may succeed later.
    #[error("out of gpu memory: {what}{}", bytes.map(|b| format!(" ({b} bytes)")).unwrap_or_default())]
    OutOfMemory {
        /// What was being allocated or run (a buffer label, `forward`, ...).
        what: String,
        /// Bytes asked for, when one allocation is to blame.
        bytes: Option<u64>,
    },
    /// The executor is not reachable (its compute loop has stopped).
    #[error("executor unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    /// Whether this is [`EngineError::OutOfMemory`]: the device is full for now, the request
    /// may succeed when fewer sessions hold memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, EngineError::OutOfMemory { .. })
    }
}

/// A compute device that runs one contiguous range of decoder layers.
///
/// Weights are loaded at construction and never change; everything that belongs to one
/// sequence (KV cache, scratch buffers) lives in [`Backend::Cache`], so one backend serves many
/// sessions.
pub trait Backend {
    /// Per-session state: the KV cache for every layer of the range, plus any scratch space.
    type Cache;

    /// Short backend name (`"cpu"`, `"wgpu"`, `"webgpu"`).
    fn name(&self) -> &'static str;

    /// Model configuration.
    fn config(&self) -> &LlamaConfig;

    /// Model layers this backend runs.
    fn layers(&self) -> Range<usize>;

    /// Allocates a KV cache for up to `max_len` tokens.
    fn new_cache(&self, max_len: usize) -> Result<Self::Cache, EngineError>;

    /// Runs `n_tokens` tokens through every layer of the range.
    ///
    /// `hidden` is `[n_tokens, hidden]` row-major, the tokens at positions
    /// `pos .. pos + n_tokens` of the sequence; attention is causal over the cache's first
    /// `pos` entries plus these tokens, whose keys and values are written at `pos..`. The
    /// caller guarantees `pos + n_tokens <= max_len` and `hidden.len() == n_tokens * hidden`.
    /// Returns the hidden states after the last layer, same shape.
    fn forward(
        &self,
        cache: &mut Self::Cache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> impl Future<Output = Result<Vec<f32>, EngineError>>;

    /// Copies the keys and values of positions `rows` of `from` into the same positions of
    /// `to`, so that `to`, holding the same tokens before them, continues exactly as if it had
    /// run those too (a shared prompt prefix, see [`ExecutorConfig::prefix_cache_tokens`]).
    /// The caller guarantees `rows` fits both. Returns `false`, changing nothing, when the
    /// backend cannot copy caches (the default).
    fn copy_kv(&self, from: &Self::Cache, to: &mut Self::Cache, rows: Range<usize>) -> Result<bool, EngineError> {
        let _ = (from, to, rows);
        Ok(false)
    }

    /// Runs several sequences' steps as one batch: each item is what [`Backend::forward`]
    /// takes (its own cache, tokens and position), and the outputs come back in item order.
    ///
    /// A backend that overrides this does the weight products once over every item's tokens
    /// and attention per item, and must return for each item exactly what `forward` would
    /// (bit for bit, whatever else shares the batch). The default runs the items one after
    /// the other. An error fails the whole batch (callers check each item's shape and
    /// capacity first, so only device errors remain).
    fn forward_batch(
        &self,
        items: Vec<BatchItem<'_, Self::Cache>>,
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EngineError>> {
        async move {
            let mut outs = Vec::with_capacity(items.len());
            for it in items {
                outs.push(self.forward(it.cache, it.hidden, it.n_tokens, it.pos).await?);
            }
            Ok(outs)
        }
    }
}

/// One sequence's share of a [`Backend::forward_batch`]: the arguments of
/// [`Backend::forward`].
pub struct BatchItem<'a, C> {
    /// The sequence's cache.
    pub cache: &'a mut C,
    /// `[n_tokens, hidden]` input hidden states.
    pub hidden: &'a [f32],
    /// Tokens in `hidden`.
    pub n_tokens: usize,
    /// Position of the first of them.
    pub pos: usize,
}

/// Checks that `layers` holds one correctly shaped [`LayerWeights`](crate::model::LayerWeights)
/// per layer of `range`.
pub fn check_layers(
    config: &LlamaConfig,
    range: &Range<usize>,
    layers: &[crate::model::LayerWeights],
) -> Result<(), EngineError> {
    if range.start >= range.end || range.end > config.n_layers || layers.len() != range.len() {
        return Err(EngineError::BadWeights {
            layer: range.start,
            what: format!(
                "range {range:?} of a {}-layer model with {} layer weights given",
                config.n_layers,
                layers.len()
            ),
        });
    }
    let (h, q, kv, f) = (config.hidden, config.q_dim(), config.kv_dim(), config.intermediate);
    for (i, w) in layers.iter().enumerate() {
        let layer = range.start + i;
        let mats = [
            ("attn_q", &w.attn_q, q, h),
            ("attn_k", &w.attn_k, kv, h),
            ("attn_v", &w.attn_v, kv, h),
            ("attn_output", &w.attn_output, h, q),
            ("ffn_gate", &w.ffn_gate, f, h),
            ("ffn_up", &w.ffn_up, f, h),
            ("ffn_down", &w.ffn_down, h, f),
        ];
        for (name, m, rows, cols) in mats {
            if m.rows != rows || m.cols != cols {
                return Err(EngineError::BadWeights {
                    layer,
                    what: format!("{name} is [{}, {}], config needs [{rows}, {cols}]", m.rows, m.cols),
                });
            }
        }
        for (name, v, len) in [("attn_norm", &w.attn_norm, h), ("ffn_norm", &w.ffn_norm, h)] {
            if v.len() != len {
                return Err(EngineError::BadWeights {
                    layer,
                    what: format!("{name} has {} values, config needs {len}", v.len()),
                });
            }
        }
        if w.post_norms.is_some() != config.arch.has_post_norms()
            || w.post_norms.as_ref().is_some_and(|n| n.iter().any(|v| v.len() != h))
        {
            return Err(EngineError::BadWeights {
                layer,
                what: format!(
                    "post norms present: {}, {:?} needs [hidden] pairs: {}",
                    w.post_norms.is_some(),
                    config.arch,
                    config.arch.has_post_norms()
                ),
            });
        }
        if w.qk_norm.is_some() != config.arch.has_qk_norm() {
            return Err(EngineError::BadWeights {
                layer,
                what: format!(
                    "q/k norms present: {}, {:?} needs them: {}",
                    w.qk_norm.is_some(),
                    config.arch,
                    config.arch.has_qk_norm()
                ),
            });
        }
        if let Some(norms) = &w.qk_norm {
            if norms.iter().any(|n| n.len() != config.head_dim) {
                return Err(EngineError::BadWeights {
                    layer,
                    what: format!("q/k norms need {} values", config.head_dim),
                });
            }
        }
        if let Some([bq, bk, bv]) = &w.qkv_bias {
            if bq.len() != q || bk.len() != kv || bv.len() != kv {
                return Err(EngineError::BadWeights {
                    layer,
                    what: format!("qkv biases have {}/{}/{} values, need {q}/{kv}/{kv}", bq.len(), bk.len(), bv.len()),
                });
            }
        }
    }
    Ok(())
}
