//! The server side of inference sessions.
//!
//! A [`Server`] answers session streams (one per session, see [`protocol`](super::protocol))
//! for the blocks it holds. Compute goes through a [`ComputeHandle`] to one loop that owns the
//! [`BlockExecutor`] ([`run_compute`]), so steps from many streams run one at a time on the
//! device, and the loop can live on its own thread natively or on the page's event loop in a
//! browser. Admission control refuses a session before any cache is allocated when the peer
//! already has too many, the node has no slot left, or the KV caches of the sessions already
//! admitted would exceed the memory budget. Every error goes back to the peer as an
//! [`Response::Error`] and ends only that stream.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, SinkExt, StreamExt};
use libp2p::PeerId;

use super::frame::{read_frame, write_frame, FrameError, MAX_FRAME};
use super::protocol::{ErrorCode, Request, Response, ServerStatus, PROTOCOL_VERSION};
use crate::engine::{Backend, BlockExecutor, EngineError, SessionId};
use crate::model::ModelId;

enum Job {
    Open(usize, oneshot::Sender<Result<SessionId, EngineError>>),
    Step(SessionId, usize, Vec<f32>, usize, oneshot::Sender<Result<(Vec<f32>, Duration), EngineError>>),
    Close(SessionId),
}

/// Sends work to the loop that owns the executor. Cheap to clone.
#[derive(Clone)]
pub struct ComputeHandle {
    tx: mpsc::Sender<Job>,
}

/// The compute loop's end of a [`ComputeHandle`].
pub struct ComputeJobs {
    rx: mpsc::Receiver<Job>,
}

/// A handle and the job queue for [`run_compute`].
pub fn compute_channel() -> (ComputeHandle, ComputeJobs) {
    let (tx, rx) = mpsc::channel(64);
    (ComputeHandle { tx }, ComputeJobs { rx })
}

/// Runs jobs on `executor` one at a time until every [`ComputeHandle`] is dropped.
pub async fn run_compute<B: Backend>(mut executor: BlockExecutor<B>, mut jobs: ComputeJobs) {
    while let Some(job) = jobs.rx.next().await {
        match job {
            Job::Open(max_len, reply) => {
                let _ = reply.send(executor.open_session(max_len));
            }
            Job::Step(id, pos, hidden, n, reply) => {
                let started = web_time::Instant::now();
                let r = match executor.session_len(id) {
                    Ok(len) if len != pos => {
                        Err(EngineError::Shape { what: "step position", expected: len, actual: pos })
                    }
                    Ok(_) => executor.step(id, &hidden, n).await.map(|out| (out, started.elapsed())),
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Job::Close(id) => {
                let _ = executor.close_session(id);
            }
        }
    }
}

fn stopped() -> EngineError {
    EngineError::Unavailable("the compute loop has stopped".into())
}

impl ComputeHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.clone().send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Opens a session holding up to `max_len` tokens.
    pub async fn open(&self, max_len: usize) -> Result<SessionId, EngineError> {
        self.ask(|tx| Job::Open(max_len, tx)).await
    }

    /// Runs `n` tokens at position `pos` (which must equal the session's length); returns the
    /// output and the compute time.
    pub async fn step(
        &self,
        id: SessionId,
        pos: usize,
        hidden: Vec<f32>,
        n: usize,
    ) -> Result<(Vec<f32>, Duration), EngineError> {
        self.ask(|tx| Job::Step(id, pos, hidden, n, tx)).await
    }

    /// Closes a session (fire and forget).
    pub fn close(&self, id: SessionId) {
        let _ = self.tx.clone().try_send(Job::Close(id));
    }
}

/// Largest frame accepted before a session is open (info and open requests are tiny).
pub const PRE_SESSION_FRAME: usize = 4096;

/// What a [`Server`] serves and its limits.
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
    /// Longest session, in tokens.
    pub max_len: usize,
    /// Sessions open at once.
    pub max_sessions: usize,
    /// Sessions one peer may hold at once.
    pub max_sessions_per_peer: usize,
    /// KV-cache bytes per token of a session over all held blocks.
    pub kv_bytes_per_token: u64,
    /// KV-cache bytes all sessions together may reserve.
    pub kv_budget: u64,
    /// A session stream with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this once it has started.
    pub frame_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
}

impl ServeConfig {
    /// Defaults for `blocks` of `model` whose KV cache takes `kv_bytes_per_token`.
    pub fn new(model: ModelId, blocks: Range<usize>, backend: &str, max_len: usize, kv_bytes_per_token: u64) -> Self {
        ServeConfig {
            model,
            blocks,
            backend: backend.into(),
            ms_per_block: 0.0,
            max_len,
            max_sessions: 16,
            max_sessions_per_peer: 4,
            kv_bytes_per_token,
            kv_budget: 2 << 30,
            idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(30),
            max_frame: MAX_FRAME,
        }
    }
}

#[derive(Default)]
struct Admission {
    sessions: usize,
    per_peer: HashMap<PeerId, usize>,
    kv_reserved: u64,
}

/// Counters of work done.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Sessions opened.
    pub sessions: AtomicU64,
    /// Tokens run through the blocks (prefill and decode).
    pub tokens: AtomicU64,
    /// Streams refused with an error.
    pub refused: AtomicU64,
}

/// Serves sessions for one block range.
pub struct Server {
    config: ServeConfig,
    compute: ComputeHandle,
    admission: Mutex<Admission>,
    /// Work counters.
    pub stats: ServeStats,
}

/// A slot taken by one admitted session; freed on drop.
struct Slot<'a> {
    server: &'a Server,
    /// `None` for this node's own sessions, which no per-peer cap limits.
    peer: Option<PeerId>,
    bytes: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut a = self.server.lock();
        a.sessions = a.sessions.saturating_sub(1);
        a.kv_reserved = a.kv_reserved.saturating_sub(self.bytes);
        if let Some(peer) = self.peer {
            if let Some(n) = a.per_peer.get_mut(&peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.per_peer.remove(&peer);
                }
            }
        }
    }
}

struct Refusal(ErrorCode, String);

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        let code = match e {
            EngineError::SessionTooLong { .. } | EngineError::ContextFull { .. } => ErrorCode::TooLong,
            EngineError::TooManySessions(_) => ErrorCode::Busy,
            EngineError::Shape { .. } | EngineError::UnknownSession(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        Refusal(code, e.to_string())
    }
}

impl Server {
    /// A server for `config`, computing through `compute`.
    pub fn new(config: ServeConfig, compute: ComputeHandle) -> Server {
        Server { config, compute, admission: Mutex::default(), stats: ServeStats::default() }
    }

    /// What it serves.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live status.
    pub fn status(&self) -> ServerStatus {
        let a = self.lock();
        let by_slots = self.config.max_sessions.saturating_sub(a.sessions);
        let per_session = self.config.kv_bytes_per_token.saturating_mul(self.config.max_len as u64).max(1);
        let by_memory = (self.config.kv_budget.saturating_sub(a.kv_reserved) / per_session) as usize;
        ServerStatus {
            version: PROTOCOL_VERSION,
            model: self.config.model.to_hex(),
            start: self.config.blocks.start,
            end: self.config.blocks.end,
            backend: self.config.backend.clone(),
            ms_per_block: self.config.ms_per_block,
            // By memory, a full-length session; shorter ones may still fit, but a client asking
            // for the full context would be refused.
            free_slots: by_slots.min(by_memory),
            active_sessions: a.sessions,
            max_len: self.config.max_len,
        }
    }

    fn admit(&self, peer: Option<PeerId>, max_len: usize) -> Result<Slot<'_>, Refusal> {
        let c = &self.config;
        let bytes = c.kv_bytes_per_token.saturating_mul(max_len as u64);
        let mut a = self.lock();
        let mine = peer.and_then(|p| a.per_peer.get(&p).copied()).unwrap_or(0);
        if peer.is_some() && mine >= c.max_sessions_per_peer {
            return Err(Refusal(
                ErrorCode::Busy,
                format!("peer already holds {mine} sessions (limit {})", c.max_sessions_per_peer),
            ));
        }
        if a.sessions >= c.max_sessions {
            return Err(Refusal(ErrorCode::Busy, format!("all {} session slots are taken", c.max_sessions)));
        }
        if a.kv_reserved.saturating_add(bytes) > c.kv_budget {
            return Err(Refusal(
                ErrorCode::Busy,
                format!(
                    "KV cache budget exhausted ({} of {} bytes reserved, {bytes} asked)",
                    a.kv_reserved, c.kv_budget
                ),
            ));
        }
        a.sessions += 1;
        a.kv_reserved += bytes;
        if let Some(p) = peer {
            *a.per_peer.entry(p).or_default() += 1;
        }
        Ok(Slot { server: self, peer, bytes })
    }

    /// Serves one session stream from `peer` until it closes, fails or idles out.
    pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(&self, peer: PeerId, stream: S) {
        self.serve(Some(peer), stream).await
    }

    /// Serves a session stream opened by this node itself (an in-process pipe): like
    /// [`Server::serve_stream`], without the per-peer cap.
    pub async fn serve_local<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) {
        self.serve(None, stream).await
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, peer: Option<PeerId>, mut stream: S) {
        match self.session(peer, &mut stream).await {
            Ok(()) => {}
            Err(Refusal(code, message)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?peer, ?code, "refusing stream: {message}");
                let _ = super::timeout(
                    self.config.frame_timeout,
                    write_frame(&mut stream, &Response::Error { code, message }.encode()),
                )
                .await;
            }
        }
        let _ = super::timeout(self.config.frame_timeout, stream.close()).await;
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        peer: Option<PeerId>,
        stream: &mut S,
    ) -> Result<(), Refusal> {
        let c = &self.config;
        let mut open: Option<(SessionId, Slot<'_>)> = None;
        let result = loop {
            // Before a session is open only small requests (info, open) are valid: a peer cannot
            // make us hold big buffers without holding a session slot first.
            let limit = if open.is_some() { c.max_frame } else { PRE_SESSION_FRAME };
            let frame = match read_frame(stream, limit, c.idle_timeout, c.frame_timeout).await {
                Ok(f) => f,
                Err(FrameError::Closed) => break Ok(()),
                Err(e @ FrameError::TooLarge { .. }) => break Err(Refusal(ErrorCode::TooLarge, e.to_string())),
                Err(e) => break Err(Refusal(ErrorCode::BadRequest, e.to_string())),
            };
            let req = match Request::decode(&frame) {
                Ok(r) => r,
                Err(e) => break Err(Refusal(ErrorCode::BadRequest, e.to_string())),
            };
            let reply = match (req, &open) {
                (Request::Info, _) => Response::Info(self.status()),
                (Request::Open { model, start, end, max_len }, None) => {
                    match self.open(peer, model, start as usize..end as usize, max_len as usize).await {
                        Ok(o) => {
                            open = Some(o);
                            Response::Opened { max_len }
                        }
                        Err(r) => break Err(r),
                    }
                }
                (Request::Open { .. }, Some(_)) => {
                    break Err(Refusal(ErrorCode::BadRequest, "a session is already open on this stream".into()))
                }
                (Request::Step { pos, n_tokens, hidden }, Some((id, _))) => {
                    match self.compute.step(*id, pos as usize, hidden, n_tokens as usize).await {
                        Ok((hidden, took)) => {
                            self.stats.tokens.fetch_add(u64::from(n_tokens), Ordering::Relaxed);
                            let compute_us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
                            Response::Hidden { n_tokens, compute_us, hidden }
                        }
                        Err(e) => break Err(e.into()),
                    }
                }
                (Request::Step { .. }, None) => {
                    break Err(Refusal(ErrorCode::BadRequest, "step before the session was opened".into()))
                }
                (Request::Close, _) => break Ok(()),
            };
            if let Err(e) = super::timeout(c.frame_timeout, write_frame(stream, &reply.encode()))
                .await
                .unwrap_or(Err(FrameError::Timeout(c.frame_timeout)))
            {
                tracing::debug!(?peer, "session stream failed: {e}");
                break Ok(());
            }
        };
        if let Some((id, _slot)) = open {
            self.compute.close(id);
        }
        result
    }

    async fn open(
        &self,
        peer: Option<PeerId>,
        model: ModelId,
        blocks: Range<usize>,
        max_len: usize,
    ) -> Result<(SessionId, Slot<'_>), Refusal> {
        let c = &self.config;
        if model != c.model {
            return Err(Refusal(ErrorCode::UnknownModel, format!("model {} is not served here", model.short())));
        }
        if blocks != c.blocks {
            return Err(Refusal(
                ErrorCode::RangeNotServed,
                format!(
                    "blocks [{}, {}) asked, [{}, {}) served",
                    blocks.start, blocks.end, c.blocks.start, c.blocks.end
                ),
            ));
        }
        if max_len == 0 || max_len > c.max_len {
            return Err(Refusal(ErrorCode::TooLong, format!("session of {max_len} tokens (limit {})", c.max_len)));
        }
        let slot = self.admit(peer, max_len)?;
        let id = self.compute.open(max_len).await?;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok((id, slot))
    }
}
