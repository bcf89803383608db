//! `cargo bench -p ait-tests --bench trust`: what receipts cost on the decode path, printing
//! JSON. In one run, on the default model's shape (hidden 576):
//! - receipts signed and verified per second (ed25519, the node's libp2p key; the client
//!   checks a session's receipts with the key it took from the node's peer id once, whose
//!   cost is given apart);
//! - the hashing of one decode step (the input row into the session's `InputChain`, the
//!   output row's hash), done by the node and again by the client;
//! - a decode step of one hop of a 3-hop chain (10 layers, CPU backend, one session), median
//!   of 64 steps;
//! - the receipt work per hop per decode step (the node hashes and signs, the client hashes
//!   and verifies) as a share of that step;
//! - an audit of that hop's whole session (65 tokens replayed as one prefill) against the
//!   session's decode time, and the work audits add to the swarm at a few rates;
//! - a fraud report of that session: its size, and what encoding, decoding and checking it
//!   cost, against the replay that recomputes it.
//!
//! Medians of 5 runs of each measurement.

use std::time::Instant;

use ait_tests::default_model;
use libp2p::identity::Keypair;
use relay::bench::median;
use serde_json::json;
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::{ModelFile, ModelId};
use web_node::trust::{output_hash, FraudReport, InputChain, NodeKey, Receipt, SignedRun};

/// Decode steps of the benchmarked session (after a one-token prefill).
const SESSION: usize = 64;
/// Audit rates whose work is reported.
const AUDIT_RATES: [f64; 3] = [0.02, 0.05, 0.1];

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

/// A fraud report of a one-token-per-step session of layers 10..20: the node answered
/// `outputs` with noise of 1e-3 added and signed for it step by step; two auditors replayed
/// the inputs as one prefill and answered `outputs`.
fn fraud_report(inputs: &[f32], outputs: &[f32], dim: usize) -> FraudReport {
    let tokens = inputs.len() / dim;
    let model = ModelId([2; 32]);
    let claimed: Vec<f32> =
        outputs.iter().enumerate().map(|(i, v)| v * (1.0 + 1e-3 * ((i % 7) as f32 - 3.0))).collect();
    let liar = Keypair::generate_ed25519();
    let accused = SignedRun::sign(&liar, [1; 32], model, 10..20, inputs, &claimed, &vec![1; tokens], dim).unwrap();
    let replays = (2..4u8)
        .map(|s| {
            let key = Keypair::generate_ed25519();
            SignedRun::sign(&key, [s; 32], model, 10..20, inputs, outputs, &[tokens], dim).unwrap()
        })
        .collect();
    FraudReport { hidden: dim as u32, inputs: inputs.to_vec(), accused, replays }
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
    // The client takes the node's key from its peer id once per session, then checks each
    // step's receipt with it.
    let key_s = per_call(2_000, || {
        std::hint::black_box(NodeKey::of(&node).unwrap());
    });
    let node_key = NodeKey::of(&node).unwrap();
    let verify_s = per_call(2_000, || node_key.verify(&r, &sig).unwrap());

    // One hop of a 3-hop chain of the default model: layers 10..20 on the CPU backend.
    let file = ModelFile::open(&default_model()).expect("the default model");
    let config = file.config().clone();
    let layers = file.load_layers(10..20).expect("layers");
    let backend = web_node::engine::AnyBackend::cpu(config, 10..20, layers).expect("a CPU backend");
    let mut exec = BlockExecutor::new(backend, ExecutorConfig::default());
    // The session's inputs (one row per token) and what the hop answered, kept for the
    // fraud report below.
    let input_row = |t: usize| -> Vec<f32> { row.iter().map(|v| v + t as f32 * 1e-3).collect() };
    let mut session_outputs = Vec::with_capacity((SESSION + 1) * dim);
    let steps: Vec<f64> = pollster::block_on(async {
        let id = exec.open_session(512).unwrap();
        session_outputs.extend(exec.step(id, &input_row(0), 1).await.unwrap());
        let mut times = Vec::new();
        for t in 1..=SESSION {
            let x = input_row(t);
            let started = Instant::now();
            let out = exec.step(id, &x, 1).await.unwrap();
            times.push(started.elapsed().as_secs_f64());
            session_outputs.extend(out);
        }
        exec.close_session(id).unwrap();
        times
    });
    let session_inputs: Vec<f32> = (0..=SESSION).flat_map(input_row).collect();
    let step_s = median(&steps);
    // An audit of that hop's whole session: its inputs replayed as one prefill (other inputs
    // each run: the executor reuses the cache of a prefix it has seen).
    let audit_runs: Vec<f64> = (0..5)
        .map(|run| {
            let rows: Vec<f32> =
                (0..SESSION + 1).flat_map(|t| row.iter().map(move |v| v + (run * 100 + t) as f32 * 1e-3)).collect();
            pollster::block_on(async {
                let id = exec.open_session(512).unwrap();
                let t = Instant::now();
                std::hint::black_box(exec.step(id, &rows, SESSION + 1).await.unwrap());
                let took = t.elapsed().as_secs_f64();
                exec.close_session(id).unwrap();
                took
            })
        })
        .collect();
    let audit_s = median(&audit_runs);
    let session_s: f64 = steps.iter().sum();
    let backend_name = exec.backend().name();
    let report = fraud_report(&session_inputs, &session_outputs, dim);
    let bytes = report.encode();
    let encode_s = per_call(5, || drop(std::hint::black_box(report.encode())));
    let decode_s = per_call(5, || drop(std::hint::black_box(FraudReport::decode(&bytes).unwrap())));
    let check_s = per_call(5, || drop(std::hint::black_box(report.check().unwrap())));
    // The node hashes and signs; the client hashes and verifies.
    let receipt_s = 2.0 * hash_s + sign_s + verify_s;
    let out = json!({
        "hidden": dim,
        "receipts_signed_per_s": (1.0 / sign_s).round(),
        "receipts_verified_per_s": (1.0 / verify_s).round(),
        "node_key_from_peer_id_us": key_s * 1e6,
        "hash_one_decode_step_us": hash_s * 1e6,
        "decode_step_one_hop_ms": { "layers": "10..20", "backend": backend_name, "median": step_s * 1e3 },
        "receipt_work_per_hop_step_us": receipt_s * 1e6,
        "receipt_share_of_a_hop_step": receipt_s / step_s,
        "audit_of_a_whole_hop_session": {
            "tokens": SESSION + 1,
            "replay_prefill_ms": audit_s * 1e3,
            "session_decode_ms": session_s * 1e3,
            "share_of_the_session": audit_s / session_s,
        },
        // What a relay that takes a fraud report of that session does before recomputing it
        // (the recomputation is one replay, as above).
        "fraud_report_of_the_session": {
            "tokens": SESSION + 1,
            "bytes": bytes.len(),
            "encode_ms": encode_s * 1e3,
            "decode_ms": decode_s * 1e3,
            "check_ms": check_s * 1e3,
            "check_share_of_the_replay": check_s / audit_s,
        },
        // Audits run after the answer, on another server: they add this much work to the
        // swarm per session at each rate (an upper bound: a drawn step replays on average
        // about half of the session), and nothing to the client's decode path.
        "audit_work_share_at_rate": AUDIT_RATES
            .iter()
            .map(|r| (r.to_string(), serde_json::Value::from(r * audit_s / session_s)))
            .collect::<serde_json::Map<_, _>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
