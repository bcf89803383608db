//! `ait relay --blocks`: load the blocks and run web-node's serving assembly
//! ([`web_node::net::serve::Service`]) on tokio and a compute thread.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use libp2p::identity::Keypair;
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::serve::{parse_blocks, BoxStream, LocalServer, ServeLimits, Server, Service, Withdraw};

use crate::local::{load_backend, pick_gpu, BackendKind};

/// What to serve and the limits.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeOpt {
    /// Model file (GGUF) or Hugging Face directory; default: SmolLM2-135M-Instruct Q4_1.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Blocks (layers) to serve: `A..B` (layers A to B-1) or `all`. Without it the node only
    /// relays and serves the DHT.
    #[arg(long)]
    pub blocks: Option<String>,
    /// Compute backend for the blocks.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Sessions open at once.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
    /// Sessions one peer may hold at once.
    #[arg(long, default_value_t = 4)]
    pub max_sessions_per_peer: usize,
    /// Memory all sessions' KV caches may reserve, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub max_kv_mib: u64,
}

/// This relay's own server, reached through an in-process pipe (for requests the relay runs
/// as a client: the HTTP API, `ait chat`).
pub struct InProcess(pub Arc<Server>);

impl LocalServer for InProcess {
    fn connect(&self) -> BoxStream {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = self.0.clone();
        tokio::spawn(async move { server.serve_local(theirs.compat()).await });
        Box::new(ours.compat())
    }
}

/// A running server and what it announced.
pub struct Serving {
    /// The session server.
    pub server: Arc<Server>,
    /// Model id.
    pub model: ModelId,
    /// The model's manifest.
    pub manifest: Manifest,
    /// The whole model file (for the API's head and the parts handed to browsers).
    pub file: ModelFile,
    /// Withdraws the server when dropped.
    pub withdraw: Withdraw,
}

/// Loads the blocks and runs the portable assembly ([`Service`]): the compute loop on its own
/// thread, a task per session stream, and the DHT announcements.
pub async fn start(handle: &NodeHandle, key: &Keypair, opt: &ServeOpt) -> anyhow::Result<Serving> {
    let path = match &opt.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let blocks_arg = opt.blocks.clone().context("no --blocks")?;
    let backend_kind = opt.backend;
    let (backend, manifest, file) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = ModelFile::open(&path).context("opening the model")?;
        let blocks = parse_blocks(&blocks_arg, file.config().n_layers).context("--blocks")?;
        let manifest = Manifest::of_file(&file).context("hashing the model")?;
        let gpu = pick_gpu(backend_kind)?;
        let backend = load_backend(&file, gpu.as_ref(), blocks)?;
        Ok((backend, manifest, file))
    })
    .await??;
    let model = manifest.id();
    let limits = ServeLimits::default()
        .with_max_sessions(opt.max_sessions)
        .with_max_sessions_per_peer(opt.max_sessions_per_peer)
        .with_kv_budget(opt.max_kv_mib.saturating_mul(1 << 20));
    // Measuring the blocks keeps the device busy for a moment: off the async workers.
    let (h, k) = (handle.clone(), key.clone());
    let Service { server, compute, sessions, announce, withdraw } =
        tokio::task::spawn_blocking(move || pollster::block_on(Service::new(&h, &k, backend, model, limits))).await??;
    std::thread::Builder::new()
        .name("ait-compute".into())
        .spawn(move || pollster::block_on(compute.run()))
        .context("starting the compute thread")?;
    tokio::spawn(sessions.for_each(|session| {
        tokio::spawn(session);
        std::future::ready(())
    }));
    tokio::spawn(async move {
        if let Err(e) = announce.run().await {
            tracing::warn!("announcing the server stopped: {e}");
        }
    });
    Ok(Serving { server, model, manifest, file, withdraw })
}
