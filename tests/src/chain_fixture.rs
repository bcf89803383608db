//! In-process servers for the chain tests (`tests/tests/suite/chain.rs`): a tiny random model split
//! over real [`Server`]s, reached over in-memory pipes through a test [`Discovery`] with fake
//! peer ids, and faults injected between the chain and a server.
//!
//! Every stream the chain opens goes through a proxy task that reads the chain's frames, hands
//! them to the real server (served by [`Server::serve_local`] over a `tokio::io::duplex` pipe)
//! and passes its answers back, unless a [`Fault`] set on that server says otherwise. Nothing
//! here needs the `ait` binary, the network or the default model; it needs a tokio runtime.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use web_node::client::{Head, LayerChain, LocalChain};
use web_node::engine::cpu::CpuBackend;
use web_node::engine::{BlockExecutor, ExecutorConfig};
use web_node::model::{LlamaConfig, ModelFile, ModelId, WeightType};
use web_node::net::chain::{probe_stream, ChainError, ChainOptions, Discovery, Found, Query, SwarmChain};
use web_node::net::frame::{read_frame, write_frame, MAX_FRAME};
use web_node::net::protocol::{ErrorCode, Request, Response};
use web_node::net::serve::{BoxStream, ComputeHandle, ComputeLoop, ServeConfig, ServeLimits, Server};
use web_node::trust::{output_hash, InputChain, Receipt};

use crate::lying_backend::Lie;
use crate::tiny_model::{TempDir, Tensor, TinyModel};

/// Layers of the fixture's model.
pub const N_LAYERS: usize = 6;

/// Id the servers announce for the fixture's model.
pub const MODEL: ModelId = ModelId([0xa1; 32]);

/// A tiny random Llama of [`N_LAYERS`] layers: layers `2k` and `2k + 1` are those of
/// `TinyModel::random(seed + k, true)` (the embeddings and final norm of the first).
pub fn tiny_model(seed: u64) -> TinyModel {
    let parts: Vec<TinyModel> = (0..N_LAYERS as u64 / 2).map(|k| TinyModel::random(seed + k, true)).collect();
    let per_part = parts[0].config.n_layers;
    let mut model = parts[0].clone();
    model.config.n_layers = N_LAYERS;
    model.tensors.retain(|t| !t.name.starts_with("model.layers."));
    for (k, part) in parts.iter().enumerate() {
        for t in &part.tensors {
            let Some(rest) = t.name.strip_prefix("model.layers.") else { continue };
            let (layer, name) = rest.split_once('.').expect("layer index, then name");
            let layer: usize = layer.parse().expect("a layer index");
            let name = format!("model.layers.{}.{name}", layer + k * per_part);
            model.tensors.push(Tensor { name, ..t.clone() });
        }
    }
    model
}

/// How a server misbehaves once it has answered the steps it was told to answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Answers an error frame, then closes the stream.
    Error,
    /// Closes the stream instead of answering.
    Close,
    /// Stops reading and answering on every stream, new ones too (no status either).
    Freeze,
    /// Answers the step with one value too few.
    WrongLength,
    /// Answers with a frame that does not decode.
    Undecodable,
    /// Answers every step this late, and status requests at once.
    Slow(Duration),
    /// Never answers a step (nor anything after it on that stream), but answers status
    /// requests on new streams at once: alive, and stalling.
    Stall,
    /// Answers the step with one value NaN.
    NotFinite,
    /// Answers the step with every value a billion times too large (finite).
    Absurd,
    /// Answers status requests with a valid status padded to 1 MiB of JSON whitespace (from
    /// the start, whatever `after` says); steps are answered well.
    BloatedStatus,
    /// Answers the step with one value off by a thousandth (finite, sane) under the receipt
    /// the server signed for the true answer.
    Tampered,
    /// Answers the step well but without the receipt's signature.
    Unsigned,
    /// Adds noise of a thousandth of each row's rms to every answer and signs a receipt for
    /// the noisy answer with the server's own key: a node that lies about its computation
    /// and stands by it. Only an audit (a recomputation elsewhere) catches it ([`Lie::Noise`]).
    Lie,
    /// Answers every step with its input rows, unchanged, and signs for them ([`Lie::Echo`]).
    Echo,
    /// Answers each one-token step after the first with the previous step's output (states
    /// from an earlier position), and signs for it ([`Lie::Stale`]).
    Stale,
}

/// Weights a server runs instead of the model's own: the ways a node lies about its
/// computation that change what it computes (it signs whatever it computed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// The middle layer of its span skipped: that layer's attention and MLP outputs are
    /// zeroed, so it returns its input.
    SkipLayer,
    /// The model's weights in another quantization (Q8_0 instead of the fixture's F32).
    OtherQuant,
    /// Another model of the same shape (another seed).
    OtherModel,
}

impl Weights {
    /// What a liar of these weights runs for `blocks`, where honest servers run `make(seed)`
    /// stored as `honest`: another seed's model, the middle layer of `blocks` with its
    /// attention and MLP outputs zeroed, or the same weights stored as `other_quant`.
    pub fn model(
        self,
        make: impl Fn(u64) -> TinyModel,
        seed: u64,
        blocks: Range<usize>,
        honest: WeightType,
        other_quant: WeightType,
    ) -> (TinyModel, WeightType) {
        let mut model = make(if self == Weights::OtherModel { seed + 1000 } else { seed });
        if self == Weights::SkipLayer {
            let mid = blocks.start + blocks.len() / 2;
            for t in &mut model.tensors {
                let zero = ["self_attn.o_proj.weight", "mlp.down_proj.weight"]
                    .iter()
                    .any(|w| t.name == format!("model.layers.{mid}.{w}"));
                if zero {
                    t.values.iter_mut().for_each(|v| *v = 0.0);
                }
            }
        }
        (model, if self == Weights::OtherQuant { other_quant } else { honest })
    }
}

/// One way a node lies about its computation and signs for it (issue 17's fault classes):
/// other weights it runs, or a fault between it and the chain.
#[derive(Clone, Copy, Debug)]
pub struct FaultClass {
    /// Its name in test output.
    pub name: &'static str,
    /// Other weights the liar runs.
    pub weights: Option<Weights>,
    /// A fault set on the liar from its first step.
    pub fault: Option<Fault>,
}

/// Every fault class: a skipped layer, another quantization, another model of the same
/// shape, noise of 1e-3, the input returned, states of an earlier position.
pub const FAULT_CLASSES: [FaultClass; 6] = [
    FaultClass { name: "skip-layer", weights: Some(Weights::SkipLayer), fault: None },
    FaultClass { name: "other-quant", weights: Some(Weights::OtherQuant), fault: None },
    FaultClass { name: "other-weights", weights: Some(Weights::OtherModel), fault: None },
    FaultClass { name: "noise", weights: None, fault: Some(Fault::Lie) },
    FaultClass { name: "input-returned", weights: None, fault: Some(Fault::Echo) },
    FaultClass { name: "stale", weights: None, fault: Some(Fault::Stale) },
];

/// Chain options for the fixture: short timeouts, so that a frozen server costs well under a
/// second, no payment, and a book of its own.
pub fn quick_options() -> ChainOptions {
    ChainOptions {
        connect_timeout: Duration::from_millis(500),
        step_timeout: Duration::from_millis(150),
        per_token_timeout: Duration::from_millis(10),
        discovery_timeout: Duration::from_secs(1),
        settle: Duration::from_millis(10),
        max_wait: Duration::from_secs(1),
        max_recovery: Duration::from_secs(30),
        ..ChainOptions::default()
    }
}

#[derive(Default)]
struct FaultState {
    /// The fault and the steps answered well before it starts.
    fault: Mutex<Option<(Fault, usize)>>,
    /// Steps received since the fault was set.
    steps: AtomicUsize,
    /// Status requests received.
    infos: AtomicUsize,
    frozen: AtomicBool,
}

impl FaultState {
    /// Counts a step; the fault it meets, if any.
    fn step(&self) -> Option<Fault> {
        let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = *self.fault.lock().expect("fault lock");
        fault.filter(|&(f, after)| n > after && f != Fault::BloatedStatus).map(|(f, _)| f)
    }

    /// Counts a status request; the fault it meets, if any.
    fn info(&self) -> Option<Fault> {
        self.infos.fetch_add(1, Ordering::SeqCst);
        let fault = *self.fault.lock().expect("fault lock");
        fault.map(|(f, _)| f).filter(|&f| f == Fault::BloatedStatus)
    }
}

/// One in-process server of the fixture.
struct TestServer {
    peer: PeerId,
    blocks: Range<usize>,
    /// The server (swapped for one of other weights by [`Fixture::with_weights`]).
    server: Arc<Mutex<Arc<Server>>>,
    /// The server's key, which a lying proxy signs with.
    key: Keypair,
    state: Arc<FaultState>,
}

impl TestServer {
    /// A new stream to the server, through a proxy that applies its fault.
    fn connect(&self) -> BoxStream {
        let (chain_end, proxy_end) = tokio::io::duplex(1 << 20);
        let (proxy_server_end, server_end) = tokio::io::duplex(1 << 20);
        let server = self.server.lock().expect("server lock").clone();
        tokio::spawn(async move { server.serve_local(server_end.compat()).await });
        let liar = Liar { key: self.key.clone(), open: None, last: None };
        tokio::spawn(proxy(proxy_end.compat(), proxy_server_end.compat(), self.state.clone(), liar));
        Box::new(chain_end.compat())
    }
}

type Pipe = Compat<tokio::io::DuplexStream>;

/// Holds both ends of a frozen stream, unread, until the runtime ends.
async fn freeze(_chain: Pipe, _server: Pipe) {
    std::future::pending::<()>().await
}

/// What a stream's proxy needs to lie like the node itself ([`Fault::Lie`]): the node's key,
/// and the open session's receipt fields with the hash of every input it was sent.
struct Liar {
    key: Keypair,
    open: Option<(Receipt, InputChain)>,
    /// The true last row of its previous answer ([`Fault::Stale`]).
    last: Option<Vec<f32>>,
}

impl Liar {
    /// Notes a request on the stream (an `Open` starts the receipts' fields, a `Step`'s
    /// inputs are hashed in); returns the receipt the step's answer would be signed under,
    /// less its output hash.
    fn note(&mut self, request: &Request) -> Option<Receipt> {
        match request {
            Request::Open { model, session, start, end, .. } => {
                let receipt = Receipt {
                    session: *session,
                    model: *model,
                    start: *start,
                    end: *end,
                    pos: 0,
                    n_tokens: 0,
                    inputs: [0; 32],
                    output: [0; 32],
                };
                self.open = Some((receipt, InputChain::new(session)));
                None
            }
            Request::Step { pos, n_tokens, hidden, .. } => {
                let (receipt, inputs) = self.open.as_mut()?;
                let dim = hidden.len() / (*n_tokens as usize).max(1);
                inputs.absorb(hidden, dim);
                Some(Receipt { pos: *pos, n_tokens: *n_tokens, inputs: inputs.value(), ..receipt.clone() })
            }
            _ => None,
        }
    }

    /// Makes `hidden` (the true answer to `input`) the lie of `lie` and signs it under
    /// `receipt`.
    fn lie(&mut self, lie: Lie, mut receipt: Receipt, input: &[f32], hidden: &mut Vec<f32>) -> Vec<u8> {
        lie.apply(input, hidden, receipt.n_tokens as usize, &mut self.last);
        receipt.output = output_hash(hidden);
        receipt.sign(&self.key).expect("an ed25519 key signs")
    }
}

/// Passes frames between the chain and the server, applying `state`'s fault.
async fn proxy(mut chain: Pipe, mut server: Pipe, state: Arc<FaultState>, mut liar: Liar) {
    let long = Duration::from_secs(3600);
    loop {
        let Ok(frame) = read_frame(&mut chain, MAX_FRAME, long, long).await else { return };
        if state.frozen.load(Ordering::SeqCst) {
            return freeze(chain, server).await;
        }
        let request = Request::decode(&frame);
        let signed = request.as_ref().ok().and_then(|r| liar.note(r));
        let fault = match request {
            Ok(Request::Step { .. }) => state.step(),
            Ok(Request::Info) => state.info(),
            _ => None,
        };
        match fault {
            Some(Fault::Freeze) => {
                state.frozen.store(true, Ordering::SeqCst);
                return freeze(chain, server).await;
            }
            Some(Fault::Close) => return,
            Some(Fault::Stall) => return freeze(chain, server).await,
            Some(Fault::Error) => {
                let error = Response::Error { code: ErrorCode::Internal, message: "injected fault".into() };
                let _ = write_frame(&mut chain, &error.encode()).await;
                return;
            }
            Some(Fault::Undecodable) => {
                if write_frame(&mut chain, &[0x42, 1, 2, 3]).await.is_err() {
                    return;
                }
                continue;
            }
            Some(
                Fault::WrongLength
                | Fault::Slow(_)
                | Fault::NotFinite
                | Fault::Absurd
                | Fault::BloatedStatus
                | Fault::Tampered
                | Fault::Unsigned
                | Fault::Lie
                | Fault::Echo
                | Fault::Stale,
            )
            | None => {}
        }
        if write_frame(&mut server, &frame).await.is_err() {
            return;
        }
        let Ok(mut reply) = read_frame(&mut server, MAX_FRAME, long, long).await else { return };
        match fault {
            Some(Fault::WrongLength) => {
                if let Ok(Response::Hidden { n_tokens, compute_us, receipt, mut hidden }) = Response::decode(&reply) {
                    hidden.pop();
                    reply = Response::Hidden { n_tokens, compute_us, receipt, hidden }.encode();
                }
            }
            Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
            Some(f @ (Fault::NotFinite | Fault::Absurd)) => {
                if let Ok(Response::Hidden { n_tokens, compute_us, receipt, mut hidden }) = Response::decode(&reply) {
                    if f == Fault::NotFinite {
                        hidden[0] = f32::NAN;
                    } else {
                        hidden.iter_mut().for_each(|v| *v = *v * 1e9 + 1e9);
                    }
                    reply = Response::Hidden { n_tokens, compute_us, receipt, hidden }.encode();
                }
            }
            Some(f @ (Fault::Tampered | Fault::Unsigned)) => {
                if let Ok(Response::Hidden { n_tokens, compute_us, mut receipt, mut hidden }) = Response::decode(&reply)
                {
                    if f == Fault::Tampered {
                        hidden[0] *= 1.001;
                    } else {
                        receipt.clear();
                    }
                    reply = Response::Hidden { n_tokens, compute_us, receipt, hidden }.encode();
                }
            }
            Some(f @ (Fault::Lie | Fault::Echo | Fault::Stale)) => {
                if let (Ok(Response::Hidden { n_tokens, compute_us, mut hidden, .. }), Some(r), Ok(req)) =
                    (Response::decode(&reply), signed, Request::decode(&frame))
                {
                    let input = match &req {
                        Request::Step { hidden, .. } => hidden.as_slice(),
                        _ => &[],
                    };
                    let lie = match f {
                        Fault::Lie => Lie::Noise,
                        Fault::Echo => Lie::Echo,
                        _ => Lie::Stale,
                    };
                    let receipt = liar.lie(lie, r, input, &mut hidden);
                    reply = Response::Hidden { n_tokens, compute_us, receipt, hidden }.encode();
                }
            }
            Some(Fault::BloatedStatus) => {
                reply.resize(1 << 20, b' ');
            }
            _ => {}
        }
        if write_frame(&mut chain, &reply).await.is_err() {
            return;
        }
    }
}

/// The round trip every server of a [`TestDiscovery`] is given, in ms.
pub const PIPE_RTT_MS: f64 = 1.0;

/// The fixture's servers, found without a network: every server is known, and its live status
/// is asked over a fresh stream, as the DHT discovery does.
#[derive(Clone)]
pub struct TestDiscovery {
    servers: Arc<Vec<TestServer>>,
    /// The server that stands for the chain's own node, reached in-process.
    local: Option<PeerId>,
}

impl Discovery for TestDiscovery {
    async fn find(&self, query: Query<'_>) -> Result<Found, ChainError> {
        let wanted = self.servers.iter().filter(|s| {
            s.blocks.start < query.range.end
                && s.blocks.end > query.range.start
                && !query.banned.contains(&s.peer)
                && (!query.known_only || query.known.contains_key(&s.peer))
        });
        let probes = wanted.map(|s| {
            let query = &query;
            async move {
                let started = Instant::now();
                let mut stream = s.connect();
                (s.peer, probe_stream(s.peer, &mut stream, query, started).await.map(|f| f.map(|f| (f, stream))))
            }
        });
        let mut found = Found::default();
        for (peer, probed) in join_all(probes).await {
            match probed {
                Ok(Some((mut server, stream))) => {
                    // In-memory pipes have no network: a probe's round trip here is only how
                    // soon this thread got to it, which on a loaded machine could outweigh the
                    // announced speeds these tests route by. Every remote server gets the
                    // same nominal one instead (this node's own server has none).
                    server.candidate.rtt_ms = PIPE_RTT_MS;
                    found.servers.push((server, stream));
                }
                Ok(None) => {}
                Err(_) => found.unreachable.push(peer),
            }
        }
        Ok(found)
    }

    async fn open(&self, peer: PeerId, _limit: Duration) -> Result<BoxStream, ChainError> {
        match self.servers.iter().find(|s| s.peer == peer) {
            Some(s) => Ok(s.connect()),
            None => Err(ChainError::Unreachable { peer, detail: "no such test server".into() }),
        }
    }

    fn local_peer(&self) -> Option<PeerId> {
        self.local
    }
}

/// A tiny model served in parts by in-process servers.
pub struct Fixture {
    file: ModelFile,
    head: Head,
    /// The model's id, as the servers announce it and sign it in receipts.
    id: ModelId,
    servers: Arc<Vec<TestServer>>,
    /// Holds the model file; removed last.
    _dir: TempDir,
}

static FIXTURES: AtomicUsize = AtomicUsize::new(0);

impl Fixture {
    /// Serves [`tiny_model`]`(seed)` with one server per `(blocks, ms_per_block)`: the speed
    /// each announces, so that routing prefers the fast ones (servers are numbered in order).
    /// Must be called inside a tokio runtime; each server's compute loop gets a thread.
    pub fn new(seed: u64, servers: &[(Range<usize>, f64)]) -> Fixture {
        let n = FIXTURES.fetch_add(1, Ordering::SeqCst);
        let dir = TempDir::new(&format!("chain-{n}"));
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_model(seed).gguf(WeightType::F32)).expect("write the model");
        Fixture::serving(&path, MODEL, servers, dir)
    }

    /// Like [`Fixture::new`], with server `i` running other `weights` for each `(i, weights)`
    /// of `liars` (it announces the model's layers and signs what it computes).
    pub fn with_weights(seed: u64, servers: &[(Range<usize>, f64)], liars: &[(usize, Weights)]) -> Fixture {
        let fx = Fixture::new(seed, servers);
        for &(i, weights) in liars {
            let blocks = servers[i].0.clone();
            let (model, dtype) = weights.model(tiny_model, seed, blocks.clone(), WeightType::F32, WeightType::Q8_0);
            let path = fx._dir.path().join(format!("liar-{i}.gguf"));
            std::fs::write(&path, model.gguf(dtype)).expect("write the liar's model");
            let file = ModelFile::open(&path).expect("open the liar's model");
            let server = &fx.servers[i];
            let backend = backend(&file, file.config(), blocks);
            let (serve, handle) = compute(fx.id, backend, servers[i].1);
            let replaced = Arc::new(Server::new(serve, handle, server.key.clone()));
            *server.server.lock().expect("server lock") = replaced;
        }
        fx
    }

    /// Like [`Fixture::new`], with server `liar` lying in `class` from its first step.
    pub fn lying(seed: u64, servers: &[(Range<usize>, f64)], liar: usize, class: FaultClass) -> Fixture {
        let fx =
            Fixture::with_weights(seed, servers, &class.weights.map(|w| (liar, w)).into_iter().collect::<Vec<_>>());
        if let Some(f) = class.fault {
            fx.set_fault(liar, f, 0);
        }
        fx
    }

    /// Like [`Fixture::new`], serving the model file at `path` as the model `id` (the
    /// fixture keeps `dir` until it is dropped).
    pub fn serving(path: &Path, id: ModelId, servers: &[(Range<usize>, f64)], dir: TempDir) -> Fixture {
        let file = ModelFile::open(path).expect("open the model");
        let config = file.config().clone();
        let head = Head::new(config.clone(), file.load_head().expect("head")).expect("head fits");
        let servers = servers
            .iter()
            .map(|(blocks, ms_per_block)| {
                let (serve, handle) = compute(id, backend(&file, &config, blocks.clone()), *ms_per_block);
                let key = Keypair::generate_ed25519();
                TestServer {
                    peer: key.public().to_peer_id(),
                    blocks: blocks.clone(),
                    server: Arc::new(Mutex::new(Arc::new(Server::new(serve, handle, key.clone())))),
                    key,
                    state: Arc::default(),
                }
            })
            .collect();
        Fixture { file, head, id, servers: Arc::new(servers), _dir: dir }
    }

    /// Runs `prompt` as one prefill and then each of `decode` as a step through `chain`;
    /// returns each step's output.
    pub async fn outputs<C: LayerChain>(
        &self,
        chain: &mut C,
        prompt: &[u32],
        decode: &[u32],
    ) -> Result<Vec<Vec<f32>>, C::Error> {
        chain.begin(prompt.len() + decode.len()).await?;
        let mut outs = vec![chain.forward(&self.embed(prompt), prompt.len()).await?];
        for &t in decode {
            outs.push(chain.forward(&self.embed(&[t]), 1).await?);
        }
        Ok(outs)
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        self.file.config()
    }

    /// Peer id of server `i`.
    pub fn peer(&self, i: usize) -> PeerId {
        self.servers[i].peer
    }

    /// Peer ids of servers `is`.
    pub fn peers(&self, is: &[usize]) -> Vec<PeerId> {
        is.iter().map(|&i| self.peer(i)).collect()
    }

    /// From now on server `i` answers `after` steps well, then shows `fault`.
    pub fn set_fault(&self, i: usize, fault: Fault, after: usize) {
        let state = &self.servers[i].state;
        *state.fault.lock().expect("fault lock") = Some((fault, after));
        state.steps.store(0, Ordering::SeqCst);
    }

    /// From now on server `i` answers well (a frozen one answers new streams again).
    pub fn clear_fault(&self, i: usize) {
        let state = &self.servers[i].state;
        *state.fault.lock().expect("fault lock") = None;
        state.frozen.store(false, Ordering::SeqCst);
    }

    /// Steps server `i` received since its fault was set (or since it started).
    pub fn steps(&self, i: usize) -> usize {
        self.servers[i].state.steps.load(Ordering::SeqCst)
    }

    /// Status requests server `i` received.
    pub fn status_requests(&self, i: usize) -> usize {
        self.servers[i].state.infos.load(Ordering::SeqCst)
    }

    /// The discovery of the fixture's servers.
    pub fn discovery(&self) -> TestDiscovery {
        TestDiscovery { servers: self.servers.clone(), local: None }
    }

    /// A chain over the fixture's servers.
    pub fn chain(&self, opts: ChainOptions) -> SwarmChain<TestDiscovery> {
        let c = self.config();
        SwarmChain::with_discovery(self.discovery(), self.id, c.n_layers, c.hidden, opts)
    }

    /// A chain over the fixture's servers, on a node whose own (in-process) server is server
    /// `local`.
    pub fn chain_with_local(&self, opts: ChainOptions, local: usize) -> SwarmChain<TestDiscovery> {
        let c = self.config();
        let discovery = TestDiscovery { local: Some(self.peer(local)), ..self.discovery() };
        SwarmChain::with_discovery(discovery, self.id, c.n_layers, c.hidden, opts)
    }

    /// The whole model in one in-process executor.
    pub fn local_chain(&self) -> LocalChain<CpuBackend> {
        let c = self.config();
        let executor = BlockExecutor::new(backend(&self.file, c, 0..c.n_layers), ExecutorConfig::default());
        LocalChain::new(vec![executor]).expect("one executor covers the model")
    }

    /// Embeddings of `tokens`.
    pub fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        self.head.embed(tokens).expect("tokens in the vocabulary")
    }
}

/// A server's configuration announcing `ms_per_block` for model `id`, and the handle of a
/// compute loop over `backend` (on a thread of its own).
fn compute(id: ModelId, backend: CpuBackend, ms_per_block: f64) -> (ServeConfig, ComputeHandle) {
    let mut serve = ServeConfig::for_backend(id, &backend, ServeLimits::default());
    serve.ms_per_block = ms_per_block;
    let executor = BlockExecutor::new(backend, serve.limits.executor_config());
    let (handle, compute) = ComputeLoop::new(executor, serve.limits.batch);
    std::thread::spawn(move || futures::executor::block_on(compute.run()));
    (serve, handle)
}

fn backend(file: &ModelFile, config: &LlamaConfig, blocks: Range<usize>) -> CpuBackend {
    let layers = file.load_layers(blocks.clone()).expect("layers");
    CpuBackend::new(config.clone(), blocks, layers).expect("backend")
}
