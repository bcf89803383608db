//! Every kernel against `engine::reference`, and the whole backend against `CpuBackend`.
//!
//! These tests need a wgpu adapter (CI installs lavapipe) and fail, not skip, without one.
//! Tolerances are relative to the size of the terms summed (`sum |a_i b_i|`), because the
//! kernels add in a different order than the reference (blocks, then a tree).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::engine::cpu::CpuBackend;
use crate::engine::{reference, Backend, BatchItem, BlockExecutor, EngineError, ExecutorConfig};
use crate::model::quant::{quantize, random_blocks};
use crate::model::{Arch, LayerWeights, LlamaConfig, QMatrix, WeightType};

fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| pollster::block_on(GpuContext::new()).expect("a wgpu adapter is required (install lavapipe)"))
        .clone()
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T, crate::engine::EngineError>>) -> T {
    pollster::block_on(f).expect("gpu op failed")
}

fn randn(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn qmatrix(rng: &mut ChaCha8Rng, dtype: WeightType, rows: usize, cols: usize) -> QMatrix {
    let bytes = if dtype.can_quantize() {
        quantize(dtype, &randn(rng, rows * cols))
    } else {
        random_blocks(dtype, rows * cols / dtype.block_len(), rng)
    };
    QMatrix::new(dtype, rows, cols, Bytes::from(bytes)).expect("valid test matrix")
}

/// Asserts `|got - want| <= rel * scale[i] + abs` element by element, naming the first failure.
fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let tol = rel * scale[i] + abs;
        assert!(
            (got[i] - want[i]).abs() <= tol,
            "{what}: index {i}: gpu {} vs reference {} (tolerance {tol})",
            got[i],
            want[i]
        );
    }
}

/// `sum_c |W[r, c] x[t, c]|` for every output: the natural scale of a dot product's rounding.
fn matmul_scale(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let wd = w.dequantize();
    let mut s = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            s[t * w.rows + r] = (0..w.cols).map(|c| (wd[r * w.cols + c] * x[t * w.cols + c]).abs()).sum();
        }
    }
    s
}

/// Matrix products: every type, decode (n = 1) and prefill (n = 5, 33: a partial token tile),
/// rows not a multiple of the rows per workgroup, several blocks per thread, float rows that
/// end inside a block, and both thread layouts (shared rows with a reduction, row per thread).
/// Tolerance: 1e-5 of sum |w x| (f32 order-of-summation error). A token's result is the same
/// bits alone (decode kernel) as among others (prefill kernel).
#[test]
fn matmul_every_type_matches_reference() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for dtype in WeightType::ALL {
        let shapes: &[(usize, usize)] = match dtype.block_len() {
            1 => &[(37, 45), (6, 700), (65, 64)],
            32 => &[(37, 96), (6, 704), (65, 32)],
            _ => &[(37, 256), (6, 768), (65, 512)],
        };
        for &(rows, cols) in shapes {
            let w = qmatrix(&mut rng, dtype, rows, cols);
            for n in [1, 5, 33] {
                let x = randn(&mut rng, n * cols);
                let want = reference::matmul(&w, &x, n);
                let scale = matmul_scale(&w, &x, n);
                for row_per_thread in [false, true] {
                    let got = block_on(ops::matmul_layout(&ctx, &w, &x, n, row_per_thread));
                    let what = format!("matmul {dtype} [{rows}, {cols}] n={n} row_per_thread={row_per_thread}");
                    assert_close(&what, &got, &want, &scale, 1e-5, 1e-6);
                    // Each token alone (the decode kernel) gives the same bits as in the batch.
                    for t in [0, n / 2, n - 1] {
                        let alone =
                            block_on(ops::matmul_layout(&ctx, &w, &x[t * cols..(t + 1) * cols], 1, row_per_thread));
                        assert_eq!(alone[..], got[t * rows..(t + 1) * rows], "{what}: token {t} alone");
                    }
                }
            }
        }
    }
}

/// The kernels decode every quantized type to exactly the reference's values: with unit
/// vectors as tokens (`x = I`), each output is one weight (its raw value times its block's
/// scale, plus its minimum: one rounding, as in the reference) plus zeros. Zeros may lose
/// their sign.
#[test]
fn unit_vectors_give_the_reference_values() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for dtype in WeightType::ALL.into_iter().filter(|t| t.block_len() > 1) {
        let (rows, cols) = (5, 2 * dtype.block_len());
        let w = qmatrix(&mut rng, dtype, rows, cols);
        let mut eye = vec![0.0f32; cols * cols];
        for c in 0..cols {
            eye[c * cols + c] = 1.0;
        }
        let want = w.dequantize();
        for row_per_thread in [false, true] {
            let got = block_on(ops::matmul_layout(&ctx, &w, &eye, cols, row_per_thread));
            for r in 0..rows {
                for c in 0..cols {
                    let (g, e) = (got[c * rows + r], want[r * cols + c]);
                    assert!(g == e, "{dtype} row_per_thread={row_per_thread}: ({r}, {c}) is {g}, reference {e}");
                }
            }
        }
    }
}

/// Known answers: a Q4_1 block of nibbles 0..15 / 15..0 with d = 0.5, m = -1 against ones,
/// and an F32 identity.
#[test]
fn matmul_known_answers() {
    let ctx = ctx();
    let mut b = Vec::new();
    b.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    b.extend_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
    for j in 0..16u8 {
        b.push(j | ((15 - j) << 4));
    }
    let w = QMatrix::new(WeightType::Q4_1, 1, 32, Bytes::from(b)).expect("one block");
    // sum over 0..15 of (0.5 j - 1) twice = 2 * (0.5 * 120 - 16) = 88.
    assert_eq!(block_on(ops::matmul(&ctx, &w, &[1.0; 32], 1)), vec![88.0]);
    assert_eq!(block_on(ops::matmul(&ctx, &w, &[1.0; 64], 2)), vec![88.0, 88.0]);

    let eye: Vec<f32> = (0..9).map(|i| if i % 4 == 0 { 1.0 } else { 0.0 }).collect();
    let w = QMatrix::new(WeightType::F32, 3, 3, Bytes::from(quantize(WeightType::F32, &eye))).expect("3x3");
    assert_eq!(block_on(ops::matmul(&ctx, &w, &[1.0, 2.0, 3.0], 1)), vec![1.0, 2.0, 3.0]);
}

/// RMSNorm over rows wider than the workgroup (75, 200) and a known answer. Tolerance 1e-5
/// relative to |x * weight| (a rescaled sum of squares).
#[test]
fn rms_norm_matches_reference() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (n, dim) in [(1, 75), (3, 200)] {
        let x = randn(&mut rng, n * dim);
        let w = randn(&mut rng, dim);
        let got = block_on(ops::rms_norm(&ctx, &x, &w, 1e-5));
        let want = reference::rms_norm(&x, &w, 1e-5);
        let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
        assert_close(&format!("rms_norm n={n} dim={dim}"), &got, &want, &scale, 1e-5, 1e-6);
    }
    let got = block_on(ops::rms_norm(&ctx, &[3.0, 4.0], &[1.0, 2.0], 0.0));
    let r = (12.5f32).sqrt();
    assert_close("rms_norm known", &got, &[3.0 / r, 8.0 / r], &[1.0, 1.0], 1e-6, 0.0);
}

/// RoPE at positions past 0 with head_dim 16 and 64. The cos/sin come from the host, so only
/// the rotation's own rounding differs: 1e-6 of |a| + |b|.
#[test]
fn rope_matches_reference() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (n, heads, hd, pos) in [(1, 3, 16, 0), (4, 3, 64, 1000)] {
        let x = randn(&mut rng, n * heads * hd);
        let got = block_on(ops::rope(&ctx, &x, heads, hd, pos, 10000.0));
        let mut want = x.clone();
        reference::rope(&mut want, heads, hd, pos, 10000.0);
        let scale: Vec<f32> = (0..x.len())
            .map(|i| {
                let (head, d) = (i / hd * hd, i % hd);
                x[head + d % (hd / 2)].abs() + x[head + d % (hd / 2) + hd / 2].abs()
            })
            .collect();
        assert_close(&format!("rope n={n} heads={heads} hd={hd} pos={pos}"), &got, &want, &scale, 1e-6, 0.0);
    }
    // Known answer: position 0 is the identity.
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(block_on(ops::rope(&ctx, &x, 1, 4, 0, 10000.0)), x.to_vec());
}

/// Attention: decode past one key tile (pos 70 > 64 keys), causal prefill with GQA, a head
/// size above the workgroup (80), sliding windows shorter than one tile, longer than one, and
/// longer than the sequence, and Gemma's query scale with soft-capped scores. Outputs are
/// convex mixes of values in [-1, 1]: 1e-5 absolute.
#[test]
fn attention_matches_reference() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let cases = [(1, 70, 4, 2, 16), (5, 3, 4, 2, 16), (3, 130, 2, 1, 80), (2, 0, 3, 3, 8)];
    for ((n, pos, heads, kv_heads, hd), window, softcap) in cases.into_iter().flat_map(|c| {
        [(None, None), (Some(3), None), (Some(100), None), (Some(500), None), (Some(4), Some(0.7))]
            .map(|(w, s)| (c, w, s))
    }) {
        let opts = reference::AttnOpts { window, softcap, ..reference::AttnOpts::plain(hd) };
        let len = pos + n + 2; // spare rows after the sequence must be ignored
        let q = randn(&mut rng, n * heads * hd);
        let k = randn(&mut rng, len * kv_heads * hd);
        let v = randn(&mut rng, len * kv_heads * hd);
        let got = block_on(ops::attention(&ctx, &q, &k, &v, n, pos, heads, kv_heads, hd, opts));
        let want = reference::attention(&q, &k, &v, n, pos, heads, kv_heads, hd, opts);
        let what = format!("attention n={n} pos={pos} heads={heads}/{kv_heads} hd={hd} {opts:?}");
        assert_close(&what, &got, &want, &vec![0.0; want.len()], 0.0, 1e-5);
    }
    // Known answer: the first token sees only its own value.
    let plain = reference::AttnOpts::plain(2);
    let got = block_on(ops::attention(&ctx, &[1.0, 0.0], &[5.0, 5.0], &[0.25, -2.0], 1, 0, 1, 1, 2, plain));
    assert_eq!(got, vec![0.25, -2.0]);
}

/// SiLU-gated product and residual add, elementwise: 1e-6 relative (exp rounding).
#[test]
fn elementwise_match_reference() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let g: Vec<f32> = randn(&mut rng, 100).iter().map(|v| v * 8.0).collect();
    let u = randn(&mut rng, 100);
    let got = block_on(ops::silu_mul(&ctx, &g, &u));
    let want = reference::silu_mul(&g, &u);
    let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
    assert_close("silu_mul", &got, &want, &scale, 1e-6, 1e-7);

    let got = block_on(ops::add(&ctx, &g, &u));
    let mut want = g.clone();
    reference::add_assign(&mut want, &u);
    assert_eq!(got, want);
    assert_eq!(block_on(ops::silu_mul(&ctx, &[0.0], &[3.0])), vec![0.0]);
}

fn small_config(arch: Arch) -> LlamaConfig {
    LlamaConfig {
        arch,
        hidden: 64,
        intermediate: 128,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        vocab: 10,
        max_seq_len: 64,
        tie_embeddings: true,
        rope_freq_factors: None,
        rope_attn_factor: 1.0,
        sliding_window: None,
        gemma: None,
    }
}

fn random_layer(rng: &mut ChaCha8Rng, c: &LlamaConfig, dtype: WeightType) -> LayerWeights {
    let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
    let norm = |rng: &mut ChaCha8Rng| randn(rng, h).iter().map(|v| 1.0 + 0.2 * v).collect();
    LayerWeights {
        attn_norm: norm(rng),
        attn_q: qmatrix(rng, dtype, q, h),
        attn_k: qmatrix(rng, dtype, kv, h),
        attn_v: qmatrix(rng, dtype, kv, h),
        attn_output: qmatrix(rng, dtype, h, q),
        qkv_bias: c.arch.has_qkv_bias().then(|| [randn(rng, q), randn(rng, kv), randn(rng, kv)]),
        post_norms: c.arch.has_post_norms().then(|| [norm(rng), norm(rng)]),
        qk_norm: c.arch.has_qk_norm().then(|| {
            let hd = |rng: &mut ChaCha8Rng| randn(rng, c.head_dim).iter().map(|v| 1.0 + 0.3 * v).collect();
            [hd(rng), hd(rng)]
        }),
        ffn_norm: norm(rng),
        ffn_gate: qmatrix(rng, dtype, f, h),
        ffn_up: qmatrix(rng, dtype, f, h),
        ffn_down: qmatrix(rng, dtype, h, f),
    }
}

/// Prefill 7 tokens then 4 decode steps on layers 1..4 of a small model (one layer each of
/// Q4_1, Q8_0, F32; a Qwen2 variant with biases; a Qwen3 variant with q/k norms and heads
/// wider than hidden / n_heads; a Gemma 2 variant with post-norms, GeGLU, its query scale,
/// soft-capped scores and a 3-position window on every other layer; a Gemma 3 variant with
/// q/k norms and the windowed layers' own RoPE base), GPU vs CPU backend.
/// Tolerance 1e-4 of the hidden state's max magnitude: three layers of f32 products summed in
/// another order.
#[test]
fn backend_matches_cpu_backend() {
    let ctx = ctx();
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma2, Arch::Gemma3] {
        let mut c = small_config(arch);
        if arch == Arch::Qwen3 {
            c.head_dim = 32; // q_dim 128 != hidden 64, as in real Qwen3 models
        }
        if arch.is_gemma() {
            // Gemma 3: no caps, q/k norms, and its windowed layers' own RoPE base.
            let gemma3 = arch == Arch::Gemma3;
            c.sliding_window = Some(3);
            c.gemma = Some(crate::model::GemmaParams {
                attn_softcap: (!gemma3).then_some(2.0),
                final_softcap: Some(30.0),
                query_scalar: 10.0,
                window_pattern: 2,
                local_rope_base: gemma3.then_some(100.0),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let layers: Vec<LayerWeights> = [WeightType::Q4_1, WeightType::Q8_0, WeightType::F32]
            .into_iter()
            .map(|t| random_layer(&mut rng, &c, t))
            .collect();
        let gpu = GpuBackend::new(ctx.clone(), c.clone(), 1..4, &layers).expect("gpu backend");
        let cpu = CpuBackend::new(c.clone(), 1..4, layers).expect("cpu backend");
        let mut gc = gpu.new_cache(16).expect("gpu cache");
        let mut cc = cpu.new_cache(16).expect("cpu cache");
        let mut pos = 0;
        for n in [7, 1, 1, 1, 1] {
            let x = randn(&mut rng, n * c.hidden);
            let got = block_on(gpu.forward(&mut gc, &x, n, pos));
            let want = block_on(cpu.forward(&mut cc, &x, n, pos));
            let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let what = format!("{arch:?} forward n={n} pos={pos}");
            assert_close(&what, &got, &want, &vec![max; want.len()], 1e-4, 0.0);
            pos += n;
        }
        assert!(gc.scratch_capacity() >= 7);
    }
}

/// A prefill longer than one submit's chunk gives the same result as token-by-token decoding.
#[test]
fn long_prefill_is_chunked() {
    let ctx = ctx();
    let mut c = small_config(Arch::Llama);
    c.hidden = 32;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.intermediate = 32;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let layers = vec![random_layer(&mut rng, &c, WeightType::Q8_0)];
    let gpu = GpuBackend::new(ctx, c.clone(), 0..1, &layers).expect("gpu backend");
    let n = MAX_CHUNK + 3;
    let x = randn(&mut rng, n * c.hidden);
    let mut a = gpu.new_cache(n).expect("cache");
    let all = block_on(gpu.forward(&mut a, &x, n, 0));
    let cpu = CpuBackend::new(c.clone(), 0..1, layers).expect("cpu backend");
    let mut cc = cpu.new_cache(n).expect("cpu cache");
    let want = block_on(cpu.forward(&mut cc, &x, n, 0));
    let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close("chunked prefill", &all, &want, &vec![max; want.len()], 1e-4, 0.0);
    assert!(a.scratch_capacity() <= MAX_CHUNK);
}

/// Windowed layers keep only the rows their window can reach (`engine::window`). Two
/// sessions run 700 positions through layers 1..4 of a Gemma 2-style model (a 6-position
/// window on layers 2 and 4 of 5, so the layers served mix global and windowed ones), in
/// steps that fill, overrun and slide the 261-row buffers (a prefill longer than one step,
/// steps of 255 and 3 tokens, decodes), the two sessions batched together: each step's
/// output has the bits of the same step on full-length caches, on the CPU and on the GPU.
#[test]
fn sliding_buffers_equal_full_caches_bit_for_bit() {
    use crate::engine::window::{kv_bytes, WINDOW_STEP};
    let ctx = ctx();
    let mut c = small_config(Arch::Gemma2);
    c.n_layers = 5;
    c.max_seq_len = 1024;
    c.sliding_window = Some(6);
    c.gemma = Some(crate::model::GemmaParams {
        attn_softcap: Some(2.0),
        final_softcap: None,
        query_scalar: 10.0,
        window_pattern: 2,
        local_rope_base: None,
    });
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let layers: Vec<LayerWeights> = (0..3).map(|_| random_layer(&mut rng, &c, WeightType::Q4_1)).collect();
    let gpu = GpuBackend::new(ctx, c.clone(), 1..4, &layers).expect("gpu backend");
    let cpu = CpuBackend::new(c.clone(), 1..4, layers).expect("cpu backend");
    let len = 700;
    let full = 3 * len * c.kv_dim() * 8;
    let windowed = 2 * len + (5 + WINDOW_STEP);
    assert_eq!(kv_bytes(&c, 1..4, len), (windowed * c.kv_dim() * 8) as u64, "{full} bytes full-length");
    let steps = [300, 1, 255, 3, 1, 139, 1];
    assert_eq!(steps.iter().sum::<usize>(), len);
    let inputs: Vec<Vec<Vec<f32>>> =
        (0..2).map(|_| steps.iter().map(|&n| randn(&mut rng, n * c.hidden)).collect()).collect();
    fn run<B: Backend>(b: &B, caches: &mut [B::Cache], inputs: &[Vec<Vec<f32>>], steps: &[usize]) -> Vec<Vec<f32>> {
        let mut outs = Vec::new();
        let mut pos = 0;
        for (i, &n) in steps.iter().enumerate() {
            let items = caches
                .iter_mut()
                .zip(inputs)
                .map(|(cache, x)| BatchItem { cache, hidden: &x[i][..], n_tokens: n, pos })
                .collect();
            outs.extend(block_on(b.forward_batch(items)));
            pos += n;
        }
        outs
    }
    let mut sliding = [cpu.new_cache(len).expect("cache"), cpu.new_cache(len).expect("cache")];
    let mut whole = [cpu.full_cache(len).expect("cache"), cpu.full_cache(len).expect("cache")];
    let (a, b) = (run(&cpu, &mut sliding, &inputs, &steps), run(&cpu, &mut whole, &inputs, &steps));
    assert!(a == b, "cpu: sliding buffers change the output");
    let mut sliding = [gpu.new_cache(len).expect("cache"), gpu.new_cache(len).expect("cache")];
    let mut whole = [gpu.full_cache(len).expect("cache"), gpu.full_cache(len).expect("cache")];
    let (g, h) = (run(&gpu, &mut sliding, &inputs, &steps), run(&gpu, &mut whole, &inputs, &steps));
    for (i, (x, y)) in g.iter().zip(&h).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(bits(x) == bits(y), "gpu: sliding buffers change output {i}");
    }
}

/// A small GPU executor (layers 1..3 of [`small_config`], Q8_0) and a 5-token input.
fn small_executor(ctx: Arc<GpuContext>) -> (BlockExecutor<GpuBackend>, Vec<f32>) {
    let c = small_config(Arch::Llama);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let layers: Vec<LayerWeights> = (0..2).map(|_| random_layer(&mut rng, &c, WeightType::Q8_0)).collect();
    let gpu = GpuBackend::new(ctx, c.clone(), 1..3, &layers).expect("gpu backend");
    let x = randn(&mut rng, 5 * c.hidden);
    (BlockExecutor::new(gpu, ExecutorConfig::new().with_max_sessions(8)), x)
}

/// Issue 11 (item 9): a session whose KV cache does not fit the device is refused with
/// [`EngineError::OutOfMemory`] (a test fault stands in for a full device: lavapipe cannot be
/// filled), whichever of its buffers fails, and the backend goes on: the next session opens
/// and computes exactly what a session opened before the failure computed.
#[test]
fn out_of_memory_refuses_a_session_and_the_backend_goes_on() {
    let ctx = ctx();
    let (mut e, x) = small_executor(ctx.clone());
    let before = e.open_session(16).expect("open before");
    let want = block_on(e.step(before, &x, 5));
    // 2 layers: K, K, V, V, then the step uniform; fail each of them in turn.
    for pass in 0..5 {
        ctx.inject_oom(pass, 1);
        let err = e.open_session(16).expect_err("open while the device is full");
        ctx.inject_oom(0, 0);
        assert!(err.is_out_of_memory(), "allocation {pass}: {err}");
        assert_eq!(e.session_count(), 1, "a refused session holds nothing");
    }
    let after = e.open_session(16).expect("open after");
    assert_eq!(block_on(e.step(after, &x, 5)), want, "same input, same output after an OOM");
}

/// Issue 11 (item 9): a step that runs out of memory, building its scratch buffers or in its
/// submit, returns [`EngineError::OutOfMemory`] and changes nothing: the session stays at its
/// position and its retry computes what it would have, and other sessions go on.
#[test]
fn out_of_memory_fails_a_step_and_other_sessions_go_on() {
    let ctx = ctx();
    let (mut e, x) = small_executor(ctx.clone());
    let h = x.len() / 5;
    let reference = e.open_session(16).expect("open reference");
    let want_prefill = block_on(e.step(reference, &x, 5));
    let want_decode = block_on(e.step(reference, &x[..h], 1));
    let other = e.open_session(16).expect("open other");
    assert_eq!(block_on(e.step(other, &x, 5)), want_prefill);

    let s = e.open_session(16).expect("open");
    // First step: its scratch buffers fail.
    ctx.inject_oom(0, 1);
    let err = pollster::block_on(e.step(s, &x, 5)).expect_err("scratch out of memory");
    ctx.inject_oom(0, 0);
    assert!(err.is_out_of_memory(), "{err}");
    assert_eq!(e.session_len(s).expect("still open"), 0);
    assert_eq!(block_on(e.step(s, &x, 5)), want_prefill, "retry after a failed scratch build");
    // Next step: the scratch exists, so the fault hits the submit.
    ctx.inject_oom(0, 1);
    let err = pollster::block_on(e.step(s, &x[..h], 1)).expect_err("submit out of memory");
    ctx.inject_oom(0, 0);
    assert!(matches!(&err, EngineError::OutOfMemory { what, .. } if what.starts_with("forward")), "{err}");
    assert_eq!(e.session_len(s).expect("still open"), 5);
    assert_eq!(block_on(e.step(s, &x[..h], 1)), want_decode, "retry after a failed submit");
    assert_eq!(block_on(e.step(other, &x[..h], 1)), want_decode, "the other session is untouched");
}

/// Issue 11 (item 9): an error outside any error scope no longer panics (wgpu's default
/// handler does): it is logged, the next operation returns it, and the one after works.
#[test]
fn uncaptured_error_fails_the_next_operation_only() {
    // A context of its own: the recorded error belongs to the device, not to this thread.
    let ctx = pollster::block_on(GpuContext::new()).expect("a wgpu adapter is required (install lavapipe)");
    let too_big = ctx.limits().max_buffer_size.saturating_add(4).next_multiple_of(4);
    let _invalid = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("larger than the device allows"),
        size: too_big,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let err = pollster::block_on(ops::add(&ctx, &[1.0], &[2.0])).expect_err("the recorded error");
    assert!(matches!(err, EngineError::Gpu(_)), "{err}");
    assert_eq!(block_on(ops::add(&ctx, &[1.0], &[2.0])), vec![3.0]);
    // The same mistake through a scoped allocation is that allocation's error, and only its.
    let err = ctx.storage("larger than the device allows", too_big).expect_err("scoped error");
    assert!(matches!(&err, EngineError::Gpu(m) if m.starts_with("larger than")), "{err}");
    assert_eq!(block_on(ops::add(&ctx, &[1.0], &[2.0])), vec![3.0]);
}

/// The weight repacking keeps every value: repacked words read back as the reference does.
#[test]
fn repack_layout() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let w = qmatrix(&mut rng, WeightType::Q4_1, 2, 64);
    let words = weights::repack(&w);
    assert_eq!(words.len(), 2 * weights::row_words(WeightType::Q4_1, 64));
    // Row 1, block 0: first word is d | m << 16, then the 16 nibble bytes.
    let raw = w.row(1);
    assert_eq!(words[10], u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
    assert_eq!(words[11], u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
    let f16 = qmatrix(&mut rng, WeightType::F16, 1, 3);
    let words = weights::repack(&f16);
    assert_eq!(words.len(), 2);
    assert_eq!(words[1] >> 16, 0, "odd row padded with zero");
}

/// The decode kernel's speed on a SmolLM2-sized Q4_1 matrix (run with `--ignored --nocapture`).
#[test]
#[ignore = "benchmark"]
fn bench_matvec() {
    let ctx = ctx();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (dtype, rows, cols) in [
        (WeightType::Q4_1, 1536, 576),
        (WeightType::Q4_1, 576, 1536),
        (WeightType::Q8_0, 1536, 576),
        (WeightType::F32, 1536, 576),
    ] {
        let w = qmatrix(&mut rng, dtype, rows, cols);
        let secs = block_on(ops::time_matmul(&ctx, &w, 1, 200));
        let gbs = w.data.len() as f64 / secs / 1e9;
        println!("{} {dtype} [{rows}, {cols}] n=1: {:.1} us, {gbs:.2} GB/s", ctx.adapter_info().name, secs * 1e6);
    }
}

/// Decode speed of a SmolLM2-135M-shaped layer range (Q4_1, random weights), 8-token prefill
/// then 16 decode steps (run with `--ignored --nocapture`).
#[test]
#[ignore = "benchmark"]
fn bench_decode_smollm_shape() {
    let ctx = ctx();
    let c = LlamaConfig {
        arch: Arch::Llama,
        hidden: 576,
        intermediate: 1536,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
        vocab: 49152,
        max_seq_len: 8192,
        tie_embeddings: true,
        rope_freq_factors: None,
        rope_attn_factor: 1.0,
        sliding_window: None,
        gemma: None,
    };
    let n_layers = std::env::var("BENCH_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let layers: Vec<LayerWeights> = (0..n_layers).map(|_| random_layer(&mut rng, &c, WeightType::Q4_1)).collect();
    let gpu = GpuBackend::new(ctx.clone(), c.clone(), 0..n_layers, &layers).expect("gpu backend");
    let x = randn(&mut rng, 8 * c.hidden);
    // Warm-up on another session: compiles every pipeline (slow on lavapipe).
    let mut warm = gpu.new_cache(16).expect("cache");
    block_on(gpu.forward(&mut warm, &x, 8, 0));
    block_on(gpu.forward(&mut warm, &x[..c.hidden], 1, 8));
    let mut cache = gpu.new_cache(256).expect("cache");
    let t = web_time::Instant::now();
    block_on(gpu.forward(&mut cache, &x, 8, 0));
    let prefill = t.elapsed().as_secs_f64();
    let steps = 16;
    let t = web_time::Instant::now();
    for i in 0..steps {
        block_on(gpu.forward(&mut cache, &x[..c.hidden], 1, 8 + i));
    }
    let decode = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{}: {n_layers} layers: prefill 8 tokens {:.1} ms ({:.1} tok/s), decode {:.1} ms/token ({:.1} tok/s)",
        ctx.adapter_info().name,
        prefill * 1e3,
        8.0 / prefill,
        decode * 1e3,
        1.0 / decode
    );
    // A batch of one decode step from each of 4 sessions, after their 8-token prompts.
    let mut caches: Vec<GpuCache> = (0..4).map(|_| gpu.new_cache(256).expect("cache")).collect();
    for cache in &mut caches {
        block_on(gpu.forward(cache, &x, 8, 0));
    }
    let t = web_time::Instant::now();
    for i in 0..steps {
        let items = caches
            .iter_mut()
            .map(|cache| BatchItem { cache, hidden: &x[..c.hidden], n_tokens: 1, pos: 8 + i })
            .collect();
        block_on(gpu.forward_batch(items));
    }
    let batch = t.elapsed().as_secs_f64() / steps as f64;
    let t = web_time::Instant::now();
    for _ in 0..steps {
        block_on(gpu.forward(&mut caches[0], &x[..4 * c.hidden], 4, 8));
    }
    let four = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "batches of 4 decode steps: {:.1} ms/batch ({:.1} tok/s); one 4-token step {:.1} ms",
        batch * 1e3,
        4.0 / batch,
        four * 1e3
    );
}
