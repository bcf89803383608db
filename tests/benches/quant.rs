//! `cargo bench -p ait-tests --bench quant`: what each weight type costs to decode, in one run,
//! printing JSON.
//!
//! 1. Kernels: one token against a 1536 x 1536 matrix of each type (random blocks), on the CPU
//!    kernel this machine picks (all threads) and on the wgpu adapter (lavapipe here): median
//!    microseconds, stored bytes read per second, weights per second.
//! 2. The default model as it is (Q4_1) and with its `ffn_down` matrices (the only ones a
//!    256-element super-block divides, a quarter of its layer weights) requantized to Q4_K and
//!    to Q6_K by candle's quantizer: single-stream greedy decode, tokens per second after a
//!    100-token prompt, on the CPU and wgpu backends, and the ratio to the Q4_1 original. With
//!    `AIT_BENCH_LLAMA_CPP=DIR` (llama-cpp-python, see `../shared/notes/platform.md`),
//!    llama.cpp decodes the same files the same way in the same run.
//!
//! `AIT_BENCH_WGPU=0` skips the wgpu measurements.

use ait_tests::default_model;
use ait_tests::procs::temp_dir;
use ait_tests::requantize::requantize_gguf;
use ait_tests::stream_bench::{llama_cpp, single_stream};
use relay::bench::median;
use serde_json::{json, Value};
use web_node::client::Head;
use web_node::engine::cpu::matmul::matmul;
use web_node::engine::gpu::{ops, GpuContext};
use web_node::engine::{AnyBackend, BlockExecutor, ExecutorConfig};
use web_node::model::quant::random_matrix;
use web_node::model::{ModelFile, WeightType};

const N: usize = 1536;

/// Median seconds of one CPU matrix-vector product (5 runs of 200 after a warm-up).
fn cpu_matvec_secs(w: &web_node::model::QMatrix) -> f64 {
    let x: Vec<f32> = (0..w.cols).map(|i| ((i % 89) as f32 - 44.0) / 100.0).collect();
    let mut out = vec![0.0f32; w.rows];
    matmul(w, &x, 1, &mut out);
    let secs: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..200 {
                matmul(w, &x, 1, &mut out);
            }
            t.elapsed().as_secs_f64() / 200.0
        })
        .collect();
    median(&secs)
}

fn kernel_row(w: &web_node::model::QMatrix, secs: f64) -> Value {
    json!({
        "type": w.dtype.name(),
        "bits_per_weight": w.dtype.bits_per_weight(),
        "us": secs * 1e6,
        "gb_per_s": w.data.len() as f64 / secs / 1e9,
        "gweights_per_s": (w.rows * w.cols) as f64 / secs / 1e9,
    })
}

fn main() {
    let gpu = if std::env::var("AIT_BENCH_WGPU").as_deref() == Ok("0") {
        None
    } else {
        pollster::block_on(GpuContext::new()).ok()
    };
    let mut report = json!({ "matrix": format!("[{N}, {N}], one token") });
    let mats: Vec<_> = WeightType::ALL.iter().map(|&t| random_matrix(t, N, N, 7)).collect();
    report["cpu_kernels"] = mats.iter().map(|w| kernel_row(w, cpu_matvec_secs(w))).collect();
    eprintln!("cpu kernels: {}", report["cpu_kernels"]);
    if let Some(ctx) = &gpu {
        report["wgpu_adapter"] = json!(ctx.adapter_info().name);
        report["wgpu_kernels"] = mats
            .iter()
            .map(|w| kernel_row(w, pollster::block_on(ops::time_matmul(ctx, w, 1, 100)).expect("wgpu matmul")))
            .collect();
        eprintln!("wgpu kernels: {}", report["wgpu_kernels"]);
    }

    let dir = temp_dir("quant-bench");
    let mut models = Vec::new();
    let mut base: Option<(f64, Option<f64>)> = None;
    for variant in [None, Some(WeightType::Q4_K), Some(WeightType::Q6_K)] {
        let (name, path) = match variant {
            None => ("q4_1 (original)".to_string(), default_model()),
            Some(t) => {
                let p = dir.join(format!("smollm2-ffn_down-{t}.gguf"));
                let bytes = requantize_gguf(&default_model(), |n| n.ends_with("ffn_down.weight").then_some(t));
                std::fs::write(&p, bytes).expect("write the requantized model");
                (format!("ffn_down {t}"), p)
            }
        };
        let file = ModelFile::open(&path).expect("model");
        let config = file.config().clone();
        let layers = 0..config.n_layers;
        let weights = file.load_layers(layers.clone()).expect("layers");
        let head = Head::new(config.clone(), file.load_head().expect("head")).expect("head");
        let executor = |b| BlockExecutor::new(b, ExecutorConfig::new());
        let cpu = single_stream(
            &mut executor(AnyBackend::cpu(config.clone(), layers.clone(), weights.clone()).expect("cpu")),
            &head,
        );
        let wgpu = gpu.as_ref().map(|ctx| {
            single_stream(
                &mut executor(AnyBackend::gpu(ctx.clone(), config.clone(), layers, &weights).expect("wgpu")),
                &head,
            )
        });
        let (cpu0, wgpu0) = *base.get_or_insert((cpu, wgpu));
        let mut row = json!({
            "model": name,
            "cpu_tokens_per_s": cpu,
            "cpu_over_q4_1": cpu / cpu0,
        });
        if let (Some(w), Some(w0)) = (wgpu, wgpu0) {
            row["wgpu_tokens_per_s"] = json!(w);
            row["wgpu_over_q4_1"] = json!(w / w0);
        }
        row["llama_cpp_tokens_per_s"] = match std::env::var("AIT_BENCH_LLAMA_CPP") {
            Ok(d) => llama_cpp(&d, &path).map_or_else(|e| json!(format!("failed: {e}")), |r| json!(r)),
            Err(_) => json!("not run (set AIT_BENCH_LLAMA_CPP)"),
        };
        eprintln!("{row}");
        models.push(row);
    }
    report["decode"] = Value::Array(models);
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    std::fs::remove_dir_all(&dir).ok();
}
