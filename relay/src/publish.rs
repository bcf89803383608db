//! `ait publish`: a creator's model enters the swarm. The relay serves and seeds every part of
//! the file as `ait relay --model PATH` does, and signs a model card ([`ModelCard`]) with its
//! key: labels from the flags and the file's metadata, and the speed its blocks ran at here.

use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::card::{is_evm_address, Labels, Measured, ModelCard};
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
