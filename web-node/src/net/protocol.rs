//! Messages of the inference protocol and their binary encoding.
//!
//! One libp2p stream carries one session. The client sends [`Request::Open`] and then
//! [`Request::Step`]s; the server answers each with one [`Response`]. A replay (rebuilding a KV
//! cache on a replacement server) is a `Step` at position 0 carrying every input so far, split
//! over as many frames as the size limit needs. [`Request::Info`] may be sent instead of `Open`
//! to read the server's live status (it doubles as the round-trip measurement).
//!
//! Encoding: a tag byte, fixed-width little-endian integers, then the payload (raw f32 little
//! endian for hidden states, JSON for status, UTF-8 for error text). Every length is checked
//! against the frame before anything is allocated.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::model::ModelId;
use crate::settle::{PayTerms, PayerQuote, Payment, SignedVoucher, MAX_PAYMENT_BYTES};
use crate::trust::{SessionNonce, MAX_SIGNATURE};

/// The stream protocol id. The major version changes with any incompatible message change
/// (2: `Opened` may carry a free-tier client's quota left, which version 1's decoder refuses;
/// 3: `Open` names the session and `Hidden` carries the node's signed receipt; 4: a voucher
/// names the receipts it pays, another typed-data struct and a longer message than version
/// 3 reads; a node and a client of different versions fail to negotiate the stream,
/// cleanly).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ait/inference/4");

/// Version number carried in records and status.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest answer a client reads to [`Request::Info`] or [`Request::Open`] (a status in JSON,
/// or an error): 64 KiB, far above the few hundred bytes a status takes, far below the 16 MiB
/// frame limit a hostile server could otherwise make a client buffer for a status.
pub const MAX_CONTROL_ANSWER: usize = 64 << 10;

/// Largest answer a client reads to a step of `n_tokens` rows of width `dim`: a
/// [`Response::Hidden`] of that size (tag, two `u32`s, a receipt's signature of at most
/// [`MAX_SIGNATURE`] bytes after its length, the f32 values), or an error frame of at most
/// 4 KiB, whichever is larger. Saturates instead of overflowing.
pub fn hidden_answer_limit(n_tokens: usize, dim: usize) -> usize {
    n_tokens.saturating_mul(dim).saturating_mul(4).saturating_add(11 + MAX_SIGNATURE).max(4 << 10)
}

/// A client's message.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Asks for the server's live status.
    Info,
    /// Opens a session over layers `[start, end)` of `model` holding up to `max_len` tokens.
    Open {
        /// Model id.
        model: ModelId,
        /// The session's id, random, chosen by the client: the node's receipts name it
        /// ([`crate::trust::Receipt`]).
        session: SessionNonce,
        /// First layer.
        start: u32,
        /// One past the last layer.
        end: u32,
        /// Most tokens the session will hold.
        max_len: u32,
        /// Who pays, on a node that charges ([`ServerStatus::pay`]).
        payment: Option<Payment>,
    },
    /// Runs `n_tokens` hidden states through the session's layers, starting at position `pos`
    /// (which must equal the tokens the session already holds).
    Step {
        /// Position of the first token.
        pos: u32,
        /// Tokens in `hidden`.
        n_tokens: u32,
        /// `[n_tokens, hidden]` f32 values.
        hidden: Vec<f32>,
        /// A voucher for the work received so far, on a paid session.
        voucher: Option<SignedVoucher>,
    },
    /// Asks a charging node what `payer` has allocated to it (before opening a paid session).
    Quote {
        /// The payer.
        payer: alloy_primitives::Address,
    },
    /// Ends the session, with the last voucher on a paid session.
    Close {
        /// A voucher for all the work received.
        voucher: Option<SignedVoucher>,
    },
}

/// Live status of a server, answered to [`Request::Info`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Protocol version.
    pub version: u32,
    /// Model served (hex id).
    pub model: String,
    /// First layer served.
    pub start: usize,
    /// One past the last layer served.
    pub end: usize,
    /// Compute backend (`cpu`, `wgpu`).
    pub backend: String,
    /// Measured decode time per block per token, in milliseconds.
    pub ms_per_block: f64,
    /// Sessions that may still be opened.
    pub free_slots: usize,
    /// Sessions open now.
    pub active_sessions: usize,
    /// Longest session accepted, in tokens.
    pub max_len: usize,
    /// What the node charges; `None`: it serves free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay: Option<PayTerms>,
    /// Open requests waiting for a slot, on a node that queues them when full (a charging
    /// node); `None`: the node refuses when full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
}

/// Why a server refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The message could not be decoded or came out of order.
    BadRequest = 1,
    /// A frame above the size limit.
    TooLarge = 2,
    /// The server does not serve this model.
    UnknownModel = 3,
    /// The server does not serve this block range.
    RangeNotServed = 4,
    /// No room: session slots, per-peer cap or KV-cache memory.
    Busy = 5,
    /// The session cannot hold that many tokens.
    TooLong = 6,
    /// The computation failed.
    Internal = 7,
    /// A paid session owes more than the node's credit cap, or its payment does not hold.
    PaymentRequired = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::UnknownModel,
            4 => ErrorCode::RangeNotServed,
            5 => ErrorCode::Busy,
            6 => ErrorCode::TooLong,
            8 => ErrorCode::PaymentRequired,
            _ => ErrorCode::Internal,
        }
    }
}

/// A server's message.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Answer to [`Request::Info`].
    Info(ServerStatus),
    /// Answer to [`Request::Quote`].
    Quote(PayerQuote),
    /// The session is open.
    Opened {
        /// Tokens the session may hold.
        max_len: u32,
        /// On a charging node's free tier: the tokens this client has left of its daily
        /// quota there (`None` for a paid session, or a node that serves free).
        free_left: Option<u32>,
    },
    /// The node is full and the open request waits for a slot (a charging node's queue):
    /// where it stands. Sent again when that changes and now and then while it waits; the
    /// answer to the open (`Opened` or `Error`) follows.
    Queued {
        /// 1 for the next in line (by priority score; the lottery may draw it sooner).
        position: u32,
        /// Requests waiting, this one included.
        waiting: u32,
    },
    /// Output hidden states of a step.
    Hidden {
        /// Tokens in `hidden`.
        n_tokens: u32,
        /// Microseconds the server spent computing (from dequeue to result), so the client
        /// can tell network and queueing time from compute time.
        compute_us: u32,
        /// The node's signature over the step's [`crate::trust::Receipt`] (at most
        /// [`MAX_SIGNATURE`] bytes; the client knows every field of the receipt).
        receipt: Vec<u8>,
        /// `[n_tokens, hidden]` f32 values.
        hidden: Vec<f32>,
    },
    /// The request was refused; the server closes the stream after this.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty frame.
    #[error("empty message")]
    Empty,
    /// Unknown tag byte.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// Fewer or more bytes than the message needs.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Message kind.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

const T_INFO: u8 = 0x01;
const T_OPEN: u8 = 0x02;
const T_STEP: u8 = 0x03;
const T_CLOSE: u8 = 0x04;
const T_OPEN_PAID: u8 = 0x05;
const T_STEP_PAID: u8 = 0x06;
const T_CLOSE_PAID: u8 = 0x07;
const T_QUOTE: u8 = 0x08;
const T_QUOTED: u8 = 0x84;
const T_STATUS: u8 = 0x81;
const T_OPENED: u8 = 0x82;
const T_HIDDEN: u8 = 0x83;
const T_QUEUED: u8 = 0x85;
const T_ERROR: u8 = 0xff;

pub(crate) fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A payment message as JSON with a `u32` length before it.
fn put_json<T: Serialize>(b: &mut Vec<u8>, v: &T) {
    // Structs of addresses, numbers and bytes always serialize.
    let json = serde_json::to_vec(v).unwrap_or_default();
    put_u32(b, json.len() as u32);
    b.extend_from_slice(&json);
}

pub(crate) fn put_f32s(b: &mut Vec<u8>, v: &[f32]) {
    b.reserve(v.len() * 4);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

/// Reads fields in order from a message body (this protocol's, and fraud reports').
pub(crate) struct Reader<'a> {
    what: &'static str,
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `b`, a `what` for its errors.
    pub(crate) fn new(what: &'static str, b: &'a [u8]) -> Reader<'a> {
        Reader { what, b }
    }

    pub(crate) fn err(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::Malformed { what: self.what, detail: detail.into() }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(self.err(format!("needs {n} more bytes, has {}", self.b.len())));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Bytes left to read.
    pub(crate) fn left(&self) -> usize {
        self.b.len()
    }

    /// `n` f32 values (the length checked against what is left before allocating).
    pub(crate) fn f32s(&mut self, n: usize) -> Result<Vec<f32>, DecodeError> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| self.err(format!("{n} values")))?)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A length-prefixed JSON payment message of at most [`MAX_PAYMENT_BYTES`].
    fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, DecodeError> {
        let n = self.u32()? as usize;
        if n > MAX_PAYMENT_BYTES {
            return Err(self.err(format!("payment message of {n} bytes, over {MAX_PAYMENT_BYTES}")));
        }
        let bytes = self.take(n)?;
        serde_json::from_slice(bytes).map_err(|e| self.err(format!("payment message: {e}")))
    }

    /// The rest as `n_tokens` rows of f32 (any row width, at least one value per token).
    fn hidden(&mut self, n_tokens: u32) -> Result<Vec<f32>, DecodeError> {
        let rest = std::mem::take(&mut self.b);
        if n_tokens == 0
            || rest.is_empty()
            || !rest.len().is_multiple_of(4)
            || !(rest.len() / 4).is_multiple_of(n_tokens as usize)
        {
            return Err(
                self.err(format!("{} bytes of hidden states do not split into {n_tokens} rows of f32", rest.len()))
            );
        }
        Ok(rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("{} trailing bytes", self.b.len())))
        }
    }
}

impl Request {
    /// Binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Request::Info => b.push(T_INFO),
            Request::Open { model, session, start, end, max_len, payment } => {
                b.push(if payment.is_some() { T_OPEN_PAID } else { T_OPEN });
                b.extend_from_slice(&model.0);
                b.extend_from_slice(session);
                put_u32(&mut b, *start);
                put_u32(&mut b, *end);
                put_u32(&mut b, *max_len);
                if let Some(p) = payment {
                    put_json(&mut b, p);
                }
            }
            Request::Step { pos, n_tokens, hidden, voucher } => {
                b.push(if voucher.is_some() { T_STEP_PAID } else { T_STEP });
                put_u32(&mut b, *pos);
                put_u32(&mut b, *n_tokens);
                if let Some(v) = voucher {
                    put_json(&mut b, v);
                }
                put_f32s(&mut b, hidden);
            }
            Request::Quote { payer } => {
                b.push(T_QUOTE);
                b.extend_from_slice(payer.as_slice());
            }
            Request::Close { voucher: None } => b.push(T_CLOSE),
            Request::Close { voucher: Some(v) } => {
                b.push(T_CLOSE_PAID);
                put_json(&mut b, v);
            }
        }
        b
    }

    /// Decodes one message.
    pub fn decode(b: &[u8]) -> Result<Request, DecodeError> {
        let (&tag, body) = b.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            T_INFO => {
                Reader { what: "info", b: body }.end()?;
                Ok(Request::Info)
            }
            T_OPEN | T_OPEN_PAID => {
                let mut r = Reader { what: "open", b: body };
                let mut id = [0u8; 32];
                id.copy_from_slice(r.take(32)?);
                let mut session = [0u8; 32];
                session.copy_from_slice(r.take(32)?);
                let (start, end, max_len) = (r.u32()?, r.u32()?, r.u32()?);
                let payment = if tag == T_OPEN_PAID { Some(r.json()?) } else { None };
                r.end()?;
                Ok(Request::Open { model: ModelId(id), session, start, end, max_len, payment })
            }
            T_STEP | T_STEP_PAID => {
                let mut r = Reader { what: "step", b: body };
                let (pos, n_tokens) = (r.u32()?, r.u32()?);
                let voucher = if tag == T_STEP_PAID { Some(r.json()?) } else { None };
                let hidden = r.hidden(n_tokens)?;
                Ok(Request::Step { pos, n_tokens, hidden, voucher })
            }
            T_CLOSE => {
                Reader { what: "close", b: body }.end()?;
                Ok(Request::Close { voucher: None })
            }
            T_QUOTE => {
                let mut r = Reader { what: "quote", b: body };
                let payer = alloy_primitives::Address::from_slice(r.take(20)?);
                r.end()?;
                Ok(Request::Quote { payer })
            }
            T_CLOSE_PAID => {
                let mut r = Reader { what: "close", b: body };
                let voucher = r.json()?;
                r.end()?;
                Ok(Request::Close { voucher: Some(voucher) })
            }
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

impl Response {
    /// Binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Response::Info(s) => {
                b.push(T_STATUS);
                // A struct of strings and numbers always serializes.
                b.extend_from_slice(&serde_json::to_vec(s).unwrap_or_default());
            }
            Response::Quote(q) => {
                b.push(T_QUOTED);
                // Two numbers always serialize.
                b.extend_from_slice(&serde_json::to_vec(q).unwrap_or_default());
            }
            Response::Opened { max_len, free_left } => {
                b.push(T_OPENED);
                put_u32(&mut b, *max_len);
                if let Some(left) = free_left {
                    put_u32(&mut b, *left);
                }
            }
            Response::Queued { position, waiting } => {
                b.push(T_QUEUED);
                put_u32(&mut b, *position);
                put_u32(&mut b, *waiting);
            }
            Response::Hidden { n_tokens, compute_us, receipt, hidden } => {
                b.push(T_HIDDEN);
                put_u32(&mut b, *n_tokens);
                put_u32(&mut b, *compute_us);
                // A signature over the limit is cut; the client's check then fails.
                let receipt = &receipt[..receipt.len().min(MAX_SIGNATURE)];
                b.extend_from_slice(&(receipt.len() as u16).to_le_bytes());
                b.extend_from_slice(receipt);
                put_f32s(&mut b, hidden);
            }
            Response::Error { code, message } => {
                b.push(T_ERROR);
                b.extend_from_slice(&(*code as u16).to_le_bytes());
                b.extend_from_slice(message.as_bytes());
            }
        }
        b
    }

    /// Decodes one message.
    pub fn decode(b: &[u8]) -> Result<Response, DecodeError> {
        let (&tag, body) = b.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            T_STATUS => serde_json::from_slice(body)
                .map(Response::Info)
                .map_err(|e| DecodeError::Malformed { what: "status", detail: e.to_string() }),
            T_QUOTED => serde_json::from_slice(body)
                .map(Response::Quote)
                .map_err(|e| DecodeError::Malformed { what: "quote", detail: e.to_string() }),
            T_OPENED => {
                let mut r = Reader { what: "opened", b: body };
                let max_len = r.u32()?;
                let free_left = if r.b.is_empty() { None } else { Some(r.u32()?) };
                r.end()?;
                Ok(Response::Opened { max_len, free_left })
            }
            T_QUEUED => {
                let mut r = Reader { what: "queued", b: body };
                let (position, waiting) = (r.u32()?, r.u32()?);
                r.end()?;
                Ok(Response::Queued { position, waiting })
            }
            T_HIDDEN => {
                let mut r = Reader { what: "hidden", b: body };
                let (n_tokens, compute_us) = (r.u32()?, r.u32()?);
                let l = r.take(2)?;
                let len = usize::from(u16::from_le_bytes([l[0], l[1]]));
                if len > MAX_SIGNATURE {
                    return Err(r.err(format!("receipt signature of {len} bytes, over {MAX_SIGNATURE}")));
                }
                let receipt = r.take(len)?.to_vec();
                let hidden = r.hidden(n_tokens)?;
                Ok(Response::Hidden { n_tokens, compute_us, receipt, hidden })
            }
            T_ERROR => {
                let mut r = Reader { what: "error", b: body };
                let c = r.take(2)?;
                let code = ErrorCode::from_u16(u16::from_le_bytes([c[0], c[1]]));
                Ok(Response::Error { code, message: String::from_utf8_lossy(r.b).into_owned() })
            }
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment() -> Payment {
        Payment {
            session: alloy_primitives::B256::repeat_byte(1),
            payer: alloy_primitives::Address::repeat_byte(2),
            signer: alloy_primitives::Address::repeat_byte(3),
            authorization: None,
            allocation: None,
            not_after: 1_700_000_600,
            proof: vec![8u8; 65].into(),
        }
    }

    fn voucher() -> SignedVoucher {
        use alloy_primitives::{Address, B256, U256};
        SignedVoucher {
            voucher: crate::settle::Voucher {
                session: B256::repeat_byte(1),
                payer: Address::repeat_byte(2),
                node: Address::repeat_byte(4),
                model: B256::repeat_byte(5),
                cumulativeAmount: U256::from(123_456u64),
                cumulativeWork: U256::from(90u64),
                receipts: B256::repeat_byte(6),
                expiry: 2_000_000_000,
            },
            signature: vec![7u8; 65].into(),
        }
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Info,
            Request::Open {
                model: ModelId([3; 32]),
                session: [4; 32],
                start: 10,
                end: 20,
                max_len: 2048,
                payment: None,
            },
            Request::Open {
                model: ModelId([3; 32]),
                session: [4; 32],
                start: 10,
                end: 20,
                max_len: 2048,
                payment: Some(payment()),
            },
            Request::Step { pos: 5, n_tokens: 2, hidden: vec![1.0, -2.5, 3.0, f32::MIN_POSITIVE], voucher: None },
            Request::Step { pos: 5, n_tokens: 1, hidden: vec![1.0, -2.5], voucher: Some(voucher()) },
            Request::Close { voucher: None },
            Request::Close { voucher: Some(voucher()) },
            Request::Quote { payer: alloy_primitives::Address::repeat_byte(9) },
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let status = ServerStatus {
            version: 1,
            model: "ab".into(),
            start: 0,
            end: 30,
            backend: "cpu".into(),
            ms_per_block: 0.4,
            free_slots: 3,
            active_sessions: 1,
            max_len: 8192,
            pay: None,
            queued: None,
        };
        for r in [
            Response::Info(status),
            Response::Opened { max_len: 7, free_left: None },
            Response::Opened { max_len: 7, free_left: Some(4096) },
            Response::Queued { position: 2, waiting: 9 },
            Response::Quote(PayerQuote {
                allocated_total: alloy_primitives::U256::from(5u8),
                available: alloy_primitives::U256::from(3u8),
            }),
            Response::Hidden { n_tokens: 1, compute_us: 250, receipt: vec![6; 64], hidden: vec![0.5; 3] },
            Response::Hidden { n_tokens: 2, compute_us: 250, receipt: vec![], hidden: vec![0.5; 4] },
            Response::Error { code: ErrorCode::RangeNotServed, message: "no".into() },
        ] {
            assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn a_hidden_answer_fits_its_limit_exactly() {
        let receipt = vec![1; MAX_SIGNATURE];
        let answer = Response::Hidden { n_tokens: 3, compute_us: 1, receipt, hidden: vec![0.5; 3 * 576] }.encode();
        assert_eq!(hidden_answer_limit(3, 576), answer.len());
        assert_eq!(hidden_answer_limit(1, 1), 4 << 10);
        assert_eq!(hidden_answer_limit(usize::MAX, 2), usize::MAX);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(Request::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Request::decode(&[0x42]), Err(DecodeError::UnknownTag(0x42)));
        // Open cut short, and with trailing bytes.
        for payment in [None, Some(payment())] {
            let open =
                Request::Open { model: ModelId([1; 32]), session: [2; 32], start: 0, end: 1, max_len: 1, payment }
                    .encode();
            for cut in 1..open.len() {
                assert!(Request::decode(&open[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = open.clone();
            long.push(0);
            assert!(Request::decode(&long).is_err());
        }
        // A paid step whose voucher's length runs past the frame, or over the limit.
        let paid = Request::Step { pos: 0, n_tokens: 1, hidden: vec![0.5; 4], voucher: Some(voucher()) }.encode();
        let mut liar = paid.clone();
        liar[9..13].copy_from_slice(&(paid.len() as u32).to_le_bytes());
        assert!(Request::decode(&liar).is_err());
        liar[9..13].copy_from_slice(&((MAX_PAYMENT_BYTES + 1) as u32).to_le_bytes());
        assert!(Request::decode(&liar).is_err());
        assert!(Request::decode(&[T_CLOSE_PAID, 2, 0, 0, 0, b'{', b'}']).is_err());
        // A quote names exactly one 20-byte address; its answer is JSON of two numbers.
        assert!(Request::decode(&[T_QUOTE, 1, 2]).is_err());
        assert!(Request::decode(&[&[T_QUOTE][..], &[0u8; 21]].concat()).is_err());
        assert!(Response::decode(&[T_QUOTED, b'{', b'}']).is_err());
        // An opening answer: its length, and its free-tier quota left (4 bytes) or nothing.
        assert!(Response::decode(&[T_OPENED, 7, 0, 0]).is_err());
        for extra in [1, 2, 3, 5, 8] {
            let mut b = vec![T_OPENED, 7, 0, 0, 0];
            b.extend(std::iter::repeat_n(0u8, extra));
            assert!(Response::decode(&b).is_err(), "{extra} bytes after the length");
        }
        // A queue notice of the wrong length.
        assert!(Response::decode(&[T_QUEUED, 1, 0, 0, 0]).is_err());
        assert!(Response::decode(&[T_QUEUED, 1, 0, 0, 0, 2, 0, 0, 0, 9]).is_err());
        // Step: zero tokens, ragged rows, bytes not a multiple of 4.
        let step = |n: u32, bytes: usize| {
            let mut b = vec![T_STEP];
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend(std::iter::repeat_n(0u8, bytes));
            b
        };
        assert!(Request::decode(&step(0, 8)).is_err());
        assert!(Request::decode(&step(3, 8)).is_err());
        assert!(Request::decode(&step(1, 6)).is_err());
        assert!(Request::decode(&step(2, 0)).is_err());
        assert!(Request::decode(&step(2, 16)).is_ok());
        assert!(Response::decode(&[T_STATUS, b'{']).is_err());
        // Hidden states: a receipt's length past the frame or over the limit, none at all.
        let hidden = |len: u16, receipt: usize, values: usize| {
            let mut b = vec![T_HIDDEN, 1, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend(std::iter::repeat_n(7u8, receipt + 4 * values));
            b
        };
        assert!(Response::decode(&hidden(64, 64, 2)).is_ok());
        assert!(Response::decode(&hidden(64, 60, 0)).is_err());
        assert!(Response::decode(&hidden(MAX_SIGNATURE as u16 + 1, MAX_SIGNATURE + 1, 2)).is_err());
        assert!(Response::decode(&hidden(64, 64, 0)).is_err());
        assert!(Response::decode(&[T_HIDDEN, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
