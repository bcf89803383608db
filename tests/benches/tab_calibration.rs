//! `cargo bench -p ait-tests --bench tab_calibration [-- --sessions N]` (N per phase,
//! default 6): the calibration's honest drift between WebGPU in a real tab (SwiftShader,
//! Chromium's CPU adapter) and our native backends, in both directions, prefill and decode
//! apart, printed as JSON. `ait calibrate` measures CPU against wgpu in process; a tab's
//! WebGPU can only be reached through the swarm, so this bench measures it as audits do.
//!
//! For each model and layer range (the default model's 0..2, 14..16 and 28..30; the
//! generated model of another shape the torrent tests use, hidden 256 and 6 layers, Q8_0, at
//! 0..2 and 4..6), CPU relays hold the other layers and a tab seeds the range:
//! 1. with the tab the range's only server, a native client in this process generates N
//!    answers (its own prompts and sampling seeds: none of them the calibration's or the
//!    tests'); the tab answers the range as a session does, one prefill then one decode step
//!    per token;
//! 2. a native spare of the range starts, on the CPU backend, then on wgpu (lavapipe); each
//!    replays the tab's sessions as an audit does (the whole session as one prefill): WebGPU
//!    session against native prefill;
//! 3. with the spare up, routing picks it (the faster) for N more answers, and the tab replays
//!    those: native session against WebGPU prefill.
//!
//! Every comparison uses the audit's metric ([`web_node::trust::deviation`], per token) and
//! reports the worst token of the prefill rows and of the decode rows apart, against
//! [`DELTA_LIMIT`].
//!
//! Needs chromium, chromedriver and `dist/` (as the browser tests do).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ait_tests::browser::{blocks, connected, page, seeding, web_dir, Browser};
use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use relay::swarm_client::{chain, connect};
use serde_json::{json, Value};
use web_node::client::{ClientModel, GenerateOptions, SamplingParams};
use web_node::model::ChatMessage;
use web_node::net::chain::{AuditCase, ChainOptions};
use web_node::net::node::NodeHandle;
use web_node::trust::{deviation, DELTA_LIMIT};

/// What the prompts ask about, combined by index (other words than the tests' and the
/// calibration's prompts).
const TOPICS: [&str; 8] = ["kites", "moss", "canals", "owls", "pottery", "deserts", "clocks", "harbors"];
const ASKS: [&str; 4] =
    ["Give me two questions about", "Why do people like", "Summarize what you know of", "Invent a name for"];

/// One model to calibrate and its ranges.
struct Subject {
    name: &'static str,
    path: PathBuf,
    n_layers: usize,
    ranges: Vec<Range<usize>>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let sessions: usize = value("--sessions").map(|v| v.parse().expect("--sessions N")).unwrap_or(6);

    let root = temp_dir("bench-tab-calibration");
    let (generated, _) = ait_tests::tiny_model::torrent_model(&root);
    let subjects = [
        Subject {
            name: "SmolLM2-135M-Instruct Q4_1",
            path: default_model(),
            n_layers: 30,
            ranges: vec![0..2, 14..16, 28..30],
        },
        Subject {
            name: "generated (hidden 256, 6 layers, Q8_0)",
            path: generated,
            n_layers: 6,
            ranges: vec![0..2, 4..6],
        },
    ];
    let web = web_dir();
    let b = Browser::start().expect("browser");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let mut report = Vec::new();
    let mut worst = 0.0f64;
    let mut first = 0xca1_0000u64;
    for s in &subjects {
        for range in &s.ranges {
            let dir = root.join(format!("{}-{}", s.n_layers, blocks(range)));
            let found = calibrate_range(&b, &rt, &dir, &web, s, range, sessions, first);
            first += 10_000;
            worst = worst.max(found["worst_honest_token"].as_f64().unwrap_or(f64::INFINITY));
            eprintln!("{} {}: {found}", s.name, blocks(range));
            report.push(json!({ "model": s.name, "layers": blocks(range), "found": found }));
        }
    }
    drop(b);
    let out = json!({
        "ranges": report,
        "worst_honest_token": worst,
        "limit": DELTA_LIMIT,
        "limit_over_worst": f64::from(DELTA_LIMIT) / worst.max(f64::MIN_POSITIVE),
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Calibrates `range` of `s` (see the module docs); what it found, as JSON.
#[allow(clippy::too_many_arguments)]
fn calibrate_range(
    b: &Browser,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    web: &Path,
    s: &Subject,
    range: &Range<usize>,
    sessions: usize,
    first: u64,
) -> Value {
    let m = s.path.to_str().unwrap();
    let outside: Vec<Range<usize>> =
        [0..range.start, range.end..s.n_layers].into_iter().filter(|r| !r.is_empty()).collect();
    let r0 = Relay::start(
        &dir.join("r0"),
        &["--model", m, "--blocks", &blocks(&outside[0]), "--web-dir", web.to_str().unwrap()],
    );
    let boot = r0.addr("tcp");
    let _r1 = outside
        .get(1)
        .map(|o| Relay::start(&dir.join("r1"), &["--model", m, "--blocks", &blocks(o), "--bootstrap", &boot]));
    b.goto(&page(&r0, &format!("seed={}", blocks(range)))).unwrap();
    connected(b);
    let tab = seeding(b);
    eprintln!("{} {}: tab {tab}", s.name, blocks(range));

    let client = ClientModel::load(&s.path).unwrap();
    let handle = rt.block_on(connect(&[boot.parse().unwrap()])).unwrap();
    let (tab_cases, _) = rt.block_on(answer(&handle, &client, range, &tab, sessions, first));
    let mut cells = serde_json::Map::new();
    let mut worst = 0.0f64;
    for (i, backend) in ["cpu", "wgpu"].into_iter().enumerate() {
        let mut spare = Relay::start(
            &dir.join(format!("spare-{backend}")),
            &["--model", m, "--blocks", &blocks(range), "--backend", backend, "--bootstrap", &boot],
        );
        let found = rt.block_on(replay(&handle, &client, &tab_cases, &spare.peer));
        worst = worst.max(found["worst"].as_f64().unwrap_or(f64::INFINITY));
        cells.insert(format!("webgpu_session_{backend}_prefill"), found);
        let from = first + 1_000 * (i as u64 + 1);
        let (native_cases, tab_served) = rt.block_on(answer(&handle, &client, range, &spare.peer, sessions, from));
        let mut found = rt.block_on(replay(&handle, &client, &native_cases, &tab));
        found["answers_the_tab_served_instead"] = json!(tab_served);
        worst = worst.max(found["worst"].as_f64().unwrap_or(f64::INFINITY));
        cells.insert(format!("{backend}_session_webgpu_prefill"), found);
        spare.kill();
    }
    cells.insert("worst_honest_token".into(), json!(worst));
    Value::Object(cells)
}

/// Generates `n` answers from prompts and sampling seeds of its own (from `first`); returns
/// the audit cases of `range` that `server` served, and how many answers another server of
/// the range served.
async fn answer(
    handle: &NodeHandle,
    client: &ClientModel,
    range: &Range<usize>,
    server: &str,
    n: usize,
    first: u64,
) -> (Vec<AuditCase>, usize) {
    let (mut cases, mut others) = (Vec::new(), 0);
    for i in 0..n as u64 {
        let k = (first + i) as usize;
        let question = format!(
            "{} {}? (calibration note {})",
            ASKS[k % ASKS.len()],
            TOPICS[(k / ASKS.len()) % TOPICS.len()],
            first + i
        );
        let prompt = client.chat_prompt(&[ChatMessage::user(question)]).unwrap();
        let opts = GenerateOptions {
            max_tokens: 6 + (i as usize * 5) % 11,
            sampling: SamplingParams { temperature: 0.9, seed: Some(first + i), ..SamplingParams::default() },
            ..GenerateOptions::default()
        };
        let mut c = chain(handle.clone(), client, ChainOptions::default());
        if let Err(e) = client.generate(&mut c, &prompt, &opts, |_| {}).await {
            eprintln!("generation {} failed: {e}", first + i);
            continue;
        }
        for case in c.audit_cases().iter().filter(|c| c.hop.blocks == *range) {
            if case.hop.peer.to_string() == server {
                cases.push(case.clone());
            } else {
                others += 1;
            }
        }
    }
    (cases, others)
}

/// Replays every case in full on another server of its layers (as an audit does, one
/// prefill) and compares: the worst token of the prefill rows and of the decode rows, and
/// whether the replay ran on `auditor` as meant.
async fn replay(handle: &NodeHandle, client: &ClientModel, cases: &[AuditCase], auditor: &str) -> Value {
    let h = client.config.hidden;
    let mut c = chain(handle.clone(), client, ChainOptions::default());
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let (mut prefill_tokens, mut decode_tokens, mut not_made, mut elsewhere, mut failed) = (0, 0, 0, 0, 0);
    for case in cases {
        let Some(last) = case.receipts.len().checked_sub(1) else { continue };
        let outcome = match c.audit(case, last).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("audit not made: {e}");
                not_made += 1;
                continue;
            }
        };
        let Some(op) = outcome.opinions.first() else { continue };
        if op.auditor.to_string() != auditor {
            elsewhere += 1;
            continue;
        }
        if !op.passed {
            failed += 1;
            eprintln!("FALSE POSITIVE: {} on {}: worst {:.3e}", case.hop.peer, op.auditor, op.deviation.worst);
        }
        let rows = outcome.tokens;
        let p = (case.receipts[0].receipt.n_tokens as usize).min(rows);
        let part = |r: Range<usize>| {
            let (a, b) = (r.start * h, r.end * h);
            deviation(&case.inputs[a..b], &op.replay.outputs[a..b], &case.outputs[a..b], h).map(|d| f64::from(d.worst))
        };
        match part(0..p) {
            Ok(w) => prefill.push(w),
            Err(e) => eprintln!("prefill rows: {e}"),
        }
        prefill_tokens += p;
        if rows > p {
            match part(p..rows) {
                Ok(w) => decode.push(w),
                Err(e) => eprintln!("decode rows: {e}"),
            }
            decode_tokens += rows - p;
        }
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max);
    json!({
        "sessions": prefill.len(),
        "prefill_tokens": prefill_tokens,
        "decode_tokens": decode_tokens,
        "worst_prefill_token": max(&prefill),
        "worst_decode_token": max(&decode),
        "worst": max(&prefill).max(max(&decode)),
        "failed": failed,
        "not_made": not_made,
        "replayed_elsewhere": elsewhere,
    })
}
