//! AVX2 + FMA + F16C (and AVX-512F) matrix-product kernels for x86_64, chosen at run time.
//!
//! Each 32-element weight block is decoded into four `__m256` (or two `__m512`) of f32 (exactly the values of
//! the reference dequantization: `q * d + m` is one FMA and both products are exact in f32)
//! and multiplied into the f32 activations with FMAs. Every (row, token) pair owns two
//! accumulators (chunks 0, 2 and 1, 3 of each block), reduced in a fixed order at the end, so
//! a result does not depend on how rows and tokens are tiled or split across threads.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::model::quant::QK;
use crate::model::{QMatrix, WeightType};

/// Whether this CPU has the features of the AVX2 kernels (the check is cached by std).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Whether this CPU also has AVX-512F for the 16-lane kernels.
pub(super) fn available_512() -> bool {
    available() && is_x86_feature_detected!("avx512f")
}

/// `out[(r - rows.start) * n + t] = W[r] . x[t]` for `r` in `rows`, `t < n`, with AVX2.
///
/// Same contract as `scalar::rows`.
///
/// # Panics
/// If the CPU lacks AVX2, FMA or F16C (check [`available`]) or the lengths are wrong.
pub(super) fn rows(w: &QMatrix, x: &[f32], n: usize, rows: Range<usize>, out: &mut [f32]) {
    assert!(available(), "simd_x86::rows: CPU lacks avx2/fma/f16c");
    check(w, x, n, &rows, out);
    // SAFETY: the CPU features were checked above, the lengths and the row range by `check`,
    // and `QMatrix::new` guarantees `data` holds exactly `rows * row_bytes()` bytes.
    unsafe {
        match w.dtype {
            WeightType::F32 => drive::<Avx2<F32>>(w, x, n, rows, out),
            WeightType::F16 => drive::<Avx2<F16>>(w, x, n, rows, out),
            WeightType::BF16 => drive::<Avx2<Bf16>>(w, x, n, rows, out),
            WeightType::Q4_0 => drive::<Avx2<Q40>>(w, x, n, rows, out),
            WeightType::Q4_1 => drive::<Avx2<Q41>>(w, x, n, rows, out),
            WeightType::Q8_0 => drive::<Avx2<Q80>>(w, x, n, rows, out),
        }
    }
}

/// As [`rows`], with the AVX-512 kernels.
///
/// # Panics
/// If the CPU lacks AVX-512F (check [`available_512`]) or the lengths are wrong.
pub(super) fn rows_512(w: &QMatrix, x: &[f32], n: usize, rows: Range<usize>, out: &mut [f32]) {
    assert!(available_512(), "simd_x86::rows_512: CPU lacks avx512f");
    check(w, x, n, &rows, out);
    // SAFETY: as in `rows`, with the AVX-512 features checked above.
    unsafe {
        match w.dtype {
            WeightType::F32 => drive::<Avx512<F32>>(w, x, n, rows, out),
            WeightType::F16 => drive::<Avx512<F16>>(w, x, n, rows, out),
            WeightType::BF16 => drive::<Avx512<Bf16>>(w, x, n, rows, out),
            WeightType::Q4_0 => drive::<Avx512<Q40>>(w, x, n, rows, out),
            WeightType::Q4_1 => drive::<Avx512<Q41>>(w, x, n, rows, out),
            WeightType::Q8_0 => drive::<Avx512<Q80>>(w, x, n, rows, out),
        }
    }
}

fn check(w: &QMatrix, x: &[f32], n: usize, rows: &Range<usize>, out: &[f32]) {
    assert_eq!(x.len(), n * w.cols, "simd_x86: x has the wrong length");
    assert_eq!(out.len(), rows.len() * n, "simd_x86: out has the wrong length");
    assert!(rows.end <= w.rows, "simd_x86: rows out of range");
    assert_eq!(w.data.len(), w.rows * w.row_bytes(), "simd_x86: matrix data has the wrong length");
}

/// A storage format seen as 32-element blocks.
trait Format {
    /// Bytes of one 32-element block.
    const BYTES: usize;
    /// Decodes the block at `p` into elements `8c..8c+8` for `c < 4`.
    ///
    /// # Safety
    /// `p` must point at `BYTES` readable bytes; the CPU must have avx2, fma and f16c.
    unsafe fn decode(p: *const u8) -> [__m256; 4];
}

/// Loads a little-endian f16 at `p` and broadcasts it as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_f16(p: *const u8) -> __m256 {
    let h = p.cast::<u16>().read_unaligned();
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The four chunks of 8 nibbles of a 16-byte `qs` as f32: low nibbles then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(qs: *const u8) -> [__m256; 4] {
    let v = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    [
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo))),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi))),
    ]
}

/// Eight bf16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16x8(p: *const u8) -> __m256 {
    let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
    _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
}

/// Eight i8 at `p` as f32, times `d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8x8(p: *const u8, d: __m256) -> __m256 {
    let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()));
    _mm256_mul_ps(_mm256_cvtepi32_ps(v), d)
}

struct F32;
impl Format for F32 {
    const BYTES: usize = 4 * QK;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        let p = p.cast::<f32>();
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))]
    }
}

struct F16;
impl Format for F16 {
    const BYTES: usize = 2 * QK;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        let h = |i: usize| _mm_loadu_si128(p.add(16 * i).cast());
        [_mm256_cvtph_ps(h(0)), _mm256_cvtph_ps(h(1)), _mm256_cvtph_ps(h(2)), _mm256_cvtph_ps(h(3))]
    }
}

struct Bf16;
impl Format for Bf16 {
    const BYTES: usize = 2 * QK;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        [bf16x8(p), bf16x8(p.add(16)), bf16x8(p.add(32)), bf16x8(p.add(48))]
    }
}

struct Q40;
impl Format for Q40 {
    const BYTES: usize = 18;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        let d = bcast_f16(p);
        // (q - 8) * d == q * d + (-8 d), exactly: every product here is exact in f32.
        let off = _mm256_mul_ps(d, _mm256_set1_ps(-8.0));
        let q = nibbles(p.add(2));
        [
            _mm256_fmadd_ps(q[0], d, off),
            _mm256_fmadd_ps(q[1], d, off),
            _mm256_fmadd_ps(q[2], d, off),
            _mm256_fmadd_ps(q[3], d, off),
        ]
    }
}

struct Q41;
impl Format for Q41 {
    const BYTES: usize = 20;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        // d and m are adjacent f16s: convert both at once.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        let d = _mm256_broadcastss_ps(dm);
        let m = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
        // q * d is exact, so the FMA rounds exactly like the reference's `q * d + m`.
        let q = nibbles(p.add(4));
        [
            _mm256_fmadd_ps(q[0], d, m),
            _mm256_fmadd_ps(q[1], d, m),
            _mm256_fmadd_ps(q[2], d, m),
            _mm256_fmadd_ps(q[3], d, m),
        ]
    }
}

struct Q80;
impl Format for Q80 {
    const BYTES: usize = 34;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8) -> [__m256; 4] {
        let d = bcast_f16(p);
        [i8x8(p.add(2), d), i8x8(p.add(10), d), i8x8(p.add(18), d), i8x8(p.add(26), d)]
    }
}

/// Sums the eight lanes of `v` in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Dot products of `R` rows with `T` tokens over `nb` full blocks.
///
/// # Safety
/// Each `rows[i]` must point at `nb * F::BYTES` readable bytes and each `xs[t]` at `nb * 32`
/// readable f32; the CPU must have avx2, fma and f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<F: Format, const R: usize, const T: usize>(
    rows: [*const u8; R],
    xs: [*const f32; T],
    nb: usize,
    pf: usize,
) -> [[f32; T]; R] {
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
    for b in 0..nb {
        for r in 0..R {
            // A hint only: prefetching past the end of the matrix is harmless.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].wrapping_add(b * F::BYTES + pf).cast());
            let w = F::decode(rows[r].add(b * F::BYTES));
            for t in 0..T {
                let xp = xs[t].add(b * QK);
                let a = &mut acc[r][t];
                a[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xp), a[0]);
                a[1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp.add(8)), a[1]);
                a[0] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp.add(16)), a[0]);
                a[1] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp.add(24)), a[1]);
            }
        }
    }
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
        }
    }
    out
}

/// A tile kernel: dot products of `R` rows with `T` tokens over `nb` full 32-element blocks.
trait Kern {
    /// Whether tiles of 8 tokens fit the registers (else 4).
    const WIDE: bool;
    /// # Safety
    /// Each `rows[i]` must point at `nb` readable blocks and each `xs[t]` at `nb * 32`
    /// readable f32; the CPU must have the kernel's features.
    unsafe fn tile<const R: usize, const T: usize>(
        rows: [*const u8; R],
        xs: [*const f32; T],
        nb: usize,
        pf: usize,
    ) -> [[f32; T]; R];
}

struct Avx2<F>(std::marker::PhantomData<F>);
impl<F: Format> Kern for Avx2<F> {
    const WIDE: bool = false;
    unsafe fn tile<const R: usize, const T: usize>(
        rows: [*const u8; R],
        xs: [*const f32; T],
        nb: usize,
        pf: usize,
    ) -> [[f32; T]; R] {
        tile::<F, R, T>(rows, xs, nb, pf)
    }
}

struct Avx512<F>(std::marker::PhantomData<F>);
impl<F: Format512> Kern for Avx512<F> {
    const WIDE: bool = true;
    unsafe fn tile<const R: usize, const T: usize>(
        rows: [*const u8; R],
        xs: [*const f32; T],
        nb: usize,
        pf: usize,
    ) -> [[f32; T]; R] {
        tile512::<F, R, T>(rows, xs, nb, pf)
    }
}

/// Rows processed together in the one-token case.
const ROW_TILE: usize = 4;
/// Rows whose products with every token tile are done before the next rows (several tokens).
const ROW_CHUNK: usize = 16;
/// How far ahead (in rows) the one-token kernels prefetch the weights: decode streams every
/// weight from memory once, and the hardware prefetcher alone left the core waiting (measured
/// on the default model: 4.4 GB/s without, 6.8 GB/s with, per core).
const PREFETCH_ROWS: usize = 8;

/// Runs kernel `K` over `rows` x `0..n`, writing `out[(r - rows.start) * n + t]`.
///
/// Row and token tiles only group independent dot products: every (row, token) result is
/// the same sequence of operations whatever the tile it falls in.
///
/// # Safety
/// The lengths and the row range must have passed `check`; the CPU must have `K`'s features.
unsafe fn drive<K: Kern>(w: &QMatrix, x: &[f32], n: usize, rows: Range<usize>, out: &mut [f32]) {
    let cols = w.cols;
    let nb = cols / QK;
    let rb = w.row_bytes();
    let base = w.data.as_ptr();
    let xp = x.as_ptr();
    let row_ptr = |r: usize| base.add(r * rb);
    let x_ptr = |t: usize| xp.add(t * cols);
    let r0 = rows.start;
    let pf = PREFETCH_ROWS * rb;
    if n == 1 {
        let mut r = r0;
        while r + ROW_TILE <= rows.end {
            let o = K::tile::<ROW_TILE, 1>([row_ptr(r), row_ptr(r + 1), row_ptr(r + 2), row_ptr(r + 3)], [xp], nb, pf);
            for i in 0..ROW_TILE {
                out[r - r0 + i] = o[i][0];
            }
            r += ROW_TILE;
        }
        while r < rows.end {
            out[r - r0] = K::tile::<1, 1>([row_ptr(r)], [xp], nb, pf)[0][0];
            r += 1;
        }
    } else {
        // Rows in chunks of ROW_CHUNK, and within a chunk token tiles outermost: one tile's
        // tokens (at most 8 x cols f32) and the chunk's rows stay in cache while they meet,
        // instead of every row reading all `n` tokens (which overflows L1 from about 8 tokens
        // of the default model's 576 columns, and made 16 tokens slower per token than 4).
        let mut c = r0;
        while c < rows.end {
            let chunk = c..(c + ROW_CHUNK).min(rows.end);
            let mut t = 0;
            while t < n {
                let width = if K::WIDE && t + 8 <= n {
                    8
                } else if t + 4 <= n {
                    4
                } else if t + 2 <= n {
                    2
                } else {
                    1
                };
                for r in chunk.clone() {
                    let o_r = &mut out[(r - r0) * n + t..(r - r0) * n + t + width];
                    let p = [row_ptr(r)];
                    match width {
                        8 => o_r.copy_from_slice(
                            &K::tile::<1, 8>(p, [0, 1, 2, 3, 4, 5, 6, 7].map(|i| x_ptr(t + i)), nb, rb)[0],
                        ),
                        4 => o_r.copy_from_slice(&K::tile::<1, 4>(p, [0, 1, 2, 3].map(|i| x_ptr(t + i)), nb, rb)[0]),
                        2 => o_r.copy_from_slice(&K::tile::<1, 2>(p, [x_ptr(t), x_ptr(t + 1)], nb, rb)[0]),
                        _ => o_r[0] = K::tile::<1, 1>(p, [x_ptr(t)], nb, rb)[0][0],
                    }
                }
                t += width;
            }
            c = chunk.end;
        }
    }
    let tail = cols % QK;
    if tail > 0 {
        // Float types only: the last `tail` columns, after the blocks, in column order.
        let esz = w.dtype.block_bytes();
        let mut tw = [0.0f32; QK];
        for r in rows.clone() {
            crate::model::quant::dequantize(w.dtype, &w.row(r)[nb * QK * esz..], &mut tw[..tail]);
            for t in 0..n {
                let xt = &x[t * cols + nb * QK..(t + 1) * cols];
                let s: f32 = tw.iter().zip(xt).map(|(a, b)| a * b).sum();
                out[(r - r0) * n + t] += s;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// AVX-512: 16 lanes, a block is two vectors.

/// A storage format seen as 32-element blocks, decoded into two 16-lane vectors.
trait Format512: Format {
    /// Decodes the block at `p` into elements `0..16` and `16..32`.
    ///
    /// # Safety
    /// `p` must point at `BYTES` readable bytes; the CPU must have avx512f, fma and f16c.
    unsafe fn decode512(p: *const u8) -> [__m512; 2];
}

/// Loads a little-endian f16 at `p` and broadcasts it as f32 to 16 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn bcast_f16_512(p: *const u8) -> __m512 {
    let h = p.cast::<u16>().read_unaligned();
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The 32 nibbles of a 16-byte `qs` as f32: low nibbles (elements 0..16), then high.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn nibbles512(qs: *const u8) -> [__m512; 2] {
    let v = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    [_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))]
}

impl Format512 for F32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        let p = p.cast::<f32>();
        [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
    }
}

impl Format512 for F16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        [_mm512_cvtph_ps(_mm256_loadu_si256(p.cast())), _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32).cast()))]
    }
}

/// Sixteen bf16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn bf16x16(p: *const u8) -> __m512 {
    let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
    _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
}

impl Format512 for Bf16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        [bf16x16(p), bf16x16(p.add(32))]
    }
}

impl Format512 for Q40 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        let d = bcast_f16_512(p);
        let off = _mm512_mul_ps(d, _mm512_set1_ps(-8.0));
        let q = nibbles512(p.add(2));
        [_mm512_fmadd_ps(q[0], d, off), _mm512_fmadd_ps(q[1], d, off)]
    }
}

impl Format512 for Q41 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        let d = _mm512_broadcastss_ps(dm);
        let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
        let q = nibbles512(p.add(4));
        [_mm512_fmadd_ps(q[0], d, m), _mm512_fmadd_ps(q[1], d, m)]
    }
}

/// Sixteen i8 at `p` as f32, times `d`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn i8x16(p: *const u8, d: __m512) -> __m512 {
    let v = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()));
    _mm512_mul_ps(_mm512_cvtepi32_ps(v), d)
}

impl Format512 for Q80 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8) -> [__m512; 2] {
        let d = bcast_f16_512(p);
        [i8x16(p.add(2), d), i8x16(p.add(18), d)]
    }
}

/// Sums the sixteen lanes of `v` in a fixed order.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn hsum512(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    hsum(_mm256_add_ps(lo, hi))
}

/// [`tile`] with 16-lane vectors: two accumulators per (row, token), one per half block.
///
/// # Safety
/// As for [`tile`], with avx512f.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile512<F: Format512, const R: usize, const T: usize>(
    rows: [*const u8; R],
    xs: [*const f32; T],
    nb: usize,
    pf: usize,
) -> [[f32; T]; R] {
    let mut acc = [[[_mm512_setzero_ps(); 2]; T]; R];
    for b in 0..nb {
        for r in 0..R {
            // A hint only: prefetching past the end of the matrix is harmless.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].wrapping_add(b * F::BYTES + pf).cast());
            let w = F::decode512(rows[r].add(b * F::BYTES));
            for t in 0..T {
                let xp = xs[t].add(b * QK);
                let a = &mut acc[r][t];
                a[0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xp), a[0]);
                a[1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xp.add(16)), a[1]);
            }
        }
    }
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum512(_mm512_add_ps(acc[r][t][0], acc[r][t][1]));
        }
    }
    out
}
