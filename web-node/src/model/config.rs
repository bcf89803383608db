//! Resolved runtime configuration of a Llama-family model.
//!
//! Main type: [`LlamaConfig`]. Checkpoint-specific metadata (GGUF keys, Hugging Face
//! `config.json`) is parsed by the format modules and resolved into this one type; this module
//! only checks that the numbers are consistent.

use super::ModelError;

/// Architecture families whose decoder layers share the Llama layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama, SmolLM (same graph).
    Llama,
    /// Mistral (Llama graph; sliding-window attention when its window is shorter than the
    /// context).
    Mistral,
    /// Qwen2 and Qwen2.5 (Llama graph plus q/k/v biases).
    Qwen2,
    /// Qwen3 (Llama graph plus a per-head RMSNorm of queries and keys before RoPE).
    Qwen3,
    /// Phi-3 (Llama graph; q/k/v and gate/up stored fused, split when loaded).
    Phi3,
    /// Gemma 2: GeGLU, embeddings scaled by sqrt(hidden), norms after attention and after the
    /// FFN too, attention and final logits soft-capped, sliding-window layers alternating with
    /// global ones (see [`GemmaParams`]).
    Gemma2,
    /// Gemma 3 (text): Gemma 2's graph without soft-caps, plus per-head q/k norms, one global
    /// layer in six, and a RoPE base of its own for the windowed layers.
    Gemma3,
}

impl Arch {
    /// Parses a GGUF `general.architecture` or a `config.json` `model_type` value.
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "llama" | "smollm" | "LlamaForCausalLM" => Some(Arch::Llama),
            "mistral" | "MistralForCausalLM" => Some(Arch::Mistral),
            "qwen2" | "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "qwen3" | "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            "phi3" | "Phi3ForCausalLM" => Some(Arch::Phi3),
            "gemma2" | "Gemma2ForCausalLM" => Some(Arch::Gemma2),
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    /// The names [`Arch::parse`] knows, for error messages.
    pub const NAMES: &'static str = "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3";

    /// The GGUF `general.architecture` (and manifest) name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// Whether the attention output and the FFN output are normed before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub fn has_post_norms(self) -> bool {
        self.is_gemma()
    }

    /// Whether the FFN gate is GELU (tanh approximation) instead of SiLU.
    pub fn gelu_gate(self) -> bool {
        self.is_gemma()
    }

    /// Gemma 2 or 3: their checkpoints store norm weights `w` for a scale of `1 + w`, and
    /// their configs carry [`GemmaParams`].
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// Whether queries and keys get a per-head RMSNorm (`attn_q_norm`, `attn_k_norm`).
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }

    /// Whether llama.cpp's converter permuted the q/k rows of this architecture's GGUF files
    /// for its interleaved RoPE (the Qwen families use rotate-half RoPE, as stored).
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }

    /// Whether q/k/v projections carry biases.
    pub fn has_qkv_bias(self) -> bool {
        matches!(self, Arch::Qwen2)
    }
}

/// Gemma's constants beyond the Llama graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GemmaParams {
    /// Attention logits become `c * tanh(s / c)` (Gemma 2: 50).
    pub attn_softcap: Option<f32>,
    /// Final logits become `c * tanh(l / c)` (Gemma 2: 30).
    pub final_softcap: Option<f32>,
    /// `query_pre_attn_scalar`: attention scores are scaled by its inverse square root.
    pub query_scalar: f32,
    /// Layer `i` is global when `i % window_pattern == window_pattern - 1`, else it attends
    /// within `sliding_window` (Gemma 2: 2, every other layer; Gemma 3: 6).
    pub window_pattern: usize,
    /// RoPE base of the windowed layers, without frequency factors (Gemma 3: 10000); `None`:
    /// every layer uses the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_base: Option<f32>,
}

/// LongRoPE (Phi-3 128k, Phi-3.5): a model trained for `original` positions, then extended
/// to `trained` with two sets of RoPE frequency divisors, `short` for contexts up to
/// `original` and `long` beyond, and its cosines and sines scaled by an attention factor.
///
/// This build serves such a model at its original context with the short factors, as
/// llama.cpp does at its default context (it takes the long factors only when the context
/// asked for exceeds the original) and as Hugging Face does for any sequence that fits the
/// original context. The factor set is a property of the model here, not of a session, since
/// every node of a chain must rotate alike.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    /// Context the extension was trained for (`max_position_embeddings`).
    pub trained: usize,
    /// Context before the extension (`original_max_position_embeddings`).
    pub original: usize,
    /// Divisors for contexts up to `original`, `[head_dim / 2]`.
    pub short: Vec<f32>,
    /// The attention factor; `None` to derive it as Hugging Face and llama.cpp's converter do
    /// ([`LongRope::default_attn_factor`]).
    pub attn_factor: Option<f32>,
}

impl LongRope {
    /// `sqrt(1 + ln(trained / original) / ln(original))`, or 1 when the model was not extended.
    pub fn default_attn_factor(trained: usize, original: usize) -> f32 {
        let scale = trained as f64 / original as f64;
        match scale > 1.0 && original > 1 {
            true => (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32,
            false => 1.0,
        }
    }

    /// Applies it to a configuration whose `max_seq_len` is `trained`: the original context,
    /// the short factors and the attention factor.
    pub fn apply(self, config: LlamaConfig) -> Result<LlamaConfig, ModelError> {
        if self.original == 0 || self.original > self.trained {
            return Err(ModelError::BadConfig(format!(
                "LongRoPE original context {} against a trained context of {}",
                self.original, self.trained
            )));
        }
        let attn = self.attn_factor.unwrap_or_else(|| Self::default_attn_factor(self.trained, self.original));
        Ok(LlamaConfig {
            max_seq_len: self.original,
            rope_freq_factors: Some(self.short),
            rope_attn_factor: attn,
            ..config
        })
    }
}

/// Shapes and constants of a Llama-family decoder, resolved from a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Architecture family.
    pub arch: Arch,
    /// Hidden size (`d_model`).
    pub hidden: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence the model was trained for.
    pub max_seq_len: usize,
    /// The LM head reuses the token embedding matrix.
    pub tie_embeddings: bool,
    /// Per-dimension divisors of the RoPE frequencies, `[head_dim / 2]` (Llama 3.1+'s
    /// long-context scaling: GGUF `rope_freqs.weight`, or config.json `rope_scaling`).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Scale of RoPE's cosines and sines, so of queries and keys (LongRoPE's attention factor,
    /// llama.cpp's `rope.scaling.attn_factor`; 1 for every other model). See [`LongRope`].
    pub rope_attn_factor: f32,
    /// Sliding-window attention: a query attends to the last `w` positions (itself included),
    /// as llama.cpp and Hugging Face count them. `None` is global attention, which a window at
    /// least as long as the context also is (see [`LlamaConfig::window_within`]).
    pub sliding_window: Option<usize>,
    /// Gemma's extra constants (`None` for the other architectures).
    pub gemma: Option<GemmaParams>,
}

impl LlamaConfig {
    /// Checks that the numbers are consistent with each other.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::BadConfig(what));
        if self.hidden == 0 || self.intermediate == 0 || self.n_layers == 0 || self.vocab == 0 {
            return bad(format!(
                "zero size: hidden {} intermediate {} layers {} vocab {}",
                self.hidden, self.intermediate, self.n_layers, self.vocab
            ));
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} heads not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 256 {
            return bad(format!("head dim {} must be even and at most 256", self.head_dim));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rms eps {} and rope theta {} must be > 0", self.rms_eps, self.rope_theta));
        }
        if self.arch.is_gemma() && self.gemma.is_none() {
            return bad("gemma without its constants".into());
        }
        if let Some(g) = &self.gemma {
            let finite = |c: Option<f32>| c.is_none_or(|c| c.is_finite() && c > 0.0);
            if !(finite(g.attn_softcap)
                && finite(g.final_softcap)
                && g.query_scalar.is_finite()
                && g.query_scalar > 0.0)
                || g.window_pattern == 0
                || g.local_rope_base.is_some_and(|b| !(b.is_finite() && b > 0.0))
            {
                return bad(format!("gemma constants out of range: {g:?}"));
            }
        }
        if !(self.rope_attn_factor.is_finite() && self.rope_attn_factor > 0.0) {
            return bad(format!("rope attention factor {} must be finite and > 0", self.rope_attn_factor));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding window of 0 positions".into());
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || f.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return bad(format!(
                    "rope frequency factors: {} values (need {} finite, > 0)",
                    f.len(),
                    self.head_dim / 2
                ));
            }
        }
        Ok(())
    }

    /// A checkpoint's sliding window as this config keeps it: `None` when absent or at least
    /// `max_seq_len` long (then it is ordinary global attention, as in real Qwen2.5 configs).
    pub fn window_within(window: Option<usize>, max_seq_len: usize) -> Option<usize> {
        window.filter(|&w| w < max_seq_len)
    }

    /// The sliding window of layer `i` (Gemma alternates windowed and global layers).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match &self.gemma {
            Some(g) if i % g.window_pattern == g.window_pattern - 1 => None,
            _ => self.sliding_window,
        }
    }

    /// The attention scores' scale: `1 / sqrt(head_dim)`, or Gemma's `query_pre_attn_scalar`.
    pub fn attn_scale(&self) -> f32 {
        let s = self.gemma.as_ref().map_or(self.head_dim as f32, |g| g.query_scalar);
        1.0 / s.sqrt()
    }

    /// Attention logit soft-cap, if any.
    pub fn attn_softcap(&self) -> Option<f32> {
        self.gemma.as_ref().and_then(|g| g.attn_softcap)
    }

    /// Floating-point operations per token of one layer's weight products (two per
    /// multiply-add: q, k, v, output, gate, up, down).
    pub fn layer_flops(&self) -> u64 {
        let (h, q, kv, f) = (self.hidden as u64, self.q_dim() as u64, self.kv_dim() as u64, self.intermediate as u64);
        2 * (2 * h * q + 2 * h * kv + 3 * h * f)
    }

    /// Floating-point operations per token of the LM head (the embedding lookup is free).
    pub fn head_flops(&self) -> u64 {
        2 * self.vocab as u64 * self.hidden as u64
    }

    /// Query width per token (`n_heads * head_dim`; usually `hidden`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key/value width per token (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
