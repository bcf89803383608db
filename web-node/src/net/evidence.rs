//! Fraud reports by id (`/ait/evidence/1`): the evidence of a tribunal case, which names a
//! report only by its id ([`FraudReport::id`]). The asker writes the 32-byte id as one frame;
//! the holder answers one frame, the encoded report or nothing when it holds none. A judge
//! keeps the reports it signed verdicts on; the accused asks them before it appeals, and the
//! jurors of an appeal before they vote.
//!
//! The answer is input from the network: it must decode under [`MAX_REPORT_BYTES`], carry the
//! id asked for and hold up to [`FraudReport::check`], or it is refused ([`fetch`]). A report
//! with the right id binds the accused's signed answers to their inputs, so any holder's copy
//! judges the accused alike.

use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};

use super::admitted::AdmittedStreams;
use super::frame::{read_frame, write_frame, FrameError};
use super::keyed_limit::Ticket;
use crate::trust::report::MAX_REPORT_BYTES;
use crate::trust::FraudReport;

/// The stream protocol id.
pub const EVIDENCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/ait/evidence/1");

/// Requests a node answers at once, from all peers (two per peer).
pub const MAX_OPEN_REQUESTS: usize = 32;

/// How long the id asked for may take to arrive (32 bytes: a peer that holds a slot
/// without asking is cut off soon).
pub const ID_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the answer may take to arrive.
pub const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one holder is given for the whole exchange in [`fetch_any`], so that a holder
/// that stalls cannot hold up the asker's other holders, or its duties.
pub const HOLDER_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a report could not be had from a peer.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The stream could not be opened (the peer does not hold evidence, or is gone).
    #[error("opening an evidence stream to {peer}: {detail}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// Writing the id or reading the answer failed.
    #[error("evidence stream to {peer}: {error}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: FrameError,
    },
    /// The peer holds no report of that id.
    #[error("{0} holds no such report")]
    NotHeld(PeerId),
    /// The answer is not a report of the id asked for that holds up.
    #[error("{peer} answered with a bad report: {detail}")]
    Bad {
        /// The peer.
        peer: PeerId,
        /// Why.
        detail: String,
    },
}

/// Asks `peer` for the report `id`: the report, checked ([`FraudReport::check`]) and of that
/// id.
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    id: [u8; 32],
) -> Result<FraudReport, EvidenceError> {
    let open = super::timeout(EVIDENCE_TIMEOUT, control.open_stream(peer, EVIDENCE_PROTOCOL));
    let mut stream = open
        .await
        .ok_or_else(|| EvidenceError::Open { peer, detail: "timed out".into() })?
        .map_err(|e| EvidenceError::Open { peer, detail: e.to_string() })?;
    let io = |error| EvidenceError::Stream { peer, error };
    super::timeout(EVIDENCE_TIMEOUT, write_frame(&mut stream, &id))
        .await
        .ok_or(io(FrameError::Timeout(EVIDENCE_TIMEOUT)))?
        .map_err(io)?;
    let answer = read_frame(&mut stream, MAX_REPORT_BYTES, EVIDENCE_TIMEOUT, EVIDENCE_TIMEOUT).await.map_err(io)?;
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    accept(&answer, peer, id)
}

/// `peer`'s answer to a request for `id`: a report of that id that holds up, or why not.
fn accept(answer: &[u8], peer: PeerId, id: [u8; 32]) -> Result<FraudReport, EvidenceError> {
    if answer.is_empty() {
        return Err(EvidenceError::NotHeld(peer));
    }
    let bad = |detail: String| EvidenceError::Bad { peer, detail };
    let report = FraudReport::decode(answer).map_err(|e| bad(e.to_string()))?;
    if report.id() != id {
        return Err(bad(format!("report {} instead", hex::encode(&report.id()[..8]))));
    }
    report.check().map_err(|e| bad(e.to_string()))?;
    Ok(report)
}

/// The id a request asks for: exactly 32 bytes.
fn decode_id(frame: Vec<u8>) -> Result<[u8; 32], String> {
    frame.try_into().map_err(|f: Vec<u8>| format!("a report id of {} bytes", f.len()))
}

/// Asks each of `holders` in turn for the report `id`, each within [`HOLDER_TIMEOUT`]: the
/// first good answer, or `None`.
pub async fn fetch_any(control: &libp2p_stream::Control, holders: &[PeerId], id: [u8; 32]) -> Option<FraudReport> {
    for &peer in holders {
        let mut control = control.clone();
        match super::timeout(HOLDER_TIMEOUT, fetch(&mut control, peer, id)).await {
            Some(Ok(report)) => return Some(report),
            Some(Err(e)) => tracing::info!(%peer, report = %hex::encode(&id[..8]), "no evidence: {e}"),
            None => tracing::info!(%peer, report = %hex::encode(&id[..8]), "no evidence in {HOLDER_TIMEOUT:?}"),
        }
    }
    None
}

/// Incoming evidence requests, admitted two per peer and [`MAX_OPEN_REQUESTS`] in all (a
/// stream beyond that is closed at once).
pub struct EvidenceInbox(AdmittedStreams);

/// One peer's admitted request.
pub struct EvidenceRequest {
    /// Who asks.
    pub peer: PeerId,
    stream: libp2p::Stream,
    _ticket: Ticket<PeerId>,
}

impl EvidenceInbox {
    /// Takes `/ait/evidence/1` streams on `control`.
    pub fn new(control: &mut libp2p_stream::Control) -> Result<EvidenceInbox, libp2p_stream::AlreadyRegistered> {
        AdmittedStreams::new(control, EVIDENCE_PROTOCOL, MAX_OPEN_REQUESTS, 2, "evidence request").map(EvidenceInbox)
    }

    /// The next admitted request; `None` when the node stopped.
    pub async fn next(&mut self) -> Option<EvidenceRequest> {
        let a = self.0.next().await?;
        Some(EvidenceRequest { peer: a.peer, stream: a.stream, _ticket: a.ticket })
    }
}

impl EvidenceRequest {
    /// Reads the id asked for (32 bytes, within [`ID_TIMEOUT`]).
    pub async fn read(&mut self) -> Result<[u8; 32], String> {
        let frame = read_frame(&mut self.stream, 32, ID_TIMEOUT, ID_TIMEOUT)
            .await
            .map_err(|e| format!("reading a report id: {e}"))?;
        decode_id(frame)
    }

    /// Answers with the encoded report, or that none is held, and closes the stream.
    pub async fn answer(mut self, report: Option<&[u8]>) {
        let sent = super::timeout(EVIDENCE_TIMEOUT, write_frame(&mut self.stream, report.unwrap_or_default())).await;
        if let Some(Err(e)) = sent {
            tracing::debug!(peer = %self.peer, "answering an evidence request: {e}");
        }
        let _ = futures::AsyncWriteExt::close(&mut self.stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_32_bytes_and_a_bad_answer_is_refused() {
        assert_eq!(decode_id(vec![7; 32]), Ok([7; 32]));
        assert!(decode_id(vec![]).is_err() && decode_id(vec![7; 31]).is_err() && decode_id(vec![7; 33]).is_err());
        let peer = PeerId::random();
        assert!(matches!(accept(&[], peer, [1; 32]), Err(EvidenceError::NotHeld(p)) if p == peer));
        assert!(matches!(accept(b"not a report", peer, [1; 32]), Err(EvidenceError::Bad { .. })));
        assert!(matches!(accept(&[0xff; 4096], peer, [1; 32]), Err(EvidenceError::Bad { .. })));
    }
}
