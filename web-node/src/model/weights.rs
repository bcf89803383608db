//! The weights of one decoder layer and of the client's head, as the engine consumes them.
//!
//! Main types: [`LayerWeights`] (block i of a model is layer i's tensors) and [`HeadWeights`]
//! (token embeddings, final norm, LM head: they stay with the client).
//!
//! RoPE convention: every loader delivers `attn_q` / `attn_k` rows in the Hugging Face
//! "rotate-half" layout, where head dimension `i < head_dim / 2` pairs with `i + head_dim / 2`.
//! GGUF files of the `llama` architecture store those rows permuted for llama.cpp's
//! interleaved RoPE; the GGUF loader un-permutes them (see [`unpermute_rope_rows`]). Getting
//! this wrong still produces plausible text, so it is tested against an independent model.

use super::quant::QMatrix;

/// Tensors of one decoder layer. Names follow GGUF (`blk.N.<name>`).
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `attn_norm.weight`, `[hidden]`.
    pub attn_norm: Vec<f32>,
    /// `attn_q.weight`, `[q_dim, hidden]`, rotate-half RoPE layout.
    pub attn_q: QMatrix,
    /// `attn_k.weight`, `[kv_dim, hidden]`, rotate-half RoPE layout.
    pub attn_k: QMatrix,
    /// `attn_v.weight`, `[kv_dim, hidden]`.
    pub attn_v: QMatrix,
    /// `attn_output.weight`, `[hidden, q_dim]`.
    pub attn_output: QMatrix,
    /// q/k/v biases (`attn_q.bias`, ...), Qwen2 only: `[q_dim]`, `[kv_dim]`, `[kv_dim]`.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys (`attn_q_norm.weight`,
    /// `attn_k_norm.weight`), Qwen3 only: `[head_dim]` each, applied before RoPE.
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// Norms of the attention output and of the FFN output before their residual adds
    /// (`post_attention_norm.weight`, `post_ffw_norm.weight`), Gemma only: `[hidden]` each.
    pub post_norms: Option<[Vec<f32>; 2]>,
    /// `ffn_norm.weight`, `[hidden]`.
    pub ffn_norm: Vec<f32>,
    /// `ffn_gate.weight`, `[intermediate, hidden]`.
    pub ffn_gate: QMatrix,
    /// `ffn_up.weight`, `[intermediate, hidden]`.
    pub ffn_up: QMatrix,
    /// `ffn_down.weight`, `[hidden, intermediate]`.
    pub ffn_down: QMatrix,
}

/// The client's share of the model.
#[derive(Clone, Debug)]
pub struct HeadWeights {
    /// `token_embd.weight`, `[vocab, hidden]`.
    pub token_embd: QMatrix,
    /// `output_norm.weight`, `[hidden]`.
    pub output_norm: Vec<f32>,
    /// `output.weight`, `[vocab, hidden]`; `None` when tied to `token_embd`.
    pub output: Option<QMatrix>,
}

impl HeadWeights {
    /// The LM head matrix (the embeddings when they are tied).
    pub fn lm_head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// Row order that turns llama.cpp's interleaved-RoPE q/k rows back into Hugging Face's
/// rotate-half rows: `hf[h*hd + s*hd/2 + i] = gguf[h*hd + 2*i + s]` for head `h`, half `s`.
///
/// llama.cpp's converter applied the inverse (`reshape(n_head, 2, hd/2, ..).swapaxes(1, 2)`).
pub fn unpermute_rope_rows(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(n_heads * head_dim);
    for h in 0..n_heads {
        for s in 0..2 {
            for i in 0..half {
                order.push(h * head_dim + 2 * i + s);
            }
        }
    }
    order
}

/// Inverse of [`unpermute_rope_rows`]: Hugging Face rows into llama.cpp's layout (for writing
/// GGUF files in tests).
pub fn permute_rope_rows(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let fwd = unpermute_rope_rows(n_heads, head_dim);
    let mut inv = vec![0; fwd.len()];
    for (hf, &gg) in fwd.iter().enumerate() {
        inv[gg] = hf;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_inverse() {
        let a = unpermute_rope_rows(3, 8);
        let b = permute_rope_rows(3, 8);
        for i in 0..24 {
            assert_eq!(a[b[i]], i);
        }
        // head 0: hf rows 0..4 come from gguf rows 0,2,4,6; hf rows 4..8 from 1,3,5,7.
        assert_eq!(&a[..8], &[0, 2, 4, 6, 1, 3, 5, 7]);
    }
}
