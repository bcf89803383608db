//! The network limits of a node, in one place: connections (in total, per peer, per IP),
//! streams per connection, the circuit relay service, and the DHT store.
//!
//! Every field has a safe default for a relay on a public address; the relay's CLI exposes
//! each as a flag (`ait relay --help`, and SECURITY.md for the reasoning behind each).

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::{relay, PeerId};

/// Connection, stream, circuit and DHT limits of a node.
#[derive(Clone, Debug)]
pub struct NetLimits {
    /// Inbound connections being upgraded (handshake not done), in total. Default 128.
    pub max_pending_incoming: u32,
    /// Established inbound connections, in total. Default 512.
    pub max_established_incoming: u32,
    /// Established connections per peer id, both directions. Default 8.
    pub max_established_per_peer: u32,
    /// Inbound connections being upgraded from one IP address. Default 8.
    pub max_pending_per_ip: usize,
    /// Established inbound connections from one IP address. Default 16.
    pub max_established_per_ip: usize,
    /// Streams per connection (yamux). Default 64.
    pub max_streams_per_connection: usize,
    /// Circuits relayed at once. Default 256.
    pub max_circuits: usize,
    /// Circuits relayed at once for one source peer. Default 16.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry (both directions) before it is closed. Default 256 MiB.
    pub max_circuit_bytes: u64,
    /// How long one circuit may live. Default 1 h.
    pub max_circuit_duration: Duration,
    /// Reservations (tabs reachable through this relay) held at once. Default 128.
    pub max_reservations: usize,
    /// Reservations one peer may hold. Default 2.
    pub max_reservations_per_peer: usize,
    /// New reservations accepted per IP address per minute. Default 30.
    pub reservations_per_ip_per_minute: u32,
    /// New circuits accepted per source IP address per minute. Default 60.
    pub circuits_per_ip_per_minute: u32,
    /// Records held in the DHT store. Default 4096.
    pub dht_max_records: usize,
    /// Providers held per DHT key (the directory key lists every server). Default 512.
    pub dht_max_providers_per_key: usize,
    /// Peers exempt from the per-IP connection limit and the per-peer and per-IP session
    /// caps: an operator's own API gateways, which open sessions for many users.
    pub trusted_peers: HashSet<PeerId>,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_pending_incoming: 128,
            max_established_incoming: 512,
            max_established_per_peer: 8,
            max_pending_per_ip: 8,
            max_established_per_ip: 16,
            max_streams_per_connection: 64,
            max_circuits: 256,
            max_circuits_per_peer: 16,
            max_circuit_bytes: 256 << 20,
            max_circuit_duration: Duration::from_secs(3600),
            max_reservations: 128,
            max_reservations_per_peer: 2,
            reservations_per_ip_per_minute: 30,
            circuits_per_ip_per_minute: 60,
            dht_max_records: 4096,
            dht_max_providers_per_key: 512,
            trusted_peers: HashSet::new(),
        }
    }
}

impl NetLimits {
    /// Circuit relay limits. Circuits carry hidden states for the length of a session, so
    /// they live far longer than libp2p's hole-punching defaults (2 min, 128 KiB), but each
    /// is bounded in bytes and time, and new reservations and circuits are rate-limited per
    /// IP: the relay is not a free tunnel, and one host cannot fill its reservation table.
    /// A circuit only reaches a peer holding a reservation here (the relay protocol's rule).
    pub fn relay_config(&self) -> relay::Config {
        let per_minute = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: Duration::from_secs(3600),
            reservation_rate_limiters: vec![],
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: vec![],
        }
        .reservation_rate_per_ip(per_minute(self.reservations_per_ip_per_minute), Duration::from_secs(60))
        .circuit_src_per_ip(per_minute(self.circuits_per_ip_per_minute), Duration::from_secs(60))
    }

    /// The libp2p connection limits (totals and per peer).
    pub fn connection_limits(&self) -> libp2p::connection_limits::ConnectionLimits {
        libp2p::connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(self.max_pending_incoming))
            .with_max_established_incoming(Some(self.max_established_incoming))
            .with_max_established_per_peer(Some(self.max_established_per_peer))
    }

    /// A yamux configuration with the stream cap.
    pub fn yamux(&self) -> libp2p::yamux::Config {
        let mut c = libp2p::yamux::Config::default();
        c.set_max_num_streams(self.max_streams_per_connection);
        c
    }
}
