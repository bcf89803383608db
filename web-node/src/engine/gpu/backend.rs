//! [`GpuBackend`]: a range of decoder layers on one wgpu device, and its per-session
//! [`GpuCache`].
//!
//! A forward records every layer into one command encoder (one compute pass), writes the
//! step's `(n_tokens, pos)`, the RoPE cos/sin rows and the input hidden states with
//! `queue.write_buffer`, submits, and reads the result back once through a staging buffer the
//! cache keeps. Per layer, 12 dispatches (15 with Qwen2 biases, 13 with Qwen3's q/k norms, 16 with
//! Gemma's post-norms, whose output products go to scratch, are normed and then added):
//!
//! ```text
//! xn = rms_norm(x)              q = Wq xn        K[pos..] = Wk xn     V[pos..] = Wv xn
//! (+ biases) (head_norm(q, K[pos..]))
//! rope(q, K[pos..])             att = attention(q, K, V)
//! x += Wo att                   xn = rms_norm(x) gate = Wg xn         up = Wu xn
//! gate = silu(gate) * up        x += Wd gate
//! ```
//!
//! K and V projections write straight into the cache rows `pos..`, and the residual adds are
//! the matrix products' epilogue. Prefills longer than [`MAX_CHUNK`] tokens run as several
//! submits of at most that many tokens (same result: attention is causal over the cache).
//!
//! A batch ([`Backend::forward_batch`]) of several sessions' steps is one submit over all
//! their tokens, with activation buffers the backend keeps for batches ([`BatchScratch`]).
//! Per layer, two passes: the first runs the norm, the Q/K/V products and RoPE over every
//! token, writing new keys and values to scratch rows; buffer copies move each session's rows
//! into its cache at its position; the second pass runs attention once per session (its own
//! step uniform says its tokens, position and first row) and then the output product and the
//! FFN over every token. Each kernel computes a token from that token's row alone, with the
//! same arithmetic whatever the token count, so a session's output is the same bits in a
//! batch as alone, and however its prompt is cut into chunks.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::context::GpuContext;
use super::ops::{self, Op, StepUniform};
use super::weights::GpuMatrix;
use crate::engine::reference::AttnOpts;
use crate::engine::window::{window_rows, Window};
use crate::engine::{check_layers, Backend, BatchItem, EngineError};
use crate::model::{LayerWeights, LlamaConfig};

/// Most tokens one submit processes; longer steps are split.
pub const MAX_CHUNK: usize = 256;

// A step never adds more rows to a sliding buffer than it has room for (`engine::window`).
const _: () = assert!(MAX_CHUNK <= crate::engine::window::WINDOW_STEP);

/// One layer's weights on the GPU.
#[derive(Debug)]
struct GpuLayer {
    attn_norm: wgpu::Buffer,
    q: GpuMatrix,
    k: GpuMatrix,
    v: GpuMatrix,
    o: GpuMatrix,
    bias: Option<[wgpu::Buffer; 3]>,
    /// Qwen3's q and k norm weights, `(2, head_dim)`.
    qk_norm: Option<wgpu::Buffer>,
    /// Gemma's norms of the attention and FFN outputs, `(hidden)` each.
    post_norms: Option<[wgpu::Buffer; 2]>,
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
    /// The windowed layers' frequencies when they differ (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
    /// Buffers for batches, taken out for a batch's submit and put back after; a batch that
    /// finds none (another batch holds it, or a device error dropped it) builds its own.
    batch: Mutex<Option<Box<BatchScratch>>>,
}

/// One step's activation buffers, `(cap, width)` f32 each, read and written by the kernels.
#[derive(Debug)]
struct Activations {
    /// Residual stream, input and output: `(cap, hidden)`.
    x: wgpu::Buffer,
    /// Normed `x`: `(cap, hidden)`.
    xn: wgpu::Buffer,
    /// Queries and attention outputs: `(cap, q_dim)`.
    q: wgpu::Buffer,
    att: wgpu::Buffer,
    /// FFN gate and up projections: `(cap, intermediate)`.
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    /// RoPE `(cos, sin)` rows, each token's at its own position: `(cap, head_dim / 2, 2)`, then
    /// as many for the windowed layers' frequencies when they differ (Gemma 3).
    cs: wgpu::Buffer,
    /// The pair where the windowed layers' table starts in `cs` (`cap * head_dim / 2`).
    cs_local: usize,
    /// Readback of `x`.
    staging: wgpu::Buffer,
}

/// Activation buffers for up to `cap` tokens and every kernel bound to them.
#[derive(Debug)]
struct Scratch {
    cap: usize,
    acts: Activations,
    /// Every layer's kernels, in order.
    ops: Vec<Op>,
}

/// Source of [`BatchScratch::id`].
static NEXT_BATCH_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Activation buffers for a batch of up to `cap` tokens of several sessions, and the kernels
/// bound to them that touch no session's cache.
#[derive(Debug)]
struct BatchScratch {
    /// Tells a cache's attention bindings made for this scratch from older ones.
    id: u64,
    cap: usize,
    /// [`StepUniform`] of the whole batch (every token, position 0).
    step: wgpu::Buffer,
    /// Every session's tokens, in item order; each session's attention kernel reads its
    /// queries and writes its outputs at its rows.
    acts: Activations,
    /// New keys and values: `(cap, kv_dim)`, copied into each session's cache.
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    /// Per layer: norm, Q/K/V products (keys and values into `k`, `v`), biases, RoPE.
    pre: Vec<Vec<Op>>,
    /// Per layer: output product and residual add, norm, FFN and residual add.
    post: Vec<Vec<Op>>,
}

/// Per-session state of [`GpuBackend`]: KV cache buffers, the step uniform and the scratch
/// buffers with their bind groups (created once, rebuilt only when a step needs more tokens).
#[derive(Debug)]
pub struct GpuCache {
    max_len: usize,
    /// Per layer, rows of its buffers: `max_len`, or fewer for a windowed layer (see
    /// [`crate::engine::window`]).
    rows: Vec<usize>,
    /// The windowed layers' sliding buffers, if they are shorter than the session, with
    /// their step uniform (positions relative to the buffers' base) and the buffer their
    /// rows pass through when they slide.
    window: Option<(Window, wgpu::Buffer, wgpu::Buffer)>,
    /// Per layer, `(rows, kv_dim)` f32.
    k: Vec<wgpu::Buffer>,
    /// Per layer, `(rows, kv_dim)` f32.
    v: Vec<wgpu::Buffer>,
    /// [`StepUniform`] of the current step (alone, or this session's share of a batch).
    step: wgpu::Buffer,
    scratch: Option<Box<Scratch>>,
    /// Per layer, attention over this cache bound to the [`BatchScratch`] of that id (the
    /// old one's buffers live until this session's next batch rebinds them).
    batch_attention: Option<(u64, Vec<Op>)>,
}

impl GpuCache {
    /// Whether layer `i`'s buffers slide.
    fn slides(&self, i: usize) -> bool {
        self.rows[i] < self.max_len
    }

    /// The step uniform layer `i`'s kernels read.
    fn step_of(&self, i: usize) -> &wgpu::Buffer {
        match &self.window {
            Some((_, step, _)) if self.slides(i) => step,
            _ => &self.step,
        }
    }

    /// The row of layer `i` that holds position `pos`.
    fn row_of(&self, i: usize, pos: usize) -> usize {
        match &self.window {
            Some((w, _, _)) if self.slides(i) => pos - w.base,
            _ => pos,
        }
    }

    /// Before a step of `n` tokens at `pos`: records the moves that make room in the sliding
    /// buffers ([`Window::make_room`]) into `enc`, and writes the windowed layers' step
    /// uniform (`base_row`: the step's first row in the activations; `row`: bytes per row).
    fn slide(&mut self, queue: &wgpu::Queue, enc: &mut wgpu::CommandEncoder, row: u64, [n, pos, base_row]: [usize; 3]) {
        let Some((w, step, through)) = &mut self.window else {
            return;
        };
        if let Some(keep) = w.make_room(pos, n).filter(|k| !k.is_empty()) {
            let (from, bytes) = (keep.start as u64 * row, keep.len() as u64 * row);
            for i in (0..self.rows.len()).filter(|&i| self.rows[i] < self.max_len) {
                for b in [&self.k[i], &self.v[i]] {
                    enc.copy_buffer_to_buffer(b, from, through, 0, bytes);
                    enc.copy_buffer_to_buffer(through, 0, b, 0, bytes);
                }
            }
        }
        queue.write_buffer(step, 0, bytemuck::bytes_of(&StepUniform::at_row(n, pos - w.base, base_row)));
    }

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
        if config.arch.has_post_norms() && config.intermediate < config.hidden {
            return Err(EngineError::Gpu(format!(
                "{:?} with ffn {} narrower than hidden {}: post-norm scratch does not fit",
                config.arch, config.intermediate, config.hidden
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
            let post_norms = match &w.post_norms {
                Some([a, f]) => Some([vec("post_attention_norm", a)?, vec("post_ffw_norm", f)?]),
                None => None,
            };
            let qk_norm = match &w.qk_norm {
                Some([nq, nk]) => Some(vec("qk_norm", &[nq.as_slice(), nk.as_slice()].concat())?),
                None => None,
            };
            gpu_layers.push(GpuLayer {
                attn_norm: vec("attn_norm", &w.attn_norm)?,
                q: up("attn_q", &w.attn_q)?,
                k: up("attn_k", &w.attn_k)?,
                v: up("attn_v", &w.attn_v)?,
                o: up("attn_output", &w.attn_output)?,
                bias,
                qk_norm,
                post_norms,
                ffn_norm: vec("ffn_norm", &w.ffn_norm)?,
                gate: up("ffn_gate", &w.ffn_gate)?,
                up: up("ffn_up", &w.ffn_up)?,
                down: up("ffn_down", &w.ffn_down)?,
            });
        }
        let inv_freq = crate::engine::rope_inv_freq(&config);
        let inv_freq_local = crate::engine::rope_inv_freq_local(&config);
        Ok(Self { ctx, config, range, layers: gpu_layers, inv_freq, inv_freq_local, batch: Mutex::new(None) })
    }

    /// The device this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// A cache for `max_len` tokens; windowed layers get sliding buffers when `slide` (always,
    /// but for the tests that compare them with full-length ones).
    fn cache(&self, max_len: usize, slide: bool) -> Result<GpuCache, EngineError> {
        let kv_dim = self.config.kv_dim();
        let row = kv_dim as u64 * 4;
        let bytes = (max_len as u64)
            .checked_mul(row)
            .ok_or(EngineError::SessionTooLong { asked: max_len, limit: usize::MAX / (kv_dim * 4).max(1) })?;
        let rows_of = |l| if slide { window_rows(&self.config, l, max_len) } else { max_len };
        let rows: Vec<usize> = self.range.clone().map(rows_of).collect();
        self.ctx.check_binding("kv cache", rows.iter().max().map_or(bytes, |&r| r as u64 * row))?;
        let ctx = &*self.ctx;
        let buffers = |what: &str| -> Result<Vec<wgpu::Buffer>, EngineError> {
            let layers = self.range.clone().zip(&rows);
            layers.map(|(l, &r)| ctx.storage(&format!("blk.{l}.{what}"), r as u64 * row)).collect()
        };
        let (k, v) = (buffers("k_cache")?, buffers("v_cache")?);
        let uniform =
            |what: &str| ctx.alloc(what, None, || Ok(ctx.uniform(what, bytemuck::bytes_of(&StepUniform::new(0, 0)))));
        let step = uniform("step")?;
        let window = match Window::of(&self.config, self.range.clone(), max_len).filter(|_| slide) {
            Some(w) => {
                let through = ctx.storage("window slide", (w.window.max(2) - 1) as u64 * row)?;
                Some((w, uniform("window step")?, through))
            }
            None => None,
        };
        Ok(GpuCache { max_len, rows, window, k, v, step, scratch: None, batch_attention: None })
    }

    /// A cache without sliding buffers (to compare with one that has them).
    #[cfg(test)]
    pub(crate) fn full_cache(&self, max_len: usize) -> Result<GpuCache, EngineError> {
        self.cache(max_len, false)
    }

    /// Largest step (in tokens) whose scratch buffers fit the device's binding limit.
    fn chunk_limit(&self) -> usize {
        let c = &self.config;
        let widest = c.hidden.max(c.q_dim()).max(c.intermediate) as u64 * 4;
        let by_limit = (self.ctx.max_binding() / widest.max(1)) as usize;
        by_limit.clamp(1, MAX_CHUNK)
    }

    /// Layer `i`'s kernels up to RoPE: norm, Q/K/V products, biases, RoPE. Keys and values go
    /// to `[k, v]`: the cache's rows at the step's position (`kv_at_pos`), or the step's rows.
    fn pre_ops(
        &self,
        i: usize,
        step: &wgpu::Buffer,
        acts: &Activations,
        [k, v]: [&wgpu::Buffer; 2],
        kv_at_pos: bool,
        list: &mut Vec<Op>,
    ) {
        let (ctx, c, w) = (&*self.ctx, &self.config, &self.layers[i]);
        let n = |s: &str| format!("blk.{}.{s}", self.range.start + i);
        list.push(ops::rms_norm_op(ctx, &n("attn_norm"), step, &acts.x, &w.attn_norm, &acts.xn, c.hidden, c.rms_eps));
        list.push(ops::matmul_op(ctx, &n("attn_q"), &w.q, step, &acts.xn, &acts.q, false, false));
        list.push(ops::matmul_op(ctx, &n("attn_k"), &w.k, step, &acts.xn, k, kv_at_pos, false));
        list.push(ops::matmul_op(ctx, &n("attn_v"), &w.v, step, &acts.xn, v, kv_at_pos, false));
        if let Some([bq, bk, bv]) = &w.bias {
            list.push(ops::add_op(ctx, &n("attn_q.bias"), step, bq, &acts.q, c.q_dim(), false, false));
            list.push(ops::add_op(ctx, &n("attn_k.bias"), step, bk, k, c.kv_dim(), false, kv_at_pos));
            list.push(ops::add_op(ctx, &n("attn_v.bias"), step, bv, v, c.kv_dim(), false, kv_at_pos));
        }
        if let Some(norm) = &w.qk_norm {
            let (heads, kv_heads, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
            list.push(ops::head_norm_op(ctx, &n("qk_norm"), step, norm, &acts.q, k, heads, kv_heads, hd, c.rms_eps));
        }
        let cs_base = if crate::engine::uses_local_rope(c, self.range.start + i) { acts.cs_local } else { 0 };
        let (heads, kv_heads, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        list.push(ops::rope_op(ctx, &n("rope"), step, &acts.cs, &acts.q, k, heads, kv_heads, hd, cs_base));
    }

    /// Layer `i`'s attention of queries `q` over layer `i` of `cache` into `att`, for the
    /// tokens the cache's step uniform names.
    fn attention_op(&self, i: usize, cache: &GpuCache, q: &wgpu::Buffer, att: &wgpu::Buffer) -> Op {
        let (c, step) = (&self.config, cache.step_of(i));
        let what = format!("blk.{}.attention", self.range.start + i);
        let opts = AttnOpts::of_layer(c, self.range.start + i);
        let (heads, kv_heads, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        ops::attention_op(&self.ctx, &what, step, q, &cache.k[i], &cache.v[i], att, heads, kv_heads, hd, opts)
    }

    /// Layer `i`'s kernels after attention: output product and residual add, norm, FFN and
    /// residual add.
    fn post_ops(&self, i: usize, step: &wgpu::Buffer, acts: &Activations, list: &mut Vec<Op>) {
        let (ctx, c, w) = (&*self.ctx, &self.config, &self.layers[i]);
        let n = |s: &str| format!("blk.{}.{s}", self.range.start + i);
        let h = c.hidden;
        match &w.post_norms {
            // Gemma: x += norm(Wo att), through buffers free at this point (`up`, then `xn`;
            // `up` holds (n, hidden) as the backend requires intermediate >= hidden for these).
            Some([post_attn, _]) => {
                list.push(ops::matmul_op(ctx, &n("attn_output"), &w.o, step, &acts.att, &acts.up, false, false));
                list.push(ops::rms_norm_op(
                    ctx,
                    &n("post_attention_norm"),
                    step,
                    &acts.up,
                    post_attn,
                    &acts.xn,
                    h,
                    c.rms_eps,
                ));
                list.push(ops::add_op(ctx, &n("attn residual"), step, &acts.xn, &acts.x, h, true, false));
            }
            None => list.push(ops::matmul_op(ctx, &n("attn_output"), &w.o, step, &acts.att, &acts.x, false, true)),
        }
        list.push(ops::rms_norm_op(ctx, &n("ffn_norm"), step, &acts.x, &w.ffn_norm, &acts.xn, h, c.rms_eps));
        list.push(ops::matmul_op(ctx, &n("ffn_gate"), &w.gate, step, &acts.xn, &acts.gate, false, false));
        list.push(ops::matmul_op(ctx, &n("ffn_up"), &w.up, step, &acts.xn, &acts.up, false, false));
        let gelu = c.arch.gelu_gate();
        list.push(ops::silu_mul_op(ctx, &n("ffn_act"), step, &acts.gate, &acts.up, c.intermediate, gelu));
        match &w.post_norms {
            // Gemma: x += norm(Wd act), through `xn` and `up` (both free again).
            Some([_, post_ffw]) => {
                list.push(ops::matmul_op(ctx, &n("ffn_down"), &w.down, step, &acts.gate, &acts.xn, false, false));
                list.push(ops::rms_norm_op(ctx, &n("post_ffw_norm"), step, &acts.xn, post_ffw, &acts.up, h, c.rms_eps));
                list.push(ops::add_op(ctx, &n("ffn residual"), step, &acts.up, &acts.x, h, true, false));
            }
            None => list.push(ops::matmul_op(ctx, &n("ffn_down"), &w.down, step, &acts.gate, &acts.x, false, true)),
        }
    }

    /// Allocates activation buffers for `cap` tokens, labelled `what`;
    /// [`EngineError::OutOfMemory`] if they do not fit the device.
    fn activations(&self, what: &str, cap: usize) -> Result<Activations, EngineError> {
        let (ctx, c) = (&*self.ctx, &self.config);
        let f = |n: usize| (n * cap * 4) as u64;
        let buf = |name: &str, n: usize| ctx.storage(&format!("{what} {name}"), f(n));
        Ok(Activations {
            x: buf("x", c.hidden)?,
            xn: buf("xn", c.hidden)?,
            q: buf("q", c.q_dim())?,
            att: buf("att", c.q_dim())?,
            gate: buf("gate", c.intermediate)?,
            up: buf("up", c.intermediate)?,
            cs: buf("rope cos/sin", c.head_dim * if self.inv_freq_local.is_some() { 2 } else { 1 })?,
            cs_local: cap * c.head_dim / 2,
            staging: ctx.staging(&format!("{what} x readback"), f(c.hidden))?,
        })
    }

    /// Allocates scratch buffers for `cap` tokens and binds every kernel to them;
    /// [`EngineError::OutOfMemory`] if they do not fit the device.
    fn build_scratch(&self, cache: &GpuCache, cap: usize) -> Result<Scratch, EngineError> {
        let acts = self.activations("step", cap)?;
        // The kernels' parameter uniforms, bind groups and pipelines, in one scope.
        let ops = self.ctx.alloc("kernel bindings", None, || {
            let mut list = Vec::with_capacity(self.layers.len() * 15);
            for i in 0..self.layers.len() {
                self.pre_ops(i, cache.step_of(i), &acts, [&cache.k[i], &cache.v[i]], true, &mut list);
                list.push(self.attention_op(i, cache, &acts.q, &acts.att));
                self.post_ops(i, &cache.step, &acts, &mut list);
            }
            Ok(list)
        })?;
        Ok(Scratch { cap, acts, ops })
    }

    /// Allocates batch buffers for `cap` tokens and binds the kernels that touch no cache.
    fn build_batch_scratch(&self, cap: usize) -> Result<BatchScratch, EngineError> {
        let ctx = &*self.ctx;
        let kv_bytes = (self.config.kv_dim() * cap * 4) as u64;
        let step = ctx
            .alloc("batch step", None, || Ok(ctx.uniform("batch step", bytemuck::bytes_of(&StepUniform::new(0, 0)))))?;
        let acts = self.activations("batch", cap)?;
        let k = ctx.storage("batch k", kv_bytes)?;
        let v = ctx.storage("batch v", kv_bytes)?;
        let (pre, post) = ctx.alloc("batch kernel bindings", None, || {
            let mut pre = Vec::with_capacity(self.layers.len());
            let mut post = Vec::with_capacity(self.layers.len());
            for i in 0..self.layers.len() {
                let (mut before, mut after) = (Vec::new(), Vec::new());
                self.pre_ops(i, &step, &acts, [&k, &v], false, &mut before);
                self.post_ops(i, &step, &acts, &mut after);
                pre.push(before);
                post.push(after);
            }
            Ok((pre, post))
        })?;
        let id = NEXT_BATCH_SCRATCH.fetch_add(1, Ordering::Relaxed);
        Ok(BatchScratch { id, cap, step, acts, k, v, pre, post })
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
            cache.scratch = Some(Box::new(scratch));
        }
        let scopes = ctx.scopes()?;
        let q = ctx.queue();
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        cache.slide(q, &mut enc, (self.config.kv_dim() * 4) as u64, [n, pos, 0]);
        let s = cache.scratch.as_ref().expect("scratch was just built");
        q.write_buffer(&cache.step, 0, bytemuck::bytes_of(&StepUniform::new(n, pos)));
        q.write_buffer(&s.acts.cs, 0, f32s(&ops::rope_table(&self.inv_freq, self.config.rope_attn_factor, pos, n)));
        if let Some(local) = &self.inv_freq_local {
            q.write_buffer(&s.acts.cs, (s.acts.cs_local * 8) as u64, f32s(&ops::rope_table(local, 1.0, pos, n)));
        }
        q.write_buffer(&s.acts.x, 0, f32s(hidden));
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
            for op in &s.ops {
                op.record(&mut pass, n as u32);
            }
        }
        let bytes = std::mem::size_of_val(hidden) as u64;
        enc.copy_buffer_to_buffer(&s.acts.x, 0, &s.acts.staging, 0, bytes);
        ctx.submit("forward", enc, scopes).await?;
        ctx.read_f32(&s.acts.staging, hidden.len()).await
    }

    /// Checks a step's shape and that it fits its cache.
    fn check_step(&self, cache: &GpuCache, hidden: &[f32], n_tokens: usize, pos: usize) -> Result<(), EngineError> {
        let dim = self.config.hidden;
        if hidden.len() != n_tokens * dim {
            return Err(EngineError::Shape { what: "hidden", expected: n_tokens * dim, actual: hidden.len() });
        }
        if pos + n_tokens > cache.max_len {
            return Err(EngineError::ContextFull { session: 0, pos, n_tokens, capacity: cache.max_len });
        }
        Ok(())
    }

    /// Runs and empties `group`: one item alone, several as one submit.
    async fn run_group(&self, group: &mut Vec<BatchItem<'_, GpuCache>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let outs = match group.as_mut_slice() {
            [] => Vec::new(),
            [it] => vec![self.forward(it.cache, it.hidden, it.n_tokens, it.pos).await?],
            items => self.forward_group(items).await?,
        };
        group.clear();
        Ok(outs)
    }

    /// One submit for several sessions' steps, `2 <= items.len()` and at most
    /// `chunk_limit()` tokens in all (see the module documentation).
    async fn forward_group(&self, items: &mut [BatchItem<'_, GpuCache>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let ctx = &*self.ctx;
        let (dim, kv_bytes) = (self.config.hidden, (self.config.kv_dim() * 4) as u64);
        let total: usize = items.iter().map(|it| it.n_tokens).sum();
        let held = self.batch.lock().unwrap_or_else(|e| e.into_inner()).take();
        let s = match held {
            Some(s) if s.cap >= total => s,
            _ => {
                Box::new(self.build_batch_scratch(total.next_power_of_two().clamp(16, self.chunk_limit()).max(total))?)
            }
        };
        for it in items.iter_mut() {
            if it.cache.batch_attention.as_ref().is_none_or(|(id, _)| *id != s.id) {
                it.cache.batch_attention = None;
                let cache = &*it.cache;
                let ops = ctx.alloc("batch attention bindings", None, || {
                    Ok((0..self.layers.len()).map(|i| self.attention_op(i, cache, &s.acts.q, &s.acts.att)).collect())
                })?;
                it.cache.batch_attention = Some((s.id, ops));
            }
        }
        let scopes = ctx.scopes()?;
        let queue = ctx.queue();
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
        queue.write_buffer(&s.step, 0, bytemuck::bytes_of(&StepUniform::new(total, 0)));
        let mut cs = Vec::with_capacity(total * self.inv_freq.len() * 2);
        let mut cs_local = Vec::new();
        let mut base = 0;
        for it in items.iter_mut() {
            it.cache.slide(queue, &mut enc, kv_bytes, [it.n_tokens, it.pos, base]);
            queue.write_buffer(&it.cache.step, 0, bytemuck::bytes_of(&StepUniform::at_row(it.n_tokens, it.pos, base)));
            queue.write_buffer(&s.acts.x, (base * dim * 4) as u64, f32s(it.hidden));
            cs.extend(ops::rope_table(&self.inv_freq, self.config.rope_attn_factor, it.pos, it.n_tokens));
            if let Some(local) = &self.inv_freq_local {
                cs_local.extend(ops::rope_table(local, 1.0, it.pos, it.n_tokens));
            }
            base += it.n_tokens;
        }
        queue.write_buffer(&s.acts.cs, 0, f32s(&cs));
        if !cs_local.is_empty() {
            queue.write_buffer(&s.acts.cs, (s.acts.cs_local * 8) as u64, f32s(&cs_local));
        }
        for i in 0..self.layers.len() {
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("batch qkv"),
                    timestamp_writes: None,
                });
                for op in &s.pre[i] {
                    op.record(&mut pass, total as u32);
                }
            }
            let mut base = 0;
            for it in items.iter() {
                let to = it.cache.row_of(i, it.pos) as u64 * kv_bytes;
                let (from, len) = (base as u64 * kv_bytes, it.n_tokens as u64 * kv_bytes);
                enc.copy_buffer_to_buffer(&s.k, from, &it.cache.k[i], to, len);
                enc.copy_buffer_to_buffer(&s.v, from, &it.cache.v[i], to, len);
                base += it.n_tokens;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batch attention, ffn"),
                timestamp_writes: None,
            });
            for it in items.iter() {
                let (_, attention) = it.cache.batch_attention.as_ref().expect("bound above");
                attention[i].record(&mut pass, it.n_tokens as u32);
            }
            for op in &s.post[i] {
                op.record(&mut pass, total as u32);
            }
        }
        enc.copy_buffer_to_buffer(&s.acts.x, 0, &s.acts.staging, 0, (total * dim * 4) as u64);
        ctx.submit("batch", enc, scopes).await?;
        let out = ctx.read_f32(&s.acts.staging, total * dim).await?;
        *self.batch.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        let mut rest = &out[..];
        Ok(items
            .iter()
            .map(|it| {
                let (mine, after) = rest.split_at(it.n_tokens * dim);
                rest = after;
                mine.to_vec()
            })
            .collect())
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
        self.cache(max_len, true)
    }

    /// One copy per layer's keys and values, in a submit of its own (the queue runs it before
    /// the next step's).
    /// As for a full-length cache; `false` once a sliding buffer has moved, or when `rows`
    /// runs past one.
    fn copy_kv(&self, from: &GpuCache, to: &mut GpuCache, rows: Range<usize>) -> Result<bool, EngineError> {
        if [&from.window, &to.window].into_iter().flatten().any(|(w, _, _)| !w.unmoved(&rows)) {
            return Ok(false);
        }
        let row = (self.config.kv_dim() * 4) as u64;
        let (offset, bytes) = (rows.start as u64 * row, rows.len() as u64 * row);
        if bytes == 0 {
            return Ok(true);
        }
        let ctx = &*self.ctx;
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("prefix") });
        for (f, t) in from.k.iter().zip(&to.k).chain(from.v.iter().zip(&to.v)) {
            enc.copy_buffer_to_buffer(f, offset, t, offset, bytes);
        }
        ctx.queue().submit([enc.finish()]);
        Ok(true)
    }

    async fn forward(
        &self,
        cache: &mut GpuCache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        self.check_step(cache, hidden, n_tokens, pos)?;
        let dim = self.config.hidden;
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

    /// Items run in groups of at most `chunk_limit()` tokens, each group one submit; an item
    /// longer than that runs alone in chunks, as [`forward`](Backend::forward) does.
    async fn forward_batch(&self, items: Vec<BatchItem<'_, GpuCache>>) -> Result<Vec<Vec<f32>>, EngineError> {
        for it in &items {
            self.check_step(it.cache, it.hidden, it.n_tokens, it.pos)?;
        }
        let limit = self.chunk_limit();
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(items.len());
        let mut group: Vec<BatchItem<'_, GpuCache>> = Vec::new();
        let mut group_tokens = 0;
        for it in items {
            if it.n_tokens > limit {
                outs.extend(self.run_group(&mut group).await?);
                group_tokens = 0;
                outs.push(self.forward(it.cache, it.hidden, it.n_tokens, it.pos).await?);
                continue;
            }
            if group_tokens + it.n_tokens > limit {
                outs.extend(self.run_group(&mut group).await?);
                group_tokens = 0;
            }
            group_tokens += it.n_tokens;
            group.push(it);
        }
        outs.extend(self.run_group(&mut group).await?);
        Ok(outs)
    }
}
