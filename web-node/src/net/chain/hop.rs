//! One hop of a route: the session on one server ([`HopSession`]), which owns the hop's stream.
//!
//! A session is opened over the stream its server's status came over, stepped, and closed.
//! [`HopSession::step`] is the only place the requests and answers of a step are exchanged:
//! it splits a step into frames that fit, applies the step's timeouts, tells a slow server
//! from a frozen one (the liveness check), checks every answer and keeps the hop's
//! statistics. Every answer is read with a limit sized for what it should hold, and hidden
//! states must be finite with a sane norm ([`MAX_HIDDEN_RMS`]): anything else fails the hop,
//! like an error frame. Whatever a step carries besides the hidden states is added and checked
//! there: the payment voucher it sends, and the node's signed receipt it gets back (checked
//! against the node's peer id and kept for audits; one that does not verify fails the hop).
//! It does not choose servers or recover from failures.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use web_time::Instant;

use super::{ChainError, ChainOptions, Discovery, HopStats};
use crate::model::ModelId;
use crate::net::frame::{read_frame, write_frame, FrameError, MAX_FRAME};
use crate::net::protocol::{hidden_answer_limit, Request, Response, MAX_CONTROL_ANSWER};
use crate::net::routing::Hop;
use crate::net::serve::BoxStream;
use crate::settle::{unix_s, HopBill, Payer, SignedVoucher};
use crate::trust::{output_hash, InputChain, NodeKey, Receipt, SessionNonce, SignedReceipt};

/// How long a server has to answer the liveness check of a step that is late.
const ALIVE_LIMIT: Duration = Duration::from_millis(500);

/// Longest wait for the next word from a node that queued an open request (it tells the
/// client where it stands every few seconds).
const QUEUE_LIMIT: Duration = Duration::from_secs(30);

/// Longest a client waits in one node's queue (under a node's idle timeout, 120 s by
/// default, so the hops already open for the route do not close meanwhile).
const QUEUE_TOTAL: Duration = Duration::from_secs(90);

/// How long closing a session may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Largest root mean square of one token's hidden states that a hop may answer: the largest
/// finite f16 value, which no row of a model run in half precision can exceed. The default
/// model's hidden states peak at an RMS of about 1,050 (its first token, mid-model; see the
/// chain test `default_model_hidden_states_are_far_below_the_rms_bound`), 60 times below.
pub const MAX_HIDDEN_RMS: f64 = 65504.0;

/// Weight of a new sample in a hop's measured decode step time (exponential average).
const MEASURE_WEIGHT: f64 = 0.3;

/// Checks hidden states a server answered, `dim` values per token: every value finite and
/// every token's RMS at most [`MAX_HIDDEN_RMS`]. Says which token and value are wrong.
pub(super) fn check_hidden(hidden: &[f32], dim: usize) -> Result<(), String> {
    for (t, row) in hidden.chunks(dim.max(1)).enumerate() {
        if let Some(i) = row.iter().position(|v| !v.is_finite()) {
            return Err(format!("token {t}: value {i} is {}", row[i]));
        }
        let rms = (row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / row.len() as f64).sqrt();
        if rms > MAX_HIDDEN_RMS {
            return Err(format!("token {t}: RMS {rms:.3e} is over {MAX_HIDDEN_RMS}"));
        }
    }
    Ok(())
}

/// An open session on one server.
pub(super) struct HopSession {
    peer: PeerId,
    blocks: Range<usize>,
    stream: BoxStream,
    /// Estimated time of one decode step, from routing.
    expected_ms: f64,
    /// Measured wall time of a one-token step, averaged.
    measured_ms: Option<f64>,
    stats: HopStats,
    /// On a paid session, the work received and paid for, and who pays.
    bill: Option<(HopBill, Arc<Payer>)>,
    /// On a free-tier session: what the server said was left of the client's daily quota
    /// there, less the tokens it ran since.
    free_left: Option<u32>,
    /// The node's key, taken from its peer id once, that its receipts are checked with.
    key: NodeKey,
    /// The session's id, named in its receipts.
    session: SessionNonce,
    /// The model, named in its receipts.
    model: ModelId,
    /// The hash of every input sent so far.
    inputs: InputChain,
    /// The node's receipt for every step it answered, checked, in order.
    receipts: Vec<SignedReceipt>,
    /// Every row it answered, in order (what an audit compares).
    outputs: Vec<f32>,
}

impl HopSession {
    /// Opens a session for `hop` over `stream` (a stream to its server, as discovery found
    /// it), holding up to `max_len` tokens of `model`; on a server that charges, `bill` counts
    /// what it is paid and names who pays. A full node that queues the session tells `watch`
    /// where it stands.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        hop: Hop,
        mut stream: BoxStream,
        model: ModelId,
        max_len: usize,
        expected_ms: f64,
        limit: Duration,
        mut bill: Option<(HopBill, Arc<Payer>)>,
        watch: Option<&super::QueueWatch>,
    ) -> Result<HopSession, ChainError> {
        let Hop { peer, blocks } = hop;
        // A node whose receipts cannot be checked cannot serve a step: not worth a session.
        let key =
            NodeKey::of(&peer).map_err(|e| ChainError::Protocol { peer, detail: format!("step receipt: {e}") })?;
        // A paid session first asks what backs it, and allocates what its longest run costs
        // beyond that (a signature the node submits; no transaction here).
        if let Some((b, payer)) = &mut bill {
            let quote = match exchange(peer, &mut stream, &Request::Quote { payer: payer.payer }, limit).await? {
                Response::Quote(q) => q,
                other => return Err(ChainError::Protocol { peer, detail: format!("answered {other:?} to quote") }),
            };
            b.allocate(&quote, max_len, &payer.key, unix_s())
                .map_err(|e| ChainError::Payment { peer, detail: e.to_string() })?;
        }
        let session: SessionNonce = rand::random();
        let req = Request::Open {
            model,
            session,
            start: blocks.start as u32,
            end: blocks.end as u32,
            max_len: max_len as u32,
            payment: bill.as_ref().map(|(b, _)| b.payment().clone()),
        };
        let mut answer = exchange(peer, &mut stream, &req, limit).await?;
        // A charging node that is full queues the request and says where it stands, again
        // while it waits (at least every few seconds), until it opens the session or refuses.
        let mut place = None;
        let queued = Instant::now();
        while let Response::Queued { position, waiting } = answer {
            if place != Some(position) {
                tracing::info!(%peer, position, waiting, "queued for a session slot");
                if let Some(w) = watch {
                    (w.0)(peer, position, waiting);
                }
                place = Some(position);
            }
            // Not longer than the hops already open idle before they close.
            if queued.elapsed() >= QUEUE_TOTAL {
                return Err(ChainError::Server {
                    peer,
                    code: crate::net::protocol::ErrorCode::Busy,
                    message: format!("still queued ({position} of {waiting}) after {QUEUE_TOTAL:?}"),
                });
            }
            answer = read_answer(peer, &mut stream, limit.max(QUEUE_LIMIT)).await?;
        }
        match answer {
            Response::Opened { free_left, .. } => Ok(HopSession {
                peer,
                blocks,
                stream,
                expected_ms,
                measured_ms: None,
                stats: HopStats::default(),
                bill,
                free_left,
                key,
                session,
                model,
                inputs: InputChain::new(&session),
                receipts: Vec::new(),
                outputs: Vec::new(),
            }),
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

    /// What one token through it costs (zero on a free session).
    pub(super) fn price_per_token(&self) -> U256 {
        self.bill.as_ref().map_or(U256::ZERO, |(b, _)| b.terms().cost(self.blocks.len() as u64))
    }

    /// The EVM address the node is paid at, when it charges.
    pub(super) fn payee(&self) -> Option<alloy_primitives::Address> {
        self.bill.as_ref().map(|(b, _)| b.terms().node)
    }

    /// The node's checked receipts for every step it answered, in order.
    pub(super) fn receipts(&self) -> &[SignedReceipt] {
        &self.receipts
    }

    /// Takes the rows it answered so far, in order.
    pub(super) fn take_outputs(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.outputs)
    }

    /// On a free-tier session, the tokens left of the client's daily quota there.
    pub(super) fn free_left(&self) -> Option<u32> {
        self.free_left
    }

    /// What the vouchers sent to it pay so far (zero on a free session).
    pub(super) fn paid(&self) -> U256 {
        self.bill.as_ref().map_or(U256::ZERO, |(b, _)| b.signed())
    }

    /// A voucher for the work received, if the session is paid, one is due before a frame of
    /// `n` tokens (`None` for the closing voucher), and there is work not yet signed for.
    fn voucher(&mut self, n: Option<usize>) -> Result<Option<SignedVoucher>, ChainError> {
        let Some((bill, payer)) = &mut self.bill else { return Ok(None) };
        if n.is_some_and(|n| !bill.due(n)) {
            return Ok(None);
        }
        bill.sign(&payer.key, unix_s()).map_err(|e| ChainError::Payment { peer: self.peer, detail: e.to_string() })
    }

    /// Its timings so far.
    pub(super) fn stats(&self) -> &HopStats {
        &self.stats
    }

    /// Wall time of a one-token step through it as measured so far (averaged), in ms.
    pub(super) fn measured_ms(&self) -> Option<f64> {
        self.measured_ms
    }

    /// Runs `n` tokens (`x`, `[n, dim]`) at position `pos` through the hop, split into frames
    /// that fit, and returns its output, same shape.
    ///
    /// Each frame is answered within the larger of [`ChainOptions::step_timeout`] and the
    /// server's estimated step time times [`ChainOptions::timeout_factor`], plus
    /// [`ChainOptions::per_token_timeout`] per token. A server that misses that but answers a
    /// status request (over a fresh stream from `discovery`) is busy, not dead: the wait goes on,
    /// up to the larger of [`ChainOptions::max_wait`] and [`ChainOptions::busy_factor`] times
    /// that timeout. The answer is read with a limit of exactly the expected size.
    pub(super) async fn step<D: Discovery>(
        &mut self,
        pos: usize,
        x: &[f32],
        n: usize,
        dim: usize,
        opts: &ChainOptions,
        discovery: &D,
    ) -> Result<Vec<f32>, ChainError> {
        let per_frame = ((MAX_FRAME - 64 - crate::settle::MAX_PAYMENT_BYTES) / (dim * 4)).max(1);
        let per_frame = self.bill.as_ref().map_or(per_frame, |(b, _)| per_frame.min(b.max_tokens_per_frame()));
        let expected = Duration::from_secs_f64((self.expected_ms * opts.timeout_factor / 1e3).clamp(0.0, 3600.0));
        let step_timeout = opts.step_timeout.max(expected);
        let peer = self.peer;
        let io = |error| ChainError::Stream { peer, error };
        let mut out = Vec::with_capacity(x.len());
        let mut done = 0;
        while done < n {
            let take = per_frame.min(n - done);
            let hidden = x[done * dim..(done + take) * dim].to_vec();
            let voucher = self.voucher(Some(take))?;
            let mut inputs = self.inputs.clone();
            inputs.absorb(&hidden, dim);
            let req = Request::Step { pos: (pos + done) as u32, n_tokens: take as u32, hidden, voucher };
            let limit = step_timeout + opts.per_token_timeout * take as u32;
            let patience = opts.max_wait.max(limit.mul_f64(opts.busy_factor.clamp(1.0, 1e3)));
            let started = Instant::now();
            let encoded = req.encode();
            crate::net::timeout(limit, write_frame(&mut self.stream, &encoded))
                .await
                .ok_or(io(FrameError::Timeout(limit)))?
                .map_err(io)?;
            // A server busy with other sessions' work still answers a status request (the
            // compute queue is not involved); a frozen or dead one does not. Keep waiting while
            // it is alive, up to `patience`. This node's own server is in-process: it cannot
            // freeze apart from this node, and its queue is the one every local request shares
            // (a burst of prompts can take longer than any remote patience): wait for it.
            let answer_limit = hidden_answer_limit(take, dim);
            let local = discovery.local_peer() == Some(peer);
            let frame = loop {
                match read_frame(&mut self.stream, answer_limit, limit, limit).await {
                    Ok(f) => break f,
                    Err(FrameError::Timeout(_)) if local => {
                        tracing::debug!(%peer, "step of the local server queued; waiting");
                    }
                    Err(FrameError::Timeout(_)) if started.elapsed() < patience && alive(discovery, peer).await => {
                        tracing::debug!(%peer, "step slow but server alive; waiting");
                    }
                    Err(e) => return Err(io(e)),
                }
            };
            let reply = Response::decode(&frame).map_err(|e| ChainError::Protocol { peer, detail: e.to_string() })?;
            match reply {
                Response::Hidden { n_tokens, compute_us, receipt: signature, hidden }
                    if n_tokens as usize == take && hidden.len() == take * dim =>
                {
                    check_hidden(&hidden, dim).map_err(|detail| ChainError::Protocol { peer, detail })?;
                    let receipt = Receipt {
                        session: self.session,
                        model: self.model,
                        start: self.blocks.start as u32,
                        end: self.blocks.end as u32,
                        pos: (pos + done) as u32,
                        n_tokens,
                        inputs: inputs.value(),
                        output: output_hash(&hidden),
                    };
                    self.key
                        .verify(&receipt, &signature)
                        .map_err(|e| ChainError::Protocol { peer, detail: format!("step receipt: {e}") })?;
                    if let Some((bill, _)) = &mut self.bill {
                        bill.received(take, &receipt);
                    }
                    self.receipts.push(SignedReceipt { receipt, signature });
                    self.inputs = inputs;
                    self.outputs.extend_from_slice(&hidden);
                    if n == 1 {
                        let ms = started.elapsed().as_secs_f64() * 1e3;
                        let avg = self.measured_ms.map_or(ms, |m| m + MEASURE_WEIGHT * (ms - m));
                        self.measured_ms = Some(avg);
                    }
                    out.extend_from_slice(&hidden);
                    if let Some(left) = &mut self.free_left {
                        *left = left.saturating_sub(u32::try_from(take).unwrap_or(u32::MAX));
                    }
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

    /// Ends the session (the server frees its cache), sending the last voucher of a paid
    /// one; waits at most a second. Returns what the session's vouchers paid in all.
    pub(super) async fn close(mut self) -> U256 {
        let voucher = self.voucher(None).unwrap_or_else(|e| {
            tracing::warn!("no closing voucher: {e}");
            None
        });
        let paid = voucher.is_some();
        let close = Request::Close { voucher }.encode();
        let _ = crate::net::timeout(CLOSE_LIMIT, write_frame(&mut self.stream, &close)).await;
        if paid {
            // The server closes the stream once it kept the voucher: wait for that, so a
            // client that exits next does not cut the voucher off in flight.
            let _ = read_frame(&mut self.stream, MAX_CONTROL_ANSWER, CLOSE_LIMIT, CLOSE_LIMIT).await;
        }
        self.paid()
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

/// Sends one request (status or open) and reads one answer of at most [`MAX_CONTROL_ANSWER`]
/// bytes; an error answer becomes [`ChainError::Server`].
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
    read_answer(peer, stream, limit).await
}

/// Reads one control answer within `limit`; an error frame is an error.
async fn read_answer<S: AsyncRead + Unpin>(
    peer: PeerId,
    stream: &mut S,
    limit: Duration,
) -> Result<Response, ChainError> {
    let io = |error| ChainError::Stream { peer, error };
    let frame = read_frame(stream, MAX_CONTROL_ANSWER, limit, limit).await.map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_or_absurd_hidden_states_are_refused() {
        let dim = 4;
        let mut ok = vec![1.0f32; 2 * dim];
        ok[0] = 30_000.0; // one large value, as a real "massive activation"
        assert_eq!(check_hidden(&ok, dim), Ok(()));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = ok.clone();
            x[dim + 2] = bad;
            assert!(check_hidden(&x, dim).unwrap_err().starts_with("token 1: value 2"), "{bad}");
        }
        // Finite, but an RMS no model produces; and values whose squares overflow f32.
        assert!(check_hidden(&[1e5; 4], dim).is_err());
        assert!(check_hidden(&[f32::MAX, 0.0, 0.0, 0.0], dim).is_err());
    }
}
