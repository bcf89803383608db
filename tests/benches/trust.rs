//! `cargo bench -p ait-tests --bench trust`: what receipts cost on the decode path, printing
//! JSON. In one run, on the default model's shape (hidden 576):
//! - receipts signed and verified per second (ed25519, the node's libp2p key);
//! - the hashing of one decode step (the input row into the session's `InputChain`, the
//!   output row's hash), done by the node and again by the client;
//! - a decode step of one hop of a 3-hop chain (10 layers, CPU backend, one session), median
//!   of 64 steps;
//! - the receipt work per hop per decode step (the node hashes and signs, the client hashes
//!   and verifies) as a share of that step.
//!
//! Medians of 5 runs of each measurement.

use std::time::Instant;

use ait_tests::default_model;
use libp2p::identity::Keypair;
use relay::bench::median;
use serde_json::json;
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::{ModelFile, ModelId};
use web_node::trust::{output_hash, InputChain, Receipt};

/// Seconds per call of `f`, median of 5 runs of `n` calls.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() / n as f64
        })
        .collect();
    median(&runs)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let dim = 576;
    let key = Keypair::generate_ed25519();
    let node = key.public().to_peer_id();
    let row: Vec<f32> = (0..dim).map(|i| ((i % 13) as f32 - 6.0) * 0.37).collect();
    let mut chain = InputChain::new(&[1; 32]);
    let receipt = |inputs: [u8; 32], output: [u8; 32]| Receipt {
        session: [1; 32],
        model: ModelId([2; 32]),
        start: 10,
        end: 20,
        pos: 7,
        n_tokens: 1,
        inputs,
        output,
    };
    let hash_s = per_call(20_000, || {
        chain.absorb(&row, dim);
        std::hint::black_box(output_hash(&row));
    });
    let r = receipt(chain.value(), output_hash(&row));
    let sign_s = per_call(2_000, || {
        std::hint::black_box(r.sign(&key).unwrap());
    });
    let sig = r.sign(&key).unwrap();
    let verify_s = per_call(2_000, || r.verify(&node, &sig).unwrap());

    // One hop of a 3-hop chain of the default model: layers 10..20 on the CPU backend.
    let file = ModelFile::open(&default_model()).expect("the default model");
    let config = file.config().clone();
    let layers = file.load_layers(10..20).expect("layers");
    let backend = web_node::engine::AnyBackend::cpu(config, 10..20, layers).expect("a CPU backend");
    let mut exec = BlockExecutor::new(backend, ExecutorConfig::default());
    let steps: Vec<f64> = pollster::block_on(async {
        let id = exec.open_session(512).unwrap();
        exec.step(id, &row, 1).await.unwrap();
        let mut times = Vec::new();
        for _ in 0..64 {
            let t = Instant::now();
            std::hint::black_box(exec.step(id, &row, 1).await.unwrap());
            times.push(t.elapsed().as_secs_f64());
        }
        times
    });
    let step_s = median(&steps);
    let backend_name = exec.backend().name();
    // The node hashes and signs; the client hashes and verifies.
    let receipt_s = 2.0 * hash_s + sign_s + verify_s;
    let out = json!({
        "hidden": dim,
        "receipts_signed_per_s": (1.0 / sign_s).round(),
        "receipts_verified_per_s": (1.0 / verify_s).round(),
        "hash_one_decode_step_us": hash_s * 1e6,
        "decode_step_one_hop_ms": { "layers": "10..20", "backend": backend_name, "median": step_s * 1e3 },
        "receipt_work_per_hop_step_us": receipt_s * 1e6,
        "receipt_share_of_a_hop_step": receipt_s / step_s,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
