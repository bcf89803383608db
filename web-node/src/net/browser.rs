//! A node in a browser tab: WebSocket and WebRTC-direct transports (a tab can only dial),
//! the circuit relay v2 client (other nodes reach the tab through a relay's circuit), and
//! Kademlia in client mode. Only on `wasm32`.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::identity::Keypair;
use libp2p::{noise, webrtc_websys, websocket_websys};

use super::limits::NetLimits;
use super::node::{Behaviour, Node, NodeHandle, Role};
use super::small_writes::SmallWrites;

/// The tab's node could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the browser node: {0}")]
pub struct BrowserNodeError(String);

/// Builds the tab's swarm for `key`; spawn the returned [`Node::run`] on the page's executor.
pub fn start(key: Keypair) -> Result<(Node, NodeHandle), BrowserNodeError> {
    let err = |e: &dyn std::fmt::Display| BrowserNodeError(e.to_string());
    let limits = NetLimits::default();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                websocket_websys::Transport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(limits.yamux())
                    .boxed(),
            )
        })
        .map_err(|e| err(&e))?
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                webrtc_websys::Transport::new(webrtc_websys::Config::new(key))
                    .map(|(peer, conn), _| (peer, StreamMuxerBox::new(SmallWrites(conn))))
                    .boxed(),
            )
        })
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, || limits.yamux())
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay_client| Behaviour::new(key, Role::Client, relay_client, &limits))
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // Listen addresses (the relay circuit, once reserved) are what others dial.
    Ok(Node::new(swarm, true))
}
