//! Seeding: a relay started from a GGUF file answers `/ait/parts/1` requests for every part of
//! that model ([`web_node::net::parts`]), cutting each part from the file when first asked and
//! keeping the last few with their hash trees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use web_node::model::gguf::GgufModel;
use web_node::model::parts::{extract, Part};
use web_node::model::Manifest;
use web_node::net::node::NodeHandle;
use web_node::net::parts::{HeldPart, PartSource, PartStreams};

/// Part streams served at once, and from one peer.
const MAX_STREAMS: (usize, usize) = (64, 8);

/// Offers every part of `file` (as `manifest` lists them) on `handle`'s node, on the tokio
/// runtime; `false` when the manifest lists no parts.
pub fn seed_file(handle: &NodeHandle, file: GgufModel, manifest: Manifest) -> anyhow::Result<bool> {
    let Some(parts) = FileParts::new(file, manifest) else {
        return Ok(false);
    };
    let streams = PartStreams::new(&mut handle.control(), Arc::new(parts), MAX_STREAMS.0, MAX_STREAMS.1)
        .map_err(|_| anyhow::anyhow!("the parts protocol is already registered"))?;
    tokio::spawn(streams.for_each(|task| {
        tokio::spawn(task);
        std::future::ready(())
    }));
    Ok(true)
}

/// Parts kept in memory at once (with their trees), besides the file itself.
const KEEP: usize = 8;

/// The parts of one GGUF model file.
pub struct FileParts {
    file: GgufModel,
    manifest: Manifest,
    /// Root (hex) to part, for every part of the manifest.
    index: HashMap<String, Part>,
    held: Mutex<Vec<(String, Arc<HeldPart>)>>,
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
        Some(FileParts { file, manifest, index, held: Mutex::new(Vec::new()) })
    }
}

impl PartSource for FileParts {
    fn has(&self, root: &str) -> bool {
        self.index.contains_key(root)
    }

    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        let part = *self.index.get(root)?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = held.iter().find(|(r, _)| r == root) {
            return Some(p.clone());
        }
        let bytes = match extract(self.file.file(), self.manifest.n_layers, part) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot cut {part}: {e}");
                return None;
            }
        };
        let p = Arc::new(HeldPart::new(Bytes::from(bytes)));
        if p.tree.root().to_hex() != root {
            // The file changed under the manifest: serve nothing rather than other bytes.
            tracing::warn!("{part} no longer matches the manifest's root; not serving it");
            return None;
        }
        if held.len() >= KEEP {
            held.remove(0);
        }
        held.push((root.to_string(), p.clone()));
        Some(p)
    }
}
