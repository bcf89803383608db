//! [`GpuBackend`]: a range of decoder layers on one wgpu device, and its per-session
//! [`GpuCache`].
//!
//! A forward records every layer into one command encoder (one compute pass), writes the
//! step's `(n_tokens, pos)`, the RoPE cos/sin rows and the input hidden states with
//! `queue.write_buffer`, submits, and reads the result back once through a staging buffer the
//! cache keeps. Per layer, 12 dispatches (15 with Qwen2 biases):
//!
//! ```text
//! xn = rms_norm(x)              q = Wq xn        K[pos..] = Wk xn     V[pos..] = Wv xn
//! (+ biases)                    rope(q, K[pos..])                     att = attention(q, K, V)
//! x += Wo att                   xn = rms_norm(x) gate = Wg xn         up = Wu xn
//! gate = silu(gate) * up        x += Wd gate
//! ```
//!
//! K and V projections write straight into the cache rows `pos..`, and the residual adds are
//! the matrix products' epilogue. Prefills longer than [`MAX_CHUNK`] tokens run as several
//! submits of at most that many tokens (same result: attention is causal over the cache).

use std::ops::Range;
use std::sync::Arc;

use super::context::GpuContext;
use super::ops::{self, Op, StepUniform};
use super::weights::GpuMatrix;
use crate::engine::{check_layers, Backend, EngineError};
use crate::model::{LayerWeights, LlamaConfig};

/// Most tokens one submit processes; longer steps are split.
pub const MAX_CHUNK: usize = 256;

/// One layer's weights on the GPU.
#[derive(Debug)]
struct GpuLayer {
    attn_norm: wgpu::Buffer,
    q: GpuMatrix,
    k: GpuMatrix,
    v: GpuMatrix,
    o: GpuMatrix,
    bias: Option<[wgpu::Buffer; 3]>,
    ffn_norm: wgpu::Buffer,
    gate: GpuMatrix,
    up: GpuMatrix,
    down: GpuMatrix,
}

/// Runs layers `[a, b)` of a Llama-family model with our WGSL kernels.
#[derive(Debug)]
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    config: LlamaConfig,
    range: Range<usize>,
    layers: Vec<GpuLayer>,
    /// RoPE inverse frequencies ([`rope_inv_freq`](crate::engine::rope_inv_freq)), `[head_dim / 2]`.
    inv_freq: Vec<f32>,
}

/// Activation buffers for up to `cap` tokens and every kernel bound to them.
#[derive(Debug)]
struct Scratch {
    cap: usize,
    /// Residual stream, input and output: `(cap, hidden)`.
    x: wgpu::Buffer,
    /// RoPE `(cos, sin)` rows: `(cap, head_dim / 2, 2)`.
    cs: wgpu::Buffer,
    /// Readback of `x`.
    staging: wgpu::Buffer,
    /// Every layer's kernels, in order.
    ops: Vec<Op>,
}

/// Per-session state of [`GpuBackend`]: KV cache buffers, the step uniform and the scratch
/// buffers with their bind groups (created once, rebuilt only when a step needs more tokens).
#[derive(Debug)]
pub struct GpuCache {
    max_len: usize,
    /// Per layer, `(max_len, kv_dim)` f32.
    k: Vec<wgpu::Buffer>,
    /// Per layer, `(max_len, kv_dim)` f32.
    v: Vec<wgpu::Buffer>,
    /// [`StepUniform`] of the current step.
    step: wgpu::Buffer,
    scratch: Option<Scratch>,
}

impl GpuCache {
    /// Tokens this cache holds at most.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokens one submit can take without rebuilding the scratch buffers.
    pub fn scratch_capacity(&self) -> usize {
        self.scratch.as_ref().map_or(0, |s| s.cap)
    }
}

fn f32s(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl GpuBackend {
    /// Uploads the weights of layers `range` (one [`LayerWeights`] per layer, in order), kept
    /// in their stored types; [`EngineError::OutOfMemory`] if they do not fit the device.
    pub fn new(
        ctx: Arc<GpuContext>,
        config: LlamaConfig,
        range: Range<usize>,
        layers: &[LayerWeights],
    ) -> Result<Self, EngineError> {
        check_layers(&config, &range, layers)?;
        if config.head_dim > ops::MAX_HEAD_DIM || !config.head_dim.is_multiple_of(2) {
            return Err(EngineError::Gpu(format!(
                "head dim {} unsupported (even, at most {})",
                config.head_dim,
                ops::MAX_HEAD_DIM
            )));
        }
        let mut gpu_layers = Vec::with_capacity(layers.len());
        for (i, w) in layers.iter().enumerate() {
            let l = range.start + i;
            let up = |name: &str, m| GpuMatrix::upload(&ctx, &format!("blk.{l}.{name}"), m);
            let vec = |name: &str, v: &[f32]| ctx.storage_init(&format!("blk.{l}.{name}"), f32s(v));
            let bias = match &w.qkv_bias {
                Some([bq, bk, bv]) => Some([vec("attn_q.bias", bq)?, vec("attn_k.bias", bk)?, vec("attn_v.bias", bv)?]),
                None => None,
            };
            gpu_layers.push(GpuLayer {
                attn_norm: vec("attn_norm", &w.attn_norm)?,
                q: up("attn_q", &w.attn_q)?,
                k: up("attn_k", &w.attn_k)?,
                v: up("attn_v", &w.attn_v)?,
                o: up("attn_output", &w.attn_output)?,
                bias,
                ffn_norm: vec("ffn_norm", &w.ffn_norm)?,
                gate: up("ffn_gate", &w.ffn_gate)?,
                up: up("ffn_up", &w.ffn_up)?,
                down: up("ffn_down", &w.ffn_down)?,
            });
        }
        let inv_freq = crate::engine::rope_inv_freq(&config);
        Ok(Self { ctx, config, range, layers: gpu_layers, inv_freq })
    }

    /// The device this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Largest step (in tokens) whose scratch buffers fit the device's binding limit.
    fn chunk_limit(&self) -> usize {
        let c = &self.config;
        let widest = c.hidden.max(c.q_dim()).max(c.intermediate) as u64 * 4;
        let by_limit = (self.ctx.max_binding() / widest.max(1)) as usize;
        by_limit.clamp(1, MAX_CHUNK)
    }

    /// Allocates scratch buffers for `cap` tokens and binds every kernel to them;
    /// [`EngineError::OutOfMemory`] if they do not fit the device.
    fn build_scratch(&self, cache: &GpuCache, cap: usize) -> Result<Scratch, EngineError> {
        let ctx = &*self.ctx;
        let c = &self.config;
        let (hidden, q_dim, kv_dim, inter) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        let f = |n: usize| (n * cap * 4) as u64;
        let x = ctx.storage("x", f(hidden))?;
        let xn = ctx.storage("xn", f(hidden))?;
        let q = ctx.storage("q", f(q_dim))?;
        let att = ctx.storage("att", f(q_dim))?;
        let gate = ctx.storage("gate", f(inter))?;
        let upb = ctx.storage("up", f(inter))?;
        let cs = ctx.storage("rope cos/sin", f(c.head_dim))?;
        let staging = ctx.staging("x readback", f(hidden))?;
        let step = &cache.step;
        // The kernels' parameter uniforms, bind groups and pipelines, in one scope.
        let ops = ctx.alloc("kernel bindings", None, || {
            let mut list = Vec::with_capacity(self.layers.len() * 15);
            for (i, w) in self.layers.iter().enumerate() {
                let l = self.range.start + i;
                let (kc, vc) = (&cache.k[i], &cache.v[i]);
                let n = |s: &str| format!("blk.{l}.{s}");
                list.push(ops::rms_norm_op(ctx, &n("attn_norm"), step, &x, &w.attn_norm, &xn, hidden, c.rms_eps));
                list.push(ops::matmul_op(ctx, &n("attn_q"), &w.q, step, &xn, &q, false, false));
                list.push(ops::matmul_op(ctx, &n("attn_k"), &w.k, step, &xn, kc, true, false));
                list.push(ops::matmul_op(ctx, &n("attn_v"), &w.v, step, &xn, vc, true, false));
                if let Some([bq, bk, bv]) = &w.bias {
                    list.push(ops::add_op(ctx, &n("attn_q.bias"), step, bq, &q, q_dim, false, false));
                    list.push(ops::add_op(ctx, &n("attn_k.bias"), step, bk, kc, kv_dim, false, true));
                    list.push(ops::add_op(ctx, &n("attn_v.bias"), step, bv, vc, kv_dim, false, true));
                }
                list.push(ops::rope_op(ctx, &n("rope"), step, &cs, &q, kc, c.n_heads, c.n_kv_heads, c.head_dim));
                list.push(ops::attention_op(
                    ctx,
                    &n("attention"),
                    step,
                    &q,
                    kc,
                    vc,
                    &att,
                    c.n_heads,
                    c.n_kv_heads,
                    c.head_dim,
                ));
                list.push(ops::matmul_op(ctx, &n("attn_output"), &w.o, step, &att, &x, false, true));
                list.push(ops::rms_norm_op(ctx, &n("ffn_norm"), step, &x, &w.ffn_norm, &xn, hidden, c.rms_eps));
                list.push(ops::matmul_op(ctx, &n("ffn_gate"), &w.gate, step, &xn, &gate, false, false));
                list.push(ops::matmul_op(ctx, &n("ffn_up"), &w.up, step, &xn, &upb, false, false));
                list.push(ops::silu_mul_op(ctx, &n("silu_mul"), step, &gate, &upb, inter));
                list.push(ops::matmul_op(ctx, &n("ffn_down"), &w.down, step, &gate, &x, false, true));
            }
            Ok(list)
        })?;
        Ok(Scratch { cap, x, cs, staging, ops })
    }

    /// One submit for `n <= chunk_limit()` tokens at `pos`.
    async fn forward_chunk(
        &self,
        cache: &mut GpuCache,
        hidden: &[f32],
        n: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let ctx = &*self.ctx;
        if cache.scratch.as_ref().is_none_or(|s| s.cap < n) {
            let cap = n.next_power_of_two().clamp(16, self.chunk_limit()).max(n);
            cache.scratch = None;
            // On failure the cache keeps no scratch; the next step builds it again.
            let scratch = self.build_scratch(cache, cap)?;
            cache.scratch = Some(scratch);
        }
        let s = cache.scratch.as_ref().expect("scratch was just built");
        let scopes = ctx.scopes()?;
        let q = ctx.queue();
        q.write_buffer(&cache.step, 0, bytemuck::bytes_of(&StepUniform::new(n, pos)));
        q.write_buffer(&s.cs, 0, f32s(&ops::rope_table(&self.inv_freq, pos, n)));
        q.write_buffer(&s.x, 0, f32s(hidden));
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
            for op in &s.ops {
                op.record(&mut pass, n as u32);
            }
        }
        let bytes = std::mem::size_of_val(hidden) as u64;
        enc.copy_buffer_to_buffer(&s.x, 0, &s.staging, 0, bytes);
        ctx.submit("forward", enc, scopes).await?;
        ctx.read_f32(&s.staging, hidden.len()).await
    }
}

impl Backend for GpuBackend {
    type Cache = GpuCache;

    /// `"wgpu"` natively, `"webgpu"` in a browser (the same kernels on the page's WebGPU).
    fn name(&self) -> &'static str {
        if cfg!(target_arch = "wasm32") {
            "webgpu"
        } else {
            "wgpu"
        }
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn layers(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Allocates the KV cache; [`EngineError::OutOfMemory`] (and nothing kept) if the
    /// device cannot hold it. Scratch buffers come with the first step.
    fn new_cache(&self, max_len: usize) -> Result<GpuCache, EngineError> {
        let kv_dim = self.config.kv_dim();
        let bytes = (max_len as u64)
            .checked_mul(kv_dim as u64 * 4)
            .ok_or(EngineError::SessionTooLong { asked: max_len, limit: usize::MAX / (kv_dim * 4).max(1) })?;
        self.ctx.check_binding("kv cache", bytes)?;
        let ctx = &*self.ctx;
        let layers = self.range.clone();
        let k = layers.clone().map(|l| ctx.storage(&format!("blk.{l}.k_cache"), bytes)).collect::<Result<_, _>>()?;
        let v = layers.map(|l| ctx.storage(&format!("blk.{l}.v_cache"), bytes)).collect::<Result<_, _>>()?;
        let step = ctx.alloc("step", None, || Ok(ctx.uniform("step", bytemuck::bytes_of(&StepUniform::new(0, 0)))))?;
        Ok(GpuCache { max_len, k, v, step, scratch: None })
    }

    async fn forward(
        &self,
        cache: &mut GpuCache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let dim = self.config.hidden;
        if hidden.len() != n_tokens * dim {
            return Err(EngineError::Shape { what: "hidden", expected: n_tokens * dim, actual: hidden.len() });
        }
        if pos + n_tokens > cache.max_len {
            return Err(EngineError::ContextFull { session: 0, pos, n_tokens, capacity: cache.max_len });
        }
        let chunk = self.chunk_limit();
        let mut out = Vec::with_capacity(hidden.len());
        let mut done = 0;
        while done < n_tokens {
            let n = chunk.min(n_tokens - done);
            let part = &hidden[done * dim..(done + n) * dim];
            out.extend(self.forward_chunk(cache, part, n, pos + done).await?);
            done += n;
        }
        Ok(out)
    }
}
