//! `ait publish`: a creator's model enters the swarm. A Hugging Face checkpoint, or a GGUF
//! file to be quantized, is first written as a GGUF file under the data directory
//! ([`to_gguf`]), since GGUF parts are what the swarm exchanges. The relay serves and seeds
//! every part of the file as `ait relay --model PATH` does, and signs a model card
//! ([`ModelCard`]) with its key: labels from the flags and the file's metadata, and the speed
//! its blocks ran at here.

use std::path::{Path, PathBuf};

use anyhow::Context;
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::card::{is_evm_address, Labels, Measured, ModelCard};
use web_node::model::convert::Conversion;
use web_node::model::gguf::Value;
use web_node::model::{Manifest, ModelFile, WeightType};
use web_node::net::serve::measure_ms_per_block;

use crate::local::{load_backend, pick_gpu, BackendKind};

/// What the creator says about the model (`ait publish` flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CardOpt {
    /// The model's display name (default: the file's `general.name`).
    #[arg(long)]
    pub name: Option<String>,
    /// A tag (repeatable): lowercase words such as `chat` or `code`; the file's `general.tags`
    /// are added.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// SPDX license id (default: the file's `general.license`).
    #[arg(long)]
    pub license: Option<String>,
    /// EVM address the creator's royalties go to (`0x` and 40 hex digits).
    #[arg(long, value_name = "0xADDRESS", value_parser = parse_payout)]
    pub payout: Option<String>,
}

fn parse_payout(s: &str) -> Result<String, String> {
    match is_evm_address(s) {
        true => Ok(s.to_string()),
        false => Err(format!("{s:?} is not an EVM address (0x and 40 hex digits)")),
    }
}

impl CardOpt {
    /// The labels these flags give.
    pub fn labels(&self) -> Labels {
        Labels {
            name: self.name.clone(),
            tags: self.tags.clone(),
            license: self.license.clone(),
            payout: self.payout.clone(),
        }
    }
}

/// The card of `manifest`'s model from `file` (GGUF metadata) and the creator's flags, with
/// the speed measured here; signed at `now` (seconds since the epoch).
pub fn card_for(
    file: &ModelFile,
    manifest: &Manifest,
    opt: &CardOpt,
    measured: Option<Measured>,
    now: u64,
) -> anyhow::Result<ModelCard> {
    let ModelFile::Gguf(g) = file else {
        anyhow::bail!("only GGUF files are published (their parts are what the swarm exchanges)");
    };
    Ok(ModelCard::for_gguf(g, manifest, &opt.labels(), measured, now)?)
}

/// The decode time of one token through the model's first block on `kind` here, as a server
/// measures its blocks ([`measure_ms_per_block`]).
pub fn measure(file: &ModelFile, kind: BackendKind) -> anyhow::Result<Measured> {
    let gpu = pick_gpu(kind)?;
    let backend = load_backend(file, gpu.as_ref(), 0..1)?;
    let name = backend.name().to_string();
    let mut executor = BlockExecutor::new(backend, ExecutorConfig::default());
    let ms_per_block = pollster::block_on(measure_ms_per_block(&mut executor))?;
    Ok(Measured { ms_per_block, backend: name })
}

/// Parses a `--quantize` type: one ggml can write here (`q8_0`, `q4_0`, `q4_1`, `q5_0`,
/// `q5_1`, `f16`, `bf16`, `f32`).
pub fn parse_quantize(s: &str) -> Result<WeightType, String> {
    let usable = WeightType::ALL.into_iter().filter(|t| t.can_quantize());
    usable.clone().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
        let names: Vec<&str> = usable.map(WeightType::name).collect();
        format!("{s:?} is not a type this build quantizes to ({})", names.join(", "))
    })
}

/// Greedy tokens per prompt in the drift report.
const DRIFT_TOKENS: usize = 24;

/// The GGUF file to publish for `path`: `path` itself for a GGUF file published as it is;
/// otherwise `path` (a Hugging Face directory, or a GGUF file) converted with matrices as
/// `quantize` (or as stored) into `data_dir/published/NAME.TYPE.KEY.gguf` (KEY from the
/// input's canonical path; labelled from a
/// checkpoint's model card, [`card_labels`]), with a progress bar,
/// written under a temporary name and renamed when complete. A quantized model's drift from
/// the original ([`crate::drift`]) is measured on `backend`, printed, and kept beside the file
/// (`.drift.txt`); a later run with the same input and type reuses both.
pub fn to_gguf(
    path: &Path,
    quantize: Option<WeightType>,
    data_dir: &Path,
    backend: BackendKind,
) -> anyhow::Result<PathBuf> {
    if path.is_file() && quantize.is_none() {
        return Ok(path.to_path_buf());
    }
    // Named after the input (a directory's whole name: `Llama-3.2-1B` is not `Llama-3`), and
    // keyed by its canonical path, so two inputs of the same name never share a file.
    let source = std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
    let name = match source.is_dir() {
        true => source.file_name(),
        false => source.file_stem(),
    };
    let stem = name.and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let key = web_node::model::manifest::sha_hex(source.as_os_str().as_encoded_bytes());
    let kind = quantize.map_or("as-stored", WeightType::name);
    let dir = data_dir.join("published");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{stem}.{kind}.{}.gguf", &key[..12]));
    let report = out.with_extension("drift.txt");
    if is_newer(&out, path)? && (quantize.is_none() || report.is_file()) {
        crate::say(&format!("converted: {} (kept from an earlier run)", out.display()));
        if let Ok(text) = std::fs::read_to_string(&report) {
            print!("{text}");
        }
        return Ok(out);
    }
    let original = ModelFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let plan = Conversion::plan(&original, quantize, &stem)?.with_labels(card_labels(path));
    let types: Vec<String> = plan.matrix_types().iter().map(|(t, n)| format!("{n} {t}")).collect();
    let total = plan.total_bytes();
    crate::say(&format!("converting {} to GGUF ({} matrices, {total} bytes)", path.display(), types.join(", ")));
    let partial = out.with_extension("gguf.partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let bar = indicatif::ProgressBar::new(total).with_style(crate::byte_bar_style()).with_prefix("converting");
    let mut w = std::io::BufWriter::new(file);
    plan.write(&mut w, |n| bar.set_position(n)).with_context(|| format!("writing {}", partial.display()))?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    bar.finish_and_clear();
    {
        let converted = ModelFile::open(&partial).context("reading the converted file back")?;
        anyhow::ensure!(
            converted.config() == original.config(),
            "the converted file reads back as another configuration"
        );
        if quantize.is_some() {
            let drift = match original.has_tokenizer() {
                true => crate::drift::measure(&original, &converted, DRIFT_TOKENS, backend)?.to_string(),
                false => "drift: not measured (the model has no tokenizer to prompt it with)\n".to_string(),
            };
            print!("{drift}");
            std::fs::write(&report, &drift).with_context(|| format!("writing {}", report.display()))?;
        }
    }
    std::fs::rename(&partial, &out).with_context(|| format!("renaming to {}", out.display()))?;
    crate::say(&format!("converted: {}", out.display()));
    Ok(out)
}

/// Labels from a Hugging Face model card (`README.md` in the checkpoint directory): the YAML
/// front matter's `license`, `language` (one or a list) and `tags`, as the GGUF keys
/// `general.license`, `general.languages` and `general.tags`. None for a file, or a card
/// without front matter; a front matter that does not parse is warned about and skipped.
pub fn card_labels(dir: &Path) -> Vec<(String, Value)> {
    let Ok(text) = std::fs::read_to_string(dir.join("README.md")) else {
        return Vec::new();
    };
    let text = text.replace("\r\n", "\n");
    let Some(front) = text.strip_prefix("---\n").and_then(|t| t.split_once("\n---").map(|(f, _)| f)) else {
        return Vec::new();
    };
    let doc = match yaml_rust2::YamlLoader::load_from_str(front) {
        Ok(docs) => docs.into_iter().next().unwrap_or(yaml_rust2::Yaml::Null),
        Err(e) => {
            tracing::warn!("{}: front matter: {e}", dir.join("README.md").display());
            return Vec::new();
        }
    };
    let strings = |key: &str| -> Vec<Value> {
        match &doc[key] {
            yaml_rust2::Yaml::String(s) => vec![Value::Str(s.clone())],
            yaml_rust2::Yaml::Array(a) => a.iter().filter_map(|v| v.as_str()).map(|s| Value::Str(s.into())).collect(),
            _ => Vec::new(),
        }
    };
    let mut out = Vec::new();
    if let Some(Value::Str(license)) = strings("license").into_iter().next() {
        out.push(("general.license".to_string(), Value::Str(license)));
    }
    for (key, gguf) in [("language", "general.languages"), ("tags", "general.tags")] {
        let list = strings(key);
        if !list.is_empty() {
            out.push((gguf.to_string(), Value::Array(list)));
        }
    }
    out
}

/// Whether `out` exists and was written after everything under `input` last changed.
fn is_newer(out: &Path, input: &Path) -> anyhow::Result<bool> {
    let Ok(written) = std::fs::metadata(out).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let mut newest = std::fs::metadata(input)?.modified()?;
    if input.is_dir() {
        for e in std::fs::read_dir(input)? {
            newest = newest.max(e?.metadata()?.modified()?);
        }
    }
    Ok(written > newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_a_model_cards_front_matter() {
        let dir = std::env::temp_dir().join(format!("ait-card-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        std::fs::write(
            &readme,
            "---\r\nlicense: apache-2.0\r\nlanguage:\r\n- en\r\n- fr\r\ntags: chat\r\n---\r\n# A model\r\n",
        )
        .unwrap();
        let labels = card_labels(&dir);
        let s = |v: &str| Value::Str(v.into());
        assert_eq!(
            labels,
            vec![
                ("general.license".to_string(), s("apache-2.0")),
                ("general.languages".to_string(), Value::Array(vec![s("en"), s("fr")])),
                ("general.tags".to_string(), Value::Array(vec![s("chat")])),
            ]
        );
        for text in ["# No front matter\n", "---\nlicense: [unclosed\n---\n", "---\nlicense: 3\n---\n"] {
            std::fs::write(&readme, text).unwrap();
            assert!(card_labels(&dir).is_empty(), "{text:?}");
        }
        assert!(card_labels(&dir.join("missing")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
