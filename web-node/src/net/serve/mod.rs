//! Serving blocks to the swarm: one assembly for every serving node (a native relay, a tab).
//!
//! [`Service::new`] takes a loaded backend and returns the parts to run, spawning nothing
//! itself (in the style of rust-libp2p's file-sharing example, where `network::new` returns a
//! client, an event stream and an event loop for the caller to spawn):
//! - [`ComputeLoop`]: owns the [`BlockExecutor`]; steps from every session run one at a time
//!   on the device. Natively it gets its own thread, in a tab the page's event loop.
//! - [`Sessions`]: a stream of incoming session streams, each already wrapped into a future
//!   that serves it ([`Server::serve_stream`]); spawn each one.
//! - [`Announcer`]: provides the blocks in the DHT and keeps the signed record fresh.
//!
//! Dropping the [`Service`]'s [`Withdraw`] stops accepting sessions and withdraws the
//! records. Modules: [`session`] (the [`Server`], admission, the stream types), [`compute`]
//! (the compute loop and its handle), [`announce`] (the DHT records of a server), [`queue`]
//! (a charging node's slots by priority and lottery), [`free_tier`] (its daily free quota),
//! [`in_process`] (the node's own server, for its own clients).

pub mod announce;
pub mod compute;
pub mod free_tier;
pub mod in_process;
pub mod queue;
pub mod session;

pub use announce::{announce, announce_while_healthy, publish, AnnounceError, Health, RECORD_REFRESH, RECORD_VALIDITY};
pub use compute::{BatchLimits, ComputeHandle, ComputeLoop};
pub use in_process::InProcess;
pub use session::{BoxStream, LocalServer, Remote, ServeStats, Server, SessionStream, PRE_SESSION_FRAME};

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures::{Stream, StreamExt};
use libp2p::identity::Keypair;
use libp2p::PeerId;

use super::frame::MAX_FRAME;
use super::keyed_limit::{KeyedLimit, Over, Ticket};
use super::log_limit::LogLimit;
use super::node::NodeHandle;
use super::protocol::PROTOCOL;
use crate::engine::{Backend, BlockExecutor, EngineError, ExecutorConfig, DEFAULT_PREFIX_CACHE_TOKENS};
use crate::model::ModelId;
use crate::settle::PaymentGate;

/// What the operator of a serving node chooses: every limit on sessions, in one place (the
/// executor's limits are derived from it, see [`ServeLimits::executor_config`]).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Sessions open at once. Default 32 (a full batch, see [`BatchLimits::max_steps`]).
    pub max_sessions: usize,
    /// Sessions one peer may hold at once (this node's own sessions are not counted). Default 4.
    pub max_sessions_per_peer: usize,
    /// Sessions the peers of one IP address may hold at once. Default 8.
    pub max_sessions_per_ip: usize,
    /// KV-cache bytes all sessions together may reserve. Default 2 GiB.
    pub kv_budget: u64,
    /// KV-cache bytes the sessions of one peer may reserve. Default 512 MiB (a quarter of the
    /// default budget: one full-context session of the default model fits, four do not).
    pub max_kv_per_peer: u64,
    /// Longest session, in tokens. Default `None`: the model's context.
    pub max_session_len: Option<usize>,
    /// A session stream that makes no progress (opens no session, runs no step) for this long
    /// is closed; `Info` requests do not count as progress. Default 120 s.
    pub idle_timeout: Duration,
    /// The longest a session stream may live, whatever it does. Default 30 min (a session
    /// lasts one generation; a client replays into a new one if it needs more).
    pub max_session_age: Duration,
    /// Session streams one peer may have open at once (sessions or not). Default 8.
    pub max_streams_per_peer: usize,
    /// Session streams open at once, from everyone. Default 256.
    pub max_streams: usize,
    /// Peers exempt from the per-peer and per-IP caps (an operator's own API gateways).
    pub trusted_peers: std::collections::HashSet<PeerId>,
    /// A frame must arrive whole within this once it has started. Default 30 s.
    pub frame_timeout: Duration,
    /// Largest frame accepted once a session is open. Default [`MAX_FRAME`].
    pub max_frame: usize,
    /// How many steps and tokens the compute loop runs as one batch.
    pub batch: BatchLimits,
    /// Tokens of recent sessions' prompts kept for sessions whose prompts start the same
    /// way (see [`ExecutorConfig::prefix_cache_tokens`]); 0: none. Default
    /// [`DEFAULT_PREFIX_CACHE_TOKENS`].
    pub prefix_cache_tokens: usize,
    /// What sessions pay, and where their vouchers go; `None` (the default): sessions are free.
    /// A node that charges queues open requests when full, paying clients by priority and a
    /// lottery for everyone ([`queue`]), and serves a free tier in the lottery slots.
    pub payments: Option<Arc<dyn PaymentGate>>,
    /// Longest an open request waits in a charging node's queue. Default 120 s.
    pub queue_wait: Duration,
    /// Seed of the queue's lottery; `None` (the default): drawn from the OS. Tests set it.
    pub lottery_seed: Option<u64>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_sessions: 32,
            max_sessions_per_peer: 4,
            max_sessions_per_ip: 8,
            kv_budget: 2 << 30,
            max_kv_per_peer: 512 << 20,
            max_session_len: None,
            idle_timeout: Duration::from_secs(120),
            max_session_age: Duration::from_secs(30 * 60),
            max_streams_per_peer: 8,
            max_streams: 256,
            trusted_peers: Default::default(),
            frame_timeout: Duration::from_secs(30),
            max_frame: MAX_FRAME,
            batch: BatchLimits::default(),
            prefix_cache_tokens: DEFAULT_PREFIX_CACHE_TOKENS,
            payments: None,
            queue_wait: Duration::from_secs(120),
            lottery_seed: None,
        }
    }
}

impl ServeLimits {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the sessions open at once.
    pub fn with_max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Sets the sessions one peer may hold.
    pub fn with_max_sessions_per_peer(mut self, n: usize) -> Self {
        self.max_sessions_per_peer = n;
        self
    }

    /// Sets the KV-cache budget, in bytes (and the share of one peer to at most all of it).
    pub fn with_kv_budget(mut self, bytes: u64) -> Self {
        self.kv_budget = bytes;
        self.max_kv_per_peer = self.max_kv_per_peer.min(bytes);
        self
    }

    /// The executor's limits: the same sessions and length; a session the server forgot (its
    /// stream is gone) is dropped after twice the stream's idle timeout.
    pub fn executor_config(&self) -> ExecutorConfig {
        let c = ExecutorConfig::new()
            .with_max_sessions(self.max_sessions)
            .with_idle_timeout(self.idle_timeout * 2)
            .with_prefix_cache_tokens(self.prefix_cache_tokens);
        match self.max_session_len {
            Some(n) => c.with_max_session_len(n),
            None => c,
        }
    }
}

/// What a [`Server`] serves, as announced, and its limits.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model id.
    pub model: ModelId,
    /// Blocks held.
    pub blocks: Range<usize>,
    /// Compute backend name.
    pub backend: String,
    /// Measured decode time per block per token (ms).
    pub ms_per_block: f64,
    /// Longest session, in tokens (the limit, or the model's context).
    pub max_len: usize,
    /// The model's configuration, for the KV cache a session needs ([`Self::kv_bytes`]).
    pub model_config: crate::model::LlamaConfig,
    /// The operator's limits.
    pub limits: ServeLimits,
}

impl ServeConfig {
    /// The configuration of `backend`'s blocks of `model`: KV bytes per token and the longest
    /// session from the model's configuration, speed not yet measured.
    pub fn for_backend<B: Backend>(model: ModelId, backend: &B, limits: ServeLimits) -> ServeConfig {
        let config = backend.config();
        let blocks = backend.layers();
        let max_len = limits.max_session_len.unwrap_or(config.max_seq_len).min(config.max_seq_len);
        ServeConfig {
            model,
            backend: backend.name().into(),
            ms_per_block: 0.0,
            max_len,
            model_config: config.clone(),
            blocks,
            limits,
        }
    }
}

impl ServeConfig {
    /// KV-cache bytes of a session of up to `len` tokens over the held blocks: f32 keys and
    /// values, every position for global layers, a windowed layer's buffer for the others
    /// ([`crate::engine::window`]).
    pub fn kv_bytes(&self, len: usize) -> u64 {
        crate::engine::window::kv_bytes(&self.model_config, self.blocks.clone(), len)
    }
}

/// Why a span of blocks could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    /// Not `A..B` or `all`.
    #[error("`{0}`: expected A..B (layers A to B-1) or all")]
    Syntax(String),
    /// Outside the model, or empty.
    #[error("`{span}`: need 0 <= A < B <= {n_layers} (the model's layers)")]
    OutOfRange {
        /// What was given.
        span: String,
        /// Layers of the model.
        n_layers: usize,
    },
}

/// Parses the blocks to serve: `A..B` (layers A to B-1) or `all`, for a model of `n_layers`.
pub fn parse_blocks(s: &str, n_layers: usize) -> Result<Range<usize>, SpanError> {
    let s = s.trim();
    if s == "all" {
        return Ok(0..n_layers);
    }
    let syntax = || SpanError::Syntax(s.into());
    let (a, b) = s.split_once("..").ok_or_else(syntax)?;
    let a: usize = a.trim().parse().map_err(|_| syntax())?;
    let b: usize = b.trim().parse().map_err(|_| syntax())?;
    if a >= b || b > n_layers {
        return Err(SpanError::OutOfRange { span: s.into(), n_layers });
    }
    Ok(a..b)
}

/// Median decode time of one token through the executor's blocks, per block, in ms (of 8
/// steps, after one warm-up step).
pub async fn measure_ms_per_block<B: Backend>(executor: &mut BlockExecutor<B>) -> Result<f64, EngineError> {
    let dim = executor.backend().config().hidden;
    let n_blocks = executor.layers().len().max(1);
    let id = executor.open_session(16)?;
    let x: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = web_time::Instant::now();
        executor.step(id, &x, 1).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    executor.close_session(id)?;
    let times = &mut times[1..];
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] / n_blocks as f64)
}

/// Why a node cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Measuring the blocks failed.
    #[error("measuring the blocks: {0}")]
    Measure(#[source] EngineError),
    /// This node already accepts inference sessions (one server per node).
    #[error("this node is already serving")]
    AlreadyServing,
}

/// A serving node in parts: run [`Service::compute`], spawn every future [`Service::sessions`]
/// yields, and run [`Service::announce`]. See the [module docs](self).
pub struct Service<B: Backend> {
    /// The session server: its configuration, status and counters; this node's own client
    /// reaches it in-process through [`Server::serve_local`].
    pub server: Arc<Server>,
    /// The loop that owns the executor.
    pub compute: ComputeLoop<B>,
    /// Incoming session streams, as futures that serve them.
    pub sessions: Sessions,
    /// Keeps the DHT records fresh.
    pub announce: Announcer,
    /// Dropping it (or calling [`Withdraw::now`]) ends `sessions` and `announce`.
    pub withdraw: Withdraw,
}

impl<B: Backend> Service<B> {
    /// Serves `backend`'s blocks of `model` under `limits`: measures the blocks' decode speed,
    /// builds the executor, the compute loop and the [`Server`], and registers the inference
    /// protocol on `node` (signing records with `key`, the node's identity).
    pub async fn new(
        node: &NodeHandle,
        key: &Keypair,
        backend: B,
        model: ModelId,
        limits: ServeLimits,
    ) -> Result<Service<B>, ServeError> {
        let mut config = ServeConfig::for_backend(model, &backend, limits);
        let mut executor = BlockExecutor::new(backend, config.limits.executor_config());
        config.ms_per_block = measure_ms_per_block(&mut executor).await.map_err(ServeError::Measure)?;
        let (handle, compute) = ComputeLoop::new(executor, config.limits.batch);
        let health = compute.health();
        let server = Arc::new(Server::new(config, handle, key.clone()));
        let incoming = node.control().accept(PROTOCOL).map_err(|_| ServeError::AlreadyServing)?;
        let (tx, rx) = oneshot::channel::<()>();
        let stop = rx.shared();
        let sessions = Sessions {
            incoming,
            server: server.clone(),
            node: node.clone(),
            open: KeyedLimit::new(server.config().limits.max_streams, server.config().limits.max_streams_per_peer),
            log: Arc::new(LogLimit::new(Duration::from_secs(10))),
            stop: stop.clone(),
        };
        let announce = Announcer { node: node.clone(), key: key.clone(), server: server.clone(), health, stop };
        Ok(Service { server, compute, sessions, announce, withdraw: Withdraw(Some(tx)) })
    }
}

/// Withdraws a [`Service`] from the swarm when dropped: new sessions are refused (the
/// protocol is unregistered once [`Sessions`] ends) and the DHT records stop.
pub struct Withdraw(Option<oneshot::Sender<()>>);

impl Withdraw {
    /// Withdraws now.
    pub fn now(mut self) {
        self.0.take();
    }
}

type Stop = Shared<oneshot::Receiver<()>>;

/// A future serving one session stream until it closes, fails or idles out.
pub type SessionTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Incoming session streams of a [`Service`], each as a [`SessionTask`] to spawn; ends when
/// the service is withdrawn. Streams over [`ServeLimits::max_streams_per_peer`] or
/// [`ServeLimits::max_streams`] are dropped (closed) at once.
pub struct Sessions {
    incoming: libp2p_stream::IncomingStreams,
    server: Arc<Server>,
    node: NodeHandle,
    open: KeyedLimit<PeerId>,
    log: Arc<LogLimit>,
    stop: Stop,
}

impl Sessions {
    /// Counts a new stream from `peer`, or says why it is refused.
    fn ticket(&self, peer: PeerId) -> Result<Ticket<PeerId>, String> {
        let l = &self.server.config().limits;
        self.open.admit(peer, l.trusted_peers.contains(&peer)).map_err(|over| match over {
            Over::Total(n) => format!("{n} session streams open in all (the limit)"),
            Over::PerKey(n) => format!("{n} session streams open already (the per-peer limit)"),
            Over::Keys(n) => format!("{n} peers hold session streams (the limit)"),
        })
    }
}

impl Stream for Sessions {
    type Item = SessionTask;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SessionTask>> {
        if self.stop.poll_unpin(cx).is_ready() {
            return Poll::Ready(None);
        }
        loop {
            match self.incoming.poll_next_unpin(cx) {
                Poll::Ready(Some((peer, stream))) => match self.ticket(peer) {
                    Ok(ticket) => {
                        let who = Remote { peer: Some(peer), ip: self.node.peer_ip(&peer) };
                        let server = self.server.clone();
                        return Poll::Ready(Some(Box::pin(async move {
                            let _ticket = ticket;
                            server.serve_remote(who, stream).await
                        })));
                    }
                    // Dropping the stream resets it; the peer sees it closed.
                    Err(why) => crate::limited_warn!(self.log, "stream-limit", %peer, "refusing a stream: {why}"),
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Provides a [`Service`]'s blocks in the DHT and keeps its signed record fresh, until the
/// service is withdrawn; withdrawn meanwhile while the compute loop's [`Health`] says the
/// device keeps running out of memory.
pub struct Announcer {
    node: NodeHandle,
    key: Keypair,
    server: Arc<Server>,
    health: Health,
    stop: Stop,
}

impl Announcer {
    /// Runs until the service is withdrawn; then stops providing.
    pub async fn run(self) -> Result<(), AnnounceError> {
        announce_while_healthy(self.node, self.key, self.server, self.health, self.stop.map(|_| ())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admission reserves what the engine allocates: for Mistral 7B's shape of window (4096
    /// of 32768 positions), every layer's sliding buffer of 4095 + 256 rows, not the whole
    /// context; a session no longer than the buffer reserves its own length.
    #[test]
    fn a_sliding_window_shrinks_what_a_session_reserves() {
        let json = br#"{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "vocab_size": 128, "max_position_embeddings": 32768,
            "sliding_window": 4096}"#;
        let model_config = crate::model::hf_config::HfConfig::from_json(json).unwrap().into_config().unwrap();
        let config = ServeConfig {
            model: ModelId([0; 32]),
            blocks: 1..4,
            backend: "cpu".into(),
            ms_per_block: 0.0,
            max_len: 32768,
            model_config,
            limits: ServeLimits::default(),
        };
        let row = 2 * 16 * 2 * 4; // kv_dim 32, keys and values, f32
        assert_eq!(config.kv_bytes(32768), 3 * (4095 + 256) * row);
        assert_eq!(config.kv_bytes(1000), 3 * 1000 * row);
    }

    #[test]
    fn blocks_parse_or_say_why() {
        assert_eq!(parse_blocks("all", 30), Ok(0..30));
        assert_eq!(parse_blocks("10..20", 30), Ok(10..20));
        assert_eq!(parse_blocks(" 0 .. 30 ", 30), Ok(0..30));
        assert!(matches!(parse_blocks("10-20", 30), Err(SpanError::Syntax(_))));
        assert!(matches!(parse_blocks("a..3", 30), Err(SpanError::Syntax(_))));
        assert!(matches!(parse_blocks("20..10", 30), Err(SpanError::OutOfRange { .. })));
        assert!(matches!(parse_blocks("5..5", 30), Err(SpanError::OutOfRange { .. })));
        assert!(matches!(parse_blocks("0..31", 30), Err(SpanError::OutOfRange { .. })));
    }
}
