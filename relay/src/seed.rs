//! Seeding: a relay answers `/ait/parts/1` requests ([`web_node::net::parts`]) from its
//! sources: every part of the GGUF file it was started from ([`FileParts`], cut from the file
//! when first asked, the last few kept with their hash trees) and every part in its store
//! ([`crate::part_store`]); and it provides their roots and its models' ids in the DHT, so
//! fetchers find it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use web_node::model::gguf::GgufModel;
use web_node::model::parts::{extract, Part};
use web_node::model::{Manifest, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::parts::{HeldPart, PartSource, PartStreams, PartTraffic, RecentParts, SeedLimits};
use web_node::net::record::{model_key, part_key, seeders_key};

/// How much this relay seeds.
#[derive(Clone, Debug, clap::Args)]
pub struct SeedOpt {
    /// Upload rate for parts sent to other nodes, over all of them, in megabits per second
    /// (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub seed_mbps: f64,
    /// Peers sent parts at once (each with up to 8 requests open).
    #[arg(long, default_value_t = SeedLimits::default().max_peers)]
    pub seed_peers: usize,
}

impl SeedOpt {
    /// The limits these flags set.
    pub fn limits(&self) -> SeedLimits {
        let rate = (self.seed_mbps > 0.0).then(|| (self.seed_mbps * 1e6 / 8.0) as u64);
        let peers = self.seed_peers.max(1);
        SeedLimits { max_peers: peers, max_streams: peers * 8, bytes_per_sec: rate, ..SeedLimits::default() }
    }
}

/// Answers `/ait/parts/1` on `handle`'s node from `sources` (the first that has a part
/// answers) within `limits`, on the tokio runtime, counting what it sends in `traffic`.
pub fn serve_parts(
    handle: &NodeHandle,
    sources: Vec<Arc<dyn PartSource>>,
    limits: SeedLimits,
    traffic: Arc<PartTraffic>,
) -> anyhow::Result<()> {
    let streams = PartStreams::new(&mut handle.control(), Arc::new(Sources(sources)), limits)
        .map_err(|_| anyhow::anyhow!("the parts protocol is already registered"))?
        .with_traffic(traffic);
    tokio::spawn(streams.for_each(|task| {
        tokio::spawn(task);
        std::future::ready(())
    }));
    Ok(())
}

/// Provides the DHT keys of these part roots and model ids, and the seeders' key: this node
/// seeds them.
pub async fn announce(handle: &NodeHandle, roots: &[String], models: &[ModelId]) -> anyhow::Result<()> {
    if roots.is_empty() && models.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<_> = roots.iter().map(|r| part_key(r)).chain(models.iter().map(model_key)).collect();
    keys.push(seeders_key());
    handle.provide(keys).await?;
    Ok(())
}

/// Several part sources as one.
pub struct Sources(pub Vec<Arc<dyn PartSource>>);

impl PartSource for Sources {
    fn has(&self, root: &str) -> bool {
        self.0.iter().any(|s| s.has(root))
    }

    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        // Cutting, reading and hashing a part blocks: let the runtime move other tasks off
        // this worker meanwhile (outside a multi-threaded runtime, just run it).
        let find = || self.0.iter().find_map(|s| s.part(root));
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(find),
            _ => find(),
        }
    }

    fn manifest(&self, id: &ModelId) -> Option<Bytes> {
        self.0.iter().find_map(|s| s.manifest(id))
    }

    fn card(&self, id: &ModelId) -> Option<Bytes> {
        self.0.iter().find_map(|s| s.card(id))
    }

    fn models(&self) -> Vec<ModelId> {
        let mut ids: Vec<ModelId> = self.0.iter().flat_map(|s| s.models()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The parts of one GGUF model file.
pub struct FileParts {
    file: GgufModel,
    manifest: Manifest,
    /// Root (hex) to part, for every part of the manifest.
    index: HashMap<String, Part>,
    held: Mutex<RecentParts>,
    json: Bytes,
}

impl FileParts {
    /// The parts `manifest` lists, cut from `file`; `None` when it lists none.
    pub fn new(file: GgufModel, manifest: Manifest) -> Option<FileParts> {
        let parts = manifest.parts.as_ref()?;
        let mut index: HashMap<String, Part> = HashMap::new();
        index.insert(parts.head.root.clone(), Part::Head);
        for (i, b) in parts.blocks.iter().enumerate() {
            index.insert(b.root.clone(), Part::Block(i));
        }
        let json = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
        Some(FileParts { file, manifest, index, held: Mutex::new(RecentParts::default()), json })
    }

    /// Roots of every part of the file.
    pub fn roots(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
}

impl PartSource for FileParts {
    fn has(&self, root: &str) -> bool {
        self.index.contains_key(root)
    }

    fn manifest(&self, id: &ModelId) -> Option<Bytes> {
        (*id == self.manifest.id()).then(|| self.json.clone())
    }

    fn models(&self) -> Vec<ModelId> {
        vec![self.manifest.id()]
    }

    fn card(&self, _: &ModelId) -> Option<Bytes> {
        // A creator's card is kept in the store (`ait publish`), not in the file.
        None
    }

    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        let part = *self.index.get(root)?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = held.get(root) {
            return Some(p);
        }
        let bytes = match extract(self.file.file(), self.manifest.n_layers, part) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot cut {part}: {e}");
                return None;
            }
        };
        let p = Arc::new(HeldPart::new(Bytes::from(bytes)));
        if p.root().to_hex() != root {
            // The file changed under the manifest: serve nothing rather than other bytes.
            tracing::warn!("{part} no longer matches the manifest's root; not serving it");
            return None;
        }
        held.insert(root, p.clone());
        Some(p)
    }
}
