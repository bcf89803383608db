//! A model written as one GGUF file, the format the swarm's parts are cut from
//! ([`super::parts`]): a Hugging Face checkpoint converted, or a GGUF file re-quantized.
//!
//! Main type: [`Conversion`], planned from an opened [`ModelFile`] and a target weight type,
//! then written tensor by tensor ([`Conversion::write`]), one layer in memory at a time.
//!
//! What is written is what this crate's GGUF loader reads back as the same model: the same
//! [`LlamaConfig`], the same tokenizer and chat template (a GGUF file's `tokenizer.*` as they
//! are; a checkpoint's `tokenizer.json` through [`super::Tokenizer::gguf_metadata`]), and
//! the same layer weights, q/k rows permuted into llama.cpp's order for the `llama` and
//! `mistral` architectures as llama.cpp's converter does. Matrices keep their stored type
//! unless a target is given; a target quantizes every matrix with ggml's round-to-nearest
//! quantizers ([`super::quant::quantize`]); norms, biases and RoPE factors stay f32.
//! Architectures whose GGUF form differs in more than names (Phi-3's fused tensors and
//! LongRoPE, Gemma's norms) are refused rather than written wrong.

use std::io::Write;

use super::gguf::writer::{header, padding, TensorHeader};
use super::gguf::{GgmlType, Value, MAX_STRING};
use super::quant::{dequantize, quantize};
use super::weights::permute_rope_rows;
use super::{Arch, LayerWeights, LlamaConfig, ModelError, ModelFile, QMatrix, WeightType};

/// `general.*` keys that describe the file's format, not the model: not carried over.
const GENERAL_FORMAT: &[&str] =
    &["general.architecture", "general.alignment", "general.file_type", "general.quantization_version"];

/// Why a model cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The model cannot be read.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the output failed.
    #[error("writing the GGUF file: {0}")]
    Io(#[from] std::io::Error),
    /// The architecture or a feature of it has no GGUF form here.
    #[error("converting {0} is not supported")]
    Unsupported(String),
    /// A tensor read differently while the file was written than when it was planned.
    #[error("{0}: not the tensor planned (the model read differently the second time)")]
    Changed(String),
    /// The target type has no quantizer here (K-quants and IQ types need llama.cpp's search).
    #[error("cannot quantize to {0}: this build quantizes to f32, f16, bf16, q4_0, q4_1, q5_0, q5_1 and q8_0")]
    NoQuantizer(WeightType),
    /// A matrix's rows are not a whole number of the target's blocks.
    #[error("{tensor}: rows of {cols} values are not a whole number of {target} blocks of {block}")]
    NotBlocks {
        /// The tensor (GGUF name).
        tensor: String,
        /// Its row length.
        cols: usize,
        /// The target type.
        target: WeightType,
        /// The target's block length.
        block: usize,
    },
}

/// One tensor of the output: its GGUF name, dims (fastest first) and type.
#[derive(Clone, Debug, PartialEq)]
struct Planned {
    name: String,
    dims: Vec<u64>,
    dtype: WeightType,
}

impl Planned {
    fn len(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        self.dtype.bytes_for(n as usize).unwrap_or(0) as u64
    }
}

/// A tensor's values as a loader delivers them.
enum Source<'a> {
    /// A matrix, in rotate-half RoPE layout for q/k.
    Matrix(&'a QMatrix),
    /// q or k rows, to be permuted into llama.cpp's order for `heads` heads.
    Rope(&'a QMatrix, usize),
    /// A 1-D tensor (norm, bias, RoPE factors).
    Vector(&'a [f32]),
}

/// A planned conversion of one model to GGUF.
pub struct Conversion<'a> {
    file: &'a ModelFile,
    target: Option<WeightType>,
    metadata: Vec<(String, Value)>,
    tensors: Vec<Planned>,
}

impl<'a> Conversion<'a> {
    /// Plans writing `file` as GGUF named `name` (a GGUF file keeps its own `general.name` and
    /// other labels), matrices as `target` (or as stored). Reads
    /// every layer once to learn the stored types; fails before anything is written when the
    /// model cannot be converted.
    pub fn plan(file: &'a ModelFile, target: Option<WeightType>, name: &str) -> Result<Self, ConvertError> {
        let config = file.config();
        if !matches!(config.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3) {
            return Err(ConvertError::Unsupported(format!(
                "the {} architecture (llama, mistral, qwen2 and qwen3 are)",
                config.arch.name()
            )));
        }
        if config.rope_attn_factor != 1.0 {
            return Err(ConvertError::Unsupported("LongRoPE".into()));
        }
        if let Some(t) = target.filter(|t| !t.can_quantize()) {
            return Err(ConvertError::NoQuantizer(t));
        }
        let mut metadata = config_metadata(config, name);
        let mut labels = Vec::new();
        match file {
            // A GGUF file's labels (name, license, tags...) carry over: they are in no part.
            // Its tokenizer and template stay as they are (llama.cpp reads them too).
            ModelFile::Gguf(g) => {
                let mut kept: Vec<(String, Value)> = g.file().metadata.0.clone().into_iter().collect();
                kept.sort_by(|a, b| a.0.cmp(&b.0));
                let (tokenizer, rest): (Vec<_>, Vec<_>) =
                    kept.into_iter().partition(|(k, _)| k.starts_with("tokenizer."));
                metadata.extend(tokenizer);
                labels = rest;
            }
            ModelFile::Safetensors(_) => {
                if file.has_tokenizer() {
                    let md = file.tokenizer()?.gguf_metadata()?;
                    if let Some((k, Value::Str(json))) = md.iter().find(|(k, _)| k == super::tokenizer::HF_JSON) {
                        if json.len() as u64 > MAX_STRING {
                            let what = format!("a {k} of {} bytes (GGUF strings hold {MAX_STRING})", json.len());
                            return Err(ConvertError::Unsupported(what));
                        }
                    }
                    metadata.extend(md);
                }
                if let Some(t) = file.chat_template() {
                    metadata.push(("tokenizer.chat_template".into(), Value::Str(t)));
                }
            }
        }
        let mut plan = Conversion { file, target, metadata, tensors: Vec::new() }.with_labels(labels);
        let head = file.load_head()?;
        let rope = config.rope_freq_factors.clone();
        for (name, src) in head_tensors(&head, rope.as_deref()) {
            let p = plan.planned(name, &src)?;
            plan.tensors.push(p);
        }
        drop(head);
        for i in 0..config.n_layers {
            let w = file.load_layer(i)?;
            for (name, src) in layer_tensors(config, i, &w) {
                let p = plan.planned(name, &src)?;
                plan.tensors.push(p);
            }
        }
        Ok(plan)
    }

    /// Adds labels (`general.license`, `general.tags`, ...): keys outside `general.*`, and
    /// the format's own (`general.architecture`...), are left out. A label given twice keeps
    /// the last value. Labels are in no part, so they change no model id.
    pub fn with_labels(mut self, labels: Vec<(String, Value)>) -> Self {
        for (k, v) in labels {
            if !k.starts_with("general.") || GENERAL_FORMAT.contains(&k.as_str()) {
                continue;
            }
            self.metadata.retain(|(m, _)| *m != k);
            self.metadata.push((k, v));
        }
        self
    }

    /// The output's name, dims and type for a tensor.
    fn planned(&self, name: String, src: &Source<'_>) -> Result<Planned, ConvertError> {
        let (dims, stored) = match src {
            Source::Matrix(m) | Source::Rope(m, _) => (vec![m.cols as u64, m.rows as u64], m.dtype),
            Source::Vector(v) => return Ok(Planned { name, dims: vec![v.len() as u64], dtype: WeightType::F32 }),
        };
        let dtype = self.target.unwrap_or(stored);
        let cols = dims[0] as usize;
        if !cols.is_multiple_of(dtype.block_len()) {
            return Err(ConvertError::NotBlocks { tensor: name, cols, target: dtype, block: dtype.block_len() });
        }
        Ok(Planned { name, dims, dtype })
    }

    /// Bytes of the file [`write`](Self::write) writes.
    pub fn total_bytes(&self) -> u64 {
        let data: u64 = self.tensors.iter().map(|t| t.len() + padding(t.len() as usize) as u64).sum();
        self.header().len() as u64 + data
    }

    /// The types the matrices are written as, with their counts.
    pub fn matrix_types(&self) -> Vec<(WeightType, usize)> {
        let mut out: Vec<(WeightType, usize)> = Vec::new();
        for t in self.tensors.iter().filter(|t| t.dims.len() == 2) {
            match out.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += 1,
                None => out.push((t.dtype, 1)),
            }
        }
        out
    }

    fn header(&self) -> Vec<u8> {
        let metadata: Vec<(&str, Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let headers: Vec<TensorHeader<'_>> = self
            .tensors
            .iter()
            .map(|t| TensorHeader { name: &t.name, dims: &t.dims, ggml_type: GgmlType::from(t.dtype).0, len: t.len() })
            .collect();
        header(&metadata, &headers)
    }

    /// Writes the GGUF file to `out`, calling `progress` with the bytes written so far after
    /// each tensor. Returns the bytes written ([`total_bytes`](Self::total_bytes)).
    pub fn write(&self, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<u64, ConvertError> {
        let config = self.file.config();
        let header = self.header();
        out.write_all(&header)?;
        let mut written = header.len() as u64;
        let mut planned = self.tensors.iter();
        let mut put = |name: String, src: Source<'_>| -> Result<(), ConvertError> {
            let plan = planned.next().filter(|p| p.name == name).ok_or_else(|| ConvertError::Changed(name.clone()))?;
            let bytes = encode(&src, plan.dtype);
            if bytes.len() as u64 != plan.len() {
                return Err(ConvertError::Changed(name));
            }
            out.write_all(&bytes)?;
            out.write_all(&vec![0; padding(bytes.len())])?;
            written += (bytes.len() + padding(bytes.len())) as u64;
            progress(written);
            Ok(())
        };
        let head = self.file.load_head()?;
        for (name, src) in head_tensors(&head, config.rope_freq_factors.as_deref()) {
            put(name, src)?;
        }
        drop(head);
        for i in 0..config.n_layers {
            let w = self.file.load_layer(i)?;
            for (name, src) in layer_tensors(config, i, &w) {
                put(name, src)?;
            }
        }
        out.flush()?;
        Ok(written)
    }
}

/// The bytes of `src` as `dtype`: stored bytes when the type is unchanged, else dequantized
/// and quantized again; q/k rows permuted for llama.cpp's RoPE.
fn encode(src: &Source<'_>, dtype: WeightType) -> Vec<u8> {
    let (m, heads) = match src {
        Source::Vector(v) => return quantize(WeightType::F32, v),
        Source::Matrix(m) => (*m, None),
        Source::Rope(m, heads) => (*m, Some(*heads)),
    };
    let permuted;
    let m = match heads {
        Some(h) => {
            permuted = m.permute_rows(&permute_rope_rows(h, m.rows / h.max(1)));
            &permuted
        }
        None => m,
    };
    if m.dtype == dtype {
        return m.data.to_vec();
    }
    let mut out = Vec::with_capacity(dtype.bytes_for(m.rows * m.cols).unwrap_or(0));
    let mut row = vec![0.0f32; m.cols];
    for r in 0..m.rows {
        dequantize(m.dtype, m.row(r), &mut row);
        out.extend_from_slice(&quantize(dtype, &row));
    }
    out
}

/// GGUF metadata for `config`: what this crate's GGUF loader reads back as the same config.
fn config_metadata(c: &LlamaConfig, name: &str) -> Vec<(String, Value)> {
    let a = c.arch.name();
    let k = |key: &str| format!("{a}.{key}");
    let u = |v: usize| Value::U64(v as u64);
    let mut md = vec![
        ("general.architecture".to_string(), Value::Str(a.into())),
        ("general.name".to_string(), Value::Str(name.into())),
        (k("embedding_length"), u(c.hidden)),
        (k("feed_forward_length"), u(c.intermediate)),
        (k("block_count"), u(c.n_layers)),
        (k("attention.head_count"), u(c.n_heads)),
        (k("attention.head_count_kv"), u(c.n_kv_heads)),
        (k("attention.key_length"), u(c.head_dim)),
        (k("attention.value_length"), u(c.head_dim)),
        (k("rope.dimension_count"), u(c.head_dim)),
        (k("rope.freq_base"), Value::F64(c.rope_theta.into())),
        (k("attention.layer_norm_rms_epsilon"), Value::F64(c.rms_eps.into())),
        (k("context_length"), u(c.max_seq_len)),
        (k("vocab_size"), u(c.vocab)),
    ];
    if let Some(w) = c.sliding_window {
        md.push((k("attention.sliding_window"), u(w)));
    }
    md
}

/// The head's tensors in file order: embeddings, RoPE factors, final norm, LM head.
fn head_tensors<'w>(h: &'w super::HeadWeights, rope: Option<&'w [f32]>) -> Vec<(String, Source<'w>)> {
    let mut out = vec![("token_embd.weight".to_string(), Source::Matrix(&h.token_embd))];
    if let Some(f) = rope {
        out.push(("rope_freqs.weight".into(), Source::Vector(f)));
    }
    out.push(("output_norm.weight".into(), Source::Vector(&h.output_norm)));
    if let Some(o) = &h.output {
        out.push(("output.weight".into(), Source::Matrix(o)));
    }
    out
}

/// Layer `i`'s tensors in file order, under the names the GGUF loader reads.
fn layer_tensors<'w>(c: &LlamaConfig, i: usize, w: &'w LayerWeights) -> Vec<(String, Source<'w>)> {
    let n = |t: &str| format!("blk.{i}.{t}");
    let rope = |m: &'w QMatrix, heads: usize| match c.arch.gguf_permutes_qk() {
        true => Source::Rope(m, heads),
        false => Source::Matrix(m),
    };
    let mut out = vec![
        (n("attn_norm.weight"), Source::Vector(&w.attn_norm)),
        (n("attn_q.weight"), rope(&w.attn_q, c.n_heads)),
        (n("attn_k.weight"), rope(&w.attn_k, c.n_kv_heads)),
        (n("attn_v.weight"), Source::Matrix(&w.attn_v)),
        (n("attn_output.weight"), Source::Matrix(&w.attn_output)),
    ];
    if let Some([q, k, v]) = &w.qkv_bias {
        out.push((n("attn_q.bias"), Source::Vector(q)));
        out.push((n("attn_k.bias"), Source::Vector(k)));
        out.push((n("attn_v.bias"), Source::Vector(v)));
    }
    if let Some([q, k]) = &w.qk_norm {
        out.push((n("attn_q_norm.weight"), Source::Vector(q)));
        out.push((n("attn_k_norm.weight"), Source::Vector(k)));
    }
    out.extend([
        (n("ffn_norm.weight"), Source::Vector(&w.ffn_norm)),
        (n("ffn_gate.weight"), Source::Matrix(&w.ffn_gate)),
        (n("ffn_up.weight"), Source::Matrix(&w.ffn_up)),
        (n("ffn_down.weight"), Source::Matrix(&w.ffn_down)),
    ]);
    out
}
