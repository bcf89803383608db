//! Embeddings in, logits out.
//!
//! A head serving many generations at once (a relay's API) can batch their LM-head products:
//! [`Head::batched`] gives it a thread that runs the rows waiting from every caller of
//! [`Head::next_logits`] as one matrix product, reading the LM head (the largest matrix of a
//! small model) once per round instead of once per generation.

use std::sync::Arc;

use super::ClientError;
use crate::engine::cpu::matmul::matmul;
use crate::engine::reference::rms_norm;
use crate::model::{HeadWeights, LlamaConfig};

/// The model's head: token embeddings, final RMSNorm and LM head, computed on the CPU.
pub struct Head {
    config: LlamaConfig,
    weights: Arc<HeadWeights>,
    #[cfg(not(target_arch = "wasm32"))]
    batch: Option<batch::Batcher>,
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
        Ok(Self {
            config,
            weights: Arc::new(weights),
            #[cfg(not(target_arch = "wasm32"))]
            batch: None,
        })
    }

    /// This head with a thread that batches the LM-head products of concurrent
    /// [`Head::next_logits`] calls (at most `max_rows` rows at once). Each row's logits are
    /// those [`Head::logits`] gives, bit for bit (the CPU products do not depend on how many
    /// rows they take).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn batched(mut self, max_rows: usize) -> Self {
        self.batch = Some(batch::Batcher::start(self.weights.clone(), self.config.vocab, max_rows.max(1)));
        self
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
        if self.config.gemma.is_some() {
            // Gemma scales the embeddings by sqrt(hidden) (in the model's dtype: f32 here).
            let s = (h as f32).sqrt();
            out.iter_mut().for_each(|v| *v *= s);
        }
        Ok(out)
    }

    /// Gemma's final soft-cap of the logits, `c * tanh(l / c)`, when the model has one.
    fn softcap(&self, mut logits: Vec<f32>) -> Vec<f32> {
        if let Some(c) = self.config.gemma.as_ref().and_then(|g| g.final_softcap) {
            logits.iter_mut().for_each(|l| *l = (*l / c).tanh() * c);
        }
        logits
    }

    /// Logits `[vocab]` from the last layer's hidden state of one token (`[hidden]`).
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>, ClientError> {
        let x = self.normed(hidden)?;
        let mut logits = vec![0.0f32; self.config.vocab];
        matmul(self.weights.lm_head(), &x, 1, &mut logits);
        Ok(self.softcap(logits))
    }

    /// Like [`Head::logits`]; with [`Head::batched`], the product runs on the batching thread
    /// together with other callers' rows.
    pub async fn next_logits(&self, hidden: &[f32]) -> Result<Vec<f32>, ClientError> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(b) = &self.batch {
            let x = self.normed(hidden)?;
            if let Some(logits) = b.logits(x).await {
                return Ok(self.softcap(logits));
            }
        }
        self.logits(hidden)
    }

    /// The final RMSNorm of one token's hidden state.
    fn normed(&self, hidden: &[f32]) -> Result<Vec<f32>, ClientError> {
        let h = self.config.hidden;
        if hidden.len() != h {
            return Err(ClientError::BadHidden { expected: h, actual: hidden.len() });
        }
        Ok(rms_norm(hidden, &self.weights.output_norm, self.config.rms_eps))
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod batch {
    use std::sync::mpsc;
    use std::sync::Arc;

    use futures::channel::oneshot;

    use crate::engine::cpu::matmul::matmul;
    use crate::model::HeadWeights;

    /// A normed row and where its logits go.
    type Row = (Vec<f32>, oneshot::Sender<Vec<f32>>);

    /// Feeds the batching thread; the thread ends when this is dropped.
    pub(super) struct Batcher {
        tx: mpsc::Sender<Row>,
    }

    impl Batcher {
        pub(super) fn start(weights: Arc<HeadWeights>, vocab: usize, max_rows: usize) -> Batcher {
            // Bounded by its callers: each generation sends one row and awaits its logits
            // before the next, so it holds at most one row per running generation.
            let (tx, rx) = mpsc::channel::<Row>();
            std::thread::Builder::new()
                .name("lm-head".into())
                .spawn(move || {
                    // Waits for a row, takes every row already waiting, runs them as one product.
                    while let Ok(first) = rx.recv() {
                        let mut rows = vec![first];
                        while rows.len() < max_rows {
                            match rx.try_recv() {
                                Ok(r) => rows.push(r),
                                Err(_) => break,
                            }
                        }
                        let x: Vec<f32> = rows.iter().flat_map(|(x, _)| x.iter().copied()).collect();
                        let mut out = vec![0.0f32; rows.len() * vocab];
                        matmul(weights.lm_head(), &x, rows.len(), &mut out);
                        for ((_, reply), logits) in rows.into_iter().zip(out.chunks_exact(vocab)) {
                            let _ = reply.send(logits.to_vec());
                        }
                    }
                })
                .expect("spawning the LM-head thread");
            Batcher { tx }
        }

        /// The logits of `x` (a normed row); `None` if the thread is gone.
        pub(super) async fn logits(&self, x: Vec<f32>) -> Option<Vec<f32>> {
            let (reply, rx) = oneshot::channel();
            self.tx.send((x, reply)).ok()?;
            rx.await.ok()
        }
    }
}
