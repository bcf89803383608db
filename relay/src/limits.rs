//! `ait relay`'s network limits as flags: connections, streams, circuits, the DHT store.
//! Defaults are web-node's [`NetLimits::default`]; SECURITY.md explains each.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use web_node::net::limits::NetLimits;

/// Network limits (every one a flag; the defaults suit a relay on a public address).
#[derive(Clone, Debug, clap::Args)]
pub struct NetLimitOpt {
    /// Established inbound connections, in total.
    #[arg(long, default_value_t = NetLimits::default().max_established_incoming)]
    pub max_connections: u32,
    /// Inbound connections still in their handshake, in total.
    #[arg(long, default_value_t = NetLimits::default().max_pending_incoming)]
    pub max_pending_connections: u32,
    /// Established connections per peer id.
    #[arg(long, default_value_t = NetLimits::default().max_established_per_peer)]
    pub max_connections_per_peer: u32,
    /// Established inbound connections from one IP address.
    #[arg(long, default_value_t = NetLimits::default().max_established_per_ip)]
    pub max_connections_per_ip: usize,
    /// Inbound connections in their handshake from one IP address.
    #[arg(long, default_value_t = NetLimits::default().max_pending_per_ip)]
    pub max_pending_per_ip: usize,
    /// Streams per connection.
    #[arg(long, default_value_t = NetLimits::default().max_streams_per_connection)]
    pub max_streams_per_connection: usize,
    /// Circuits relayed at once.
    #[arg(long, default_value_t = NetLimits::default().max_circuits)]
    pub max_circuits: usize,
    /// Circuits relayed at once for one source peer.
    #[arg(long, default_value_t = NetLimits::default().max_circuits_per_peer)]
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry, in MiB, before it is closed.
    #[arg(long, default_value_t = NetLimits::default().max_circuit_bytes >> 20)]
    pub max_circuit_mib: u64,
    /// Seconds one circuit may live.
    #[arg(long, default_value_t = NetLimits::default().max_circuit_duration.as_secs())]
    pub max_circuit_secs: u64,
    /// Reservations (peers reachable through this relay) held at once.
    #[arg(long, default_value_t = NetLimits::default().max_reservations)]
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    #[arg(long, default_value_t = NetLimits::default().max_reservations_per_peer)]
    pub max_reservations_per_peer: usize,
    /// New reservations accepted per IP address per minute.
    #[arg(long, default_value_t = NetLimits::default().reservations_per_ip_per_minute)]
    pub reservations_per_ip_per_minute: u32,
    /// New circuits accepted per source IP address per minute.
    #[arg(long, default_value_t = NetLimits::default().circuits_per_ip_per_minute)]
    pub circuits_per_ip_per_minute: u32,
    /// Records the DHT store holds.
    #[arg(long, default_value_t = NetLimits::default().dht_max_records)]
    pub dht_max_records: usize,
    /// Providers the DHT store holds per key.
    #[arg(long, default_value_t = NetLimits::default().dht_max_providers_per_key)]
    pub dht_max_providers_per_key: usize,
    /// A peer exempt from the per-IP connection limit and the per-peer and per-IP session
    /// caps, such as your own API gateway (repeatable).
    #[arg(long, value_name = "PEER_ID")]
    pub trusted_peer: Vec<PeerId>,
}

impl NetLimitOpt {
    /// The limits these flags set.
    pub fn limits(&self) -> NetLimits {
        NetLimits {
            max_pending_incoming: self.max_pending_connections,
            max_established_incoming: self.max_connections,
            max_established_per_peer: self.max_connections_per_peer,
            max_pending_per_ip: self.max_pending_per_ip,
            max_established_per_ip: self.max_connections_per_ip,
            max_streams_per_connection: self.max_streams_per_connection,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_bytes: self.max_circuit_mib.saturating_mul(1 << 20),
            max_circuit_duration: Duration::from_secs(self.max_circuit_secs),
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservations_per_ip_per_minute: self.reservations_per_ip_per_minute,
            circuits_per_ip_per_minute: self.circuits_per_ip_per_minute,
            dht_max_records: self.dht_max_records,
            dht_max_providers_per_key: self.dht_max_providers_per_key,
            trusted_peers: self.trusted(),
        }
    }

    /// The trusted peers.
    pub fn trusted(&self) -> HashSet<PeerId> {
        self.trusted_peer.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: NetLimitOpt,
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let l = Cli::parse_from(["x"]).limits.limits();
        let d = NetLimits::default();
        assert_eq!(format!("{l:?}"), format!("{d:?}"));
        let l = Cli::parse_from(["x", "--max-connections-per-ip", "3", "--max-circuit-mib", "1"]).limits.limits();
        assert_eq!((l.max_established_per_ip, l.max_circuit_bytes), (3, 1 << 20));
    }
}
