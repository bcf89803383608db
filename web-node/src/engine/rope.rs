//! RoPE frequencies shared by every backend.

use crate::model::LlamaConfig;

/// `theta^(-2i / head_dim) / factor[i]` for `i < head_dim / 2`, computed in f64 and rounded
/// once. Every backend (CPU and wgpu) takes its RoPE frequencies from here, so they agree to
/// the bit.
pub fn rope_inv_freq(config: &LlamaConfig) -> Vec<f32> {
    let hd = config.head_dim as f64;
    (0..config.head_dim / 2)
        .map(|i| {
            let f = (config.rope_theta as f64).powf(-2.0 * i as f64 / hd);
            let div = config.rope_freq_factors.as_ref().map_or(1.0, |d| d[i] as f64);
            (f / div) as f32
        })
        .collect()
}
