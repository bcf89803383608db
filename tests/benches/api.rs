//! `cargo bench -p ait-tests --bench api`: the OpenAI-compatible API under load, printing JSON.
//!
//! For 1, 4 and 16 concurrent clients, each sending streamed chat completions (temperature 0,
//! 32 new tokens, a different short prompt each), against one relay holding every block and
//! against the first relay of a three-relay chain: requests per second, and p50 / p99 time to
//! the first content token. The relays run with their defaults (4 requests generating at once;
//! the rest queue), on the CPU backend.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, three_relays, Relay};
use serde_json::{json, Value};

const NEW_TOKENS: usize = 32;

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank.min(s.len() - 1)]
}

/// One streamed request: (time to first content token, whole request), seconds.
fn request(agent: &ureq::Agent, base: &str, model: &str, i: usize) -> (f64, f64) {
    let body = json!({ "model": model, "stream": true, "temperature": 0, "max_tokens": NEW_TOKENS,
                       "messages": [{ "role": "user", "content": format!("Count from 1 to {}.", 5 + i % 20) }] });
    let t = Instant::now();
    let resp = agent.post(format!("{base}/v1/chat/completions")).send_json(&body).expect("request");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let mut first = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.expect("read");
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).expect("json event");
        assert!(v.get("error").is_none(), "{v}");
        if first.is_none() && v["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()) {
            first = Some(t.elapsed().as_secs_f64());
        }
    }
    (first.expect("some content"), t.elapsed().as_secs_f64())
}

fn load(base: &str, model: &str, clients: usize, requests: usize) -> Value {
    let start = Instant::now();
    let results: Vec<(f64, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                    (c..requests).step_by(clients).map(|i| request(&agent, base, model, i)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let ttft: Vec<f64> = results.iter().map(|r| r.0 * 1e3).collect();
    json!({
        "clients": clients,
        "requests": results.len(),
        "requests_per_s": results.len() as f64 / wall,
        "ttft_ms_p50": percentile(&ttft, 50.0),
        "ttft_ms_p99": percentile(&ttft, 99.0),
        "new_tokens_per_request": NEW_TOKENS,
    })
}

fn model_name(base: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let v: Value = agent.get(format!("{base}/v1/models")).call().expect("models").body_mut().read_json().expect("json");
    v["data"][0]["id"].as_str().expect("a model").to_string()
}

fn run_levels(base: &str) -> Value {
    let model = model_name(base);
    // Warm-up.
    load(base, &model, 1, 1);
    Value::Array([(1, 8), (4, 16), (16, 32)].iter().map(|&(c, n)| load(base, &model, c, n)).collect())
}

fn main() {
    let path = default_model();
    let m = path.to_str().expect("utf-8 path");
    let root = temp_dir("bench-api");
    let single = Relay::start(&root.join("single"), &["--model", m, "--blocks", "all"]);
    let one = run_levels(single.http.as_deref().expect("http"));
    drop(single);
    let relays = three_relays(&root.join("chain"), &path);
    let three = run_levels(relays[0].http.as_deref().expect("http"));
    drop(relays);
    let out = json!({
        "model": path.file_name().and_then(|n| n.to_str()),
        "backend": "cpu",
        "api_concurrency": 4,
        "one_relay": one,
        "three_relay_chain": three,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    let _ = std::fs::remove_dir_all(root);
}
