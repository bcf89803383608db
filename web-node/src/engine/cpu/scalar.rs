//! Portable matrix-product kernel: plain Rust, no intrinsics.
//!
//! Used on targets without the x86 kernels (wasm32, where it autovectorizes to simd128 when
//! that feature is on) and tested directly on every target. Each row is dequantized block by
//! block (32 elements, or a 256-element K-quant super-block) into a stack buffer with the
//! reference dequantization, and multiplied into eight lane accumulators per token, 32
//! elements at a time; the per-(row, token) arithmetic does not depend on how rows or tokens
//! are grouped.

use std::ops::Range;

use crate::model::quant::{dequantize, QK, QK_K};
use crate::model::QMatrix;

/// Tokens handled per pass over a row (the row's blocks are dequantized once per pass).
const TOKEN_TILE: usize = 8;

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
    // Elements decoded at once: a quantized block, or 32 elements of a float row.
    let unit = w.dtype.block_len().max(QK);
    let unit_bytes = w.dtype.bytes_for(unit).expect("whole blocks");
    let full = cols / unit;
    let tail = cols % unit; // only the float types can have a ragged end
    let mut buf = [0.0f32; QK_K];
    for (ri, r) in rows.enumerate() {
        let row = w.row(r);
        let out_r = &mut out[ri * n..(ri + 1) * n];
        for t0 in (0..n).step_by(TOKEN_TILE) {
            let tn = TOKEN_TILE.min(n - t0);
            let mut acc = [[0.0f32; 8]; TOKEN_TILE];
            for b in 0..full {
                dequantize(w.dtype, &row[b * unit_bytes..(b + 1) * unit_bytes], &mut buf[..unit]);
                for (t, a) in acc.iter_mut().enumerate().take(tn) {
                    let xb = &x[(t0 + t) * cols + b * unit..][..unit];
                    for (wc, xc) in buf[..unit].chunks_exact(8).zip(xb.chunks_exact(8)) {
                        for l in 0..8 {
                            a[l] += wc[l] * xc[l];
                        }
                    }
                }
            }
            if tail > 0 {
                let mut tb = [0.0f32; QK];
                dequantize(w.dtype, &row[full * unit_bytes..], &mut tb[..tail]);
                for (t, a) in acc.iter_mut().enumerate().take(tn) {
                    let xb = &x[(t0 + t) * cols + full * unit..][..tail];
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
