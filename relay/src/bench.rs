//! `ait bench`: prefill and decode tokens/s per backend, and matrix-vector GB/s, as JSON.
//!
//! Every number is a median over `--runs` repetitions taken in this one process, so ratios
//! between backends (and against other engines measured by `cargo bench -p ait-tests`) come
//! from one run.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};
use web_node::client::{GenerateOptions, SamplingParams};
use web_node::engine::cpu::matmul::matmul;
use web_node::engine::gpu::ops::time_matmul;
use web_node::engine::AnyBackend;
use web_node::model::{ModelFile, QMatrix};

use crate::local::{BackendKind, LocalModel};

/// Options of `ait bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOpt {
    /// Model file; default: SmolLM2-135M-Instruct Q4_1.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backends to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendKind::Cpu, BackendKind::Wgpu])]
    pub backend: Vec<BackendKind>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 100)]
    pub prompt_tokens: usize,
    /// Tokens decoded per run.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// The median of `v` (mean of the middle two for even lengths); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// A prompt of exactly `n` tokens: a fixed English text, repeated as needed.
pub fn bench_prompt(tokenizer: &web_node::model::Tokenizer, n: usize) -> anyhow::Result<Vec<u32>> {
    const TEXT: &str = "The history of the printing press begins in the fifteenth century, when \
        Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press. \
        Within a few decades printing shops spread across Europe, books became cheaper, and \
        literacy rose in cities from Venice to London. ";
    let once = tokenizer.encode(TEXT)?;
    anyhow::ensure!(!once.is_empty(), "benchmark text tokenized to nothing");
    Ok(once.iter().copied().cycle().take(n).collect())
}

/// The prompt of run `run` of a benchmark: `prompt` rotated by the run's index, so no run starts
/// like an earlier one (prompt prefix reuse would otherwise turn later prefills into cache
/// copies and shorten their time to first token).
pub fn run_prompt(prompt: &[u32], run: usize) -> Vec<u32> {
    let mut p = prompt.to_vec();
    p.rotate_left(run % prompt.len().max(1));
    p
}

/// Prefill and decode speed of one loaded model: medians over `runs`.
pub fn measure_generation(
    model: &mut LocalModel,
    prompt: &[u32],
    decode_tokens: usize,
    runs: usize,
) -> anyhow::Result<Value> {
    let opts = GenerateOptions {
        max_tokens: decode_tokens.saturating_add(1),
        sampling: SamplingParams::greedy(),
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    // One warm-up run (pipeline compilation, caches), then the measured ones, each with its own
    // prompt ([`run_prompt`]).
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for i in 0..=runs {
        let p = run_prompt(prompt, i);
        let g = pollster::block_on(model.client.generate(&mut model.chain, &p, &opts, |_| {}))?;
        if i > 0 {
            prefill.push(g.prefill_tok_per_s());
            decode.push(g.decode_tok_per_s());
        }
    }
    Ok(json!({
        "prefill_tok_s": median(&prefill),
        "decode_tok_s": median(&decode),
        "prefill_runs": prefill,
        "decode_runs": decode,
    }))
}

/// GB/s of the CPU matrix-vector product on `w` (median of `iters` timed calls).
pub fn cpu_matvec_gbs(w: &QMatrix, iters: usize) -> f64 {
    let x: Vec<f32> = (0..w.cols).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut out = vec![0.0; w.rows];
    matmul(w, &x, 1, &mut out);
    let times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = web_time::Instant::now();
            matmul(w, &x, 1, &mut out);
            t.elapsed().as_secs_f64()
        })
        .collect();
    w.data.len() as f64 / median(&times) / 1e9
}

/// The matrices the matvec benchmark uses: layer 0's largest projection and the LM head.
fn bench_matrices(file: &ModelFile) -> anyhow::Result<Vec<(String, QMatrix)>> {
    let l0 = file.load_layer(0)?;
    let head = file.load_head()?;
    Ok(vec![
        ("blk.0.ffn_up".to_string(), l0.ffn_up),
        ("blk.0.attn_q".to_string(), l0.attn_q),
        ("lm_head".to_string(), head.lm_head().clone()),
    ])
}

/// Runs the benchmark and prints one JSON object on stdout.
pub fn run(o: BenchOpt) -> anyhow::Result<()> {
    let path = match o.model {
        Some(p) => p,
        None => crate::fetch::default_model()?,
    };
    let file = ModelFile::open(&path).context("opening the model")?;
    let mats = bench_matrices(&file)?;
    let mut backends = serde_json::Map::new();
    for kind in &o.backend {
        let mut model = LocalModel::from_file(&file, *kind, None)?;
        let prompt = bench_prompt(&model.client.tokenizer, o.prompt_tokens)?;
        let mut r = measure_generation(&mut model, &prompt, o.decode_tokens, o.runs)?;
        // Time the kernels on the device the model already runs on.
        let gpu = match model.chain.executors().first().map(|e| e.backend()) {
            Some(AnyBackend::Gpu(b)) => Some(b.context().clone()),
            _ => None,
        };
        let mut mv = Vec::new();
        for (name, w) in &mats {
            let gbs = match &gpu {
                None => cpu_matvec_gbs(w, 50),
                Some(ctx) => {
                    let secs = pollster::block_on(time_matmul(ctx, w, 1, 50))?;
                    w.data.len() as f64 / secs / 1e9
                }
            };
            mv.push(json!({"tensor": name, "dtype": w.dtype.name(), "shape": [w.rows, w.cols], "bytes": w.data.len(), "gb_s": gbs}));
        }
        r["matvec"] = Value::Array(mv);
        if let Some(a) = &model.adapter {
            r["adapter"] = json!(a);
        }
        backends.insert(model.backend_name().to_string(), r);
    }
    let report = json!({
        "model": path.display().to_string(),
        "prompt_tokens": o.prompt_tokens,
        "decode_tokens": o.decode_tokens,
        "runs": o.runs,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "backends": backends,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
