//! Test e of the spec: a safetensors checkpoint with the same weights as a GGUF file gives
//! the same configuration, the same layer weights and the same logits; and broken files of
//! either format give a [`ModelError`](web_node::model::ModelError) naming the file and the problem, never a panic.
//!
//! The model is [`TinyModel`] (seeded random weights). Logits come from the CPU backend:
//! prefill 5 tokens, then 2 decode steps, final RMSNorm and LM head by the reference ops.

use std::path::Path;

use ait_tests::tiny_model::{gguf_name, write_default_tokenizer, write_gguf, TempDir, TinyModel};
use bytes::Bytes;
use pollster::block_on;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use web_node::engine::cpu::CpuBackend;
use web_node::engine::{reference, Backend};
use web_node::model::convert::{Conversion, ConvertError};
use web_node::model::gguf::{GgufModel, Value};
use web_node::model::{ModelFile, WeightType};

/// Token sequences: 5 prefilled, then 2 decoded one at a time.
fn sequences() -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut seqs = vec![vec![1, 2, 3, 4, 5, 6, 7]];
    seqs.extend((0..2).map(|_| (0..7).map(|_| rng.random_range(0..128u32)).collect::<Vec<_>>()));
    seqs
}

/// Logits of every token of `tokens` (`[tokens.len() * vocab]`): prefill 5, decode the rest.
fn logits(model: &ModelFile, tokens: &[u32]) -> Vec<f32> {
    let c = model.config().clone();
    let head = model.load_head().expect("head");
    let layers = model.load_layers(0..c.n_layers).expect("layers");
    let backend = CpuBackend::new(c.clone(), 0..c.n_layers, layers).expect("backend");
    let mut cache = backend.new_cache(tokens.len()).expect("cache");
    let embed = |toks: &[u32]| {
        let mut x = vec![0.0; toks.len() * c.hidden];
        for (&t, row) in toks.iter().zip(x.chunks_exact_mut(c.hidden)) {
            head.token_embd.dequantize_row(t as usize, row);
        }
        x
    };
    let mut out = Vec::new();
    let mut pos = 0;
    for chunk in [&tokens[..5], &tokens[5..6], &tokens[6..7]] {
        let x = block_on(backend.forward(&mut cache, &embed(chunk), chunk.len(), pos)).expect("forward");
        let xn = reference::rms_norm(&x, &head.output_norm, c.rms_eps);
        out.extend(reference::matmul(head.lm_head(), &xn, chunk.len()));
        pos += chunk.len();
    }
    assert!(out.iter().all(|v| v.is_finite()), "non-finite logits");
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write test file");
}

/// Opens both files and checks config, every layer's weights and the head for equality.
fn assert_same_weights(st: &ModelFile, gg: &ModelFile) {
    assert_eq!(st.config(), gg.config());
    for i in 0..st.config().n_layers {
        let (a, b) = (st.load_layer(i).expect("st layer"), gg.load_layer(i).expect("gguf layer"));
        assert_eq!(a.attn_norm, b.attn_norm, "layer {i} attn_norm");
        assert_eq!(a.ffn_norm, b.ffn_norm, "layer {i} ffn_norm");
        let pairs = [
            ("attn_q", &a.attn_q, &b.attn_q),
            ("attn_k", &a.attn_k, &b.attn_k),
            ("attn_v", &a.attn_v, &b.attn_v),
            ("attn_output", &a.attn_output, &b.attn_output),
            ("ffn_gate", &a.ffn_gate, &b.ffn_gate),
            ("ffn_up", &a.ffn_up, &b.ffn_up),
            ("ffn_down", &a.ffn_down, &b.ffn_down),
        ];
        for (name, x, y) in pairs {
            assert_eq!((x.rows, x.cols), (y.rows, y.cols), "layer {i} {name} shape");
            let (dx, dy) = (x.dequantize(), y.dequantize());
            if let Some(j) = (0..dx.len()).find(|&j| dx[j] != dy[j]) {
                panic!("layer {i} {name}: index {j}: {} vs {}", dx[j], dy[j]);
            }
        }
        assert!(a.qkv_bias.is_none() && b.qkv_bias.is_none());
    }
    let (a, b) = (st.load_head().expect("st head"), gg.load_head().expect("gguf head"));
    assert_eq!(a.token_embd.dequantize(), b.token_embd.dequantize(), "token_embd");
    assert_eq!(a.output_norm, b.output_norm, "output_norm");
    assert_eq!(a.output.is_some(), b.output.is_some(), "tied in one format only");
    assert_eq!(a.lm_head().dequantize(), b.lm_head().dequantize(), "lm head");
}

/// Logits of both models on every sequence; returns the largest absolute difference.
fn compare_logits(st: &ModelFile, gg: &ModelFile, tol: f32) -> f32 {
    let mut worst = 0.0f32;
    for seq in sequences() {
        let (a, b) = (logits(st, &seq), logits(gg, &seq));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = (x - y).abs();
            assert!(d <= tol * scale, "{seq:?}: logit {j}: safetensors {x} vs gguf {y} (tolerance {tol} x {scale})");
            worst = worst.max(d);
        }
    }
    worst
}

fn open_pair(
    name: &str,
    st_model: &TinyModel,
    st_type: WeightType,
    gg_model: &TinyModel,
    gg_type: WeightType,
) -> (TempDir, ModelFile, ModelFile) {
    let dir = TempDir::new(name);
    st_model.write_hf(dir.path(), st_type, 1);
    let gguf_path = dir.path().join("tiny.gguf");
    write(&gguf_path, &gg_model.gguf(gg_type));
    let st = ModelFile::open(dir.path()).expect("open safetensors");
    let gg = ModelFile::open(&gguf_path).expect("open gguf");
    assert!(matches!(st, ModelFile::Safetensors(_)) && matches!(gg, ModelFile::Gguf(_)));
    (dir, st, gg)
}

#[test]
fn f32_safetensors_and_gguf_give_bit_equal_logits() {
    for tied in [false, true] {
        let m = TinyModel::random(42, tied);
        let (_dir, st, gg) = open_pair(&format!("f32-{tied}"), &m, WeightType::F32, &m, WeightType::F32);
        assert_eq!(st.config(), &m.config);
        assert_same_weights(&st, &gg);
        assert_eq!(compare_logits(&st, &gg, 0.0), 0.0);
    }
}

#[test]
fn half_types_match_gguf_of_the_same_type_bit_for_bit() {
    for dtype in [WeightType::F16, WeightType::BF16] {
        let m = TinyModel::random(3, false).rounded(dtype);
        let (_dir, st, gg) = open_pair(&format!("{dtype}"), &m, dtype, &m, dtype);
        assert_eq!(st.load_layer(1).expect("layer").ffn_up.dtype, dtype);
        assert_same_weights(&st, &gg);
        assert_eq!(compare_logits(&st, &gg, 0.0), 0.0, "{dtype}");
    }
}

#[test]
fn bf16_safetensors_match_a_bf16_rounded_f32_gguf() {
    // Same values, different storage: the products may be summed in another order by the
    // f32 and bf16 kernels, so allow rounding differences of f32 accumulation.
    let m = TinyModel::random(11, true).rounded(WeightType::BF16);
    let (_dir, st, gg) = open_pair("bf16-vs-f32", &m, WeightType::BF16, &m, WeightType::F32);
    assert_same_weights(&st, &gg);
    let worst = compare_logits(&st, &gg, 1e-5);
    eprintln!("bf16 safetensors vs f32 gguf: max |logit diff| = {worst:e}");
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let m = TinyModel::random(5, false);
    let dir = TempDir::new("sharded");
    let shards = m.write_hf(dir.path(), WeightType::F32, 3);
    let gguf_path = dir.path().join("tiny.gguf");
    write(&gguf_path, &m.gguf(WeightType::F32));
    let gg = ModelFile::open(&gguf_path).expect("open gguf");
    let index = dir.path().join("model.safetensors.index.json");
    for path in [dir.path(), index.as_path()] {
        let st = ModelFile::open(path).expect("open sharded");
        assert_same_weights(&st, &gg);
        assert_eq!(compare_logits(&st, &gg, 0.0), 0.0);
    }
    // The portable entry point, shards in any order.
    let config = std::fs::read(dir.path().join("config.json")).expect("config");
    let mut parts: Vec<Bytes> = shards.iter().map(|p| Bytes::from(std::fs::read(p).expect("shard"))).collect();
    parts.reverse();
    let st = ModelFile::Safetensors(
        web_node::model::safetensors::SafetensorsModel::from_parts(&config, parts, None, None).expect("from_parts"),
    );
    assert_same_weights(&st, &gg);
}

#[test]
fn missing_lm_head_means_tied_even_if_config_says_untied() {
    let tied = TinyModel::random(8, true);
    let mut untied_config = tied.clone();
    untied_config.config.tie_embeddings = false;
    let dir = TempDir::new("lm-head-absent");
    untied_config.write_hf(dir.path(), WeightType::F32, 1);
    let st = ModelFile::open(&dir.path().join("model.safetensors")).expect("open");
    assert!(st.config().tie_embeddings);
    assert!(st.load_head().expect("head").output.is_none());
}

#[test]
fn rope_permutation_matters() {
    // Guards the test itself: a GGUF file whose q/k rows were not permuted must give other
    // logits, or the equality above would not prove the layouts agree.
    let m = TinyModel::random(42, false);
    let dir = TempDir::new("unpermuted");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let gguf_path = dir.path().join("unpermuted.gguf");
    write(&gguf_path, &write_gguf(&m.gguf_metadata(), &m.gguf_tensors(WeightType::F32, false)));
    let st = ModelFile::open(dir.path()).expect("open");
    let gg = ModelFile::open(&gguf_path).expect("open");
    let seq = &sequences()[1];
    let (a, b) = (logits(&st, seq), logits(&gg, seq));
    let diff = ait_tests::max_abs_diff(&a, &b);
    let spread = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("max |logit| {spread}, unpermuted gguf differs by up to {diff}");
    assert!(diff > 1e-3, "unpermuted q/k rows gave the same logits (max diff {diff})");
}

// ---- broken safetensors checkpoints ----

/// Opens `path`, which must fail; returns the message after checking it names `file`.
fn open_err(path: &Path, file: &str) -> String {
    match ModelFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(file), "error does not name {file}: {msg}");
            msg
        }
    }
}

#[test]
fn truncated_safetensors_are_errors_naming_the_file() {
    let m = TinyModel::random(1, false);
    let dir = TempDir::new("st-truncated");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let path = dir.path().join("model.safetensors");
    let full = std::fs::read(&path).expect("read");
    let n = u64::from_le_bytes(full[..8].try_into().expect("8 bytes")) as usize;
    for cut in [0, 3, 8, 9, 8 + n / 2, 8 + n, 8 + n + 100, full.len() / 2, full.len() - 1] {
        write(&path, &full[..cut]);
        let msg = open_err(dir.path(), "model.safetensors");
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // Every other cut, in memory: an error, never a panic.
    let config = serde_json::to_vec(&m.hf_config()).expect("json");
    let full = Bytes::from(full);
    for cut in (0..full.len()).step_by(61) {
        let r =
            web_node::model::safetensors::SafetensorsModel::from_parts(&config, vec![full.slice(..cut)], None, None);
        assert!(r.is_err(), "cut at {cut} opened");
    }
}

#[test]
fn header_claiming_more_bytes_than_present() {
    let m = TinyModel::random(1, false);
    let dir = TempDir::new("st-header");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let path = dir.path().join("model.safetensors");
    let mut full = std::fs::read(&path).expect("read");
    let len = full.len();
    // The header length field claims more than the file holds.
    full[..8].copy_from_slice(&(len as u64).to_le_bytes());
    write(&path, &full);
    let msg = open_err(dir.path(), "model.safetensors");
    assert!(msg.contains(&format!("truncated: header at byte 8 needs {len} bytes, file has {len}")), "{msg}");
    // A header whose tensors claim more data than follows it.
    let header = br#"{"model.norm.weight":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 16]);
    write(&path, &file);
    let msg = open_err(dir.path(), "model.safetensors");
    let start = 8 + header.len();
    assert!(
        msg.contains(&format!("truncated: tensor data at byte {start} needs 4000 bytes, file has {}", start + 16)),
        "{msg}"
    );
}

#[test]
fn config_contradicting_the_tensors() {
    let m = TinyModel::random(1, false);
    let dir = TempDir::new("st-config");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let mut config = m.hf_config();
    config["hidden_size"] = 32.into();
    config["head_dim"] = 8.into();
    write(&dir.path().join("config.json"), &serde_json::to_vec(&config).expect("json"));
    let msg = open_err(dir.path(), "model.safetensors");
    assert!(msg.contains("shape [128, 64], config needs [128, 32]"), "{msg}");

    // A missing required key names the key and config.json.
    let mut config = m.hf_config();
    config.as_object_mut().expect("object").remove("num_attention_heads");
    write(&dir.path().join("config.json"), &serde_json::to_vec(&config).expect("json"));
    let msg = open_err(dir.path(), "config.json");
    assert!(msg.contains("metadata key num_attention_heads: missing"), "{msg}");

    std::fs::remove_file(dir.path().join("config.json")).expect("rm");
    let msg = open_err(dir.path(), "config.json");
    assert!(msg.contains("cannot read"), "{msg}");
}

#[test]
fn unsupported_dtype_names_tensor_and_type() {
    let m = TinyModel::random(1, false);
    let dir = TempDir::new("st-dtype");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let target = "model.layers.1.mlp.up_proj.weight";
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = m
        .tensors
        .iter()
        .map(|t| {
            if t.name == target {
                let ints: Vec<u8> = t.values.iter().flat_map(|v| ((v * 100.0) as i64).to_le_bytes()).collect();
                (t.name.clone(), Dtype::I64, t.shape.clone(), ints)
            } else {
                (t.name.clone(), Dtype::F32, t.shape.clone(), t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
        })
        .collect();
    let views = data.iter().map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).expect("view")));
    write(&dir.path().join("model.safetensors"), &safetensors::serialize(views, None).expect("serialize"));
    let msg = open_err(dir.path(), "model.safetensors");
    assert!(msg.contains(&format!("tensor {target}: unsupported type I64")), "{msg}");
}

#[test]
fn missing_tensor_and_missing_shard() {
    let m = TinyModel::random(1, false);
    let dir = TempDir::new("st-missing");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let path = dir.path().join("model.safetensors");
    write(&path, &m.safetensors(WeightType::F32, |n| n != "model.layers.0.mlp.down_proj.weight"));
    let msg = open_err(dir.path(), "model.safetensors");
    assert!(msg.contains("missing tensor model.layers.0.mlp.down_proj.weight"), "{msg}");
    std::fs::remove_file(&path).expect("rm");

    let shards = m.write_hf(dir.path(), WeightType::F32, 2);
    std::fs::remove_file(&shards[1]).expect("rm");
    let msg = open_err(dir.path(), "model-00002-of-00002.safetensors");
    assert!(msg.contains("cannot read"), "{msg}");

    // An index that puts a tensor in the wrong shard.
    m.write_hf(dir.path(), WeightType::F32, 2);
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("json");
    index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors".into();
    write(&index_path, &serde_json::to_vec(&index).expect("json"));
    let msg = open_err(dir.path(), "model.safetensors.index.json");
    assert!(msg.contains("weight_map puts model.norm.weight in"), "{msg}");
}

#[test]
fn tokenizer_and_chat_template_files() {
    let m = TinyModel::random(1, true);
    let dir = TempDir::new("st-no-tokenizer");
    m.write_hf(dir.path(), WeightType::F32, 1);
    let st = ModelFile::open(dir.path()).expect("open");
    let Err(e) = st.tokenizer() else { panic!("a tokenizer without tokenizer.json") };
    let expected = dir.path().join("tokenizer.json").display().to_string();
    assert!(e.to_string().contains(&expected), "{e}");
    assert_eq!(st.chat_template(), None);

    // A broken tokenizer.json is an error naming it; the template comes from
    // tokenizer_config.json, or from chat_template.jinja when that exists.
    write(&dir.path().join("tokenizer.json"), b"{\"model\": 3}");
    write(&dir.path().join("tokenizer_config.json"), br#"{"chat_template": "{{ messages }}"}"#);
    let st = ModelFile::open(dir.path()).expect("open");
    let Err(e) = st.tokenizer() else { panic!("a tokenizer from a broken tokenizer.json") };
    assert!(e.to_string().starts_with(&expected), "{e}");
    assert_eq!(st.chat_template().as_deref(), Some("{{ messages }}"));
    write(&dir.path().join("chat_template.jinja"), b"{{ jinja }}");
    let st = ModelFile::open(dir.path()).expect("open");
    assert_eq!(st.chat_template().as_deref(), Some("{{ jinja }}"));
}

// ---- broken GGUF files ----

#[test]
fn truncated_gguf_is_always_an_error() {
    let m = TinyModel::random(2, false);
    let full = Bytes::from(m.gguf(WeightType::F32));
    // Every cut in the header region, then a stride through the tensor data.
    let cuts = (0..4096.min(full.len())).chain((4096..full.len()).step_by(37)).chain(full.len() - 8..full.len());
    for cut in cuts {
        if let Ok(model) = GgufModel::from_bytes(full.slice(..cut)) {
            panic!("cut at {cut} of {} opened: {:?}", full.len(), model.config());
        }
    }
    let dir = TempDir::new("gguf-truncated");
    let path = dir.path().join("cut.gguf");
    for cut in [0, 2, 4, 10, 100, full.len() / 2, full.len() - 1] {
        write(&path, &full[..cut]);
        open_err(&path, "cut.gguf");
    }
}

#[test]
fn gguf_bad_magic() {
    let m = TinyModel::random(2, false);
    let mut bytes = m.gguf(WeightType::F32);
    bytes[3] = b'X';
    let dir = TempDir::new("gguf-magic");
    let path = dir.path().join("bad.gguf");
    write(&path, &bytes);
    let e = GgufModel::open(&path).expect_err("bad magic opened");
    let msg = e.to_string();
    assert!(msg.contains("bad.gguf") && msg.contains("not a GGUF file: magic"), "{msg}");
    // Through the dispatcher it is not recognized as GGUF, and still an error naming it.
    open_err(&path, "bad.gguf");
}

#[test]
fn gguf_unsupported_tensor_type_names_tensor_and_type() {
    let m = TinyModel::random(2, false);
    let target = gguf_name("model.layers.0.mlp.up_proj.weight");
    // A type this build lacks (IQ2_XXS: 66 bytes per 256 values), and a supported K-quant
    // whose 256-value super-blocks do not divide the matrix's 64 columns.
    for (ty, bytes, want) in [
        (16, 96 * 64 / 256 * 66, "unsupported type IQ2_XXS"),
        (12, 96 * 64 / 256 * 144, "q4_k matrix with 64 columns: columns must be a multiple of 256"),
    ] {
        let mut tensors = m.gguf_tensors(WeightType::F32, true);
        let t = tensors.iter_mut().find(|t| t.0 == target).expect("ffn_up");
        t.2 = ty;
        t.3 = vec![0x11; bytes];
        let model = GgufModel::from_bytes(Bytes::from(write_gguf(&m.gguf_metadata(), &tensors))).expect("header");
        let msg = model.load_layer(0).expect_err("loaded").to_string();
        assert!(msg.contains("blk.0.ffn_up.weight") && msg.contains(want), "{msg}");
        assert!(model.load_layer(1).is_ok());
    }
}

#[test]
fn gguf_shape_contradicting_config() {
    let m = TinyModel::random(2, false);
    let tensors = m.gguf_tensors(WeightType::F32, true);
    let mut md = m.gguf_metadata();
    for (k, v) in &mut md {
        if *k == "llama.feed_forward_length" {
            *v = Value::U64(128);
        }
    }
    let model = GgufModel::from_bytes(Bytes::from(write_gguf(&md, &tensors))).expect("header is fine");
    let msg = model.load_layer(0).expect_err("wrong shape loaded").to_string();
    assert!(msg.contains("blk.0.ffn_gate.weight: shape [96, 64], config needs [128, 64]"), "{msg}");

    let mut md = m.gguf_metadata();
    for (k, v) in &mut md {
        if *k == "llama.embedding_length" {
            *v = Value::U64(32);
        } else if *k == "llama.attention.key_length" {
            *v = Value::U64(8);
        }
    }
    let model = GgufModel::from_bytes(Bytes::from(write_gguf(&md, &tensors))).expect("header is fine");
    let msg = model.load_head().expect_err("wrong shape loaded").to_string();
    assert!(msg.contains("shape [128, 64], config needs [128, 32]"), "{msg}");
    assert!(model.load_layer(0).is_err());
}

// ---- converting a checkpoint to GGUF (`ait publish DIR`) ----

/// Converts the checkpoint in `dir` to `dir/out.gguf` as `target` (or as stored).
fn convert(dir: &Path, target: Option<WeightType>) -> Result<ModelFile, ConvertError> {
    let st = ModelFile::open(dir).expect("open checkpoint");
    let plan = Conversion::plan(&st, target, "tiny")?;
    let path = dir.join("out.gguf");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let mut last = 0;
    let written = plan.write(&mut out, |n| last = n)?;
    drop(out);
    assert_eq!((written, last), (plan.total_bytes(), plan.total_bytes()));
    assert_eq!(std::fs::metadata(&path).expect("written").len(), written);
    Ok(ModelFile::open(&path).expect("the converted file opens"))
}

/// A checkpoint converted to GGUF reads back as the same model: configuration, every weight
/// bit for bit (types kept), logits, tokenizer and chat template. Its q/k rows are in
/// llama.cpp's order: each tensor's bytes equal those of the independent GGUF writer of the
/// tests ([`TinyModel::gguf`]), which is checked against an independent model elsewhere.
#[test]
fn a_checkpoint_converted_to_gguf_is_the_same_model() {
    use web_node::model::Arch;
    for (arch, tied, dtype) in [
        (Arch::Llama, false, WeightType::F32),
        (Arch::Llama, true, WeightType::BF16),
        (Arch::Qwen2, false, WeightType::F16),
        (Arch::Qwen3, true, WeightType::F32),
    ] {
        let m = TinyModel::random_arch(17, arch, 2, 128, tied).rounded(dtype);
        let dir = TempDir::new(&format!("convert-{}-{tied}", arch.name()));
        m.write_hf(dir.path(), dtype, 1);
        write_default_tokenizer(dir.path());
        let st = ModelFile::open(dir.path()).expect("open");
        let gg = convert(dir.path(), None).expect("converts");
        assert_eq!(st.config(), gg.config(), "{arch:?}");
        if !arch.has_qkv_bias() {
            assert_same_weights(&st, &gg);
        }
        assert_eq!(compare_logits(&st, &gg, 0.0), 0.0, "{arch:?}");
        let (a, b) = (st.tokenizer().expect("tokenizer"), gg.tokenizer().expect("tokenizer"));
        assert_eq!(a.fingerprint().expect("fp"), b.fingerprint().expect("fp"));
        assert_eq!((b.bos_token(), b.adds_bos()), (a.bos_token(), true));
        let text = "<|im_start|>Hello, 12345 worlds!";
        assert_eq!(a.encode(text).expect("encode"), b.encode(text).expect("encode"));
        assert_eq!(st.chat_template(), gg.chat_template());
        assert!(gg.chat_template().is_some());
        // Tensor bytes as the independent writer lays them out.
        let ModelFile::Gguf(gg) = &gg else { unreachable!() };
        let reference = GgufModel::from_bytes(Bytes::from(m.gguf(dtype))).expect("reference");
        for t in &reference.file().tensors {
            let ours = gg.file().tensor(&t.name).unwrap_or_else(|| panic!("{arch:?}: no {}", t.name));
            assert_eq!((&ours.dims, ours.dtype), (&t.dims, t.dtype), "{arch:?} {}", t.name);
            let (x, y) = (gg.file().tensor_bytes(&t.name).expect("ours"), reference.file().tensor_bytes(&t.name));
            assert!(x == y.expect("reference"), "{arch:?} {}: other bytes", t.name);
        }
        assert_eq!(gg.file().tensors.len(), reference.file().tensors.len());
    }
}

/// Quantized on the way: every matrix is the target type, holding exactly ggml's rounding of
/// the checkpoint's values; norms stay f32. What cannot be converted is refused before
/// anything is written.
#[test]
fn a_checkpoint_quantized_to_gguf_and_what_is_refused() {
    let m = TinyModel::random(23, false);
    let dir = TempDir::new("convert-q8");
    m.write_hf(dir.path(), WeightType::F16, 1);
    write_default_tokenizer(dir.path());
    let st = ModelFile::open(dir.path()).expect("open");
    for target in [WeightType::Q8_0, WeightType::Q4_1] {
        let gg = convert(dir.path(), Some(target)).expect("converts");
        let (a, b) = (st.load_layer(1).expect("layer"), gg.load_layer(1).expect("layer"));
        for (name, x, y) in
            [("attn_q", &a.attn_q, &b.attn_q), ("attn_k", &a.attn_k, &b.attn_k), ("ffn_down", &a.ffn_down, &b.ffn_down)]
        {
            assert_eq!(y.dtype, target, "{name}");
            let rounded = web_node::model::quant::quantize(target, &x.dequantize());
            assert!(y.data[..] == rounded[..], "{target} {name}: not ggml's rounding of the checkpoint");
        }
        assert_eq!(a.attn_norm, b.attn_norm);
        let head = gg.load_head().expect("head");
        assert_eq!((head.token_embd.dtype, head.output.expect("untied").dtype), (target, target));
    }
    let st_plan = |target| Conversion::plan(&st, Some(target), "tiny").err().map(|e| e.to_string());
    assert!(
        st_plan(WeightType::Q4_K).is_some_and(|e| e.contains("cannot quantize to q4_k")),
        "{:?}",
        st_plan(WeightType::Q4_K)
    );
    // FFN rows of 80 values are not whole q8_0 blocks of 32.
    let odd = TinyModel::random_shape(3, web_node::model::Arch::Llama, (64, 80), 1, 128, true);
    let dir = TempDir::new("convert-odd");
    odd.write_hf(dir.path(), WeightType::F32, 1);
    let e = convert(dir.path(), Some(WeightType::Q8_0)).err().expect("refused").to_string();
    assert!(e.contains("blk.0.ffn_down.weight") && e.contains("80 values"), "{e}");
    assert!(!dir.path().join("out.gguf").exists(), "refused before writing");
    let gemma = TinyModel::random_arch(3, web_node::model::Arch::Gemma2, 1, 128, true);
    let dir = TempDir::new("convert-gemma");
    gemma.write_hf(dir.path(), WeightType::F32, 1);
    let e = convert(dir.path(), None).err().expect("refused").to_string();
    assert!(e.contains("gemma2 architecture"), "{e}");
}
