//! Single-stream decode measurements shared by the benches: ours through a
//! [`BlockExecutor`] and llama.cpp's (through llama-cpp-python) on the same prompt.

use std::time::Instant;

use relay::bench::median;
use web_node::client::{argmax, Head};
use web_node::engine::{AnyBackend, BlockExecutor};

/// Prompt tokens before the measured decode steps.
pub const PROMPT: usize = 100;

/// Tokens of the single-stream prompt (any valid ids: the rate does not depend on them).
pub fn prompt_tokens() -> Vec<u32> {
    (0..PROMPT as u32).map(|i| 100 + (i * 37) % 4000).collect()
}

/// Greedy tokens generated per stream in the single-stream comparison.
pub const GENERATE: usize = 64;

/// Our single-stream decode: tokens per second over [`GENERATE`] greedy steps after the
/// prompt, median of 3 sessions.
pub fn single_stream(ex: &mut BlockExecutor<AnyBackend>, head: &Head) -> f64 {
    let rates: Vec<f64> = (0..3)
        .map(|_| {
            let id = ex.open_session(PROMPT + GENERATE + 1).expect("open");
            let prompt = head.embed(&prompt_tokens()).expect("embed");
            let out = pollster::block_on(ex.step(id, &prompt, PROMPT)).expect("prefill");
            let dim = head.config().hidden;
            let mut token = argmax(&head.logits(&out[out.len() - dim..]).expect("logits"));
            let t = Instant::now();
            for _ in 0..GENERATE {
                let x = head.embed(&[token]).expect("embed");
                let h = pollster::block_on(ex.step(id, &x, 1)).expect("decode");
                token = argmax(&head.logits(&h).expect("logits"));
            }
            let rate = GENERATE as f64 / t.elapsed().as_secs_f64();
            ex.close_session(id).expect("close");
            rate
        })
        .collect();
    median(&rates)
}

/// llama.cpp's single-stream decode of the same prompt, the same way, through
/// llama-cpp-python found in `dir`: tokens per second, median of 3.
pub fn llama_cpp(dir: &str, model: &std::path::Path) -> Result<f64, String> {
    const SCRIPT: &str = r#"
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
from llama_cpp import Llama
m = Llama(model_path=sys.argv[2], n_ctx=512, n_threads=2, n_batch=512, verbose=False)
prompt = [int(t) for t in sys.argv[3].split(",")]
n = int(sys.argv[4])
rates = []
for _ in range(3):
    m.reset()
    m.eval(prompt)
    t = time.perf_counter()
    for _ in range(n):
        m.eval([m.sample(temp=0.0)])
    rates.append(n / (time.perf_counter() - t))
print(statistics.median(rates))
"#;
    let tokens: Vec<String> = prompt_tokens().iter().map(u32::to_string).collect();
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, dir, &model.to_string_lossy(), &tokens.join(","), &GENERATE.to_string()])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string());
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("llama.cpp output: {e}"))
}
