//! [`Server`]: one session per stream, admission control, and the streams that carry sessions.
//!
//! A [`Server`] answers session streams (one per session, see
//! [`protocol`](crate::net::protocol)) for the blocks it holds; compute goes through a
//! [`ComputeHandle`]. Admission control refuses a session before any cache is allocated when
//! the peer already has too many, the node has no slot left, or the KV caches of the sessions
//! already admitted would exceed the memory budget. Every error goes back to the peer as a
//! [`Response::Error`] and ends only that stream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use web_time::Instant;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;

use super::compute::ComputeHandle;
use super::ServeConfig;
use crate::engine::{EngineError, SessionId};
use crate::model::ModelId;
use crate::net::frame::{read_frame, write_frame, FrameError};
use crate::net::protocol::{ErrorCode, Request, Response, ServerStatus, PROTOCOL_VERSION};
use crate::settle::{unix_s, Meter, Payment, PaymentError, SignedVoucher};
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
    /// The peer and IP it counts against (`None` for uncapped ones).
    peer: Option<PeerId>,
    ip: Option<IpAddr>,
    bytes: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut a = self.server.lock();
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

/// An open session on a stream: its engine session, its slot, and its meter when it is paid.
struct Open<'a> {
    id: SessionId,
    _slot: Slot<'a>,
    meter: Option<Meter>,
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
        let by_slots = self.config.limits.max_sessions.saturating_sub(a.sessions);
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
        }
    }

    fn admit(&self, who: Remote, max_len: usize) -> Result<Slot<'_>, Refusal> {
        let c = &self.config;
        let l = &c.limits;
        let bytes = c.kv_bytes(max_len);
        // An operator's trusted peers (its API gateways) and this node itself are not capped
        // per peer or per IP; everyone shares the node's totals.
        let trusted = who.peer.is_none_or(|p| l.trusted_peers.contains(&p));
        let (peer, ip) = if trusted { (None, None) } else { (who.peer, who.ip) };
        let mut a = self.lock();
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
        if a.sessions >= l.max_sessions {
            return Err(Refusal(ErrorCode::Busy, format!("all {} session slots are taken", l.max_sessions)));
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
        Ok(Slot { server: self, peer, ip, bytes })
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
                (Request::Open { model, start, end, max_len, payment }, None) => {
                    match self.open(who, model, start as usize..end as usize, max_len as usize, payment).await {
                        Ok(o) => {
                            open = Some(o);
                            progress = Instant::now();
                            Response::Opened { max_len }
                        }
                        Err(r) => break Err(r),
                    }
                }
                (Request::Open { .. }, Some(_)) => {
                    break Err(Refusal(ErrorCode::BadRequest, "a session is already open on this stream".into()))
                }
                (Request::Step { pos, n_tokens, hidden, voucher }, Some(o)) => {
                    if let Some(meter) = &mut o.meter {
                        if let Err(r) = self.pay(meter, voucher.as_ref()).await {
                            break Err(r);
                        }
                        if let Err(e) = meter.admit(u64::from(n_tokens)) {
                            break Err(e.into());
                        }
                    }
                    match self.compute.step(who.peer, o.id, pos as usize, hidden, n_tokens as usize).await {
                        Ok((hidden, took)) => {
                            progress = Instant::now();
                            if let Some(meter) = &mut o.meter {
                                meter.count(u64::from(n_tokens));
                            }
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

    /// Checks a voucher that came with a step or close of a paid session, keeps it durably,
    /// and counts it.
    async fn pay(&self, meter: &mut Meter, voucher: Option<&SignedVoucher>) -> Result<(), Refusal> {
        let (Some(v), Some(gate)) = (voucher, self.config.limits.payments.as_ref()) else { return Ok(()) };
        meter.check(v, unix_s())?;
        gate.store(v).await?;
        meter.accept(v);
        Ok(())
    }

    async fn open(
        &self,
        who: Remote,
        model: ModelId,
        blocks: Range<usize>,
        max_len: usize,
        payment: Option<Payment>,
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
        let slot = self.admit(who, max_len)?;
        // This node's own sessions (its API, its chat) are not charged: it would pay itself.
        let gate = self.config.limits.payments.as_ref().filter(|_| who.peer.is_some());
        let meter = match (gate, payment) {
            (None, _) => None,
            (Some(gate), None) => {
                return Err(Refusal(
                    ErrorCode::PaymentRequired,
                    format!(
                        "this node charges {} per layer-token: open the session with a payment",
                        gate.terms().price
                    ),
                ))
            }
            (Some(gate), Some(p)) => {
                let layers = c.blocks.len() as u64;
                gate.terms().check(layers)?;
                let credit = gate.open(&p).await?;
                let meter = Meter::new(gate.terms().clone(), p, c.model.0.into(), layers, credit);
                // The credit must carry at least one token.
                if meter.admit(1).is_err() {
                    gate.close(meter.payment(), U256::ZERO);
                    return Err(Refusal(
                        ErrorCode::PaymentRequired,
                        format!(
                            "the payer's allocation to this node not yet promised ({credit}) does not pay for one token through {layers} layers ({})",
                            gate.terms().cost(layers)
                        ),
                    ));
                }
                Some(meter)
            }
        };
        let id = match self.compute.open(max_len).await {
            Ok(id) => id,
            Err(e) => {
                if let (Some(gate), Some(m)) = (gate, &meter) {
                    gate.close(m.payment(), U256::ZERO);
                }
                return Err(e.into());
            }
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Open { id, _slot: slot, meter })
    }
}
