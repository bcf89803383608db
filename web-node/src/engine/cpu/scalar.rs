//! Portable matrix-product kernel: plain Rust, no intrinsics.
//!
//! Used on targets without the x86 kernels (wasm32, where it autovectorizes to simd128 when
//! that feature is on) and tested directly on every target. Each row is dequantized block by
//! block (32 elements) into a stack buffer and multiplied into eight lane accumulators per
//! token; the per-(row, token) arithmetic does not depend on how rows or tokens are grouped.

use std::ops::Range;

use crate::model::quant::{f16_at, QK};
use crate::model::{QMatrix, WeightType};

/// Tokens handled per pass over a row (the row's blocks are dequantized once per pass).
const TOKEN_TILE: usize = 8;

/// Dequantizes one 32-element block (its stored bytes) into `out`.
type DecodeFn = fn(&[u8], &mut [f32; QK]);

fn decode_f32(b: &[u8], out: &mut [f32; QK]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn decode_f16(b: &[u8], out: &mut [f32; QK]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f16_at(c);
    }
}

fn decode_bf16(b: &[u8], out: &mut [f32; QK]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

fn decode_q4_0(b: &[u8], out: &mut [f32; QK]) {
    let d = f16_at(b);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = ((qs[j] & 0xF) as f32 - 8.0) * d;
        out[j + 16] = ((qs[j] >> 4) as f32 - 8.0) * d;
    }
}

fn decode_q4_1(b: &[u8], out: &mut [f32; QK]) {
    let d = f16_at(b);
    let m = f16_at(&b[2..]);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = (qs[j] & 0xF) as f32 * d + m;
        out[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn decode_q8_0(b: &[u8], out: &mut [f32; QK]) {
    let d = f16_at(b);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// The block decoder and the bytes of one 32-element block for `dtype`.
fn decoder(dtype: WeightType) -> (DecodeFn, usize) {
    match dtype {
        WeightType::F32 => (decode_f32, 4 * QK),
        WeightType::F16 => (decode_f16, 2 * QK),
        WeightType::BF16 => (decode_bf16, 2 * QK),
        WeightType::Q4_0 => (decode_q4_0, 18),
        WeightType::Q4_1 => (decode_q4_1, 20),
        WeightType::Q8_0 => (decode_q8_0, 34),
    }
}

/// Sums eight lanes in a fixed order.
#[inline]
fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// `out[(r - rows.start) * n + t] = W[r] . x[t]` for `r` in `rows`, `t < n`.
///
/// `x` is `[n, cols]`; `out` holds `rows.len() * n` values, row-major by weight row.
pub(super) fn rows(w: &QMatrix, x: &[f32], n: usize, rows: Range<usize>, out: &mut [f32]) {
    let cols = w.cols;
    assert_eq!(x.len(), n * cols, "scalar::rows: x has the wrong length");
    assert_eq!(out.len(), rows.len() * n, "scalar::rows: out has the wrong length");
    let (decode, block_bytes) = decoder(w.dtype);
    let full = cols / QK;
    let tail = cols % QK; // only the float types can have a ragged end
    let mut buf = [0.0f32; QK];
    for (ri, r) in rows.enumerate() {
        let row = w.row(r);
        let out_r = &mut out[ri * n..(ri + 1) * n];
        for t0 in (0..n).step_by(TOKEN_TILE) {
            let tn = TOKEN_TILE.min(n - t0);
            let mut acc = [[0.0f32; 8]; TOKEN_TILE];
            for b in 0..full {
                decode(&row[b * block_bytes..(b + 1) * block_bytes], &mut buf);
                for (t, a) in acc.iter_mut().enumerate().take(tn) {
                    let xb = &x[(t0 + t) * cols + b * QK..][..QK];
                    for (wc, xc) in buf.chunks_exact(8).zip(xb.chunks_exact(8)) {
                        for l in 0..8 {
                            a[l] += wc[l] * xc[l];
                        }
                    }
                }
            }
            if tail > 0 {
                let esz = w.dtype.block_bytes();
                let mut tb = [0.0f32; QK];
                crate::model::quant::dequantize(w.dtype, &row[full * QK * esz..], &mut tb[..tail]);
                for (t, a) in acc.iter_mut().enumerate().take(tn) {
                    let xb = &x[(t0 + t) * cols + full * QK..][..tail];
                    for (i, (wv, xv)) in tb.iter().zip(xb).enumerate() {
                        a[i % 8] += wv * xv;
                    }
                }
            }
            for (o, a) in out_r[t0..t0 + tn].iter_mut().zip(&acc) {
                *o = hsum8(a);
            }
        }
    }
}
