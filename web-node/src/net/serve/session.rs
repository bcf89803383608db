//! [`Server`]: one session per stream, admission control, and the streams that carry sessions.
//!
//! A [`Server`] answers session streams (one per session, see
//! [`protocol`](crate::net::protocol)) for the blocks it holds; compute goes through a
//! [`ComputeHandle`]. Admission control refuses a session before any cache is allocated when
//! the peer already has too many, the node has no slot left, or the KV caches of the sessions
//! already admitted would exceed the memory budget. A node that charges queues an open request
//! that finds no slot instead ([`queue`](super::queue)), telling it where it stands, and serves
//! clients that do not pay in its lottery slots up to a daily quota
//! ([`free_tier`](super::free_tier)). Every error goes back to the peer as a
//! [`Response::Error`] and ends only that stream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use web_time::Instant;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::PeerId;

use super::compute::ComputeHandle;
use super::free_tier::FreeQuota;
use super::queue::{Arrival, Place, Pool, SlotQueue, Standing};
use super::ServeConfig;
use crate::engine::{EngineError, SessionId};
use crate::model::ModelId;
use crate::net::frame::{read_frame, write_frame, FrameError};
use crate::net::protocol::{ErrorCode, Request, Response, ServerStatus, PROTOCOL_VERSION};
use crate::settle::PaymentGate;
use crate::settle::{unix_s, Meter, Payment, PaymentError, SignedVoucher};
use crate::trust::{output_hash, InputChain, Receipt, SessionNonce};
use alloy_primitives::U256;

/// A byte stream carrying one session: a libp2p stream, or an in-process pipe to this node's
/// own server.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> SessionStream for T {}

/// A boxed [`SessionStream`].
pub type BoxStream = Box<dyn SessionStream>;

/// Blocks this node serves itself: a client on the same node (the relay's HTTP API, `ait
/// chat`) reaches them without the network.
pub trait LocalServer: Send + Sync {
    /// Opens a session stream to it (served by [`Server::serve_local`]).
    fn connect(&self) -> BoxStream;
}

/// Largest frame accepted before a session is open (info and open requests are tiny).
pub const PRE_SESSION_FRAME: usize = 4096;

/// Who opened a session stream, as admission control sees it.
#[derive(Clone, Copy, Debug)]
pub struct Remote {
    /// The peer; `None` for this node's own sessions, which no per-peer cap limits.
    pub peer: Option<PeerId>,
    /// The IP it is directly connected from, if known (not for relayed connections).
    pub ip: Option<IpAddr>,
}

impl Remote {
    /// This node itself.
    pub const LOCAL: Remote = Remote { peer: None, ip: None };
}

#[derive(Default)]
struct Admission {
    sessions: usize,
    /// Sessions and KV bytes per peer.
    per_peer: HashMap<PeerId, (usize, u64)>,
    per_ip: HashMap<IpAddr, usize>,
    kv_reserved: u64,
    /// On a node that charges: its slots by pool, and who waits for them.
    queue: Option<SlotQueue>,
}

/// How often a queued request is told where it stands when that does not change.
const QUEUE_NOTICE: Duration = Duration::from_secs(5);

/// How often a queued request looks at its place.
const QUEUE_POLL: Duration = Duration::from_millis(500);

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
    /// The node's identity: it signs a receipt for every step answered.
    key: Keypair,
    admission: Mutex<Admission>,
    /// Free-tier tokens used today, per client.
    free: Mutex<FreeQuota>,
    /// Work counters.
    pub stats: ServeStats,
}

/// A slot taken by one admitted session; freed on drop.
struct Slot<'a> {
    server: &'a Server,
    /// The peer and IP it counts against (`None` for uncapped ones).
    peer: Option<PeerId>,
    ip: Option<IpAddr>,
    bytes: u64,
    /// The pool of a charging node's slot.
    pool: Option<Pool>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut a = self.server.lock();
        if let (Some(pool), Some(q)) = (self.pool, a.queue.as_mut()) {
            q.release(pool);
        }
        a.sessions = a.sessions.saturating_sub(1);
        a.kv_reserved = a.kv_reserved.saturating_sub(self.bytes);
        if let Some(peer) = self.peer {
            if let Some((n, kv)) = a.per_peer.get_mut(&peer) {
                *n = n.saturating_sub(1);
                *kv = kv.saturating_sub(self.bytes);
                if *n == 0 {
                    a.per_peer.remove(&peer);
                }
            }
        }
        if let Some(ip) = self.ip {
            if let Some(n) = a.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.per_ip.remove(&ip);
                }
            }
        }
    }
}

struct Refusal(ErrorCode, String);

impl From<PaymentError> for Refusal {
    fn from(e: PaymentError) -> Self {
        let code = match e {
            PaymentError::Required(_) | PaymentError::Refused(_) => ErrorCode::PaymentRequired,
            // The node's chain or ledger failed: not the client's fault; it routes elsewhere.
            PaymentError::Unavailable(_) => ErrorCode::Busy,
        };
        Refusal(code, e.to_string())
    }
}

/// A request waiting in a charging node's queue; dropped, it leaves the queue, and a slot
/// granted meanwhile goes back.
struct Waiting<'a> {
    server: &'a Server,
    ticket: u64,
    grant: futures::channel::oneshot::Receiver<Pool>,
    /// The grant was taken from `grant`: nothing to give back.
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut a = self.server.lock();
        if let Some(q) = a.queue.as_mut() {
            if !q.leave(self.ticket) {
                if let Ok(Some(pool)) = self.grant.try_recv() {
                    q.release(pool);
                }
            }
        }
    }
}

/// An open session on a stream: its engine session, its slot, and its meter when it is paid
/// (or whether it runs on the free tier's quota); its id and the hash of its inputs so far,
/// for its receipts.
struct Open<'a> {
    id: SessionId,
    _slot: Slot<'a>,
    meter: Option<Meter>,
    free: bool,
    session: SessionNonce,
    inputs: InputChain,
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Self {
        let code = match e {
            EngineError::SessionTooLong { .. } | EngineError::ContextFull { .. } => ErrorCode::TooLong,
            // Out of device memory: this server is full for now; the client routes elsewhere.
            EngineError::TooManySessions(_) | EngineError::OutOfMemory { .. } => ErrorCode::Busy,
            EngineError::Shape { .. } | EngineError::WrongPosition { .. } | EngineError::UnknownSession(_) => {
                ErrorCode::BadRequest
            }
            _ => ErrorCode::Internal,
        };
        Refusal(code, e.to_string())
    }
}

impl Server {
    /// A server for `config`, computing through `compute`, signing receipts with `key` (the
    /// node's identity, whose peer id clients reach it by).
    pub fn new(config: ServeConfig, compute: ComputeHandle, key: Keypair) -> Server {
        let l = &config.limits;
        let queue = l.payments.as_ref().map(|_| {
            let seed = l.lottery_seed.unwrap_or_else(rand::random);
            SlotQueue::new(l.max_sessions, l.max_sessions.saturating_mul(4).max(8), seed)
        });
        let admission = Mutex::new(Admission { queue, ..Admission::default() });
        Server { config, compute, key, admission, free: Mutex::default(), stats: ServeStats::default() }
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
        let by_slots = match &a.queue {
            Some(q) => q.free(),
            None => self.config.limits.max_sessions.saturating_sub(a.sessions),
        };
        let per_session = self.config.kv_bytes(self.config.max_len).max(1);
        let by_memory = (self.config.limits.kv_budget.saturating_sub(a.kv_reserved) / per_session) as usize;
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
            pay: self.config.limits.payments.as_ref().map(|g| g.terms().clone()),
            queued: a.queue.as_ref().map(SlotQueue::waiting),
        }
    }

    /// Whom a session from `who` counts against: an operator's trusted peers (its API
    /// gateways) and this node itself are not capped per peer or per IP; everyone shares the
    /// node's totals.
    fn counted(&self, who: Remote) -> (Option<PeerId>, Option<IpAddr>) {
        let trusted = who.peer.is_none_or(|p| self.config.limits.trusted_peers.contains(&p));
        if trusted {
            (None, None)
        } else {
            (who.peer, who.ip)
        }
    }

    /// Checks the per-peer and per-IP caps and the KV budget for one more session of `bytes`.
    fn caps(&self, a: &Admission, peer: Option<PeerId>, ip: Option<IpAddr>, bytes: u64) -> Result<(), Refusal> {
        let l = &self.config.limits;
        if let Some(p) = peer {
            let (mine, kv) = a.per_peer.get(&p).copied().unwrap_or((0, 0));
            if mine >= l.max_sessions_per_peer {
                return Err(Refusal(
                    ErrorCode::Busy,
                    format!("peer already holds {mine} sessions (limit {})", l.max_sessions_per_peer),
                ));
            }
            if kv.saturating_add(bytes) > l.max_kv_per_peer {
                return Err(Refusal(
                    ErrorCode::Busy,
                    format!("peer's KV cache share exhausted ({kv} of {} bytes, {bytes} asked)", l.max_kv_per_peer),
                ));
            }
        }
        if let Some(ip) = ip {
            let n = a.per_ip.get(&ip).copied().unwrap_or(0);
            if n >= l.max_sessions_per_ip {
                return Err(Refusal(
                    ErrorCode::Busy,
                    format!("{ip} already holds {n} sessions (limit {})", l.max_sessions_per_ip),
                ));
            }
        }
        if a.kv_reserved.saturating_add(bytes) > l.kv_budget {
            return Err(Refusal(
                ErrorCode::Busy,
                format!(
                    "KV cache budget exhausted ({} of {} bytes reserved, {bytes} asked)",
                    a.kv_reserved, l.kv_budget
                ),
            ));
        }
        Ok(())
    }

    /// Takes a slot for a session of `who` of up to `max_len` tokens: the slot of `pool` a
    /// charging node's queue granted (given back if a cap refuses), or on a node without a
    /// queue any free one.
    fn admit(&self, who: Remote, max_len: usize, pool: Option<Pool>) -> Result<Slot<'_>, Refusal> {
        let l = &self.config.limits;
        let bytes = self.config.kv_bytes(max_len);
        let (peer, ip) = self.counted(who);
        let mut a = self.lock();
        let checked = self.caps(&a, peer, ip, bytes).and_then(|()| {
            if pool.is_none() && a.sessions >= l.max_sessions {
                return Err(Refusal(ErrorCode::Busy, format!("all {} session slots are taken", l.max_sessions)));
            }
            Ok(())
        });
        if let Err(r) = checked {
            if let (Some(p), Some(q)) = (pool, a.queue.as_mut()) {
                q.release(p);
            }
            return Err(r);
        }
        a.sessions += 1;
        a.kv_reserved += bytes;
        if let Some(p) = peer {
            let e = a.per_peer.entry(p).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
        if let Some(ip) = ip {
            *a.per_ip.entry(ip).or_default() += 1;
        }
        Ok(Slot { server: self, peer, ip, bytes, pool })
    }

    /// On a charging node: a slot for a request of `standing`, now, or once the queue grants
    /// one, telling the client over `stream` where it stands while it waits (up to
    /// [`ServeLimits::queue_wait`](super::ServeLimits::queue_wait)).
    async fn queue_for_slot<S: AsyncWrite + Unpin>(
        &self,
        who: Remote,
        max_len: usize,
        standing: Standing,
        stream: &mut S,
    ) -> Result<Slot<'_>, Refusal> {
        let l = &self.config.limits;
        let (peer, ip) = self.counted(who);
        let arrival = {
            let mut a = self.lock();
            self.caps(&a, peer, ip, self.config.kv_bytes(max_len))?;
            a.queue.as_mut().map_or(Arrival::Full, |q| q.arrive(standing))
        };
        let mut waiting = match arrival {
            Arrival::Granted(pool) => return self.admitted(who, max_len, pool, standing),
            Arrival::Full => {
                return Err(Refusal(
                    ErrorCode::Busy,
                    format!("all {} session slots are taken and the queue is full", l.max_sessions),
                ))
            }
            // Leaves the queue however this ends (the client gone, the wait over, or this
            // future dropped), giving back a slot granted meanwhile.
            Arrival::Queued(ticket, grant) => Waiting { server: self, ticket, grant, granted: false },
        };
        let ticket = waiting.ticket;
        let deadline = Instant::now() + l.queue_wait;
        let mut told: Option<(Place, Instant)> = None;
        loop {
            let place = self.lock().queue.as_ref().and_then(|q| q.place(ticket));
            if let Some(place) = place.filter(|p| told.is_none_or(|(t, at)| t != *p || at.elapsed() >= QUEUE_NOTICE)) {
                let notice = Response::Queued {
                    position: u32::try_from(place.position).unwrap_or(u32::MAX),
                    waiting: u32::try_from(place.waiting).unwrap_or(u32::MAX),
                };
                let sent = crate::net::timeout(l.frame_timeout, write_frame(stream, &notice.encode())).await;
                if !matches!(sent, Some(Ok(()))) {
                    return Err(Refusal(ErrorCode::BadRequest, "the client left while queued".into()));
                }
                told = Some((place, Instant::now()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal(ErrorCode::Busy, format!("no slot came free in {:?}", l.queue_wait)));
            }
            match crate::net::timeout(QUEUE_POLL.min(left), &mut waiting.grant).await {
                Some(Ok(pool)) => {
                    // Granted: the slot is this request's now (admit gives it back if it refuses).
                    waiting.granted = true;
                    return self.admitted(who, max_len, pool, standing);
                }
                Some(Err(_)) => {
                    return Err(Refusal(
                        ErrorCode::Busy,
                        "a request with priority took this one's place in the queue".into(),
                    ))
                }
                None => {}
            }
        }
    }

    /// [`Server::admit`] with the slot the queue granted, logged (tests read the order).
    fn admitted(&self, who: Remote, max_len: usize, pool: Pool, standing: Standing) -> Result<Slot<'_>, Refusal> {
        let slot = self.admit(who, max_len, Some(pool))?;
        let (waiting, waiting_free, best_waiting) =
            self.lock().queue.as_ref().map_or((0, 0, None), |q| (q.waiting(), q.waiting_free(), q.best_waiting()));
        let (standing, score) = match standing {
            Standing::Paying(s) => ("paying", s),
            Standing::Free => ("free", 0.0),
        };
        // `best_waiting`: the best score still waiting (-1: none), never above a scored
        // admission's own.
        let best_waiting = best_waiting.unwrap_or(-1.0);
        tracing::info!(peer = ?who.peer, pool = pool.name(), standing, score, best_waiting, waiting, waiting_free, "session admitted");
        Ok(slot)
    }

    /// Serves one session stream from `peer` until it closes, fails or idles out.
    pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(&self, peer: PeerId, stream: S) {
        self.serve_remote(Remote { peer: Some(peer), ip: None }, stream).await
    }

    /// Serves one session stream from `who` (a peer, and the IP it connects from) until it
    /// closes, fails or idles out.
    pub async fn serve_remote<S: AsyncRead + AsyncWrite + Unpin>(&self, who: Remote, stream: S) {
        self.serve(who, stream).await
    }

    /// Serves a session stream opened by this node itself (an in-process pipe): like
    /// [`Server::serve_stream`], without the per-peer cap.
    pub async fn serve_local<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) {
        self.serve(Remote::LOCAL, stream).await
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, who: Remote, mut stream: S) {
        let peer = who.peer;
        match self.session(who, &mut stream).await {
            Ok(()) => {}
            Err(Refusal(code, message)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?peer, ?code, "refusing stream: {message}");
                let _ = crate::net::timeout(
                    self.config.limits.frame_timeout,
                    write_frame(&mut stream, &Response::Error { code, message }.encode()),
                )
                .await;
            }
        }
        let _ = crate::net::timeout(self.config.limits.frame_timeout, stream.close()).await;
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(&self, who: Remote, stream: &mut S) -> Result<(), Refusal> {
        let c = &self.config;
        let mut open: Option<Open<'_>> = None;
        // A quote costs the node chain reads: one per stream.
        let mut quoted = false;
        let started = Instant::now();
        // Only progress (opening the session, a step) moves the idle deadline: a peer cannot
        // keep a slot by sending `Info` now and then.
        let mut progress = started;
        let result = loop {
            // Before a session is open only small requests (info, open) are valid: a peer cannot
            // make us hold big buffers without holding a session slot first.
            let limit = if open.is_some() { c.limits.max_frame } else { PRE_SESSION_FRAME };
            let now = Instant::now();
            let idle_left = c.limits.idle_timeout.saturating_sub(now.duration_since(progress));
            let age_left = c.limits.max_session_age.saturating_sub(now.duration_since(started));
            if idle_left.is_zero() {
                break Err(Refusal(ErrorCode::BadRequest, format!("no progress for {:?}", c.limits.idle_timeout)));
            }
            if age_left.is_zero() {
                break Err(Refusal(
                    ErrorCode::TooLong,
                    format!("session older than {:?}; open a new one", c.limits.max_session_age),
                ));
            }
            let wait = idle_left.min(age_left).max(Duration::from_millis(1));
            let frame = match read_frame(stream, limit, wait, c.limits.frame_timeout).await {
                Ok(f) => f,
                Err(FrameError::Closed) => break Ok(()),
                // Let the checks above say which deadline passed.
                Err(FrameError::Timeout(t)) if t == wait => continue,
                Err(e @ FrameError::TooLarge { .. }) => break Err(Refusal(ErrorCode::TooLarge, e.to_string())),
                Err(e) => break Err(Refusal(ErrorCode::BadRequest, e.to_string())),
            };
            let req = match Request::decode(&frame) {
                Ok(r) => r,
                Err(e) => break Err(Refusal(ErrorCode::BadRequest, e.to_string())),
            };
            let reply = match (req, &mut open) {
                (Request::Info, _) => Response::Info(self.status()),
                (Request::Quote { .. }, _) if quoted => {
                    break Err(Refusal(ErrorCode::BadRequest, "one quote per stream".into()))
                }
                (Request::Quote { payer }, _) => match self.config.limits.payments.as_ref() {
                    Some(gate) => match gate.quote(payer).await.inspect(|_| quoted = true) {
                        Ok(q) => Response::Quote(q),
                        Err(e) => break Err(e.into()),
                    },
                    None => break Err(Refusal(ErrorCode::BadRequest, "this node serves free".into())),
                },
                (Request::Open { model, session, start, end, max_len, payment }, None) => {
                    let blocks = start as usize..end as usize;
                    match self.open(who, model, session, blocks, max_len as usize, payment, stream).await {
                        Ok(o) => {
                            // A free-tier client hears what it has left of its quota here.
                            let free_left = o.free.then(|| {
                                let left = self.take_free(who, 0).unwrap_or(0);
                                u32::try_from(left).unwrap_or(u32::MAX)
                            });
                            open = Some(o);
                            progress = Instant::now();
                            Response::Opened { max_len, free_left }
                        }
                        Err(r) => break Err(r),
                    }
                }
                (Request::Open { .. }, Some(_)) => {
                    break Err(Refusal(ErrorCode::BadRequest, "a session is already open on this stream".into()))
                }
                (Request::Step { pos, n_tokens, hidden, voucher }, Some(o)) => {
                    if o.free {
                        if let Err(r) = self.take_free(who, n_tokens) {
                            break Err(r);
                        }
                    }
                    if let Some(meter) = &mut o.meter {
                        if let Err(r) = self.pay(meter, voucher.as_ref()).await {
                            break Err(r);
                        }
                        if let Err(e) = meter.admit(u64::from(n_tokens)) {
                            break Err(e.into());
                        }
                    }
                    o.inputs.absorb(&hidden, c.model_config.hidden);
                    match self.compute.step(who.peer, o.id, pos as usize, hidden, n_tokens as usize).await {
                        Ok((hidden, took)) => {
                            progress = Instant::now();
                            let receipt = self.receipt(o, pos, n_tokens, &hidden);
                            if let Some(meter) = &mut o.meter {
                                meter.count(u64::from(n_tokens), &receipt);
                            }
                            self.stats.tokens.fetch_add(u64::from(n_tokens), Ordering::Relaxed);
                            let compute_us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
                            let receipt = self.sign(&receipt);
                            Response::Hidden { n_tokens, compute_us, receipt, hidden }
                        }
                        Err(e) => break Err(e.into()),
                    }
                }
                (Request::Step { .. }, None) => {
                    break Err(Refusal(ErrorCode::BadRequest, "step before the session was opened".into()))
                }
                (Request::Close { voucher }, o) => {
                    if let (Some(meter), Some(v)) = (o.as_mut().and_then(|o| o.meter.as_mut()), voucher.as_ref()) {
                        if let Err(r) = self.pay(meter, Some(v)).await {
                            break Err(r);
                        }
                    }
                    break Ok(());
                }
            };
            if let Err(e) = crate::net::timeout(c.limits.frame_timeout, write_frame(stream, &reply.encode()))
                .await
                .unwrap_or(Err(FrameError::Timeout(c.limits.frame_timeout)))
            {
                tracing::debug!(peer = ?who.peer, "session stream failed: {e}");
                break Ok(());
            }
        };
        if let Some(o) = open {
            if let (Some(m), Some(gate)) = (o.meter.as_ref(), self.config.limits.payments.as_ref()) {
                if !m.unpaid().is_zero() {
                    tracing::debug!(peer = ?who.peer, unpaid = %m.unpaid(), "paid session ended owing");
                }
                gate.close(m.payment(), m.unpaid());
            }
            self.compute.close(o.id);
        }
        result
    }

    /// The receipt of a step of `o` at `pos` of `n_tokens` that answered `output` (the
    /// session's inputs are absorbed already).
    fn receipt(&self, o: &Open<'_>, pos: u32, n_tokens: u32, output: &[f32]) -> Receipt {
        let blocks = &self.config.blocks;
        Receipt {
            session: o.session,
            model: self.config.model,
            start: blocks.start as u32,
            end: blocks.end as u32,
            pos,
            n_tokens,
            inputs: o.inputs.value(),
            output: output_hash(output),
        }
    }

    /// This node's signature over `receipt`. An ed25519 key always signs; if another kind
    /// fails, the answer goes without, and the client's check refuses it.
    fn sign(&self, receipt: &Receipt) -> Vec<u8> {
        receipt.sign(&self.key).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            Vec::new()
        })
    }

    /// Checks a voucher that came with a step or close of a paid session, keeps it durably,
    /// and counts it.
    async fn pay(&self, meter: &mut Meter, voucher: Option<&SignedVoucher>) -> Result<(), Refusal> {
        let (Some(v), Some(gate)) = (voucher, self.config.limits.payments.as_ref()) else { return Ok(()) };
        meter.check(v, unix_s())?;
        gate.store(v).await?;
        meter.accept(v);
        Ok(())
    }

    /// Counts `n_tokens` of a free-tier session against its client's daily quota (0: checks
    /// that some is left), and returns what is left.
    fn take_free(&self, who: Remote, n_tokens: u32) -> Result<u64, Refusal> {
        let (Some(peer), Some(gate)) = (who.peer, self.config.limits.payments.as_ref()) else {
            return Ok(u64::MAX);
        };
        let quota = gate.terms().free_tokens_per_day;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.take(peer, who.ip, u64::from(n_tokens), quota, unix_s())
            .map_err(|e| Refusal(ErrorCode::PaymentRequired, e.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn open<S: AsyncWrite + Unpin>(
        &self,
        who: Remote,
        model: ModelId,
        session: SessionNonce,
        blocks: Range<usize>,
        max_len: usize,
        payment: Option<Payment>,
        stream: &mut S,
    ) -> Result<Open<'_>, Refusal> {
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
        // This node's own sessions (its API, its chat) are not charged (it would pay itself)
        // and go first.
        let gate = self.config.limits.payments.as_ref().filter(|_| who.peer.is_some());
        let (meter, standing) = match (gate, payment) {
            (None, _) => (None, Standing::Paying(f64::MAX)),
            (Some(gate), None) => {
                let t = gate.terms();
                if t.free_tokens_per_day == 0 {
                    return Err(Refusal(
                        ErrorCode::PaymentRequired,
                        format!("this node charges {} per layer-token: open the session with a payment", t.price),
                    ));
                }
                // The free tier: a session in a lottery slot while the quota lasts.
                self.take_free(who, 0)?;
                (None, Standing::Free)
            }
            (Some(gate), Some(p)) => {
                let layers = c.blocks.len() as u64;
                gate.terms().check(layers)?;
                let credit = gate.open(&p).await?;
                // From here the gate counts the session open: however the opening ends short
                // of a session (a refusal, or its future dropped while it waits), `opening`
                // closes it there.
                let meter = Meter::new(gate.terms().clone(), p, c.model.0.into(), layers, credit);
                let opening = Opening { gate: gate.as_ref(), meter: Some(meter) };
                // The credit must carry at least one token.
                if opening.meter().admit(1).is_err() {
                    return Err(Refusal(
                        ErrorCode::PaymentRequired,
                        format!(
                            "the payer's allocation to this node not yet promised ({credit}) does not pay for one token through {layers} layers ({})",
                            gate.terms().cost(layers)
                        ),
                    ));
                }
                // The score matters only to a request that waits: read the chain only then.
                let waits = self.lock().queue.as_ref().is_some_and(|q| !q.scored_free());
                let score = if waits { gate.priority(opening.meter().payment().payer).await } else { 0.0 };
                (Some(opening), Standing::Paying(score))
            }
        };
        let slot = if self.config.limits.payments.is_some() {
            self.queue_for_slot(who, max_len, standing, stream).await
        } else {
            self.admit(who, max_len, None)
        };
        let id = match slot {
            Ok(slot) => self.compute.open(max_len).await.map(|id| (id, slot)).map_err(Refusal::from),
            Err(e) => Err(e),
        };
        let (id, slot) = id?;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Open {
            id,
            _slot: slot,
            meter: meter.map(Opening::keep),
            free: standing == Standing::Free,
            session,
            inputs: InputChain::new(&session),
        })
    }
}

/// A paid session's meter from the gate's [`PaymentGate::open`] until the session starts:
/// dropped before [`Opening::keep`] (the opening refused, failed, or its future dropped while
/// it waits for a slot), it closes the session at the gate, owing nothing.
struct Opening<'a> {
    gate: &'a dyn PaymentGate,
    meter: Option<Meter>,
}

impl Opening<'_> {
    fn meter(&self) -> &Meter {
        self.meter.as_ref().expect("an opening holds its meter until kept")
    }

    /// The session started: its meter goes with it (and the gate hears of it when it ends).
    fn keep(mut self) -> Meter {
        self.meter.take().expect("an opening holds its meter until kept")
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            self.gate.close(m.payment(), U256::ZERO);
        }
    }
}
