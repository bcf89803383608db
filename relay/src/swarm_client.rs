//! A native client of the swarm: a node that only dials, and chains through it. The model's
//! client part is [`web_node::client::ClientModel`].

use anyhow::Context;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use web_node::client::ClientModel;
use web_node::net::chain::{ChainOptions, SwarmChain};
use web_node::net::node::{NodeHandle, Role};

/// Starts a client node (it only dials) and joins the swarm through `bootstrap`.
pub async fn connect(bootstrap: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    connect_from(bootstrap, &[]).await
}

/// Like [`connect`], with listeners on `listen`: TCP dials then leave from a listener's
/// address (port reuse), so a client listening on `/ip4/127.0.0.2/tcp/0` reaches others
/// from 127.0.0.2.
pub async fn connect_from(bootstrap: &[Multiaddr], listen: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    connect_as(Keypair::generate_ed25519(), bootstrap, listen).await
}

/// Like [`connect_from`], as the identity `key` (a node that signs its own records).
pub async fn connect_as(key: Keypair, bootstrap: &[Multiaddr], listen: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    let cert =
        libp2p_webrtc::tokio::Certificate::generate(&mut rand_webrtc::rng()).context("generating a certificate")?;
    let (handle, _) = crate::p2p::start(key, cert, Role::Client, listen, false, &Default::default()).await?;
    crate::p2p::bootstrap(&handle, bootstrap).await?;
    Ok(handle)
}

/// A chain over the swarm for `model`.
pub fn chain(handle: NodeHandle, model: &ClientModel, opts: ChainOptions) -> SwarmChain {
    SwarmChain::new(handle, model.id, model.config.n_layers, model.config.hidden, opts)
}
