//! `cargo bench -p ait-tests --bench swarm`: the swarm's overhead on loopback, printing JSON.
//!
//! In one run, on the default model and the CPU backend everywhere:
//! - decode tokens/s of one process holding every layer (`local`), of a swarm of one relay
//!   holding every layer (`swarm_1_hop`, one node on the same backend), and of a chain of three
//!   relays holding a third each (`swarm_3_hops`), with the runs of the three interleaved so
//!   that machine noise hits them alike;
//! - the latency each hop adds per step, two ways: from the client's wall time per step minus
//!   the compute time each server reports, and from the tokens/s difference; and the servers'
//!   own compute time per step summed over the hops (to tell protocol cost from compute that
//!   gets slower when the layers are spread over processes);
//! - time to first token for a 100-token prompt (route discovery, prefill, first logits);
//! - recovery after the relay in use for [10, 20) is killed (SIGKILL) mid-generation: the
//!   chain's own measure (failure noticed -> replacement holds the history) and the stall the
//!   user sees (kill -> next token).
//!
//! Medians of RUNS runs after one warm-up. Targets: 3 hops / 1 hop >= 0.95, < 1 ms per hop,
//! recovery < 2 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, three_relays, Relay};
use libp2p::Multiaddr;
use relay::bench::{bench_prompt, median, run_prompt};
use relay::local::{BackendKind, LocalModel};
use relay::swarm_client::{chain, connect};
use serde_json::json;
use web_node::client::{ClientModel, GenerateOptions, LayerChain, SamplingParams};
use web_node::net::chain::{ChainOptions, SwarmChain};

const PROMPT: usize = 100;
const DECODE: usize = 64;
const RUNS: usize = 7;

fn options() -> GenerateOptions {
    GenerateOptions {
        max_tokens: DECODE,
        sampling: SamplingParams::greedy(),
        stop_at_eos: false,
        ..GenerateOptions::default()
    }
}

/// Results of one configuration over the runs.
#[derive(Default)]
struct Series {
    decode: Vec<f64>,
    ttft: Vec<f64>,
    /// Mean over hops of (wall - compute) per step, ms.
    hop_overhead_ms: Vec<f64>,
    /// Sum over hops of the compute time the servers report per step, ms.
    server_compute_ms: Vec<f64>,
}

impl Series {
    fn json(&self) -> serde_json::Value {
        json!({
            "decode_tok_per_s": median(&self.decode),
            "time_to_first_token_s": median(&self.ttft),
            "hop_overhead_ms": if self.hop_overhead_ms.is_empty() { None } else { Some(median(&self.hop_overhead_ms)) },
            "server_compute_ms_per_step": if self.server_compute_ms.is_empty() { None } else { Some(median(&self.server_compute_ms)) },
        })
    }
}

fn main() {
    let path = default_model();
    let m = path.to_str().expect("utf-8 path");
    let root = temp_dir("bench-swarm");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let opts = options();

    let mut local = LocalModel::load(&path, BackendKind::Cpu, None).expect("model loads");
    let prompt = bench_prompt(&local.client.tokenizer, PROMPT).expect("prompt");
    let client = ClientModel::load(&path).expect("client model");

    // Two separate swarms: one relay with every block, and three relays with a third each.
    let single = Relay::start(&root.join("single"), &["--model", m, "--blocks", "all"]);
    let mut relays = three_relays(&root.join("chain"), &path);
    let boot = relays[0].addr("tcp");
    let join = |addr: &str| {
        let addr: Multiaddr = addr.parse().expect("addr");
        chain(rt.block_on(connect(&[addr])).expect("joins the swarm"), &client, ChainOptions::default())
    };
    let mut one = join(&single.addr("tcp"));
    let mut three = join(&boot);

    let swarm_run = |c: &mut SwarmChain, s: &mut Series, prompt: &[u32], warm: bool| {
        rt.block_on(async {
            let g = client.generate(c, prompt, &opts, |_| {}).await.expect("swarm generation");
            let stats = c.hop_stats();
            c.end().await.expect("end");
            if !warm {
                s.decode.push(g.decode_tok_per_s());
                s.ttft.push(g.prefill_secs);
                let per_hop: Vec<f64> = stats
                    .iter()
                    .map(|(_, st)| (st.wall.saturating_sub(st.compute)).as_secs_f64() * 1e3 / st.steps.max(1) as f64)
                    .collect();
                s.hop_overhead_ms.push(per_hop.iter().sum::<f64>() / per_hop.len().max(1) as f64);
                s.server_compute_ms.push(
                    stats.iter().map(|(_, st)| st.compute.as_secs_f64() * 1e3 / st.steps.max(1) as f64).sum::<f64>(),
                );
            }
            g.tokens
        })
    };
    let (mut l, mut s1, mut s3) = (Series::default(), Series::default(), Series::default());
    // The output for `prompt` itself (the first run's), which the recovery run must give too.
    let mut reference = Vec::new();
    for i in 0..=RUNS {
        // Each run has its own prompt, so prefix reuse (local and on the relays) does not
        // shorten later runs' prefill.
        let p = run_prompt(&prompt, i);
        let g =
            pollster::block_on(local.client.generate(&mut local.chain, &p, &opts, |_| {})).expect("local generation");
        if i > 0 {
            l.decode.push(g.decode_tok_per_s());
            l.ttft.push(g.prefill_secs);
        } else {
            reference = g.tokens.clone();
        }
        assert_eq!(swarm_run(&mut one, &mut s1, &p, i == 0), g.tokens, "1-hop swarm output differs");
        assert_eq!(swarm_run(&mut three, &mut s3, &p, i == 0), g.tokens, "3-hop swarm output differs");
    }
    drop((one, three, single));

    // Recovery: a spare for [10, 20), then kill whichever serves it mid-generation.
    relays.push(Relay::start(&root.join("chain/spare"), &["--model", m, "--blocks", "10..20", "--bootstrap", &boot]));
    let relays = Arc::new(Mutex::new(relays));
    let (recovery_ms, stall_ms, detected_by) = rt.block_on(async {
        let handle = connect(&[boot.parse().expect("addr")]).await.expect("joins");
        let mut c = chain(handle, &client, ChainOptions::default());
        let route = c.route_watch();
        let mut pieces = 0;
        let mut killed_at: Option<Instant> = None;
        let mut stall = None;
        let g = client
            .generate(&mut c, &prompt, &opts, |_| {
                pieces += 1;
                if let (Some(t), None) = (killed_at, stall) {
                    stall = Some(t.elapsed());
                }
                if pieces == 16 {
                    let peer = route.lock().unwrap().iter().find(|h| h.blocks == (10..20)).map(|h| h.peer.to_string());
                    let mut relays = relays.lock().unwrap();
                    let victim = relays.iter_mut().find(|r| Some(&r.peer) == peer.as_ref()).expect("relay in use");
                    victim.kill();
                    killed_at = Some(Instant::now());
                }
            })
            .await
            .expect("generation survives the kill");
        assert_eq!(g.tokens, reference, "output changed by the kill");
        let rec = c.recoveries().first().cloned().expect("a recovery");
        let by = if rec.error.contains("timed out") { "step timeout" } else { "connection closed" };
        (rec.took.as_secs_f64() * 1e3, stall.unwrap_or(Duration::ZERO).as_secs_f64() * 1e3, by)
    });
    drop(relays);

    let ms = |tps: f64| 1e3 / tps;
    let (lt, t1, t3) = (median(&l.decode), median(&s1.decode), median(&s3.decode));
    let out = json!({
        "model": path.file_name().and_then(|n| n.to_str()),
        "backend": "cpu",
        "prompt_tokens": PROMPT,
        "decode_steps": DECODE,
        "runs": RUNS,
        "local": l.json(),
        "swarm_1_hop": s1.json(),
        "swarm_3_hops": s3.json(),
        "ratio_3_hops_vs_1_hop": t3 / t1,
        "ratio_3_hops_vs_local": t3 / lt,
        "added_ms_per_hop_from_tok_per_s": (ms(t3) - ms(t1)) / 2.0,
        "recovery": { "reroute_ms": recovery_ms, "kill_to_next_token_ms": stall_ms, "failure_noticed_by": detected_by },
        "targets": { "ratio": 0.95, "ms_per_hop": 1.0, "recovery_ms": 2000.0 },
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    let _ = std::fs::remove_dir_all(root);
}
