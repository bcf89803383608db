//! Per-IP limits on inbound connections, and the IP address each connected peer comes from.
//!
//! libp2p's `connection_limits` caps connections in total and per peer id, but peer ids cost
//! nothing to make: one host can open thousands of connections under fresh identities, each
//! holding file descriptors, buffers and (before the handshake ends) an upgrade task. This
//! behaviour counts inbound connections, pending and established, per remote IP address and
//! denies those over the limit.
//!
//! Relayed connections (`/p2p-circuit` addresses) are not counted by IP: their address is the
//! relay's, shared by every tab behind it; their number is bounded by the relay's own limits.
//!
//! The behaviour also keeps a map from each connected peer to its IP ([`PeerIps`]), so that
//! the session server can cap sessions per host as well as per peer id.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::log_limit::LogLimit;

/// The IP address of a direct (not relayed) connection's remote end.
pub fn remote_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The IP each connected peer is reached at (its latest direct connection), shared with the
/// session server. Cheap to clone.
#[derive(Clone, Default)]
pub struct PeerIps(Arc<Mutex<HashMap<PeerId, IpAddr>>>);

impl PeerIps {
    /// The IP `peer` is connected from, if it has a direct connection.
    pub fn get(&self, peer: &PeerId) -> Option<IpAddr> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied()
    }

    fn set(&self, peer: PeerId, ip: Option<IpAddr>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match ip {
            Some(ip) => m.insert(peer, ip),
            None => m.remove(&peer),
        };
    }
}

/// Counts inbound connections per IP and denies those over the limits.
pub struct Behaviour {
    max_pending_per_ip: usize,
    max_established_per_ip: usize,
    trusted: HashSet<PeerId>,
    pending: HashMap<ConnectionId, IpAddr>,
    established: HashMap<ConnectionId, IpAddr>,
    ips: PeerIps,
    log: LogLimit,
}

/// Denied: too many connections from one address.
#[derive(Debug, thiserror::Error)]
#[error("{n} {what} connections from {ip} already (limit {limit})")]
pub struct TooManyFromIp {
    /// The address.
    pub ip: IpAddr,
    /// Pending or established.
    pub what: &'static str,
    /// How many it holds.
    pub n: usize,
    /// The limit.
    pub limit: usize,
}

impl Behaviour {
    /// Allows each IP `max_pending` connections being upgraded and `max_established`
    /// established inbound connections; `trusted` peers are never denied once identified.
    pub fn new(max_pending: usize, max_established: usize, trusted: HashSet<PeerId>) -> Behaviour {
        Behaviour {
            max_pending_per_ip: max_pending,
            max_established_per_ip: max_established,
            trusted,
            pending: HashMap::new(),
            established: HashMap::new(),
            ips: PeerIps::default(),
            log: LogLimit::new(Duration::from_secs(10)),
        }
    }

    /// The map of peers to IPs this behaviour keeps.
    pub fn peer_ips(&self) -> PeerIps {
        self.ips.clone()
    }

    fn count(map: &HashMap<ConnectionId, IpAddr>, ip: IpAddr) -> usize {
        map.values().filter(|&&i| i == ip).count()
    }

    fn deny(&self, ip: IpAddr, what: &'static str, n: usize, limit: usize) -> ConnectionDenied {
        let e = TooManyFromIp { ip, what, n, limit };
        crate::limited_warn!(self.log, "ip-limit", "refusing a connection: {e}");
        ConnectionDenied::new(e)
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote) else { return Ok(()) };
        let n = Self::count(&self.pending, ip);
        if n >= self.max_pending_per_ip {
            return Err(self.deny(ip, "pending", n, self.max_pending_per_ip));
        }
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&connection_id);
        let Some(ip) = remote_ip(remote) else { return Ok(dummy::ConnectionHandler) };
        let n = Self::count(&self.established, ip);
        if n >= self.max_established_per_ip && !self.trusted.contains(&peer) {
            return Err(self.deny(ip, "established", n, self.max_established_per_ip));
        }
        self.established.insert(connection_id, ip);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, endpoint, .. }) => {
                if let Some(ip) = remote_ip(endpoint.get_remote_address()) {
                    self.ips.set(peer_id, Some(ip));
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, remaining_established, .. }) => {
                self.established.remove(&connection_id);
                if remaining_established == 0 {
                    self.ips.set(peer_id, None);
                }
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.pending.remove(&connection_id);
                self.established.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, ev: THandlerOutEvent<Self>) {
        match ev {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_connections_have_no_ip_of_their_own() {
        let direct: Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
        assert_eq!(remote_ip(&direct), Some("10.1.2.3".parse().unwrap()));
        let relayed: Multiaddr =
            "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
                .parse()
                .unwrap();
        assert_eq!(remote_ip(&relayed), None);
    }

    #[test]
    fn each_ip_gets_its_own_allowance() {
        let mut b = Behaviour::new(2, 1, HashSet::new());
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let a: Multiaddr = "/ip4/127.0.0.2/tcp/5".parse().unwrap();
        let other: Multiaddr = "/ip4/127.0.0.3/tcp/5".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..5).map(ConnectionId::new_unchecked).collect();
        assert!(b.handle_pending_inbound_connection(ids[0], &local, &a).is_ok());
        assert!(b.handle_pending_inbound_connection(ids[1], &local, &a).is_ok());
        assert!(b.handle_pending_inbound_connection(ids[2], &local, &a).is_err(), "third pending from one IP");
        assert!(b.handle_pending_inbound_connection(ids[3], &local, &other).is_ok(), "another IP is not affected");
        let p = PeerId::random();
        assert!(b.handle_established_inbound_connection(ids[0], p, &local, &a).is_ok());
        assert!(b.handle_established_inbound_connection(ids[1], PeerId::random(), &local, &a).is_err());
        // A trusted peer (an operator's own gateway) is let in over the limit.
        let mut t = Behaviour::new(2, 1, HashSet::from([p]));
        assert!(t.handle_established_inbound_connection(ids[0], PeerId::random(), &local, &a).is_ok());
        assert!(t.handle_established_inbound_connection(ids[1], p, &local, &a).is_ok());
    }
}
