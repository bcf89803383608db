//! The swarm: wire protocol, DHT records, routing, and the node that ties them to libp2p.
//!
//! - [`frame`] and [`protocol`]: the inference protocol spoken over one libp2p stream per
//!   session (open, prefill/decode steps carrying f32 hidden states, replay, close), with sizes
//!   checked before allocation.
//! - [`record`]: DHT keys and the signed server record a serving node publishes.
//! - [`routing`]: picks the chain of servers with the lowest estimated latency.
//! - [`node`]: the libp2p behaviour and the event loop; other tasks talk to it through a
//!   [`node::NodeHandle`].
//! - [`serve`]: serving blocks: the assembly every serving node runs ([`serve::Service`]), the
//!   session server, the compute loop, and the DHT announcements of a server.
//! - [`directory`]: lists the servers of the network.
//! - [`parts`]: `/ait/parts/1`, verified part exchange; [`seeders`] finds who holds a model's
//!   manifest and parts.
//! - [`limits`]: every network limit of a node ([`limits::NetLimits`]); [`ip_limit`] caps
//!   inbound connections per IP address, [`dht_filter`] decides what the DHT store accepts,
//!   [`log_limit`] keeps refusals from flooding the logs, [`keyed_limit`] caps what is held
//!   at once in total and per key.
//! - [`chain`]: [`chain::SwarmChain`], a [`LayerChain`](crate::client::LayerChain) whose layers
//!   run on remote servers found through a [`chain::Discovery`], with re-routing (of the failed
//!   span, or of the whole route when the span cannot be covered on its own) and replay when
//!   one fails.
//!
//! Transports are chosen by the embedding program (TCP/QUIC/WebSocket/WebRTC natively,
//! WebSocket/WebRTC in a browser); everything here is transport-agnostic.

pub mod admitted;
#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod chain;
pub mod dht_filter;
pub mod directory;
pub mod evidence;
pub mod frame;
pub mod fraud;
pub mod ip_limit;
pub mod keyed_limit;
pub mod limits;
pub mod log_limit;
pub mod node;
pub mod parts;
pub mod protocol;
pub mod record;
pub mod routing;
pub mod seeders;
pub mod serve;
pub mod small_writes;

pub use crate::time::timeout;

/// Milliseconds since the Unix epoch (wall clock; used in records that other nodes read).
pub fn unix_ms() -> u64 {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
