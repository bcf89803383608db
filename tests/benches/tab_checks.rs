//! `cargo bench -p ait-tests --bench tab_checks [-- --checks N]` (N per phase, default 100):
//! honest cross-backend audits through a real tab, printed as JSON. A headless Chromium tab
//! seeds layers 10..12 of the default model on WebGPU (SwiftShader, its CPU adapter) between
//! CPU relays of 0..10 and 12..30; a spare relay holds 10..12 too, on the CPU backend in the
//! first phase and on wgpu (lavapipe) in the second. A native client in this process
//! generates from prompts and sampling seeds of its own (none of them the calibration's or
//! the tests') and audits every hop session (`AuditDraw` at rate 1): the 10..12 hop,
//! whichever of the tab and the spare served it, is replayed on the other, so every check
//! compares WebGPU with a native backend. Counts the checks a verdict other than "passed"
//! would have judged (false positives; the goal is none) and the worst honest token.
//!
//! Needs chromium, chromedriver and `dist/` (as the browser tests do).

use std::time::Instant;

use ait_tests::browser::{connected, page, seeding, web_dir, Browser};
use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use relay::swarm_client::{chain, connect};
use serde_json::json;
use web_node::client::{ClientModel, GenerateOptions, SamplingParams};
use web_node::model::ChatMessage;
use web_node::net::chain::{AuditError, ChainOptions};
use web_node::trust::{AuditDraw, Verdict, DELTA_LIMIT};

/// The tab's layers.
const TAB: std::ops::Range<usize> = 10..12;

/// What the prompts ask about, combined by index.
const TOPICS: [&str; 12] = [
    "rivers",
    "bread",
    "comets",
    "chess",
    "glaciers",
    "violins",
    "bees",
    "lighthouses",
    "volcanoes",
    "trains",
    "origami",
    "tides",
];
const ASKS: [&str; 6] = [
    "Write a short poem about",
    "Explain to a child how",
    "List three facts about",
    "Tell a one-line joke about",
    "Describe the history of",
    "What should I know about",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once without --bench: nothing to check here.
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let want: usize = value("--checks").map(|v| v.parse().expect("--checks N")).unwrap_or(100);

    let model = default_model();
    let m = model.to_str().unwrap();
    let root = temp_dir("bench-tab-checks");
    let web = web_dir();
    let r0 = Relay::start(&root.join("r0"), &["--model", m, "--blocks", "0..10", "--web-dir", web.to_str().unwrap()]);
    let boot = r0.addr("tcp");
    let _r2 = Relay::start(&root.join("r2"), &["--model", m, "--blocks", "12..30", "--bootstrap", &boot]);
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, "seed=10..12")).unwrap();
    connected(&b);
    let tab = seeding(&b);
    eprintln!("tab {tab} serves {TAB:?}");

    let client = ClientModel::load(&model).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let handle = rt.block_on(connect(&[boot.parse().unwrap()])).unwrap();
    let mut phases = serde_json::Map::new();
    // The spare of the tab's layers on each native backend in turn; routing picks the faster
    // of it and the tab, and the other replays.
    for (i, backend) in ["cpu", "wgpu"].into_iter().enumerate() {
        let blocks = format!("{}..{}", TAB.start, TAB.end);
        let mut spare = Relay::start(
            &root.join(format!("spare-{backend}")),
            &["--model", m, "--blocks", &blocks, "--backend", backend, "--bootstrap", &boot],
        );
        eprintln!("spare {} on {backend}: {}", spare.peer, spare.serving.as_deref().unwrap_or_default());
        let first = 0xab00 + (i as u64) * 10_000;
        let found = rt.block_on(phase(&handle, &client, &tab, want, first));
        eprintln!("{backend}: {found}");
        phases.insert(format!("tab_and_native_{backend}"), found);
        spare.kill();
    }
    drop(b);
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(phases)).unwrap());
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Generates until `want` checks of the tab's layers were made (or four times as many
/// generations ran), each from its own prompt and sampling seed (from `first`), auditing
/// every hop session; what the checks found, as JSON.
async fn phase(
    handle: &web_node::net::node::NodeHandle,
    client: &ClientModel,
    tab: &str,
    want: usize,
    first: u64,
) -> serde_json::Value {
    let started = Instant::now();
    let (mut checks, mut false_positives, mut not_made, mut failed_generations) = (0usize, 0usize, 0usize, 0usize);
    let (mut tab_audited, mut tab_replayed) = (0usize, 0usize);
    let mut worst_tokens: Vec<f64> = Vec::new();
    let mut tokens_replayed = 0usize;
    let mut i = 0u64;
    while checks < want && i < 4 * want as u64 {
        let question = format!(
            "{} {}? (note {})",
            ASKS[i as usize % ASKS.len()],
            TOPICS[(i as usize / ASKS.len()) % TOPICS.len()],
            first + i
        );
        let prompt = client.chat_prompt(&[ChatMessage::user(question)]).unwrap();
        let opts = GenerateOptions {
            max_tokens: 4 + (i as usize * 7) % 21,
            sampling: SamplingParams { temperature: 0.9, seed: Some(first + i), ..SamplingParams::default() },
            ..GenerateOptions::default()
        };
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(first + i).to_le_bytes());
        let mut c = chain(handle.clone(), client, ChainOptions::default()).with_audits(AuditDraw::seeded(1.0, secret));
        i += 1;
        if let Err(e) = client.generate(&mut c, &prompt, &opts, |_| {}).await {
            eprintln!("generation {i} failed: {e}");
            failed_generations += 1;
            continue;
        }
        for found in c.run_audits().await {
            match found {
                Ok(a) if a.audited.blocks == TAB => {
                    checks += 1;
                    tokens_replayed += a.tokens;
                    let audited = a.audited.peer.to_string();
                    if audited == tab {
                        tab_audited += 1;
                    } else if a.opinions.iter().any(|o| o.auditor.to_string() == tab) {
                        tab_replayed += 1;
                    }
                    let worst = a.opinions.iter().map(|o| o.deviation.worst).fold(0.0f32, f32::max);
                    worst_tokens.push(f64::from(worst));
                    if a.verdict != Verdict::Passed || a.opinions.iter().any(|o| !o.passed) {
                        false_positives += 1;
                        eprintln!("FALSE POSITIVE: {audited} over {} tokens: worst {worst:.3e}", a.tokens);
                    }
                }
                Ok(_) => {}
                Err(AuditError::NoAuditor { start, end, .. }) if (start..end) != TAB => {}
                Err(e) => {
                    not_made += 1;
                    eprintln!("audit of generation {i} not made: {e}");
                }
            }
        }
        if checks > 0 && checks % 25 == 0 {
            eprintln!("{checks} checks, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    worst_tokens.sort_by(f64::total_cmp);
    let worst = worst_tokens.last().copied().unwrap_or(0.0);
    json!({
        "checks": checks,
        "false_positives": false_positives,
        "tab_audited_by_native": tab_audited,
        "native_audited_by_tab": tab_replayed,
        "audits_not_made": not_made,
        "failed_generations": failed_generations,
        "tokens_replayed": tokens_replayed,
        "worst_honest_token": worst,
        "median_session_worst": worst_tokens.get(worst_tokens.len() / 2).copied(),
        "limit": DELTA_LIMIT,
        "limit_over_worst": f64::from(DELTA_LIMIT) / worst.max(f64::MIN_POSITIVE),
        "seconds": started.elapsed().as_secs_f64(),
    })
}
