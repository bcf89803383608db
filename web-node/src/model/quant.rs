//! Weight storage types and the plain-Rust reference dequantization.
//!
//! Main types: [`WeightType`] (how one tensor's elements are stored) and [`QMatrix`] (a 2-D
//! weight matrix kept in its stored format). The functions here are the *reference*: simple,
//! obviously correct loops that every backend kernel is tested against. They are not fast.
//!
//! Block layouts (ggml's, little-endian), 32 elements per block:
//! - `Q4_0`: `d: f16`, `qs: [u8; 16]`; element `j < 16` is `(qs[j] & 0xF) - 8`, element
//!   `j + 16` is `(qs[j] >> 4) - 8`, both times `d`. 18 bytes.
//! - `Q4_1`: `d: f16`, `m: f16`, `qs: [u8; 16]`; same nibble order, value `q * d + m`. 20 bytes.
//! - `Q8_0`: `d: f16`, `qs: [i8; 32]`; value `q * d`. 34 bytes.

use bytes::Bytes;
use half::{bf16, f16};

/// Elements per quantization block for the block-quantized types.
pub const QK: usize = 32;

/// How the elements of one weight tensor are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (safetensors only).
    BF16,
    /// ggml Q4_0: 4-bit, one f16 scale per 32 elements.
    Q4_0,
    /// ggml Q4_1: 4-bit, f16 scale and f16 minimum per 32 elements.
    Q4_1,
    /// ggml Q8_0: 8-bit, one f16 scale per 32 elements.
    Q8_0,
}

impl WeightType {
    /// Elements per storage block (1 for the float types, 32 for the quantized ones).
    pub fn block_len(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => QK,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Short lowercase name, as used in error messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::BF16 => "bf16",
            WeightType::Q4_0 => "q4_0",
            WeightType::Q4_1 => "q4_1",
            WeightType::Q8_0 => "q8_0",
        }
    }

    /// Every supported type, for tests that cover them all.
    pub const ALL: [WeightType; 6] =
        [WeightType::F32, WeightType::F16, WeightType::BF16, WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0];
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error building a [`QMatrix`] from raw bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// The row length is not a multiple of the type's block length.
    #[error("{dtype} matrix with {cols} columns: columns must be a multiple of {block}")]
    RaggedRow {
        /// Storage type.
        dtype: WeightType,
        /// Columns asked for.
        cols: usize,
        /// Block length of the type.
        block: usize,
    },
    /// The byte buffer does not hold exactly `rows x cols` elements.
    #[error("{dtype} matrix [{rows}, {cols}] needs {expected} bytes, got {actual}")]
    WrongSize {
        /// Storage type.
        dtype: WeightType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// A 2-D weight matrix `[rows, cols]` kept in its stored format, row-major.
///
/// Row `r` is the bytes `[r * row_bytes, (r + 1) * row_bytes)`. For a linear layer
/// `y = W x`, `rows` is the output size and `cols` the input size (ggml's `ne[1]`, `ne[0]`).
#[derive(Clone, Debug)]
pub struct QMatrix {
    /// Storage type of the elements.
    pub dtype: WeightType,
    /// Number of rows (output features).
    pub rows: usize,
    /// Number of columns (input features).
    pub cols: usize,
    /// Raw bytes, exactly `rows * row_bytes()` long.
    pub data: Bytes,
}

impl QMatrix {
    /// Wraps raw bytes, checking that they hold exactly `rows x cols` elements of `dtype`.
    pub fn new(dtype: WeightType, rows: usize, cols: usize, data: Bytes) -> Result<Self, QuantError> {
        let block = dtype.block_len();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::RaggedRow { dtype, cols, block });
        }
        let expected =
            (cols / block).checked_mul(dtype.block_bytes()).and_then(|r| r.checked_mul(rows)).unwrap_or(usize::MAX);
        if data.len() != expected {
            return Err(QuantError::WrongSize { dtype, rows, cols, expected, actual: data.len() });
        }
        Ok(Self { dtype, rows, cols, data })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }

    /// The stored bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.dtype, self.row(r), out);
    }

    /// Dequantizes the whole matrix to f32, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        dequantize(self.dtype, &self.data, &mut out);
        out
    }

    /// A new matrix holding the given rows of this one, in the given order.
    ///
    /// Rows are independent blocks in every format, so this is a byte copy.
    pub fn permute_rows(&self, order: &[usize]) -> QMatrix {
        let rb = self.row_bytes();
        let mut data = Vec::with_capacity(order.len() * rb);
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        QMatrix { dtype: self.dtype, rows: order.len(), cols: self.cols, data: Bytes::from(data) }
    }
}

/// Reads a little-endian f16 at `b[0..2]` as f32.
#[inline]
pub fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantizes `bytes` of type `dtype` into `out`; `out.len()` elements must fill `bytes` exactly.
///
/// # Panics
/// If `bytes.len()` does not match `out.len()` elements of `dtype` (a caller bug: sizes are
/// validated when a [`QMatrix`] is built).
pub fn dequantize(dtype: WeightType, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(Some(bytes.len()), dtype.bytes_for(out.len()), "dequantize: size mismatch");
    match dtype {
        WeightType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_at(c);
            }
        }
        WeightType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b);
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0xF) as f32 - 8.0) * d;
                    o[j + 16] = ((b[2 + j] >> 4) as f32 - 8.0) * d;
                }
            }
        }
        WeightType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(20)) {
                let d = f16_at(b);
                let m = f16_at(&b[2..]);
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        WeightType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b);
                for j in 0..QK {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
    }
}

/// Quantizes f32 values into `dtype` the way ggml does (round to nearest), for tests and
/// for writing small models. `values.len()` must be a multiple of the block length.
pub fn quantize(dtype: WeightType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.bytes_for(values.len()).unwrap_or(0));
    match dtype {
        WeightType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WeightType::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        WeightType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        WeightType::Q4_0 => {
            for b in values.chunks_exact(QK) {
                // ggml: scale from the value of largest magnitude, mapped to -8.
                let max = b.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((b[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                    let q1 = ((b[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        WeightType::Q4_1 => {
            for b in values.chunks_exact(QK) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let q0 = (((b[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    let q1 = (((b[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        WeightType::Q8_0 => {
            for b in values.chunks_exact(QK) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for v in b {
                    out.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_q4_1_block() {
        // d = 0.5, m = -1.0, nibbles 0..15 low and 15..0 high.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = [0.0f32; 32];
        dequantize(WeightType::Q4_1, &b, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[15], 6.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn quantize_roundtrip_within_step() {
        let vals: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 32.0) / 10.0).collect();
        for t in WeightType::ALL {
            let bytes = quantize(t, &vals);
            let mut back = vec![0.0; vals.len()];
            dequantize(t, &bytes, &mut back);
            let tol = match t {
                WeightType::F32 => 0.0,
                WeightType::F16 => 2e-3,
                WeightType::BF16 => 2e-2,
                WeightType::Q8_0 => 0.02,
                // Q4_0 is asymmetric (-8..7 times d): a value of the opposite sign to the block's
                // largest magnitude may clamp one step short.
                WeightType::Q4_0 => 0.45,
                WeightType::Q4_1 => 0.3,
            };
            for (i, (a, b)) in vals.iter().zip(&back).enumerate() {
                assert!((a - b).abs() <= tol, "{t}: index {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn qmatrix_rejects_wrong_sizes() {
        let e = QMatrix::new(WeightType::Q4_1, 2, 33, Bytes::new()).unwrap_err();
        assert!(matches!(e, QuantError::RaggedRow { .. }));
        let e = QMatrix::new(WeightType::Q4_1, 2, 32, Bytes::from(vec![0u8; 39])).unwrap_err();
        assert_eq!(e.to_string(), "q4_1 matrix [2, 32] needs 40 bytes, got 39");
    }
}
