//! Starting to serve: open WebGPU, choose the blocks the swarm lacks, fetch and verify them
//! (from the swarm, [`crate::parts`]), upload them, reserve a circuit address on the relay,
//! seed the parts held, and run a
//! [`Service`](web_node::net::serve::Service) (the same assembly as a native server).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;
use futures::StreamExt;
use wasm_bindgen_futures::spawn_local;
use web_node::engine::gpu::{GpuBackend, GpuContext};
use web_node::model::{Manifest, ModelId};
use web_node::net::directory;
use web_node::net::parts::PartTraffic;
use web_node::net::routing::least_covered_span;
use web_node::net::serve::{parse_blocks, ServeLimits, Server, Service, Withdraw};
use web_time::Instant;

use crate::error::AppError;
use crate::net::{self, Net};
use crate::parts::{self, Transfer};
use crate::swarm::coverage;
use crate::wallet::Wallet;

use super::earn::Charging;

/// The adapter a tab would seed with.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// Adapter name.
    pub name: String,
    /// Largest storage buffer binding, bytes.
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
}

impl Adapter {
    /// The line shown before the switch is used.
    pub fn line(&self) -> String {
        format!(
            "{} — largest buffer {} MB, largest storage binding {} MB",
            self.name,
            self.max_buffer >> 20,
            self.max_binding >> 20
        )
    }
}

/// Whether this browser exposes WebGPU (`navigator.gpu` is present).
pub fn has_webgpu() -> bool {
    let Some(window) = web_sys::window() else {
        return false;
    };
    js_sys::Reflect::get(&window.navigator(), &"gpu".into()).map(|g| !g.is_undefined()).unwrap_or(false)
}

/// Opens WebGPU, or says why it cannot.
pub async fn open_gpu() -> Result<(Arc<GpuContext>, Adapter), AppError> {
    if !has_webgpu() {
        return Err(AppError::NoWebGpu(None));
    }
    let ctx = GpuContext::new().await.map_err(|e| AppError::NoWebGpu(Some(e)))?;
    let info = ctx.adapter_info();
    let l = ctx.limits();
    let name = if info.name.is_empty() { format!("{} ({})", info.device_type, info.backend) } else { info.name };
    let adapter =
        Adapter { name, max_binding: l.max_storage_buffer_binding_size as u64, max_buffer: l.max_buffer_size };
    Ok((ctx, adapter))
}

/// Bytes the weights of one block take, assuming at most 1 byte per weight.
fn block_bytes(m: &Manifest) -> u64 {
    let h = m.hidden as u64;
    let q = (m.n_heads * m.head_dim) as u64;
    let kv = (m.n_kv_heads * m.head_dim) as u64;
    h * q * 2 + h * kv * 2 + 3 * h * m.intermediate as u64
}

/// How many blocks fit the adapter. WebGPU does not say how much memory the adapter has: take
/// the largest buffer it allows (and at most a quarter of the machine's memory when the
/// browser tells it) as the budget; at most 10.
fn max_blocks(adapter: &Adapter, manifest: &Manifest) -> Result<usize, AppError> {
    let device_gib = web_sys::window()
        .and_then(|w| js_sys::Reflect::get(&w.navigator(), &"deviceMemory".into()).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or(4.0);
    let budget = adapter.max_buffer.min((device_gib * (1u64 << 30) as f64 / 4.0) as u64);
    match (budget / block_bytes(manifest).max(1)).min(10) as usize {
        0 => Err(AppError::TooLittleMemory { adapter: adapter.name.clone(), budget_mb: budget >> 20 }),
        n => Ok(n),
    }
}

/// Live numbers of a seeding tab.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Blocks served, `A..B`.
    pub blocks: String,
    /// The circuit address others dial.
    pub addr: String,
    /// Sessions served so far.
    pub sessions: u64,
    /// Sessions open now.
    pub active: usize,
    /// Tokens served so far.
    pub tokens: u64,
    /// Seconds since serving began.
    pub uptime_s: u64,
    /// Tokens per second since the last reading.
    pub tokens_per_s: f64,
    /// Where each block's bytes came from.
    pub origins: String,
    /// Part bytes sent to other nodes.
    pub sent: u64,
    /// Verified part bytes received from other nodes.
    pub received: u64,
}

/// A tab serving blocks. Dropping it (or [`Seeding::stop`]) withdraws the tab: the DHT
/// records stop, new sessions are refused, and the GPU memory is released once the open
/// sessions end.
pub struct Seeding {
    /// Blocks served.
    pub blocks: Range<usize>,
    /// The session server (stats, status).
    pub server: Arc<Server>,
    /// When serving began.
    pub started: Instant,
    /// The circuit address others dial.
    pub addr: String,
    /// Where each block's bytes came from.
    pub origins: String,
    /// Its gate, ledger and chain, when it charges.
    pub charging: Option<Arc<Charging>>,
    /// The tab's part traffic.
    traffic: Arc<PartTraffic>,
    /// Tokens served at the last reading, and when.
    last: (u64, Instant),
    withdraw: Withdraw,
}

impl Seeding {
    /// Withdraws the tab from the swarm.
    pub fn stop(self) {
        self.withdraw.now();
    }

    /// Reads the live numbers (throughput since the last reading).
    pub fn stats(&mut self) -> Stats {
        let tokens = self.server.stats.tokens.load(Ordering::Relaxed);
        let (sent, received) = self.traffic.totals();
        let (prev, at) = self.last;
        let dt = at.elapsed().as_secs_f64().max(1e-3);
        self.last = (tokens, Instant::now());
        Stats {
            blocks: format!("{}..{}", self.blocks.start, self.blocks.end),
            addr: self.addr.clone(),
            sessions: self.server.stats.sessions.load(Ordering::Relaxed),
            active: self.server.status().active_sessions,
            tokens,
            uptime_s: self.started.elapsed().as_secs(),
            tokens_per_s: tokens.saturating_sub(prev) as f64 / dt,
            origins: self.origins.clone(),
            sent,
            received,
        }
    }
}

/// Progress of [`start`], for the page: a line, and the bytes of a download done and in all
/// while one runs (for a progress bar).
pub type Progress<'a> = &'a dyn Fn(String, Option<(u64, u64)>);

/// Starts seeding model `id` on this tab: blocks `want` (`A..B` or `all`, from `?seed=`), or
/// the span the swarm covers least; with `charge`, for that price per layer-token paid to
/// that wallet ([`Charging`]).
pub async fn start(
    net: &Net,
    id: ModelId,
    want: Option<&str>,
    charge: Option<(Wallet, U256)>,
    progress: Progress<'_>,
) -> Result<Seeding, AppError> {
    progress("Opening WebGPU…".into(), None);
    let (ctx, adapter) = open_gpu().await?;
    let manifest: Manifest = net::manifest(net, &id).await?;
    let want = want.map(|s| parse_blocks(s, manifest.n_layers)).transpose()?;
    progress("Finding the blocks the swarm lacks…".into(), None);
    let cover = match want {
        Some(_) => vec![0; manifest.n_layers],
        None => {
            let servers = directory::list(&net.handle, Duration::from_secs(5)).await.unwrap_or_default();
            coverage(&servers, &id.to_hex(), manifest.n_layers)
        }
    };
    let blocks = least_covered_span(&cover, max_blocks(&adapter, &manifest)?, want).map_err(AppError::NoSpan)?;

    let mut layers = Vec::new();
    let mut config = None;
    let mut warning = None;
    let mut origins = Vec::new();
    for (k, i) in blocks.clone().enumerate() {
        let what = format!("Loading block {i} ({}/{})", k + 1, blocks.len());
        let transfer = Transfer::start();
        let loaded = net::load_block(net, &manifest, i, |done, total| {
            progress(format!("{what}: {}", transfer.line(done, total)), Some((done, total)))
        })
        .await?;
        tracing::info!("block {i} from {}", loaded.origin);
        origins.push(format!("block {i} from {}", loaded.origin));
        let (c, w) = loaded.value;
        config = Some(c);
        layers.push(w);
        warning = warning.or(loaded.warning);
    }
    let config = config.ok_or_else(|| AppError::NoSpan("no blocks chosen".into()))?;
    progress("Uploading the blocks to the GPU…".into(), None);
    let backend = GpuBackend::new(ctx, config, blocks.clone(), &layers).map_err(|source| AppError::GpuUpload {
        adapter: adapter.name.clone(),
        blocks: blocks.clone(),
        source,
    })?;
    drop(layers);

    progress("Measuring…".into(), None);
    let mut limits = ServeLimits::default().with_max_sessions(8).with_kv_budget(512 << 20);
    let charging = match charge {
        Some((wallet, price)) => {
            progress("Reading the chain for charging…".into(), None);
            let c = Arc::new(Charging::start(&wallet, price, blocks.len() as u64).await?);
            limits.payments = Some(c.gate());
            Some(c)
        }
        None => None,
    };
    let service = Service::new(&net.handle, &net.key, backend, id, limits).await?;
    progress("Reserving a slot on the relay…".into(), None);
    let addr = net.reserve().await?;
    // With a circuit address, the tab can be reached: it seeds the parts it holds.
    if let Err(e) = parts::announce(&net.handle, &net.parts, &id).await {
        tracing::warn!("cannot announce the parts this tab holds: {e}");
    }
    spawn_local(service.compute.run());
    spawn_local(service.sessions.for_each(|session| async move { spawn_local(session) }));
    let announce = service.announce;
    spawn_local(async move {
        if let Err(e) = announce.run().await {
            tracing::warn!("announcing stopped: {e}");
        }
    });
    if let Some(w) = warning {
        progress(w.to_string(), None);
    }
    let started = Instant::now();
    Ok(Seeding {
        blocks,
        server: service.server,
        started,
        addr,
        origins: origins.join("; "),
        charging,
        traffic: net.parts.traffic.clone(),
        last: (0, started),
        withdraw: service.withdraw,
    })
}
