//! A model file's manifest, computed once and kept in the relay's data directory.
//!
//! Hashing a whole model reads every weight; a relay that restarts, or several relays started
//! from one file, should not do it again. The manifest is stored under `manifests/` keyed by
//! the file's canonical path, size and modification time (for a Hugging Face directory: its
//! files' total size and latest modification). On a hit the relay checks only what it uses
//! ([`Manifest::check_file`]: the blocks it serves, and the head it runs for the API and
//! hands to browsers); a part that no longer matches sends it back to hashing everything.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use web_node::model::{Manifest, ModelFile};

/// How [`manifest_for`] got the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Hashed from the whole file (no cache entry, a changed file, or a part that no longer
    /// matched its entry).
    Computed,
    /// From the cache, after checking these blocks (and the head).
    Cached {
        /// The blocks checked.
        checked: Range<usize>,
    },
}

/// One cache entry.
#[derive(Serialize, Deserialize)]
struct Entry {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    manifest: Manifest,
}

/// Size and modification time of `path` (a file, or a directory's files, not recursing).
fn stamp(path: &Path) -> anyhow::Result<(u64, u128)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let files = match meta.is_dir() {
        true => std::fs::read_dir(path)?
            .map(|e| e.and_then(|e| e.metadata()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|m| m.is_file())
            .collect(),
        false => vec![meta],
    };
    let mut size = 0u64;
    let mut mtime = 0u128;
    for m in files {
        size = size.saturating_add(m.len());
        let t = m.modified()?.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        mtime = mtime.max(t);
    }
    Ok((size, mtime))
}

/// The cache file for the model at `canonical`.
fn entry_path(dir: &Path, canonical: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()));
    dir.join("manifests").join(format!("{}.json", &key[..32]))
}

/// The manifest of `file` (opened from `path`), from the cache in `data_dir` when its entry
/// matches the file's size and modification time and the parts this relay uses (`blocks`,
/// and the head when `head`) still hash to it; otherwise hashed from the whole file and
/// stored. A cache that cannot be written is logged, not fatal.
pub fn manifest_for(
    path: &Path,
    file: &ModelFile,
    data_dir: &Path,
    blocks: Range<usize>,
    head: bool,
) -> anyhow::Result<(Manifest, Source)> {
    let canonical = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    let (size, mtime_ns) = stamp(&canonical)?;
    let at = entry_path(data_dir, &canonical);
    let cached = std::fs::read(&at).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok());
    if let Some(e) = cached.filter(|e| e.path == canonical && e.size == size && e.mtime_ns == mtime_ns) {
        match e.manifest.check_file(file, blocks.clone(), head) {
            Ok(()) => return Ok((e.manifest, Source::Cached { checked: blocks })),
            Err(err) => {
                tracing::warn!("{}: cached manifest no longer matches ({err}); hashing the model", path.display())
            }
        }
    }
    let manifest = Manifest::of_file(file).context("hashing the model")?;
    let entry = Entry { path: canonical, size, mtime_ns, manifest };
    if let Err(e) = store(&at, &entry) {
        tracing::warn!("cannot cache the manifest in {}: {e:#}", at.display());
    }
    Ok((entry.manifest, Source::Computed))
}

/// Writes `entry` to `at` whole or not at all.
fn store(at: &Path, entry: &Entry) -> anyhow::Result<()> {
    let dir = at.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir)?;
    let tmp = at.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(entry)?)?;
    std::fs::rename(&tmp, at)?;
    Ok(())
}
