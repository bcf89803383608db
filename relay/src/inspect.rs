//! `ait inspect FILE`: what a model file is, and whether this build can run it.
//!
//! For a GGUF file the summary comes from its header (architecture, shapes, context, tokenizer,
//! chat template, the mix of tensor types); for a Hugging Face directory from its
//! `config.json`. Then the model is resolved and every layer and the head are loaded the way
//! `ait generate` would, and the first error met is the reason it cannot run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use web_node::model::gguf::GgufFile;
use web_node::model::{ModelError, ModelFile};

/// Options of `ait inspect`.
#[derive(clap::Args)]
pub struct InspectOpt {
    /// A GGUF file or a Hugging Face checkpoint directory.
    pub path: PathBuf,
}

/// Prints the summary of `opt.path` to stdout; returns whether this build can run it.
pub fn run(opt: InspectOpt) -> anyhow::Result<bool> {
    let (text, runnable) = inspect(&opt.path)?;
    print!("{text}");
    Ok(runnable)
}

/// The summary of the model at `path`, and whether this build can run it.
pub fn inspect(path: &Path) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    writeln!(out, "file: {}", path.display())?;
    let bytes = if path.is_file() {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        Vec::new()
    };
    if bytes.starts_with(b"GGUF") {
        match GgufFile::parse(Bytes::from(bytes)) {
            Ok(file) => describe_gguf(&file, &mut out)?,
            Err(e) => writeln!(out, "format: GGUF, unreadable header: {e}")?,
        }
    } else {
        writeln!(out, "format: Hugging Face checkpoint (config.json, safetensors)")?;
        if let Ok(config) = std::fs::read_to_string(path.join("config.json")) {
            describe_hf_config(&config, &mut out)?;
        }
    }
    let verdict = match check(path) {
        Ok(summary) => {
            writeln!(out, "runs here: yes ({summary}; backends: cpu, wgpu)")?;
            true
        }
        Err(e) => {
            writeln!(out, "runs here: no: {e}")?;
            false
        }
    };
    Ok((out, verdict))
}

/// Opens the model and loads every layer and the head; the resolved shape on success.
fn check(path: &Path) -> Result<String, ModelError> {
    let file = ModelFile::open(path)?;
    let c = file.config().clone();
    file.load_head()?;
    for i in 0..c.n_layers {
        file.load_layer(i)?;
    }
    if file.has_tokenizer() {
        file.tokenizer()?;
    }
    Ok(format!(
        "{:?}, {} layers, hidden {}, {} heads / {} kv heads of {}, ffn {}, vocab {}, context {}",
        c.arch, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate, c.vocab, c.max_seq_len
    ))
}

fn describe_gguf(file: &GgufFile, out: &mut String) -> anyhow::Result<()> {
    let md = &file.metadata;
    let s = |k: &str| md.str(k).ok().flatten().map(str::to_string);
    let arch = s("general.architecture").unwrap_or_else(|| "(none)".into());
    writeln!(out, "format: GGUF v{}", file.version)?;
    if let Some(name) = s("general.name") {
        writeln!(out, "name: {name}")?;
    }
    writeln!(out, "architecture: {arch}")?;
    let u = |k: &str| md.u64(&format!("{arch}.{k}")).ok().flatten();
    let shape: Vec<String> = [
        ("layers", u("block_count")),
        ("hidden", u("embedding_length")),
        ("ffn", u("feed_forward_length")),
        ("heads", u("attention.head_count")),
        ("kv heads", u("attention.head_count_kv")),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
    .collect();
    writeln!(out, "shape: {}", shape.join(", "))?;
    if let Some(ctx) = u("context_length") {
        // LongRoPE models run at their original context (see `web_node::model::LongRope`).
        let longrope = match (file.tensor("rope_factors_short.weight"), u("rope.scaling.original_context_length")) {
            (Some(_), Some(o)) => format!(" (LongRoPE: served at its original {o} with the short factors)"),
            _ => String::new(),
        };
        writeln!(out, "context: {ctx}{longrope}")?;
    }
    // Parameters and the quantization mix, by ggml type.
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut params = 0u64;
    for t in &file.tensors {
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        params = params.saturating_add(n);
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(n);
        e.2 = e.2.saturating_add(t.size.unwrap_or(0));
    }
    writeln!(out, "parameters: {params} ({:.2} B)", params as f64 / 1e9)?;
    writeln!(out, "tensor types:")?;
    for (name, (count, elems, bytes)) in &by_type {
        let supported =
            file.tensors.iter().find(|t| &t.dtype.name() == name).is_some_and(|t| t.dtype.weight_type().is_some());
        let bpw = if *elems > 0 { *bytes as f64 * 8.0 / *elems as f64 } else { 0.0 };
        let note = if supported { String::new() } else { " (not supported by this build)".into() };
        writeln!(out, "  {name:8} {count:4} tensors, {elems:12} weights, {bpw:5.2} bits/weight{note}")?;
    }
    let tokenizer = match (s("tokenizer.ggml.model"), md.array("tokenizer.ggml.tokens").ok().flatten()) {
        (Some(m), Some(tokens)) => format!("{m}, {} tokens", tokens.len()),
        (Some(m), None) => m,
        (None, _) if md.get(web_node::model::tokenizer::HF_JSON).is_some() => "tokenizer.json (Hugging Face)".into(),
        (None, _) => "none".into(),
    };
    writeln!(out, "tokenizer: {tokenizer}")?;
    let template = if s("tokenizer.chat_template").is_some() { "present" } else { "absent" };
    writeln!(out, "chat template: {template}")?;
    Ok(())
}

fn describe_hf_config(config: &str, out: &mut String) -> anyhow::Result<()> {
    let v: serde_json::Value = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            writeln!(out, "config.json: unreadable: {e}")?;
            return Ok(());
        }
    };
    let field = |k: &str| v.get(k).map(|x| x.to_string().trim_matches('"').to_string());
    if let Some(t) = field("model_type") {
        writeln!(out, "architecture: {t}")?;
    }
    for (label, key) in [("context", "max_position_embeddings"), ("dtype", "torch_dtype")] {
        if let Some(x) = field(key) {
            writeln!(out, "{label}: {x}")?;
        }
    }
    Ok(())
}
