//! Seed inputs for every target, built from real encodings: frames and messages as the
//! protocol encodes them, a record signed as a server signs it, the tiny model's GGUF file and
//! parts, a safetensors shard, tokenizers, chat templates and OpenAI API requests. With the
//! default model's path, also its GGUF header, tokenizer and chat template.
//!
//! `cargo run --release -p ait-fuzz-targets --example seed -- fuzz/corpus [MODEL.gguf]`
//! writes them, one file per seed under `<dir>/<target>/`.

use std::path::Path;

use libp2p::identity::Keypair;

use bytes::Bytes;
use web_node::model::gguf::writer::write;
use web_node::model::gguf::{GgufFile, Value};
use web_node::model::parts::{extract, Part};
use web_node::model::ModelId;
use web_node::net::frame::write_frame;
use web_node::net::protocol::{ErrorCode, Request, Response, ServerStatus, PROTOCOL_VERSION};
use web_node::net::record::ServerRecord;

use crate::net::{record_key, RECORD_NOW_MS};
use crate::{join_len, tiny};

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Bytes of the default model's file kept for the GGUF seed (its header and metadata).
const GGUF_HEAD: usize = 1 << 20;

fn frames(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = futures::io::Cursor::new(Vec::new());
    futures::executor::block_on(async {
        for m in msgs {
            write_frame(&mut out, m).await.expect("writing to memory");
        }
    });
    out.into_inner()
}

fn status() -> ServerStatus {
    ServerStatus {
        version: PROTOCOL_VERSION,
        model: tiny::model_id().to_hex(),
        start: 0,
        end: tiny::N_LAYERS,
        backend: "cpu".into(),
        ms_per_block: 0.25,
        free_slots: 8,
        active_sessions: 1,
        max_len: tiny::CONTEXT,
        pay: None,
        queued: None,
    }
}

fn hidden(n_tokens: usize) -> Vec<f32> {
    (0..n_tokens * tiny::HIDDEN).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect()
}

fn open(max_len: u32) -> Request {
    Request::Open {
        model: tiny::model_id(),
        session: [5; 32],
        start: 0,
        end: tiny::N_LAYERS as u32,
        max_len,
        payment: None,
    }
}

fn step(pos: u32, n_tokens: u32) -> Request {
    Request::Step { pos, n_tokens, hidden: hidden(n_tokens as usize), voucher: None }
}

/// A paid session's payment and a voucher for it, signed as a client signs them.
fn payment() -> (web_node::settle::Payment, web_node::settle::SignedVoucher) {
    let key = web_node::settle::SessionKey::from_bytes(&[7; 32]).expect("a valid secret");
    let (who, session) = (key.address(), format!("0x{}", "11".repeat(32)));
    let payment = serde_json::from_value(serde_json::json!({ "session": session, "payer": who, "signer": who,
        "not_after": 2_000_000_000u64, "proof": format!("0x{}", "22".repeat(65)) }))
    .expect("a payment");
    let voucher: web_node::settle::Voucher = serde_json::from_value(serde_json::json!({
        "session": session, "payer": who, "node": who, "model": format!("0x{}", tiny::model_id().to_hex()),
        "cumulativeAmount": "0x3e8", "cumulativeWork": "0x1e",
        "receipts": format!("0x{}", "33".repeat(32)), "expiry": 2_000_000_000u64,
    }))
    .expect("a voucher");
    let domain = web_node::settle::escrow_domain(31337, who);
    let signature = key.sign(&voucher, &domain).expect("signing").as_bytes().to_vec().into();
    (payment, web_node::settle::SignedVoucher { voucher, signature })
}

fn requests() -> Vec<(&'static str, Request)> {
    let (pay, voucher) = payment();
    let paid_open = Request::Open {
        model: tiny::model_id(),
        session: [6; 32],
        start: 0,
        end: tiny::N_LAYERS as u32,
        max_len: 32,
        payment: Some(pay),
    };
    let paid_step = Request::Step { pos: 3, n_tokens: 1, hidden: hidden(1), voucher: Some(voucher.clone()) };
    vec![
        ("info", Request::Info),
        ("open", open(32)),
        ("step", step(0, 3)),
        ("close", Request::Close { voucher: None }),
        ("open-paid", paid_open),
        ("step-paid", paid_step),
        ("close-paid", Request::Close { voucher: Some(voucher) }),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        ("info", Response::Info(status())),
        ("opened", Response::Opened { max_len: 32, free_left: None }),
        ("opened-free", Response::Opened { max_len: 32, free_left: Some(4096) }),
        ("queued", Response::Queued { position: 2, waiting: 5 }),
        ("hidden", Response::Hidden { n_tokens: 2, compute_us: 120, receipt: vec![9; 64], hidden: hidden(2) }),
        ("error", Response::Error { code: ErrorCode::Busy, message: "all 16 session slots are taken".into() }),
    ]
}

/// A fraud report of 3 tokens of width 8 from fixed keys: the accused added `lie` times
/// each input to the honest outputs (in steps of 2 and 1 tokens); two auditors replayed the
/// inputs as one prefill and answered honestly.
fn fraud_report(lie: f32) -> web_node::trust::FraudReport {
    use web_node::trust::{FraudReport, SignedRun};
    let dim = 8;
    let inputs: Vec<f32> = (0..3 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
    let honest: Vec<f32> = inputs.iter().map(|x| x + 0.5 * x.cos()).collect();
    let claimed: Vec<f32> = inputs.iter().zip(&honest).map(|(x, h)| h + lie * x).collect();
    let key = |b: u8| Keypair::ed25519_from_bytes([b; 32]).expect("32 bytes");
    let model = ModelId([3; 32]);
    let run = |b: u8, outputs: &[f32], steps: &[usize]| {
        SignedRun::sign(&key(b), [b; 32], model, 2..4, &inputs, outputs, steps, dim).expect("signs")
    };
    let accused = run(1, &claimed, &[2, 1]);
    let replays = vec![run(2, &honest, &[3]), run(3, &honest, &[3])];
    FraudReport { hidden: dim as u32, inputs: inputs.clone(), accused, replays }
}

fn record_json() -> Vec<u8> {
    let rec = ServerRecord {
        peer: record_key().public().to_peer_id().to_string(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip6/::1/udp/4001/quic-v1".into()],
        expires_ms: RECORD_NOW_MS + 120_000,
        status: status(),
    };
    serde_json::to_vec(&rec).expect("a record serializes")
}

/// A safetensors shard (F32) of the model `model::SAFETENSORS_CONFIG` describes.
pub fn safetensors_shard() -> Vec<u8> {
    let (h, f, v, q, kv) = (16usize, 24usize, 32usize, 16usize, 8usize);
    let l = |t: &str| format!("model.layers.0.{t}");
    let specs: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        (l("input_layernorm.weight"), vec![h]),
        (l("self_attn.q_proj.weight"), vec![q, h]),
        (l("self_attn.k_proj.weight"), vec![kv, h]),
        (l("self_attn.v_proj.weight"), vec![kv, h]),
        (l("self_attn.o_proj.weight"), vec![h, q]),
        (l("post_attention_layernorm.weight"), vec![h]),
        (l("mlp.gate_proj.weight"), vec![f, h]),
        (l("mlp.up_proj.weight"), vec![f, h]),
        (l("mlp.down_proj.weight"), vec![h, f]),
        ("model.norm.weight".into(), vec![h]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in specs {
        let n: usize = shape.iter().product();
        let start = data.len();
        data.extend((0..n).flat_map(|i| (((i % 5) as f32 - 2.0) / 8.0 + 1.0).to_le_bytes()));
        header.insert(name, serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::to_vec(&header).expect("a header serializes");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

/// A small byte-level BPE `tokenizer.json`.
const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":5,"content":"<|im_end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"h":0,"e":1,"l":2,"o":3,"he":4,"<|im_end|>":5},"merges":["h e"]}}"#;

/// A template in the style of the default model's (ChatML with a default system prompt).
const SMOL_STYLE_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A Llama-3 style template (filters, `raise_exception`, namespaces).
const LLAMA3_STYLE_TEMPLATE: &str = "{{- bos_token }}{%- set ns = namespace(sys='') %}{%- for m in messages %}{%- if m['role'] == 'system' %}{%- set ns.sys = m['content'] | trim %}{%- elif m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' ~ m['role']) }}{%- else %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

fn messages_json() -> Vec<u8> {
    br#"[{"role":"system","content":"Be brief."},{"role":"user","content":"What is 2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"And 3+3?"}]"#.to_vec()
}

fn http(head: &str, body: &str) -> Vec<u8> {
    format!("{head}\n\n{body}").into_bytes()
}

fn api_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let id = tiny::model_id().to_hex();
    let json = "content-type: application/json";
    vec![
        ("models", http("GET /v1/models", "")),
        (
            "chat",
            http(
                &format!("POST /v1/chat/completions\n{json}"),
                r#"{"model":"tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"temperature":0}"#,
            ),
        ),
        (
            "chat_stream",
            http(
                &format!("POST /v1/chat/completions\n{json}"),
                r#"{"model":"tiny","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"the"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true},"stop":["\n"],"seed":1,"top_p":0.9}"#,
            ),
        ),
        (
            "completions",
            http(&format!("POST /v1/completions\n{json}"), r#"{"model":"tiny","prompt":"Once upon","max_tokens":2}"#),
        ),
        ("bootstrap", http("GET /ait/bootstrap", "")),
        ("manifest", http(&format!("GET /ait/models/{id}/manifest"), "")),
        ("head", http(&format!("GET /ait/models/{id}/head"), "")),
        ("block", http(&format!("GET /ait/models/{id}/blocks/1"), "")),
        (
            "preflight",
            http("OPTIONS /v1/chat/completions\norigin: http://example.com\naccess-control-request-method: POST", ""),
        ),
    ]
}

/// The default model's tokenizer metadata alone, as a GGUF file without tensors.
fn tokenizer_only(file: &GgufFile) -> Vec<u8> {
    let mut md: Vec<(&str, Value)> = file
        .metadata
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    md.sort_by(|a, b| a.0.cmp(b.0));
    write(&md, &[])
}

/// Every seed; with `default_model`, also those taken from the default model's file.
pub fn all(default_model: Option<&Path>) -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, name.to_string(), bytes));

    // Frames and messages.
    let reqs = requests();
    let resps = responses();
    let all_frames: Vec<Vec<u8>> =
        reqs.iter().map(|(_, r)| r.encode()).chain(resps.iter().map(|(_, r)| r.encode())).collect();
    for mode in 0..3u8 {
        let mut bytes = vec![mode];
        bytes.extend(frames(&all_frames));
        add("frame", &format!("frames-{mode}"), bytes);
    }
    for (name, r) in &reqs {
        add("protocol", &format!("request-{name}"), r.encode());
    }
    for (name, r) in &resps {
        add("protocol", &format!("response-{name}"), r.encode());
    }

    // Fraud reports: one that checks (a node answered its inputs plus a hundredth, two
    // auditors did not), and one whose auditors pass the node.
    add("report", "convicting", fraud_report(0.01).encode());
    add("report", "clearing", fraud_report(0.0).encode());

    // Records.
    let mut payload = vec![1u8];
    payload.extend(record_json());
    add("record", "payload", payload);
    let rec: ServerRecord = serde_json::from_slice(&record_json()).expect("the record parses back");
    let mut signed = vec![0u8];
    signed.extend(rec.sign(&record_key()).expect("signing works"));
    add("record", "envelope", signed);

    // Session streams.
    let session = |reqs: &[Request]| frames(&reqs.iter().map(Request::encode).collect::<Vec<_>>());
    add("session", "info", session(&[Request::Info]));
    add(
        "session",
        "generate",
        session(&[open(16), step(0, 3), step(3, 1), step(4, 1), Request::Close { voucher: None }]),
    );
    add("session", "info-open-step", session(&[Request::Info, open(8), step(0, 1)]));
    add("session", "replay", session(&[open(32), step(0, 2), step(0, 4), step(4, 1)]));
    let mut wrong = open(8);
    if let Request::Open { model, .. } = &mut wrong {
        model.0[0] ^= 1;
    }
    add("session", "wrong-model", session(&[wrong]));
    add("session", "step-first", session(&[step(0, 1)]));

    // Model files and parts.
    let model = tiny::model_gguf();
    add("gguf", "tiny", model.clone());
    let file = tiny::model().file();
    let head = extract(file, tiny::N_LAYERS, Part::Head).expect("the head part");
    let block = |i| extract(file, tiny::N_LAYERS, Part::Block(i)).expect("a block part");
    add("gguf", "tiny-head-part", head.clone());
    add("safetensors", "tiny", join_len(crate::model::SAFETENSORS_CONFIG.as_bytes(), &safetensors_shard()));
    for (mode, name, part) in [(0u8, "block-0", block(0)), (1, "block-1", block(1)), (2, "head", head)] {
        let mut bytes = vec![mode];
        bytes.extend(part);
        add("parts", name, bytes);
    }
    let mut manifest = vec![3u8];
    manifest.extend(serde_json::to_vec(tiny::manifest()).expect("a manifest serializes"));
    add("parts", "manifest", manifest);

    // Tokenizers.
    for (name, md) in [("gguf-bpe", tiny::tokenizer_metadata()), ("gguf-spm", tiny::spm_tokenizer_metadata())] {
        let mut bytes = vec![0u8];
        bytes.extend(write(&md, &[]));
        add("tokenizer", name, bytes);
    }
    let mut json = vec![1u8];
    json.extend_from_slice(TOKENIZER_JSON.as_bytes());
    add("tokenizer", "json", json);
    let mut text = vec![2u8];
    text.extend_from_slice("<|im_start|>user\nthe heat, 123 héé 🦀<|im_end|>".as_bytes());
    add("tokenizer", "text", text);

    // Chat templates.
    let chatml = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    for (name, t) in [("chatml", chatml), ("smol-style", SMOL_STYLE_TEMPLATE), ("llama3-style", LLAMA3_STYLE_TEMPLATE)]
    {
        add("chat", name, join_len(t.as_bytes(), &messages_json()));
    }

    // The HTTP API.
    for (name, bytes) in api_seeds() {
        add("api", name, bytes);
    }

    // The default model.
    if let Some(path) = default_model {
        if let Ok(bytes) = std::fs::read(path) {
            add("gguf", "default-model-head", bytes[..bytes.len().min(GGUF_HEAD)].to_vec());
            if let Ok(file) = GgufFile::parse(Bytes::from(bytes)) {
                let mut tok = vec![0u8];
                tok.extend(tokenizer_only(&file));
                add("tokenizer", "default-model", tok);
                if let Some(Value::Str(t)) = file.metadata.get("tokenizer.chat_template") {
                    add("chat", "default-model", join_len(t.as_bytes(), &messages_json()));
                }
            }
        }
    }
    out
}
