//! The content-addressed part store in a relay's data directory: model parts fetched from the
//! swarm, named by their BLAKE3 root, and the manifests and cards of their models, named by
//! model id.
//!
//! Layout under the store's directory:
//! - `parts/<root>`: a complete part. Its root is checked when it is loaded (a part that no
//!   longer hashes to its name is deleted and fetched again), so a corrupted store is caught
//!   before a byte of it is served or run.
//! - `parts/<root>.partial` and `parts/<root>.have`: a part being fetched, and one byte per
//!   range of [`ranges_of`] its size, set once that range is verified and on disk (the data is
//!   synced before its byte is written). A fetch killed at any point resumes with the ranges
//!   whose byte is set; at the end the whole part is hashed against its root before it is
//!   renamed into place.
//! - `manifests/<id>.json`: manifests, checked against their id when read.
//! - `cards/<id>.card`: model cards (signed by their creators), opened when read: the first
//!   card of a model stays, and only a later one by the same creator replaces it.
//!
//! The store holds at most `cap` bytes (`--cache-gib`): before a fetch starts, the least
//! recently used complete parts that are not pinned (being served) are deleted to make room;
//! when that cannot make room, the fetch is refused with [`StoreError::Full`]. A write that
//! fails (a full disk) leaves the `.have` file naming only ranges that are on disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use libp2p::PeerId;
use web_node::model::card::ModelCard;
use web_node::model::manifest::{is_hex_digest, PartRef};
use web_node::model::{Manifest, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::parts::{
    fetch_ranges, ranges_of, FetchError, FetchReport, HeldPart, PartSource, PartTraffic, RecentParts, MAX_RANGE,
};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("part store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The part does not fit under the store's cap even with every unpinned part evicted.
    #[error("the part store is full: {need} bytes needed, {free} free of {cap} (raise --cache-gib)")]
    Full {
        /// Bytes the part needs.
        need: u64,
        /// Bytes free after evicting all that may go.
        free: u64,
        /// The cap.
        cap: u64,
    },
    /// Fetching failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A model card that does not open (a bad signature, another model).
    #[error(transparent)]
    Card(#[from] web_node::model::card::CardError),
    /// The assembled part does not hash to its root (the disk corrupted a range after it was
    /// verified); it was deleted.
    #[error("part {root} was corrupted on disk after its ranges were verified; deleted")]
    Corrupt {
        /// Its root.
        root: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A complete part on disk.
struct Entry {
    size: u64,
    /// Larger is more recent.
    used: u64,
}

#[derive(Default)]
struct State {
    complete: HashMap<String, Entry>,
    /// Bytes reserved by fetches in progress, by root.
    fetching: HashMap<String, u64>,
    /// Roots never evicted (parts this node serves).
    pinned: std::collections::HashSet<String>,
    clock: u64,
    held: RecentParts,
    /// Complete parts answered from their files (a handle and a tree each), for seeding.
    seeding: HashMap<String, Arc<HeldPart>>,
    manifests: HashMap<ModelId, Bytes>,
    /// Signed cards by model, with their creator and signing time.
    cards: HashMap<ModelId, (Bytes, PeerId, u64)>,
}

/// What one [`PartStore::fetch`] did.
#[derive(Clone, Debug, Default)]
pub struct FetchOutcome {
    /// Bytes already verified on disk before this fetch (resumed, not fetched again).
    pub resumed: u64,
    /// Verified bytes received now, from each peer, and the peers banned.
    pub report: FetchReport,
}

impl FetchOutcome {
    /// Bytes received in this fetch.
    pub fn fetched(&self) -> u64 {
        self.report.from.iter().map(|(_, n)| n).sum()
    }
}

/// The store: see the module documentation.
pub struct PartStore {
    parts: PathBuf,
    manifests: PathBuf,
    cards: PathBuf,
    cap: u64,
    traffic: Arc<PartTraffic>,
    state: Mutex<State>,
}

impl PartStore {
    /// Opens (or creates) the store in `dir`, holding at most `cap` bytes of parts. Lists the
    /// complete parts (their age from their modification times) and reads the manifests and
    /// cards, dropping any that does not match its name (or whose signature fails).
    pub fn open(dir: &Path, cap: u64) -> Result<PartStore, StoreError> {
        let (parts, manifests, cards) = (dir.join("parts"), dir.join("manifests"), dir.join("cards"));
        for d in [&parts, &manifests, &cards] {
            fs::create_dir_all(d).map_err(io(d))?;
        }
        let mut state = State::default();
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in fs::read_dir(&parts).map_err(io(&parts))? {
            let e = e.map_err(io(&parts))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_hex_digest(&name) {
                continue;
            }
            let meta = e.metadata().map_err(io(&e.path()))?;
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), name, meta.len()));
        }
        found.sort();
        for (_, root, size) in found {
            state.clock += 1;
            state.complete.insert(root, Entry { size, used: state.clock });
        }
        for e in fs::read_dir(&manifests).map_err(io(&manifests))? {
            let path = e.map_err(io(&manifests))?.path();
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).and_then(ModelId::from_hex) else {
                continue;
            };
            let json = fs::read(&path).map_err(io(&path))?;
            match Manifest::from_json(&json) {
                Ok(m) if m.id() == id => {
                    state.manifests.insert(id, Bytes::from(json));
                }
                _ => {
                    tracing::warn!("{} is not the manifest of its id; deleted", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for e in fs::read_dir(&cards).map_err(io(&cards))? {
            let path = e.map_err(io(&cards))?.path();
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).and_then(ModelId::from_hex) else {
                continue;
            };
            let bytes = fs::read(&path).map_err(io(&path))?;
            match ModelCard::open(&bytes, &id) {
                Ok((card, creator)) => {
                    state.cards.insert(id, (Bytes::from(bytes), creator, card.signed_at));
                }
                Err(e) => {
                    tracing::warn!("{}: {e}; deleted", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(PartStore { parts, manifests, cards, cap, traffic: Arc::default(), state: Mutex::new(state) })
    }

    /// This node's part traffic: the store counts what it receives; the seeder
    /// ([`crate::seed::serve_parts`]) what is sent.
    pub fn traffic(&self) -> Arc<PartTraffic> {
        self.traffic.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `manifest` under its id.
    pub fn add_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let id = manifest.id();
        let json = serde_json::to_vec(manifest).unwrap_or_default();
        let path = self.manifests.join(format!("{}.json", id.to_hex()));
        write_atomically(&path, &json)?;
        self.state().manifests.insert(id, Bytes::from(json));
        Ok(())
    }

    /// Keeps the signed card of model `id` once it opens ([`ModelCard::open`]). The first card
    /// of a model stays; only a card its creator signed later replaces it (relabelling).
    /// Returns whether `bytes` is now the model's card.
    pub fn add_card(&self, id: &ModelId, bytes: &[u8]) -> Result<bool, StoreError> {
        let (card, creator) = ModelCard::open(bytes, id)?;
        if let Some((_, held_by, at)) = self.state().cards.get(id) {
            if *held_by != creator || *at >= card.signed_at {
                return Ok(false);
            }
        }
        let path = self.cards.join(format!("{}.card", id.to_hex()));
        write_atomically(&path, bytes)?;
        self.state().cards.insert(*id, (Bytes::copy_from_slice(bytes), creator, card.signed_at));
        Ok(true)
    }

    /// The stored manifest of `id`.
    pub fn manifest_of(&self, id: &ModelId) -> Option<Manifest> {
        let json = self.state().manifests.get(id).cloned()?;
        Manifest::from_json(&json).ok()
    }

    /// Roots of the complete parts held, and ids of the manifests held.
    pub fn contents(&self) -> (Vec<String>, Vec<ModelId>) {
        let s = self.state();
        (s.complete.keys().cloned().collect(), s.manifests.keys().copied().collect())
    }

    /// Never evicts these parts (the ones this node serves).
    pub fn pin(&self, roots: impl IntoIterator<Item = String>) {
        self.state().pinned.extend(roots);
    }

    /// Bytes of complete parts on disk.
    pub fn used(&self) -> u64 {
        self.state().complete.values().map(|e| e.size).sum()
    }

    /// The file of the complete part `root`, if the store holds it (not checked: see
    /// [`PartStore::load`]).
    pub fn part_path(&self, root: &str) -> Option<PathBuf> {
        self.state().complete.contains_key(root).then(|| self.path(root, ""))
    }

    fn path(&self, root: &str, ext: &str) -> PathBuf {
        self.parts.join(format!("{root}{ext}"))
    }

    /// The complete part `root`, read and hashed (or from memory); `None` if it is not held.
    /// A part that does not hash to its root is deleted (and `None`).
    pub fn load(&self, root: &str) -> Result<Option<Arc<HeldPart>>, StoreError> {
        {
            let mut s = self.state();
            if !s.complete.contains_key(root) {
                return Ok(None);
            }
            s.clock += 1;
            let now = s.clock;
            if let Some(e) = s.complete.get_mut(root) {
                e.used = now;
            }
            if let Some(p) = s.held.get(root) {
                return Ok(Some(p));
            }
        }
        let path = self.path(root, "");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.state().complete.remove(root);
                return Ok(None);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let part = Arc::new(HeldPart::new(Bytes::from(data)));
        if part.root().to_hex() != root {
            tracing::warn!("stored part {root} is corrupted; deleted (it will be fetched again)");
            let _ = fs::remove_file(&path);
            self.state().complete.remove(root);
            return Ok(None);
        }
        self.state().held.insert(root, part.clone());
        Ok(Some(part))
    }

    /// A complete part to answer others' requests from: its file and the tree built from it
    /// (read and hashed once, then kept: 1/256 of the part), so that seeding many large
    /// parts holds none of them in memory. A part that fails its root is deleted.
    fn seed(&self, root: &str) -> Result<Option<Arc<HeldPart>>, StoreError> {
        {
            let s = self.state();
            if !s.complete.contains_key(root) {
                return Ok(None);
            }
            if let Some(p) = s.seeding.get(root) {
                return Ok(Some(p.clone()));
            }
        }
        let path = self.path(root, "");
        let opened = File::open(&path).and_then(|mut f| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut data).map(|_| (f, data))
        });
        let (file, data) = match opened {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.state().complete.remove(root);
                return Ok(None);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let part = Arc::new(HeldPart::in_file(file, &data));
        if part.root().to_hex() != root {
            tracing::warn!("stored part {root} is corrupted; deleted (it will be fetched again)");
            let _ = fs::remove_file(&path);
            self.state().complete.remove(root);
            return Ok(None);
        }
        self.state().seeding.insert(root.to_string(), part.clone());
        Ok(Some(part))
    }

    /// Ranges of `part` still missing on disk (all of them when nothing is; none when it is
    /// complete).
    pub fn missing(&self, part: &PartRef) -> Vec<Range<u64>> {
        if self.state().complete.contains_key(&part.root) {
            return Vec::new();
        }
        let have = fs::read(self.path(&part.root, ".have")).unwrap_or_default();
        ranges_of(part.size).into_iter().enumerate().filter(|(i, _)| have.get(*i) != Some(&1)).map(|(_, r)| r).collect()
    }

    /// Makes room for `size` more bytes, evicting least recently used unpinned parts.
    fn reserve(&self, root: &str, size: u64) -> Result<(), StoreError> {
        let mut s = self.state();
        loop {
            let used: u64 = s.complete.values().map(|e| e.size).sum::<u64>() + s.fetching.values().sum::<u64>();
            if used + size <= self.cap {
                s.fetching.insert(root.to_string(), size);
                return Ok(());
            }
            let victim = s
                .complete
                .iter()
                .filter(|(r, _)| !s.pinned.contains(*r))
                .min_by_key(|(_, e)| e.used)
                .map(|(r, _)| r.clone());
            let Some(victim) = victim else {
                return Err(StoreError::Full { need: size, free: self.cap.saturating_sub(used), cap: self.cap });
            };
            tracing::info!("evicting part {victim} from the store (least recently used)");
            let path = self.path(&victim, "");
            fs::remove_file(&path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(io(&path))?;
            s.complete.remove(&victim);
            s.held.remove(&victim);
            s.seeding.remove(&victim);
        }
    }

    /// Fetches what is missing of `part` from `peers` (up to `parallel` ranges at once) onto
    /// disk, resuming from the ranges already verified there, and checks the whole part
    /// against its root. Returns the verified part (at once when it is held already).
    pub async fn fetch(
        &self,
        node: &NodeHandle,
        peers: &[PeerId],
        part: &PartRef,
        parallel: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<(Arc<HeldPart>, FetchOutcome), StoreError> {
        if part.address().is_none() {
            return Err(FetchError::Invalid(web_node::model::verified::VerifyError::Local(format!(
                "root {:?} is not 64 hex digits",
                part.root
            )))
            .into());
        }
        if let Some(held) = self.load(&part.root)? {
            return Ok((held, FetchOutcome { resumed: part.size, report: FetchReport::default() }));
        }
        let todo = self.missing(part);
        let ranges = ranges_of(part.size);
        let resumed = part.size - todo.iter().map(|r| r.end - r.start).sum::<u64>();
        self.reserve(&part.root, part.size)?;
        let result = self.fetch_reserved(node, peers, part, todo, &ranges, parallel, resumed, &mut progress).await;
        self.state().fetching.remove(&part.root);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_reserved(
        &self,
        node: &NodeHandle,
        peers: &[PeerId],
        part: &PartRef,
        todo: Vec<Range<u64>>,
        ranges: &[Range<u64>],
        parallel: usize,
        resumed: u64,
        progress: &mut impl FnMut(u64),
    ) -> Result<(Arc<HeldPart>, FetchOutcome), StoreError> {
        let (data_path, have_path) = (self.path(&part.root, ".partial"), self.path(&part.root, ".have"));
        let data = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(io(&data_path))?;
        data.set_len(part.size).map_err(io(&data_path))?;
        let have =
            OpenOptions::new().create(true).truncate(false).write(true).open(&have_path).map_err(io(&have_path))?;
        have.set_len(ranges.len() as u64).map_err(io(&have_path))?;
        let mut done = resumed;
        progress(done);
        let report = fetch_ranges(node, peers, part, todo, parallel, |range, bytes| {
            data.write_all_at(bytes, range.start).and_then(|()| data.sync_data()).map_err(|e| e.to_string())?;
            have.write_all_at(&[1], range.start / MAX_RANGE).map_err(|e| e.to_string())?;
            done += bytes.len() as u64;
            self.traffic.received.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            progress(done);
            Ok(())
        })
        .await?;
        drop((data, have));
        // The ranges were verified on arrival; hashing the whole part once more catches a
        // disk that corrupted one since (or a `.have` byte set for a range never written).
        let bytes = fs::read(&data_path).map_err(io(&data_path))?;
        let held = Arc::new(HeldPart::new(Bytes::from(bytes)));
        if held.root().to_hex() != part.root {
            let _ = fs::remove_file(&data_path);
            let _ = fs::remove_file(&have_path);
            return Err(StoreError::Corrupt { root: part.root.clone() });
        }
        let done_path = self.path(&part.root, "");
        fs::rename(&data_path, &done_path).map_err(io(&done_path))?;
        sync_dir(&self.parts);
        let _ = fs::remove_file(&have_path);
        let mut s = self.state();
        s.clock += 1;
        let used = s.clock;
        s.complete.insert(part.root.clone(), Entry { size: part.size, used });
        s.held.insert(&part.root, held.clone());
        Ok((held, FetchOutcome { resumed, report }))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves the old
/// file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Syncs a directory's entries (a rename in it) to disk; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl PartSource for PartStore {
    fn has(&self, root: &str) -> bool {
        self.state().complete.contains_key(root)
    }

    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        crate::seed::blocking(|| self.seed(root)).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        })
    }

    fn manifest(&self, id: &ModelId) -> Option<Bytes> {
        self.state().manifests.get(id).cloned()
    }

    fn models(&self) -> Vec<ModelId> {
        self.state().manifests.keys().copied().collect()
    }

    fn card(&self, id: &ModelId) -> Option<Bytes> {
        self.state().cards.get(id).map(|(b, _, _)| b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use web_node::model::verified::PartTree;

    /// Writes `data` into the store's directory as a complete part; returns its root.
    fn put(dir: &Path, data: &[u8]) -> String {
        let root = PartTree::new(data).root().to_hex();
        fs::create_dir_all(dir.join("parts")).unwrap();
        fs::write(dir.join("parts").join(&root), data).unwrap();
        root
    }

    #[test]
    fn eviction_is_least_recently_used_spares_pinned_parts_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b) = (put(dir, &[1u8; 5000]), put(dir, &[2u8; 5000]));
        let store = PartStore::open(dir, 12_000).unwrap();
        assert_eq!(store.used(), 10_000);
        // `a` used last, `b` pinned: making room for 5000 more evicts `a` (the only one that
        // may go), and after that nothing can make room.
        assert!(store.load(&b).unwrap().is_some());
        assert!(store.load(&a).unwrap().is_some());
        store.pin([b.clone()]);
        store.reserve("c", 5000).unwrap();
        assert!(!dir.join("parts").join(&a).exists() && dir.join("parts").join(&b).exists());
        let e = store.reserve("d", 5000).unwrap_err().to_string();
        assert!(e.contains("full") && e.contains("--cache-gib"), "{e}");
        // Unpinned and older: evicted first.
        let store = PartStore::open(dir, 12_000).unwrap();
        let c = put(dir, &[3u8; 5000]);
        let store2 = PartStore::open(dir, 12_000).unwrap();
        drop(store);
        assert!(store2.load(&c).unwrap().is_some());
        store2.reserve("e", 5000).unwrap();
        assert!(!dir.join("parts").join(&b).exists() && dir.join("parts").join(&c).exists());

        // A flipped byte on disk: not served, deleted.
        let mut bytes = fs::read(dir.join("parts").join(&c)).unwrap();
        bytes[10] ^= 1;
        fs::write(dir.join("parts").join(&c), bytes).unwrap();
        let store = PartStore::open(dir, 12_000).unwrap();
        assert!(store.has(&c));
        assert!(store.load(&c).unwrap().is_none());
        assert!(!store.has(&c) && !dir.join("parts").join(&c).exists());
    }

    #[test]
    fn a_manifest_that_is_not_its_ids_is_dropped_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("manifests")).unwrap();
        let bogus = dir.join("manifests").join(format!("{}.json", "ab".repeat(32)));
        fs::write(&bogus, b"{}").unwrap();
        let store = PartStore::open(dir, 1 << 20).unwrap();
        assert!(store.contents().1.is_empty());
        assert!(!bogus.exists());
    }

    fn card(id: &ModelId, name: &str, at: u64) -> web_node::model::card::ModelCard {
        web_node::model::card::ModelCard {
            version: web_node::model::card::CARD_VERSION,
            model: id.to_hex(),
            name: name.into(),
            tags: vec![],
            license: None,
            languages: vec![],
            payout: None,
            parameters: 1,
            quantization: "q8_0 100%".into(),
            measured: None,
            signed_at: at,
        }
    }

    #[test]
    fn the_first_card_stays_unless_its_creator_signs_a_later_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (creator, other) =
            (libp2p::identity::Keypair::generate_ed25519(), libp2p::identity::Keypair::generate_ed25519());
        let id = ModelId([3; 32]);
        let store = PartStore::open(dir, 1 << 20).unwrap();
        let first = card(&id, "first", 10).sign(&creator).unwrap();
        assert!(store.add_card(&id, &first).unwrap());
        // Another key's card of the same model, even a later one, does not replace it.
        assert!(!store.add_card(&id, &card(&id, "squatter", 20).sign(&other).unwrap()).unwrap());
        // An older card by the creator does not either; a later one does (relabelling).
        assert!(!store.add_card(&id, &card(&id, "older", 5).sign(&creator).unwrap()).unwrap());
        let relabelled = card(&id, "relabelled", 30).sign(&creator).unwrap();
        assert!(store.add_card(&id, &relabelled).unwrap());
        assert_eq!(store.card(&id).as_deref(), Some(&relabelled[..]));
        // A card about another model is refused.
        assert!(store.add_card(&ModelId([4; 32]), &relabelled).is_err());
        // Kept across a restart; a card file with a flipped byte is deleted on open.
        let path = dir.join("cards").join(format!("{}.card", id.to_hex()));
        assert_eq!(PartStore::open(dir, 1 << 20).unwrap().card(&id).as_deref(), Some(&relabelled[..]));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(PartStore::open(dir, 1 << 20).unwrap().card(&id).is_none());
        assert!(!path.exists());
    }
}
