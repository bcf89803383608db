//! One function per kernel of `shaders/`: builders that bind a kernel to buffers once
//! ([`Op`], recorded into a pass for each step), and host-facing async versions that run a
//! single kernel on host data (used by the tests and the benchmark).
//!
//! Every kernel reads the step's `(n_tokens, pos)` from a shared uniform ([`StepUniform`]),
//! written with `queue.write_buffer` before each submit, so bind groups never change between
//! steps. This module owns every workgroup constant the shaders use.
//!
//! The builders create uniforms, pipelines and bind groups without an error scope of their
//! own: callers run them inside `GpuContext::alloc`, so running out of memory there is an
//! [`EngineError`] and not a panic.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::context::{Bind, GpuContext, Pipeline, Shader};
use super::weights::{dtype_code, GpuMatrix};
use crate::engine::reference::AttnOpts;
use crate::engine::rope::sin_cos;
use crate::engine::EngineError;
use crate::model::QMatrix;

/// Per-step parameters shared by every kernel of a forward: `struct Step` in the shaders.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct StepUniform {
    /// Tokens in this step.
    pub(crate) n_tokens: u32,
    /// Position of the first of them.
    pub(crate) pos: u32,
    /// Row of the first of them in the step's activation buffers: 0, except for a session's
    /// share of a batch (read by the attention kernel).
    pub(crate) base: u32,
    pad: u32,
}

impl StepUniform {
    /// The uniform for `n_tokens` tokens at `pos`.
    pub(crate) fn new(n_tokens: usize, pos: usize) -> Self {
        Self::at_row(n_tokens, pos, 0)
    }

    /// The uniform for `n_tokens` tokens at `pos` whose activations start at row `base`.
    pub(crate) fn at_row(n_tokens: usize, pos: usize, base: usize) -> Self {
        Self { n_tokens: n_tokens as u32, pos: pos as u32, base: base as u32, pad: 0 }
    }
}

use Bind::{Read, ReadWrite, Uniform};

static MATMUL: Shader = Shader {
    name: "matmul",
    source: include_str!("../../../../shaders/matmul.wgsl"),
    binds: &[Uniform, Uniform, Read, Read, ReadWrite],
};
static RMS_NORM: Shader = Shader {
    name: "rms_norm",
    source: include_str!("../../../../shaders/rms_norm.wgsl"),
    binds: &[Uniform, Uniform, Read, Read, ReadWrite],
};
static ROPE: Shader = Shader {
    name: "rope",
    source: include_str!("../../../../shaders/rope.wgsl"),
    binds: &[Uniform, Uniform, Read, ReadWrite, ReadWrite],
};
static HEAD_NORM: Shader = Shader {
    name: "head_norm",
    source: include_str!("../../../../shaders/head_norm.wgsl"),
    binds: &[Uniform, Uniform, Read, ReadWrite, ReadWrite],
};
static ATTENTION: Shader = Shader {
    name: "attention",
    source: include_str!("../../../../shaders/attention.wgsl"),
    binds: &[Uniform, Uniform, Read, Read, Read, ReadWrite],
};
static SILU_MUL: Shader = Shader {
    name: "silu_mul",
    source: include_str!("../../../../shaders/silu_mul.wgsl"),
    binds: &[Uniform, Uniform, ReadWrite, Read],
};
static ADD: Shader = Shader {
    name: "add",
    source: include_str!("../../../../shaders/add.wgsl"),
    binds: &[Uniform, Uniform, Read, ReadWrite],
};

/// `matvec`: threads per workgroup.
const MATVEC_WG: u32 = 64;
/// `matvec` on GPUs: rows per workgroup (MATVEC_WG / MATVEC_ROWS threads share a row); CPU
/// adapters use one thread per row.
const MATVEC_ROWS: u32 = 4;
/// `matmat`: threads per workgroup.
const MATMAT_WG: u32 = 64;
/// `matmat` on GPUs: rows per workgroup; CPU adapters use one thread per row.
const MATMAT_ROWS: u32 = 4;
/// `matmat`: tokens per workgroup; must equal `TT` in `matmul.wgsl`.
const MATMAT_TOKENS: u32 = 8;
/// `rms_norm`: threads per token (a power of two).
const NORM_WG: u32 = 64;
/// `attention`: threads per (head, token); 64 lets each thread keep 4 of at most 256 dims.
const ATTN_WG: u32 = 64;
/// Elementwise kernels (`rope`, `silu_mul`, `add`): threads per workgroup.
const ELEM_WG: u32 = 64;
/// Largest head size the attention kernel supports (`MAX_HD` in `attention.wgsl`).
pub const MAX_HEAD_DIM: usize = 256;

/// One kernel bound to its buffers; its grid is `(x, ceil(n_tokens / tokens_per_y), 1)`.
#[derive(Debug)]
pub(crate) struct Launch {
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
    x: u32,
    tokens_per_y: u32,
}

impl Launch {
    fn new(
        ctx: &GpuContext,
        pipeline: Arc<Pipeline>,
        what: &str,
        buffers: &[&wgpu::Buffer],
        x: u32,
        tokens_per_y: u32,
    ) -> Self {
        let bind_group = ctx.bind_group(&pipeline, what, buffers);
        Self { pipeline, bind_group, x, tokens_per_y }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.x, n_tokens.div_ceil(self.tokens_per_y), 1);
    }
}

/// A kernel launch ready to record for any number of tokens.
#[derive(Debug)]
pub(crate) enum Op {
    /// One pipeline for every token count.
    Plain(Launch),
    /// Matrix product: `vec` for one token, `mat` for more.
    Matmul {
        /// Decode kernel.
        vec: Launch,
        /// Prefill kernel.
        mat: Launch,
    },
}

impl Op {
    /// Records this kernel for a step of `n_tokens` tokens.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32) {
        match self {
            Op::Plain(l) => l.record(pass, n_tokens),
            Op::Matmul { vec, mat } => {
                if n_tokens == 1 {
                    vec.record(pass, 1)
                } else {
                    mat.record(pass, n_tokens)
                }
            }
        }
    }
}

fn u32s(v: &[u32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// `y[t (+ pos), :] (+)= W x[t, :]` for every token of the step.
///
/// `w`: `[rows, cols]`; `x`: `(n_tokens, cols)`; `y`: `(.., rows)`, row `t`, or `pos + t` when
/// `y_at_pos` (a KV cache); `accumulate` adds to `y` (residual add) instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_op(
    ctx: &GpuContext,
    what: &str,
    w: &GpuMatrix,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    y_at_pos: bool,
    accumulate: bool,
) -> Op {
    matmul_op_layout(ctx, what, w, step, x, y, y_at_pos, accumulate, ctx.is_cpu())
}

/// [`matmul_op`] with an explicit thread layout: `row_per_thread` (no workgroup reduction,
/// best on CPU adapters) or [`MATVEC_ROWS`] / [`MATMAT_ROWS`] rows per workgroup (GPUs).
#[allow(clippy::too_many_arguments)]
fn matmul_op_layout(
    ctx: &GpuContext,
    what: &str,
    w: &GpuMatrix,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    y_at_pos: bool,
    accumulate: bool,
    row_per_thread: bool,
) -> Op {
    let params =
        [w.rows as u32, w.cols as u32, w.row_words() as u32, u32::from(y_at_pos), u32::from(accumulate), 0, 0, 0];
    let params = ctx.uniform(what, u32s(&params));
    let dt = dtype_code(w.dtype);
    // CPU adapters run a workgroup's threads as SIMD lanes, where barriers are expensive: one
    // thread per row there; GPUs share a row between threads and reduce in workgroup memory.
    let (vec_rows, mat_rows) = if row_per_thread { (MATVEC_WG, MATMAT_WG) } else { (MATVEC_ROWS, MATMAT_ROWS) };
    let vec = ctx.pipeline(&MATMUL, "matvec", &[("DTYPE", dt), ("WG", MATVEC_WG), ("ROWS", vec_rows)]);
    let mat = ctx.pipeline(&MATMUL, "matmat", &[("DTYPE", dt), ("WG", MATMAT_WG), ("ROWS", mat_rows)]);
    let bufs = [step, &params, &w.buf, x, y];
    let rows = w.rows as u32;
    Op::Matmul {
        vec: Launch::new(ctx, vec, what, &bufs, rows.div_ceil(vec_rows), 1),
        mat: Launch::new(ctx, mat, what, &bufs, rows.div_ceil(mat_rows), MATMAT_TOKENS),
    }
}

/// `y[t, :] = rms_norm(x[t, :]) * weight`; `x`, `y`: `(n_tokens, dim)`, `weight`: `(dim)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    y: &wgpu::Buffer,
    dim: usize,
    eps: f32,
) -> Op {
    let params = ctx.uniform(what, u32s(&[dim as u32, eps.to_bits(), 0, 0]));
    let p = ctx.pipeline(&RMS_NORM, "main", &[("WG", NORM_WG)]);
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, x, weight, y], 1, 1))
}

/// Rotate-half RoPE in place on `q` `(n_tokens, n_heads, head_dim)` and on the rows
/// `pos..pos + n_tokens` of `k` `(.., n_kv_heads, head_dim)`, with `cs` `(n_tokens, head_dim / 2)`
/// (cos, sin) pairs starting at pair `cs_base`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    cs: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    cs_base: usize,
) -> Op {
    let params = ctx.uniform(what, u32s(&[n_heads as u32, n_kv_heads as u32, head_dim as u32, cs_base as u32]));
    let p = ctx.pipeline(&ROPE, "main", &[("WG", ELEM_WG)]);
    let threads = ((n_heads + n_kv_heads) * head_dim / 2) as u32;
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, cs, q, k], threads.div_ceil(ELEM_WG), 1))
}

/// Per-head RMSNorm in place on `q` `(n_tokens, n_heads, head_dim)` and on the rows
/// `pos..pos + n_tokens` of `k` `(.., n_kv_heads, head_dim)` (the rows [`rope_op`] rotates),
/// with weights `w` = `[q_norm, k_norm]` `(2, head_dim)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_norm_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    w: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    eps: f32,
) -> Op {
    let params = ctx.uniform(what, u32s(&[n_heads as u32, n_kv_heads as u32, head_dim as u32, eps.to_bits()]));
    let p = ctx.pipeline(&HEAD_NORM, "main", &[("WG", NORM_WG)]);
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, w, q, k], (n_heads + n_kv_heads) as u32, 1))
}

/// Causal GQA attention of `q` `(n_tokens, n_heads, head_dim)` over caches `kc`, `vc`
/// `(pos + n_tokens, n_kv_heads, head_dim)` into `out` `(n_tokens, n_heads, head_dim)`; `q`
/// and `out` rows start at the step's `base`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    kc: &wgpu::Buffer,
    vc: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    opts: AttnOpts,
) -> Op {
    let w = opts.window.unwrap_or(0) as u32;
    let cap = opts.softcap.unwrap_or(0.0).to_bits();
    let dims = [n_heads as u32, n_kv_heads as u32, head_dim as u32];
    let params = ctx.uniform(what, u32s(&[dims[0], dims[1], dims[2], opts.scale.to_bits(), w, cap, 0, 0]));
    let p = ctx.pipeline(&ATTENTION, "main", &[("WG", ATTN_WG)]);
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, q, kc, vc, out], n_heads as u32, 1))
}

/// `gate = silu(gate) * up`, both `(n_tokens, dim)`.
pub(crate) fn silu_mul_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    dim: usize,
    gelu: bool,
) -> Op {
    let params = ctx.uniform(what, u32s(&[dim as u32, u32::from(gelu), 0, 0]));
    let p = ctx.pipeline(&SILU_MUL, "main", &[("WG", ELEM_WG)]);
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, gate, up], (dim as u32).div_ceil(ELEM_WG), 1))
}

/// `y[t (+ pos), :] += b[t, :]` (`per_token`) or `+= b[:]` (a bias); rows `dim` wide.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_op(
    ctx: &GpuContext,
    what: &str,
    step: &wgpu::Buffer,
    b: &wgpu::Buffer,
    y: &wgpu::Buffer,
    dim: usize,
    per_token: bool,
    y_at_pos: bool,
) -> Op {
    let params = ctx.uniform(what, u32s(&[dim as u32, u32::from(per_token), u32::from(y_at_pos), 0]));
    let p = ctx.pipeline(&ADD, "main", &[("WG", ELEM_WG)]);
    Op::Plain(Launch::new(ctx, p, what, &[step, &params, b, y], (dim as u32).div_ceil(ELEM_WG), 1))
}

/// `(cos, sin)` of `(pos + t) * inv_freq[i]` for `t < n`, times `scale`, computed on the host
/// exactly as the CPU backend does ([`sin_cos`]); `(n, inv_freq.len())` pairs, flattened.
pub(crate) fn rope_table(inv_freq: &[f32], scale: f32, pos: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * inv_freq.len() * 2);
    for t in 0..n {
        for &f in inv_freq {
            let (s, c) = sin_cos(pos + t, f, scale);
            out.push(c);
            out.push(s);
        }
    }
    out
}

// ---- host-facing single-kernel functions (tests, benchmark) ----

fn f32s(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn check_len(what: &'static str, v: &[f32], expected: usize) -> Result<(), EngineError> {
    if v.len() != expected {
        return Err(EngineError::Shape { what, expected, actual: v.len() });
    }
    Ok(())
}

/// Runs `ops` once for `n` tokens at `pos` and reads back the first `len` f32 of `out`.
async fn run(
    ctx: &GpuContext,
    step: &wgpu::Buffer,
    ops: &[Op],
    n: usize,
    pos: usize,
    out: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<f32>, EngineError> {
    let staging = ctx.staging("ops readback", (len * 4) as u64)?;
    let scopes = ctx.scopes()?;
    ctx.queue().write_buffer(step, 0, bytemuck::bytes_of(&StepUniform::new(n, pos)));
    let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") });
    {
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("ops"), timestamp_writes: None });
        for op in ops {
            op.record(&mut pass, n as u32);
        }
    }
    enc.copy_buffer_to_buffer(out, 0, &staging, 0, (len * 4) as u64);
    ctx.submit("ops", enc, scopes).await?;
    ctx.read_f32(&staging, len).await
}

fn step_buffer(ctx: &GpuContext) -> Result<wgpu::Buffer, EngineError> {
    ctx.alloc("ops step", None, || Ok(ctx.uniform("step", bytemuck::bytes_of(&StepUniform::new(0, 0)))))
}

/// `W x` for `n` tokens on the GPU: `x` is `[n, cols]`, the result `[n, rows]`
/// (see [`crate::engine::reference::matmul`]).
pub async fn matmul(ctx: &GpuContext, w: &QMatrix, x: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
    matmul_layout(ctx, w, x, n, ctx.is_cpu()).await
}

/// [`matmul`] with an explicit thread layout (tests cover both on any adapter).
pub(crate) async fn matmul_layout(
    ctx: &GpuContext,
    w: &QMatrix,
    x: &[f32],
    n: usize,
    row_per_thread: bool,
) -> Result<Vec<f32>, EngineError> {
    check_len("matmul x", x, n * w.cols)?;
    let gw = GpuMatrix::upload(ctx, "ops weight", w)?;
    let step = step_buffer(ctx)?;
    let xb = ctx.storage_init("ops x", f32s(x))?;
    let y = ctx.storage("ops y", (n * w.rows * 4) as u64)?;
    let op = ctx.alloc("ops kernel", None, || {
        Ok(matmul_op_layout(ctx, "ops matmul", &gw, &step, &xb, &y, false, false, row_per_thread))
    })?;
    run(ctx, &step, &[op], n, 0, &y, n * w.rows).await
}

/// RMSNorm of each `weight.len()`-wide row of `x` (see [`crate::engine::reference::rms_norm`]).
pub async fn rms_norm(ctx: &GpuContext, x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>, EngineError> {
    let dim = weight.len();
    let n = x.len().checked_div(dim).unwrap_or(0);
    check_len("rms_norm x", x, n * dim)?;
    let step = step_buffer(ctx)?;
    let xb = ctx.storage_init("ops x", f32s(x))?;
    let wb = ctx.storage_init("ops weight", f32s(weight))?;
    let y = ctx.storage("ops y", (x.len() * 4) as u64)?;
    let op = ctx.alloc("ops kernel", None, || Ok(rms_norm_op(ctx, "ops rms_norm", &step, &xb, &wb, &y, dim, eps)))?;
    run(ctx, &step, &[op], n, 0, &y, x.len()).await
}

/// Rotate-half RoPE of `x` `[n, n_heads, head_dim]` at positions `pos..`, frequencies
/// `theta^(-2i / head_dim)` in f32 (see [`crate::engine::reference::rope`]); returns the result.
pub async fn rope(
    ctx: &GpuContext,
    x: &[f32],
    n_heads: usize,
    head_dim: usize,
    pos: usize,
    theta: f32,
) -> Result<Vec<f32>, EngineError> {
    let width = n_heads * head_dim;
    let n = x.len().checked_div(width).unwrap_or(0);
    check_len("rope x", x, n * width)?;
    let inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| theta.powf(-2.0 * i as f32 / head_dim as f32)).collect();
    let step = step_buffer(ctx)?;
    let cs = ctx.storage_init("ops rope table", f32s(&rope_table(&inv_freq, 1.0, pos, n)))?;
    let q = ctx.storage_init("ops q", f32s(x))?;
    let k = ctx.storage("ops k (unused)", 4)?;
    let op =
        ctx.alloc("ops kernel", None, || Ok(rope_op(ctx, "ops rope", &step, &cs, &q, &k, n_heads, 0, head_dim, 0)))?;
    run(ctx, &step, &[op], n, pos, &q, x.len()).await
}

/// Causal GQA attention of `n` tokens at `pos..` over the caches, scores formed as `opts` says
/// (see [`crate::engine::reference::attention`] for the shapes).
#[allow(clippy::too_many_arguments)]
pub async fn attention(
    ctx: &GpuContext,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    opts: AttnOpts,
) -> Result<Vec<f32>, EngineError> {
    check_len("attention q", q, n * n_heads * head_dim)?;
    if head_dim > MAX_HEAD_DIM || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(EngineError::Gpu(format!(
            "attention: {n_heads} heads, {n_kv_heads} kv heads, head dim {head_dim} (max {MAX_HEAD_DIM})"
        )));
    }
    let min_cache = (pos + n) * n_kv_heads * head_dim;
    if k_cache.len() < min_cache || v_cache.len() != k_cache.len() {
        return Err(EngineError::Shape { what: "attention kv cache", expected: min_cache, actual: k_cache.len() });
    }
    let step = step_buffer(ctx)?;
    let qb = ctx.storage_init("ops q", f32s(q))?;
    let kb = ctx.storage_init("ops k cache", f32s(k_cache))?;
    let vb = ctx.storage_init("ops v cache", f32s(v_cache))?;
    let out = ctx.storage("ops attention out", (q.len() * 4) as u64)?;
    let op = ctx.alloc("ops kernel", None, || {
        Ok(attention_op(ctx, "ops attention", &step, &qb, &kb, &vb, &out, n_heads, n_kv_heads, head_dim, opts))
    })?;
    run(ctx, &step, &[op], n, pos, &out, q.len()).await
}

/// `silu(gate) * up`, elementwise (see [`crate::engine::reference::silu_mul`]).
pub async fn silu_mul(ctx: &GpuContext, gate: &[f32], up: &[f32]) -> Result<Vec<f32>, EngineError> {
    check_len("silu_mul up", up, gate.len())?;
    let step = step_buffer(ctx)?;
    let g = ctx.storage_init("ops gate", f32s(gate))?;
    let u = ctx.storage_init("ops up", f32s(up))?;
    let op =
        ctx.alloc("ops kernel", None, || Ok(silu_mul_op(ctx, "ops silu_mul", &step, &g, &u, gate.len(), false)))?;
    run(ctx, &step, &[op], 1, 0, &g, gate.len()).await
}

/// `x + y`, elementwise (see [`crate::engine::reference::add_assign`]).
pub async fn add(ctx: &GpuContext, x: &[f32], y: &[f32]) -> Result<Vec<f32>, EngineError> {
    check_len("add y", y, x.len())?;
    let step = step_buffer(ctx)?;
    let xb = ctx.storage_init("ops x", f32s(x))?;
    let yb = ctx.storage_init("ops y", f32s(y))?;
    let op = ctx.alloc("ops kernel", None, || Ok(add_op(ctx, "ops add", &step, &yb, &xb, x.len(), true, false)))?;
    run(ctx, &step, &[op], 1, 0, &xb, x.len()).await
}

/// Seconds per call of the matrix product kernel for `n` tokens (the decode kernel when
/// `n == 1`): mean over `iters` calls recorded in one encoder, after one warm-up submit.
/// Bytes moved per call are about `w.data.len()` for the weights plus the activations.
pub async fn time_matmul(ctx: &GpuContext, w: &QMatrix, n: usize, iters: usize) -> Result<f64, EngineError> {
    let gw = GpuMatrix::upload(ctx, "bench weight", w)?;
    let step =
        ctx.alloc("bench step", None, || Ok(ctx.uniform("step", bytemuck::bytes_of(&StepUniform::new(n, 0)))))?;
    let x: Vec<f32> = (0..n * w.cols).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let xb = ctx.storage_init("bench x", f32s(&x))?;
    let y = ctx.storage("bench y", (n * w.rows * 4) as u64)?;
    let op = ctx.alloc("ops kernel", None, || Ok(matmul_op(ctx, "bench matmul", &gw, &step, &xb, &y, false, false)))?;
    let mut elapsed = 0.0;
    for (round, count) in [(0, 1), (1, iters.max(1))] {
        let scopes = ctx.scopes()?;
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes: None });
            for _ in 0..count {
                op.record(&mut pass, n as u32);
            }
        }
        let start = web_time::Instant::now();
        ctx.submit("bench", enc, scopes).await?;
        ctx.wait_idle().await?;
        if round == 1 {
            elapsed = start.elapsed().as_secs_f64() / count as f64;
        }
    }
    Ok(elapsed)
}
