//! The audit's limit against honest drift and against every way a node can lie, on
//! generated models whose weights and inputs differ from those `ait calibrate` uses.

use std::process::Command;

use ait_tests::procs::{ait_bin, temp_dir, three_relays_with, Relay};
use web_node::engine::gpu::GpuContext;
use web_node::trust::DELTA_LIMIT;

use relay::calibrate::{calibrate_generated, FAULTS};

/// A session's steps on the CPU backend and on wgpu (lavapipe here), each checked against an
/// audit's one prefill on either backend, never deviate by more than a tenth of the limit;
/// every session of every fault class (a skipped layer, Q4_1 run for Q8_0, another model,
/// noise of 1e-3, the input returned, a stale position) deviates by more than the limit on
/// its worst token, against either auditor.
#[test]
fn the_audit_limit_separates_honest_backends_from_every_fault() {
    let gpu = pollster::block_on(GpuContext::new()).expect("a wgpu adapter (lavapipe) is required");
    let mut honest_tokens = 0;
    for seed in [11, 12, 13] {
        let c = calibrate_generated(seed, 3, Some(&gpu), 6).unwrap();
        assert_eq!(c.backends.len(), 2, "{:?}", c.backends);
        let (worst, at) = c.worst_honest();
        assert!(worst <= DELTA_LIMIT / 10.0, "seed {seed}: honest {worst:e} at {at}");
        for fault in FAULTS {
            let mildest = c.mildest_session_of(fault);
            assert!(mildest > DELTA_LIMIT, "seed {seed}: {fault} deviates only {mildest:e}\n{c}");
        }
        for r in &c.ranges {
            // Four honest pairs (cpu and wgpu sessions against cpu and wgpu audits), each
            // token of each session checked.
            assert_eq!(r.honest.len(), 4);
            honest_tokens +=
                r.honest.iter().flat_map(|p| &p.sessions).map(|s| s.prefill.len() + s.decode.len()).sum::<usize>();
        }
    }
    assert_eq!(honest_tokens, 3 * 2 * 4 * 3 * 24);
}

/// Real processes: three relays of the default model and a spare of the middle range on the
/// other backend (wgpu on lavapipe); `ait generate --swarm --audit-rate 1` audits every hop
/// it can after the generation. The middle hop is replayed on the other backend and passes
/// (honest cross-backend drift is far under the limit); the outer hops have nobody else to
/// audit them, which is said, and judges nobody. The first relay, an API gateway with
/// `--audit-rate 1`, audits what answered its request after the answer and counts it in
/// `/metrics`.
#[test]
fn the_cli_and_the_gateway_audit_a_relay_on_another_backend_and_it_passes() {
    let model = ait_tests::default_model();
    let m = model.to_str().unwrap();
    let root = temp_dir("trust-cli");
    let mut relays = three_relays_with(&root, &model, &["--audit-rate", "1"]);
    let boot = relays[0].addr("tcp");
    relays.push(Relay::start(
        &root.join("r3"),
        &["--model", m, "--blocks", "10..20", "--backend", "wgpu", "--bootstrap", &boot],
    ));
    let args = [
        "generate",
        "--model",
        m,
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "--chat",
        "--prompt",
        "Name three colours.",
        "--swarm",
        &boot,
        "--audit-rate",
        "1",
    ];
    let out = Command::new(ait_bin()).args(args).output().expect("run ait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ait generate failed:\n{stderr}");
    let audits: Vec<&str> = stderr.lines().filter(|l| l.starts_with("audit: ")).collect();
    assert_eq!(audits.len(), 3, "one audit line per hop:\n{stderr}");
    let middle: Vec<&&str> = audits.iter().filter(|l| l.contains("(blocks 10..20) passed over ")).collect();
    assert_eq!(middle.len(), 1, "the middle hop was not audited and passed:\n{stderr}");
    let unmade = audits.iter().filter(|l| l.starts_with("audit: not made: no server other than")).count();
    assert_eq!(unmade, 2, "{stderr}");
    eprintln!("{}", middle[0]);

    let http = relays[0].http.clone().expect("the gateway's API");
    let models: serde_json::Value =
        ureq::get(&format!("{http}/v1/models")).call().expect("/v1/models").body_mut().read_json().unwrap();
    let name = models["data"][0]["id"].as_str().expect("a model").to_string();
    let body = serde_json::json!({"model": name, "prompt": "The sea is", "max_tokens": 8, "temperature": 0});
    ureq::post(&format!("{http}/v1/completions")).send_json(&body).expect("a completion");
    let count = |result: &str| -> f64 {
        let text = ureq::get(&format!("{http}/metrics")).call().expect("/metrics").body_mut().read_to_string().unwrap();
        let name = format!("ait_audits_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok()).unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count("passed") + count("not_made") < 3.0 {
        assert!(std::time::Instant::now() < deadline, "the gateway's audits did not run");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Its own hop [0, 10) and [20, 30) have nobody else; [10, 20) has the other backend.
    assert_eq!((count("passed"), count("not_made"), count("faulty"), count("unconfirmed")), (1.0, 2.0, 0.0, 0.0));
    drop(relays);
    let _ = std::fs::remove_dir_all(root);
}
