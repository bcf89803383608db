//! `cargo bench -p ait-tests --bench api`: the OpenAI-compatible API under load, printing JSON.
//!
//! For 1, 4, 16 and 64 concurrent clients, each sending streamed chat completions (temperature
//! 0, 32 new tokens, a different short prompt each), against one relay holding every block and
//! against the first relay of a three-relay chain: requests and tokens per second (all clients
//! together), p50 / p99 time to the first content token, the median time per token after the
//! first (`tpot_ms_p50`), and the decode rate (`decode_tokens_per_s`: every token after its
//! request's first, over the time at least one request was between its first and last token,
//! so the time all clients wait for their prompts at once is left out). The single relay runs twice in
//! the same run, so their ratio is measured on the same machine state: batched (continuous
//! batching, `--api-concurrency 64 --max-sessions 80`, prompt prefixes reused), the same with
//! no prefix reuse (`--prefix-cache-tokens 0`), and sequential (batches of one step,
//! no prompt chunking, no prefix reuse, `--api-concurrency 4`: the compute loop and API as they
//! were before batching). The chain's relays run with their defaults (the first with the per-IP HTTP
//! connection cap lifted, as every client comes from 127.0.0.1). CPU backend.
//!
//! `AIT_BENCH_LEVELS=1,4` picks the client counts; `AIT_BENCH_CHAIN=0` skips the chain.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use ait_tests::default_model;
use ait_tests::procs::{temp_dir, three_relays_with, Relay};
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

/// One streamed request's timings, in seconds since the load began.
struct Timed {
    /// When the request was sent.
    sent: f64,
    /// When its first content token came.
    first: f64,
    /// When its last content token came.
    last: f64,
    /// Content events (one per token).
    tokens: usize,
}

/// One streamed request, its times counted from `epoch`.
fn request(agent: &ureq::Agent, base: &str, model: &str, i: usize, epoch: Instant) -> Timed {
    let body = json!({ "model": model, "stream": true, "temperature": 0, "max_tokens": NEW_TOKENS,
                       "messages": [{ "role": "user", "content": format!("Count from 1 to {}.", 5 + i % 20) }] });
    let sent = epoch.elapsed().as_secs_f64();
    let mut resp = agent.post(format!("{base}/v1/chat/completions")).send_json(&body).expect("request");
    let status = resp.status();
    assert!(status.is_success(), "status {status}: {}", resp.body_mut().read_to_string().unwrap_or_default());
    let (mut first, mut last) = (None, 0.0);
    let mut tokens = 0;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.expect("read");
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).expect("json event");
        assert!(v.get("error").is_none(), "{v}");
        if v["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()) {
            last = epoch.elapsed().as_secs_f64();
            first.get_or_insert(last);
            tokens += 1;
        }
    }
    Timed { sent, first: first.expect("some content"), last, tokens }
}

/// Total length of the union of `spans`.
fn covered(mut spans: Vec<(f64, f64)>) -> f64 {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut end) = (0.0, f64::NEG_INFINITY);
    for (a, b) in spans {
        let a = a.max(end);
        if b > a {
            total += b - a;
            end = b;
        }
    }
    total
}

fn load(base: &str, model: &str, clients: usize, requests: usize) -> Value {
    let start = Instant::now();
    let results: Vec<Timed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                    (c..requests).step_by(clients).map(|i| request(&agent, base, model, i, start)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let ttft: Vec<f64> = results.iter().map(|r| (r.first - r.sent) * 1e3).collect();
    let tpot: Vec<f64> =
        results.iter().filter(|r| r.tokens > 1).map(|r| (r.last - r.first) * 1e3 / (r.tokens - 1) as f64).collect();
    // Tokens after each request's first, over the time some request was between its first and
    // last token: the rate while decoding, without the time every client waited for prompts.
    let decode_tokens: usize = results.iter().map(|r| r.tokens.saturating_sub(1)).sum();
    let decoding = covered(results.iter().map(|r| (r.first, r.last)).collect());
    json!({
        "clients": clients,
        "requests": results.len(),
        "requests_per_s": results.len() as f64 / wall,
        "tokens_per_s": results.iter().map(|r| r.tokens).sum::<usize>() as f64 / wall,
        "decode_tokens_per_s": decode_tokens as f64 / decoding,
        "ttft_ms_p50": percentile(&ttft, 50.0),
        "ttft_ms_p99": percentile(&ttft, 99.0),
        "tpot_ms_p50": percentile(&tpot, 50.0),
        "new_tokens_per_request": NEW_TOKENS,
    })
}

fn model_name(base: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let v: Value = agent.get(format!("{base}/v1/models")).call().expect("models").body_mut().read_json().expect("json");
    v["data"][0]["id"].as_str().expect("a model").to_string()
}

fn levels() -> Vec<usize> {
    match std::env::var("AIT_BENCH_LEVELS") {
        Ok(v) => v.split(',').map(|c| c.trim().parse().expect("AIT_BENCH_LEVELS: client counts")).collect(),
        Err(_) => vec![1, 4, 16, 64],
    }
}

fn run_levels(base: &str) -> Value {
    let model = model_name(base);
    // Warm-up.
    load(base, &model, 1, 1);
    // At least 8 requests, and two per client.
    Value::Array(levels().iter().map(|&c| load(base, &model, c, (2 * c).max(8))).collect())
}

/// Aggregate tokens per second at each level, batched over sequential and over one client; and
/// the same for the decode rate.
fn ratios(batched: &Value, sequential: &Value) -> Value {
    let rate = |v: &Value, key: &str| {
        v.as_array().expect("levels").iter().map(|l| l[key].as_f64().unwrap_or(0.0)).collect::<Vec<_>>()
    };
    let over_one = |v: &[f64]| v.iter().map(|x| x / v.first().copied().unwrap_or(1.0)).collect::<Vec<_>>();
    let (b, s) = (rate(batched, "tokens_per_s"), rate(sequential, "tokens_per_s"));
    let (bd, sd) = (rate(batched, "decode_tokens_per_s"), rate(sequential, "decode_tokens_per_s"));
    json!({
        "batched_over_sequential": b.iter().zip(&s).map(|(b, s)| b / s).collect::<Vec<_>>(),
        "batched_over_one_client": over_one(&b),
        "decode_batched_over_sequential": bd.iter().zip(&sd).map(|(b, s)| b / s).collect::<Vec<_>>(),
        "decode_batched_over_one_client": over_one(&bd),
    })
}

fn main() {
    let path = default_model();
    let m = path.to_str().expect("utf-8 path");
    let root = temp_dir("bench-api");
    let run = |name: &str, extra: &[&str]| {
        // All clients come from one address: lift the per-IP connection cap (64).
        let http = ["--api-queue", "256", "--http-max-connections-per-ip", "256"];
        let args: Vec<&str> = [&["--model", m, "--blocks", "all"][..], &http, extra].concat();
        let relay = Relay::start(&root.join(name), &args);
        run_levels(relay.http.as_deref().expect("http"))
    };
    let batched = run("batched", &["--api-concurrency", "64", "--max-sessions", "80"]);
    eprintln!("batched: {batched}");
    let no_prefix =
        run("no-prefix", &["--api-concurrency", "64", "--max-sessions", "80", "--prefix-cache-tokens", "0"]);
    eprintln!("batched, no prefix reuse: {no_prefix}");
    let sequential = run(
        "sequential",
        &[
            "--api-concurrency",
            "4",
            "--max-batch-steps",
            "1",
            "--max-batch-tokens",
            "100000",
            "--prefix-cache-tokens",
            "0",
        ],
    );
    let mut out = json!({
        "model": path.file_name().and_then(|n| n.to_str()),
        "backend": "cpu",
        "one_relay": {
            "batched": batched,
            "batched_no_prefix_reuse": no_prefix,
            "sequential": sequential,
            "ratios": ratios(&batched, &sequential),
            "ratios_no_prefix_reuse": ratios(&no_prefix, &sequential),
        },
    });
    if std::env::var("AIT_BENCH_CHAIN").as_deref() != Ok("0") {
        let lift = ["--http-max-connections-per-ip", "256"];
        let relays = three_relays_with(&root.join("chain"), &path, &lift);
        out["three_relay_chain"] = run_levels(relays[0].http.as_deref().expect("http"));
    }
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    let _ = std::fs::remove_dir_all(root);
}
