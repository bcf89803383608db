//! `cargo bench -p ait-tests --bench torrent_size`: the torrent's size run (issue 14,
//! deliverable 7), printing JSON. A benchmark, not a test: it writes a 4 GB model and takes
//! minutes.
//!
//! A generated model shaped like Llama-3-8B (32 layers, hidden 4096, FFN 14336, 32 heads with
//! 8 KV heads of 128, Q4_0 matrices with random values; the default model's tokenizer, so its
//! vocabulary is 49152 rather than 128256) is generated once by one process from the file
//! (the reference decode rate), published by one node (`ait publish`), and fetched by 4
//! relays at once that each take only their 8 blocks and the head (`--model ID`). Reported:
//! the bytes each fetched, its time to serving and peak memory (`VmHWM`), then a greedy
//! generation through the 4-relay chain, checked equal to the single process's, and its
//! decode rate against the single process's (target >= 0.9x).
//!
//! `AIT_SIZE_LAYERS` (default 32) shrinks the model for a quick run; `AIT_SIZE_TOKENS`
//! (default 16) sets the tokens generated.

use std::path::Path;
use std::time::Instant;

use ait_tests::procs::{ait, temp_dir, Relay};
use ait_tests::tiny_model::{ggml_type, write_gguf};
use rand::{RngCore, SeedableRng};
use serde_json::json;
use web_node::model::gguf::{GgufModel, Value};
use web_node::model::quant::quantize;
use web_node::model::WeightType;

const HIDDEN: u64 = 4096;
const FFN: u64 = 14336;
const HEADS: u64 = 32;
const KV_HEADS: u64 = 8;
const HEAD_DIM: u64 = 128;

/// A Q4_0 matrix of `rows` x `cols` with random 4-bit values and one scale for all blocks,
/// chosen so that a row's dot product with a unit-RMS vector stays near 1.
fn q4_0(rng: &mut rand::rngs::StdRng, rows: u64, cols: u64) -> Vec<u8> {
    // Nibble q stands for (q - 8) times the scale. Random nibbles with 0 read as 8 give
    // -7..=7 with mean 0 (a mean off 0 would add the same amount to every row, which grows
    // layer after layer) and a standard deviation of about 4.2.
    let scale = 1.0 / (4.2 * (cols as f32).sqrt());
    let template = quantize(WeightType::Q4_0, &(0..32).map(|i| scale * (i as f32 - 8.0)).collect::<Vec<_>>());
    let zero_mean: Vec<u8> = (0..=255u8)
        .map(|b| {
            let nibble = |n: u8| if n == 0 { 8 } else { n };
            nibble(b & 15) | nibble(b >> 4) << 4
        })
        .collect();
    let blocks = (rows * cols / 32) as usize;
    let mut out = vec![0u8; blocks * 18];
    rng.fill_bytes(&mut out);
    for b in out.chunks_exact_mut(18) {
        b[..2].copy_from_slice(&template[..2]);
        for q in &mut b[2..] {
            *q = zero_mean[*q as usize];
        }
    }
    out
}

fn ones(n: u64) -> Vec<u8> {
    quantize(WeightType::F32, &vec![1.0; n as usize])
}

/// Writes the model to `path`; returns its size in bytes.
fn write_model(path: &Path, layers: u64) -> u64 {
    let default = GgufModel::open(&ait_tests::default_model()).expect("default model");
    let vocab = default.config().vocab as u64;
    let u = Value::U64;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str("llama".into())),
        ("general.name".into(), Value::Str("Llama-3-8B-shaped".into())),
        ("llama.embedding_length".into(), u(HIDDEN)),
        ("llama.feed_forward_length".into(), u(FFN)),
        ("llama.block_count".into(), u(layers)),
        ("llama.attention.head_count".into(), u(HEADS)),
        ("llama.attention.head_count_kv".into(), u(KV_HEADS)),
        ("llama.attention.key_length".into(), u(HEAD_DIM)),
        ("llama.rope.freq_base".into(), Value::F64(500000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F64(1e-5)),
        ("llama.context_length".into(), u(8192)),
        ("llama.vocab_size".into(), u(vocab)),
    ];
    let tokenizer = default.file().metadata.0.iter().filter(|(k, _)| k.starts_with("tokenizer."));
    md.extend(tokenizer.map(|(k, v)| (k.clone(), v.clone())));
    drop(default);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (q, f) = (ggml_type(WeightType::Q4_0), ggml_type(WeightType::F32));
    let kv = KV_HEADS * HEAD_DIM;
    let mut tensors = vec![
        ("token_embd.weight".to_string(), vec![HIDDEN, vocab], q, q4_0(&mut rng, vocab, HIDDEN)),
        ("output_norm.weight".into(), vec![HIDDEN], f, ones(HIDDEN)),
        ("output.weight".into(), vec![HIDDEN, vocab], q, q4_0(&mut rng, vocab, HIDDEN)),
    ];
    for i in 0..layers {
        let mut m = |name: &str, rows: u64, cols: u64| {
            (format!("blk.{i}.{name}.weight"), vec![cols, rows], q, q4_0(&mut rng, rows, cols))
        };
        let layer = [
            m("attn_q", HIDDEN, HIDDEN),
            m("attn_k", kv, HIDDEN),
            m("attn_v", kv, HIDDEN),
            m("attn_output", HIDDEN, HIDDEN),
            m("ffn_gate", FFN, HIDDEN),
            m("ffn_up", FFN, HIDDEN),
            m("ffn_down", HIDDEN, FFN),
        ];
        tensors.extend(layer);
        tensors.push((format!("blk.{i}.attn_norm.weight"), vec![HIDDEN], f, ones(HIDDEN)));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), vec![HIDDEN], f, ones(HIDDEN)));
    }
    let bytes = write_gguf(&md, &tensors);
    drop(tensors);
    std::fs::write(path, &bytes).expect("write the model");
    bytes.len() as u64
}

/// Runs `ait generate` with `args`; returns its text and decode rate (tokens/s).
fn generate(args: &[&str]) -> (String, f64) {
    let out = ait().arg("generate").args(args).output().expect("ait generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ait generate {args:?}: {stderr}");
    let rate = stderr
        .lines()
        .find_map(|l| l.strip_prefix("decode: "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no decode rate in: {stderr}"));
    (String::from_utf8_lossy(&out.stdout).into_owned(), rate)
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn main() {
    let layers: u64 = std::env::var("AIT_SIZE_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let tokens = std::env::var("AIT_SIZE_TOKENS").unwrap_or_else(|_| "16".into());
    assert!(layers.is_multiple_of(4) && layers > 0, "AIT_SIZE_LAYERS must be a multiple of 4");
    let root = temp_dir("bench-torrent-size");
    let path = root.join("llama3-8b-shaped.gguf");
    let t = Instant::now();
    let size = write_model(&path, layers);
    eprintln!("wrote {:.2} GB in {:.1} s", size as f64 / 1e9, t.elapsed().as_secs_f64());
    let p = path.to_str().expect("utf-8 path");
    let gen_args = ["--model", p, "--temperature", "0", "--max-tokens", &tokens, "--prompt", "Hello there"];

    let (local_text, local_rate) = generate(&[&gen_args[..], &["--backend", "cpu"]].concat());
    eprintln!("one process: {local_rate:.2} tokens/s");

    let t = Instant::now();
    let publisher = Relay::publish(&root.join("publisher"), &path, &["--name", "Llama-3-8B-shaped", "--no-http"]);
    let publish_s = t.elapsed().as_secs_f64();
    let id = publisher
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("published: model "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `published:` line: {:?}", publisher.stdout))
        .to_string();
    let boot = publisher.addr("tcp");
    eprintln!("published {id} in {publish_s:.1} s");

    let per = layers / 4;
    let t = Instant::now();
    let relays: Vec<(Relay, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let (root, id, boot) = (&root, &id, &boot);
                s.spawn(move || {
                    let blocks = format!("{}..{}", k * per, (k + 1) * per);
                    let dir = root.join(format!("r{k}"));
                    let started = Instant::now();
                    let args =
                        ["--model", id, "--blocks", &blocks, "--bootstrap", boot, "--backend", "cpu", "--no-http"];
                    let r = Relay::start(&dir, &args);
                    (r, started.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("relay thread")).collect()
    });
    let fetch_s = t.elapsed().as_secs_f64();
    let fetched: Vec<serde_json::Value> = relays
        .iter()
        .enumerate()
        .map(|(k, (r, secs))| {
            let bytes: u64 = r
                .stdout
                .iter()
                .filter_map(|l| l.strip_prefix("fetched "))
                .filter_map(|l| l.split(": ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            json!({
                "blocks": format!("{}..{}", k as u64 * per, (k as u64 + 1) * per),
                "fetched_bytes": bytes,
                "seconds_to_serving": round(*secs, 1),
                "peak_rss_mib": r.peak_rss_kib() / 1024,
            })
        })
        .collect();
    let (swarm_text, swarm_rate) = generate(&[&gen_args[..], &["--swarm", &relays[0].0.addr("tcp")]].concat());
    eprintln!("4-relay chain: {swarm_rate:.2} tokens/s");
    let out = json!({
        "model": {"layers": layers, "bytes": size, "id": id},
        "publish_seconds": round(publish_s, 1),
        "publisher_peak_rss_mib": publisher.peak_rss_kib() / 1024,
        "fetch_seconds_all_four": round(fetch_s, 1),
        "relays": fetched,
        "decode_tokens_per_s": {"one_process": round(local_rate, 3), "four_relays": round(swarm_rate, 3)},
        "decode_ratio": round(swarm_rate / local_rate, 3),
        "same_text": swarm_text == local_text,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    drop((relays, publisher));
    if std::env::var_os("AIT_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}
