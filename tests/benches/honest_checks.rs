//! `cargo bench -p ait-tests --bench honest_checks [-- --checks N]`: honest cross-backend
//! audits on generated models (hidden 256, 6 layers, Q8_0, two ranges of three layers), on
//! weights and inputs of seeds other than those `ait calibrate` and the tests use: every
//! session of 24 tokens (16 prefilled, 8 decoded one at a time) on the CPU backend and on
//! wgpu, each against an audit's prefill on each backend. Counts the checks (one per
//! session, range and pair of backends) whose worst token an audit would fail (false
//! positives; the goal is none in 10,000) and prints JSON.
//!
//! Each child process runs [`SEEDS_PER_PROCESS`] models: on lavapipe every prefill dispatch
//! leaks about 9 MB of host memory that a process only gets back when it exits (decode
//! steps do not; see the trust section of docs/ARCHITECTURE.md).

use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use web_node::engine::gpu::GpuContext;
use web_node::trust::DELTA_LIMIT;

/// Sessions per generated model.
const SESSIONS: usize = 25;
/// Seeds start here (the calibration uses 0x5eed, the tests 11 to 13).
const FIRST_SEED: u64 = 1_000;
/// Models per child process.
const SEEDS_PER_PROCESS: u64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    if let Some(first) = value("--child") {
        return child(first.parse().expect("--child SEED"));
    }
    let want: usize = value("--checks").map(|v| v.parse().expect("--checks N")).unwrap_or(10_000);
    let started = Instant::now();
    let (mut checks, mut false_positives, mut cross, mut worst) = (0, 0, 0, 0.0f64);
    let mut seed = FIRST_SEED;
    let mut backends = Value::Null;
    while checks < want {
        let out = Command::new(&args[0]).args(["--bench", "--child", &seed.to_string()]).output().expect("run a child");
        assert!(out.status.success(), "child {seed}: {}", String::from_utf8_lossy(&out.stderr));
        let part: Value = serde_json::from_slice(&out.stdout).expect("the child's JSON");
        checks += part["checks"].as_u64().unwrap() as usize;
        false_positives += part["false_positives"].as_u64().unwrap() as usize;
        cross += part["cross_backend_checks"].as_u64().unwrap() as usize;
        worst = worst.max(part["worst_honest_token"].as_f64().unwrap());
        backends = part["backends"].clone();
        seed += SEEDS_PER_PROCESS;
    }
    let out = json!({
        "checks": checks,
        "cross_backend_checks": cross,
        "models": seed - FIRST_SEED,
        "false_positives": false_positives,
        "worst_honest_token": worst,
        "limit": DELTA_LIMIT,
        "limit_over_worst": f64::from(DELTA_LIMIT) / worst.max(f64::MIN_POSITIVE),
        "backends": backends,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// Runs the models of seeds `first..first + SEEDS_PER_PROCESS` and prints their counts.
fn child(first: u64) {
    let gpu = pollster::block_on(GpuContext::new()).expect("a wgpu adapter (lavapipe on a CPU)");
    let (mut checks, mut false_positives, mut worst, mut cross) = (0, 0, 0.0f32, 0);
    let mut backends = Vec::new();
    for seed in first..first + SEEDS_PER_PROCESS {
        let c = relay::calibrate::honest_checks(seed, SESSIONS, Some(&gpu), 8).expect("honest checks");
        let (n, bad) = c.honest_verdicts();
        checks += n;
        false_positives += bad;
        worst = worst.max(c.worst_honest().0);
        // A pair across backends: "cpu session vs wgpu audit" or "wgpu session vs cpu audit".
        cross += c
            .ranges
            .iter()
            .flat_map(|r| &r.honest)
            .filter(|p| p.name.starts_with("cpu") != p.name.ends_with("cpu audit"))
            .map(|p| p.sessions.len())
            .sum::<usize>();
        backends = c.backends;
    }
    let out = json!({
        "checks": checks,
        "cross_backend_checks": cross,
        "false_positives": false_positives,
        "worst_honest_token": worst,
        "backends": backends,
    });
    println!("{out}");
}
