//! The CPU backend: runs a range of decoder layers on the host, computing like the kernels do.
//!
//! Main type: [`CpuBackend`]. f32 activations, weights dequantized on the fly inside the
//! matrix products ([`matmul`]), f32 accumulation. Results match the wgpu backend within
//! rounding (different summation order), never by quantizing activations.

pub mod matmul;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd_x86;

use std::ops::Range;

use super::rope::{rope_scale, sin_cos};
use super::window::{window_rows, Window, WINDOW_STEP};
use super::{reference, rope_inv_freq, rope_inv_freq_local, uses_local_rope, Backend, BatchItem, EngineError};
use crate::model::{LayerWeights, LlamaConfig};

/// Per-session state of the CPU backend: K and V for every layer of the range.
pub struct CpuCache {
    /// Tokens the session may hold.
    max_len: usize,
    /// Per layer, rows of its buffers: `max_len`, or fewer for a windowed layer (see
    /// [`super::window`]).
    rows: Vec<usize>,
    /// The windowed layers' sliding buffers, if they are shorter than the session.
    window: Option<Window>,
    /// Per layer, the keys transposed: `[kv_dim, rows]` (component `c` of row `r` at
    /// `c * rows + r`), so attention reads one component of many keys as one vector.
    k: Vec<Vec<f32>>,
    /// Per layer, `[rows, kv_dim]`.
    v: Vec<Vec<f32>>,
}

impl CpuCache {
    /// Writes the keys `k` (`[n, kv_dim]`) into rows `row..row + n` of layer `li`.
    fn write_keys(&mut self, li: usize, row: usize, k: &[f32], kv_dim: usize) {
        let cap = self.rows[li];
        for (i, keys) in k.chunks_exact(kv_dim).enumerate() {
            for (c, &x) in keys.iter().enumerate() {
                self.k[li][c * cap + row + i] = x;
            }
        }
    }

    /// The row of layer `li` that holds position `pos`.
    fn row_of(&self, li: usize, pos: usize) -> usize {
        match self.window {
            Some(w) if self.rows[li] < self.max_len => pos - w.base,
            _ => pos,
        }
    }

    /// Makes room for a step of `n` tokens at `pos` in the sliding buffers (see
    /// [`Window::make_room`]): moves each one's last `window - 1` rows to the front.
    fn slide(&mut self, pos: usize, n: usize, kv_dim: usize) {
        let Some(keep) = self.window.as_mut().and_then(|w| w.make_room(pos, n)) else {
            return;
        };
        for li in 0..self.rows.len() {
            let cap = self.rows[li];
            if cap == self.max_len {
                continue;
            }
            for c in 0..kv_dim {
                self.k[li].copy_within(c * cap + keep.start..c * cap + keep.end, c * cap);
            }
            self.v[li].copy_within(keep.start * kv_dim..keep.end * kv_dim, 0);
        }
    }
}

/// Runs layers `[a, b)` of a model on the CPU.
pub struct CpuBackend {
    config: LlamaConfig,
    range: Range<usize>,
    layers: Vec<LayerWeights>,
    /// RoPE inverse frequencies, `[head_dim / 2]`.
    inv_freq: Vec<f32>,
    /// The windowed layers' frequencies when they differ (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
}

impl CpuBackend {
    /// Takes the weights of layers `range` (one [`LayerWeights`] per layer, in order).
    pub fn new(config: LlamaConfig, range: Range<usize>, layers: Vec<LayerWeights>) -> Result<Self, EngineError> {
        super::check_layers(&config, &range, &layers)?;
        let inv_freq = rope_inv_freq(&config);
        let inv_freq_local = rope_inv_freq_local(&config);
        Ok(Self { config, range, layers, inv_freq, inv_freq_local })
    }
}

impl CpuBackend {
    /// A cache for `max_len` tokens; windowed layers get sliding buffers when `slide` (always,
    /// but for the tests that compare them with full-length ones).
    fn cache(&self, max_len: usize, slide: bool) -> Result<CpuCache, EngineError> {
        let kv_dim = self.config.kv_dim();
        max_len
            .checked_mul(kv_dim)
            .ok_or(EngineError::SessionTooLong { asked: max_len, limit: usize::MAX / kv_dim.max(1) })?;
        let rows_of = |l| if slide { window_rows(&self.config, l, max_len) } else { max_len };
        let rows: Vec<usize> = self.range.clone().map(rows_of).collect();
        let buffers = || rows.iter().map(|r| vec![0.0; r * kv_dim]).collect();
        let window = Window::of(&self.config, self.range.clone(), max_len).filter(|_| slide);
        Ok(CpuCache { max_len, k: buffers(), v: buffers(), rows, window })
    }

    /// A cache without sliding buffers (to compare with one that has them).
    #[cfg(test)]
    pub(crate) fn full_cache(&self, max_len: usize) -> Result<CpuCache, EngineError> {
        self.cache(max_len, false)
    }
}

/// Rotate-half RoPE in place on `x` = `[n, n_heads, head_dim]` for positions `pos..pos + n`.
///
/// Same arithmetic as the reference; the angles' sines and cosines are computed once per
/// token (into `sc`, reused across heads) instead of once per head, and scaled by `scale`
/// ([`sin_cos`]).
fn rope(x: &mut [f32], shape: (usize, usize), pos: usize, inv_freq: &[f32], scale: f32, sc: &mut Vec<(f32, f32)>) {
    let (n_heads, head_dim) = shape;
    let half = head_dim / 2;
    for (t, tok) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
        sc.clear();
        sc.extend(inv_freq[..half].iter().map(|&f| sin_cos(pos + t, f, scale)));
        for head in tok.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for ((a, b), &(s, c)) in lo.iter_mut().zip(hi.iter_mut()).zip(sc.iter()) {
                let (x0, x1) = (*a, *b);
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
struct AttnShape {
    pos: usize,
    /// Positions the key cache holds (its row length, see [`CpuCache::k`]).
    cap: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Window, scale and soft-cap of the scores.
    opts: reference::AttnOpts,
}

/// Keys whose query dot products are summed side by side (one per lane of a 512-bit vector;
/// four such vectors at once where there are enough keys).
const KEYS: usize = 16;

/// Below this many multiply-adds (`len * n_heads * head_dim` per token) attention of a single
/// token stays on the calling thread.
#[cfg(not(target_arch = "wasm32"))]
const ATTN_PAR_MIN: usize = 1 << 15;

/// Causal grouped-query attention; the arithmetic of [`reference::attention`], bit for bit.
///
/// Writes `out` (`[n, n_heads, head_dim]`); `k_cache` is transposed (see [`CpuCache::k`]).
/// Each query-key dot product is summed in dimension order like the reference's; [`KEYS`]
/// keys are processed side by side, one per vector lane, only to run those sequential sums
/// at once. Natively, (token, head) pairs run in parallel once the
/// work is large enough; each output is still computed by one thread in a fixed order.
fn attention(q: &[f32], k_cache: &[f32], v_cache: &[f32], s: AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    let one = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (t, h) = (i / s.n_heads, i % s.n_heads);
        let (p, len) = (s.pos + t, s.pos + t + 1);
        let first = reference::first_key(p, s.opts.window);
        let a = HeadQuery { qh: &q[i * hd..(i + 1) * hd], k_cache, v_cache, first, len, h, s };
        attention_head(&a, o, scores)
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        let n = q.len() / (s.n_heads * hd);
        if n > 1 || (s.pos + 1) * s.n_heads * hd >= ATTN_PAR_MIN {
            use rayon::prelude::*;
            out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| one(i, o, scores));
            return;
        }
    }
    let mut scores = Vec::new();
    for (i, o) in out.chunks_mut(hd).enumerate() {
        one(i, o, &mut scores);
    }
}

/// One query head's attention: query head `h` of one token (`qh`, `[head_dim]`) over entries
/// `first..len` of the caches (`k_cache` transposed, see [`CpuCache::k`]).
struct HeadQuery<'a> {
    qh: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    first: usize,
    len: usize,
    h: usize,
    s: AttnShape,
}

/// Attention of one query head ([`HeadQuery`]) into `out` (`[head_dim]`).
///
/// On x86_64 with AVX-512 (or AVX2) the same code is compiled for those vectors and chosen at
/// run time; the crate's baseline is SSE2. Only the vector width changes: every lane's
/// arithmetic is the same sequence of separate multiplies and adds (Rust never fuses them), so
/// the results are the same bits.
fn attention_head(a: &HeadQuery<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2")]
        fn wide512(a: &HeadQuery<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
            attention_head_body(a, out, scores)
        }
        #[target_feature(enable = "avx2")]
        fn wide256(a: &HeadQuery<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
            attention_head_body(a, out, scores)
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features `wide512` is compiled for (checked just above).
            return unsafe { wide512(a, out, scores) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above, for `wide256`.
            return unsafe { wide256(a, out, scores) };
        }
    }
    attention_head_body(a, out, scores)
}

/// Appends the scaled dot products of `qh` with keys `j..j + N` (`comp(d)` is component `d`
/// of every key). -0.0 is the start value of `Iterator::sum` for f32, as in the reference;
/// each key's lane adds its products in dimension order, a separate multiply and add like it.
/// `N` independent lanes (several vectors) keep the adds' latency from bounding the loop.
#[inline(always)]
fn key_dots<'a, const N: usize>(
    qh: &[f32],
    comp: &impl Fn(usize) -> &'a [f32],
    j: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let mut acc = [-0.0f32; N];
    for (d, &qd) in qh.iter().enumerate() {
        for (a, k) in acc.iter_mut().zip(&comp(d)[j..j + N]) {
            *a += qd * k;
        }
    }
    scores.extend(acc.iter().map(|a| a * scale));
}

/// The arithmetic of [`attention_head`].
#[inline(always)]
fn attention_head_body(a: &HeadQuery<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    let &HeadQuery { qh, k_cache, v_cache, first, len, h, s } = a;
    let hd = s.head_dim;
    let kvh = h / (s.n_heads / s.n_kv_heads);
    let kv_dim = s.n_kv_heads * hd;
    let scale = s.opts.scale;
    // Component `d` of this head's keys, for every position.
    let comp = |d: usize| &k_cache[(kvh * hd + d) * s.cap..][..len];
    scores.clear();
    let mut j = first;
    while j + 4 * KEYS <= len {
        key_dots::<{ 4 * KEYS }>(qh, &comp, j, scale, scores);
        j += 4 * KEYS;
    }
    while j + KEYS <= len {
        key_dots::<KEYS>(qh, &comp, j, scale, scores);
        j += KEYS;
    }
    for j in j..len {
        let mut dot = -0.0f32;
        for (d, &qd) in qh.iter().enumerate() {
            dot += qd * comp(d)[j];
        }
        scores.push(dot * scale);
    }
    if s.opts.softcap.is_some() {
        scores.iter_mut().for_each(|v| *v = s.opts.cap(*v));
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    out.fill(0.0);
    for (j, sc) in (first..).zip(scores.iter()) {
        let vj = &v_cache[j * kv_dim + kvh * hd..][..hd];
        let p = sc / sum;
        for (od, vd) in out.iter_mut().zip(vj) {
            *od += p * vd;
        }
    }
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        reference::add_assign(row, bias);
    }
}

impl Backend for CpuBackend {
    type Cache = CpuCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn layers(&self) -> Range<usize> {
        self.range.clone()
    }

    fn new_cache(&self, max_len: usize) -> Result<CpuCache, EngineError> {
        self.cache(max_len, true)
    }

    /// Copies as for a full-length cache; `false` once a sliding buffer has moved, or when
    /// `rows` runs past one (a kept prompt longer than a window's buffer is not reused).
    fn copy_kv(&self, from: &CpuCache, to: &mut CpuCache, rows: Range<usize>) -> Result<bool, EngineError> {
        let kv = self.config.kv_dim();
        if rows.end > from.max_len.min(to.max_len) {
            let capacity = from.max_len.min(to.max_len);
            return Err(EngineError::ContextFull { session: 0, pos: rows.start, n_tokens: rows.len(), capacity });
        }
        if [from.window, to.window].iter().flatten().any(|w| !w.unmoved(&rows)) {
            return Ok(false);
        }
        let span = rows.start * kv..rows.end * kv;
        for (f, t) in from.v.iter().zip(&mut to.v) {
            t[span.clone()].copy_from_slice(&f[span.clone()]);
        }
        for (li, (f, t)) in from.k.iter().zip(&mut to.k).enumerate() {
            for c in 0..kv {
                let (fs, ts) = (c * from.rows[li], c * to.rows[li]);
                t[ts + rows.start..ts + rows.end].copy_from_slice(&f[fs + rows.start..fs + rows.end]);
            }
        }
        Ok(true)
    }

    async fn forward(
        &self,
        cache: &mut CpuCache,
        hidden: &[f32],
        n_tokens: usize,
        pos: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let mut outs = self.forward_batch(vec![BatchItem { cache, hidden, n_tokens, pos }]).await?;
        Ok(outs.pop().expect("one output per item"))
    }

    /// The items' tokens go through the weight products together (one `[n, hidden]` matrix of
    /// every item's rows); RoPE, the cache writes and attention run per item. Every product
    /// row and attention output is computed as for the item alone, so each output equals its
    /// own [`Backend::forward`] bit for bit.
    ///
    /// A step longer than [`WINDOW_STEP`] into a cache with sliding buffers runs as several
    /// (alone, one after the other), which changes no result.
    async fn forward_batch(&self, items: Vec<BatchItem<'_, CpuCache>>) -> Result<Vec<Vec<f32>>, EngineError> {
        if !items.iter().any(|it| it.cache.window.is_some() && it.n_tokens > WINDOW_STEP) {
            return in_pool(|| self.forward_items(items));
        }
        let dim = self.config.hidden;
        let mut outs = Vec::with_capacity(items.len());
        for it in items {
            let mut out = Vec::with_capacity(it.hidden.len());
            for start in (0..it.n_tokens).step_by(WINDOW_STEP) {
                let n = WINDOW_STEP.min(it.n_tokens - start);
                let hidden = it.hidden.get(start * dim..(start + n) * dim).ok_or(EngineError::Shape {
                    what: "hidden",
                    expected: it.n_tokens * dim,
                    actual: it.hidden.len(),
                })?;
                let part = BatchItem { cache: &mut *it.cache, hidden, n_tokens: n, pos: it.pos + start };
                out.extend(in_pool(|| self.forward_items(vec![part]))?.pop().unwrap_or_default());
            }
            outs.push(out);
        }
        Ok(outs)
    }
}

/// Runs `f` on a thread of the parallel pool (natively), so the parallel regions inside it
/// start from a pool thread: the caller's own share of each region runs at once instead of
/// the caller sleeping until pool threads wake for every region.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::scope(|_| f())
    }
    #[cfg(target_arch = "wasm32")]
    {
        f()
    }
}

impl CpuBackend {
    fn forward_items(&self, mut items: Vec<BatchItem<'_, CpuCache>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let c = &self.config;
        let (dim, q_dim, kv_dim, inter) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        let mut rows = Vec::with_capacity(items.len());
        let mut n = 0;
        for it in &items {
            if it.hidden.len() != it.n_tokens * dim {
                return Err(EngineError::Shape {
                    what: "hidden",
                    expected: it.n_tokens * dim,
                    actual: it.hidden.len(),
                });
            }
            let capacity = it.cache.max_len;
            if it.pos + it.n_tokens > capacity {
                return Err(EngineError::ContextFull { session: 0, pos: it.pos, n_tokens: it.n_tokens, capacity });
            }
            rows.push(n..n + it.n_tokens);
            n += it.n_tokens;
        }
        for it in items.iter_mut() {
            it.cache.slide(it.pos, it.n_tokens, kv_dim);
        }
        let mut x = Vec::with_capacity(n * dim);
        for it in &items {
            x.extend_from_slice(it.hidden);
        }
        let mut q = vec![0.0; n * q_dim];
        let mut k = vec![0.0; n * kv_dim];
        let mut v = vec![0.0; n * kv_dim];
        let mut att = vec![0.0; n * q_dim];
        let mut o = vec![0.0; n * dim];
        let mut gate = vec![0.0; n * inter];
        let mut up = vec![0.0; n * inter];
        let mut sc = Vec::with_capacity(c.head_dim / 2);
        let shape = |pos, cap, layer| AttnShape {
            pos,
            cap,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            opts: reference::AttnOpts::of_layer(c, layer),
        };
        for (li, w) in self.layers.iter().enumerate() {
            let xn = reference::rms_norm(&x, &w.attn_norm, c.rms_eps);
            matmul::matmul3([&w.attn_q, &w.attn_k, &w.attn_v], &xn, n, [&mut q, &mut k, &mut v]);
            if let Some([bq, bk, bv]) = &w.qkv_bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            if let Some([nq, nk]) = &w.qk_norm {
                // Per-head RMSNorm: every head_dim-long row of q and k.
                q = reference::rms_norm(&q, nq, c.rms_eps);
                k = reference::rms_norm(&k, nk, c.rms_eps);
            }
            for (it, r) in items.iter_mut().zip(&rows) {
                let (qs, ks) = (r.start * q_dim..r.end * q_dim, r.start * kv_dim..r.end * kv_dim);
                let freq = match &self.inv_freq_local {
                    Some(local) if uses_local_rope(c, self.range.start + li) => local,
                    _ => &self.inv_freq,
                };
                let scale = rope_scale(c, self.range.start + li);
                rope(&mut q[qs], (c.n_heads, c.head_dim), it.pos, freq, scale, &mut sc);
                rope(&mut k[ks.clone()], (c.n_kv_heads, c.head_dim), it.pos, freq, scale, &mut sc);
                let row = it.cache.row_of(li, it.pos);
                it.cache.write_keys(li, row, &k[ks.clone()], kv_dim);
                it.cache.v[li][row * kv_dim..(row + it.n_tokens) * kv_dim].copy_from_slice(&v[ks]);
            }
            // Attention per item, over its own cache: (q rows, K, V, shape, output rows).
            let mut jobs = Vec::with_capacity(items.len());
            let mut rest = &mut att[..];
            for (it, r) in items.iter().zip(&rows) {
                let (out, tail) = rest.split_at_mut(r.len() * q_dim);
                rest = tail;
                let qs = &q[r.start * q_dim..r.end * q_dim];
                let s = shape(it.cache.row_of(li, it.pos), it.cache.rows[li], self.range.start + li);
                jobs.push((qs, &it.cache.k[li][..], &it.cache.v[li][..], s, out));
            }
            attention_each(jobs);
            matmul::matmul(&w.attn_output, &att, n, &mut o);
            if let Some([post_attn, _]) = &w.post_norms {
                o = reference::rms_norm(&o, post_attn, c.rms_eps);
            }
            reference::add_assign(&mut x, &o);
            let xn = reference::rms_norm(&x, &w.ffn_norm, c.rms_eps);
            matmul::matmul2([&w.ffn_gate, &w.ffn_up], &xn, n, [&mut gate, &mut up]);
            if c.arch.gelu_gate() {
                for (g, u) in gate.iter_mut().zip(&up) {
                    *g = reference::gelu_tanh(*g) * u;
                }
            } else {
                // silu(gate) * up in place, the arithmetic of `reference::silu_mul`.
                for (g, u) in gate.iter_mut().zip(&up) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            }
            matmul::matmul(&w.ffn_down, &gate, n, &mut o);
            if let Some([_, post_ffw]) = &w.post_norms {
                o = reference::rms_norm(&o, post_ffw, c.rms_eps);
            }
            reference::add_assign(&mut x, &o);
        }
        Ok(rows.iter().map(|r| x[r.start * dim..r.end * dim].to_vec()).collect())
    }
}

/// One [`attention`] call: queries, the layer's K and V cache, shape, output.
type AttnJob<'a> = (&'a [f32], &'a [f32], &'a [f32], AttnShape, &'a mut [f32]);

/// Runs every job; natively several at once when there are several (each output is still
/// computed by one thread in a fixed order).
fn attention_each(jobs: Vec<AttnJob<'_>>) {
    #[cfg(not(target_arch = "wasm32"))]
    if jobs.len() > 1 {
        use rayon::prelude::*;
        jobs.into_par_iter().for_each(|(q, k, v, s, out)| attention(q, k, v, s, out));
        return;
    }
    for (q, k, v, s, out) in jobs {
        attention(q, k, v, s, out);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// The optimized attention is the reference's arithmetic, so it must agree bit for bit,
    /// with and without a sliding window (shorter and longer than the positions).
    #[test]
    fn attention_matches_reference_bitwise() {
        let (n_heads, n_kv_heads, head_dim) = (6, 2, 16);
        let cases = [(1, 0), (1, 9), (5, 3), (13, 0), (1, 20), (4, 78), (1, 600), (2, 700)];
        let plain = reference::AttnOpts::plain(head_dim);
        let variants: Vec<_> = [None, Some(4), Some(70), Some(1000)]
            .map(|window| reference::AttnOpts { window, ..plain })
            .into_iter()
            .chain([reference::AttnOpts { window: Some(5), scale: 0.3, softcap: Some(2.0) }])
            .collect();
        for ((n, pos), opts) in cases.into_iter().flat_map(|c| variants.iter().map(move |&o| (c, o))) {
            let len = pos + n;
            let q = random(n * n_heads * head_dim, 1);
            let k = random(len * n_kv_heads * head_dim, 2);
            let v = random(len * n_kv_heads * head_dim, 3);
            let want = reference::attention(&q, &k, &v, n, pos, n_heads, n_kv_heads, head_dim, opts);
            // A one-layer cache with room for more positions than are used, keys written as the
            // backend writes them (transposed).
            let (kv_dim, cap) = (n_kv_heads * head_dim, len + 5);
            let mut cache = CpuCache {
                max_len: cap,
                rows: vec![cap],
                window: None,
                k: vec![vec![f32::NAN; kv_dim * cap]],
                v: Vec::new(),
            };
            cache.write_keys(0, 0, &k, kv_dim);
            let mut got = vec![f32::NAN; want.len()];
            let shape = AttnShape { pos, cap, n_heads, n_kv_heads, head_dim, opts };
            attention(&q, &cache.k[0], &v, shape, &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "n={n} pos={pos} {opts:?}: index {i}: {a} vs {b}");
            }
        }
    }

    /// RoPE with shared sines and cosines equals the per-head computation it replaced, with
    /// and without an attention factor (which scales both).
    #[test]
    fn rope_matches_per_head_computation() {
        let (n_heads, head_dim, pos, n) = (3, 8, 5, 4);
        let inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32)).collect();
        let x = random(n * n_heads * head_dim, 4);
        for m in [1.0f32, 1.19] {
            let mut got = x.clone();
            rope(&mut got, (n_heads, head_dim), pos, &inv_freq, m, &mut Vec::new());
            check_rope(&x, &got, (n_heads, head_dim), pos, &inv_freq, m);
        }
    }

    fn check_rope(x: &[f32], got: &[f32], shape: (usize, usize), pos: usize, inv_freq: &[f32], m: f32) {
        let (n_heads, head_dim) = shape;
        let half = head_dim / 2;
        for t in 0..x.len() / (n_heads * head_dim) {
            for h in 0..n_heads {
                let base = (t * n_heads + h) * head_dim;
                for i in 0..half {
                    let (s, c) = ((pos + t) as f32 * inv_freq[i]).sin_cos();
                    let (s, c) = (s * m, c * m);
                    let (a, b) = (x[base + i], x[base + i + half]);
                    assert_eq!(got[base + i], a * c - b * s);
                    assert_eq!(got[base + i + half], a * s + b * c);
                }
            }
        }
    }

    /// Whole-model speed on the default model (SmolLM2-135M Q4_1): prefill of 100 tokens, then
    /// greedy decode including the final norm and the Q8_0 LM head. Run with
    /// `cargo test --release -p web-node --lib cpu::tests::bench_model -- --ignored --nocapture`.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore]
    fn bench_model() {
        use std::time::Instant;

        use crate::model::gguf::GgufModel;
        let path = std::path::Path::new("/tmp/model/SmolLM2-135M-Instruct.Q4_1.gguf");
        let model = GgufModel::open(path).expect("model file");
        let c = model.config().clone();
        let layers: Vec<_> = (0..c.n_layers).map(|i| model.load_layer(i).expect("layer")).collect();
        let head = model.load_head().expect("head");
        let cpu = CpuBackend::new(c.clone(), 0..c.n_layers, layers).expect("backend");
        let embed = |tok: usize| {
            let mut e = vec![0.0; c.hidden];
            head.token_embd.dequantize_row(tok, &mut e);
            e
        };
        let mut logits = vec![0.0; c.vocab];
        let next = |h: &[f32], logits: &mut [f32]| {
            let xn = reference::rms_norm(&h[h.len() - c.hidden..], &head.output_norm, c.rms_eps);
            matmul::matmul(head.lm_head(), &xn, 1, logits);
            logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
        };
        // The matrix products alone, over the real weights (streamed from memory as in decode).
        let x = embed(5);
        let (mut q, mut k, mut v, mut o) =
            (vec![0.0; c.q_dim()], vec![0.0; c.kv_dim()], vec![0.0; c.kv_dim()], vec![0.0; c.hidden]);
        let (mut g, mut u) = (vec![0.0; c.intermediate], vec![0.0; c.intermediate]);
        let h = vec![0.1; c.intermediate];
        for _ in 0..3 {
            let t0 = Instant::now();
            for _ in 0..10 {
                for w in &cpu.layers {
                    matmul::matmul3([&w.attn_q, &w.attn_k, &w.attn_v], &x, 1, [&mut q, &mut k, &mut v]);
                    matmul::matmul(&w.attn_output, &q, 1, &mut o);
                    matmul::matmul2([&w.ffn_gate, &w.ffn_up], &x, 1, [&mut g, &mut u]);
                    matmul::matmul(&w.ffn_down, &h, 1, &mut o);
                }
            }
            let layers = t0.elapsed().as_secs_f64() / 10.0;
            let t0 = Instant::now();
            for _ in 0..10 {
                matmul::matmul(head.lm_head(), &x, 1, &mut logits);
            }
            let lm = t0.elapsed().as_secs_f64() / 10.0;
            println!(
                "matmuls of 30 layers: {:.2} ms ({:.1} GB/s); lm head: {:.2} ms ({:.1} GB/s)",
                layers * 1e3,
                66.4e6 / layers / 1e9,
                lm * 1e3,
                head.lm_head().data.len() as f64 / lm / 1e9
            );
        }
        for _ in 0..3 {
            let mut cache = cpu.new_cache(512).expect("cache");
            let prompt: Vec<f32> = (0..100).flat_map(|i| embed(1000 + 37 * i)).collect();
            let t0 = Instant::now();
            let h = futures::executor::block_on(cpu.forward(&mut cache, &prompt, 100, 0)).expect("prefill");
            let mut tok = next(&h, &mut logits);
            let prefill = t0.elapsed().as_secs_f64();
            let steps = 64;
            let t0 = Instant::now();
            for s in 0..steps {
                let h = futures::executor::block_on(cpu.forward(&mut cache, &embed(tok), 1, 100 + s)).expect("step");
                tok = next(&h, &mut logits);
            }
            let decode = t0.elapsed().as_secs_f64();
            println!(
                "prefill 100 tokens: {:.1} ms ({:.1} tok/s); decode: {:.2} ms/token ({:.1} tok/s)",
                prefill * 1e3,
                100.0 / prefill,
                decode / steps as f64 * 1e3,
                steps as f64 / decode
            );
        }
    }
}
