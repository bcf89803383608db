//! Fraud reports: the evidence of an audit that judged a node faulty, in a form any node can
//! check and recompute, so that one client's finding protects everyone who checks it.
//!
//! A report carries the inputs a node was sent for a span of a session (from position 0),
//! the node's signed answers to them ([`SignedRun`]: its receipts and output rows), and each
//! auditor's signed answers to the same inputs replayed as one prefill (auditors are servers
//! of the same layers; their receipts bind their outputs to the same inputs just as the
//! accused's do). [`FraudReport::check`] verifies every signature and hash and that a
//! quorum of the auditors' outputs is off the accused's by more than [`DELTA_LIMIT`]:
//! nothing in a report that passes can have been made up by whoever sends it. It can still
//! be false: two auditors who collude can sign wrong outputs alike. So a node acts on a
//! report only after recomputing the span itself, or on a server that is neither the
//! accused nor one of the auditors ([`FraudReport::judge`]): when its recomputation clears
//! the accused, the report convicts the auditors instead (they signed outputs that are not
//! the computation of their layers).

use std::ops::Range;

use libp2p::PeerId;

use super::audit::{Verdict, MAX_OPINIONS, QUORUM};
use super::delta::{deviation, DELTA_LIMIT};
use super::receipt::{
    output_hash, InputChain, NodeKey, Receipt, ReceiptError, SessionNonce, SignedReceipt, MAX_SIGNATURE,
};
use crate::model::ModelId;
use crate::net::frame::MAX_FRAME;
use crate::net::protocol::{put_f32s, put_u32, Reader};

/// Largest report, encoded: one frame.
pub const MAX_REPORT_BYTES: usize = MAX_FRAME;

/// Widest hidden state a report may carry.
pub const MAX_REPORT_HIDDEN: usize = 1 << 16;

/// A report's first bytes, and its version.
const MAGIC: &[u8; 8] = b"aitfraud";
const VERSION: u8 = 1;

/// One node's signed answers to a span's inputs: its receipts, in order from position 0,
/// and every row it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedRun {
    /// The node.
    pub node: PeerId,
    /// Its receipts.
    pub receipts: Vec<SignedReceipt>,
    /// Its output rows, `[tokens, hidden]`.
    pub outputs: Vec<f32>,
}

impl SignedRun {
    /// `key`'s answers `outputs` to `inputs` (rows of width `dim`) in steps of `steps`
    /// tokens, each signed as a node serving `layers` of `model` signs it in session
    /// `session` (tests, benches and fuzz seeds build reports with it). `steps` must cover
    /// the rows exactly.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &libp2p::identity::Keypair,
        session: SessionNonce,
        model: ModelId,
        layers: Range<u32>,
        inputs: &[f32],
        outputs: &[f32],
        steps: &[usize],
        dim: usize,
    ) -> Result<SignedRun, ReceiptError> {
        let mut chain = InputChain::new(&session);
        let mut at = 0;
        let mut receipts = Vec::with_capacity(steps.len());
        for &n in steps {
            let rows = at * dim..(at + n) * dim;
            chain.absorb(&inputs[rows.clone()], dim);
            let receipt = Receipt {
                session,
                model,
                start: layers.start,
                end: layers.end,
                pos: at as u32,
                n_tokens: n as u32,
                inputs: chain.value(),
                output: output_hash(&outputs[rows]),
            };
            receipts.push(SignedReceipt { signature: receipt.sign(key)?, receipt });
            at += n;
        }
        Ok(SignedRun { node: key.public().to_peer_id(), receipts, outputs: outputs.to_vec() })
    }
}

/// What a [`SignedRun`] covers, as its receipts say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The session the receipts name.
    pub session: SessionNonce,
    /// The model.
    pub model: ModelId,
    /// The layers.
    pub layers: Range<u32>,
    /// Tokens from position 0.
    pub tokens: usize,
}

/// Why a report (or a client's own evidence for an audit) does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The bytes are not a report.
    #[error("malformed fraud report: {0}")]
    Malformed(String),
    /// The receipts, inputs and outputs do not fit together.
    #[error("the evidence does not hold: {0}")]
    Evidence(String),
    /// A receipt's signature is not its node's.
    #[error("a receipt of {node} does not verify: {error}")]
    Signature {
        /// The node it names.
        node: PeerId,
        /// Why.
        error: Box<ReceiptError>,
    },
    /// The auditors are too few, too many, repeated, or include the accused.
    #[error("the auditors do not hold: {0}")]
    Auditors(String),
    /// The auditors' outputs do not make a quorum against the accused.
    #[error("the auditors do not convict the node: {0}")]
    NoConviction(String),
    /// The recomputation does not fit the report.
    #[error("the recomputation does not fit the report: {0}")]
    Recomputed(String),
}

impl From<crate::net::protocol::DecodeError> for ReportError {
    fn from(e: crate::net::protocol::DecodeError) -> Self {
        ReportError::Malformed(e.to_string())
    }
}

/// Checks that `receipts` are `node`'s answers (their signatures checked when `signatures`)
/// to exactly `inputs` from position 0, with exactly `outputs`: one session, model and layer
/// range, positions without gaps, each step's output hash, and the inputs' hash chain at the
/// last step. Returns what they cover.
pub fn check_run(
    node: &PeerId,
    receipts: &[SignedReceipt],
    inputs: &[f32],
    outputs: &[f32],
    dim: usize,
    signatures: bool,
) -> Result<Span, ReportError> {
    let bad = |what: String| Err(ReportError::Evidence(what));
    let Some(first) = receipts.first() else { return bad("no receipts".into()) };
    if dim == 0 {
        return bad("rows of width 0".into());
    }
    let (session, model) = (first.receipt.session, first.receipt.model);
    let layers = first.receipt.start..first.receipt.end;
    let sig_error = |e: ReceiptError| ReportError::Signature { node: *node, error: Box::new(e) };
    let key = if signatures { Some(NodeKey::of(node).map_err(sig_error)?) } else { None };
    let mut at = 0usize;
    for r in receipts {
        let (pos, n) = (r.receipt.pos as usize, r.receipt.n_tokens as usize);
        if r.receipt.session != session || r.receipt.model != model || (r.receipt.start..r.receipt.end) != layers {
            return bad(format!("the receipt at position {pos} names another session, model or layers"));
        }
        if pos != at || n == 0 {
            return bad(format!("a receipt at position {pos} of {n} tokens after {at} tokens"));
        }
        let rows = pos
            .checked_add(n)
            .and_then(|end| pos.checked_mul(dim).zip(end.checked_mul(dim)))
            .filter(|(_, end)| *end <= outputs.len());
        let Some((from, to)) = rows else {
            return bad(format!("{} tokens signed for, fewer answered", pos + n));
        };
        if output_hash(&outputs[from..to]) != r.receipt.output {
            return bad(format!("the answer at position {pos} is not the one signed"));
        }
        if let Some(key) = &key {
            key.verify(&r.receipt, &r.signature).map_err(sig_error)?;
        }
        at += n;
    }
    if inputs.len() != at * dim || outputs.len() != at * dim {
        return bad(format!(
            "{at} tokens signed for, {} input and {} output rows",
            inputs.len() / dim,
            outputs.len() / dim
        ));
    }
    let mut chain = InputChain::new(&session);
    chain.absorb(inputs, dim);
    if Some(chain.value()) != receipts.last().map(|r| r.receipt.inputs) {
        return bad("the inputs are not the ones signed for".into());
    }
    Ok(Span { session, model, layers, tokens: at })
}

/// The evidence that a node's answers are not the computation of its layers (see the module
/// docs).
#[derive(Clone, Debug, PartialEq)]
pub struct FraudReport {
    /// Width of a row.
    pub hidden: u32,
    /// The inputs, `[tokens, hidden]`.
    pub inputs: Vec<f32>,
    /// The accused node's signed answers.
    pub accused: SignedRun,
    /// Each auditor's signed answers to the same inputs, in the order they were asked.
    pub replays: Vec<SignedRun>,
}

/// What a report that holds says.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// Its id ([`FraudReport::id`]).
    pub id: [u8; 32],
    /// The accused node.
    pub accused: PeerId,
    /// The auditors.
    pub auditors: Vec<PeerId>,
    /// The model.
    pub model: ModelId,
    /// The layers.
    pub layers: Range<u32>,
    /// Tokens covered.
    pub tokens: usize,
    /// The worst token's deviation by the auditors that failed the node, the least of them.
    pub worst: f32,
}

/// What a node's own recomputation of a report's span says ([`FraudReport::judge`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Judgment {
    /// The accused's answers are off the recomputation by more than [`DELTA_LIMIT`].
    pub accused_faulty: bool,
    /// Its worst token's deviation.
    pub worst: f32,
    /// Auditors whose signed outputs are off the recomputation by more than the limit.
    pub lying_auditors: Vec<PeerId>,
}

impl Judgment {
    /// What it says of the accused: faulty, cleared (the auditors who failed it are off the
    /// recomputation instead), or `None` when the recomputation agreed with nobody, which
    /// says more about the server that recomputed than about the accused.
    pub fn accused(&self) -> Option<bool> {
        match (self.accused_faulty, self.lying_auditors.is_empty()) {
            (true, _) => Some(true),
            (false, false) => Some(false),
            (false, true) => None,
        }
    }
}

impl FraudReport {
    /// The report's id: the accused node and its last receipt. Two reports about the same
    /// audited span share it (a report counts once, however often it is sent).
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"ait fraud report v1");
        h.update(&self.accused.node.to_bytes());
        if let Some(last) = self.accused.receipts.last() {
            h.update(&last.receipt.signing_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// Checks everything a report claims short of recomputing it: the accused's and each
    /// auditor's receipts are theirs and bind their outputs to the report's inputs, on the
    /// same model and layers; the auditors are [`QUORUM`] to [`MAX_OPINIONS`] distinct
    /// nodes other than the accused; and their opinions, in order, make the verdict
    /// [`Verdict::Faulty`].
    pub fn check(&self) -> Result<Checked, ReportError> {
        let dim = self.hidden as usize;
        if dim == 0 || dim > MAX_REPORT_HIDDEN {
            return Err(ReportError::Malformed(format!("rows of width {dim}")));
        }
        let accused = &self.accused;
        let span = check_run(&accused.node, &accused.receipts, &self.inputs, &accused.outputs, dim, true)?;
        if !(QUORUM..=MAX_OPINIONS).contains(&self.replays.len()) {
            return Err(ReportError::Auditors(format!(
                "{} auditors, not {QUORUM} to {MAX_OPINIONS}",
                self.replays.len()
            )));
        }
        let mut auditors: Vec<PeerId> = Vec::with_capacity(self.replays.len());
        let mut passed = Vec::with_capacity(self.replays.len());
        let mut worst = f32::INFINITY;
        for replay in &self.replays {
            if replay.node == accused.node || auditors.contains(&replay.node) {
                return Err(ReportError::Auditors(format!("{} audits twice, or itself", replay.node)));
            }
            let theirs = check_run(&replay.node, &replay.receipts, &self.inputs, &replay.outputs, dim, true)?;
            if (theirs.model, &theirs.layers) != (span.model, &span.layers) {
                return Err(ReportError::Evidence(format!("{} ran another model or other layers", replay.node)));
            }
            let d = deviation(&self.inputs, &replay.outputs, &accused.outputs, dim)
                .map_err(|e| ReportError::Evidence(e.to_string()))?;
            let pass = d.within(DELTA_LIMIT);
            if !pass {
                worst = worst.min(d.worst);
            }
            passed.push(pass);
            auditors.push(replay.node);
        }
        match Verdict::of(&passed) {
            Verdict::Faulty => Ok(Checked {
                id: self.id(),
                accused: accused.node,
                auditors,
                model: span.model,
                layers: span.layers,
                tokens: span.tokens,
                worst,
            }),
            other => Err(ReportError::NoConviction(format!("the opinions {passed:?} come to {}", other.name()))),
        }
    }

    /// Judges the report by `recomputed`, the rows this node got by recomputing the report's
    /// inputs itself (or on a server that is neither the accused nor an auditor): the accused
    /// is faulty when its answers are off them, and each auditor whose outputs are off them
    /// lied. Call it on a report that [`FraudReport::check`] passed.
    pub fn judge(&self, recomputed: &[f32]) -> Result<Judgment, ReportError> {
        let dim = self.hidden as usize;
        let off = |claimed: &[f32]| {
            deviation(&self.inputs, recomputed, claimed, dim).map_err(|e| ReportError::Recomputed(e.to_string()))
        };
        let accused = off(&self.accused.outputs)?;
        let mut lying_auditors = Vec::new();
        for replay in &self.replays {
            if !off(&replay.outputs)?.within(DELTA_LIMIT) {
                lying_auditors.push(replay.node);
            }
        }
        Ok(Judgment { accused_faulty: !accused.within(DELTA_LIMIT), worst: accused.worst, lying_auditors })
    }

    /// The report's bytes (see [`FraudReport::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.inputs.len() * 4 * (2 + self.replays.len()));
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        put_u32(&mut b, self.hidden);
        put_u32(&mut b, self.inputs.len() as u32);
        put_f32s(&mut b, &self.inputs);
        b.push((1 + self.replays.len()).min(255) as u8);
        for run in std::iter::once(&self.accused).chain(&self.replays) {
            let id = run.node.to_bytes();
            b.push(id.len().min(255) as u8);
            b.extend_from_slice(&id[..id.len().min(255)]);
            put_u32(&mut b, run.receipts.len() as u32);
            for r in &run.receipts {
                let (receipt, signature) = (&r.receipt, &r.signature[..r.signature.len().min(MAX_SIGNATURE)]);
                b.extend_from_slice(&receipt.session);
                b.extend_from_slice(&receipt.model.0);
                for v in [receipt.start, receipt.end, receipt.pos, receipt.n_tokens] {
                    put_u32(&mut b, v);
                }
                b.extend_from_slice(&receipt.inputs);
                b.extend_from_slice(&receipt.output);
                b.push(signature.len() as u8);
                b.extend_from_slice(signature);
            }
            put_u32(&mut b, run.outputs.len() as u32);
            put_f32s(&mut b, &run.outputs);
        }
        b
    }

    /// A report from its bytes: the magic and version, the row width, the inputs, then the
    /// accused's run and each auditor's (peer id, receipts, outputs). Every length is checked
    /// against what is left before anything is allocated; a report over
    /// [`MAX_REPORT_BYTES`] is refused. Decoding checks the shape only: [`FraudReport::check`]
    /// checks the evidence.
    pub fn decode(bytes: &[u8]) -> Result<FraudReport, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::Malformed(format!("{} bytes, over {MAX_REPORT_BYTES}", bytes.len())));
        }
        let mut r = Reader::new("fraud report", bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(ReportError::Malformed("not a fraud report".into()));
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(ReportError::Malformed(format!("version {version}, not {VERSION}")));
        }
        let hidden = r.u32()?;
        let n = r.u32()? as usize;
        let inputs = r.f32s(n)?;
        let runs = r.take(1)?[0] as usize;
        if !(1 + QUORUM..=1 + MAX_OPINIONS).contains(&runs) {
            return Err(ReportError::Auditors(format!("{} auditors", runs.saturating_sub(1))));
        }
        let mut all = Vec::with_capacity(runs);
        for _ in 0..runs {
            let len = r.take(1)?[0] as usize;
            let node = PeerId::from_bytes(r.take(len)?).map_err(|e| ReportError::Malformed(format!("peer id: {e}")))?;
            let count = r.u32()? as usize;
            // A receipt takes at least 145 bytes: reserve no more than the rest can hold.
            let mut receipts = Vec::with_capacity(count.min(r.left() / 145));
            for _ in 0..count {
                let session: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                let model = ModelId(r.take(32)?.try_into().expect("32 bytes"));
                let (start, end, pos, n_tokens) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let inputs: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                let output: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                let len = r.take(1)?[0] as usize;
                if len > MAX_SIGNATURE {
                    return Err(ReportError::Malformed(format!("a signature of {len} bytes")));
                }
                let signature = r.take(len)?.to_vec();
                let receipt = Receipt { session, model, start, end, pos, n_tokens, inputs, output };
                receipts.push(SignedReceipt { receipt, signature });
            }
            let n = r.u32()? as usize;
            let outputs = r.f32s(n)?;
            all.push(SignedRun { node, receipts, outputs });
        }
        r.end()?;
        let mut all = all.into_iter();
        let accused = all.next().ok_or_else(|| ReportError::Malformed("no accused".into()))?;
        Ok(FraudReport { hidden, inputs, accused, replays: all.collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    const DIM: usize = 8;

    /// `key`'s signed answers `outputs` to `inputs`, in steps of `steps` tokens.
    fn run(key: &Keypair, session: u8, inputs: &[f32], outputs: &[f32], steps: &[usize]) -> SignedRun {
        SignedRun::sign(key, [session; 32], ModelId([3; 32]), 2..4, inputs, outputs, steps, DIM).unwrap()
    }

    /// A report of a node that added 1% to what its layers added, by auditors that did not;
    /// and the honest outputs.
    fn report() -> (FraudReport, Vec<f32>) {
        let inputs: Vec<f32> = (0..5 * DIM).map(|i| (i as f32 * 0.37).sin()).collect();
        let honest: Vec<f32> = inputs.iter().map(|x| x + 0.5 * x.cos()).collect();
        let lie: Vec<f32> = inputs.iter().zip(&honest).map(|(x, h)| h + 0.01 * (h - x) * (x * 9.0).sin()).collect();
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let accused = run(&keys[0], 1, &inputs, &lie, &[4, 1]);
        let replays = vec![run(&keys[1], 2, &inputs, &honest, &[5]), run(&keys[2], 3, &inputs, &honest, &[3, 2])];
        (FraudReport { hidden: DIM as u32, inputs, accused, replays }, honest)
    }

    #[test]
    fn a_true_report_checks_and_round_trips_and_recomputation_convicts() {
        let (r, honest) = report();
        let checked = r.check().expect("the report holds");
        assert_eq!(checked.accused, r.accused.node);
        assert_eq!((checked.tokens, checked.layers.clone(), checked.auditors.len()), (5, 2..4, 2));
        assert!(checked.worst > DELTA_LIMIT);
        assert_eq!(FraudReport::decode(&r.encode()).expect("decodes"), r);
        let j = r.judge(&honest).expect("fits");
        assert!(j.accused_faulty && j.lying_auditors.is_empty(), "{j:?}");
        // Recomputation that agrees with the accused clears it and convicts both auditors.
        let j = r.judge(&r.accused.outputs).expect("fits");
        assert!(!j.accused_faulty && j.lying_auditors.len() == 2, "{j:?}");
        assert!(r.judge(&honest[..DIM]).is_err(), "a recomputation of the wrong length");
    }

    #[test]
    fn forged_reports_do_not_check() {
        let (good, honest) = report();
        let forge = |f: &dyn Fn(&mut FraudReport)| {
            let mut r = good.clone();
            f(&mut r);
            r.check().expect_err("a forgery checked")
        };
        // Altered receipts (another model named in each: their signatures no longer verify).
        let e = forge(&|r| r.accused.receipts.iter_mut().for_each(|s| s.receipt.model = ModelId([4; 32])));
        assert!(matches!(e, ReportError::Signature { .. }), "{e}");
        let e = forge(&|r| r.accused.receipts[1].receipt.n_tokens = 2);
        assert!(matches!(e, ReportError::Evidence(_)), "{e}");
        let e = forge(&|r| r.accused.receipts[0].signature[5] ^= 1);
        assert!(matches!(e, ReportError::Signature { .. }), "{e}");
        // Other inputs than those signed for; other outputs.
        assert!(matches!(forge(&|r| r.inputs[3] += 0.5), ReportError::Evidence(_)));
        assert!(matches!(forge(&|r| r.accused.outputs[9] += 0.5), ReportError::Evidence(_)));
        // Another node's receipts under the accused's name.
        let e = forge(&|r| r.accused.node = r.replays[0].node);
        assert!(matches!(e, ReportError::Auditors(_) | ReportError::Signature { .. }), "{e}");
        // One auditor, the same auditor twice, an auditor that passes the node.
        assert!(matches!(forge(&|r| drop(r.replays.pop())), ReportError::Auditors(_)));
        assert!(matches!(forge(&|r| r.replays[1] = r.replays[0].clone()), ReportError::Auditors(_)));
        let passes = |r: &mut FraudReport| {
            let key = Keypair::generate_ed25519();
            r.replays[1] = run(&key, 9, &r.inputs, &r.accused.outputs, &[5]);
        };
        assert!(matches!(forge(&passes), ReportError::NoConviction(_)));
        // An auditor that ran other layers.
        let e = forge(&|r| {
            let key = Keypair::generate_ed25519();
            let mut other = run(&key, 9, &r.inputs, &honest, &[5]);
            other.receipts[0].receipt.end = 5;
            other.receipts[0].signature = other.receipts[0].receipt.sign(&key).unwrap();
            r.replays[1] = other;
        });
        assert!(matches!(e, ReportError::Evidence(_)), "{e}");
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let (r, _) = report();
        let b = r.encode();
        for cut in [0, 5, 9, 13, 17, b.len() / 2, b.len() - 1] {
            assert!(FraudReport::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(FraudReport::decode(&longer).is_err());
        let mut version = b.clone();
        version[8] = 2;
        assert!(FraudReport::decode(&version).is_err());
        // A huge count of values or receipts fails on the bytes left, before allocating.
        let mut huge = b.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(FraudReport::decode(&huge).is_err());
        assert!(FraudReport::decode(&vec![0u8; MAX_REPORT_BYTES + 1]).is_err());
        for seed in 0..200u32 {
            let mut noisy = b.clone();
            let i = (seed as usize * 7919) % noisy.len();
            noisy[i] = noisy[i].wrapping_add(1 + seed as u8);
            // Decoding never panics; a changed byte never makes a report that checks with
            // another meaning (at worst it is a changed f32 the hashes catch).
            if let Ok(d) = FraudReport::decode(&noisy) {
                assert!(d == r || d.check().is_err(), "byte {i}");
            }
        }
    }
}
