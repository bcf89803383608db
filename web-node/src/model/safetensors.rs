//! Hugging Face safetensors checkpoints: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`, beside `config.json` (and optionally `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`).
//!
//! Main type: [`SafetensorsModel`], the parsed shards and the resolved [`LlamaConfig`]
//! (see [`super::hf_config`]), handing out layers and the head. Headers are parsed and
//! validated by the `safetensors` crate (offsets cover the file exactly, sizes match shapes);
//! every tensor the engine needs is then checked against the configuration when the model is
//! built, so a broken checkpoint fails at open time with an error naming the file.
//!
//! Weights stay in their stored type (F32, F16, BF16) and are not copied: each [`QMatrix`]
//! shares the file's [`Bytes`]. Norms and biases are dequantized to f32. Hugging Face already
//! stores `q_proj` / `k_proj` rows in the rotate-half RoPE layout the engine wants, so unlike
//! GGUF nothing is permuted.
//!
//! This module does not memory-map (files are read whole) and converts no types.

use std::collections::HashMap;

use bytes::Bytes;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::config::{Arch, LlamaConfig};
use super::hf_config::HfConfig;
use super::quant::{QMatrix, WeightType};
use super::weights::{HeadWeights, LayerWeights};
use super::{tokenizer, ModelError, Tokenizer};

/// Length of the little-endian header size that starts every safetensors file.
const N_LEN: usize = 8;
/// Largest header parsed a second time to explain a size mismatch (real ones are well under
/// 1 MiB; the `safetensors` crate itself accepts up to 100 MB).
const MAX_REPARSED_HEADER: usize = 1 << 24;

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    /// Index into [`SafetensorsModel::shards`].
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard.
    start: usize,
    end: usize,
}

/// One `.safetensors` file.
#[derive(Clone)]
struct Shard {
    /// Name used in error messages (the path when read from disk).
    name: String,
    data: Bytes,
}

/// Names of the files a model was built from, for error messages.
struct Names {
    config: String,
    /// The index file, or the single shard.
    model: String,
    tokenizer: String,
}

/// A Hugging Face safetensors checkpoint of a Llama-family model.
#[derive(Clone)]
pub struct SafetensorsModel {
    config: LlamaConfig,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
    /// Error-message name for the whole checkpoint (missing tensors).
    model_name: String,
    tokenizer_json: Option<Bytes>,
    tokenizer_config_json: Option<Bytes>,
    tokenizer_name: String,
    chat_template: Option<String>,
}

impl std::fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("model", &self.model_name)
            .field("config", &self.config)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .field("tokenizer", &self.tokenizer_json.is_some())
            .finish()
    }
}

fn bad(what: impl Into<String>) -> ModelError {
    ModelError::BadFormat { format: "safetensors", what: what.into() }
}

/// Parses one shard's header into tensor entries with absolute byte ranges.
///
/// The `safetensors` crate does the validation; the length checks before it only turn its
/// generic errors for short files into [`ModelError::Truncated`] with the numbers.
fn parse_shard(shard: usize, data: &[u8]) -> Result<Vec<(String, Entry)>, ModelError> {
    let len = data.len() as u64;
    let Some(head) = data.get(..N_LEN) else {
        return Err(ModelError::Truncated { what: "header length".into(), offset: 0, needed: N_LEN as u64, len });
    };
    let n = u64::from_le_bytes(head.try_into().expect("slice of N_LEN bytes"));
    if n.checked_add(N_LEN as u64).is_none_or(|end| end > len) {
        return Err(ModelError::Truncated { what: "header".into(), offset: N_LEN as u64, needed: n, len });
    }
    let (n, metadata) = match SafeTensors::read_metadata(data) {
        Ok(ok) => ok,
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            // The header parsed, but its tensors do not end where the file does.
            let start = N_LEN as u64 + n;
            // Re-parsing the header for the numbers is only worth it for a real-sized one:
            // a JSON value tree takes several times the header's bytes.
            let header = &data[N_LEN..start as usize];
            let needed = if header.len() <= MAX_REPARSED_HEADER { data_len_claimed(header).unwrap_or(0) } else { 0 };
            return Err(if start.saturating_add(needed) > len {
                ModelError::Truncated { what: "tensor data".into(), offset: start, needed, len }
            } else {
                bad(format!("tensor data ends at byte {}, file has {len} bytes", start.saturating_add(needed)))
            });
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let base = N_LEN + n;
    let entries = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            let entry = Entry { shard, dtype: info.dtype, shape: info.shape.clone(), start: base + s, end: base + e };
            (name, entry)
        })
        .collect();
    Ok(entries)
}

/// Checks one `.safetensors` file held in memory: its header parses, every tensor's byte range
/// lies in the file and matches its shape and type, and the data ends where the file does.
/// Returns the number of tensors. (What [`SafetensorsModel::from_parts`] does to each shard
/// before it looks at the configuration; an entry point for fuzzing.)
pub fn check_file(data: &[u8]) -> Result<usize, ModelError> {
    parse_shard(0, data).map(|entries| entries.len())
}

/// The data length a header claims: the largest end offset of its tensors.
fn data_len_claimed(header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
}

fn weight_type(name: &str, dtype: Dtype) -> Result<WeightType, ModelError> {
    match dtype {
        Dtype::F32 => Ok(WeightType::F32),
        Dtype::F16 => Ok(WeightType::F16),
        Dtype::BF16 => Ok(WeightType::BF16),
        other => Err(ModelError::UnsupportedType { tensor: name.to_string(), dtype: other.to_string() }),
    }
}

impl SafetensorsModel {
    /// Reads a checkpoint from disk. Errors name the file.
    ///
    /// `path` is a directory holding `config.json` and `model.safetensors` or
    /// `model.safetensors.index.json` (plus, optionally, `tokenizer.json`,
    /// `tokenizer_config.json` and `chat_template.jinja`), or one of those two weight files,
    /// with the other files beside it. An index's shards must sit in the same directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self, ModelError> {
        use std::path::{Path, PathBuf};

        fn read(p: &Path) -> Result<Bytes, ModelError> {
            std::fs::read(p).map(Bytes::from).map_err(|e| ModelError::from(e).in_file(p.display().to_string()))
        }
        fn read_opt(p: &Path) -> Result<Option<Bytes>, ModelError> {
            if p.is_file() {
                read(p).map(Some)
            } else {
                Ok(None)
            }
        }
        let name = |p: &Path| p.display().to_string();

        let (dir, weights): (PathBuf, PathBuf) = if path.is_dir() {
            let single = path.join("model.safetensors");
            let index = path.join("model.safetensors.index.json");
            if single.is_file() {
                (path.to_path_buf(), single)
            } else if index.is_file() {
                (path.to_path_buf(), index)
            } else {
                return Err(
                    bad("directory has neither model.safetensors nor model.safetensors.index.json").in_file(name(path))
                );
            }
        } else {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "safetensors" && ext != "json" {
                return Err(bad(format!(
                    "expected a directory, a .safetensors file or model.safetensors.index.json, not a .{ext} file \
                     (a GGUF file starts with the magic \"GGUF\")"
                ))
                .in_file(name(path)));
            }
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, path.to_path_buf())
        };

        let config_path = dir.join("config.json");
        let config_json = read(&config_path)?;
        let is_index = weights.extension().is_some_and(|e| e == "json");
        let mut shards = Vec::new();
        let mut weight_map = Vec::new();
        if is_index {
            let index_json = read(&weights)?;
            let index = parse_index(&index_json).map_err(|e| e.in_file(name(&weights)))?;
            for f in index.files {
                let p = dir.join(&f);
                shards.push((name(&p), read(&p)?));
            }
            weight_map = index.weight_map.into_iter().map(|(t, f)| (t, name(&dir.join(f)))).collect();
        } else {
            shards.push((name(&weights), read(&weights)?));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let names = Names { config: name(&config_path), model: name(&weights), tokenizer: name(&tokenizer_path) };
        let tokenizer_json = read_opt(&tokenizer_path)?;
        let tokenizer_config_json = read_opt(&dir.join("tokenizer_config.json"))?;
        let template_path = dir.join("chat_template.jinja");
        let chat_template = read_opt(&template_path)?
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .map_err(|e| ModelError::Template(format!("not UTF-8: {e}")).in_file(name(&template_path)))
            })
            .transpose()?;

        let model = Self::build(&config_json, shards, names, tokenizer_json, tokenizer_config_json)?;
        // The index must agree with where the tensors actually are.
        for (tensor, file) in weight_map {
            let found = model.tensors.get(&tensor).map(|e| model.shards[e.shard].name.as_str());
            if found != Some(file.as_str()) {
                let what = match found {
                    Some(other) => {
                        format!("weight_map puts {tensor} in {file}, but it is in {other}")
                    }
                    None => format!("weight_map puts {tensor} in {file}, which does not hold it"),
                };
                return Err(bad(what).in_file(name(&weights)));
            }
        }
        Ok(model.with_chat_template_opt(chat_template))
    }

    /// Builds a model from files held in memory (portable: this is how wasm loads one).
    ///
    /// `shards` are the bytes of `model.safetensors`, or of every shard an index lists (in any
    /// order; tensors are found by name). Errors name the shards `model.safetensors` (one) or
    /// `shard N` (several); use [`Self::from_named_parts`] to give real names.
    pub fn from_parts(
        config_json: &[u8],
        shards: Vec<Bytes>,
        tokenizer_json: Option<Bytes>,
        tokenizer_config_json: Option<Bytes>,
    ) -> Result<Self, ModelError> {
        let n = shards.len();
        let named = shards
            .into_iter()
            .enumerate()
            .map(|(i, b)| (if n == 1 { "model.safetensors".to_string() } else { format!("shard {i}") }, b))
            .collect();
        Self::from_named_parts(config_json, named, tokenizer_json, tokenizer_config_json)
    }

    /// Like [`Self::from_parts`], with each shard's file name for error messages.
    pub fn from_named_parts(
        config_json: &[u8],
        shards: Vec<(String, Bytes)>,
        tokenizer_json: Option<Bytes>,
        tokenizer_config_json: Option<Bytes>,
    ) -> Result<Self, ModelError> {
        let model = match shards.as_slice() {
            [(one, _)] => one.clone(),
            _ => format!("{} safetensors shards", shards.len()),
        };
        let names = Names { config: "config.json".into(), model, tokenizer: "tokenizer.json".into() };
        Self::build(config_json, shards, names, tokenizer_json, tokenizer_config_json)
    }

    fn build(
        config_json: &[u8],
        shards: Vec<(String, Bytes)>,
        names: Names,
        tokenizer_json: Option<Bytes>,
        tokenizer_config_json: Option<Bytes>,
    ) -> Result<Self, ModelError> {
        if shards.is_empty() {
            return Err(bad("no safetensors files given").in_file(names.model));
        }
        let mut tensors: HashMap<String, Entry> = HashMap::new();
        for (i, (name, data)) in shards.iter().enumerate() {
            for (tensor, entry) in parse_shard(i, data).map_err(|e| e.in_file(name.clone()))? {
                if let Some(prev) = tensors.get(&tensor) {
                    let what = format!("tensor {tensor} is also in {}", shards[prev.shard].0);
                    return Err(bad(what).in_file(name.clone()));
                }
                tensors.insert(tensor, entry);
            }
        }
        let mut config = HfConfig::from_json(config_json)
            .and_then(HfConfig::into_config)
            .map_err(|e| e.in_file(names.config.clone()))?;
        config.tie_embeddings |= !tensors.contains_key("lm_head.weight");
        let model = SafetensorsModel {
            config,
            shards: shards.into_iter().map(|(name, data)| Shard { name, data }).collect(),
            tensors,
            model_name: names.model,
            tokenizer_json,
            tokenizer_config_json,
            tokenizer_name: names.tokenizer,
            chat_template: None,
        };
        // Check every tensor the engine will ask for now, not halfway through a load.
        // Cheap: matrices are byte slices, only norms and biases are converted.
        model.load_head()?;
        for i in 0..model.config.n_layers {
            model.load_layer(i)?;
        }
        Ok(model)
    }

    /// Uses `template` as the chat template (the contents of a `chat_template.jinja`),
    /// instead of the one in `tokenizer_config.json`.
    pub fn with_chat_template(self, template: String) -> Self {
        self.with_chat_template_opt(Some(template))
    }

    fn with_chat_template_opt(mut self, template: Option<String>) -> Self {
        if template.is_some() {
            self.chat_template = template;
        }
        self
    }

    /// Resolved configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// A tensor's entry, its storage type and its bytes, or an error naming the file.
    fn raw(&self, name: &str) -> Result<(&Entry, WeightType, Bytes), ModelError> {
        let Some(e) = self.tensors.get(name) else {
            return Err(ModelError::MissingTensor(name.to_string()).in_file(self.model_name.clone()));
        };
        let shard = &self.shards[e.shard];
        let wt = weight_type(name, e.dtype).map_err(|err| err.in_file(shard.name.clone()))?;
        Ok((e, wt, shard.data.slice(e.start..e.end)))
    }

    fn shard_err(&self, e: &Entry, err: ModelError) -> ModelError {
        err.in_file(self.shards[e.shard].name.clone())
    }

    /// A 2-D tensor `[rows, cols]` (Hugging Face's `[out_features, in_features]`).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
        let (e, wt, bytes) = self.raw(name)?;
        if e.shape != [rows, cols] {
            let err =
                ModelError::TensorShape { tensor: name.into(), expected: vec![rows, cols], actual: e.shape.clone() };
            return Err(self.shard_err(e, err));
        }
        QMatrix::new(wt, rows, cols, bytes).map_err(|err| self.shard_err(e, bad(format!("{name}: {err}"))))
    }

    /// A 1-D tensor of `len` values, dequantized to f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (e, wt, bytes) = self.raw(name)?;
        if e.shape != [len] || wt.bytes_for(len) != Some(bytes.len()) {
            let err = ModelError::TensorShape { tensor: name.into(), expected: vec![len], actual: e.shape.clone() };
            return Err(self.shard_err(e, err));
        }
        let mut out = vec![0.0; len];
        super::quant::dequantize(wt, &bytes, &mut out);
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(self.shard_err(e, bad(format!("{name}: value {i} is {}", out[i]))));
        }
        Ok(out)
    }

    /// Weights of layer `i` (`model.layers.{i}.*`), q/k rows as stored (rotate-half layout).
    pub fn load_layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let c = &self.config;
        if i >= c.n_layers {
            return Err(ModelError::LayerOutOfRange { layer: i, n_layers: c.n_layers });
        }
        let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        let name = |t: &str| format!("model.layers.{i}.{t}");
        let qkv_bias = if c.arch.has_qkv_bias() {
            Some([
                self.vector(&name("self_attn.q_proj.bias"), q)?,
                self.vector(&name("self_attn.k_proj.bias"), kv)?,
                self.vector(&name("self_attn.v_proj.bias"), kv)?,
            ])
        } else {
            None
        };
        let qk_norm = if c.arch.has_qk_norm() {
            Some([
                self.norm_of(&name("self_attn.q_norm.weight"), c.head_dim)?,
                self.norm_of(&name("self_attn.k_norm.weight"), c.head_dim)?,
            ])
        } else {
            None
        };
        // Phi-3 stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj` (gate first).
        let (attn_q, attn_k, attn_v, ffn_gate, ffn_up) = if c.arch == Arch::Phi3 {
            let qkv = self.matrix(&name("self_attn.qkv_proj.weight"), q + 2 * kv, h)?;
            let gate_up = self.matrix(&name("mlp.gate_up_proj.weight"), 2 * f, h)?;
            (
                qkv.slice_rows(0..q),
                qkv.slice_rows(q..q + kv),
                qkv.slice_rows(q + kv..q + 2 * kv),
                gate_up.slice_rows(0..f),
                gate_up.slice_rows(f..2 * f),
            )
        } else {
            (
                self.matrix(&name("self_attn.q_proj.weight"), q, h)?,
                self.matrix(&name("self_attn.k_proj.weight"), kv, h)?,
                self.matrix(&name("self_attn.v_proj.weight"), kv, h)?,
                self.matrix(&name("mlp.gate_proj.weight"), f, h)?,
                self.matrix(&name("mlp.up_proj.weight"), f, h)?,
            )
        };
        // Gemma: the norm after attention is `post_attention_layernorm`, the one before the FFN
        // `pre_feedforward_layernorm`; the others' `post_attention_layernorm` is the FFN's.
        let (ffn_norm, post_norms) = if c.arch.has_post_norms() {
            let post = [
                self.norm(&name("post_attention_layernorm.weight"))?,
                self.norm(&name("post_feedforward_layernorm.weight"))?,
            ];
            (self.norm(&name("pre_feedforward_layernorm.weight"))?, Some(post))
        } else {
            (self.norm(&name("post_attention_layernorm.weight"))?, None)
        };
        Ok(LayerWeights {
            attn_norm: self.norm(&name("input_layernorm.weight"))?,
            attn_q,
            attn_k,
            attn_v,
            attn_output: self.matrix(&name("self_attn.o_proj.weight"), h, q)?,
            qkv_bias,
            qk_norm,
            post_norms,
            ffn_norm,
            ffn_gate,
            ffn_up,
            ffn_down: self.matrix(&name("mlp.down_proj.weight"), h, f)?,
        })
    }

    /// Token embeddings (`model.embed_tokens.weight`), final norm (`model.norm.weight`) and
    /// LM head (`lm_head.weight`, `None` when tied).
    pub fn load_head(&self) -> Result<HeadWeights, ModelError> {
        let c = &self.config;
        let output = if c.tie_embeddings { None } else { Some(self.matrix("lm_head.weight", c.vocab, c.hidden)?) };
        Ok(HeadWeights {
            token_embd: self.matrix("model.embed_tokens.weight", c.vocab, c.hidden)?,
            output_norm: self.norm("model.norm.weight")?,
            output,
        })
    }

    /// An RMSNorm weight (`[hidden]`) as the engine applies it: Gemma's checkpoints store
    /// `w` for a scale of `1 + w` (GGUF files store `1 + w`, as llama.cpp's converter adds it).
    fn norm(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.norm_of(name, self.config.hidden)
    }

    /// As [`Self::norm`] for a norm of `len` values (the per-head q/k norms).
    fn norm_of(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let mut w = self.vector(name, len)?;
        if self.config.arch.is_gemma() {
            w.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(w)
    }

    /// Whether the checkpoint has a `tokenizer.json`.
    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer_json.is_some()
    }

    /// The tokenizer from `tokenizer.json` (with `tokenizer_config.json` when present).
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        let Some(json) = &self.tokenizer_json else {
            return Err(ModelError::Tokenizer(format!(
                "{} not found: the checkpoint has no tokenizer",
                self.tokenizer_name
            )));
        };
        Tokenizer::from_json(json, self.tokenizer_config_json.as_deref())
            .map_err(|e| e.in_file(self.tokenizer_name.clone()))
    }

    /// The chat template: `chat_template.jinja` if given, else `tokenizer_config.json`'s
    /// `chat_template`.
    pub fn chat_template(&self) -> Option<String> {
        self.chat_template
            .clone()
            .or_else(|| self.tokenizer_config_json.as_deref().and_then(tokenizer::chat_template_from_config))
    }
}

/// The parts of `model.safetensors.index.json` the loader uses.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
struct Index {
    /// Shard file names, sorted, unique.
    files: Vec<String>,
    /// Tensor name to shard file name.
    weight_map: Vec<(String, String)>,
}

/// Reads `model.safetensors.index.json`.
#[cfg(not(target_arch = "wasm32"))]
fn parse_index(json: &[u8]) -> Result<Index, ModelError> {
    let bad_index = |what: String| ModelError::BadFormat { format: "safetensors index", what };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad_index(e.to_string()))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad_index("no weight_map object".into()));
    };
    let mut files = std::collections::BTreeSet::new();
    let mut weight_map = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad_index(format!("weight_map entry {tensor} is not a file name")));
        };
        // Shards sit beside the index: refuse anything that would leave the directory.
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
            return Err(bad_index(format!("weight_map entry {tensor}: {file:?} is not a file name")));
        }
        files.insert(file.to_string());
        weight_map.push((tensor.clone(), file.to_string()));
    }
    if files.is_empty() {
        return Err(bad_index("weight_map is empty".into()));
    }
    Ok(Index { files: files.into_iter().collect(), weight_map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    const CONFIG: &str = r#"{"model_type": "qwen2", "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
        "vocab_size": 5, "max_position_embeddings": 32}"#;

    /// A one-layer Qwen2 model with distinct values in every tensor; `lm_head` only if `untied`.
    fn tiny(dtype: Dtype, untied: bool) -> Vec<u8> {
        let (h, q, kv, f, v) = (8usize, 8usize, 4usize, 12usize, 5usize);
        let mut specs: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![v, h]), ("model.norm.weight".into(), vec![h])];
        if untied {
            specs.push(("lm_head.weight".into(), vec![v, h]));
        }
        let l = |t: &str| format!("model.layers.0.{t}");
        specs.extend([
            (l("input_layernorm.weight"), vec![h]),
            (l("self_attn.q_proj.weight"), vec![q, h]),
            (l("self_attn.k_proj.weight"), vec![kv, h]),
            (l("self_attn.v_proj.weight"), vec![kv, h]),
            (l("self_attn.q_proj.bias"), vec![q]),
            (l("self_attn.k_proj.bias"), vec![kv]),
            (l("self_attn.v_proj.bias"), vec![kv]),
            (l("self_attn.o_proj.weight"), vec![h, q]),
            (l("post_attention_layernorm.weight"), vec![h]),
            (l("mlp.gate_proj.weight"), vec![f, h]),
            (l("mlp.up_proj.weight"), vec![f, h]),
            (l("mlp.down_proj.weight"), vec![h, f]),
        ]);
        let wt = weight_type("", dtype).unwrap();
        let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = specs
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n: usize = shape.iter().product();
                let vals: Vec<f32> = (0..n).map(|i| ((k * 7 + i) % 64) as f32 / 16.0).collect();
                (name, shape, super::super::quant::quantize(wt, &vals))
            })
            .collect();
        let views = bufs.iter().map(|(n, s, b)| (n.as_str(), TensorView::new(dtype, s.clone(), b).unwrap()));
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn loads_every_float_type_without_copying() {
        for (dtype, wt) in
            [(Dtype::F32, WeightType::F32), (Dtype::F16, WeightType::F16), (Dtype::BF16, WeightType::BF16)]
        {
            let file = Bytes::from(tiny(dtype, true));
            let m = SafetensorsModel::from_parts(CONFIG.as_bytes(), vec![file.clone()], None, None).unwrap();
            assert!(!m.config().tie_embeddings);
            let layer = m.load_layer(0).unwrap();
            assert_eq!(layer.attn_q.dtype, wt);
            assert_eq!((layer.attn_k.rows, layer.attn_k.cols), (4, 8));
            let range = file.as_ptr_range();
            assert!(range.contains(&layer.ffn_down.data.as_ptr()), "{dtype}: weights were copied");
            let [bq, _, bv] = layer.qkv_bias.unwrap();
            assert_eq!((bq.len(), bv.len()), (8, 4));
            // Values are multiples of 1/16 below 4: exact in every float type.
            assert_eq!(layer.attn_norm[3], (3 * 7 + 3) as f32 / 16.0);
            let head = m.load_head().unwrap();
            assert_eq!(head.lm_head().dequantize()[1], (2 * 7 + 1) as f32 / 16.0);
            assert!(matches!(m.load_layer(1), Err(ModelError::LayerOutOfRange { layer: 1, n_layers: 1 })));
        }
    }

    #[test]
    fn missing_lm_head_means_tied() {
        let m = SafetensorsModel::from_parts(CONFIG.as_bytes(), vec![Bytes::from(tiny(Dtype::F32, false))], None, None)
            .unwrap();
        assert!(m.config().tie_embeddings);
        assert!(m.load_head().unwrap().output.is_none());
    }

    #[test]
    fn tokenizer_absent_is_named_and_template_is_none() {
        let m = SafetensorsModel::from_parts(CONFIG.as_bytes(), vec![Bytes::from(tiny(Dtype::F32, true))], None, None)
            .unwrap();
        let Err(e) = m.tokenizer() else { panic!("a model without tokenizer.json gave a tokenizer") };
        assert!(e.to_string().contains("tokenizer.json not found"), "{e}");
        assert_eq!(m.chat_template(), None);
        assert_eq!(m.with_chat_template("{{ x }}".into()).chat_template().as_deref(), Some("{{ x }}"));
    }

    #[test]
    fn short_files_report_sizes() {
        let file = tiny(Dtype::F32, true);
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let open = |b: &[u8]| {
            SafetensorsModel::from_parts(CONFIG.as_bytes(), vec![Bytes::copy_from_slice(b)], None, None).unwrap_err()
        };
        assert_eq!(
            open(&file[..5]).to_string(),
            "model.safetensors: truncated: header length at byte 0 needs 8 bytes, file has 5"
        );
        assert_eq!(
            open(&file[..20]).to_string(),
            format!("model.safetensors: truncated: header at byte 8 needs {n} bytes, file has 20")
        );
        let cut = file.len() - 3;
        let data = (file.len() - 8 - n) as u64;
        assert_eq!(
            open(&file[..cut]).to_string(),
            format!("model.safetensors: truncated: tensor data at byte {} needs {data} bytes, file has {cut}", 8 + n)
        );
        let mut longer = file.clone();
        longer.push(0);
        assert!(open(&longer).to_string().contains("tensor data ends at byte"));
        let mut garbage = file.clone();
        garbage[8] = b'x';
        assert!(open(&garbage).to_string().starts_with("model.safetensors: not a safetensors file: invalid JSON"));
    }

    #[test]
    fn check_file_counts_tensors_and_refuses_garbage() {
        assert_eq!(check_file(&tiny(Dtype::F32, true)).unwrap(), 15);
        for bad in [&b""[..], &[0xff; 8], &[1, 0, 0, 0, 0, 0, 0, 0, b'{']] {
            assert!(check_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_tensors_across_shards_are_rejected() {
        let f = Bytes::from(tiny(Dtype::F32, true));
        let e = SafetensorsModel::from_parts(CONFIG.as_bytes(), vec![f.clone(), f], None, None).unwrap_err();
        assert!(e.to_string().starts_with("shard 1: not a safetensors file: tensor "), "{e}");
    }

    #[test]
    fn index_rejects_paths() {
        let ok = br#"{"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#;
        let index = parse_index(ok).unwrap();
        assert_eq!(index.files, ["m-1.safetensors", "m-2.safetensors"]);
        assert_eq!(index.weight_map.len(), 3);
        let e = parse_index(br#"{"weight_map": {"a": "../secret"}}"#).unwrap_err();
        assert!(e.to_string().contains("\"../secret\" is not a file name"), "{e}");
        assert!(parse_index(br#"{"weight_map": {}}"#).is_err());
        assert!(parse_index(b"{}").is_err());
    }
}
