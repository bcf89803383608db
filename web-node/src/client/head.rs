//! Embeddings in, logits out.

use super::ClientError;
use crate::engine::cpu::matmul::matmul;
use crate::engine::reference::rms_norm;
use crate::model::{HeadWeights, LlamaConfig};

/// The model's head: token embeddings, final RMSNorm and LM head, computed on the CPU.
pub struct Head {
    config: LlamaConfig,
    weights: HeadWeights,
}

impl Head {
    /// Wraps the head weights, checking their shapes against the config.
    pub fn new(config: LlamaConfig, weights: HeadWeights) -> Result<Self, ClientError> {
        let (v, h) = (config.vocab, config.hidden);
        let bad = |tensor, expected: String, actual: String| ClientError::BadHead { tensor, expected, actual };
        let e = &weights.token_embd;
        if e.rows != v || e.cols != h {
            return Err(bad("token_embd", format!("[{v}, {h}]"), format!("[{}, {}]", e.rows, e.cols)));
        }
        let o = weights.lm_head();
        if o.rows != v || o.cols != h {
            return Err(bad("the LM head", format!("[{v}, {h}]"), format!("[{}, {}]", o.rows, o.cols)));
        }
        if weights.output_norm.len() != h {
            return Err(bad("output_norm", format!("[{h}]"), format!("[{}]", weights.output_norm.len())));
        }
        Ok(Self { config, weights })
    }

    /// Model configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Embeddings of `tokens`, `[tokens.len(), hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, ClientError> {
        let h = self.config.hidden;
        let mut out = vec![0.0f32; tokens.len() * h];
        for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(h)) {
            if t as usize >= self.config.vocab {
                return Err(ClientError::BadToken { token: t, vocab: self.config.vocab });
            }
            self.weights.token_embd.dequantize_row(t as usize, row);
        }
        Ok(out)
    }

    /// Logits `[vocab]` from the last layer's hidden state of one token (`[hidden]`).
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>, ClientError> {
        let h = self.config.hidden;
        if hidden.len() != h {
            return Err(ClientError::BadHidden { expected: h, actual: hidden.len() });
        }
        let x = rms_norm(hidden, &self.weights.output_norm, self.config.rms_eps);
        let mut logits = vec![0.0f32; self.config.vocab];
        matmul(self.weights.lm_head(), &x, 1, &mut logits);
        Ok(logits)
    }
}
