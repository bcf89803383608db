//! Weight storage types and the plain-Rust reference dequantization.
//!
//! Main types: [`WeightType`] (how one tensor's elements are stored) and [`QMatrix`] (a 2-D
//! weight matrix kept in its stored format). The functions here are the *reference*: simple,
//! obviously correct loops, written after llama.cpp's `dequantize_row_*`, that every backend
//! kernel is tested against (and that are tested against llama.cpp's own Python `gguf`
//! package). They are not fast.
//!
//! Block layouts (ggml's, little-endian). 32 elements per block:
//! - `Q4_0`: `d: f16`, `qs: [u8; 16]`; element `j < 16` is `(qs[j] & 0xF) - 8`, element
//!   `j + 16` is `(qs[j] >> 4) - 8`, both times `d`. 18 bytes.
//! - `Q4_1`: `d: f16`, `m: f16`, `qs: [u8; 16]`; same nibble order, value `q * d + m`. 20 bytes.
//! - `Q5_0`: `d: f16`, `qh: u32`, `qs: [u8; 16]`; as `Q4_0` with bit `j` of `qh` as bit 4 of
//!   element `j`, value `(q - 16) * d`. 22 bytes.
//! - `Q5_1`: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`; value `q * d + m`. 24 bytes.
//! - `Q8_0`: `d: f16`, `qs: [i8; 32]`; value `q * d`. 34 bytes.
//! - `IQ4_NL`: `d: f16`, `qs: [u8; 16]`; nibbles as `Q4_0`, value `IQ4_VALUES[q] * d`. 18 bytes.
//!
//! K-quants, 256 elements per super-block (see [`QK_K`]), in 32-element chunks:
//! - `Q2_K`: `scales: [u8; 16]`, `qs: [u8; 64]`, `d, dmin: f16`. 2-bit values; one
//!   4-bit scale and 4-bit min per 16 elements. 84 bytes.
//! - `Q3_K`: `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]`, `d: f16`. 3-bit values;
//!   a 6-bit signed scale per 16 elements. 110 bytes.
//! - `Q4_K`: `d, dmin: f16`, `scales: [u8; 12]`, `qs: [u8; 128]`. 4-bit values; a 6-bit scale
//!   and min per 32 elements. 144 bytes.
//! - `Q5_K`: `d, dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]`. 176 bytes.
//! - `Q6_K`: `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`. 6-bit values; an
//!   8-bit scale per 16 elements. 210 bytes.
//! - `IQ4_XS`: `d: f16`, `scales_h: u16`, `scales_l: [u8; 4]`, `qs: [u8; 128]`; non-linear
//!   4-bit values, a 6-bit scale per 32 elements. 136 bytes.
//!
//! Every product in these formulas is exact in f32 (an f16 significand times small integers),
//! so a kernel that computes `q * (d * sc) - dmin * m` with one rounding (an FMA or not) gets
//! the reference's bits.

use bytes::Bytes;
use half::{bf16, f16};

/// Elements per quantization block for the 32-element block types.
pub const QK: usize = 32;

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// The 16 values of the non-linear 4-bit types (`IQ4_NL`, `IQ4_XS`), from llama.cpp.
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// How the elements of one weight tensor are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// ggml Q4_0: 4-bit, one f16 scale per 32 elements.
    Q4_0,
    /// ggml Q4_1: 4-bit, f16 scale and f16 minimum per 32 elements.
    Q4_1,
    /// ggml Q5_0: 5-bit, one f16 scale per 32 elements.
    Q5_0,
    /// ggml Q5_1: 5-bit, f16 scale and f16 minimum per 32 elements.
    Q5_1,
    /// ggml Q8_0: 8-bit, one f16 scale per 32 elements.
    Q8_0,
    /// ggml Q2_K: 2-bit K-quant (256-element super-blocks).
    Q2_K,
    /// ggml Q3_K: 3-bit K-quant.
    Q3_K,
    /// ggml Q4_K: 4-bit K-quant.
    Q4_K,
    /// ggml Q5_K: 5-bit K-quant.
    Q5_K,
    /// ggml Q6_K: 6-bit K-quant.
    Q6_K,
    /// ggml IQ4_NL: non-linear 4-bit values, one f16 scale per 32 elements.
    IQ4_NL,
    /// ggml IQ4_XS: non-linear 4-bit values in 256-element super-blocks.
    IQ4_XS,
}

impl WeightType {
    /// Elements per storage block (1 for the float types, 32 or 256 for the quantized ones).
    pub fn block_len(self) -> usize {
        use WeightType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL => QK,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => QK_K,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        use WeightType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 | IQ4_NL => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            IQ4_XS => 136,
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Bits per weight, as llama.cpp reports it.
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_len() as f64
    }

    /// Short lowercase name, as used in error messages and logs.
    pub fn name(self) -> &'static str {
        use WeightType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q2_K => "q2_k",
            Q3_K => "q3_k",
            Q4_K => "q4_k",
            Q5_K => "q5_k",
            Q6_K => "q6_k",
            IQ4_NL => "iq4_nl",
            IQ4_XS => "iq4_xs",
        }
    }

    /// Byte offsets of the f16 scale fields (`d`, and `m` or `dmin`) within one block.
    pub fn scale_offsets(self) -> &'static [usize] {
        use WeightType::*;
        match self {
            F32 | F16 | BF16 => &[],
            Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q6_K => &[208],
        }
    }

    /// Whether [`quantize`] can write this type (ggml's simple round-to-nearest quantizers;
    /// the K-quants and IQ types need llama.cpp's search, which this crate does not carry).
    pub fn can_quantize(self) -> bool {
        use WeightType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
    }

    /// Every supported type, for tests that cover them all.
    pub const ALL: [WeightType; 15] = {
        use WeightType::*;
        [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS]
    };
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error building a [`QMatrix`] from raw bytes.
#[derive(Debug, thiserror::Error, PartialEq)]
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
    /// A block's scale (or minimum) is infinite or NaN: the block would turn into NaNs.
    #[error("{dtype} block {block} (row {row}) has a non-finite scale {value}")]
    NonFiniteScale {
        /// Storage type.
        dtype: WeightType,
        /// Row of the block.
        row: usize,
        /// Index of the block within its row.
        block: usize,
        /// The scale's value.
        value: f32,
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
        let offsets = dtype.scale_offsets();
        if !offsets.is_empty() {
            let blocks_per_row = cols / block;
            for (i, b) in data.chunks_exact(dtype.block_bytes()).enumerate() {
                for &o in offsets {
                    let value = f16_at(&b[o..]);
                    if !value.is_finite() {
                        let (row, block) = (i / blocks_per_row, i % blocks_per_row);
                        return Err(QuantError::NonFiniteScale { dtype, row, block, value });
                    }
                }
            }
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

    /// Rows `rows` of this matrix, sharing its bytes (a fused projection's parts).
    ///
    /// # Panics
    /// If `rows` is not within the matrix (a caller bug: check the shape first).
    pub fn slice_rows(&self, rows: std::ops::Range<usize>) -> QMatrix {
        assert!(rows.start <= rows.end && rows.end <= self.rows, "slice_rows: {rows:?} of {} rows", self.rows);
        let rb = self.row_bytes();
        let data = self.data.slice(rows.start * rb..rows.end * rb);
        QMatrix { dtype: self.dtype, rows: rows.len(), cols: self.cols, data }
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
        _ => {
            let n = dtype.block_len();
            for (o, b) in out.chunks_exact_mut(n).zip(bytes.chunks_exact(dtype.block_bytes())) {
                dequantize_block(dtype, b, o);
            }
        }
    }
}

/// The 6-bit scale and min of 32-element chunk `j` (< 8) of a `Q4_K`/`Q5_K` super-block,
/// from its 12 packed scale bytes (llama.cpp's `get_scale_min_k4`).
#[inline]
pub fn k4_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The signed scale (-32..31) of 16-element sub-block `i` (< 16) of a `Q3_K` super-block,
/// from its 12 packed scale bytes: low 4 bits in byte `i % 8` (high nibble from 8 on), high
/// 2 bits in byte `8 + i % 4` at bit `2 * (i / 4)`.
#[inline]
pub fn q3k_scale(i: usize, s: &[u8]) -> i32 {
    let lo = (s[i % 8] >> (4 * (i / 8))) & 0xF;
    let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// The 6-bit scale (as `ls - 32`) of 32-element chunk `c` (< 8) of an `IQ4_XS` super-block.
#[inline]
pub fn iq4xs_scale(c: usize, b: &[u8]) -> i32 {
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let lo = (b[4 + c / 2] >> (4 * (c % 2))) & 0xF;
    let hi = ((scales_h >> (2 * c)) & 3) as u8;
    (lo | (hi << 4)) as i32 - 32
}

/// Dequantizes one block `b` of a quantized type into `o` (`block_len()` elements), as
/// llama.cpp's `dequantize_row_*` does.
fn dequantize_block(dtype: WeightType, b: &[u8], o: &mut [f32]) {
    match dtype {
        WeightType::F32 | WeightType::F16 | WeightType::BF16 => unreachable!("float types have no blocks"),
        WeightType::Q4_0 => {
            let d = f16_at(b);
            for j in 0..16 {
                o[j] = ((b[2 + j] & 0xF) as f32 - 8.0) * d;
                o[j + 16] = ((b[2 + j] >> 4) as f32 - 8.0) * d;
            }
        }
        WeightType::Q4_1 => {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            for j in 0..16 {
                o[j] = (b[4 + j] & 0xF) as f32 * d + m;
                o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
            }
        }
        WeightType::Q5_0 => {
            let d = f16_at(b);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                o[j] = (((b[6 + j] & 0xF) as u32 | h0) as f32 - 16.0) * d;
                o[j + 16] = (((b[6 + j] >> 4) as u32 | h1) as f32 - 16.0) * d;
            }
        }
        WeightType::Q5_1 => {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                o[j] = ((b[8 + j] & 0xF) as u32 | h0) as f32 * d + m;
                o[j + 16] = ((b[8 + j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        WeightType::Q8_0 => {
            let d = f16_at(b);
            for j in 0..QK {
                o[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        WeightType::IQ4_NL => {
            let d = f16_at(b);
            for j in 0..16 {
                o[j] = IQ4_VALUES[(b[2 + j] & 0xF) as usize] as f32 * d;
                o[j + 16] = IQ4_VALUES[(b[2 + j] >> 4) as usize] as f32 * d;
            }
        }
        WeightType::Q2_K => {
            let (scales, qs) = (&b[..16], &b[16..80]);
            let (d, dmin) = (f16_at(&b[80..]), f16_at(&b[82..]));
            // Chunk c: 2-bit values at bit 2 (c % 4) of qs[32 (c / 4) + l]; sub-block 2c + l / 16.
            for c in 0..8 {
                for l in 0..32 {
                    let sc = scales[2 * c + l / 16];
                    let q = (qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3;
                    o[32 * c + l] = (d * (sc & 0xF) as f32) * q as f32 - dmin * (sc >> 4) as f32;
                }
            }
        }
        WeightType::Q3_K => {
            let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
            let d = f16_at(&b[108..]);
            // Chunk c: low 2 bits as Q2_K, the third bit is bit c of hmask[l] (clear means -4).
            for c in 0..8 {
                for l in 0..32 {
                    let dl = d * q3k_scale(2 * c + l / 16, scales) as f32;
                    let lo = ((qs[32 * (c / 4) + l] >> (2 * (c % 4))) & 3) as i32;
                    let q = lo - if hmask[l] & (1 << c) != 0 { 0 } else { 4 };
                    o[32 * c + l] = dl * q as f32;
                }
            }
        }
        WeightType::Q4_K | WeightType::Q5_K => {
            let (d, dmin) = (f16_at(b), f16_at(&b[2..]));
            let scales = &b[4..16];
            let (qh, qs) =
                if dtype == WeightType::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            // Chunk c: nibble c % 2 of qs[32 (c / 2) + l] (plus bit c of qh[l] as bit 4).
            for c in 0..8 {
                let (sc, m) = k4_scale_min(c, scales);
                let (d1, m1) = (d * sc as f32, dmin * m as f32);
                for l in 0..32 {
                    let mut q = (qs[32 * (c / 2) + l] >> (4 * (c % 2))) & 0xF;
                    if let Some(qh) = qh {
                        q |= ((qh[l] >> c) & 1) << 4;
                    }
                    o[32 * c + l] = d1 * q as f32 - m1;
                }
            }
        }
        WeightType::Q6_K => {
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            let d = f16_at(&b[208..]);
            // Chunk c = 4h + k: nibble k / 2 of ql[64h + 32 (k % 2) + l], bits 2k of qh[32h + l].
            for c in 0..8 {
                let (h, k) = (c / 4, c % 4);
                for l in 0..32 {
                    let lo = (ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
                    let hi = (qh[32 * h + l] >> (2 * k)) & 3;
                    let q = (lo | (hi << 4)) as i32 - 32;
                    let sc = scales[8 * h + 2 * k + l / 16] as i8;
                    o[32 * c + l] = (d * sc as f32) * q as f32;
                }
            }
        }
        WeightType::IQ4_XS => {
            let d = f16_at(b);
            let qs = &b[8..136];
            for c in 0..8 {
                let dl = d * iq4xs_scale(c, b) as f32;
                for j in 0..16 {
                    o[32 * c + j] = dl * IQ4_VALUES[(qs[16 * c + j] & 0xF) as usize] as f32;
                    o[32 * c + j + 16] = dl * IQ4_VALUES[(qs[16 * c + j] >> 4) as usize] as f32;
                }
            }
        }
    }
}

/// Quantizes f32 values into `dtype` the way ggml does (round to nearest), for tests and
/// for writing small models. `values.len()` must be a multiple of the block length.
///
/// # Panics
/// For the types [`WeightType::can_quantize`] refuses (a caller bug).
pub fn quantize(dtype: WeightType, values: &[f32]) -> Vec<u8> {
    assert!(dtype.can_quantize(), "quantize: no quantizer for {dtype}");
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
        WeightType::Q5_0 | WeightType::Q5_1 => {
            for b in values.chunks_exact(QK) {
                // ggml: Q5_0 maps the value of largest magnitude to -16; Q5_1 spans min..max.
                let (d, m, bias) = if dtype == WeightType::Q5_0 {
                    let max = b.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                    (max / -16.0, 0.0, 16.5)
                } else {
                    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    ((max - min) / 31.0, min, 0.5)
                };
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u32> = b.iter().map(|v| (((v - m) * id + bias) as i32).clamp(0, 31) as u32).collect();
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                if dtype == WeightType::Q5_1 {
                    out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
                }
                let qh = q.iter().enumerate().fold(0u32, |h, (j, q)| h | ((q >> 4) << j));
                out.extend_from_slice(&qh.to_le_bytes());
                for j in 0..16 {
                    out.push(((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)) as u8);
                }
            }
        }
        _ => unreachable!("checked by can_quantize"),
    }
    out
}

/// `n_blocks` random blocks of a quantized `dtype`: random bytes, with every scale field (see
/// [`WeightType::scale_offsets`]) set to a random finite value of magnitude `2^-12 .. 2^-2`
/// and either sign. Any bytes are valid quantized values, so these cover every code a file
/// can hold (for kernel tests and benchmarks).
pub fn random_blocks(dtype: WeightType, n_blocks: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut out = vec![0u8; n_blocks * dtype.block_bytes()];
    rng.fill_bytes(&mut out);
    if dtype.block_len() > 1 {
        for b in out.chunks_exact_mut(dtype.block_bytes()) {
            for &o in dtype.scale_offsets() {
                let v = rng.random_range(0.25f32..1.0) * (2.0f32).powi(-rng.random_range(2..12));
                let v = if rng.random_bool(0.5) { v } else { -v };
                b[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
    }
    out
}

/// A random `[rows, cols]` matrix of `dtype` for tests and benchmarks: values uniform in
/// `-1..1` quantized with [`quantize`] where this crate can, else [`random_blocks`].
pub fn random_matrix(dtype: WeightType, rows: usize, cols: usize, seed: u64) -> QMatrix {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bytes = if dtype.can_quantize() {
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        quantize(dtype, &vals)
    } else {
        random_blocks(dtype, rows * cols / dtype.block_len(), &mut rng)
    };
    QMatrix::new(dtype, rows, cols, Bytes::from(bytes)).expect("sizes match")
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
        for t in WeightType::ALL.into_iter().filter(|t| t.can_quantize()) {
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
                // Half the steps of the 4-bit types.
                WeightType::Q5_0 => 0.23,
                WeightType::Q5_1 => 0.15,
                _ => unreachable!(),
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
        let e = QMatrix::new(WeightType::Q4_K, 1, 128, Bytes::from(vec![0u8; 72])).unwrap_err();
        assert!(matches!(e, QuantError::RaggedRow { block: 256, .. }), "{e}");
    }

    #[test]
    fn non_finite_scales_are_refused() {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        for t in WeightType::ALL.into_iter().filter(|t| t.block_len() > 1) {
            for &o in t.scale_offsets() {
                let mut b = random_blocks(t, 6, &mut rng);
                let at = 4 * t.block_bytes() + o; // block 4: row 1, block 1 of a 2-block row
                b[at..at + 2].copy_from_slice(&f16::NAN.to_le_bytes());
                let e = QMatrix::new(t, 3, 2 * t.block_len(), Bytes::from(b)).unwrap_err();
                assert!(matches!(e, QuantError::NonFiniteScale { row: 2, block: 0, .. }), "{t} offset {o}: {e}");
            }
            let ok = random_blocks(t, 6, &mut rng);
            QMatrix::new(t, 3, 2 * t.block_len(), Bytes::from(ok)).expect("random blocks are valid");
        }
    }

    /// Hand-computed elements of one super-block of each K-quant type, from llama.cpp's
    /// `dequantize_row_*` read by hand (the `gguf` package comparison in the tests crate
    /// covers every bit pattern).
    #[test]
    fn known_answers_k_quants() {
        let d = f16::from_f32(0.5).to_le_bytes();
        let dmin = f16::from_f32(0.25).to_le_bytes();
        let at = |t: WeightType, b: &[u8], i: usize| {
            let mut o = vec![0.0f32; 256];
            dequantize(t, b, &mut o);
            o[i]
        };
        // Q4_K: chunk 5 (scale index 5: sc = (s[9] & 0xF) | (s[1] >> 6) << 4, m = (s[9] >> 4) | (s[5] >> 6) << 4).
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&d);
        b[2..4].copy_from_slice(&dmin);
        b[4 + 9] = 0x73; // sc low 3, m low 7
        b[4 + 1] = 0x40; // sc high 1 -> sc = 19
        b[16 + 64 + 3] = 0xA0; // chunk 5 = high nibbles of qs[64..96]; element 3 -> q = 10
        assert_eq!(at(WeightType::Q4_K, &b, 5 * 32 + 3), 0.5 * 19.0 * 10.0 - 0.25 * 7.0);
        // Q6_K: chunk 6 (h 1, k 2): high nibble of ql[64 + l], bits 4..6 of qh[32 + l], scale sc[8 + 4 + l / 16].
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&d);
        b[64 + 20] = 0x50; // q low 5
        b[128 + 32 + 20] = 0b0010_0000; // q high 2 -> q = 37 - 32 = 5
        b[192 + 13] = (-3i8) as u8; // l = 20 -> sub-block 8 + 4 + 1
        assert_eq!(at(WeightType::Q6_K, &b, 6 * 32 + 20), 0.5 * -3.0 * 5.0);
        // Q3_K: chunk 2 (h 0, j 2): bits 4..6 of qs[l], hmask bit 2; scale index 4 + l / 16.
        let mut b = vec![0u8; 110];
        b[108..110].copy_from_slice(&d);
        b[32 + 17] = 0b0011_0000; // low bits 3, hmask bit clear -> q = 3 - 4 = -1
        b[96 + 5] = 0x0A; // scale 5: low nibble of byte 5 = 10
        b[96 + 9] = 0b0000_0100; // high bits of scale 5 = bits 2..4 of byte 9 = 1 -> 26 - 32 = -6
        assert_eq!(at(WeightType::Q3_K, &b, 2 * 32 + 17), 3.0); // 0.5 * -6 * -1
                                                                // Q2_K: chunk 7 (h 1, j 3): bits 6..8 of qs[32 + l]; scale byte 14 + l / 16.
        let mut b = vec![0u8; 84];
        b[80..82].copy_from_slice(&d);
        b[82..84].copy_from_slice(&dmin);
        b[16 + 32 + 2] = 0b1100_0000; // q = 3
        b[14] = 0x29; // scale 9, min 2
        assert_eq!(at(WeightType::Q2_K, &b, 7 * 32 + 2), 0.5 * 9.0 * 3.0 - 0.25 * 2.0);
    }
}
