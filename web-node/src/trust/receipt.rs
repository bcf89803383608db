//! Receipts: what a serving node signs for every step it answers.
//!
//! A receipt binds the node's identity key to one step of one session: the session's id
//! (chosen by the client when it opens the session), the model, the layer range, the step's
//! position and length, a hash of **every input row of the session up to the end of the
//! step** ([`InputChain`]: the output of a step depends on all of them, through the KV
//! cache), and a hash of the step's output rows. Everything in it but the signature is known
//! to the client, so only the signature travels (in [`Response::Hidden`]); the client
//! rebuilds the receipt from what it sent and received and checks the signature against the
//! node's peer id. A node cannot later deny an answer, and a client cannot frame a node with
//! inputs or outputs it did not see: a fraud report carries the receipt with the inputs and
//! the claimed output, which anyone can hash, check and recompute.
//!
//! [`Response::Hidden`]: crate::net::protocol::Response::Hidden

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::model::ModelId;

/// Largest signature a receipt may carry, in bytes (an ed25519 signature is 64; an ECDSA
/// one about 72).
pub const MAX_SIGNATURE: usize = 128;

/// A session's id: 32 random bytes the client chooses when it opens the session.
pub type SessionNonce = [u8; 32];

/// What a node signs for one answered step (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The session's id.
    pub session: SessionNonce,
    /// The model.
    pub model: ModelId,
    /// First layer the node ran.
    pub start: u32,
    /// One past the last layer it ran.
    pub end: u32,
    /// Position of the step's first token.
    pub pos: u32,
    /// Tokens in the step.
    pub n_tokens: u32,
    /// [`InputChain`] after the step's rows: every input of the session up to `pos + n_tokens`.
    pub inputs: [u8; 32],
    /// [`output_hash`] of the step's output rows.
    pub output: [u8; 32],
}

/// A receipt with the node's signature, as a client keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReceipt {
    /// What the node signed.
    pub receipt: Receipt,
    /// Its signature.
    pub signature: Vec<u8>,
}

/// Why a receipt does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The peer id does not hold its public key (a hashed id): its receipts cannot be checked.
    #[error("peer {0} does not carry its public key; its receipts cannot be checked")]
    NoPublicKey(PeerId),
    /// The key given does not belong to the node.
    #[error("the key is not {0}'s")]
    WrongKey(PeerId),
    /// The key's bytes do not decode.
    #[error("malformed public key: {0}")]
    BadKey(String),
    /// The signature is longer than [`MAX_SIGNATURE`].
    #[error("receipt signature of {0} bytes, over {MAX_SIGNATURE}")]
    TooLong(usize),
    /// The signature is not the node's over this receipt.
    #[error("the receipt's signature does not verify (the node signed other inputs or outputs, or nothing)")]
    BadSignature,
    /// The node's key could not sign.
    #[error("signing a receipt: {0}")]
    Sign(String),
}

impl Receipt {
    /// The bytes a node signs: a domain tag, then every field in order, integers little
    /// endian.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(b"ait/receipt/1");
        b.extend_from_slice(&self.session);
        b.extend_from_slice(&self.model.0);
        for v in [self.start, self.end, self.pos, self.n_tokens] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.inputs);
        b.extend_from_slice(&self.output);
        b
    }

    /// The signature of `key` over this receipt.
    pub fn sign(&self, key: &Keypair) -> Result<Vec<u8>, ReceiptError> {
        key.sign(&self.signing_bytes()).map_err(|e| ReceiptError::Sign(e.to_string()))
    }

    /// Checks that `signature` is `node`'s (its key taken from its peer id) over this receipt.
    /// Checking many receipts of one node, take its key once ([`NodeKey::of`]).
    pub fn verify(&self, node: &PeerId, signature: &[u8]) -> Result<(), ReceiptError> {
        NodeKey::of(node)?.verify(self, signature)
    }

    /// Checks that `key` is `node`'s and `signature` its signature over this receipt.
    pub fn verify_with(&self, key: &PublicKey, node: &PeerId, signature: &[u8]) -> Result<(), ReceiptError> {
        NodeKey::checked(key.clone(), node)?.verify(self, signature)
    }
}

/// A node's public key, decoded once and known to be the node's, for checking its receipts:
/// decoding an ed25519 key from a peer id is a point decompression (about an eighth of a
/// signature check in the trust bench), so a client checks each step's receipt with the key
/// it took when the session opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    peer: PeerId,
    key: PublicKey,
}

impl NodeKey {
    /// The key inside `peer` ([`public_key_of`]).
    pub fn of(peer: &PeerId) -> Result<NodeKey, ReceiptError> {
        Ok(NodeKey { peer: *peer, key: public_key_of(peer)? })
    }

    /// `key`, once checked to be `peer`'s.
    pub fn checked(key: PublicKey, peer: &PeerId) -> Result<NodeKey, ReceiptError> {
        if key.to_peer_id() != *peer {
            return Err(ReceiptError::WrongKey(*peer));
        }
        Ok(NodeKey { peer: *peer, key })
    }

    /// The node.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// Checks that `signature` is the node's over `receipt`.
    pub fn verify(&self, receipt: &Receipt, signature: &[u8]) -> Result<(), ReceiptError> {
        if signature.len() > MAX_SIGNATURE {
            return Err(ReceiptError::TooLong(signature.len()));
        }
        if self.key.verify(&receipt.signing_bytes(), signature) {
            Ok(())
        } else {
            Err(ReceiptError::BadSignature)
        }
    }
}

/// The public key inside `peer` (ids of keys up to 42 bytes, ed25519 and secp256k1 among
/// them, hold the key itself).
pub fn public_key_of(peer: &PeerId) -> Result<PublicKey, ReceiptError> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // 0x00: the identity "hash", whose digest is the protobuf-encoded key.
    if mh.code() != 0x00 {
        return Err(ReceiptError::NoPublicKey(*peer));
    }
    PublicKey::try_decode_protobuf(mh.digest()).map_err(|e| ReceiptError::BadKey(e.to_string()))
}

/// A running hash of a session's input rows, one row at a time, so that it depends on the
/// rows and their order, not on how they were split into steps (a replay sends them all in
/// one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputChain {
    state: [u8; 32],
    rows: u64,
}

impl InputChain {
    /// The chain of a session with no rows yet.
    pub fn new(session: &SessionNonce) -> InputChain {
        let mut h = blake3::Hasher::new();
        h.update(b"ait/receipt/inputs/1");
        h.update(session);
        InputChain { state: *h.finalize().as_bytes(), rows: 0 }
    }

    /// Adds the rows of `hidden` (`[n, dim]`).
    pub fn absorb(&mut self, hidden: &[f32], dim: usize) {
        for row in hidden.chunks(dim.max(1)) {
            let mut h = blake3::Hasher::new();
            h.update(&self.state);
            update_f32s(&mut h, row);
            self.state = *h.finalize().as_bytes();
            self.rows += 1;
        }
    }

    /// The hash of every row so far.
    pub fn value(&self) -> [u8; 32] {
        self.state
    }

    /// Rows absorbed.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// A running hash of the receipts a node signed for one session, one step at a time: what a
/// paid session's vouchers commit to (`Voucher.receipts`). The client chains the receipts it
/// checked, the node those it signed, so a voucher names exactly the answers it pays for: a
/// node redeems only what the payer acknowledged, and a payer cannot later claim it paid for
/// other answers than the node's signed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptChain {
    state: [u8; 32],
}

impl Default for ReceiptChain {
    fn default() -> ReceiptChain {
        ReceiptChain::new()
    }
}

impl ReceiptChain {
    /// The chain of a session with no step answered.
    pub fn new() -> ReceiptChain {
        ReceiptChain { state: *blake3::hash(b"ait/receipt/paid/1").as_bytes() }
    }

    /// Adds the receipt of the next step answered.
    pub fn absorb(&mut self, receipt: &Receipt) {
        let mut h = blake3::Hasher::new();
        h.update(&self.state);
        h.update(&receipt.signing_bytes());
        self.state = *h.finalize().as_bytes();
    }

    /// The hash of every receipt so far.
    pub fn value(&self) -> [u8; 32] {
        self.state
    }
}

/// The hash of a step's output rows (f32 little endian, as the protocol sends them).
pub fn output_hash(hidden: &[f32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ait/receipt/output/1");
    update_f32s(&mut h, hidden);
    *h.finalize().as_bytes()
}

/// Feeds `values` as little-endian f32 bytes, a bounded buffer at a time.
fn update_f32s(h: &mut blake3::Hasher, values: &[f32]) {
    let mut buf = [0u8; 4096];
    for chunk in values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        let mut chain = InputChain::new(&[7; 32]);
        chain.absorb(&[0.5; 8], 4);
        Receipt {
            session: [7; 32],
            model: ModelId([3; 32]),
            start: 10,
            end: 20,
            pos: 0,
            n_tokens: 2,
            inputs: chain.value(),
            output: output_hash(&[1.5; 8]),
        }
    }

    #[test]
    fn a_node_signs_and_anyone_checks_against_its_peer_id() {
        let key = Keypair::generate_ed25519();
        let node = key.public().to_peer_id();
        let r = receipt();
        let sig = r.sign(&key).unwrap();
        assert_eq!(sig.len(), 64);
        r.verify(&node, &sig).unwrap();
        // Another node, or any field changed: refused.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(r.verify(&other, &sig), Err(ReceiptError::BadSignature));
        assert_eq!(r.verify_with(&key.public(), &other, &sig), Err(ReceiptError::WrongKey(other)));
        let changes: [fn(&mut Receipt); 8] = [
            |r| r.session[0] ^= 1,
            |r| r.model.0[31] ^= 1,
            |r| r.start += 1,
            |r| r.end -= 1,
            |r| r.pos += 1,
            |r| r.n_tokens = 1,
            |r| r.inputs[5] ^= 0x80,
            |r| r.output = output_hash(&[1.5000001; 8]),
        ];
        for change in changes {
            let mut forged = r.clone();
            change(&mut forged);
            assert_eq!(forged.verify(&node, &sig), Err(ReceiptError::BadSignature), "{forged:?}");
        }
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert_eq!(r.verify(&node, &bad), Err(ReceiptError::BadSignature));
        assert_eq!(r.verify(&node, &sig[..63]), Err(ReceiptError::BadSignature));
        assert_eq!(r.verify(&node, &[]), Err(ReceiptError::BadSignature));
        assert_eq!(r.verify(&node, &[0; MAX_SIGNATURE + 1]), Err(ReceiptError::TooLong(MAX_SIGNATURE + 1)));
        // A key taken once checks the same: the node's signature, nothing else.
        let once = NodeKey::of(&node).unwrap();
        assert_eq!(once.peer(), &node);
        once.verify(&r, &sig).unwrap();
        assert_eq!(once.verify(&r, &bad), Err(ReceiptError::BadSignature));
        assert_eq!(NodeKey::of(&other).unwrap().verify(&r, &sig), Err(ReceiptError::BadSignature));
        assert_eq!(NodeKey::checked(key.public(), &other), Err(ReceiptError::WrongKey(other)));
        assert_eq!(NodeKey::checked(key.public(), &node), Ok(once));
    }

    #[test]
    fn hashed_peer_ids_cannot_be_checked() {
        let hashed = PeerId::from_multihash(libp2p::multihash::Multihash::wrap(0x12, &[9; 32]).unwrap()).unwrap();
        assert_eq!(public_key_of(&hashed).unwrap_err(), ReceiptError::NoPublicKey(hashed));
        assert_eq!(receipt().verify(&hashed, &[0; 64]), Err(ReceiptError::NoPublicKey(hashed)));
    }

    #[test]
    fn the_input_chain_follows_rows_not_steps() {
        let rows: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
        let mut whole = InputChain::new(&[1; 32]);
        whole.absorb(&rows, 4);
        let mut steps = InputChain::new(&[1; 32]);
        steps.absorb(&rows[..8], 4);
        steps.absorb(&rows[8..], 4);
        assert_eq!((whole.value(), whole.rows()), (steps.value(), 3));
        // Another session, order or value: another hash.
        let mut other = InputChain::new(&[2; 32]);
        other.absorb(&rows, 4);
        assert_ne!(other.value(), whole.value());
        let mut swapped = InputChain::new(&[1; 32]);
        swapped.absorb(&rows[4..8], 4);
        swapped.absorb(&rows[..4], 4);
        swapped.absorb(&rows[8..], 4);
        assert_ne!(swapped.value(), whole.value());
        // -0.0 and 0.0 are different bytes, so different inputs.
        assert_ne!(output_hash(&[0.0]), output_hash(&[-0.0]));
        // Longer than one buffer.
        assert_ne!(output_hash(&vec![1.0; 5000]), output_hash(&vec![1.0; 5001]));
    }
}
