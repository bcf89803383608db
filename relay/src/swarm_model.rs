//! A model known only by its id (`ait relay --model ID`): its manifest and the parts this node
//! will serve, fetched from the swarm into the part store ([`crate::part_store`]), then the
//! blocks and head built from those verified parts.
//!
//! Seeders are found in the DHT: providers of the model's id hold its manifest (whose hash the
//! fetcher checks against the id), providers of a part's root seed that part. Each part is
//! fetched over `/ait/parts/1` from up to [`PARALLEL`] of its seeders at once, each asked for
//! [`PIPELINE`](web_node::net::parts::PIPELINE) ranges at a time,
//! every range checked against the part's root on arrival, and resumed from what is already
//! verified on disk.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::PeerId;
use web_node::engine::AnyBackend;
use web_node::model::manifest::PartRef;
use web_node::model::parts::{verify_block, verify_head, Part};
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::parts::{fetch_card, FetchError, HeldPart};
use web_node::net::record::model_key;
use web_node::net::seeders::{first_manifest, holders, providers, PROBE};

use crate::local::{pick_gpu, BackendKind};
use crate::part_store::{FetchOutcome, PartStore};

/// Seeders one part is fetched from at once (`fetch_ranges`' `parallel`: up to
/// [`PIPELINE`](web_node::net::parts::PIPELINE) times this many ranges at once).
pub const PARALLEL: usize = 4;
/// Parts fetched at once.
const PARTS_AT_ONCE: usize = 4;

/// The manifest of model `id`: from the store, else from the first of the peers that provide
/// the id to answer with it (asked all at once; checked against the id, then stored). Its card
/// is asked of the same peers then ([`card`]).
pub async fn manifest(handle: &NodeHandle, store: &PartStore, id: &ModelId) -> anyhow::Result<Manifest> {
    if let Some(m) = store.manifest_of(id) {
        return Ok(m);
    }
    let peers = providers(handle, model_key(id)).await?;
    match first_manifest(handle, &peers, id).await {
        Ok(m) => {
            store.add_manifest(&m)?;
            card(handle, store, id, &peers).await;
            Ok(m)
        }
        Err(errors) => anyhow::bail!(
            "no peer in the swarm gave the manifest of model {} ({} providers found{}{})",
            id.to_hex(),
            peers.len(),
            if errors.is_empty() { "" } else { ": " },
            errors.join("; ")
        ),
    }
}

/// Keeps in `store` (and so seeds) the card of model `id` that the first of `peers` sends
/// that opens (signed, about this model), and prints its name and creator. A model without
/// a card is served all the same.
async fn card(handle: &NodeHandle, store: &PartStore, id: &ModelId, peers: &[PeerId]) {
    let mut asking: FuturesUnordered<_> = peers
        .iter()
        .map(|&peer| async move { tokio::time::timeout(PROBE, fetch_card(&mut handle.control(), peer, id)).await })
        .collect();
    while let Some(got) = asking.next().await {
        match got {
            Ok(Ok((card, creator, bytes))) => {
                if let Err(e) = store.add_card(id, &bytes) {
                    tracing::warn!("keeping the card of {}: {e}", id.to_hex());
                }
                crate::say(&format!("card: {:?} by {creator}", card.name));
                return;
            }
            Ok(Err(e @ FetchError::BadCard { .. })) => tracing::warn!("{e}"),
            _ => {}
        }
    }
    tracing::info!("no card of model {} in the swarm", id.to_hex());
}

/// The head part and the parts of `blocks`, as the manifest lists them.
pub fn wanted(manifest: &Manifest, blocks: Range<usize>) -> anyhow::Result<Vec<(Part, PartRef)>> {
    let parts =
        manifest.parts.as_ref().context("the manifest lists no parts (a safetensors model): it cannot be fetched")?;
    let mut out = vec![(Part::Head, parts.head.clone())];
    for i in blocks {
        let r = parts.get(Part::Block(i)).with_context(|| format!("the model has no block {i}"))?;
        out.push((Part::Block(i), r.clone()));
    }
    Ok(out)
}

/// Verified parts in memory, by root.
pub type HeldParts = HashMap<String, Arc<HeldPart>>;

/// Fetches `parts` into `store` from their seeders (a few parts at once), with a progress bar
/// per part on a terminal and a line per part on stdout:
/// `fetched <part>: <n> bytes from <k> peers, <m> resumed`. Returns the bytes fetched and
/// every part of `parts`, verified (each hashed once, on arrival or when read from the store).
pub async fn fetch(
    handle: &NodeHandle,
    store: &Arc<PartStore>,
    parts: &[(Part, PartRef)],
) -> anyhow::Result<(u64, HeldParts)> {
    let bars = indicatif::MultiProgress::new();
    let style = crate::byte_bar_style();
    // Parts already stored are checked first, so only the missing ones are looked up.
    let mut missing = Vec::new();
    let mut held = HeldParts::new();
    for (part, r) in parts {
        // A stored part is hashed against its root; one that fails is deleted and fetched
        // again (a corrupted store repairs itself from the swarm).
        match store.load(&r.root)? {
            Some(p) => {
                held.insert(r.root.clone(), p);
            }
            None => missing.push((*part, r.clone())),
        }
    }
    if missing.is_empty() {
        return Ok((0, held));
    }
    let roots: Vec<String> = missing.iter().map(|(_, r)| r.root.clone()).collect();
    let holders = holders(handle, &roots, &[]).await?;
    let results: Vec<anyhow::Result<(String, Arc<HeldPart>, FetchOutcome)>> = futures::stream::iter(missing)
        .map(|(part, r)| {
            let (store, bars, style) = (store.clone(), bars.clone(), style.clone());
            let peers = holders.get(&r.root).cloned().unwrap_or_default();
            async move {
                anyhow::ensure!(!peers.is_empty(), "no live seeder of {part} ({}) in the swarm", r.root);
                let bar = bars.add(indicatif::ProgressBar::new(r.size).with_style(style).with_prefix(part.to_string()));
                let (part_held, out) = store
                    .fetch(handle, &peers, &r, PARALLEL, |n| bar.set_position(n))
                    .await
                    .with_context(|| format!("fetching {part}"))?;
                bar.finish_and_clear();
                crate::say(&format!(
                    "fetched {part}: {} bytes from {} peers, {} resumed",
                    out.fetched(),
                    out.report.from.len(),
                    out.resumed
                ));
                if !out.report.banned.is_empty() {
                    tracing::warn!("{part}: banned {:?} for sending data that failed verification", out.report.banned);
                }
                Ok((r.root, part_held, out))
            }
        })
        .buffer_unordered(PARTS_AT_ONCE)
        .collect()
        .await;
    let mut total = 0;
    for r in results {
        let (root, part, out) = r?;
        total += out.fetched();
        held.insert(root, part);
    }
    Ok((total, held))
}

/// The head part of `manifest` from `held` ([`fetch`]'s), as a model file (for the client's
/// embeddings, LM head, tokenizer and template).
pub fn load_head(held: &HeldParts, manifest: &Manifest) -> anyhow::Result<ModelFile> {
    let r = &wanted(manifest, 0..0)?[0].1;
    let part = held.get(&r.root).context("the head part was not fetched")?;
    let bytes = part.data().context("the head part is not in memory")?;
    Ok(ModelFile::Gguf(verify_head(manifest, bytes.clone())?))
}

/// A backend for `blocks` of `manifest` built from the verified parts in `held` ([`fetch`]'s).
pub fn load_blocks(
    held: &HeldParts,
    manifest: &Manifest,
    blocks: Range<usize>,
    kind: BackendKind,
) -> anyhow::Result<AnyBackend> {
    let mut config = None;
    let mut layers = Vec::new();
    for (part, r) in wanted(manifest, blocks.clone())?.into_iter().skip(1) {
        let Part::Block(i) = part else { continue };
        let p = held.get(&r.root).with_context(|| format!("{part} was not fetched"))?;
        let bytes = p.data().with_context(|| format!("{part} is not in memory"))?;
        let (c, w) = verify_block(manifest, i, bytes.clone())?;
        config.get_or_insert(c);
        layers.push(w);
    }
    let config = config.context("no blocks")?;
    Ok(match pick_gpu(kind)? {
        Some(ctx) => AnyBackend::gpu(ctx, config, blocks, &layers)?,
        None => AnyBackend::cpu(config, blocks, layers)?,
    })
}
