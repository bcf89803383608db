//! Fraud reports between nodes (`/ait/fraud/2`): one stream per report, the sender writes
//! the report ([`FraudReport::encode`]) as one frame, then a second frame with the accused's
//! EVM address when it wants a signed verdict for the chain's tribunal (empty otherwise), and
//! the receiver answers one small frame saying what it made of it ([`Answer`]), with its
//! signed verdict ([`SignedVerdict`]) when it found the accused faulty, can sign, and the
//! chain binds that address to the accused.
//!
//! A node acts on a report only after recomputing it
//! ([`SwarmChain::verify_report`](super::chain::SwarmChain::verify_report)), and passes on
//! only a report its recomputation confirmed ([`spread`]): a true report travels from node
//! to node, each checking it for itself, and a false one stops at the first node that
//! recomputes it (and convicts the auditors who signed it there). Reports are input from
//! the network: one per peer at a time, [`MAX_OPEN_REPORTS`] at once, read within
//! [`REPORT_TIMEOUT`], decoded under [`MAX_REPORT_BYTES`].

use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};

use super::admitted::AdmittedStreams;
use super::frame::{read_frame, write_frame, FrameError};
use super::keyed_limit::Ticket;
use super::node::NodeHandle;
use crate::trust::report::MAX_REPORT_BYTES;
use crate::trust::tribunal::SignedVerdict;
use crate::trust::FraudReport;
use alloy_primitives::Address;

/// The stream protocol id.
pub const FRAUD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ait/fraud/2");

/// Reports a node reads at once, from all peers (one per peer).
pub const MAX_OPEN_REPORTS: usize = 8;

/// How long a report may take to arrive.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a sender waits for the answer: the receiver recomputes the report first.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest answer.
const MAX_ANSWER: usize = 4 << 10;

/// What a node made of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Its recomputation failed the accused: convicted in its book; with its signed verdict
    /// when one was asked for and it could sign it.
    Convicted(Option<SignedVerdict>),
    /// Its recomputation cleared the accused: the auditors who signed the report are
    /// convicted in its book instead.
    Cleared,
    /// It counted this report before; with its signed verdict when one was asked for and its
    /// recomputation had convicted the accused.
    Known(Option<SignedVerdict>),
    /// It did not act on the report (forged, malformed, about a model it cannot recompute,
    /// no server to recompute it on): nothing changed. Why, in words.
    Refused(String),
}

impl Answer {
    /// Its name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Convicted(_) => "convicted",
            Answer::Cleared => "cleared",
            Answer::Known(_) => "known",
            Answer::Refused(_) => "refused",
        }
    }

    /// The signed verdict it carries, if any.
    pub fn verdict(&self) -> Option<&SignedVerdict> {
        match self {
            Answer::Convicted(v) | Answer::Known(v) => v.as_ref(),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (tag, rest) = match self {
            Answer::Convicted(v) => (1u8, v.as_ref().map(SignedVerdict::encode).unwrap_or_default()),
            Answer::Cleared => (2, vec![]),
            Answer::Known(v) => (3, v.as_ref().map(SignedVerdict::encode).unwrap_or_default()),
            Answer::Refused(why) => (4, why.as_bytes().to_vec()),
        };
        let mut b = vec![tag];
        b.extend_from_slice(&rest[..rest.len().min(MAX_ANSWER - 1)]);
        b
    }

    fn decode(b: &[u8]) -> Result<Answer, FraudError> {
        let text = || String::from_utf8_lossy(&b[1..]).into_owned();
        let verdict = || match b.len() {
            1 => Ok(None),
            _ => SignedVerdict::decode(&b[1..])
                .map(Some)
                .ok_or_else(|| FraudError::Answer(format!("a signed verdict of {} bytes", b.len() - 1))),
        };
        match b.first() {
            Some(1) => Ok(Answer::Convicted(verdict()?)),
            Some(2) if b.len() == 1 => Ok(Answer::Cleared),
            Some(3) => Ok(Answer::Known(verdict()?)),
            Some(4) => Ok(Answer::Refused(text())),
            _ => Err(FraudError::Answer(format!("{} bytes, tag {:?}", b.len(), b.first()))),
        }
    }
}

/// Why sending a report failed.
#[derive(Debug, thiserror::Error)]
pub enum FraudError {
    /// The stream could not be opened (the peer does not take reports, or is gone).
    #[error("opening a fraud report stream to {peer}: {detail}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// Writing the report or reading the answer failed.
    #[error("fraud report stream to {peer}: {error}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: FrameError,
    },
    /// The answer does not decode.
    #[error("a malformed answer to a fraud report: {0}")]
    Answer(String),
}

/// Sends the encoded report `report` to `peer`, asking for a signed verdict about the accused
/// at `ask` if given, and waits for its answer.
pub async fn send(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    report: &[u8],
    ask: Option<Address>,
) -> Result<Answer, FraudError> {
    let open = super::timeout(REPORT_TIMEOUT, control.open_stream(peer, FRAUD_PROTOCOL));
    let mut stream = open
        .await
        .ok_or_else(|| FraudError::Open { peer, detail: "timed out".into() })?
        .map_err(|e| FraudError::Open { peer, detail: e.to_string() })?;
    let io = |error| FraudError::Stream { peer, error };
    let ask = ask.map(|a| a.to_vec()).unwrap_or_default();
    for frame in [report, &ask] {
        super::timeout(REPORT_TIMEOUT, write_frame(&mut stream, frame))
            .await
            .ok_or(io(FrameError::Timeout(REPORT_TIMEOUT)))?
            .map_err(io)?;
    }
    let answer = read_frame(&mut stream, MAX_ANSWER, ANSWER_TIMEOUT, REPORT_TIMEOUT).await.map_err(io)?;
    Answer::decode(&answer)
}

/// Sends `report` to every node this node is connected to (native nodes: browsers take no
/// reports) but those in `except`, at once, asking for signed verdicts about the accused at
/// `ask` if given; returns each peer's answer or error.
pub async fn spread(
    node: &NodeHandle,
    report: &FraudReport,
    except: &[PeerId],
    ask: Option<Address>,
) -> Vec<(PeerId, Result<Answer, FraudError>)> {
    let peers = match node.peers().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("no peers to send a fraud report to: {e}");
            return Vec::new();
        }
    };
    let bytes = report.encode();
    let to: Vec<PeerId> = peers
        .into_iter()
        .filter(|p| p.agent.as_deref().is_some_and(|a| a.starts_with("ait/")) && !except.contains(&p.peer))
        .map(|p| p.peer)
        .collect();
    let sends = to.into_iter().map(|peer| {
        let (mut control, bytes) = (node.control(), &bytes);
        async move { (peer, send(&mut control, peer, bytes, ask).await) }
    });
    let answers = futures::future::join_all(sends).await;
    for (peer, a) in &answers {
        match a {
            Ok(a) => tracing::info!(%peer, answer = a.name(), "fraud report sent"),
            Err(e) => tracing::debug!(%peer, "fraud report not sent: {e}"),
        }
    }
    answers
}

/// How many of `answers` ([`spread`]'s) convicted the accused by their own recomputation.
pub fn convictions(answers: &[(PeerId, Result<Answer, FraudError>)]) -> usize {
    answers.iter().filter(|(_, a)| matches!(a, Ok(Answer::Convicted(_)))).count()
}

/// The address a sender asks a verdict about: an empty frame (none) or 20 bytes.
fn decode_ask(frame: &[u8]) -> Result<Option<Address>, String> {
    match frame.len() {
        0 => Ok(None),
        20 => Ok(Some(Address::from_slice(frame))),
        n => Err(format!("an address of {n} bytes")),
    }
}

/// Incoming report streams, admitted one per peer and [`MAX_OPEN_REPORTS`] in all (a stream
/// beyond that is closed at once).
pub struct FraudInbox(AdmittedStreams);

/// One peer's report stream, admitted.
pub struct IncomingReport {
    /// Who sent it.
    pub peer: PeerId,
    stream: libp2p::Stream,
    _ticket: Ticket<PeerId>,
}

impl FraudInbox {
    /// Takes `/ait/fraud/2` streams on `control`.
    pub fn new(control: &mut libp2p_stream::Control) -> Result<FraudInbox, libp2p_stream::AlreadyRegistered> {
        AdmittedStreams::new(control, FRAUD_PROTOCOL, MAX_OPEN_REPORTS, 1, "fraud report").map(FraudInbox)
    }

    /// The next admitted report stream; `None` when the node stopped.
    pub async fn next(&mut self) -> Option<IncomingReport> {
        let a = self.0.next().await?;
        Some(IncomingReport { peer: a.peer, stream: a.stream, _ticket: a.ticket })
    }
}

impl IncomingReport {
    /// Reads and decodes the report (within [`REPORT_TIMEOUT`] and [`MAX_REPORT_BYTES`]) and
    /// the address a signed verdict is asked about, if any; on an error, says why to the
    /// sender.
    pub async fn read(&mut self) -> Result<(FraudReport, Option<Address>), String> {
        let frame = read_frame(&mut self.stream, MAX_REPORT_BYTES, REPORT_TIMEOUT, REPORT_TIMEOUT)
            .await
            .map_err(|e| format!("reading the report: {e}"))?;
        let report = FraudReport::decode(&frame).map_err(|e| e.to_string())?;
        let ask = read_frame(&mut self.stream, 20, REPORT_TIMEOUT, REPORT_TIMEOUT)
            .await
            .map_err(|e| format!("reading the address asked about: {e}"))?;
        Ok((report, decode_ask(&ask)?))
    }

    /// Answers the sender and closes the stream.
    pub async fn answer(mut self, answer: &Answer) {
        let sent = super::timeout(REPORT_TIMEOUT, write_frame(&mut self.stream, &answer.encode())).await;
        if let Some(Err(e)) = sent {
            tracing::debug!(peer = %self.peer, "answering a fraud report: {e}");
        }
        let _ = futures::AsyncWriteExt::close(&mut self.stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let signed = SignedVerdict { judge: Address::repeat_byte(7), signature: vec![9u8; 65].into() };
        for a in [
            Answer::Convicted(None),
            Answer::Convicted(Some(signed.clone())),
            Answer::Cleared,
            Answer::Known(None),
            Answer::Known(Some(signed.clone())),
            Answer::Refused("a forged signature".into()),
        ] {
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
        assert!(Answer::decode(&[]).is_err());
        assert!(Answer::decode(&[1, 0]).is_err());
        assert!(Answer::decode(&[2, 0]).is_err());
        assert!(Answer::decode(&Answer::Convicted(Some(signed)).encode()[..50]).is_err());
    }

    #[test]
    fn an_address_asked_about_is_none_or_twenty_bytes() {
        assert_eq!(decode_ask(&[]), Ok(None));
        assert_eq!(decode_ask(&[7; 20]), Ok(Some(Address::repeat_byte(7))));
        assert!(decode_ask(&[7; 19]).is_err() && decode_ask(&[7; 21]).is_err());
        assert!(Answer::decode(&[9]).is_err());
        let long = Answer::Refused("x".repeat(10_000)).encode();
        assert_eq!(long.len(), MAX_ANSWER);
    }
}
