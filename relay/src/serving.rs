//! `ait relay --blocks`: load the blocks and run web-node's serving assembly
//! ([`web_node::net::serve::Service`]) on tokio and a compute thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::serve::{
    in_process, parse_blocks, BatchLimits, InProcess, LocalServer, ServeLimits, Server, Service, Withdraw,
};

use crate::local::{load_backend, pick_gpu, BackendKind};
use crate::manifest_cache::manifest_for;
use web_node::engine::{AnyBackend, Backend};

/// What to serve and the limits.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeOpt {
    /// Model file (GGUF) or Hugging Face directory (default: SmolLM2-135M-Instruct Q4_1), or
    /// the id of a model in the swarm (64 hex digits): then its manifest, head and the parts of
    /// --blocks are fetched from the swarm's seeders into the part store first.
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
    #[arg(long, default_value_t = ServeLimits::default().max_sessions)]
    pub max_sessions: usize,
    /// Sessions one peer may hold at once.
    #[arg(long, default_value_t = ServeLimits::default().max_sessions_per_peer)]
    pub max_sessions_per_peer: usize,
    /// Sessions the peers of one IP address may hold at once.
    #[arg(long, default_value_t = ServeLimits::default().max_sessions_per_ip)]
    pub max_sessions_per_ip: usize,
    /// Memory all sessions' KV caches may reserve, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub max_kv_mib: u64,
    /// Memory the KV caches of one peer's sessions may reserve, in MiB.
    #[arg(long, default_value_t = ServeLimits::default().max_kv_per_peer >> 20)]
    pub max_kv_per_peer_mib: u64,
    /// Seconds a session may go without progress (a step) before it is closed.
    #[arg(long, default_value_t = ServeLimits::default().idle_timeout.as_secs())]
    pub session_idle_secs: u64,
    /// Seconds a session may live.
    #[arg(long, default_value_t = ServeLimits::default().max_session_age.as_secs())]
    pub max_session_secs: u64,
    /// Session streams one peer may have open at once.
    #[arg(long, default_value_t = ServeLimits::default().max_streams_per_peer)]
    pub max_streams_per_peer: usize,
    /// Tokens the blocks run as one batch: every session's decode token, then prompts cut into
    /// chunks to fill it (larger: prompts finish sooner; smaller: decode waits less for them).
    #[arg(long, default_value_t = ServeLimits::default().batch.max_tokens)]
    pub max_batch_tokens: usize,
    /// Sessions whose steps run as one batch.
    #[arg(long, default_value_t = ServeLimits::default().batch.max_steps)]
    pub max_batch_steps: usize,
    /// Tokens of recent prompts kept (keys, values and outputs of the blocks) so that a prompt
    /// starting the same way (the same system prompt and chat template) skips that part of its
    /// prefill; 0 turns it off. Memory on top of --max-kv-mib.
    #[arg(long, default_value_t = ServeLimits::default().prefix_cache_tokens)]
    pub prefix_cache_tokens: usize,
}

impl ServeOpt {
    /// `--model` as a model id: 64 hex digits naming no file here.
    pub fn model_id(&self) -> Option<ModelId> {
        let m = self.model.as_ref()?;
        ModelId::from_hex(m.to_str()?).filter(|_| !m.exists())
    }

    /// The session limits these flags set; `trusted` peers are exempt from per-peer and
    /// per-IP caps.
    pub fn limits(&self, trusted: HashSet<PeerId>) -> ServeLimits {
        let mut l = ServeLimits::default()
            .with_max_sessions(self.max_sessions)
            .with_max_sessions_per_peer(self.max_sessions_per_peer)
            .with_kv_budget(self.max_kv_mib.saturating_mul(1 << 20));
        l.max_sessions_per_ip = self.max_sessions_per_ip;
        l.max_kv_per_peer = self.max_kv_per_peer_mib.saturating_mul(1 << 20);
        l.idle_timeout = Duration::from_secs(self.session_idle_secs);
        l.max_session_age = Duration::from_secs(self.max_session_secs);
        l.max_streams_per_peer = self.max_streams_per_peer;
        l.batch = BatchLimits { max_tokens: self.max_batch_tokens, max_steps: self.max_batch_steps };
        l.prefix_cache_tokens = self.prefix_cache_tokens;
        l.trusted_peers = trusted;
        l
    }
}

/// This relay's own server as a [`LocalServer`] (for requests the relay runs as a client: the
/// HTTP API, `ait chat`), its sessions on tokio.
pub fn in_process(server: Arc<Server>) -> Arc<dyn LocalServer> {
    let spawn: in_process::Spawn = Arc::new(|f| {
        tokio::spawn(f);
    });
    Arc::new(InProcess::new(server, spawn))
}

/// A running server and what it announced.
pub struct Serving {
    /// The session server.
    pub server: Arc<Server>,
    /// Model id.
    pub model: ModelId,
    /// The model's manifest.
    pub manifest: Manifest,
    /// The model file, or for a model fetched from the swarm its head part (for the API's
    /// head and tokenizer).
    pub file: ModelFile,
    /// Withdraws the server when dropped.
    pub withdraw: Withdraw,
}

/// Blocks loaded and ready to serve (on the backend [`load_file`] picked, or any other).
pub struct Loaded<B = AnyBackend> {
    /// The blocks.
    pub backend: B,
    /// The model's manifest.
    pub manifest: Manifest,
    /// The model file, or its head part.
    pub file: ModelFile,
}

/// Loads `--blocks` of the model file `--model` (default: the default model) on `--backend`.
/// The model's manifest comes from the cache in `data_dir` when it can
/// ([`crate::manifest_cache`]): then only the served blocks and the head are hashed.
pub async fn load_file(opt: &ServeOpt, data_dir: &Path) -> anyhow::Result<Loaded> {
    let path = match &opt.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let blocks_arg = opt.blocks.clone().context("no --blocks")?;
    let backend_kind = opt.backend;
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = ModelFile::open(&path).context("opening the model")?;
        let blocks = parse_blocks(&blocks_arg, file.config().n_layers).context("--blocks")?;
        let (manifest, source) = manifest_for(&path, &file, &data_dir, blocks.clone(), true)?;
        tracing::info!(?source, "manifest of {}", path.display());
        let gpu = pick_gpu(backend_kind)?;
        let backend = load_backend(&file, gpu.as_ref(), blocks)?;
        Ok(Loaded { backend, manifest, file })
    })
    .await?
}

/// Runs the portable assembly ([`Service`]) on `loaded` under `limits` (see
/// [`ServeOpt::limits`]): the compute loop on its own thread, a task per session stream, and
/// the DHT announcements.
pub async fn start<B>(
    handle: &NodeHandle,
    key: &Keypair,
    loaded: Loaded<B>,
    limits: ServeLimits,
) -> anyhow::Result<Serving>
where
    B: Backend + Send + 'static,
    B::Cache: Send,
{
    let Loaded { backend, manifest, file } = loaded;
    let model = manifest.id();
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
