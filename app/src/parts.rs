//! The tab's model parts, torrent-style: fetched over libp2p (`/ait/parts/1`) from the relays
//! and tabs that seed them, several ranges at once, each range checked against the part's root
//! on arrival ([`web_node::net::parts::fetch_ranges`]); HTTP from the page's relay only as the
//! fallback; kept in Cache Storage so a reload fetches nothing again; and seeded: the tab
//! answers other nodes' part requests from the parts it holds ([`TabParts`]), and once it has a
//! circuit address (it seeds blocks) it provides their roots in the DHT, so tabs and relays
//! find it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use wasm_bindgen_futures::spawn_local;
use web_node::model::manifest::PartRef;
use web_node::model::verified::PartRoot;
use web_node::model::{Manifest, ModelId};
use web_node::net::directory::tail_chars;
use web_node::net::node::NodeHandle;
use web_node::net::parts::{fetch_ranges, ranges_of, HeldPart, PartSource, PartStreams, PartTraffic, SeedLimits};
use web_node::net::record::{model_key, part_key, seeders_key};
use web_node::net::seeders::holders;
use web_time::Instant;

use crate::error::AppError;
use crate::http;

/// Seeders one part is fetched from at once (`fetch_ranges`' `parallel`: up to
/// [`PIPELINE`](web_node::net::parts::PIPELINE) times this many ranges at once).
const PARALLEL: usize = 4;

/// The parts (and manifests) this tab holds, verified, in memory: what it answers other
/// nodes' requests from. Parts are added as the tab loads them and stay for the page's life.
#[derive(Default)]
pub struct TabParts {
    held: Mutex<HashMap<String, Arc<HeldPart>>>,
    manifests: Mutex<HashMap<ModelId, Bytes>>,
    cards: Mutex<HashMap<ModelId, Bytes>>,
    /// Part bytes sent to and received from other nodes (the tab's seeding ratio).
    pub traffic: Arc<PartTraffic>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TabParts {
    /// Holds a verified part (hashing it into its tree once); returns its root.
    pub fn hold(&self, bytes: Bytes) -> PartRoot {
        let part = HeldPart::new(bytes);
        let root = part.root();
        lock(&self.held).insert(root.to_hex(), Arc::new(part));
        root
    }

    /// Holds a model's manifest.
    pub fn hold_manifest(&self, manifest: &Manifest) {
        let json = Bytes::from(serde_json::to_vec(manifest).unwrap_or_default());
        lock(&self.manifests).insert(manifest.id(), json);
    }

    /// Holds the signed card of model `id` (the tab's own, when it published the model).
    pub fn hold_card(&self, id: ModelId, signed: Bytes) {
        lock(&self.cards).insert(id, signed);
    }

    /// The roots of the parts held.
    pub fn roots(&self) -> Vec<String> {
        lock(&self.held).keys().cloned().collect()
    }
}

impl PartSource for TabParts {
    fn part(&self, root: &str) -> Option<Arc<HeldPart>> {
        lock(&self.held).get(root).cloned()
    }

    fn has(&self, root: &str) -> bool {
        lock(&self.held).contains_key(root)
    }

    fn manifest(&self, id: &ModelId) -> Option<Bytes> {
        lock(&self.manifests).get(id).cloned()
    }

    fn models(&self) -> Vec<ModelId> {
        lock(&self.manifests).keys().copied().collect()
    }

    fn card(&self, id: &ModelId) -> Option<Bytes> {
        lock(&self.cards).get(id).cloned()
    }
}

/// How much a tab gives: a few peers at once (it shares the page with chat and compute). A
/// relay fetching 4 parts at once asks [`web_node::net::parts::PIPELINE`] ranges of each, so
/// a peer gets 8 streams.
fn tab_limits() -> SeedLimits {
    SeedLimits { max_streams: 24, max_per_peer: 8, max_peers: 8, bytes_per_sec: None }
}

/// Answers `/ait/parts/1` on the tab's node from `parts`, for the page's life.
pub fn serve(handle: &NodeHandle, parts: Arc<TabParts>) {
    let traffic = parts.traffic.clone();
    match PartStreams::new(&mut handle.control(), parts, tab_limits()) {
        Ok(streams) => spawn_local(streams.with_traffic(traffic).for_each(|task| {
            spawn_local(task);
            std::future::ready(())
        })),
        Err(_) => tracing::warn!("the parts protocol is already registered"),
    }
}

/// Provides in the DHT the roots of every part the tab holds, model `id` (whose manifest it
/// holds) and the seeders' key: other nodes then find and fetch them from this tab (and list
/// its models). Call once the tab has a circuit address (provider records carry the
/// provider's addresses).
pub async fn announce(handle: &NodeHandle, parts: &TabParts, id: &ModelId) -> Result<(), AppError> {
    let mut keys: Vec<_> = parts.roots().iter().map(|r| part_key(r)).collect();
    keys.push(model_key(id));
    keys.push(seeders_key());
    Ok(handle.provide(keys).await?)
}

/// Where a part's bytes came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Browser storage (fetched on an earlier visit).
    Stored,
    /// Other nodes over libp2p: the peers that sent verified ranges.
    Swarm(Vec<String>),
    /// The page's relay over HTTP (the fallback).
    Http,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Stored => f.write_str("browser storage"),
            Origin::Swarm(peers) => {
                let short: Vec<String> = peers.iter().map(|p| format!("…{}", tail_chars(p, 8))).collect();
                let s = if peers.len() == 1 { "" } else { "s" };
                write!(f, "the swarm ({} peer{s}: {})", peers.len(), short.join(", "))
            }
            Origin::Http => f.write_str("the relay over HTTP"),
        }
    }
}

/// Download progress with rate and time left, for the page.
pub struct Transfer {
    started: Instant,
}

impl Transfer {
    /// Starts timing.
    pub fn start() -> Transfer {
        Transfer { started: Instant::now() }
    }

    /// `12.3 / 45.6 MB, 7.8 MB/s, 4 s left`.
    pub fn line(&self, done: u64, total: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let left = if rate > 0.0 && total > done {
            format!(", {:.0} s left", (total - done) as f64 / rate)
        } else {
            String::new()
        };
        format!("{:.1} / {:.1} MB, {:.1} MB/s{left}", done as f64 / 1e6, total as f64 / 1e6, rate / 1e6)
    }
}

/// The bytes of part `r`: from browser storage (key `url`), else from the nodes that seed it
/// (`relay`, the page's relay, and the providers of its root), else from `url` over HTTP.
/// Bytes from the swarm are verified range by range; all are verified again by the caller
/// against the manifest. Reports `(done, total)` bytes.
pub async fn fetch(
    handle: &NodeHandle,
    relay: libp2p::PeerId,
    traffic: &PartTraffic,
    r: &PartRef,
    url: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Bytes, Origin), AppError> {
    if let Some(bytes) = http::stored_bytes(url).await {
        let n = bytes.len() as u64;
        progress(n, n);
        return Ok((Bytes::from(bytes), Origin::Stored));
    }
    match from_swarm(handle, relay, r, &mut progress).await {
        Ok((bytes, peers)) => {
            traffic.received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Ok((bytes, Origin::Swarm(peers)));
        }
        Err(e) => tracing::info!("part {} from the swarm: {e}; trying the relay over HTTP", r.root),
    }
    let bytes = http::download(url, progress).await?;
    Ok((Bytes::from(bytes), Origin::Http))
}

/// Why a part could not come from the swarm.
#[derive(Debug, thiserror::Error)]
enum SwarmError {
    #[error("no node answers that it holds it")]
    NoHolder,
    #[error(transparent)]
    Net(#[from] web_node::net::node::NetError),
    #[error(transparent)]
    Fetch(#[from] web_node::net::parts::FetchError),
    #[error("a part of {0} bytes is too large for this page")]
    TooLarge(u64),
}

async fn from_swarm(
    handle: &NodeHandle,
    relay: libp2p::PeerId,
    r: &PartRef,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(Bytes, Vec<String>), SwarmError> {
    let found = holders(handle, std::slice::from_ref(&r.root), &[relay]).await?;
    let peers = found.get(&r.root).cloned().unwrap_or_default();
    if peers.is_empty() {
        return Err(SwarmError::NoHolder);
    }
    let size = usize::try_from(r.size).map_err(|_| SwarmError::TooLarge(r.size))?;
    let mut out = vec![0u8; size];
    let mut done = 0u64;
    progress(0, r.size);
    let report = fetch_ranges(handle, &peers, r, ranges_of(r.size), PARALLEL, |range, bytes| {
        out[range.start as usize..range.end as usize].copy_from_slice(bytes);
        done += bytes.len() as u64;
        progress(done, r.size);
        Ok(())
    })
    .await?;
    if !report.banned.is_empty() {
        tracing::warn!("part {}: banned {:?} for sending data that failed verification", r.root, report.banned);
    }
    Ok((Bytes::from(out), report.from.iter().map(|(p, _)| p.to_string()).collect()))
}
