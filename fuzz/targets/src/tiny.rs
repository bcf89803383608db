//! A tiny Llama model with a byte-level BPE tokenizer, built in memory as GGUF: what the
//! targets that need a model (the session server, parts, the HTTP API) run on, and the source
//! of several seed inputs. Weights are deterministic, so every run sees the same model.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use web_node::engine::cpu::CpuBackend;
use web_node::engine::BlockExecutor;
use web_node::model::gguf::writer::{write, TensorOut};
use web_node::model::gguf::{GgufModel, Value};
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::serve::{ComputeLoop, ServeConfig, ServeLimits, Server};

/// Hidden size.
pub const HIDDEN: usize = 16;
/// Decoder layers.
pub const N_LAYERS: usize = 2;
/// Context length: short, so that a fuzzed session cannot run long.
pub const CONTEXT: usize = 64;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 8;
const FFN: usize = 24;

/// The 256 characters GPT-2's byte-level BPE uses for the bytes 0..=255, in byte order.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 code point")
            } else {
                next += 1;
                char::from_u32(next - 1).expect("a code point below 0x150")
            }
        })
        .collect()
}

/// GGUF metadata of a byte-level BPE tokenizer (`gpt2`, pre `smollm`, as the default model's):
/// the 256 byte tokens, two merges, and ChatML's control tokens.
pub fn tokenizer_metadata() -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    tokens.extend(["Ġt".into(), "he".into(), "<|im_start|>".into(), "<|im_end|>".into()]);
    let n = tokens.len();
    let types = (0..n).map(|i| Value::I64(if i >= n - 2 { 3 } else { 1 })).collect();
    vec![
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::Str).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![Value::Str("Ġ t".into()), Value::Str("h e".into())])),
        ("tokenizer.ggml.bos_token_id", Value::U64(n as u64 - 2)),
        ("tokenizer.ggml.eos_token_id", Value::U64(n as u64 - 1)),
    ]
}

/// GGUF metadata of a SentencePiece (`llama`) tokenizer over a few pieces, with scores.
pub fn spm_tokenizer_metadata() -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁", "▁t", "he", "▁the"].map(String::from).to_vec();
    tokens.extend(('a'..='z').map(String::from));
    tokens.extend((0..256).map(|b| format!("<0x{b:02X}>")));
    let n = tokens.len();
    let types = (0..n)
        .map(|i| {
            Value::I64(if i == 0 {
                2
            } else if i < 3 {
                3
            } else if i >= n - 256 {
                6
            } else {
                1
            })
        })
        .collect();
    let scores = (0..n).map(|i| Value::F64(-(i as f64))).collect();
    vec![
        ("tokenizer.ggml.model", Value::Str("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::Str).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.unknown_token_id", Value::U64(0)),
        ("tokenizer.ggml.bos_token_id", Value::U64(1)),
        ("tokenizer.ggml.eos_token_id", Value::U64(2)),
    ]
}

/// Vocabulary of [`tokenizer_metadata`].
fn vocab() -> usize {
    256 + 4
}

/// Deterministic weights in [-0.25, 0.25) (1-D tensors near 1).
fn values(n: usize, seed: usize, norm: bool) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let x = ((i * 2654435761 + seed * 40503) % 1000) as f32 / 2000.0 - 0.25;
            (if norm { 1.0 + x / 4.0 } else { x }).to_le_bytes()
        })
        .collect()
}

/// The tiny model as a GGUF file (F32, tied embeddings, ChatML template).
pub fn model_gguf() -> Vec<u8> {
    let u = |v: usize| Value::U64(v as u64);
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("general.name", Value::Str("tiny".into())),
        ("llama.embedding_length", u(HIDDEN)),
        ("llama.feed_forward_length", u(FFN)),
        ("llama.block_count", u(N_LAYERS)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV_HEADS)),
        ("llama.attention.key_length", u(HEAD_DIM)),
        ("llama.rope.freq_base", Value::F64(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5)),
        ("llama.context_length", u(CONTEXT)),
        ("llama.vocab_size", u(vocab())),
    ];
    metadata.extend(tokenizer_metadata());
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    // (name, dims fastest first)
    let mut specs: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![HIDDEN as u64, vocab() as u64])];
    for i in 0..N_LAYERS {
        let l = |t: &str| format!("blk.{i}.{t}");
        let d = |a: usize, b: usize| vec![a as u64, b as u64];
        specs.extend([
            (l("attn_norm.weight"), vec![HIDDEN as u64]),
            (l("attn_q.weight"), d(HIDDEN, q)),
            (l("attn_k.weight"), d(HIDDEN, kv)),
            (l("attn_v.weight"), d(HIDDEN, kv)),
            (l("attn_output.weight"), d(q, HIDDEN)),
            (l("ffn_norm.weight"), vec![HIDDEN as u64]),
            (l("ffn_gate.weight"), d(HIDDEN, FFN)),
            (l("ffn_up.weight"), d(HIDDEN, FFN)),
            (l("ffn_down.weight"), d(FFN, HIDDEN)),
        ]);
    }
    specs.push(("output_norm.weight".into(), vec![HIDDEN as u64]));
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(k, (_, dims))| values(dims.iter().product::<u64>() as usize, k, dims.len() == 1))
        .collect();
    let tensors: Vec<TensorOut<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((name, dims), data)| TensorOut { name, dims: dims.clone(), ggml_type: 0, data })
        .collect();
    write(&metadata, &tensors)
}

/// The tiny model, loaded.
pub fn model() -> &'static GgufModel {
    static MODEL: OnceLock<GgufModel> = OnceLock::new();
    MODEL.get_or_init(|| GgufModel::from_bytes(Bytes::from(model_gguf())).expect("the tiny model loads"))
}

/// The tiny model's manifest.
pub fn manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| Manifest::of_file(&ModelFile::Gguf(model().clone())).expect("the tiny model hashes"))
}

/// The tiny model's id.
pub fn model_id() -> ModelId {
    manifest().id()
}

/// Limits of the fuzzed servers: short timeouts, so that an input that stops mid-frame or
/// leaves a session idle cannot stall a run.
pub fn limits() -> ServeLimits {
    let mut limits = ServeLimits::default().with_max_sessions(64).with_max_sessions_per_peer(64);
    limits.idle_timeout = std::time::Duration::from_millis(500);
    limits.frame_timeout = std::time::Duration::from_millis(500);
    limits
}

/// A server of `blocks` of the tiny model on the CPU backend, its compute loop on a thread of
/// its own, signing its receipts with a fixed key.
pub fn server(blocks: Range<usize>) -> Arc<Server> {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).expect("a valid ed25519 secret");
    server_as(blocks, key)
}

/// Like [`server`], signing its receipts with `key` (a node's own server signs with the
/// node's identity, which its clients check the receipts against).
pub fn server_as(blocks: Range<usize>, key: libp2p::identity::Keypair) -> Arc<Server> {
    let m = model();
    let weights = blocks.clone().map(|i| m.load_layer(i)).collect::<Result<Vec<_>, _>>().expect("tiny layers load");
    let backend = CpuBackend::new(m.config().clone(), blocks, weights).expect("tiny backend");
    let mut config = ServeConfig::for_backend(model_id(), &backend, limits());
    config.ms_per_block = 0.01;
    let executor = BlockExecutor::new(backend, config.limits.executor_config());
    let (handle, compute) = ComputeLoop::new(executor, config.limits.batch);
    std::thread::Builder::new()
        .name("fuzz-compute".into())
        .spawn(move || futures::executor::block_on(compute.run()))
        .expect("a compute thread starts");
    Arc::new(Server::new(config, handle, key))
}
