//! Seeding: a relay answers `/ait/parts/1` requests ([`web_node::net::parts`]) from its
//! sources: every part of the GGUF file it was started from ([`FileParts`], each cut from the
//! file into a file of its own when first asked, and answered from there) and every part in its store
//! ([`crate::part_store`]); and it provides their roots and its models' ids in the DHT, so
//! fetchers find it.

use crate::lock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use web_node::model::gguf::GgufModel;
use web_node::model::parts::{extract, Part};
use web_node::model::{Manifest, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::parts::{HeldPart, PartSource, PartStreams, PartTraffic, SeedLimits};
use web_node::net::record::{model_key, part_key, seeders_key};

/// How much this relay seeds.
#[derive(Clone, Debug, clap::Args)]
pub struct SeedOpt {
    /// Upload rate for parts sent to other nodes, over all of them, in megabits per second
    /// (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    pub seed_mbps: f64,
    /// Peers sent parts at once (each with up to 16 streams open, and 8 times this many
    /// streams in all).
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

/// The parts of one GGUF model file, each cut from the file into a file of its own under a
/// directory the first time a peer asks for it (hashed then, once), and answered from there:
/// a range request reads that range only, so seeding a large model to many peers holds a
/// file handle and a tree (1/256 of the part) per part, not the parts.
pub struct FileParts {
    file: GgufModel,
    manifest: Manifest,
    /// Root (hex) to part, for every part of the manifest.
    index: HashMap<String, Part>,
    /// Where parts are cut to, one file per root.
    dir: PathBuf,
    /// The parts cut so far.
    cut: Mutex<HashMap<String, Arc<HeldPart>>>,
    /// Held while a part is cut, so that each is cut once.
    cutting: Mutex<()>,
    json: Bytes,
}

/// Runs `f`, which blocks (reads and hashes a part), telling tokio's multi-threaded runtime
/// so that the node's other tasks move to another thread meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl FileParts {
    /// The parts `manifest` lists, cut from `file` into `dir` (emptied first: files left from
    /// an earlier run are not trusted) when asked for; `None` when it lists none.
    pub fn new(file: GgufModel, manifest: Manifest, dir: PathBuf) -> Option<FileParts> {
        let parts = manifest.parts.as_ref()?;
        let mut index: HashMap<String, Part> = HashMap::new();
        index.insert(parts.head.root.clone(), Part::Head);
        for (i, b) in parts.blocks.iter().enumerate() {
            index.insert(b.root.clone(), Part::Block(i));
        }
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot empty {}: {e}", dir.display());
            }
        }
        let json = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
        let (cut, cutting) = (Mutex::default(), Mutex::default());
        Some(FileParts { file, manifest, index, dir, cut, cutting, json })
    }

    /// Roots of every part of the file.
    pub fn roots(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// The file part `root` was cut into, once [`PartSource::part`] has cut it.
    pub fn part_path(&self, root: &str) -> Option<PathBuf> {
        lock(&self.cut).contains_key(root).then(|| self.dir.join(root))
    }

    /// Cuts `part` into its file and hashes it; checks it against `root`.
    fn cut_to_file(&self, part: Part, root: &str) -> Result<HeldPart, String> {
        let bytes = extract(self.file.file(), self.manifest.n_layers, part).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let path = self.dir.join(root);
        let partial = self.dir.join(format!("{root}.partial"));
        std::fs::write(&partial, &bytes)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let file = std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let held = HeldPart::in_file(file, &bytes);
        if held.root().to_hex() != root {
            // The file changed under the manifest: serve nothing rather than other bytes.
            let _ = std::fs::remove_file(&path);
            return Err("it no longer matches the manifest's root".into());
        }
        Ok(held)
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
        if let Some(p) = lock(&self.cut).get(root) {
            return Some(p.clone());
        }
        blocking(|| {
            let _one_at_a_time = lock(&self.cutting);
            if let Some(p) = lock(&self.cut).get(root) {
                return Some(p.clone());
            }
            match self.cut_to_file(part, root) {
                Ok(p) => {
                    let p = Arc::new(p);
                    lock(&self.cut).insert(root.to_string(), p.clone());
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!("cannot seed {part}: {e}");
                    None
                }
            }
        })
    }
}
