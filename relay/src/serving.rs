//! `ait relay --blocks`: load blocks, measure them, serve sessions, announce in the DHT
//! ([`web_node::net::announce`]).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use libp2p::identity::Keypair;
use web_node::engine::{Backend, BlockExecutor, ExecutorConfig};
use web_node::model::{Manifest, ModelFile, ModelId};
use web_node::net::announce::announce;
use web_node::net::chain::{BoxStream, LocalServer};
use web_node::net::node::NodeHandle;
use web_node::net::protocol::PROTOCOL;
use web_node::net::serve::{compute_channel, run_compute, ServeConfig, Server};

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

/// Parses `A..B` or `all` against a model of `n_layers` layers.
pub fn parse_blocks(s: &str, n_layers: usize) -> anyhow::Result<Range<usize>> {
    if s == "all" {
        return Ok(0..n_layers);
    }
    let (a, b) = s.split_once("..").with_context(|| format!("--blocks {s}: expected A..B or all"))?;
    let a: usize = a.trim().parse().with_context(|| format!("--blocks {s}: bad start"))?;
    let b: usize = b.trim().parse().with_context(|| format!("--blocks {s}: bad end"))?;
    anyhow::ensure!(a < b && b <= n_layers, "--blocks {s}: need 0 <= A < B <= {n_layers} (the model's layers)");
    Ok(a..b)
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
}

/// Loads the blocks, measures their decode speed, starts the compute thread, accepts session
/// streams and keeps the DHT records fresh.
pub async fn start(handle: &NodeHandle, key: &Keypair, opt: &ServeOpt) -> anyhow::Result<Serving> {
    let path = match &opt.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let blocks_arg = opt.blocks.clone().context("no --blocks")?;
    let backend_kind = opt.backend;
    let (executor, manifest, file, blocks, ms_per_block) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file = ModelFile::open(&path).context("opening the model")?;
        let blocks = parse_blocks(&blocks_arg, file.config().n_layers)?;
        let manifest = Manifest::of_file(&file).context("hashing the model")?;
        let gpu = pick_gpu(backend_kind)?;
        let backend = load_backend(&file, gpu.as_ref(), blocks.clone())?;
        let mut executor = BlockExecutor::new(backend, ExecutorConfig::default());
        let ms = measure_ms_per_block(&mut executor)?;
        Ok((executor, manifest, file, blocks, ms))
    })
    .await??;
    let model = manifest.id();
    let config = executor.backend().config().clone();
    let kv_bytes_per_token = (blocks.len() * config.kv_dim() * 2 * 4) as u64;
    let mut serve =
        ServeConfig::new(model, blocks.clone(), executor.backend().name(), config.max_seq_len, kv_bytes_per_token);
    serve.ms_per_block = ms_per_block;
    serve.max_sessions = opt.max_sessions;
    serve.max_sessions_per_peer = opt.max_sessions_per_peer;
    serve.kv_budget = opt.max_kv_mib.saturating_mul(1 << 20);
    let executor = BlockExecutor::new(
        executor.into_backend(),
        ExecutorConfig::default().with_max_sessions(opt.max_sessions).with_idle_timeout(serve.idle_timeout * 2),
    );

    let (compute, jobs) = compute_channel();
    std::thread::Builder::new()
        .name("ait-compute".into())
        .spawn(move || pollster::block_on(run_compute(executor, jobs)))
        .context("starting the compute thread")?;
    let server = Arc::new(Server::new(serve, compute));

    let mut incoming = handle.control().accept(PROTOCOL).map_err(|_| anyhow::anyhow!("protocol already registered"))?;
    let s = server.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let s = s.clone();
            tokio::spawn(async move { s.serve_stream(peer, stream).await });
        }
    });

    let (h, k, s) = (handle.clone(), key.clone(), server.clone());
    tokio::spawn(async move {
        if let Err(e) = announce(h, k, s, futures::future::pending()).await {
            tracing::warn!("announcing the server stopped: {e}");
        }
    });
    Ok(Serving { server, model, manifest, file })
}

/// Median decode time of one token through the executor's blocks, per block, in ms.
fn measure_ms_per_block<B: Backend>(executor: &mut BlockExecutor<B>) -> anyhow::Result<f64> {
    let dim = executor.backend().config().hidden;
    let n_blocks = executor.layers().len();
    let id = executor.open_session(16)?;
    let x: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = web_time::Instant::now();
        pollster::block_on(executor.step(id, &x, 1))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    executor.close_session(id)?;
    let times = &mut times[1..];
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] / n_blocks as f64)
}
