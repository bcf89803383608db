//! RoPE frequencies shared by every backend.

use crate::model::LlamaConfig;

/// `theta^(-2i / head_dim) / factor[i]` for `i < head_dim / 2`, computed in f64 and rounded
/// once. Every backend (CPU and wgpu) takes its RoPE frequencies from here, so they agree to
/// the bit.
pub fn rope_inv_freq(config: &LlamaConfig) -> Vec<f32> {
    inv_freq(config.head_dim, config.rope_theta, config.rope_freq_factors.as_deref())
}

/// `(sin, cos)` of position `pos` at frequency `inv_freq`, both times `scale` (the model's
/// [`rope_attn_factor`](LlamaConfig::rope_attn_factor) or 1; a scale of 1 leaves them exact).
/// Every backend rotates with these values, so they agree to the bit.
pub(crate) fn sin_cos(pos: usize, inv_freq: f32, scale: f32) -> (f32, f32) {
    let (s, c) = (pos as f32 * inv_freq).sin_cos();
    (s * scale, c * scale)
}

/// The scale of layer `layer`'s rotation: the model's attention factor, except on windowed
/// layers with a RoPE base of their own ([`uses_local_rope`]), which have none.
pub(crate) fn rope_scale(config: &LlamaConfig, layer: usize) -> f32 {
    match uses_local_rope(config, layer) {
        true => 1.0,
        false => config.rope_attn_factor,
    }
}

/// The frequencies of the windowed layers when the model gives them a RoPE base of their own
/// (Gemma 3: `theta^(-2i / head_dim)` with that base and no factors); `None` otherwise.
pub fn rope_inv_freq_local(config: &LlamaConfig) -> Option<Vec<f32>> {
    let base = config.gemma.as_ref()?.local_rope_base?;
    Some(inv_freq(config.head_dim, base, None))
}

/// Whether layer `layer` uses [`rope_inv_freq_local`]'s frequencies (a windowed layer of a
/// model that has them).
pub fn uses_local_rope(config: &LlamaConfig, layer: usize) -> bool {
    config.gemma.as_ref().is_some_and(|g| g.local_rope_base.is_some()) && config.layer_window(layer).is_some()
}

fn inv_freq(head_dim: usize, theta: f32, factors: Option<&[f32]>) -> Vec<f32> {
    let hd = head_dim as f64;
    (0..head_dim / 2)
        .map(|i| {
            let f = (theta as f64).powf(-2.0 * i as f64 / hd);
            let div = factors.map_or(1.0, |d| d[i] as f64);
            (f / div) as f32
        })
        .collect()
}
