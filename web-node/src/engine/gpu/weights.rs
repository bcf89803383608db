//! Uploads weight matrices to the GPU, repacked into 4-byte aligned words.
//!
//! Main type: [`GpuMatrix`]. GGUF blocks are 18, 20 or 34 bytes long, which WGSL cannot read
//! as `u32`, so every row is repacked (the values are untouched, nothing is dequantized):
//!
//! | type | words per row | layout |
//! |------|---------------|--------|
//! | F32  | `cols` | f32 bits |
//! | F16  | `ceil(cols / 2)` | element `2i` in the low half, `2i + 1` in the high half (`unpack2x16float`) |
//! | BF16 | `ceil(cols / 2)` | same pairing; value = `bitcast<f32>(half << 16)` |
//! | Q4_0 | `5 * cols / 32` | per block: `[d as f16 in the low half, qs[0..4], qs[4..8], qs[8..12], qs[12..16]]` |
//! | Q4_1 | `5 * cols / 32` | per block: `[d | m << 16 (f16 pair), qs as Q4_0]` |
//! | Q8_0 | `9 * cols / 32` | per block: `[d as f16 in the low half, qs[0..4], .., qs[28..32]]` (i8) |
//! | Q5_0 | `6 * cols / 32` | per block: `[d as f16 in the low half, qh, qs[0..4], .., qs[12..16]]` |
//! | IQ4_NL | `5 * cols / 32` | as Q4_0 |
//! | Q5_1, K-quants, IQ4_XS | block bytes / 4, rounded up | the block's bytes as stored, zero-padded to whole words |
//!
//! Bytes within a word are little-endian, so byte `j` of `qs` is bits `8 (j % 4) ..` of word
//! `j / 4`. Q4_1 and Q4_0 cost 20 bytes per block on the GPU (18 and 20 on disk), Q8_0 36 (34),
//! Q5_0 24 (22), Q3_K 112 (110) and Q6_K 212 (210); the others are already whole words.

use crate::engine::EngineError;
use crate::model::{QMatrix, WeightType};

use super::context::GpuContext;

/// The shader's `DTYPE` code of a weight type (see `shaders/matmul.wgsl`).
pub(crate) fn dtype_code(t: WeightType) -> u32 {
    match t {
        WeightType::F32 => 0,
        WeightType::F16 => 1,
        WeightType::BF16 => 2,
        WeightType::Q4_0 => 3,
        WeightType::Q4_1 => 4,
        WeightType::Q8_0 => 5,
        WeightType::Q5_0 => 6,
        WeightType::Q5_1 => 7,
        WeightType::IQ4_NL => 8,
        WeightType::Q2_K => 9,
        WeightType::Q3_K => 10,
        WeightType::Q4_K => 11,
        WeightType::Q5_K => 12,
        WeightType::Q6_K => 13,
        WeightType::IQ4_XS => 14,
    }
}

/// u32 words per repacked row of a `cols`-wide matrix of type `t`.
pub fn row_words(t: WeightType, cols: usize) -> usize {
    match t {
        WeightType::F32 => cols,
        WeightType::F16 | WeightType::BF16 => cols.div_ceil(2),
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::IQ4_NL => cols / 32 * 5,
        WeightType::Q8_0 => cols / 32 * 9,
        WeightType::Q5_0 => cols / 32 * 6,
        _ => cols / t.block_len() * t.block_bytes().div_ceil(4),
    }
}

fn le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Repacks `m` into the word layout above, rows concatenated.
pub fn repack(m: &QMatrix) -> Vec<u32> {
    let rw = row_words(m.dtype, m.cols);
    let mut out = Vec::with_capacity(rw * m.rows);
    for r in 0..m.rows {
        let row = m.row(r);
        match m.dtype {
            WeightType::F32 => out.extend(row.chunks_exact(4).map(le)),
            WeightType::F16 | WeightType::BF16 => {
                for pair in row.chunks(4) {
                    let hi = if pair.len() == 4 { [pair[2], pair[3]] } else { [0, 0] };
                    out.push(u32::from_le_bytes([pair[0], pair[1], hi[0], hi[1]]));
                }
            }
            WeightType::Q4_0 | WeightType::IQ4_NL => {
                for b in row.chunks_exact(18) {
                    out.push(u32::from_le_bytes([b[0], b[1], 0, 0]));
                    out.extend(b[2..].chunks_exact(4).map(le));
                }
            }
            WeightType::Q4_1 => {
                for b in row.chunks_exact(20) {
                    out.extend(b.chunks_exact(4).map(le));
                }
            }
            WeightType::Q8_0 | WeightType::Q5_0 => {
                for b in row.chunks_exact(m.dtype.block_bytes()) {
                    out.push(u32::from_le_bytes([b[0], b[1], 0, 0]));
                    out.extend(b[2..].chunks_exact(4).map(le));
                }
            }
            _ => {
                for b in row.chunks_exact(m.dtype.block_bytes()) {
                    let mut words = b.chunks_exact(4);
                    out.extend(words.by_ref().map(le));
                    let rest = words.remainder();
                    if !rest.is_empty() {
                        let mut w = [0u8; 4];
                        w[..rest.len()].copy_from_slice(rest);
                        out.push(u32::from_le_bytes(w));
                    }
                }
            }
        }
    }
    out
}

/// A weight matrix on the GPU, in its stored type, repacked (see the module docs).
#[derive(Debug)]
pub(crate) struct GpuMatrix {
    /// Storage type.
    pub(crate) dtype: WeightType,
    /// Output features.
    pub(crate) rows: usize,
    /// Input features.
    pub(crate) cols: usize,
    /// The repacked words, `[rows, row_words]`.
    pub(crate) buf: wgpu::Buffer,
}

impl GpuMatrix {
    /// Repacks and uploads `m`; errors if it does not fit one binding or the device's memory.
    pub(crate) fn upload(ctx: &GpuContext, label: &str, m: &QMatrix) -> Result<Self, EngineError> {
        if m.dtype.block_len() > 1 && !m.cols.is_multiple_of(m.dtype.block_len()) {
            return Err(EngineError::Gpu(format!("{label}: {} matrix with {} columns", m.dtype, m.cols)));
        }
        let bytes = (row_words(m.dtype, m.cols) * m.rows * 4) as u64;
        ctx.check_binding(label, bytes)?;
        let words = repack(m);
        let buf = ctx.storage_init(label, bytemuck::cast_slice(&words))?;
        Ok(Self { dtype: m.dtype, rows: m.rows, cols: m.cols, buf })
    }

    /// u32 words per row.
    pub(crate) fn row_words(&self) -> usize {
        row_words(self.dtype, self.cols)
    }
}
