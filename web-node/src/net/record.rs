//! DHT keys and the signed server record.
//!
//! A serving node announces itself twice: a provider record under [`block_key`] for every block
//! it serves (so a client finds who serves block `i`), and a [`ServerRecord`] under
//! [`server_key`], signed with the node's identity key inside a libp2p signed envelope, holding
//! what routing needs (range, backend, measured speed, free slots, addresses). Both are
//! republished periodically and the server record carries its own expiry time, so a node that
//! is gone drops out of routing within a minute or two even if DHT peers still hold its records.
//!
//! A record comes from anyone, so verification bounds everything a reader will size or show
//! from it ([`MAX_RECORD_BYTES`], [`MAX_LAYERS`], [`MAX_RECORD_LIFETIME`], [`MAX_ADDRS`],
//! [`MAX_ADDR_LEN`], [`MAX_BACKEND_LEN`]), and [`AddrScope`] decides which of its addresses may
//! be dialed at all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use libp2p::kad::RecordKey;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::node::RECORD_TTL;
use super::protocol::ServerStatus;
use crate::model::ModelId;

/// Largest signed record accepted, in bytes (envelope included): a record with [`MAX_ADDRS`]
/// addresses of [`MAX_ADDR_LEN`] bytes takes about 17 KiB; real ones take 1 to 4 KiB.
pub const MAX_RECORD_BYTES: usize = 24 << 10;
/// Most layers a record may claim, whatever the model (the largest open models have under
/// 200); a reader that knows the model checks its own layer count too.
pub const MAX_LAYERS: usize = 4096;
/// How far in the future a record may expire: five DHT record lifetimes. Servers sign for 90 s,
/// so this leaves minutes of clock skew while a record signed "forever" is refused.
pub const MAX_RECORD_LIFETIME: Duration = Duration::from_secs(5 * RECORD_TTL.as_secs());
/// Most addresses a record may list (a relay listening on every interface lists each
/// interface's IPv4 and IPv6 address on TCP, QUIC, WebSocket and WebRTC: a few dozen on a
/// host with containers).
pub const MAX_ADDRS: usize = 64;
/// Longest address string in a record, in bytes (a circuit address with two peer ids and a
/// certificate hash takes about 200).
pub const MAX_ADDR_LEN: usize = 256;
/// Longest backend name in a record, in bytes.
pub const MAX_BACKEND_LEN: usize = 32;

/// Signature domain of server records.
const DOMAIN: &str = "ai-torrent-server-record";
/// Payload type of server records.
const PAYLOAD_TYPE: &[u8] = b"/ait/server-record/1";

/// DHT key under which servers of block `block` of `model` provide.
pub fn block_key(model: &ModelId, block: usize) -> RecordKey {
    RecordKey::new(&format!("/ait/block/{}/{block}", model.to_hex()))
}

/// DHT key under which seeders of a model part provide: the part's BLAKE3 root
/// ([`PartRef::root`](crate::model::manifest::PartRef), 64 lowercase hex digits).
pub fn part_key(root: &str) -> RecordKey {
    RecordKey::new(&format!("/ait/part/{root}"))
}

/// DHT key under which nodes that hold `model`'s manifest (and seed some of its parts)
/// provide: where a node that knows only the id gets the manifest.
pub fn model_key(model: &ModelId) -> RecordKey {
    RecordKey::new(&format!("/ait/model/{}", model.to_hex()))
}

/// DHT key of `peer`'s server record for `model`.
pub fn server_key(model: &ModelId, peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("/ait/server/{}/{peer}", model.to_hex()))
}

/// DHT key every seeding node provides (a node that answers `/ait/parts/1` from parts it
/// holds), so that the models in the swarm can be listed.
pub fn seeders_key() -> RecordKey {
    RecordKey::new(&"/ait/seeders/1")
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

    /// Verifies a signed record for any model: its size, signature, signer = claimed peer =
    /// `expected_peer`, then [`check`](Self::check) against `now_ms`.
    pub fn verify_any(bytes: &[u8], expected_peer: &PeerId, now_ms: u64) -> Result<ServerRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Malformed(format!("{} bytes, over {MAX_RECORD_BYTES}", bytes.len())));
        }
        let env = SignedEnvelope::from_protobuf_encoding(bytes).map_err(|e| RecordError::Signature(e.to_string()))?;
        let (payload, signer) = env
            .payload_and_signing_key(DOMAIN.into(), PAYLOAD_TYPE)
            .map_err(|e| RecordError::Signature(e.to_string()))?;
        let rec: ServerRecord = serde_json::from_slice(payload).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let signer = signer.to_peer_id();
        if rec.peer != signer.to_string() || signer != *expected_peer {
            return Err(RecordError::WrongSigner { claimed: rec.peer, signer });
        }
        rec.check(now_ms)?;
        Ok(rec)
    }

    /// Checks what a reader will size, show or dial from the record: a model id in the form
    /// [`ModelId::to_hex`] writes (64 lowercase hex digits), blocks `start < end <=`
    /// [`MAX_LAYERS`], a finite non-negative speed, an expiry not past `now_ms` and at most
    /// [`MAX_RECORD_LIFETIME`] ahead, and bounded addresses and backend name.
    pub fn check(&self, now_ms: u64) -> Result<(), RecordError> {
        let s = &self.status;
        if ModelId::from_hex(&s.model).is_none_or(|id| id.to_hex() != s.model) {
            let shown: String = s.model.chars().take(80).collect();
            return Err(RecordError::Malformed(format!("model id {shown:?} is not 64 lowercase hex digits")));
        }
        if s.start >= s.end || s.end > MAX_LAYERS {
            return Err(RecordError::Mismatch(format!(
                "block range [{}, {}) is empty or past {MAX_LAYERS} layers",
                s.start, s.end
            )));
        }
        if !s.ms_per_block.is_finite() || s.ms_per_block < 0.0 {
            return Err(RecordError::Malformed(format!("ms_per_block {}", s.ms_per_block)));
        }
        if s.backend.len() > MAX_BACKEND_LEN {
            return Err(RecordError::Malformed(format!("backend name of {} bytes", s.backend.len())));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::Malformed(format!("{} addresses, over {MAX_ADDRS}", self.addrs.len())));
        }
        if let Some(a) = self.addrs.iter().find(|a| a.len() > MAX_ADDR_LEN) {
            return Err(RecordError::Malformed(format!("address of {} bytes, over {MAX_ADDR_LEN}", a.len())));
        }
        if self.expires_ms < now_ms {
            return Err(RecordError::Expired(now_ms - self.expires_ms));
        }
        let latest = now_ms.saturating_add(MAX_RECORD_LIFETIME.as_millis() as u64);
        if self.expires_ms > latest {
            return Err(RecordError::Malformed(format!(
                "expires {} ms from now, over {MAX_RECORD_LIFETIME:?}",
                self.expires_ms - now_ms
            )));
        }
        Ok(())
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

    /// The record's addresses that parse and that `scope` lets this node dial.
    pub fn dialable_addrs(&self, scope: AddrScope) -> Vec<Multiaddr> {
        let (keep, drop): (Vec<Multiaddr>, Vec<Multiaddr>) =
            self.multiaddrs().into_iter().partition(|a| scope.allows(a));
        if !drop.is_empty() {
            tracing::debug!(peer = %self.peer, "not dialing {} announced address(es): {drop:?}", drop.len());
        }
        keep
    }
}

/// Which addresses announced in a record this node may dial.
///
/// An announcer chooses its addresses, so it could make every reader dial into the reader's
/// own machine or LAN (loopback, private ranges), into link-local or multicast space, or
/// resolve a DNS name it controls (which learns who reads the record and can rebind to any
/// address after this check). So: never link-local, unspecified, multicast or broadcast; never
/// DNS names or Unix sockets; loopback and private ranges only when this node itself talks
/// to peers on such a range (a test network on 127.0.0.1, a LAN deployment), or when the
/// operator allows them. Public addresses always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrScope {
    /// Loopback addresses (`127.0.0.0/8`, `::1`) may be dialed.
    pub loopback: bool,
    /// Private ranges (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`, `fc00::/7`) may be
    /// dialed.
    pub private: bool,
}

/// Where an IP address lies, for [`AddrScope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpClass {
    Public,
    Private,
    Loopback,
    /// Link-local, unspecified, multicast, broadcast: never dialed.
    Never,
}

fn ipv4_class(ip: Ipv4Addr) -> IpClass {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        IpClass::Loopback
    } else if ip.is_link_local() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        IpClass::Never
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        IpClass::Private
    } else {
        IpClass::Public
    }
}

fn ipv6_class(ip: Ipv6Addr) -> IpClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ipv4_class(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        IpClass::Loopback
    } else if ip.is_unspecified() || ip.is_multicast() || first & 0xffc0 == 0xfe80 {
        IpClass::Never
    } else if first & 0xfe00 == 0xfc00 {
        IpClass::Private
    } else {
        IpClass::Public
    }
}

fn ip_class(ip: IpAddr) -> IpClass {
    match ip {
        IpAddr::V4(v4) => ipv4_class(v4),
        IpAddr::V6(v6) => ipv6_class(v6),
    }
}

impl AddrScope {
    /// Every address but link-local, multicast and the like (an operator's explicit choice).
    pub fn everything() -> AddrScope {
        AddrScope { loopback: true, private: true }
    }

    /// The scope of a node whose connections go to `addrs`: loopback (and private ranges) when
    /// one is on loopback, private ranges when one is on a private range, else public only.
    pub fn of_connections<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>) -> AddrScope {
        let mut scope = AddrScope::default();
        for ip in addrs.into_iter().filter_map(first_ip) {
            match ip_class(ip) {
                IpClass::Loopback => scope = AddrScope::everything(),
                IpClass::Private => scope.private = true,
                IpClass::Public | IpClass::Never => {}
            }
        }
        scope
    }

    /// Whether `addr` may be dialed: it names no DNS name or Unix socket, and every IP in it
    /// is public or in a range this scope allows.
    pub fn allows(&self, addr: &Multiaddr) -> bool {
        addr.iter().all(|p| match p {
            Protocol::Ip4(ip) => self.allows_class(ipv4_class(ip)),
            Protocol::Ip6(ip) => self.allows_class(ipv6_class(ip)),
            Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_) | Protocol::Unix(_) => {
                false
            }
            _ => true,
        })
    }

    fn allows_class(&self, class: IpClass) -> bool {
        match class {
            IpClass::Public => true,
            IpClass::Private => self.private,
            IpClass::Loopback => self.loopback,
            IpClass::Never => false,
        }
    }
}

/// The first IP address in `addr`, if any.
fn first_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
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
                pay: None,
                queued: None,
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

    /// Each field a reader sizes, slices or shows from a record, set hostile: the signed
    /// record must be refused (regression test for issue 11: a model id sliced off a char
    /// boundary, vectors sized by `end`, records valid forever).
    #[test]
    fn hostile_records_are_refused_at_verification() {
        let key = Keypair::generate_ed25519();
        let model = ModelId([9; 32]);
        let peer = key.public().to_peer_id();
        const NOW: u64 = 1_000;
        /// What a case spoils, and how.
        type Spoil = (&'static str, fn(&mut ServerRecord));
        let hostile: Vec<Spoil> = vec![
            ("multi-byte model id", |r| r.status.model = "é".repeat(32)),
            ("upper-case model id", |r| r.status.model.replace_range(..1, "A")),
            ("short model id", |r| r.status.model.truncate(12)),
            ("end past every model", |r| r.status.end = usize::MAX),
            ("end past the bound", |r| r.status.end = MAX_LAYERS + 1),
            ("empty range", |r| r.status.start = r.status.end),
            ("expires forever", |r| r.expires_ms = u64::MAX),
            ("expires past the bound", |r| r.expires_ms = NOW + MAX_RECORD_LIFETIME.as_millis() as u64 + 1),
            ("too many addresses", |r| r.addrs = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_ADDRS + 1]),
            ("long address", |r| r.addrs = vec![format!("/dns4/{}/tcp/1", "a".repeat(MAX_ADDR_LEN))]),
            ("long backend", |r| r.status.backend = "x".repeat(MAX_BACKEND_LEN + 1)),
            ("negative speed", |r| r.status.ms_per_block = -1.0),
        ];
        let mut good = record(&key, &model);
        good.expires_ms = NOW + 90_000;
        good.status.end = MAX_LAYERS;
        assert!(ServerRecord::verify_any(&good.sign(&key).unwrap(), &peer, NOW).is_ok(), "the valid record");
        for (what, spoil) in hostile {
            let mut rec = good.clone();
            spoil(&mut rec);
            let signed = rec.sign(&key).unwrap();
            assert!(ServerRecord::verify_any(&signed, &peer, NOW).is_err(), "{what} was accepted");
        }
        // An oversized envelope (padded with a field readers ignore) is refused unparsed.
        let mut json = serde_json::to_value(&good).unwrap();
        json["padding"] = "x".repeat(MAX_RECORD_BYTES).into();
        let payload = serde_json::to_vec(&json).unwrap();
        let signed = SignedEnvelope::new(&key, DOMAIN.into(), PAYLOAD_TYPE.to_vec(), payload).unwrap();
        let signed = signed.into_protobuf_encoding();
        assert!(matches!(ServerRecord::verify_any(&signed, &peer, NOW), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn announced_addresses_are_dialed_only_within_scope() {
        let addr = |s: &str| s.parse::<Multiaddr>().unwrap();
        let public = AddrScope::default();
        let lan = AddrScope::of_connections(&[addr("/ip4/8.8.8.8/tcp/1"), addr("/ip4/192.168.1.2/tcp/1")]);
        let local = AddrScope::of_connections(&[addr("/ip4/127.0.0.1/tcp/4001/ws")]);
        assert_eq!(AddrScope::of_connections(&[addr("/ip4/8.8.8.8/tcp/1")]), public);
        assert_eq!(lan, AddrScope { loopback: false, private: true });
        assert_eq!(local, AddrScope::everything());
        // (address, dialable from a public node, from a LAN node, from a loopback node)
        let cases = [
            ("/ip4/8.8.8.8/tcp/4001", true, true, true),
            ("/ip6/2001:4860::8888/udp/1/quic-v1", true, true, true),
            (
                "/ip4/8.8.8.8/tcp/1/p2p/12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK/p2p-circuit",
                true,
                true,
                true,
            ),
            ("/ip4/10.1.2.3/tcp/4001", false, true, true),
            ("/ip4/172.16.0.1/tcp/4001", false, true, true),
            ("/ip4/100.64.0.1/tcp/4001", false, true, true),
            ("/ip6/fd00::1/tcp/4001", false, true, true),
            ("/ip4/127.0.0.1/tcp/4001", false, false, true),
            ("/ip6/::1/tcp/4001", false, false, true),
            ("/ip6/::ffff:127.0.0.1/tcp/4001", false, false, true),
            ("/ip4/169.254.1.1/tcp/4001", false, false, false),
            ("/ip6/fe80::1/tcp/4001", false, false, false),
            ("/ip4/0.0.0.0/tcp/4001", false, false, false),
            ("/ip4/224.0.0.1/udp/1", false, false, false),
            ("/dns4/example.com/tcp/4001", false, false, false),
            ("/dnsaddr/example.com", false, false, false),
        ];
        for (a, p, l, o) in cases {
            let a = addr(a);
            assert_eq!((public.allows(&a), lan.allows(&a), local.allows(&a)), (p, l, o), "{a}");
        }
        let key = Keypair::generate_ed25519();
        let mut rec = record(&key, &ModelId([1; 32]));
        rec.addrs = vec!["/ip4/8.8.8.8/tcp/1".into(), "/ip4/10.0.0.1/tcp/1".into(), "not an address".into()];
        assert_eq!(rec.dialable_addrs(public), vec![addr("/ip4/8.8.8.8/tcp/1")]);
        assert_eq!(rec.dialable_addrs(lan).len(), 2);
    }
}
