//! Choosing the next token from logits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick the next token. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax). Default 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables. Default 40.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; `1` disables. Default 0.95.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; `1` disables. Default 1.0.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at. Default 64.
    pub repetition_window: usize,
    /// Seed of the random generator; `None` picks one from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, repetition_penalty: 1.0, repetition_window: 64, seed: None }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }
}

/// Samples tokens according to [`SamplingParams`]; deterministic for a given seed.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler with its own random generator.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Self { rng: ChaCha8Rng::seed_from_u64(seed), params }
    }

    /// Picks the next token. `logits` is modified (penalties, temperature); `history` is the
    /// sequence so far (prompt included), used by the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
            let start = history.len().saturating_sub(p.repetition_window);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature.is_nan() || p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, cut by top-k.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if p.top_k == 0 { idx.len() } else { p.top_k.min(idx.len()) };
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f32> = idx.iter().map(|&t| ((logits[t as usize] - max) / p.temperature).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        // Top-p: the smallest prefix whose mass reaches top_p.
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return idx[i];
            }
        }
        idx[keep - 1]
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.9]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_change_greedy_choice() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }

    #[test]
    fn top_k_one_is_greedy_even_hot() {
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, seed: Some(3), ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Probabilities at temperature 1: token 1 and 4 carry ~0.62 together; top_p 0.5 keeps
        // tokens 1 and 4 at most (the prefix reaching 0.5).
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: Some(7),
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "sampled {t}");
        }
    }

    #[test]
    fn same_seed_same_tokens_and_all_reachable() {
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: Some(42), ..Default::default() };
        let run = || {
            let mut s = Sampler::new(params.clone());
            (0..300).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        for t in 0..5u32 {
            assert!(a.contains(&t), "token {t} never sampled");
        }
    }
}
