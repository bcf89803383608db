//! Plain-Rust reference versions of every operation of a decoder layer.
//!
//! These are the specification the kernels are tested against: straightforward loops, f32
//! throughout, no SIMD. The CPU backend reuses the cheap ones (norms, RoPE, attention) and
//! replaces the matrix products with its fast kernels.

use crate::model::QMatrix;

/// `out[t, r] = sum_c W[r, c] * x[t, c]` for `n` tokens: `x` is `[n, cols]`, `out` `[n, rows]`.
///
/// Dequantizes each row once and accumulates in f32, in column order.
pub fn matmul(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * w.cols, "matmul: x has the wrong length");
    let mut out = vec![0.0f32; n * w.rows];
    let mut row = vec![0.0f32; w.cols];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut row);
        for t in 0..n {
            let xt = &x[t * w.cols..(t + 1) * w.cols];
            let mut acc = 0.0f32;
            for c in 0..w.cols {
                acc += row[c] * xt[c];
            }
            out[t * w.rows + r] = acc;
        }
    }
    out
}

/// RMSNorm of each row of `x` (`[n, dim]`), times `weight` (`[dim]`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, xr) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for i in 0..dim {
            o[i] = xr[i] * scale * weight[i];
        }
    }
    out
}

/// Rotate-half RoPE in place on `x` = `[n, n_heads, head_dim]` for tokens at `pos..pos+n`.
///
/// Dimension `i < head_dim/2` pairs with `i + head_dim/2`, angle `p * theta^(-2i/head_dim)`
/// (Hugging Face layout; see [`crate::model::weights`] for the GGUF permutation).
pub fn rope(x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize, theta: f32) {
    let half = head_dim / 2;
    for (t, tok) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
        let p = (pos + t) as f32;
        for head in tok.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let freq = theta.powf(-2.0 * i as f32 / head_dim as f32);
                let (s, c) = (p * freq).sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * c - b * s;
                head[i + half] = a * s + b * c;
            }
        }
    }
}

/// The first key position a query at position `p` attends to: 0, or with a sliding window of
/// `w` positions, `p + 1 - w` (the last `w` positions, itself included, as llama.cpp and
/// Hugging Face count them).
pub fn first_key(p: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (p + 1).saturating_sub(w))
}

/// How attention scores are formed beyond the plain dot product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnOpts {
    /// Sliding window in positions (see [`first_key`]); `None` for global attention.
    pub window: Option<usize>,
    /// Scale of the dot products (`1 / sqrt(head_dim)` unless the model says otherwise).
    pub scale: f32,
    /// Soft-cap of the scaled scores, `c * tanh(s / c)` (Gemma 2).
    pub softcap: Option<f32>,
}

impl AttnOpts {
    /// Global attention scaled by `1 / sqrt(head_dim)`.
    pub fn plain(head_dim: usize) -> AttnOpts {
        AttnOpts { window: None, scale: 1.0 / (head_dim as f32).sqrt(), softcap: None }
    }

    /// Layer `layer`'s options for a model.
    pub fn of_layer(c: &crate::model::LlamaConfig, layer: usize) -> AttnOpts {
        AttnOpts { window: c.layer_window(layer), scale: c.attn_scale(), softcap: c.attn_softcap() }
    }

    /// A scaled score, soft-capped if the options say so.
    #[inline(always)]
    pub fn cap(&self, s: f32) -> f32 {
        match self.softcap {
            Some(c) => (s / c).tanh() * c,
            None => s,
        }
    }
}

/// Causal grouped-query attention for `n` new tokens at positions `pos..pos+n`, over the last
/// `window` positions when there is one (see [`first_key`]), scores scaled and capped by `opts`.
///
/// `q` is `[n, n_heads, head_dim]`; `k_cache`/`v_cache` are `[len, n_kv_heads, head_dim]` with
/// `len >= pos + n` entries already written (the new tokens' keys included). Query head `h`
/// reads kv head `h / (n_heads / n_kv_heads)`. Returns `[n, n_heads, head_dim]`.
#[allow(clippy::too_many_arguments)] // a reference mirrors the kernel's flat parameter list
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    opts: AttnOpts,
) -> Vec<f32> {
    let group = n_heads / n_kv_heads;
    let kv_dim = n_kv_heads * head_dim;
    let (scale, window) = (opts.scale, opts.window);
    let mut out = vec![0.0f32; n * n_heads * head_dim];
    let mut scores = Vec::new();
    for t in 0..n {
        let len = pos + t + 1;
        let first = first_key(pos + t, window);
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[(t * n_heads + h) * head_dim..][..head_dim];
            scores.clear();
            for j in first..len {
                let kj = &k_cache[j * kv_dim + kvh * head_dim..][..head_dim];
                let dot: f32 = qh.iter().zip(kj).map(|(a, b)| a * b).sum();
                scores.push(opts.cap(dot * scale));
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(t * n_heads + h) * head_dim..][..head_dim];
            for (j, s) in (first..).zip(scores.iter()) {
                let vj = &v_cache[j * kv_dim + kvh * head_dim..][..head_dim];
                let p = s / sum;
                for d in 0..head_dim {
                    o[d] += p * vj[d];
                }
            }
        }
    }
    out
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`, Gemma's gate).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `silu(gate) * up`, elementwise.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// `x += y`, elementwise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
