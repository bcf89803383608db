//! `cargo bench -p ait-tests --bench batch`: what batching buys on each backend, in one run,
//! printing JSON.
//!
//! On the default model, every block on one backend: sessions each hold a 100-token prompt,
//! then run decode steps as one `BlockExecutor::step_batch` of 1, 4, 16 and 32 sessions
//! (median of 5 batches after a warm-up; wgpu up to 16): decode tokens per second for all
//! sessions together, and the ratio to one session. Also the LM head (the tied Q8_0
//! embedding matrix) over 1, 4, 16 and 32 rows in one product. CPU always; wgpu when an
//! adapter is found (lavapipe here; `AIT_BENCH_WGPU=0` skips it), where a batch is one submit
//! over every session's tokens: its decode rates, and its matrix kernel alone (layer 0's
//! `ffn_gate`) over 1, 4 and 16 tokens (the decode kernel at 1, the prefill kernel above).
//!
//! Single-stream CPU decode (`cpu_single_stream`): one greedy generation of 64 tokens after a
//! 100-token prompt, every layer and the LM head, tokens per second (median of 3). With
//! `AIT_BENCH_LLAMA_CPP=DIR` (a directory holding the `llama_cpp` Python package, built as
//! `../shared/notes/platform.md` says, with its dependencies), llama.cpp decodes the same
//! prompt the same way with 2 threads in the same run, and the report gives the ratio.

use std::time::Instant;

use ait_tests::default_model;
use relay::bench::median;
use serde_json::{json, Value};
use web_node::client::Head;
use web_node::engine::cpu::matmul::matmul;
use web_node::engine::gpu::{ops, GpuContext};
use web_node::engine::{AnyBackend, Backend, BatchStep, BlockExecutor, ExecutorConfig};
use web_node::model::ModelFile;

use ait_tests::stream_bench::{llama_cpp, single_stream, PROMPT};

const SIZES: [usize; 4] = [1, 4, 16, 32];
const RUNS: usize = 5;

/// Median seconds of [`RUNS`] calls of `f`, after one warm-up call.
fn timed(mut f: impl FnMut()) -> f64 {
    f();
    let secs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&secs)
}

/// At each size `n` (under the key `size`): `n` items over the seconds `secs_for(n)` (under
/// `rate`), and that rate's ratio to the first size's.
fn rates(sizes: &[usize], [size, rate]: [&str; 2], mut secs_for: impl FnMut(usize) -> f64) -> Value {
    let mut one = 0.0;
    let out = sizes
        .iter()
        .map(|&n| {
            let per_s = n as f64 / secs_for(n);
            if one == 0.0 {
                one = per_s;
            }
            json!({ size: n, rate: per_s, "over_one": per_s / one })
        })
        .collect();
    Value::Array(out)
}

/// Decode tokens per second at each batch size of `sizes`.
fn decode(mut ex: BlockExecutor<AnyBackend>, sizes: &[usize]) -> Value {
    let dim = ex.backend().config().hidden;
    let max = *sizes.iter().max().expect("sizes");
    let prompt: Vec<f32> = (0..PROMPT * dim).map(|i| ((i % 97) as f32 - 48.0) / 200.0).collect();
    let ids: Vec<_> = (0..max)
        .map(|_| {
            let id = ex.open_session(PROMPT + 64).expect("open");
            pollster::block_on(ex.step(id, &prompt, PROMPT)).expect("prefill");
            id
        })
        .collect();
    let token: Vec<f32> = prompt[..dim].to_vec();
    rates(sizes, ["sessions", "tokens_per_s"], |n| {
        let steps: Vec<BatchStep> =
            ids[..n].iter().map(|&id| BatchStep { id, pos: None, hidden: &token, n_tokens: 1 }).collect();
        timed(|| {
            for r in pollster::block_on(ex.step_batch(&steps)) {
                r.expect("decode step");
            }
        })
    })
}

/// Room for every session, none closed while the others prefill.
fn executor_config() -> ExecutorConfig {
    ExecutorConfig::new().with_max_sessions(64).with_idle_timeout(std::time::Duration::from_secs(3600))
}

fn main() {
    let path = default_model();
    let file = ModelFile::open(&path).expect("the default model");
    let config = file.config().clone();
    let layers = 0..config.n_layers;
    let weights = file.load_layers(layers.clone()).expect("layers");
    let cpu = AnyBackend::cpu(config.clone(), layers.clone(), weights.clone()).expect("cpu backend");
    let mut report = json!({ "model": path.file_name().and_then(|n| n.to_str()), "prompt_tokens": PROMPT });
    let mut ex = BlockExecutor::new(cpu, executor_config());
    let head = Head::new(config.clone(), file.load_head().expect("head")).expect("head");
    let ours = single_stream(&mut ex, &head);
    report["cpu_single_stream"] = match std::env::var("AIT_BENCH_LLAMA_CPP") {
        Ok(dir) => match llama_cpp(&dir, &path) {
            Ok(theirs) => {
                json!({ "ours_tokens_per_s": ours, "llama_cpp_tokens_per_s": theirs, "ours_over_llama_cpp": ours / theirs })
            }
            Err(e) => json!({ "ours_tokens_per_s": ours, "llama_cpp": format!("failed: {e}") }),
        },
        Err(_) => json!({ "ours_tokens_per_s": ours, "llama_cpp": "not run (set AIT_BENCH_LLAMA_CPP)" }),
    };
    eprintln!("single stream: {}", report["cpu_single_stream"]);
    report["cpu_decode"] = decode(ex, &SIZES);
    eprintln!("cpu: {}", report["cpu_decode"]);
    let wgpu = if std::env::var("AIT_BENCH_WGPU").as_deref() == Ok("0") {
        Err(web_node::engine::EngineError::Gpu("skipped (AIT_BENCH_WGPU=0)".into()))
    } else {
        pollster::block_on(GpuContext::new())
    };
    match wgpu {
        Ok(ctx) => {
            report["wgpu_adapter"] = json!(ctx.adapter_info().name);
            let w = &weights[0].ffn_gate;
            report["wgpu_matmul"] = json!({
                "matrix": format!("ffn_gate {} [{}, {}]", w.dtype, w.rows, w.cols),
                "tokens": rates(&SIZES[..3], ["tokens", "tokens_per_s"], |n| {
                    pollster::block_on(ops::time_matmul(&ctx, w, n, 50)).expect("wgpu matmul")
                }),
            });
            eprintln!("wgpu matmul: {}", report["wgpu_matmul"]);
            let gpu = AnyBackend::gpu(ctx, config.clone(), layers, &weights).expect("wgpu backend");
            // Lavapipe runs a 100-token prefill in seconds: 16 sessions at most.
            report["wgpu_decode"] = decode(BlockExecutor::new(gpu, executor_config()), &SIZES[..3]);
        }
        Err(e) => report["wgpu_decode"] = json!(format!("no adapter: {e}")),
    }
    let head_weights = file.load_head().expect("head");
    let lm = head_weights.lm_head();
    let rows = rates(&SIZES, ["rows", "rows_per_s"], |n| {
        let x: Vec<f32> = (0..n * config.hidden).map(|i| ((i % 89) as f32 - 44.0) / 100.0).collect();
        let mut o = vec![0.0f32; n * config.vocab];
        timed(|| matmul(lm, &x, n, &mut o))
    });
    report["cpu_lm_head"] = rows;
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
