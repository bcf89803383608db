//! A tiny random Llama model, written as a Hugging Face safetensors checkpoint and as a GGUF
//! file holding the same values, for the cross-format tests (`tests/tests/suite/formats.rs`).
//!
//! Values are kept in Hugging Face layout (`[out_features, in_features]`, row-major, q/k rows
//! in rotate-half order); [`TinyModel::gguf`] converts names, reverses dims and permutes q/k
//! rows into llama.cpp's order, as llama.cpp's converter does.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use web_node::model::gguf::writer::{self, TensorOut};
use web_node::model::gguf::{GgmlType, Value};
use web_node::model::quant::{dequantize, quantize};
use web_node::model::weights::permute_rope_rows;
use web_node::model::{Arch, LlamaConfig, QMatrix, WeightType};

/// One tensor: Hugging Face name, shape (slowest first) and values.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape, slowest-varying first (`[rows, cols]` for a matrix).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// A small Llama model with seeded random weights.
#[derive(Clone, Debug)]
pub struct TinyModel {
    /// Its configuration. With `rope_freq_factors`, the GGUF file carries them as
    /// `rope_freqs.weight`.
    pub config: LlamaConfig,
    /// `rope_scaling` written into `config.json`, if any.
    pub rope_scaling: Option<serde_json::Value>,
    /// LongRoPE as the files store it beyond what `config` holds (see [`Self::with_longrope`]):
    /// the context the model was extended to and the long factors.
    pub longrope: Option<(usize, Vec<f32>)>,
    /// Every tensor, in Hugging Face naming and layout.
    pub tensors: Vec<Tensor>,
}

impl TinyModel {
    /// hidden 64, 4 heads, 2 kv heads, head_dim 16, intermediate 96, 2 layers, vocab 128;
    /// without `lm_head.weight` when `tied`.
    pub fn random(seed: u64, tied: bool) -> TinyModel {
        Self::random_arch(seed, Arch::Llama, 2, 128, tied)
    }

    /// As [`Self::random`] for architecture `arch` with `n_layers` layers and `vocab` tokens.
    /// Qwen3 gets heads of 32 (queries 128 wide for a hidden size of 64, as real Qwen3 models
    /// have heads wider than hidden / n_heads) and its q/k norms; Qwen2 its q/k/v biases.
    pub fn random_arch(seed: u64, arch: Arch, n_layers: usize, vocab: usize, tied: bool) -> TinyModel {
        Self::random_shape(seed, arch, (64, 96), n_layers, vocab, tied)
    }

    /// As [`Self::random_arch`] with `(hidden, intermediate)` sizes: 4 heads of `hidden / 4`
    /// (Qwen3: `hidden / 2`), 2 KV heads.
    pub fn random_shape(
        seed: u64,
        arch: Arch,
        (hidden, intermediate): (usize, usize),
        n_layers: usize,
        vocab: usize,
        tied: bool,
    ) -> TinyModel {
        let config = LlamaConfig {
            arch,
            hidden,
            intermediate,
            n_layers,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: if arch == Arch::Qwen3 { hidden / 2 } else { hidden / 4 },
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            vocab,
            max_seq_len: 256,
            tie_embeddings: tied,
            rope_freq_factors: None,
            rope_attn_factor: 1.0,
            sliding_window: None,
            gemma: None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, q, kv, f, v) = (config.hidden, config.q_dim(), config.kv_dim(), config.intermediate, config.vocab);
        let mut specs: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![v, h])];
        for i in 0..config.n_layers {
            let l = |t: &str| format!("model.layers.{i}.{t}");
            specs.push((l("input_layernorm.weight"), vec![h]));
            if arch == Arch::Phi3 {
                specs.push((l("self_attn.qkv_proj.weight"), vec![q + 2 * kv, h]));
            } else {
                specs.extend([
                    (l("self_attn.q_proj.weight"), vec![q, h]),
                    (l("self_attn.k_proj.weight"), vec![kv, h]),
                    (l("self_attn.v_proj.weight"), vec![kv, h]),
                ]);
            }
            specs.extend([(l("self_attn.o_proj.weight"), vec![h, q]), (l("post_attention_layernorm.weight"), vec![h])]);
            if arch.has_post_norms() {
                // Gemma: post_attention_layernorm is the attention output's norm; these two
                // the FFN's input and output norms.
                specs.extend([
                    (l("pre_feedforward_layernorm.weight"), vec![h]),
                    (l("post_feedforward_layernorm.weight"), vec![h]),
                ]);
            }
            if arch == Arch::Phi3 {
                specs.push((l("mlp.gate_up_proj.weight"), vec![2 * f, h]));
            } else {
                specs.extend([(l("mlp.gate_proj.weight"), vec![f, h]), (l("mlp.up_proj.weight"), vec![f, h])]);
            }
            specs.push((l("mlp.down_proj.weight"), vec![h, f]));
            if arch.has_qkv_bias() {
                specs.extend([
                    (l("self_attn.q_proj.bias"), vec![q]),
                    (l("self_attn.k_proj.bias"), vec![kv]),
                    (l("self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
            if arch.has_qk_norm() {
                let hd = config.head_dim;
                specs.extend([(l("self_attn.q_norm.weight"), vec![hd]), (l("self_attn.k_norm.weight"), vec![hd])]);
            }
        }
        specs.push(("model.norm.weight".into(), vec![h]));
        if !tied {
            specs.push(("lm_head.weight".into(), vec![v, h]));
        }
        let tensors = specs
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with(".bias") {
                    (0..n).map(|_| rng.random_range(-0.2f32..0.2)).collect()
                } else if shape.len() == 1 && arch.has_post_norms() {
                    // Gemma stores w for a norm scale of 1 + w.
                    (0..n).map(|_| rng.random_range(-0.2f32..0.2)).collect()
                } else if shape.len() == 1 {
                    // Norm weights near 1.
                    (0..n).map(|_| 1.0 + rng.random_range(-0.2f32..0.2)).collect()
                } else {
                    // ~ 1/sqrt(fan_in) so activations stay O(1) through the layers.
                    let scale = 1.5 / (shape[1] as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
                };
                Tensor { name, shape, values }
            })
            .collect();
        TinyModel { config, rope_scaling: None, longrope: None, tensors }
    }

    /// The same model as a LongRoPE model extended from `original` positions to its
    /// `max_seq_len`: `config` becomes what a loader resolves (the original context, the short
    /// factors, the attention factor derived from the two contexts); the files carry both
    /// factor sets and both contexts, as Phi-3 128k's `config.json` and llama.cpp's GGUF do.
    pub fn with_longrope(mut self, original: usize, short: Vec<f32>, long: Vec<f32>) -> TinyModel {
        let trained = self.config.max_seq_len;
        self.config.rope_attn_factor = web_node::model::LongRope::default_attn_factor(trained, original);
        self.config.max_seq_len = original;
        self.config.rope_freq_factors = Some(short.clone());
        self.rope_scaling = Some(serde_json::json!({"type": "longrope", "short_factor": short, "long_factor": long}));
        self.longrope = Some((trained, long));
        self
    }

    /// The same model with every value rounded to `dtype` (so that writing it in `dtype`
    /// loses nothing).
    pub fn rounded(&self, dtype: WeightType) -> TinyModel {
        let mut m = self.clone();
        for t in &mut m.tensors {
            let bytes = quantize(dtype, &t.values);
            dequantize(dtype, &bytes, &mut t.values);
        }
        m
    }

    /// The tensor with this Hugging Face name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A Hugging Face `config.json` for this model.
    pub fn hf_config(&self) -> serde_json::Value {
        let c = &self.config;
        let class = match c.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
            Arch::Gemma2 => "Gemma2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        };
        let gemma = c.gemma.as_ref();
        serde_json::json!({
            "architectures": [class],
            "model_type": c.arch.name(),
            "hidden_act": "silu",
            "hidden_size": c.hidden,
            "intermediate_size": c.intermediate,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_eps,
            "vocab_size": c.vocab,
            "max_position_embeddings": self.longrope.as_ref().map_or(c.max_seq_len, |l| l.0),
            "original_max_position_embeddings": self.longrope.as_ref().map(|_| c.max_seq_len),
            "tie_word_embeddings": c.tie_embeddings,
            "torch_dtype": "float32",
            "sliding_window": c.sliding_window,
            "rope_scaling": self.rope_scaling,
            "hidden_act": if c.arch.gelu_gate() { "gelu_pytorch_tanh" } else { "silu" },
            "query_pre_attn_scalar": gemma.map(|g| g.query_scalar),
            "attn_logit_softcapping": gemma.and_then(|g| g.attn_softcap),
            "final_logit_softcapping": gemma.and_then(|g| g.final_softcap),
            "sliding_window_pattern": gemma.map(|g| g.window_pattern),
            "rope_local_base_freq": gemma.and_then(|g| g.local_rope_base),
        })
    }

    /// A safetensors file of the tensors `keep` selects, stored as `dtype` (F32, F16, BF16).
    pub fn safetensors(&self, dtype: WeightType, keep: impl Fn(&str) -> bool) -> Vec<u8> {
        let st = match dtype {
            WeightType::F32 => Dtype::F32,
            WeightType::F16 => Dtype::F16,
            WeightType::BF16 => Dtype::BF16,
            other => panic!("safetensors cannot store {other}"),
        };
        let data: Vec<(&Tensor, Vec<u8>)> =
            self.tensors.iter().filter(|t| keep(&t.name)).map(|t| (t, quantize(dtype, &t.values))).collect();
        let views = data
            .iter()
            .map(|(t, b)| (t.name.as_str(), TensorView::new(st, t.shape.clone(), b).expect("size matches shape")));
        safetensors::serialize(views, None).expect("serializable")
    }

    /// Writes `config.json` and the weights as `dtype` into `dir`: `model.safetensors` when
    /// `shards == 1`, else `model-0000i-of-0000n.safetensors` files and
    /// `model.safetensors.index.json` (layers dealt round-robin). Returns the weight files.
    pub fn write_hf(&self, dir: &Path, dtype: WeightType, shards: usize) -> Vec<PathBuf> {
        let config = serde_json::to_vec_pretty(&self.hf_config()).expect("json");
        std::fs::write(dir.join("config.json"), config).expect("write config.json");
        if shards == 1 {
            let p = dir.join("model.safetensors");
            std::fs::write(&p, self.safetensors(dtype, |_| true)).expect("write model.safetensors");
            return vec![p];
        }
        let file_of = |name: &str| -> usize {
            let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            layer.map_or(0, |l| (l + 1) % shards)
        };
        let file_name = |i: usize| format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let mut paths = Vec::new();
        for i in 0..shards {
            let p = dir.join(file_name(i));
            std::fs::write(&p, self.safetensors(dtype, |n| file_of(n) == i)).expect("write shard");
            paths.push(p);
        }
        let weight_map: serde_json::Map<String, serde_json::Value> =
            self.tensors.iter().map(|t| (t.name.clone(), file_name(file_of(&t.name)).into())).collect();
        let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index).expect("json"))
            .expect("write index");
        paths
    }

    /// GGUF metadata for this model (`general.architecture` is the architecture's name).
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let c = &self.config;
        let u = |v: usize| Value::U64(v as u64);
        let a = c.arch.name();
        let k = |key: &str| format!("{a}.{key}");
        vec![
            ("general.architecture".into(), Value::Str(a.into())),
            ("general.name".into(), Value::Str("tiny".into())),
            (k("embedding_length"), u(c.hidden)),
            (k("feed_forward_length"), u(c.intermediate)),
            (k("block_count"), u(c.n_layers)),
            (k("attention.head_count"), u(c.n_heads)),
            (k("attention.head_count_kv"), u(c.n_kv_heads)),
            (k("attention.key_length"), u(c.head_dim)),
            (k("rope.freq_base"), Value::F64(c.rope_theta as f64)),
            (k("attention.layer_norm_rms_epsilon"), Value::F64(c.rms_eps as f64)),
            (k("context_length"), u(self.longrope.as_ref().map_or(c.max_seq_len, |l| l.0))),
            (k("vocab_size"), u(c.vocab)),
        ]
        .into_iter()
        .chain(self.longrope.iter().flat_map(|_| {
            [
                (k("rope.scaling.original_context_length"), u(c.max_seq_len)),
                (k("rope.scaling.attn_factor"), Value::F64(c.rope_attn_factor as f64)),
            ]
        }))
        .chain(c.sliding_window.map(|w| (k("attention.sliding_window"), u(w))))
        .chain(
            c.gemma
                .iter()
                .flat_map(|g| {
                    let cap = |key: &str, v: Option<f32>| v.map(|v| (k(key), Value::F64(v as f64)));
                    [cap("attn_logit_softcapping", g.attn_softcap), cap("final_logit_softcapping", g.final_softcap)]
                })
                .flatten(),
        )
        .collect()
    }

    /// The GGUF tensors: matrices as `dtype` (F32, F16, BF16), 1-D tensors as F32, q/k rows
    /// permuted into llama.cpp's order unless `permute_qk` is false (to check that the
    /// permutation matters).
    pub fn gguf_tensors(&self, dtype: WeightType, permute_qk: bool) -> Vec<(String, Vec<u64>, u32, Vec<u8>)> {
        let c = &self.config;
        self.tensors
            .iter()
            .map(|t| {
                let name = gguf_name_of(c.arch, &t.name);
                let dt = if t.shape.len() == 1 { WeightType::F32 } else { dtype };
                // llama.cpp's Gemma converter stores the norms' 1 + w.
                let values: Vec<f32> = if c.arch.has_post_norms() && name.ends_with("norm.weight") {
                    t.values.iter().map(|v| v + 1.0).collect()
                } else {
                    t.values.clone()
                };
                let mut bytes = Bytes::from(quantize(dt, &values));
                if permute_qk && c.arch.gguf_permutes_qk() && t.shape.len() == 2 {
                    let heads = if name.ends_with("attn_q.weight") {
                        Some(c.n_heads)
                    } else if name.ends_with("attn_k.weight") {
                        Some(c.n_kv_heads)
                    } else {
                        None
                    };
                    if let Some(heads) = heads {
                        let m = QMatrix::new(dt, t.shape[0], t.shape[1], bytes).expect("sizes match");
                        bytes = m.permute_rows(&permute_rope_rows(heads, c.head_dim)).data;
                    }
                }
                let dims = t.shape.iter().rev().map(|&d| d as u64).collect();
                (name, dims, ggml_type(dt), bytes.to_vec())
            })
            .chain(self.rope_factor_tensors().into_iter().map(|(name, f)| {
                (name.to_string(), vec![f.len() as u64], ggml_type(WeightType::F32), quantize(WeightType::F32, f))
            }))
            .collect()
    }

    /// The model-wide RoPE factor tensors of the GGUF file: `rope_freqs.weight`, or LongRoPE's
    /// two sets.
    fn rope_factor_tensors(&self) -> Vec<(&'static str, &[f32])> {
        let Some(factors) = &self.config.rope_freq_factors else {
            return Vec::new();
        };
        match &self.longrope {
            Some((_, long)) => vec![("rope_factors_short.weight", factors), ("rope_factors_long.weight", long)],
            None => vec![("rope_freqs.weight", factors)],
        }
    }

    /// A GGUF file of this model, matrices stored as `dtype`.
    pub fn gguf(&self, dtype: WeightType) -> Vec<u8> {
        write_gguf(&self.gguf_metadata(), &self.gguf_tensors(dtype, true))
    }
}

/// The model the torrent's tests and bench pass around: 6 layers, hidden 256, FFN 1536, Q8_0,
/// the default model's tokenizer (so `ait generate` can run it); about 1.5 MB per block part
/// and 15 MB for the head, so each part spans several 1 MiB ranges. Written to
/// `dir/tiny.gguf`; returns its path and manifest.
pub fn torrent_model(dir: &Path) -> (PathBuf, web_node::model::Manifest) {
    use web_node::model::{Manifest, ModelFile};
    let path = dir.join("tiny.gguf");
    write_torrent_model(&path, &torrent_weights(TORRENT_SEED), WeightType::Q8_0);
    let manifest = Manifest::of_file(&ModelFile::open(&path).expect("open")).expect("manifest");
    (path, manifest)
}

/// The seed of [`torrent_model`]'s weights.
const TORRENT_SEED: u64 = 7;

/// The weights of [`torrent_model`]'s shape drawn from `seed`.
fn torrent_weights(seed: u64) -> TinyModel {
    let vocab = web_node::model::gguf::GgufModel::open(&crate::default_model()).expect("default model").config().vocab;
    TinyModel::random_shape(seed, Arch::Llama, (256, 1536), 6, vocab, true)
}

/// Writes `m` as `dtype` to `path` with the default model's tokenizer.
fn write_torrent_model(path: &Path, m: &TinyModel, dtype: WeightType) {
    let default = web_node::model::gguf::GgufModel::open(&crate::default_model()).expect("default model");
    let mut md = m.gguf_metadata();
    let tokenizer = default.file().metadata.0.iter().filter(|(k, _)| k.starts_with("tokenizer."));
    md.extend(tokenizer.map(|(k, v)| (k.clone(), v.clone())));
    std::fs::write(path, write_gguf(&md, &m.gguf_tensors(dtype, true))).expect("write");
}

/// The weights a node lying in `weights` about `blocks` of [`torrent_model`] runs instead
/// (another quantization is Q4_1), written to `dir/liar-<weights>.gguf`; returns the path.
pub fn torrent_liar(dir: &Path, weights: crate::chain_fixture::Weights, blocks: std::ops::Range<usize>) -> PathBuf {
    let (m, dtype) = weights.model(torrent_weights, TORRENT_SEED, blocks, WeightType::Q8_0, WeightType::Q4_1);
    let path = dir.join(format!("liar-{weights:?}.gguf"));
    write_torrent_model(&path, &m, dtype);
    path
}

/// Writes the default model's tokenizer into the checkpoint directory `dir` as a
/// `tokenizer.json`, with a `tokenizer_config.json` naming its BOS and EOS and a chat template.
pub fn write_default_tokenizer(dir: &Path) {
    use web_node::model::gguf::GgufModel;
    let default = GgufModel::open(&crate::default_model()).expect("default model");
    let md = default.tokenizer().expect("tokenizer").gguf_metadata().expect("metadata");
    let Some((_, Value::Str(json))) = md.iter().find(|(k, _)| k == web_node::model::tokenizer::HF_JSON) else {
        panic!("no tokenizer.json in the default model's tokenizer metadata")
    };
    std::fs::write(dir.join("tokenizer.json"), json).expect("write tokenizer.json");
    let config = serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": true,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write tokenizer_config.json");
}

/// Serializes metadata and `(name, dims, ggml type, bytes)` tensors as GGUF.
pub fn write_gguf<K: AsRef<str>>(metadata: &[(K, Value)], tensors: &[(String, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let metadata: Vec<(&str, Value)> = metadata.iter().map(|(k, v)| (k.as_ref(), v.clone())).collect();
    let outs: Vec<TensorOut<'_>> = tensors
        .iter()
        .map(|(name, dims, ty, data)| TensorOut { name, dims: dims.clone(), ggml_type: *ty, data })
        .collect();
    writer::write(&metadata, &outs)
}

/// ggml's type id for a weight type.
pub fn ggml_type(dtype: WeightType) -> u32 {
    GgmlType::from(dtype).0
}

/// The GGUF name of a Hugging Face tensor name in a model of `arch` (Gemma names its norms
/// differently).
pub fn gguf_name_of(arch: Arch, hf: &str) -> String {
    if arch.has_post_norms() {
        for (from, to) in [
            ("post_attention_layernorm.weight", "post_attention_norm.weight"),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ] {
            if let Some(layer) = hf.strip_prefix("model.layers.").and_then(|r| r.strip_suffix(from)) {
                return format!("blk.{layer}{to}");
            }
        }
    }
    gguf_name(hf)
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, t) = rest.split_once('.').expect("layer index then name");
    let t = match t {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{t}")
}

/// A directory under the system temp dir, `ait-tests-<pid>-<n>-<name>`, emptied on creation and
/// removed on drop. `n` counts the directories this process made, so tests running in parallel
/// threads never share one, even under the same name.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates (or empties) the directory.
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ait-tests-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
