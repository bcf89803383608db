//! How far a quantized model's outputs drift from the original's, as `ait publish --quantize`
//! reports it: on a few chat prompts, the greedy tokens each model generates, and the logits
//! both give along the original's greedy continuation (teacher forcing, so one early
//! difference does not make every later position incomparable).

use std::fmt;

use anyhow::Context;
use web_node::client::{argmax, GenerateOptions, LayerChain, SamplingParams};
use web_node::model::{ChatMessage, ModelFile};

use crate::local::{BackendKind, LocalModel};

/// The prompts a drift report runs.
pub const PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in one sentence why the sky is blue.",
];

/// Drift on one prompt.
#[derive(Clone, Debug)]
pub struct PromptDrift {
    /// The prompt.
    pub prompt: String,
    /// Tokens each model generated greedily.
    pub tokens: usize,
    /// Leading generated tokens both models agree on.
    pub same_prefix: usize,
    /// Positions (along the original's tokens) where both models' most likely token agree.
    pub top1_agree: usize,
    /// Largest absolute difference of one logit.
    pub max_abs_logit: f32,
    /// Mean Kullback-Leibler divergence of the converted model's next-token distribution from
    /// the original's, in nats.
    pub mean_kl: f64,
}

/// A drift report: one entry per prompt.
#[derive(Clone, Debug)]
pub struct Drift(pub Vec<PromptDrift>);

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: usize = self.0.iter().map(|p| p.tokens).sum();
        let same: usize = self.0.iter().map(|p| p.same_prefix).sum();
        let agree: usize = self.0.iter().map(|p| p.top1_agree).sum();
        let max = self.0.iter().map(|p| p.max_abs_logit).fold(0.0f32, f32::max);
        let kl = self.0.iter().map(|p| p.mean_kl).sum::<f64>() / self.0.len().max(1) as f64;
        writeln!(
            f,
            "drift: greedy tokens identical {same}/{total}; top-1 agreement {agree}/{total}; \
             max |logit diff| {max:.4}; mean KL {kl:.6} nats"
        )?;
        for p in &self.0 {
            writeln!(
                f,
                "  {:?}: identical for {}/{} tokens, top-1 {}/{}, max |logit diff| {:.4}, KL {:.6}",
                p.prompt, p.same_prefix, p.tokens, p.top1_agree, p.tokens, p.max_abs_logit, p.mean_kl
            )?;
        }
        Ok(())
    }
}

/// What one model produced on one prompt: its greedy tokens and, along the original's
/// greedy tokens, the logits of each generated position.
struct Run {
    greedy: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Runs `model` on every prompt: `n_tokens` greedy tokens, then the logits along `forced`
/// (per prompt; its own greedy tokens when `None`).
fn run(model: &mut LocalModel, n_tokens: usize, forced: Option<&[Vec<u32>]>) -> anyhow::Result<Vec<Run>> {
    let opts = GenerateOptions {
        max_tokens: n_tokens,
        sampling: SamplingParams::greedy(),
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    let mut out = Vec::new();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let tokens = model.client.chat_prompt(&[ChatMessage::new("user", *prompt)])?;
        let g = pollster::block_on(model.client.generate(&mut model.chain, &tokens, &opts, |_| {}))?;
        let along = forced.map_or(&g.tokens, |f| &f[i]);
        // The logits that predict each generated token: from the prompt's last position on.
        let mut seq = tokens.clone();
        seq.extend_from_slice(&along[..along.len().saturating_sub(1)]);
        let head = &model.client.head;
        let x = head.embed(&seq)?;
        let chain = &mut model.chain;
        pollster::block_on(chain.begin(seq.len()))?;
        let h = pollster::block_on(chain.forward(&x, seq.len()));
        pollster::block_on(chain.end())?;
        let h = h?;
        let hidden = model.client.config.hidden;
        let logits =
            h.chunks_exact(hidden).skip(tokens.len() - 1).map(|row| head.logits(row)).collect::<Result<Vec<_>, _>>()?;
        out.push(Run { greedy: g.tokens, logits });
    }
    Ok(out)
}

/// Drift of `converted` from `original` on [`PROMPTS`], `n_tokens` greedy tokens each, both
/// run on `backend` one after the other (only one model in memory at a time).
pub fn measure(
    original: &ModelFile,
    converted: &ModelFile,
    n_tokens: usize,
    backend: BackendKind,
) -> anyhow::Result<Drift> {
    let base = {
        let mut m = LocalModel::from_file(original, backend, None).context("loading the original")?;
        run(&mut m, n_tokens, None)?
    };
    let forced: Vec<Vec<u32>> = base.iter().map(|r| r.greedy.clone()).collect();
    let mut m = LocalModel::from_file(converted, backend, None).context("loading the converted model")?;
    let conv = run(&mut m, n_tokens, Some(&forced))?;
    let prompts = PROMPTS
        .iter()
        .zip(base.iter().zip(&conv))
        .map(|(prompt, (a, b))| {
            let same_prefix = a.greedy.iter().zip(&b.greedy).take_while(|(x, y)| x == y).count();
            let mut top1_agree = 0;
            let mut max_abs_logit = 0.0f32;
            let mut kl = 0.0f64;
            for (p, q) in a.logits.iter().zip(&b.logits) {
                top1_agree += usize::from(argmax(p) == argmax(q));
                max_abs_logit = p.iter().zip(q).map(|(x, y)| (x - y).abs()).fold(max_abs_logit, f32::max);
                kl += kl_divergence(p, q);
            }
            PromptDrift {
                prompt: prompt.to_string(),
                tokens: a.greedy.len(),
                same_prefix,
                top1_agree,
                max_abs_logit,
                mean_kl: kl / a.logits.len().max(1) as f64,
            }
        })
        .collect();
    Ok(Drift(prompts))
}

/// KL(P || Q) in nats for the softmax distributions of logits `p` and `q`.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |l: &[f32]| -> Vec<f64> {
        let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_z = max + sum.ln();
        l.iter().map(|&v| v as f64 - log_z).collect()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::kl_divergence;

    #[test]
    fn kl_is_zero_for_equal_logits_and_grows_with_difference() {
        let p = [1.0, 2.0, 3.0];
        assert!(kl_divergence(&p, &p) < 1e-12);
        // A constant shift changes no probability.
        assert!(kl_divergence(&p, &[11.0, 12.0, 13.0]) < 1e-12);
        let near = kl_divergence(&p, &[1.0, 2.0, 3.1]);
        let far = kl_divergence(&p, &[3.0, 2.0, 1.0]);
        assert!(0.0 < near && near < far, "{near} {far}");
    }
}
