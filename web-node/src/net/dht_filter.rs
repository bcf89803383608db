//! What this node's DHT store accepts from other peers.
//!
//! Kademlia runs with [`StoreInserts::FilterBoth`](libp2p::kad::StoreInserts::FilterBoth):
//! every record and provider record a peer asks us to store passes through here first.
//! - A value record must sit under one of our keys ([`server_key`](super::record::server_key)
//!   or [`peer_key`](super::record::peer_key)), verify as a [`ServerRecord`] signed by the
//!   peer the key names (for the model the key names), and be newer than the copy we hold:
//!   nobody can overwrite a server's record with junk or with an older copy of its own.
//! - A provider record must be under one of our provider keys (a block of a model, a model
//!   part's root, a model id, or the directory); Kademlia itself checks that the provider is
//!   the peer that sent it.

use libp2p::kad::RecordKey;
use libp2p::PeerId;

use super::record::{directory_key, seeders_key, RecordError, ServerRecord};
use crate::model::manifest::is_hex_digest;

/// The DHT keys AI Torrent uses, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// `peer`'s server record for the model with this hex id.
    Server {
        /// Model id, hex.
        model: String,
        /// The server.
        peer: PeerId,
    },
    /// `peer`'s latest server record.
    Peer(PeerId),
    /// Providers of one block of a model.
    Block,
    /// Seeders of one model part (by its root).
    Part,
    /// Holders of one model's manifest.
    Model,
    /// Providers listing the network.
    Directory,
    /// Seeders, for listing the models in the swarm.
    Seeders,
}

/// Highest block index a provider key may name.
pub const MAX_BLOCK: usize = 4096;

/// Parses a DHT key; `None` for keys that are not ours.
pub fn parse_key(key: &RecordKey) -> Option<Key> {
    if *key == directory_key() {
        return Some(Key::Directory);
    }
    if *key == seeders_key() {
        return Some(Key::Seeders);
    }
    let s = std::str::from_utf8(key.as_ref()).ok()?;
    let parts: Vec<&str> = s.strip_prefix("/ait/")?.split('/').collect();
    match parts.as_slice() {
        ["server", model, peer] if is_hex_digest(model) => {
            Some(Key::Server { model: (*model).into(), peer: peer.parse().ok()? })
        }
        ["peer", peer] => Some(Key::Peer(peer.parse().ok()?)),
        ["part", root] if is_hex_digest(root) => Some(Key::Part),
        ["model", model] if is_hex_digest(model) => Some(Key::Model),
        ["block", model, block] if is_hex_digest(model) => {
            // Digits only: no sign, no leading `+`, no leading zeros making aliases.
            let digits = !block.is_empty() && block.bytes().all(|b| b.is_ascii_digit());
            let ok = digits && (*block == "0" || !block.starts_with('0'));
            (ok && block.parse::<usize>().is_ok_and(|b| b < MAX_BLOCK)).then_some(Key::Block)
        }
        _ => None,
    }
}

/// Why a record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// Not one of our keys, or a provider key under a value key (or the reverse).
    #[error("not an AI Torrent record key")]
    Key,
    /// The record does not verify.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record names another model than its key.
    #[error("record for model {record} under the key of model {key}")]
    Model {
        /// In the record.
        record: String,
        /// In the key.
        key: String,
    },
    /// We hold a copy at least as new.
    #[error("not newer than the stored copy")]
    Stale,
}

/// Whether to store `value` under `key`, given the copy we hold (`stored`) and the time.
pub fn check_record(key: &RecordKey, value: &[u8], stored: Option<&[u8]>, now_ms: u64) -> Result<(), Rejected> {
    let (peer, model) = match parse_key(key) {
        Some(Key::Server { model, peer }) => (peer, Some(model)),
        Some(Key::Peer(peer)) => (peer, None),
        _ => return Err(Rejected::Key),
    };
    let rec = ServerRecord::verify_any(value, &peer, now_ms)?;
    if let Some(model) = model {
        if rec.status.model != model {
            return Err(Rejected::Model { record: rec.status.model, key: model });
        }
    }
    if let Some(old) = stored.and_then(|b| ServerRecord::verify_any(b, &peer, now_ms).ok()) {
        if old.expires_ms >= rec.expires_ms {
            return Err(Rejected::Stale);
        }
    }
    Ok(())
}

/// Whether to store a provider record under `key`.
pub fn check_provider_key(key: &RecordKey) -> Result<(), Rejected> {
    match parse_key(key) {
        Some(Key::Block | Key::Part | Key::Model | Key::Directory | Key::Seeders) => Ok(()),
        _ => Err(Rejected::Key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelId;
    use crate::net::protocol::ServerStatus;
    use crate::net::record::{block_key, model_key, part_key, peer_key, server_key};
    use libp2p::identity::Keypair;

    fn record(key: &Keypair, model: &ModelId, expires_ms: u64) -> Vec<u8> {
        ServerRecord {
            peer: key.public().to_peer_id().to_string(),
            addrs: vec![],
            expires_ms,
            status: ServerStatus {
                version: 1,
                model: model.to_hex(),
                start: 0,
                end: 4,
                backend: "cpu".into(),
                ms_per_block: 1.0,
                free_slots: 1,
                active_sessions: 0,
                max_len: 64,
                pay: None,
                queued: None,
            },
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn keys_parse_only_in_their_one_spelling() {
        let m = ModelId([3; 32]);
        let p = PeerId::random();
        assert_eq!(parse_key(&server_key(&m, &p)), Some(Key::Server { model: m.to_hex(), peer: p }));
        assert_eq!(parse_key(&peer_key(&p)), Some(Key::Peer(p)));
        assert_eq!(parse_key(&block_key(&m, 0)), Some(Key::Block));
        assert_eq!(parse_key(&block_key(&m, 29)), Some(Key::Block));
        assert_eq!(parse_key(&directory_key()), Some(Key::Directory));
        assert_eq!(parse_key(&part_key(&m.to_hex())), Some(Key::Part));
        assert_eq!(parse_key(&model_key(&m)), Some(Key::Model));
        let upper = m.to_hex().to_uppercase().replace('3', "A");
        for junk in [format!("/ait/part/{upper}"), format!("/ait/part/{}0", m.to_hex()), format!("/ait/model/{upper}")]
        {
            assert_eq!(parse_key(&RecordKey::new(&junk)), None, "{junk}");
        }
        for junk in ["/ait/block/xyz/1", "/ait/peer/notapeer", "/other/thing", "/ait/block/", "\u{ff}"] {
            assert_eq!(parse_key(&RecordKey::new(&junk)), None, "{junk}");
        }
        let hex = m.to_hex();
        for alias in [format!("/ait/block/{hex}/01"), format!("/ait/block/{hex}/+1"), format!("/ait/block/{hex}/4096")]
        {
            assert_eq!(parse_key(&RecordKey::new(&alias)), None, "{alias}");
        }
    }

    #[test]
    fn only_valid_newer_records_under_their_own_key_are_stored() {
        let (k, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let p = k.public().to_peer_id();
        let (m, m2) = (ModelId([1; 32]), ModelId([2; 32]));
        let now = 1_000;
        let rec = record(&k, &m, 5_000);
        assert!(check_record(&server_key(&m, &p), &rec, None, now).is_ok());
        assert!(check_record(&peer_key(&p), &rec, None, now).is_ok());
        // Under another peer's key, another model's key, or a key that is not ours.
        let q = other.public().to_peer_id();
        assert!(matches!(check_record(&peer_key(&q), &rec, None, now), Err(Rejected::Record(_))));
        assert!(matches!(check_record(&server_key(&m2, &p), &rec, None, now), Err(Rejected::Model { .. })));
        assert!(matches!(check_record(&block_key(&m, 1), &rec, None, now), Err(Rejected::Key)));
        assert!(matches!(check_record(&RecordKey::new(&"x"), &rec, None, now), Err(Rejected::Key)));
        // Junk, and an older copy over a newer one.
        assert!(matches!(check_record(&peer_key(&p), b"junk", None, now), Err(Rejected::Record(_))));
        let older = record(&k, &m, 4_000);
        assert!(matches!(check_record(&peer_key(&p), &older, Some(&rec), now), Err(Rejected::Stale)));
        assert!(check_record(&peer_key(&p), &rec, Some(&older), now).is_ok());
        // Junk already stored does not protect itself.
        assert!(check_record(&peer_key(&p), &rec, Some(b"junk"), now).is_ok());
        assert!(check_provider_key(&block_key(&m, 3)).is_ok());
        assert!(check_provider_key(&part_key(&m.to_hex())).is_ok());
        assert!(check_provider_key(&model_key(&m)).is_ok());
        assert!(check_provider_key(&crate::net::record::seeders_key()).is_ok());
        assert!(check_provider_key(&peer_key(&p)).is_err());
    }
}
