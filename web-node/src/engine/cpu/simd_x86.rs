//! AVX2 + FMA + F16C (and AVX-512F) matrix-product kernels for x86_64, chosen at run time.
//!
//! Each 32-element weight block (or 32-element chunk of a 256-element K-quant super-block) is
//! decoded into four `__m256` (or two `__m512`) of f32 (exactly the values of the reference
//! dequantization: `q * d + m` is one FMA and every product is exact in f32)
//! and multiplied into the f32 activations with FMAs. Every (row, token) pair owns two
//! accumulators (chunks 0, 2 and 1, 3 of each block), reduced in a fixed order at the end, so
//! a result does not depend on how rows and tokens are tiled or split across threads.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::model::quant::{iq4xs_scale, k4_scale_min, q3k_scale, IQ4_VALUES, QK};
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
            WeightType::Q5_0 => drive::<Avx2<Q50>>(w, x, n, rows, out),
            WeightType::Q5_1 => drive::<Avx2<Q51>>(w, x, n, rows, out),
            WeightType::IQ4_NL => drive::<Avx2<Iq4Nl>>(w, x, n, rows, out),
            WeightType::Q2_K => drive::<Avx2<Q2K>>(w, x, n, rows, out),
            WeightType::Q3_K => drive::<Avx2<Q3K>>(w, x, n, rows, out),
            WeightType::Q4_K => drive::<Avx2<Q4K>>(w, x, n, rows, out),
            WeightType::Q5_K => drive::<Avx2<Q5K>>(w, x, n, rows, out),
            WeightType::Q6_K => drive::<Avx2<Q6K>>(w, x, n, rows, out),
            WeightType::IQ4_XS => drive::<Avx2<Iq4Xs>>(w, x, n, rows, out),
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
            WeightType::Q5_0 => drive::<Avx512<Q50>>(w, x, n, rows, out),
            WeightType::Q5_1 => drive::<Avx512<Q51>>(w, x, n, rows, out),
            WeightType::IQ4_NL => drive::<Avx512<Iq4Nl>>(w, x, n, rows, out),
            WeightType::Q2_K => drive::<Avx512<Q2K>>(w, x, n, rows, out),
            WeightType::Q3_K => drive::<Avx512<Q3K>>(w, x, n, rows, out),
            WeightType::Q4_K => drive::<Avx512<Q4K>>(w, x, n, rows, out),
            WeightType::Q5_K => drive::<Avx512<Q5K>>(w, x, n, rows, out),
            WeightType::Q6_K => drive::<Avx512<Q6K>>(w, x, n, rows, out),
            WeightType::IQ4_XS => drive::<Avx512<Iq4Xs>>(w, x, n, rows, out),
        }
    }
}

fn check(w: &QMatrix, x: &[f32], n: usize, rows: &Range<usize>, out: &[f32]) {
    assert_eq!(x.len(), n * w.cols, "simd_x86: x has the wrong length");
    assert_eq!(out.len(), rows.len() * n, "simd_x86: out has the wrong length");
    assert!(rows.end <= w.rows, "simd_x86: rows out of range");
    assert_eq!(w.data.len(), w.rows * w.row_bytes(), "simd_x86: matrix data has the wrong length");
}

/// A storage format seen as stored blocks of `CHUNKS` 32-element chunks.
trait Format {
    /// Bytes of one stored block.
    const BYTES: usize;
    /// 32-element chunks per stored block: 1, or 8 for a K-quant super-block.
    const CHUNKS: usize = 1;
    /// Decodes chunk `c` (< `CHUNKS`) of the block at `p`: vector `i` holds its elements
    /// `8i..8i+8`.
    ///
    /// # Safety
    /// `p` must point at `BYTES` readable bytes; the CPU must have avx2, fma and f16c.
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4];
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
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let p = p.cast::<f32>();
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))]
    }
}

struct F16;
impl Format for F16 {
    const BYTES: usize = 2 * QK;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let h = |i: usize| _mm_loadu_si128(p.add(16 * i).cast());
        [_mm256_cvtph_ps(h(0)), _mm256_cvtph_ps(h(1)), _mm256_cvtph_ps(h(2)), _mm256_cvtph_ps(h(3))]
    }
}

struct Bf16;
impl Format for Bf16 {
    const BYTES: usize = 2 * QK;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        [bf16x8(p), bf16x8(p.add(16)), bf16x8(p.add(32)), bf16x8(p.add(48))]
    }
}

struct Q40;
impl Format for Q40 {
    const BYTES: usize = 18;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
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
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
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
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let d = bcast_f16(p);
        [i8x8(p.add(2), d), i8x8(p.add(10), d), i8x8(p.add(18), d), i8x8(p.add(26), d)]
    }
}

// ---------------------------------------------------------------------------------------
// 5-bit, non-linear and K-quant formats. Each decodes its 32 integer values into the bytes of
// one `__m256i` (element `i` in byte `i`), then converts and scales them.

/// The f32 values of the 32 unsigned bytes of `v`, in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8x32_f32(v: __m256i) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    [
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo))),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi))),
    ]
}

/// The f32 values of the 32 signed bytes of `v`, in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8x32_f32(v: __m256i) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    [
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo))),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi))),
    ]
}

/// The 32 nibbles of a 16-byte `qs` as bytes: low nibbles (elements 0..16), then high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_bytes(qs: *const u8) -> __m256i {
    let v = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask))
}

/// Bits `s..s + width` of each of the 32 bytes at `p`, as bytes (`mask` = `2^width - 1`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits32(p: *const u8, s: usize, mask: i8) -> __m256i {
    let v = _mm256_loadu_si256(p.cast());
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(s as i32)), _mm256_set1_epi8(mask))
}

/// Bit `i` of the little-endian u32 at `p` as byte `i`, valued `0` or `0x10` (a 5-bit
/// value's top bit).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits32(p: *const u8) -> __m256i {
    let v = _mm256_set1_epi32(p.cast::<i32>().read_unaligned());
    // Byte i takes byte i / 8 of the word, then tests its bit i % 8.
    let spread =
        _mm256_shuffle_epi8(v, _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Looks the 32 nibble bytes of `q` up in the non-linear 4-bit table (signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_lookup(q: __m256i) -> __m256i {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_VALUES.as_ptr().cast()));
    _mm256_shuffle_epi8(table, q)
}

/// `q * d + m` for each of the four vectors (one rounding; `q * d` is exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_add(q: [__m256; 4], d: f32, m: f32) -> [__m256; 4] {
    let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
    q.map(|v| _mm256_fmadd_ps(v, d, m))
}

/// As [`scale_add`] with one `(d, m)` for elements `0..16` and another for `16..32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_add_halves(q: [__m256; 4], d0: f32, m0: f32, d1: f32, m1: f32) -> [__m256; 4] {
    let (d0, m0, d1, m1) = (_mm256_set1_ps(d0), _mm256_set1_ps(m0), _mm256_set1_ps(d1), _mm256_set1_ps(m1));
    [
        _mm256_fmadd_ps(q[0], d0, m0),
        _mm256_fmadd_ps(q[1], d0, m0),
        _mm256_fmadd_ps(q[2], d1, m1),
        _mm256_fmadd_ps(q[3], d1, m1),
    ]
}

/// The little-endian f16 at `p` as f32 (with F16C: a software conversion here costs more than
/// a chunk's arithmetic).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    let h = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

struct Q50;
impl Format for Q50 {
    const BYTES: usize = 22;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let d = f16_ptr(p);
        let q = _mm256_or_si256(nibble_bytes(p.add(6)), high_bits32(p.add(2)));
        // (q - 16) * d == q * d - 16 d exactly (a 5-bit integer times an f16).
        scale_add(u8x32_f32(q), d, -16.0 * d)
    }
}

struct Q51;
impl Format for Q51 {
    const BYTES: usize = 24;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let q = _mm256_or_si256(nibble_bytes(p.add(8)), high_bits32(p.add(4)));
        scale_add(u8x32_f32(q), f16_ptr(p), f16_ptr(p.add(2)))
    }
}

struct Iq4Nl;
impl Format for Iq4Nl {
    const BYTES: usize = 18;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, _c: usize) -> [__m256; 4] {
        let q = i8x32_f32(iq4_lookup(nibble_bytes(p.add(2))));
        scale_add(q, f16_ptr(p), 0.0)
    }
}

struct Q2K;
impl Format for Q2K {
    const BYTES: usize = 84;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        let (d, dmin) = (f16_ptr(p.add(80)), f16_ptr(p.add(82)));
        let q = u8x32_f32(bits32(p.add(16 + 32 * (c / 4)), 2 * (c % 4), 3));
        let (s0, s1) = (*p.add(2 * c), *p.add(2 * c + 1));
        let sm = |s: u8| (d * (s & 0xF) as f32, -(dmin * (s >> 4) as f32));
        let ((d0, m0), (d1, m1)) = (sm(s0), sm(s1));
        scale_add_halves(q, d0, m0, d1, m1)
    }
}

struct Q3K;
impl Format for Q3K {
    const BYTES: usize = 110;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        let d = f16_ptr(p.add(108));
        let lo = bits32(p.add(32 + 32 * (c / 4)), 2 * (c % 4), 3);
        let hi = bits32(p, c, 1);
        // lo - 4 when the hmask bit is clear, lo when set: (lo | hi << 2) - 4.
        let q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)), _mm256_set1_epi8(4));
        let scales = std::slice::from_raw_parts(p.add(96), 12);
        let (d0, d1) = (d * q3k_scale(2 * c, scales) as f32, d * q3k_scale(2 * c + 1, scales) as f32);
        scale_add_halves(i8x32_f32(q), d0, 0.0, d1, 0.0)
    }
}

/// Q4_K and Q5_K (`FIVE`): chunk `c`'s 4 (or 5) bit values with their 6-bit scale and min.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_k45<const FIVE: bool>(p: *const u8, c: usize) -> [__m256; 4] {
    let (d, dmin) = (f16_ptr(p), f16_ptr(p.add(2)));
    let (sc, m) = k4_scale_min(c, std::slice::from_raw_parts(p.add(4), 12));
    let qs = if FIVE { p.add(48) } else { p.add(16) };
    let mut q = bits32(qs.add(32 * (c / 2)), 4 * (c % 2), 0xF);
    if FIVE {
        q = _mm256_or_si256(q, _mm256_slli_epi16(bits32(p.add(16), c, 1), 4));
    }
    scale_add(u8x32_f32(q), d * sc as f32, -(dmin * m as f32))
}

struct Q4K;
impl Format for Q4K {
    const BYTES: usize = 144;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        decode_k45::<false>(p, c)
    }
}

struct Q5K;
impl Format for Q5K {
    const BYTES: usize = 176;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        decode_k45::<true>(p, c)
    }
}

struct Q6K;
impl Format for Q6K {
    const BYTES: usize = 210;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        let (h, k) = (c / 4, c % 4);
        let d = f16_ptr(p.add(208));
        let lo = bits32(p.add(64 * h + 32 * (k % 2)), 4 * (k / 2), 0xF);
        let hi = bits32(p.add(128 + 32 * h), 2 * k, 3);
        let q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
        let (s0, s1) = (*p.add(192 + 8 * h + 2 * k) as i8, *p.add(193 + 8 * h + 2 * k) as i8);
        scale_add_halves(i8x32_f32(q), d * s0 as f32, 0.0, d * s1 as f32, 0.0)
    }
}

struct Iq4Xs;
impl Format for Iq4Xs {
    const BYTES: usize = 136;
    const CHUNKS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(p: *const u8, c: usize) -> [__m256; 4] {
        let dl = f16_ptr(p) * iq4xs_scale(c, std::slice::from_raw_parts(p, 8)) as f32;
        scale_add(i8x32_f32(iq4_lookup(nibble_bytes(p.add(8 + 16 * c)))), dl, 0.0)
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

/// Dot products of `R` rows with `T` tokens over `nb` full stored blocks.
///
/// # Safety
/// Each `rows[i]` must point at `nb * F::BYTES` readable bytes and each `xs[t]` at
/// `nb * F::CHUNKS * 32` readable f32; the CPU must have avx2, fma and f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<F: Format, const R: usize, const T: usize>(
    rows: [*const u8; R],
    xs: [*const f32; T],
    nb: usize,
    pf: usize,
) -> [[f32; T]; R] {
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
    for i in 0..nb * F::CHUNKS {
        let (b, c) = (i / F::CHUNKS, i % F::CHUNKS);
        for r in 0..R {
            // A hint only: prefetching past the end of the matrix is harmless.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].wrapping_add(b * F::BYTES + c * 32 + pf).cast());
            let w = F::decode(rows[r].add(b * F::BYTES), c);
            for t in 0..T {
                let xp = xs[t].add(i * QK);
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

/// A tile kernel: dot products of `R` rows with `T` tokens over `nb` full stored blocks.
trait Kern {
    /// Whether tiles of 8 tokens fit the registers (else 4).
    const WIDE: bool;
    /// # Safety
    /// Each `rows[i]` must point at `nb` readable blocks and each `xs[t]` at their
    /// elements' count of readable f32; the CPU must have the kernel's features.
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
    // Stored blocks per row (float rows: 32-element blocks, then a tail).
    let unit = w.dtype.block_len().max(QK);
    let nb = cols / unit;
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
    let tail = cols % unit;
    if tail > 0 {
        // Float types only: the last `tail` columns, after the blocks, in column order.
        let esz = w.dtype.block_bytes();
        let mut tw = [0.0f32; QK];
        for r in rows.clone() {
            crate::model::quant::dequantize(w.dtype, &w.row(r)[nb * unit * esz..], &mut tw[..tail]);
            for t in 0..n {
                let xt = &x[t * cols + nb * unit..(t + 1) * cols];
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
    /// Decodes chunk `c` of the block at `p` into elements `0..16` and `16..32`.
    ///
    /// # Safety
    /// `p` must point at `BYTES` readable bytes; the CPU must have avx512f, fma and f16c.
    unsafe fn decode512(p: *const u8, c: usize) -> [__m512; 2];
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
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
        let p = p.cast::<f32>();
        [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
    }
}

impl Format512 for F16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
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
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
        [bf16x16(p), bf16x16(p.add(32))]
    }
}

impl Format512 for Q40 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
        let d = bcast_f16_512(p);
        let off = _mm512_mul_ps(d, _mm512_set1_ps(-8.0));
        let q = nibbles512(p.add(2));
        [_mm512_fmadd_ps(q[0], d, off), _mm512_fmadd_ps(q[1], d, off)]
    }
}

impl Format512 for Q41 {
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
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
    unsafe fn decode512(p: *const u8, _c: usize) -> [__m512; 2] {
        let d = bcast_f16_512(p);
        [i8x16(p.add(2), d), i8x16(p.add(18), d)]
    }
}

/// Chunk `c` of the block at `p` with `F`'s eight-lane decoder, as two 16-lane vectors.
///
/// # Safety
/// As [`Format::decode`], with avx512f.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn joined<F: Format>(p: *const u8, c: usize) -> [__m512; 2] {
    let w = F::decode(p, c);
    let join = |a: __m256, b: __m256| {
        _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1))
    };
    [join(w[0], w[1]), join(w[2], w[3])]
}

/// AVX-512 kernels for formats whose decoding is done in eight-lane halves.
macro_rules! joined_512 {
    ($($t:ty),*) => {$(
        impl Format512 for $t {
            #[inline]
            #[target_feature(enable = "avx512f,avx2,fma,f16c")]
            unsafe fn decode512(p: *const u8, c: usize) -> [__m512; 2] {
                joined::<Self>(p, c)
            }
        }
    )*};
}
joined_512!(Q50, Q51, Iq4Nl, Q2K, Q3K, Q4K, Q5K, Q6K, Iq4Xs);

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
    for i in 0..nb * F::CHUNKS {
        let (b, c) = (i / F::CHUNKS, i % F::CHUNKS);
        for r in 0..R {
            // A hint only: prefetching past the end of the matrix is harmless.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].wrapping_add(b * F::BYTES + c * 32 + pf).cast());
            let w = F::decode512(rows[r].add(b * F::BYTES), c);
            for t in 0..T {
                let xp = xs[t].add(i * QK);
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
