//! One hop of a route: the session on one server ([`HopSession`]), which owns the hop's stream.
//!
//! A session is opened over the stream its server's status came over, stepped, and closed.
//! [`HopSession::step`] is the only place the requests and answers of a step are exchanged:
//! it splits a step into frames that fit, applies the step's timeouts, tells a slow server
//! from a frozen one (the liveness check), checks every answer and keeps the hop's
//! statistics. Whatever a step comes to carry besides the hidden states (a receipt, a payment
//! voucher) is added and checked there. It does not choose servers or recover from failures.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use web_time::Instant;

use super::{ChainError, ChainOptions, Discovery, HopStats};
use crate::model::ModelId;
use crate::net::frame::{read_frame, write_frame, FrameError, MAX_FRAME};
use crate::net::protocol::{Request, Response};
use crate::net::routing::Hop;
use crate::net::serve::BoxStream;

/// How long a server has to answer the liveness check of a step that is late.
const ALIVE_LIMIT: Duration = Duration::from_millis(500);

/// How long closing a session may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// An open session on one server.
pub(super) struct HopSession {
    peer: PeerId,
    blocks: Range<usize>,
    stream: BoxStream,
    /// Estimated time of one decode step, from routing.
    expected_ms: f64,
    stats: HopStats,
}

impl HopSession {
    /// Opens a session for `hop` over `stream` (a stream to its server, as discovery found
    /// it), holding up to `max_len` tokens of `model`.
    pub(super) async fn open(
        hop: Hop,
        mut stream: BoxStream,
        model: ModelId,
        max_len: usize,
        expected_ms: f64,
        limit: Duration,
    ) -> Result<HopSession, ChainError> {
        let Hop { peer, blocks } = hop;
        let req = Request::Open { model, start: blocks.start as u32, end: blocks.end as u32, max_len: max_len as u32 };
        match exchange(peer, &mut stream, &req, limit).await? {
            Response::Opened { .. } => Ok(HopSession { peer, blocks, stream, expected_ms, stats: HopStats::default() }),
            other => Err(ChainError::Protocol { peer, detail: format!("answered {other:?} to open") }),
        }
    }

    /// The server and its blocks.
    pub(super) fn hop(&self) -> Hop {
        Hop { peer: self.peer, blocks: self.blocks.clone() }
    }

    /// The server.
    pub(super) fn peer(&self) -> PeerId {
        self.peer
    }

    /// The blocks it runs.
    pub(super) fn blocks(&self) -> &Range<usize> {
        &self.blocks
    }

    /// Its timings so far.
    pub(super) fn stats(&self) -> &HopStats {
        &self.stats
    }

    /// Runs `n` tokens (`x`, `[n, dim]`) at position `pos` through the hop, split into frames
    /// that fit, and returns its output, same shape.
    ///
    /// Each frame is answered within the larger of [`ChainOptions::step_timeout`] and the
    /// server's estimated step time times [`ChainOptions::timeout_factor`], plus
    /// [`ChainOptions::per_token_timeout`] per token. A server that misses that but answers a
    /// status request (over a fresh stream from `discovery`) is busy, not dead: the wait goes on,
    /// up to [`ChainOptions::max_wait`].
    pub(super) async fn step<D: Discovery>(
        &mut self,
        pos: usize,
        x: &[f32],
        n: usize,
        dim: usize,
        opts: &ChainOptions,
        discovery: &D,
    ) -> Result<Vec<f32>, ChainError> {
        let per_frame = ((MAX_FRAME - 64) / (dim * 4)).max(1);
        let expected = Duration::from_secs_f64((self.expected_ms * opts.timeout_factor / 1e3).clamp(0.0, 3600.0));
        let step_timeout = opts.step_timeout.max(expected);
        let peer = self.peer;
        let io = |error| ChainError::Stream { peer, error };
        let mut out = Vec::with_capacity(x.len());
        let mut done = 0;
        while done < n {
            let take = per_frame.min(n - done);
            let hidden = x[done * dim..(done + take) * dim].to_vec();
            let req = Request::Step { pos: (pos + done) as u32, n_tokens: take as u32, hidden };
            let limit = step_timeout + opts.per_token_timeout * take as u32;
            let started = Instant::now();
            let encoded = req.encode();
            crate::net::timeout(limit, write_frame(&mut self.stream, &encoded))
                .await
                .ok_or(io(FrameError::Timeout(limit)))?
                .map_err(io)?;
            // A server busy with other sessions' work still answers a status request (the
            // compute queue is not involved); a frozen or dead one does not. Keep waiting while
            // it is alive, up to `max_wait`.
            let frame = loop {
                match read_frame(&mut self.stream, MAX_FRAME, limit, limit).await {
                    Ok(f) => break f,
                    Err(FrameError::Timeout(_))
                        if started.elapsed() < opts.max_wait && alive(discovery, peer).await =>
                    {
                        tracing::debug!(%peer, "step slow but server alive; waiting");
                    }
                    Err(e) => return Err(io(e)),
                }
            };
            let reply = Response::decode(&frame).map_err(|e| ChainError::Protocol { peer, detail: e.to_string() })?;
            match reply {
                Response::Hidden { n_tokens, compute_us, hidden }
                    if n_tokens as usize == take && hidden.len() == take * dim =>
                {
                    out.extend_from_slice(&hidden);
                    self.stats.steps += 1;
                    self.stats.tokens += take;
                    self.stats.wall += started.elapsed();
                    self.stats.compute += Duration::from_micros(u64::from(compute_us));
                    self.stats.bytes += (encoded.len() + frame.len() + 8) as u64;
                }
                Response::Error { code, message } => return Err(ChainError::Server { peer, code, message }),
                other => {
                    return Err(ChainError::Protocol {
                        peer,
                        detail: format!("expected {take} rows of hidden states, got {}", describe(&other)),
                    })
                }
            }
            done += take;
        }
        Ok(out)
    }

    /// Ends the session (the server frees its cache); waits at most a second.
    pub(super) async fn close(mut self) {
        let _ = crate::net::timeout(CLOSE_LIMIT, write_frame(&mut self.stream, &Request::Close.encode())).await;
    }
}

impl fmt::Display for HopSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}) {}", self.blocks.start, self.blocks.end, self.peer)
    }
}

/// Whether `peer` answers a status request within half a second, over a fresh stream (opened
/// within half a second too).
async fn alive<D: Discovery>(discovery: &D, peer: PeerId) -> bool {
    let Ok(mut stream) = discovery.open(peer, ALIVE_LIMIT).await else { return false };
    matches!(exchange(peer, &mut stream, &Request::Info, ALIVE_LIMIT).await, Ok(Response::Info(_)))
}

/// Sends one request and reads one answer; an error answer becomes [`ChainError::Server`].
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    peer: PeerId,
    stream: &mut S,
    req: &Request,
    limit: Duration,
) -> Result<Response, ChainError> {
    let io = |error| ChainError::Stream { peer, error };
    crate::net::timeout(limit, write_frame(stream, &req.encode()))
        .await
        .ok_or(io(FrameError::Timeout(limit)))?
        .map_err(io)?;
    let frame = read_frame(stream, MAX_FRAME, limit, limit).await.map_err(io)?;
    let resp = Response::decode(&frame).map_err(|e| ChainError::Protocol { peer, detail: e.to_string() })?;
    if let Response::Error { code, message } = resp {
        return Err(ChainError::Server { peer, code, message });
    }
    Ok(resp)
}

fn describe(r: &Response) -> String {
    match r {
        Response::Hidden { n_tokens, hidden, .. } => format!("{n_tokens} rows ({} values)", hidden.len()),
        other => format!("{other:?}"),
    }
}
