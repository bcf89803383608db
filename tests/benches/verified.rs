//! `cargo bench -p ait-tests --bench verified`: what verified streaming of model parts costs
//! on this machine, in one run, printing JSON (issue 14's "verification never the
//! bottleneck").
//!
//! For a 64 MiB part (random bytes) and for the default model's head and largest block part:
//! building the holder's hash tree (one BLAKE3 pass), encoding the whole part as a range
//! response with its proof, and decoding it with the downloader's check of every 16 KiB
//! chunk group; plus plain BLAKE3 of the same bytes and a memory copy, as ceilings. Medians of
//! 5 runs, in MB/s; the proof's size as a share of the part.

use std::time::Instant;

use ait_tests::default_model;
use rand::{RngCore, SeedableRng};
use relay::bench::median;
use serde_json::json;
use web_node::model::parts::{extract, Part};
use web_node::model::verified::{decode_range, PartTree};
use web_node::model::ModelFile;

/// Median seconds of 5 runs of `f` (after one warm-up).
fn secs(mut f: impl FnMut()) -> f64 {
    f();
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&runs)
}

fn measure(name: &str, data: &[u8]) -> serde_json::Value {
    let mb = data.len() as f64 / 1e6;
    let rate = |s: f64| (mb / s * 10.0).round() / 10.0;
    let tree = PartTree::new(data);
    let root = tree.root();
    let all = 0..data.len() as u64;
    let encoded = tree.encode(data, all.clone()).expect("encode");
    let hash = secs(|| {
        std::hint::black_box(PartTree::new(data).root());
    });
    let plain = secs(|| {
        std::hint::black_box(bao_blake3(data));
    });
    let encode = secs(|| {
        std::hint::black_box(tree.encode(data, all.clone()).expect("encode"));
    });
    let decode = secs(|| {
        std::hint::black_box(decode_range(root, all.clone(), &encoded[..]).expect("decode"));
    });
    let copy = secs(|| {
        std::hint::black_box(data.to_vec());
    });
    json!({
        "part": name,
        "bytes": data.len(),
        "proof_share": ((encoded.len() - data.len()) as f64 / data.len() as f64 * 1e4).round() / 1e4,
        "tree_mb_s": rate(hash),
        "blake3_mb_s": rate(plain),
        "encode_mb_s": rate(encode),
        "verify_mb_s": rate(decode),
        "copy_mb_s": rate(copy),
    })
}

fn bao_blake3(data: &[u8]) -> [u8; 32] {
    *bao_tree::blake3::hash(data).as_bytes()
}

fn main() {
    let mut random = vec![0u8; 64 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut random);
    let ModelFile::Gguf(model) = ModelFile::open(&default_model()).expect("default model") else {
        panic!("the default model is a GGUF file")
    };
    let n = model.config().n_layers;
    let head = extract(model.file(), n, Part::Head).expect("head part");
    let block = extract(model.file(), n, Part::Block(0)).expect("block part");
    let out = json!({
        "threads": 1,
        "parts": [measure("random 64 MiB", &random), measure("default model head", &head), measure("default model block 0", &block)],
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
