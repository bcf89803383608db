//! `ait publish`: a creator's model enters the swarm. The relay serves and seeds every part of
//! the file as `ait relay --model PATH` does, and signs a model card ([`ModelCard`]) with its
//! key: labels from the flags and the file's metadata, and the speed its blocks ran at here.

use std::collections::BTreeMap;

use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::card::{is_evm_address, Measured, ModelCard, CARD_VERSION};
use web_node::model::gguf::GgufFile;
use web_node::model::{Manifest, ModelFile};
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

/// Parameters of a GGUF file and its weight types with their share of them, most first
/// (`q4_1 79%, q8_0 21%, f32 <1%`).
pub fn type_mix(file: &GgufFile) -> (u64, String) {
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for t in &file.tensors {
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        let e = by_type.entry(t.dtype.name().to_lowercase()).or_default();
        *e = e.saturating_add(n);
    }
    let total: u64 = by_type.values().fold(0, |a, &n| a.saturating_add(n));
    let mut mix: Vec<(String, u64)> = by_type.into_iter().collect();
    mix.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let share = |n: u64| if total == 0 { 0.0 } else { n as f64 * 100.0 / total as f64 };
    let pct = |n: u64| match share(n) {
        s if s < 1.0 => "<1%".to_string(),
        s => format!("{s:.0}%"),
    };
    (total, mix.iter().map(|(t, n)| format!("{t} {}", pct(*n))).collect::<Vec<_>>().join(", "))
}

/// A card field from a free-form metadata string: lowercase, spaces and underscores as `-`,
/// only what a tag may hold; `None` if nothing is left.
fn as_tag(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '_' || c == '/' { '-' } else { c })
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
        .take(32)
        .collect();
    (!t.is_empty()).then_some(t)
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
    let md = &g.file().metadata;
    let meta = |k: &str| md.str(k).ok().flatten().map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        md.array(k).ok().flatten().unwrap_or_default().iter().filter_map(|v| v.as_str().and_then(as_tag)).collect()
    };
    let mut tags: Vec<String> = Vec::new();
    for t in opt.tags.iter().filter_map(|t| as_tag(t)).chain(list("general.tags")) {
        if !tags.contains(&t) && tags.len() < 16 {
            tags.push(t);
        }
    }
    let mut languages = list("general.languages");
    languages.truncate(16);
    let name = opt.name.clone().or_else(|| meta("general.name")).unwrap_or_else(|| manifest.id().short());
    let license = opt.license.clone().or_else(|| meta("general.license")).and_then(|l| as_tag(&l));
    let (parameters, quantization) = type_mix(g.file());
    let card = ModelCard {
        version: CARD_VERSION,
        model: manifest.id().to_hex(),
        name: name.chars().take(100).collect(),
        tags,
        license,
        languages,
        payout: opt.payout.clone(),
        parameters,
        quantization,
        measured,
        signed_at: now,
    };
    card.validate()?;
    Ok(card)
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
