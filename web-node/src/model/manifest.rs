//! Content addressing: the manifest of a model and the model id derived from it.
//!
//! A [`Manifest`] lists the model's shape and one SHA-256 per decoder block (layer) and for the
//! head, each computed over the weights as the engine holds them (type, shape and bytes of every
//! tensor, in a fixed order). The [`ModelId`] is the SHA-256 of the manifest's canonical JSON,
//! so two nodes that loaded the same weights, from GGUF or safetensors, agree on it, and a node
//! holding different weights under the same file name does not.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{HeadWeights, LayerWeights, LlamaConfig, ModelError, ModelFile, QMatrix};

/// A 32-byte content hash naming a model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelId(pub [u8; 32]);

impl ModelId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ModelId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ModelId(out))
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelId({})", self.short())
    }
}

/// What a model is made of: its shape and the hash of every block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub version: u32,
    /// Architecture family (`llama`, `mistral`, `qwen2`).
    pub arch: String,
    /// Hidden size.
    pub hidden: usize,
    /// FFN size.
    pub intermediate: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// RoPE base, as f32 bits (exact).
    pub rope_theta_bits: u32,
    /// RMSNorm epsilon, as f32 bits.
    pub rms_eps_bits: u32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub max_seq_len: usize,
    /// SHA-256 of each decoder layer's weights, hex.
    pub blocks: Vec<String>,
    /// SHA-256 of the head (embeddings, final norm, LM head), hex.
    pub head: String,
}

impl Manifest {
    /// Hashes every layer and the head of `file` (reads all weights once).
    pub fn of_file(file: &ModelFile) -> Result<Manifest, ModelError> {
        let config = file.config();
        let blocks = (0..config.n_layers)
            .map(|i| file.load_layer(i).map(|w| hex::encode(layer_hash(&w))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest::new(config, blocks, hex::encode(head_hash(&file.load_head()?))))
    }

    /// A manifest from a configuration and precomputed hashes.
    pub fn new(config: &LlamaConfig, blocks: Vec<String>, head: String) -> Manifest {
        let arch = match config.arch {
            super::Arch::Llama => "llama",
            super::Arch::Mistral => "mistral",
            super::Arch::Qwen2 => "qwen2",
        };
        Manifest {
            version: 1,
            arch: arch.into(),
            hidden: config.hidden,
            intermediate: config.intermediate,
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            rope_theta_bits: config.rope_theta.to_bits(),
            rms_eps_bits: config.rms_eps.to_bits(),
            vocab: config.vocab,
            max_seq_len: config.max_seq_len,
            blocks,
            head,
        }
    }

    /// The model id: SHA-256 of this manifest's JSON.
    pub fn id(&self) -> ModelId {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        ModelId(Sha256::digest(&json).into())
    }
}

fn hash_matrix(h: &mut Sha256, m: &QMatrix) {
    h.update(m.dtype.name().as_bytes());
    h.update((m.rows as u64).to_le_bytes());
    h.update((m.cols as u64).to_le_bytes());
    h.update(&m.data);
}

fn hash_vec(h: &mut Sha256, v: &[f32]) {
    h.update((v.len() as u64).to_le_bytes());
    for x in v {
        h.update(x.to_le_bytes());
    }
}

/// SHA-256 over one layer's tensors, in a fixed order.
pub fn layer_hash(w: &LayerWeights) -> [u8; 32] {
    let mut h = Sha256::new();
    hash_vec(&mut h, &w.attn_norm);
    for m in [&w.attn_q, &w.attn_k, &w.attn_v, &w.attn_output] {
        hash_matrix(&mut h, m);
    }
    if let Some(biases) = &w.qkv_bias {
        for b in biases {
            hash_vec(&mut h, b);
        }
    }
    hash_vec(&mut h, &w.ffn_norm);
    for m in [&w.ffn_gate, &w.ffn_up, &w.ffn_down] {
        hash_matrix(&mut h, m);
    }
    h.finalize().into()
}

/// SHA-256 over the head's tensors.
pub fn head_hash(w: &HeadWeights) -> [u8; 32] {
    let mut h = Sha256::new();
    hash_matrix(&mut h, &w.token_embd);
    hash_vec(&mut h, &w.output_norm);
    if let Some(o) = &w.output {
        hash_matrix(&mut h, o);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ModelId([7; 32]);
        assert_eq!(ModelId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ModelId::from_hex("zz"), None);
    }
}
