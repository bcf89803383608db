//! Publishing from the tab: a creator picks a GGUF file; the tab reads it, cuts it into parts
//! and hashes them in wasm (the model id is the hash of the manifest built from them), signs a
//! model card with the browser's creator key ([`creator_key`]) and, where the tab has WebGPU,
//! the time block 0 took per token on its GPU; holds every part and seeds them: a circuit address on the
//! relay, and provider records for the parts, the model and the seeders' key. Relays then
//! fetch it (`ait relay --model ID`), and relays that pin this creator keep copies.
//!
//! The file is read a part at a time: its header first, then each part's tensors where they
//! lie, cut into the part and hashed once (the root the tab holds it under is the one the
//! manifest lists). The tab holds every part in memory to seed it (a wasm page has 4 GiB at
//! most), and cutting and hashing run on the page's thread between short pauses, so the page
//! stays responsive between parts.
//!
//! Below the form, the [`creator`] view shows what each model of the swarm earned its creator.

pub mod creator;
pub mod view;

pub use view::PublishView;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use js_sys::Uint8Array;
use leptos::prelude::*;
use leptos::task::spawn_local;
use libp2p::identity::Keypair;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_node::engine::gpu::GpuBackend;
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::card::{Labels, Measured, ModelCard};
use web_node::model::gguf::{GgufFile, GgufModel, TensorInfo};
use web_node::model::parts::{cut, part_tensors, ManifestFromParts, Part};
use web_node::model::{ModelError, ModelId};
use web_node::net::serve::{measure_ms_per_block, ServeError};

use crate::error::AppError;
use crate::http::browser_err;
use crate::net::Net;
use crate::parts;
use crate::seed::serve::{has_webgpu, open_gpu};
use crate::swarm::Swarm;

/// Bytes read first for the file's header (metadata, tokenizer, tensor index); 8 times more
/// while that is not enough, up to [`HEADER_MAX`].
const HEADER_READ: u64 = 16 << 20;

/// The longest header read: far more than any vocabulary's metadata.
const HEADER_MAX: u64 = 1 << 30;

/// The `localStorage` key of the creator's key.
const CREATOR_KEY: &str = "ait-creator-key";

/// The key this browser signs model cards with: kept in `localStorage`, so the creator (the
/// peer id relays pin by, `--pin-creator`) stays the same across visits. It only signs cards;
/// the tab's node has a fresh key per page load, so two tabs never share a peer id.
pub fn creator_key() -> Keypair {
    let storage = web_sys::window().and_then(|w| w.local_storage().ok().flatten());
    let stored = storage.as_ref().and_then(|s| s.get_item(CREATOR_KEY).ok().flatten());
    if let Some(key) = stored.and_then(|h| hex::decode(h).ok()).and_then(|b| Keypair::from_protobuf_encoding(&b).ok()) {
        return key;
    }
    let key = Keypair::generate_ed25519();
    match (storage, key.to_protobuf_encoding()) {
        (Some(s), Ok(bytes)) => {
            if let Err(e) = s.set_item(CREATOR_KEY, &hex::encode(bytes)) {
                tracing::warn!("cannot keep the creator key: {}", crate::http::js_err(e));
            }
        }
        _ => tracing::warn!("no localStorage: the creator key lasts this visit only"),
    }
    key
}

/// Where publishing is. `Display` is the `data-state` of `#publish-state`: `idle`, `working`,
/// `seeding` or `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishState {
    /// Nothing published yet.
    Idle,
    /// Reading, cutting, hashing, announcing.
    Working,
    /// The model is published and this tab seeds it.
    Seeding,
    /// Publishing failed (the message says why).
    Failed,
}

impl fmt::Display for PublishState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishState::Idle => "idle",
            PublishState::Working => "working",
            PublishState::Seeding => "seeding",
            PublishState::Failed => "error",
        })
    }
}

/// The Publish panel's state and its action. Copy: provided as context to its components.
#[derive(Clone, Copy)]
pub struct Publisher {
    /// Where publishing is.
    pub state: RwSignal<PublishState>,
    /// Progress, result or error line.
    pub message: RwSignal<String>,
    /// Work done and to do, for the progress bar.
    pub progress: RwSignal<(u64, u64)>,
    /// The published model's id (hex).
    pub model: RwSignal<Option<String>>,
    swarm: Swarm,
}

/// What [`publish`] made.
pub struct Published {
    /// The model id.
    pub id: ModelId,
    /// Its parts (head and blocks).
    pub parts: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The card's name.
    pub name: String,
}

impl Publisher {
    /// Nothing published.
    pub fn new(swarm: Swarm) -> Publisher {
        Publisher {
            state: RwSignal::new(PublishState::Idle),
            message: RwSignal::new(String::new()),
            progress: RwSignal::new((0, 0)),
            model: RwSignal::new(None),
            swarm,
        }
    }

    /// Publishes `file` with `labels` (once at a time).
    pub fn start(self, file: web_sys::File, labels: Labels) {
        if self.state.get_untracked() == PublishState::Working {
            return;
        }
        let Some(net) = self.swarm.net() else {
            self.message.set(AppError::NotConnected.to_string());
            return;
        };
        self.state.set(PublishState::Working);
        spawn_local(async move {
            let step = move |line: String, done: u64, total: u64| {
                self.message.set(line);
                self.progress.set((done, total));
            };
            match publish(&net, file, labels, &step).await {
                Ok(p) => {
                    self.model.set(Some(p.id.to_hex()));
                    self.message.set(format!(
                        "Published {:?} as model {}: seeding its {} parts ({:.1} MB) from this tab.",
                        p.name,
                        p.id.to_hex(),
                        p.parts,
                        p.bytes as f64 / 1e6
                    ));
                    self.state.set(PublishState::Seeding);
                }
                Err(e) => {
                    self.message.set(e.to_string());
                    self.state.set(PublishState::Failed);
                }
            }
        });
    }
}

/// Progress of [`publish`]: a line, work done, work to do.
pub type Step<'a> = &'a dyn Fn(String, u64, u64);

/// Reads `file` a part at a time, cuts and hashes each part once (holding it to seed), signs
/// the model's card and seeds it from this tab.
pub async fn publish(net: &Net, file: web_sys::File, labels: Labels, step: Step<'_>) -> Result<Published, AppError> {
    let name = file.name();
    step(format!("Reading the header of {name}…"), 0, 1);
    let header = read_header(&file).await?;
    let n = header.config().n_layers;
    let all: Vec<Part> = std::iter::once(Part::Head).chain((0..n).map(Part::Block)).collect();
    // What the parts read (a model-wide tensor such as the RoPE factors, once per part).
    let mut to_read = 0;
    for part in &all {
        let tensors = part_tensors(header.file(), n, *part).map_err(AppError::Publish)?;
        to_read += tensors.iter().filter_map(|t| t.size).sum::<u64>();
    }
    let (mut done, mut total) = (0u64, 0u64);
    let mut manifest: Option<ManifestFromParts> = None;
    let mut first_block = None;
    for (k, part) in all.iter().enumerate() {
        let mb = |b: u64| b as f64 / 1e6;
        let line = format!(
            "Reading, cutting and hashing {part} ({}/{}): {:.1} / {:.1} MB",
            k + 1,
            all.len(),
            mb(done),
            mb(to_read)
        );
        step(line, done, to_read);
        pause().await;
        let mut data = HashMap::new();
        for t in part_tensors(header.file(), n, *part).map_err(AppError::Publish)? {
            let size = t.size.ok_or_else(|| {
                AppError::Publish(ModelError::UnsupportedType { tensor: t.name.clone(), dtype: t.dtype.name() })
            })?;
            data.insert(t.name.clone(), read_range(&file, t.offset, size).await?);
            done += size;
        }
        let missing = |t: &TensorInfo| ModelError::MissingTensor(t.name.clone());
        let bytes = cut(header.file(), n, *part, |t| data.get(&t.name).cloned().ok_or_else(|| missing(t)));
        let bytes = Bytes::from(bytes.map_err(AppError::Publish)?);
        drop(data);
        total += bytes.len() as u64;
        let root = net.parts.hold(bytes.clone());
        match (&mut manifest, part) {
            (None, Part::Head) => manifest = Some(ManifestFromParts::head(bytes, root).map_err(AppError::Publish)?),
            (Some(m), Part::Block(i)) => {
                if *i == 0 {
                    first_block = Some(bytes.clone());
                }
                m.block(bytes, root).map_err(AppError::Publish)?;
            }
            _ => return Err(AppError::NoPart(format!("{part} out of order"))),
        }
    }
    let manifest = manifest.ok_or_else(|| AppError::NoPart("head".into()))?.finish().map_err(AppError::Publish)?;
    net.parts.hold_manifest(&manifest);
    let id = manifest.id();
    let now = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let measured = match first_block {
        Some(block) if has_webgpu() => {
            step("Measuring block 0 on this tab's GPU…".into(), 1, 1);
            measure(block).await.map_err(|e| tracing::warn!("the card carries no speed: {e}")).ok()
        }
        _ => None,
    };
    let card = ModelCard::for_gguf(&header, &manifest, &labels, measured, now).map_err(AppError::Card)?;
    drop(header);
    let signed = card.sign(&creator_key()).map_err(AppError::Card)?;
    net.parts.hold_card(id, Bytes::from(signed));
    step("Taking a circuit address on the relay and announcing the parts…".into(), 1, 1);
    net.reserve().await?;
    parts::announce(&net.handle, &net.parts, &id).await?;
    Ok(Published { id, parts: all.len(), bytes: total, name: card.name })
}

/// The file's header (metadata and tensor index) from its first bytes: 16 MB, or more when
/// the header is longer (a file that does not parse for another reason is refused at once).
async fn read_header(file: &web_sys::File) -> Result<GgufModel, AppError> {
    let len = file.size() as u64;
    let longest = len.min(HEADER_MAX);
    let mut prefix = HEADER_READ.min(longest);
    loop {
        let bytes = read_range(file, 0, prefix).await?;
        let e = match GgufFile::parse_prefix(bytes, len).and_then(GgufModel::from_file) {
            Ok(model) => return Ok(model),
            Err(e) => e,
        };
        // Only what a longer prefix can cure: the header (or a tensor the configuration reads,
        // such as RoPE factors) runs past it, but not past the file (a tensor beyond the end
        // is a broken file); and no header is longer than HEADER_MAX.
        let cured = match &e {
            ModelError::Truncated { offset, needed, .. } => offset.saturating_add(*needed) <= len,
            ModelError::Count { .. } => true,
            _ => false,
        };
        if !cured || prefix >= longest {
            return Err(AppError::Publish(e));
        }
        prefix = (prefix * 8).min(longest);
    }
}

/// Bytes `[start, start + len)` of `file`.
async fn read_range(file: &web_sys::File, start: u64, len: u64) -> Result<Bytes, AppError> {
    let blob = file.slice_with_f64_and_f64(start as f64, (start + len) as f64).map_err(browser_err)?;
    let buf = JsFuture::from(blob.array_buffer()).await.map_err(browser_err)?;
    let array = Uint8Array::new(buf.unchecked_ref());
    if array.length() as u64 != len {
        let what = format!("{} bytes read at {start} of {}, {len} expected", array.length(), file.name());
        return Err(AppError::Browser(what));
    }
    Ok(Bytes::from(array.to_vec()))
}

/// The decode time of one token through block 0 (its part, `block`) on this tab's GPU, as a
/// server measures its blocks ([`measure_ms_per_block`]) and `ait publish` does natively.
async fn measure(block: Bytes) -> Result<Measured, AppError> {
    let (ctx, adapter) = open_gpu().await?;
    let model = GgufModel::from_bytes(block).map_err(AppError::Publish)?;
    let layers = vec![model.load_layer(0).map_err(AppError::Publish)?];
    let backend = GpuBackend::new(ctx, model.config().clone(), 0..1, &layers)
        .map_err(|source| AppError::GpuUpload { adapter: adapter.name, blocks: 0..1, source })?;
    let mut executor = BlockExecutor::new(backend, ExecutorConfig::default());
    let ms_per_block = measure_ms_per_block(&mut executor).await.map_err(ServeError::Measure)?;
    Ok(Measured { ms_per_block, backend: executor.backend().name().to_string() })
}

/// Lets the page draw before the next stretch of work.
async fn pause() {
    futures_timer::Delay::new(Duration::from_millis(1)).await;
}
