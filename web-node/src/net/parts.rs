//! `/ait/parts/1`: the part-exchange protocol. Nodes ask each other for byte ranges of model
//! parts by their BLAKE3 root and receive them with the proof that ties them to it
//! ([`crate::model::verified`]), so a downloader checks every chunk group and trusts no
//! sender.
//!
//! Requests one after another on a stream, in length-prefixed JSON frames ([`super::frame`]):
//! - `Have { roots }` is answered `Have { held }`: which of these parts the node can serve.
//! - `Get { root, start, end }` (at most [`MAX_RANGE`] bytes) is answered `Range { size }`,
//!   then one frame of the encoded range (its chunk groups with their proof), or `Error`.
//! - `Manifest { id }` is answered `Manifest { size }`, then one frame of the manifest's JSON
//!   (whose hash the fetcher checks against the id), or `Error`.
//! - `Models` is answered `Models { ids }`: the models whose manifests the node holds.
//! - `Card { id }` is answered `Card { size }`, then one frame: the model's card, signed by
//!   its creator ([`crate::model::card`]; the fetcher checks the signature and the model), or
//!   `Error`.
//!
//! Serving: [`PartStreams`] yields one task per incoming stream for the embedder to spawn,
//! answering from a [`PartSource`]. Fetching: [`fetch_range`] asks one peer for one range and
//! verifies it; [`fetch_ranges`] splits a part's missing ranges over several peers at once,
//! each asked for its next range while it answers one ([`PIPELINE`]), hands the next range
//! to whichever peer finished one (so the fastest do the most),
//! bans a peer whose data fails verification (proof that it lied), fetching its range from
//! the others, and once no range is left unasked, asks a free peer for a range still running
//! elsewhere (a stalled peer then holds nothing up). [`fetch_part`] assembles a part in memory;
//! [`fetch_manifest`] gets a model's manifest by its id, [`fetch_card`] its card.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, Future, Stream, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::frame::{read_frame, read_frame_into, write_frame, FrameError};
use super::keyed_limit::KeyedLimit;
use super::node::NodeHandle;
use crate::model::card::{ModelCard, MAX_CARD};
use crate::model::manifest::{ModelId, PartRef};
use crate::model::verified::{decode_range_into, group_range, PartRoot, PartTree, VerifyError};
use crate::model::Manifest;

/// The protocol id.
pub const PARTS_PROTOCOL: StreamProtocol = StreamProtocol::new("/ait/parts/1");

/// Most bytes one `Get` may ask for (64 chunk groups; with its proof it fits one frame).
pub const MAX_RANGE: u64 = 1 << 20;

/// Ranges a fetcher asks of one peer at once within one part ([`fetch_ranges`]): the next
/// request waits at the peer while the last answer travels and is checked.
pub const PIPELINE: usize = 2;

/// Largest part [`fetch_part`] assembles in memory (a block of a 70B model in Q8_0 is
/// about 1 GiB).
pub const MAX_PART: u64 = 4 << 30;

/// Largest encoded range a fetcher reads: [`MAX_RANGE`] widened to whole chunk groups, plus
/// its proof (64 bytes per tree node on the way, far under 128 KiB).
const MAX_BODY: usize = MAX_RANGE as usize + (128 << 10);

/// Longest a request or an answer may take to arrive once started.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Most roots one `Have` may name.
const MAX_HAVE: usize = 4096;

/// How long a fetcher waits before another stream after a transport error that came at once
/// (times the tries so far, plus a few ms that differ between ranges, so that streams dropped
/// together are not opened together again). Short: the peer's acceptor only has to take the
/// stream before, and a relay fetching its parts opens 8 streams to one seeder at its start.
const STREAM_RETRY: Duration = Duration::from_millis(50);

/// A transport error within this long of opening a stream "came at once".
const AT_ONCE: Duration = Duration::from_secs(2);

/// New streams tried after a transport error that came at once. Such an error is most often a
/// stream the peer never took: libp2p-stream drops an inbound stream while the one before it
/// still waits to be taken (its accept queue has a single slot; rust-libp2p #5651), which a
/// burst of streams from one fetcher (2 ranges of each of 4 parts) can hit.
const STREAM_RETRIES: u32 = 3;

/// Waits before try `tried + 1` of a new stream, `salt` spreading the tries of different
/// requests apart.
async fn stream_retry_wait(tried: u32, salt: u64) {
    futures_timer::Delay::new(STREAM_RETRY * tried + Duration::from_millis(salt % 8 * 10)).await;
}

/// Most requests answered on one stream.
const MAX_REQUESTS: usize = 4096;

/// Largest manifest sent or accepted (a 128-layer model's is about 60 KiB).
pub const MAX_MANIFEST: usize = 1 << 20;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Which of these parts (roots, hex) the node holds.
    Have {
        /// Part roots.
        roots: Vec<String>,
    },
    /// Bytes `start..end` of the part with this root (hex).
    Get {
        /// Part root.
        root: String,
        /// First byte.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// The manifest of the model with this id (hex).
    Manifest {
        /// Model id.
        id: String,
    },
    /// Which models' manifests the node holds.
    Models,
    /// The signed card of the model with this id (hex).
    Card {
        /// Model id.
        id: String,
    },
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// One flag per root asked.
    Have {
        /// Whether each is held.
        held: Vec<bool>,
    },
    /// The range follows in the next frame; the part has `size` bytes.
    Range {
        /// The part's size.
        size: u64,
    },
    /// The manifest's JSON follows in the next frame, `size` bytes.
    Manifest {
        /// Its length.
        size: u64,
    },
    /// Model ids (hex), at most [`MAX_HAVE`].
    Models {
        /// The ids.
        ids: Vec<String>,
    },
    /// The signed card follows in the next frame, `size` bytes.
    Card {
        /// Its length.
        size: u64,
    },
    /// The request was refused.
    Error {
        /// Why.
        message: String,
    },
}

/// A part a node holds, ready to answer ranges of: its bytes (in memory, or natively in a
/// file) and the tree built from them, which stay together unchanged (so answers need not
/// hash the bytes again).
pub struct HeldPart {
    body: Body,
    tree: PartTree,
}

enum Body {
    Memory(Bytes),
    /// A file holding exactly the part's bytes: a range is read when asked for.
    #[cfg(not(target_arch = "wasm32"))]
    File(std::fs::File),
}

impl HeldPart {
    /// Hashes `data` once.
    pub fn new(data: Bytes) -> HeldPart {
        let tree = PartTree::new(&data);
        HeldPart { body: Body::Memory(data), tree }
    }

    /// A part kept in `file`, which holds exactly `data` (hashed once here): answers read
    /// only the ranges asked, so a node can seed many large parts without holding them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn in_file(file: std::fs::File, data: &[u8]) -> HeldPart {
        HeldPart { body: Body::File(file), tree: PartTree::new(data) }
    }

    /// Its bytes, when they are held in memory.
    pub fn data(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Memory(b) => Some(b),
            #[cfg(not(target_arch = "wasm32"))]
            Body::File(_) => None,
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.tree.root().size
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its address.
    pub fn root(&self) -> PartRoot {
        self.tree.root()
    }

    /// The answer to a request for bytes `range`: its chunk groups with their proof.
    pub fn encode(&self, range: Range<u64>) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        self.encode_into(range, &mut out)?;
        Ok(out)
    }

    /// [`HeldPart::encode`] into `out` (cleared first), a buffer kept for the next answer.
    pub fn encode_into(&self, range: Range<u64>, out: &mut Vec<u8>) -> Result<(), VerifyError> {
        match &self.body {
            Body::Memory(b) => self.tree.encode_built_from(b, range, out),
            #[cfg(not(target_arch = "wasm32"))]
            Body::File(f) => self.tree.encode_from(f, range, out),
        }
    }
}

/// The last few parts loaded, kept whole with their trees so that the next request for one
/// is answered without reading and hashing it again; the oldest leaves first.
#[derive(Default)]
pub struct RecentParts {
    /// Oldest first.
    parts: Vec<(String, Arc<HeldPart>)>,
}

impl RecentParts {
    /// Parts kept at once.
    pub const KEEP: usize = 8;

    /// The part `root`, if it is kept.
    pub fn get(&self, root: &str) -> Option<Arc<HeldPart>> {
        self.parts.iter().find(|(r, _)| r == root).map(|(_, p)| p.clone())
    }

    /// Keeps `part` under `root`, dropping the oldest beyond [`Self::KEEP`].
    pub fn insert(&mut self, root: &str, part: Arc<HeldPart>) {
        self.parts.retain(|(r, _)| r != root);
        if self.parts.len() >= Self::KEEP {
            self.parts.remove(0);
        }
        self.parts.push((root.to_string(), part));
    }

    /// Drops the part `root`.
    pub fn remove(&mut self, root: &str) {
        self.parts.retain(|(r, _)| r != root);
    }
}

/// Where a serving node finds the parts it offers, by root (64 lowercase hex digits, checked
/// before these are called).
pub trait PartSource: Send + Sync {
    /// The part with this root, if this node has it.
    fn part(&self, root: &str) -> Option<Arc<HeldPart>>;

    /// Whether this node has the part with this root (without loading it).
    fn has(&self, root: &str) -> bool;

    /// The JSON of the manifest of model `id`, if this node has it.
    fn manifest(&self, id: &ModelId) -> Option<Bytes>;

    /// The models whose manifests this node has.
    fn models(&self) -> Vec<ModelId>;

    /// The signed card of model `id` ([`ModelCard::sign`]'s bytes), if this node has one.
    fn card(&self, id: &ModelId) -> Option<Bytes>;
}

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The stream could not be opened or broke.
    #[error("stream to {peer}: {what}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// What failed.
        what: String,
    },
    /// The peer refused the request.
    #[error("{peer} refused: {message}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        message: String,
    },
    /// The peer's data failed verification: it lied.
    #[error("{peer} sent bad data: {error}")]
    Lied {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        error: VerifyError,
    },
    /// The peer sent a manifest that does not parse or is not the one asked for.
    #[error("{peer} sent a bad manifest: {what}")]
    BadManifest {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        what: String,
    },
    /// The peer sent a card that does not open: a bad signature, or about another model.
    #[error("{peer} sent a bad card: {what}")]
    BadCard {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        what: String,
    },
    /// The request itself is invalid (a range past the end, a malformed root).
    #[error("{0}")]
    Invalid(#[from] VerifyError),
    /// The caller's sink refused a verified range (a full disk, for a store).
    #[error("storing bytes {start}..{end}: {what}")]
    Sink {
        /// First byte of the range.
        start: u64,
        /// Its end.
        end: u64,
        /// What failed.
        what: String,
    },
    /// Every peer failed or was banned before the part was complete.
    #[error("no peer left to fetch bytes {start}..{end} from (banned: {banned:?}; last error: {last})")]
    NoPeers {
        /// The range still missing.
        start: u64,
        /// Its end.
        end: u64,
        /// Peers banned for lying.
        banned: Vec<PeerId>,
        /// The last failure.
        last: String,
    },
}

/// `root` in lowercase, if it is 64 hex digits.
fn parse_root(root: &str) -> Option<String> {
    let lower = root.to_ascii_lowercase();
    PartRef { size: 0, root: lower.clone(), flops: 0 }.address().map(|_| lower)
}

/// What one request is answered: the reply, and whether a frame follows it (then held in
/// `body`, a buffer kept for the next answer).
fn answer(source: &dyn PartSource, request: Request, body: &mut Vec<u8>) -> Result<(Reply, bool), String> {
    let document = |body: &mut Vec<u8>, bytes: &[u8]| {
        body.clear();
        body.extend_from_slice(bytes);
        bytes.len() as u64
    };
    match request {
        Request::Have { roots } if roots.len() <= MAX_HAVE => {
            let held = roots.iter().map(|r| parse_root(r).is_some_and(|r| source.has(&r))).collect();
            Ok((Reply::Have { held }, false))
        }
        Request::Have { roots } => Err(format!("{} roots asked, at most {MAX_HAVE}", roots.len())),
        Request::Get { root, start, end } => {
            let key = parse_root(&root).ok_or_else(|| format!("root {root:?} is not 64 hex digits"))?;
            let part = source.part(&key).ok_or_else(|| format!("part {root} is not held here"))?;
            let size = part.len();
            if end.saturating_sub(start) > MAX_RANGE {
                return Err(format!("{} bytes asked, at most {MAX_RANGE} per request", end.saturating_sub(start)));
            }
            part.encode_into(start..end, body).map_err(|e| e.to_string())?;
            Ok((Reply::Range { size }, true))
        }
        Request::Manifest { id } => {
            let model = ModelId::from_hex(&id).ok_or_else(|| format!("model id {id:?} is not 64 hex digits"))?;
            let json = source.manifest(&model).ok_or_else(|| format!("model {id} is not known here"))?;
            Ok((Reply::Manifest { size: document(body, &json) }, true))
        }
        Request::Models => {
            let ids = source.models().iter().take(MAX_HAVE).map(ModelId::to_hex).collect();
            Ok((Reply::Models { ids }, false))
        }
        Request::Card { id } => {
            let model = ModelId::from_hex(&id).ok_or_else(|| format!("model id {id:?} is not 64 hex digits"))?;
            let card = source.card(&model).ok_or_else(|| format!("no card of model {id} here"))?;
            Ok((Reply::Card { size: document(body, &card) }, true))
        }
    }
}

/// Buffers for a node's part answers, shared by its streams: each answer takes one and gives
/// it back once sent, so an answer costs no allocation and a stream waiting for its next
/// request holds none. At most [`SPARE_ANSWERS`] wait between answers.
#[derive(Clone, Default)]
pub struct AnswerBuffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// Answer buffers kept between answers (about 1 MiB each).
const SPARE_ANSWERS: usize = 8;

impl AnswerBuffers {
    fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn give(&self, buffer: Vec<u8>) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_ANSWERS {
            spare.push(buffer);
        }
    }
}

/// Serves requests on `stream` from `source`, one after another (a fetcher keeps a stream for
/// its next range, so its flow-control window stays open), the answers paced by `pace` if
/// given, each written from a buffer taken from `buffers`. Ends when the peer closes, stays
/// idle for [`FRAME_TIMEOUT`], sends a request that does not parse, or has made
/// [`MAX_REQUESTS`].
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    source: &dyn PartSource,
    pace: Option<&Pace>,
    traffic: &PartTraffic,
    buffers: &AnswerBuffers,
    mut stream: S,
) {
    for _ in 0..MAX_REQUESTS {
        let bytes = match read_frame(&mut stream, 1 << 20, FRAME_TIMEOUT, FRAME_TIMEOUT).await {
            Ok(b) => b,
            Err(FrameError::Closed) => break,
            Err(e) => {
                tracing::debug!("part request: {e}");
                break;
            }
        };
        let request = serde_json::from_slice::<Request>(&bytes).map_err(|e| format!("malformed request: {e}"));
        let malformed = request.is_err();
        let mut body = buffers.take();
        let (reply, follows) = match request.and_then(|r| answer(source, r, &mut body)) {
            Ok(r) => r,
            Err(message) => (Reply::Error { message }, false),
        };
        if let (Some(pace), true) = (pace, follows) {
            pace.take(body.len()).await;
        }
        let send = async {
            write_frame(&mut stream, &serde_json::to_vec(&reply).unwrap_or_default()).await?;
            if follows {
                write_frame(&mut stream, &body).await?;
                if matches!(reply, Reply::Range { .. }) {
                    traffic.sent.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok::<_, FrameError>(())
        };
        let sent = super::timeout(FRAME_TIMEOUT, send).await.unwrap_or(Err(FrameError::Timeout(FRAME_TIMEOUT)));
        buffers.give(body);
        if let Err(e) = sent {
            tracing::debug!("part request: {e}");
            break;
        }
        if malformed {
            break;
        }
    }
    let _ = super::timeout(FRAME_TIMEOUT, stream.close()).await;
}

/// What a node has given and taken in parts: its seeding ratio.
#[derive(Debug, Default)]
pub struct PartTraffic {
    /// Bytes of part ranges sent to other nodes (their proofs included).
    pub sent: std::sync::atomic::AtomicU64,
    /// Verified bytes of parts received from other nodes.
    pub received: std::sync::atomic::AtomicU64,
    /// Part streams other nodes opened to this one and it took (within its limits).
    pub streams: std::sync::atomic::AtomicU64,
}

impl PartTraffic {
    /// Bytes sent and received so far.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.sent.load(Relaxed), self.received.load(Relaxed))
    }

    /// Sent over received; `None` before anything was received.
    pub fn ratio(&self) -> Option<f64> {
        let (sent, received) = self.totals();
        (received > 0).then(|| sent as f64 / received as f64)
    }
}

/// A future serving one part stream.
pub type PartTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How much a node gives to others: part streams open at once, in all and per peer, distinct
/// peers served at once, and the bytes per second all its answers may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeedLimits {
    /// Streams served at once.
    pub max_streams: usize,
    /// Streams one peer may have open at once.
    pub max_per_peer: usize,
    /// Distinct peers served at once.
    pub max_peers: usize,
    /// Upload rate over all part streams, bytes per second (`None`: unlimited).
    pub bytes_per_sec: Option<u64>,
}

impl Default for SeedLimits {
    fn default() -> Self {
        SeedLimits { max_streams: 64, max_per_peer: 16, max_peers: 32, bytes_per_sec: None }
    }
}

/// Paces sends to a rate: each send waits until the bytes before it have had their time.
#[derive(Clone)]
pub struct Pace {
    next: Arc<std::sync::Mutex<web_time::Instant>>,
    bytes_per_sec: f64,
}

impl Pace {
    /// A pace of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            next: Arc::new(std::sync::Mutex::new(web_time::Instant::now())),
            bytes_per_sec: bytes_per_sec.max(1) as f64,
        }
    }

    /// Waits until `n` more bytes may go.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = web_time::Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *next - now
        };
        futures_timer::Delay::new(wait).await;
    }
}

/// Incoming `/ait/parts/1` streams, each as a [`PartTask`] to spawn. Streams beyond the
/// [`SeedLimits`] are closed at once; answers are paced to their rate.
pub struct PartStreams {
    incoming: libp2p_stream::IncomingStreams,
    source: Arc<dyn PartSource>,
    open: KeyedLimit<PeerId>,
    pace: Option<Pace>,
    traffic: Arc<PartTraffic>,
    buffers: AnswerBuffers,
}

impl PartStreams {
    /// Registers the protocol on `control` and answers from `source` within `limits`.
    pub fn new(
        control: &mut libp2p_stream::Control,
        source: Arc<dyn PartSource>,
        limits: SeedLimits,
    ) -> Result<PartStreams, libp2p_stream::AlreadyRegistered> {
        let incoming = control.accept(PARTS_PROTOCOL)?;
        let open = KeyedLimit::new(limits.max_streams, limits.max_per_peer).with_max_keys(limits.max_peers);
        let pace = limits.bytes_per_sec.map(Pace::new);
        Ok(PartStreams { incoming, source, open, pace, traffic: Arc::default(), buffers: AnswerBuffers::default() })
    }

    /// Counts the bytes sent in `traffic` (for the node's seeding ratio).
    pub fn with_traffic(mut self, traffic: Arc<PartTraffic>) -> PartStreams {
        self.traffic = traffic;
        self
    }
}

impl Stream for PartStreams {
    type Item = PartTask;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PartTask>> {
        loop {
            let Some((peer, stream)) = futures::ready!(self.incoming.poll_next_unpin(cx)) else {
                return Poll::Ready(None);
            };
            let Ok(permit) = self.open.admit(peer, false) else {
                tracing::debug!(%peer, "too many part streams; closing one");
                continue;
            };
            self.traffic.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (source, pace, traffic) = (self.source.clone(), self.pace.clone(), self.traffic.clone());
            let buffers = self.buffers.clone();
            return Poll::Ready(Some(Box::pin(async move {
                serve_stream(&*source, pace.as_ref(), &traffic, &buffers, stream).await;
                drop(permit);
            })));
        }
    }
}

/// Asks `peer` for bytes `range` of `part` and verifies them: the bytes of the range's whole
/// chunk groups ([`group_range`]).
pub async fn fetch_range(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    part: &PartRef,
    range: Range<u64>,
) -> Result<Vec<u8>, FetchError> {
    let mut stream = RangeStream::new(open(control, peer).await?);
    stream.get(peer, part, range).await?;
    Ok(stream.data)
}

/// A part stream to one peer with its buffers, kept from one range to the next, so that a
/// range costs neither a new stream nor an allocation.
struct RangeStream {
    stream: libp2p::Stream,
    /// The last answer's frame: the range's groups with their proof.
    frame: Vec<u8>,
    /// The last range's verified bytes.
    data: Vec<u8>,
}

/// A range's frame and data buffers, passed on from one range to the next.
type RangeBuffers = (Vec<u8>, Vec<u8>);

impl RangeStream {
    fn new(stream: libp2p::Stream) -> RangeStream {
        RangeStream::with_buffers(stream, RangeBuffers::default())
    }

    fn with_buffers(stream: libp2p::Stream, (frame, data): RangeBuffers) -> RangeStream {
        RangeStream { stream, frame, data }
    }

    fn into_parts(self) -> (libp2p::Stream, RangeBuffers) {
        (self.stream, (self.frame, self.data))
    }

    /// Asks for bytes `range` of `part` and verifies them into `self.data`.
    async fn get(&mut self, peer: PeerId, part: &PartRef, range: Range<u64>) -> Result<(), FetchError> {
        let root =
            part.address().ok_or_else(|| VerifyError::Local(format!("root {:?} is not 64 hex digits", part.root)))?;
        root.check_range(&range)?;
        let broke = |what: String| FetchError::Stream { peer, what };
        let request = Request::Get { root: part.root.clone(), start: range.start, end: range.end };
        match ask_on(&mut self.stream, peer, &request).await? {
            Reply::Range { size } if size == part.size => {}
            Reply::Range { size } => {
                let error = VerifyError::Local(format!("a part of {size} bytes, {} announced", part.size));
                return Err(FetchError::Lied { peer, error });
            }
            other => return Err(broke(format!("unexpected answer {other:?}"))),
        }
        let n = read_frame_into(&mut self.stream, MAX_BODY, FRAME_TIMEOUT, FRAME_TIMEOUT, &mut self.frame)
            .await
            .map_err(|e| broke(e.to_string()))?;
        decode_range_into(root, range, &self.frame[..n], &mut self.data)
            .map_err(|error| FetchError::Lied { peer, error })
    }
}

/// Part streams left open after a fetch, per peer, for the next fetch from that peer. A
/// stream's flow-control window grows while it carries ranges (a new yamux stream starts at
/// 256 KiB), so parts fetched one after another keep the rate the first one reached instead
/// of starting over (measured in `cargo bench -p ait-tests --bench torrent`). A stream idle
/// longer than [`POOL_IDLE`] is not reused, since the seeder closes it after
/// [`FRAME_TIMEOUT`]; a reused stream found closed is replaced by a new one.
#[derive(Clone, Default)]
pub struct StreamPool(Arc<std::sync::Mutex<PoolMap>>);

type PoolMap = std::collections::HashMap<PeerId, Vec<(libp2p::Stream, web_time::Instant)>>;

/// How long a pooled stream may sit idle and still be reused.
const POOL_IDLE: Duration = Duration::from_secs(20);
/// Streams kept per peer (a seeder admits 16 from one peer by default).
const POOL_PER_PEER: usize = 8;
/// Peers with streams kept.
const POOL_PEERS: usize = 64;

impl StreamPool {
    fn map(&self) -> std::sync::MutexGuard<'_, PoolMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream to `peer` left by an earlier fetch, if one is fresh enough.
    fn take(&self, peer: PeerId) -> Option<libp2p::Stream> {
        let mut map = self.map();
        let kept = map.get_mut(&peer)?;
        kept.retain(|(_, at)| at.elapsed() < POOL_IDLE);
        let stream = kept.pop().map(|(s, _)| s);
        if kept.is_empty() {
            map.remove(&peer);
        }
        stream
    }

    /// Keeps `stream` to `peer` for a later fetch, within the pool's limits.
    fn put(&self, peer: PeerId, stream: libp2p::Stream) {
        let mut map = self.map();
        map.retain(|_, kept| {
            kept.retain(|(_, at)| at.elapsed() < POOL_IDLE);
            !kept.is_empty()
        });
        if map.len() >= POOL_PEERS && !map.contains_key(&peer) {
            return;
        }
        let kept = map.entry(peer).or_default();
        if kept.len() < POOL_PER_PEER {
            kept.push((stream, web_time::Instant::now()));
        }
    }
}

/// Opens a `/ait/parts/1` stream to `peer`.
async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<libp2p::Stream, FetchError> {
    let broke = |what: String| FetchError::Stream { peer, what };
    let open = super::timeout(FRAME_TIMEOUT, control.open_stream(peer, PARTS_PROTOCOL));
    open.await.ok_or_else(|| broke("timed out opening a stream".into()))?.map_err(|e| broke(e.to_string()))
}

/// Opens a stream to `peer`, sends `request` and reads the answer's first frame; an `Error`
/// answer is [`FetchError::Refused`]. A transport error that comes at once is tried again on a
/// new stream (up to [`STREAM_RETRIES`] times), as [`range_on`] does.
async fn ask(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &Request,
) -> Result<(libp2p::Stream, Reply), FetchError> {
    let mut tried = 0;
    loop {
        let started = web_time::Instant::now();
        let got = async {
            let mut stream = open(control, peer).await?;
            let reply = ask_on(&mut stream, peer, request).await?;
            Ok((stream, reply))
        };
        match got.await {
            Err(e @ FetchError::Stream { .. }) if tried < STREAM_RETRIES && started.elapsed() < AT_ONCE => {
                tracing::debug!(%peer, "{e}; trying a new stream");
                tried += 1;
                stream_retry_wait(tried, 0).await;
            }
            got => return got,
        }
    }
}

/// Sends `request` on `stream` and reads the answer's first frame.
async fn ask_on(stream: &mut libp2p::Stream, peer: PeerId, request: &Request) -> Result<Reply, FetchError> {
    let broke = |what: String| FetchError::Stream { peer, what };
    write_frame(stream, &serde_json::to_vec(request).unwrap_or_default()).await.map_err(|e| broke(e.to_string()))?;
    let head = read_frame(stream, 1 << 16, FRAME_TIMEOUT, FRAME_TIMEOUT).await.map_err(|e| broke(e.to_string()))?;
    match serde_json::from_slice::<Reply>(&head) {
        Ok(Reply::Error { message }) => Err(FetchError::Refused { peer, message }),
        Ok(reply) => Ok(reply),
        Err(e) => Err(broke(format!("malformed answer: {e}"))),
    }
}

/// One range from `peer` into the returned stream's `data`, read with `buffers`, on `reused`
/// (a stream left from its last range) if given, else on a new stream (also when the reused
/// one turns out closed). Returns the stream, with the buffers, for the next range after a
/// success.
async fn range_on(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    reused: Option<libp2p::Stream>,
    mut buffers: RangeBuffers,
    part: &PartRef,
    range: Range<u64>,
) -> Result<RangeStream, FetchError> {
    if let Some(s) = reused {
        let mut s = RangeStream::with_buffers(s, buffers);
        match s.get(peer, part, range.clone()).await {
            Ok(()) => return Ok(s),
            Err(FetchError::Stream { .. }) => buffers = s.into_parts().1,
            Err(e) => return Err(e),
        }
    }
    // A new stream the peer dropped untaken (see STREAM_RETRIES), or one that landed on a
    // closing connection, fails at once: another a moment later gets through. (A peer that
    // timed out is not asked again here.)
    let mut tried = 0;
    loop {
        let started = web_time::Instant::now();
        let got = match open(&mut control, peer).await {
            Ok(s) => {
                let mut s = RangeStream::with_buffers(s, std::mem::take(&mut buffers));
                match s.get(peer, part, range.clone()).await {
                    Ok(()) => Ok(s),
                    Err(e) => {
                        buffers = s.into_parts().1;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        match got {
            Err(e @ FetchError::Stream { .. }) if tried < STREAM_RETRIES && started.elapsed() < AT_ONCE => {
                tracing::debug!(%peer, "part range {range:?}: {e}; trying a new stream");
                tried += 1;
                stream_retry_wait(tried, range.start / MAX_RANGE).await;
            }
            got => return got,
        }
    }
}

/// Asks `peer` which of `roots` it holds; one flag per root.
pub async fn fetch_have(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    roots: &[String],
) -> Result<Vec<bool>, FetchError> {
    let (_, reply) = ask(control, peer, &Request::Have { roots: roots.to_vec() }).await?;
    match reply {
        Reply::Have { held } if held.len() == roots.len() => Ok(held),
        other => Err(FetchError::Stream { peer, what: format!("unexpected answer {other:?}") }),
    }
}

/// Asks `peer` which models' manifests it holds.
pub async fn fetch_models(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<Vec<ModelId>, FetchError> {
    let (_, reply) = ask(control, peer, &Request::Models).await?;
    match reply {
        Reply::Models { ids } if ids.len() <= MAX_HAVE => Ok(ids.iter().filter_map(|i| ModelId::from_hex(i)).collect()),
        other => Err(FetchError::Stream { peer, what: format!("unexpected answer {other:?}") }),
    }
}

/// Asks `peer` for a document of at most `max` bytes that follows its answer in one frame (a
/// manifest or a card): the answer's announced size, checked by `size`, then the bytes.
async fn fetch_document(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &Request,
    max: usize,
    size: impl Fn(&Reply) -> Option<u64>,
) -> Result<Vec<u8>, FetchError> {
    let broke = |what: String| FetchError::Stream { peer, what };
    let (mut stream, reply) = ask(control, peer, request).await?;
    match size(&reply) {
        Some(n) if n <= max as u64 => {}
        _ => return Err(broke(format!("unexpected answer {reply:?}"))),
    }
    read_frame(&mut stream, max, FRAME_TIMEOUT, FRAME_TIMEOUT).await.map_err(|e| broke(e.to_string()))
}

/// Asks `peer` for the manifest of model `id` and checks that it is that model's: its hash
/// is the id, so no peer can hand over another model under it.
pub async fn fetch_manifest(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    id: &ModelId,
) -> Result<Manifest, FetchError> {
    let bad = |what: String| FetchError::BadManifest { peer, what };
    let request = Request::Manifest { id: id.to_hex() };
    let size = |r: &Reply| if let Reply::Manifest { size } = r { Some(*size) } else { None };
    let body = fetch_document(control, peer, &request, MAX_MANIFEST, size).await?;
    let manifest = Manifest::from_json(&body).map_err(|e| bad(e.to_string()))?;
    if manifest.id() != *id {
        return Err(bad(format!("it is the manifest of model {}", manifest.id().to_hex())));
    }
    Ok(manifest)
}

/// Asks `peer` for the card of model `id` and opens it ([`ModelCard::open`]): signed, and
/// about this model. Returns the card, its creator and the signed bytes (to keep and pass on).
pub async fn fetch_card(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    id: &ModelId,
) -> Result<(ModelCard, PeerId, Bytes), FetchError> {
    let request = Request::Card { id: id.to_hex() };
    let size = |r: &Reply| if let Reply::Card { size } = r { Some(*size) } else { None };
    let body = fetch_document(control, peer, &request, MAX_CARD, size).await?;
    let (card, creator) = ModelCard::open(&body, id).map_err(|e| FetchError::BadCard { peer, what: e.to_string() })?;
    Ok((card, creator, Bytes::from(body)))
}

/// The ranges a part of `size` bytes is fetched in: [`MAX_RANGE`] bytes each (whole chunk
/// groups), the last one shorter. Range `i` starts at `i * MAX_RANGE`.
pub fn ranges_of(size: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(MAX_RANGE)).map(|i| i * MAX_RANGE..((i + 1) * MAX_RANGE).min(size)).collect()
}

/// What [`fetch_part`] did, for the caller's progress and ratio.
#[derive(Clone, Debug, Default)]
pub struct FetchReport {
    /// Verified bytes received from each peer.
    pub from: Vec<(PeerId, u64)>,
    /// Peers banned for sending data that failed verification.
    pub banned: Vec<PeerId>,
}

/// Fetches the whole of `part` from `peers` into memory ([`fetch_ranges`] over all of
/// [`ranges_of`] its size). Returns the verified bytes.
pub async fn fetch_part(
    node: &NodeHandle,
    peers: &[PeerId],
    part: &PartRef,
    parallel: usize,
) -> Result<(Vec<u8>, FetchReport), FetchError> {
    let size = usize::try_from(part.size).ok().filter(|&n| n as u64 <= MAX_PART);
    let size = size.ok_or_else(|| VerifyError::Local(format!("a part of {} bytes (at most {MAX_PART})", part.size)))?;
    let mut out = vec![0u8; size];
    let report = fetch_ranges(node, peers, part, ranges_of(part.size), parallel, |range, bytes| {
        out[range.start as usize..range.end as usize].copy_from_slice(bytes);
        Ok(())
    })
    .await?;
    Ok((out, report))
}

/// Fetches `todo` (ranges of [`ranges_of`] `part.size`) from `peers`, handing each verified
/// range to `sink` once. Each peer has [`PIPELINE`] slots (one until it has answered a
/// range), and up to `PIPELINE × parallel` ranges (`PIPELINE ×` the peers, when fewer) run at
/// once: with no more peers than `parallel`, each is asked for its next range while it
/// answers one, rather than waiting a round trip per range, and a slow peer holds no more
/// than its slots (with more peers, the slots take turns). A range goes to the next free slot
/// (the fastest peers' slots come back first and take more), a peer
/// whose data fails verification is banned for the rest of the fetch, and a peer that fails
/// otherwise more than [`PIPELINE`] times is dropped; their ranges go to the others. When
/// every range has been asked for, a free slot is also asked for a range still running on
/// another peer (the first verified answer counts), so a peer that stalls holds the fetch up
/// no longer than the fastest other takes.
pub async fn fetch_ranges<F>(
    node: &NodeHandle,
    peers: &[PeerId],
    part: &PartRef,
    todo: Vec<Range<u64>>,
    parallel: usize,
    mut sink: F,
) -> Result<FetchReport, FetchError>
where
    F: FnMut(Range<u64>, &[u8]) -> Result<(), String>,
{
    if part.size > MAX_PART {
        return Err(VerifyError::Local(format!("a part of {} bytes (at most {MAX_PART})", part.size)).into());
    }
    let mut todo: Vec<Range<u64>> = todo.into_iter().rev().collect();
    // One entry per free slot, the peers taking turns. A peer starts with one slot and gets
    // the rest of its PIPELINE once it has answered a range, so a fetch's first streams come
    // one per peer (a burst of new streams is what the peer's acceptor drops; see
    // STREAM_RETRIES) and a peer that never answers holds one range only.
    let mut free: std::collections::VecDeque<PeerId> = peers.iter().copied().collect();
    let mut slots: std::collections::HashMap<PeerId, usize> = peers.iter().map(|p| (*p, 1)).collect();
    let at_once = PIPELINE * parallel.clamp(1, peers.len().max(1));
    // Peers banned or dropped: their slots are not given back.
    let mut gone: std::collections::HashSet<PeerId> = Default::default();
    let mut failures: std::collections::HashMap<PeerId, u32> = Default::default();
    let mut report = FetchReport::default();
    let mut last = String::from("none");
    // Ranges asked for and not yet stored, with the peers asked; stored ones are forgotten.
    let mut asked: Vec<(Range<u64>, Vec<PeerId>)> = Vec::new();
    // Streams left open by each peer's last ranges, for its next.
    let mut idle: std::collections::HashMap<PeerId, Vec<libp2p::Stream>> = Default::default();
    // Buffers of finished ranges, for the next ones: at most one set per range that may run,
    // however many peers take turns.
    let mut spare: Vec<RangeBuffers> = Vec::new();
    let mut running = FuturesUnordered::new();
    let (control, pool) = (node.control(), node.part_streams());
    let result = loop {
        if todo.is_empty() && asked.is_empty() {
            // Done; duplicates still running (a stalled peer) are dropped with `running`.
            break Ok(report);
        }
        while running.len() < at_once {
            let (peer, range) = match todo.pop() {
                Some(r) => {
                    let Some(peer) = free.pop_front() else {
                        todo.push(r);
                        break;
                    };
                    asked.push((r.clone(), vec![peer]));
                    (peer, r)
                }
                // End game: the first free slot whose peer has not been asked for the oldest
                // range asked of one peer only (any free slot, not just the first in line, so
                // a peer whose own range is the one still running holds no other peer back).
                None => {
                    let pick = free.iter().enumerate().find_map(|(i, p)| {
                        asked.iter().position(|(_, by)| by.len() == 1 && !by.contains(p)).map(|j| (i, j))
                    });
                    let Some((i, j)) = pick else {
                        break;
                    };
                    let Some(peer) = free.remove(i) else {
                        break;
                    };
                    asked[j].1.push(peer);
                    (peer, asked[j].0.clone())
                }
            };
            let (control, part) = (control.clone(), part.clone());
            let reused = idle.get_mut(&peer).and_then(Vec::pop).or_else(|| pool.take(peer));
            let buffers = spare.pop().unwrap_or_default();
            running.push(async move {
                let got = range_on(control, peer, reused, buffers, &part, range.clone()).await;
                (peer, range, got)
            });
        }
        if running.is_empty() {
            let Some(r) = todo.last() else {
                break Ok(report);
            };
            break Err(FetchError::NoPeers { start: r.start, end: r.end, banned: report.banned, last });
        }
        let Some((peer, range, got)) = running.next().await else {
            continue;
        };
        let slot = asked.iter().position(|(r, _)| *r == range);
        match got {
            Ok(stream) => {
                let bytes = &stream.data;
                if let Some(i) = slot {
                    let span = group_range(&range, part.size);
                    if let Err(what) = sink(span.clone(), bytes) {
                        break Err(FetchError::Sink { start: span.start, end: span.end, what });
                    }
                    asked.swap_remove(i);
                    match report.from.iter_mut().find(|(p, _)| *p == peer) {
                        Some((_, n)) => *n += bytes.len() as u64,
                        None => report.from.push((peer, bytes.len() as u64)),
                    }
                }
                let (stream, buffers) = stream.into_parts();
                if spare.len() < at_once {
                    spare.push(buffers);
                }
                if !gone.contains(&peer) {
                    idle.entry(peer).or_default().push(stream);
                    free.push_back(peer);
                    let n = slots.entry(peer).or_insert(PIPELINE);
                    if *n < PIPELINE {
                        *n += 1;
                        free.push_back(peer);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%peer, "part range {range:?}: {e}");
                last = e.to_string();
                if let Some(i) = slot {
                    asked[i].1.retain(|p| *p != peer);
                    if asked[i].1.is_empty() {
                        asked.swap_remove(i);
                        todo.push(range);
                    }
                }
                let n = failures.entry(peer).or_default();
                *n += 1;
                if matches!(e, FetchError::Lied { .. }) {
                    // Banned even if it was dropped already: its lie is on record.
                    if !report.banned.contains(&peer) {
                        report.banned.push(peer);
                    }
                    gone.insert(peer);
                    free.retain(|p| *p != peer);
                } else if gone.contains(&peer) {
                    // Already dropped: another of its ranges failing changes nothing.
                } else if *n > PIPELINE as u32 {
                    gone.insert(peer);
                    free.retain(|p| *p != peer);
                } else {
                    free.push_back(peer);
                }
            }
        }
    };
    // Streams that finished their last range serve the next fetch from the same peer; those
    // of peers that lied or kept failing are dropped.
    for (peer, streams) in idle {
        if !gone.contains(&peer) {
            streams.into_iter().for_each(|s| pool.put(peer, s));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(byte: u8) -> Arc<HeldPart> {
        Arc::new(HeldPart::new(Bytes::from(vec![byte; 100])))
    }

    #[test]
    fn a_part_in_a_file_answers_as_in_memory_and_never_sends_bytes_gone_bad() {
        use std::io::{Seek, Write};
        let data: Vec<u8> = (0..3 * MAX_RANGE as usize + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let memory = HeldPart::new(Bytes::from(data.clone()));
        let path = std::env::temp_dir().join(format!("ait-held-part-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let in_file = HeldPart::in_file(std::fs::File::open(&path).unwrap(), &data);
        assert_eq!(in_file.root(), memory.root());
        assert!(in_file.data().is_none());
        for range in [0..MAX_RANGE, MAX_RANGE..2 * MAX_RANGE + 5, 3 * MAX_RANGE..data.len() as u64] {
            assert_eq!(in_file.encode(range.clone()).unwrap(), memory.encode(range).unwrap());
        }
        // A byte of the file changes under the tree: that range is refused, others still go.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(MAX_RANGE + 100)).unwrap();
        f.write_all(&[data[MAX_RANGE as usize + 100] ^ 1]).unwrap();
        drop(f);
        assert!(matches!(in_file.encode(MAX_RANGE..2 * MAX_RANGE), Err(VerifyError::Local(_))));
        assert!(in_file.encode(0..MAX_RANGE).is_ok());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn recent_parts_keep_the_last_used_and_drop_the_oldest() {
        let mut recent = RecentParts::default();
        for i in 0..RecentParts::KEEP as u8 {
            recent.insert(&i.to_string(), part(i));
        }
        // Used again: "0" becomes the newest, so "1" is the oldest.
        recent.insert("0", part(0));
        recent.insert("new", part(200));
        assert!(recent.get("1").is_none(), "the oldest part stays");
        assert_eq!(recent.get("0").and_then(|p| p.data().map(|d| d[0])), Some(0));
        assert_eq!(recent.get("new").and_then(|p| p.data().map(|d| d[0])), Some(200));
        assert!((2..RecentParts::KEEP as u8).all(|i| recent.get(&i.to_string()).is_some()));
        recent.remove("0");
        assert!(recent.get("0").is_none());
    }
}
