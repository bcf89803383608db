//! `cargo bench -p ait-tests --bench engine`: our backends against candle's `quantized_llama`
//! (8-bit activations) and its plain f32 `llama` (the independent reference of the engine
//! tests) on the default model, in one process, printing JSON with the ratios.
//!
//! Same prompt (100 tokens), same number of decode steps (64), medians of 3 runs each, after
//! one warm-up run. candle is built with the same release profile.

use ait_tests::candle_ref::{F32Reference, QuantizedReference};
use ait_tests::{argmax, default_model};
use relay::bench::{bench_prompt, measure_generation, median};
use relay::local::{BackendKind, LocalModel};
use serde_json::json;

const PROMPT: usize = 100;
const DECODE: usize = 64;
const RUNS: usize = 3;

/// Prefill and decode tokens/s (medians) of a candle model given as `reset` and `logits`.
fn time_candle(
    prompt: &[u32],
    mut reset: impl FnMut(),
    mut logits_of: impl FnMut(&[u32], usize) -> Vec<f32>,
) -> (f64, f64) {
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=RUNS {
        reset();
        let t = std::time::Instant::now();
        let mut logits = logits_of(prompt, 0);
        let p = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for step in 0..DECODE {
            let tok = argmax(&logits);
            logits = logits_of(&[tok], prompt.len() + step);
        }
        let d = t.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(prompt.len() as f64 / p);
            decode.push(DECODE as f64 / d);
        }
    }
    (median(&prefill), median(&decode))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either way.
    let backends: Vec<BackendKind> = match std::env::var("AIT_BENCH_BACKENDS").as_deref() {
        Ok("cpu") => vec![BackendKind::Cpu],
        _ => vec![BackendKind::Cpu, BackendKind::Wgpu],
    };
    let path = default_model();
    let mut results = serde_json::Map::new();
    let mut prompt = Vec::new();
    for kind in backends {
        let mut model = LocalModel::load(&path, kind, None).expect("model loads");
        prompt = bench_prompt(&model.client.tokenizer, PROMPT).expect("prompt");
        let r = measure_generation(&mut model, &prompt, DECODE, RUNS).expect("generation");
        results.insert(kind.name().to_string(), r);
    }
    let q = std::cell::RefCell::new(QuantizedReference::load(&path).expect("quantized_llama loads"));
    let (cq_prefill, cq_decode) =
        time_candle(&prompt, || q.borrow_mut().reset(), |t, p| q.borrow_mut().logits(t, p).expect("quantized"));
    let f = std::cell::RefCell::new(F32Reference::load(&path).expect("f32 llama loads"));
    let (cf_prefill, cf_decode) = time_candle(
        &prompt,
        || f.borrow_mut().reset().expect("reset"),
        |t, p| f.borrow_mut().logits(t, p).expect("f32 llama"),
    );
    let ratio = |b: &str, k: &str, base: f64| results.get(b).and_then(|r| r[k].as_f64()).map(|v| v / base);
    let report = json!({
        "prompt_tokens": PROMPT,
        "decode_tokens": DECODE,
        "runs": RUNS,
        "ours": results,
        "candle_quantized_llama": {"prefill_tok_s": cq_prefill, "decode_tok_s": cq_decode},
        "candle_f32_llama": {"prefill_tok_s": cf_prefill, "decode_tok_s": cf_decode},
        "ratios": {
            "cpu_decode_vs_candle_quantized": ratio("cpu", "decode_tok_s", cq_decode),
            "cpu_prefill_vs_candle_quantized": ratio("cpu", "prefill_tok_s", cq_prefill),
            "wgpu_decode_vs_candle_quantized": ratio("wgpu", "decode_tok_s", cq_decode),
            "cpu_decode_vs_candle_f32": ratio("cpu", "decode_tok_s", cf_decode),
            "cpu_prefill_vs_candle_f32": ratio("cpu", "prefill_tok_s", cf_prefill),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
