//! Browser measurements (issue 4), one run, printed as JSON:
//! - the tab's decode time per block on Chromium's CPU WebGPU adapter (SwiftShader) against
//!   native wgpu on lavapipe and the native CPU backend, each as its server measured itself
//!   (median of single-token steps) and announced;
//! - protocol bytes per token through the tab's circuit hop;
//! - the app's wasm size, raw and gzipped;
//! - time from opening the page to the first answer token (one relay holding every block).
//!
//! `cargo bench -p ait-tests --bench browser` (needs chromium, chromedriver and `dist/`).

use std::process::Command;
use std::time::{Duration, Instant};

use ait_tests::browser::{ask, connected, model_ready, page, seeding, web_dir, Browser};
use ait_tests::default_model;
use ait_tests::procs::{temp_dir, Relay};
use relay::swarm_client::{chain, connect};
use serde_json::json;
use web_node::client::{ClientModel, GenerateOptions, LayerChain, SamplingParams};
use web_node::model::ChatMessage;
use web_node::net::chain::ChainOptions;
use web_node::net::directory;
use web_node::net::protocol::{Request, Response};

fn ms_per_block(serving_line: &str) -> f64 {
    serving_line
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let model = default_model();
    let m = model.to_str().unwrap();
    let web = web_dir();
    let root = temp_dir("bench-browser");
    let mut out = serde_json::Map::new();

    // The wasm.
    let wasm = std::fs::read_dir(&web)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "wasm"))
        .expect("dist has a wasm");
    let raw = std::fs::metadata(&wasm).unwrap().len();
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", wasm.display()))
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok());
    out.insert("wasm_bytes".into(), json!(raw));
    out.insert("wasm_gzip_bytes".into(), json!(gz));

    // Page open -> first answer token, against a relay holding every block (the README's setup).
    {
        let relay =
            Relay::start(&root.join("all"), &["--model", m, "--blocks", "all", "--web-dir", web.to_str().unwrap()]);
        let mut firsts = Vec::new();
        for i in 0..3 {
            // A fresh browser profile each time: the head part is downloaded, not cached.
            let b = Browser::start().expect("browser");
            let t = Instant::now();
            b.goto(&page(&relay, "temperature=0")).unwrap();
            connected(&b);
            model_ready(&b);
            let ready = t.elapsed();
            let (answer, first) = ask(&b, "What is the capital of France?", Duration::from_secs(180));
            assert!(answer.contains("Paris"), "{answer}");
            eprintln!(
                "run {i}: page ready {:.0} ms, first token {first:.0} ms after navigation",
                ready.as_secs_f64() * 1e3
            );
            firsts.push(first);
        }
        firsts.sort_by(f64::total_cmp);
        out.insert("page_open_to_first_token_ms_median".into(), json!(firsts[1]));
        out.insert("page_open_to_first_token_ms_runs".into(), json!(firsts));
    }

    // Per-block decode time: native CPU, native wgpu (lavapipe), and the tab (SwiftShader).
    let r0 = Relay::start(&root.join("r0"), &["--model", m, "--blocks", "0..10", "--web-dir", web.to_str().unwrap()]);
    let boot = r0.addr("tcp");
    let r2 = Relay::start(
        &root.join("r2"),
        &["--model", m, "--blocks", "20..30", "--backend", "wgpu", "--bootstrap", &boot],
    );
    out.insert("native_cpu_ms_per_block".into(), json!(ms_per_block(r0.serving.as_deref().unwrap())));
    out.insert("native_wgpu_lavapipe_ms_per_block".into(), json!(ms_per_block(r2.serving.as_deref().unwrap())));
    let b = Browser::start().expect("browser");
    b.goto(&page(&r0, "seed=10..20")).unwrap();
    connected(&b);
    let tab = seeding(&b);

    let client = ClientModel::load(&model).unwrap();
    let prompt = client.chat_prompt(&[ChatMessage::user("What is the capital of France?")]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (records, hops, text) = rt.block_on(async {
        let handle = connect(&[boot.parse().unwrap()]).await.unwrap();
        let records = directory::list(&handle, Duration::from_secs(5)).await.unwrap();
        let mut chain = chain(handle, &client, ChainOptions::default());
        let opts = GenerateOptions { max_tokens: 16, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
        let g = client.generate(&mut chain, &prompt, &opts, |_| {}).await.unwrap();
        let hops = chain.hop_stats();
        chain.end().await.unwrap();
        (records, hops, g.text)
    });
    let tab_record = records.iter().find(|r| r.peer == tab).expect("the tab's record");
    out.insert("tab_backend".into(), json!(tab_record.status.backend));
    out.insert("tab_webgpu_swiftshader_ms_per_block".into(), json!(tab_record.status.ms_per_block));
    let (_, stats) = hops.iter().find(|(h, _)| h.peer.to_string() == tab).expect("the tab's hop");
    out.insert("tab_hop_tokens".into(), json!(stats.tokens));
    out.insert("tab_hop_protocol_bytes_per_token".into(), json!(stats.bytes as f64 / stats.tokens.max(1) as f64));
    // One decode step's frames exactly (hidden size 576, f32), each with its 4-byte length.
    let hidden = vec![0.0f32; client.config.hidden];
    let step = Request::Step { pos: 100, n_tokens: 1, hidden: hidden.clone(), voucher: None }.encode().len()
        + Response::Hidden { n_tokens: 1, compute_us: 1000, receipt: vec![0; 64], hidden }.encode().len()
        + 8;
    out.insert("decode_step_protocol_bytes".into(), json!(step));
    out.insert("tab_hop_ms_per_step_wall".into(), json!(stats.wall.as_secs_f64() * 1e3 / stats.steps.max(1) as f64));
    out.insert("text".into(), json!(text));
    drop(b);
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(out)).unwrap());
    let _ = std::fs::remove_dir_all(root);
}
