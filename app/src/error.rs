//! [`AppError`]: everything that can go wrong in the page, one variant per cause. Its
//! `Display` is the line the page shows.

use std::ops::Range;

use web_node::client::{ClientError, GenerateError};
use web_node::engine::EngineError;
use web_node::model::card::CardError;
use web_node::model::ModelError;
use web_node::net::browser::BrowserNodeError;
use web_node::net::chain::ChainError;
use web_node::net::node::NetError;
use web_node::net::serve::{ServeError, SpanError};

/// Why something the page tried failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A request to the relay got no answer at all.
    #[error("{url}: the relay does not answer ({reason})")]
    NoAnswer {
        /// What was requested.
        url: String,
        /// What the browser said.
        reason: String,
    },
    /// The relay answered a request with an error status.
    #[error("{url}: HTTP {status} {body}")]
    Status {
        /// What was requested.
        url: String,
        /// HTTP status.
        status: u16,
        /// The relay's explanation (the body).
        body: String,
    },
    /// A body that is not what the page expects (JSON that does not parse).
    #[error("{url}: {reason}")]
    BadBody {
        /// What was requested.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A download broke off.
    #[error("download interrupted: {0}")]
    Interrupted(String),
    /// A browser API call failed (the JavaScript exception's message).
    #[error("{0}")]
    Browser(String),
    /// The wallet is missing, refused, or answered something unusable.
    #[error("wallet: {0}")]
    Wallet(String),
    /// The relay's manifest of a model does not hash to the model's id.
    #[error("the relay's manifest for {expected} hashes to {actual}")]
    ManifestMismatch {
        /// The id asked for (short).
        expected: String,
        /// The id the manifest has (short).
        actual: String,
    },
    /// The file picked to publish is not a model this network can serve.
    #[error("cannot publish this file: {0}")]
    Publish(ModelError),
    /// The labels do not make a valid model card.
    #[error("cannot sign the model card: {0}")]
    Card(CardError),
    /// The manifest lists no such part (or no parts at all).
    #[error("the model's manifest lists no {0}")]
    NoPart(String),
    /// A downloaded part (head or block) failed verification against the manifest.
    #[error(transparent)]
    Verify(ModelError),
    /// The verified head part does not make a client model (tokenizer, template, head).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Not a model id.
    #[error("bad model id {0:?}")]
    BadModelId(String),
    /// The tab's node could not start.
    #[error(transparent)]
    NodeStart(#[from] BrowserNodeError),
    /// None of the relay's addresses could be dialed.
    #[error("cannot reach the relay: {}", .0.join("; "))]
    RelayUnreachable(Vec<String>),
    /// The tab's node failed an operation.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Something needs the swarm before the tab joined it.
    #[error("not connected to the swarm yet")]
    NotConnected,
    /// The relay did not give the tab a circuit address to be reached at.
    #[error("the relay did not grant a circuit reservation within 10 s")]
    NoReservation,
    /// The browser has no WebGPU (or no adapter/device: the reason).
    #[error("WebGPU is not available in this browser{}: this tab can chat but not seed.", reason(.0))]
    NoWebGpu(Option<EngineError>),
    /// The adapter's memory budget does not fit one block.
    #[error("{adapter} has too little memory for one block ({budget_mb} MB budget)")]
    TooLittleMemory {
        /// Adapter name.
        adapter: String,
        /// The budget, MB.
        budget_mb: u64,
    },
    /// Uploading the blocks to the GPU failed.
    #[error("{adapter} cannot hold blocks {}..{}: {source}", .blocks.start, .blocks.end)]
    GpuUpload {
        /// Adapter name.
        adapter: String,
        /// The blocks.
        blocks: Range<usize>,
        /// The engine's reason.
        source: EngineError,
    },
    /// No span of blocks to serve (the routing's reason).
    #[error("{0}")]
    NoSpan(String),
    /// `?seed=` is not a span of the model.
    #[error(transparent)]
    Span(#[from] SpanError),
    /// The blocks loaded but serving could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Cache Storage cannot be opened.
    #[error("browser storage unavailable: {0}")]
    StorageUnavailable(String),
    /// Cache Storage is full.
    #[error("browser storage is full ({0}): the weights stay in memory for this visit only")]
    StorageFull(String),
    /// Cache Storage refused a part for another reason.
    #[error("cannot keep the weights in browser storage ({0})")]
    StorageWrite(String),
    /// The browser has no IndexedDB.
    #[error("this browser has no IndexedDB: conversations are not kept")]
    NoIndexedDb,
    /// An IndexedDB request failed.
    #[error("browser storage: {0}")]
    Idb(String),
    /// Stored conversations that do not (de)serialize.
    #[error("stored conversations: {0}")]
    StoredConversations(String),
    /// Generating an answer failed (the client's part, or the chain of servers).
    #[error(transparent)]
    Generate(#[from] GenerateError<ChainError>),
}

fn reason(e: &Option<EngineError>) -> String {
    e.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
}
