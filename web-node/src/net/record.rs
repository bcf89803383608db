//! DHT keys and the signed server record.
//!
//! A serving node announces itself twice: a provider record under [`block_key`] for every block
//! it serves (so a client finds who serves block `i`), and a [`ServerRecord`] under
//! [`server_key`], signed with the node's identity key inside a libp2p signed envelope, holding
//! what routing needs (range, backend, measured speed, free slots, addresses). Both are
//! republished periodically and the server record carries its own expiry time, so a node that
//! is gone drops out of routing within a minute or two even if DHT peers still hold its records.

use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::protocol::ServerStatus;
use crate::model::ModelId;

/// Signature domain of server records.
const DOMAIN: &str = "ai-torrent-server-record";
/// Payload type of server records.
const PAYLOAD_TYPE: &[u8] = b"/ait/server-record/1";

/// DHT key under which servers of block `block` of `model` provide.
pub fn block_key(model: &ModelId, block: usize) -> RecordKey {
    RecordKey::new(&format!("/ait/block/{}/{block}", model.to_hex()))
}

/// DHT key of `peer`'s server record for `model`.
pub fn server_key(model: &ModelId, peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("/ait/server/{}/{peer}", model.to_hex()))
}

/// DHT key every serving node provides, so that the network can be listed.
pub fn directory_key() -> RecordKey {
    RecordKey::new(&"/ait/servers/1")
}

/// DHT key of `peer`'s latest server record, whatever model it serves.
pub fn peer_key(peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("/ait/peer/{peer}"))
}

/// What a serving node announces about itself: its status (range, backend, speed, free
/// slots, protocol version) plus where to reach it and until when the record holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's peer id.
    pub peer: String,
    /// Addresses to dial it at.
    pub addrs: Vec<String>,
    /// Unix time (ms) after which the record is stale.
    pub expires_ms: u64,
    /// Its status when the record was signed.
    #[serde(flatten)]
    pub status: ServerStatus,
}

/// A server record that failed verification.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not a signed envelope, or the signature does not verify.
    #[error("bad signature or envelope: {0}")]
    Signature(String),
    /// The payload is not a server record.
    #[error("malformed server record: {0}")]
    Malformed(String),
    /// Signed by a key other than the peer it names.
    #[error("record for {claimed} is signed by {signer}")]
    WrongSigner {
        /// Peer named in the record.
        claimed: String,
        /// Peer whose key signed it.
        signer: PeerId,
    },
    /// Past its expiry time.
    #[error("record expired {0} ms ago")]
    Expired(u64),
    /// Contradicts what the query asked for.
    #[error("record does not match: {0}")]
    Mismatch(String),
}

impl ServerRecord {
    /// Signs the record with `key` (which must be the key of `self.peer`).
    pub fn sign(&self, key: &Keypair) -> Result<Vec<u8>, RecordError> {
        let payload = serde_json::to_vec(self).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let env = SignedEnvelope::new(key, DOMAIN.into(), PAYLOAD_TYPE.to_vec(), payload)
            .map_err(|e| RecordError::Signature(e.to_string()))?;
        Ok(env.into_protobuf_encoding())
    }

    /// Verifies a signed record for any model: signature, signer = claimed peer =
    /// `expected_peer`, a non-empty block range, a sane speed, and expiry against `now_ms`.
    pub fn verify_any(bytes: &[u8], expected_peer: &PeerId, now_ms: u64) -> Result<ServerRecord, RecordError> {
        let env = SignedEnvelope::from_protobuf_encoding(bytes).map_err(|e| RecordError::Signature(e.to_string()))?;
        let (payload, signer) = env
            .payload_and_signing_key(DOMAIN.into(), PAYLOAD_TYPE)
            .map_err(|e| RecordError::Signature(e.to_string()))?;
        let rec: ServerRecord = serde_json::from_slice(payload).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let signer = signer.to_peer_id();
        if rec.peer != signer.to_string() || signer != *expected_peer {
            return Err(RecordError::WrongSigner { claimed: rec.peer, signer });
        }
        let s = &rec.status;
        if s.start >= s.end {
            return Err(RecordError::Mismatch(format!("empty block range [{}, {})", s.start, s.end)));
        }
        if !s.ms_per_block.is_finite() || s.ms_per_block < 0.0 {
            return Err(RecordError::Malformed(format!("ms_per_block {}", s.ms_per_block)));
        }
        if rec.expires_ms < now_ms {
            return Err(RecordError::Expired(now_ms - rec.expires_ms));
        }
        Ok(rec)
    }

    /// Verifies a signed record as [`verify_any`](Self::verify_any) does, and that it is for
    /// `model` with blocks within `n_layers`.
    pub fn verify(
        bytes: &[u8],
        expected_peer: &PeerId,
        model: &ModelId,
        n_layers: usize,
        now_ms: u64,
    ) -> Result<ServerRecord, RecordError> {
        let rec = Self::verify_any(bytes, expected_peer, now_ms)?;
        let s = &rec.status;
        if s.model != model.to_hex() {
            return Err(RecordError::Mismatch(format!("model {} instead of {}", s.model, model.to_hex())));
        }
        if s.end > n_layers {
            return Err(RecordError::Mismatch(format!("blocks [{}, {}) of a {n_layers}-layer model", s.start, s.end)));
        }
        Ok(rec)
    }

    /// The record's addresses that parse.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &Keypair, model: &ModelId) -> ServerRecord {
        ServerRecord {
            peer: key.public().to_peer_id().to_string(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            expires_ms: 2_000,
            status: ServerStatus {
                version: 1,
                model: model.to_hex(),
                start: 10,
                end: 20,
                backend: "cpu".into(),
                ms_per_block: 0.4,
                free_slots: 8,
                active_sessions: 0,
                max_len: 2048,
            },
        }
    }

    #[test]
    fn signed_records_verify_and_forgeries_do_not() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let model = ModelId([9; 32]);
        let peer = key.public().to_peer_id();
        let rec = record(&key, &model);
        let signed = rec.sign(&key).unwrap();
        assert_eq!(ServerRecord::verify(&signed, &peer, &model, 30, 1_000).unwrap(), rec);
        // Expired, wrong model, wrong expected peer, too few layers.
        assert!(matches!(ServerRecord::verify(&signed, &peer, &model, 30, 3_000), Err(RecordError::Expired(1_000))));
        assert!(ServerRecord::verify(&signed, &peer, &ModelId([8; 32]), 30, 0).is_err());
        assert!(ServerRecord::verify(&signed, &other.public().to_peer_id(), &model, 30, 0).is_err());
        assert!(ServerRecord::verify(&signed, &peer, &model, 15, 0).is_err());
        // Another key signing a record that names `peer`.
        let forged = rec.sign(&other).unwrap();
        assert!(matches!(ServerRecord::verify(&forged, &peer, &model, 30, 0), Err(RecordError::WrongSigner { .. })));
        // Flipped bytes and garbage.
        let mut bad = signed.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        assert!(ServerRecord::verify(&bad, &peer, &model, 30, 0).is_err());
        assert!(ServerRecord::verify(b"garbage", &peer, &model, 30, 0).is_err());
    }
}
