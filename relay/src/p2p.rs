//! The native libp2p node: persistent identity, transports, listeners, bootstrap.
//!
//! Transports: TCP and QUIC (node to node), WebSocket and WebRTC-direct (what browsers can
//! dial). Noise and Yamux on the stream transports. The identity key and the WebRTC
//! certificate live in the data directory, so a restarted relay keeps its peer id and its
//! `/certhash` (which browsers need to dial it).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::Transport;
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, Multiaddr, PeerId};
use web_node::net::limits::NetLimits;
use web_node::net::node::{Behaviour, Node, NodeHandle, Role};
use web_node::net::small_writes::SmallWrites;

/// File name of the identity key in the data directory.
pub const KEY_FILE: &str = "identity.key";
/// File name of the WebRTC certificate in the data directory.
pub const CERT_FILE: &str = "webrtc.pem";

/// The default data directory of a node: `$XDG_DATA_HOME/ai-torrent/relay`, else
/// `~/.local/share/ai-torrent/relay`.
pub fn default_data_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")));
    base.unwrap_or_else(|| std::path::PathBuf::from(".")).join("ai-torrent/relay")
}

/// Picks rustls's process-wide crypto provider (ring). Both ring and aws-lc-rs are in the
/// dependency graph, so rustls cannot choose by itself: WebRTC's DTLS and the chain client's
/// HTTPS would panic without a choice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the identity key from `dir`, creating it (mode 0600) on first use.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<Keypair> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p key", path.display()));
    }
    let key = Keypair::generate_ed25519();
    write_private(&path, &key.to_protobuf_encoding()?)?;
    Ok(key)
}

/// Loads the WebRTC certificate from `dir`, creating it on first use.
pub fn load_or_create_cert(dir: &Path) -> anyhow::Result<libp2p_webrtc::tokio::Certificate> {
    let path = dir.join(CERT_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return libp2p_webrtc::tokio::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a WebRTC certificate", path.display()));
    }
    let cert =
        libp2p_webrtc::tokio::Certificate::generate(&mut rand_webrtc::rng()).context("generating a certificate")?;
    write_private(&path, cert.serialize_pem().as_bytes())?;
    Ok(cert)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Builds a swarm with every native transport, under `limits`, and starts its event loop on
/// the tokio runtime.
/// `listen` addresses are bound before this returns; with `announce_listen` they are also
/// advertised as external addresses.
pub async fn start(
    key: Keypair,
    cert: libp2p_webrtc::tokio::Certificate,
    role: Role,
    listen: &[Multiaddr],
    announce_listen: bool,
    limits: &NetLimits,
) -> anyhow::Result<(NodeHandle, Vec<Multiaddr>)> {
    install_crypto_provider();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, || limits.yamux())?
        .with_quic()
        .with_other_transport(|key| {
            libp2p_webrtc::tokio::Transport::new(key.clone(), cert)
                // Small flushed writes: see web_node::net::small_writes.
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(SmallWrites(conn))))
        })?
        .with_dns()?
        .with_websocket(noise::Config::new, || limits.yamux())
        .await?
        .with_relay_client(noise::Config::new, || limits.yamux())?
        .with_behaviour(|key, relay_client| Behaviour::new(key, role, relay_client, limits))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer = *swarm.local_peer_id();
    let (mut node, handle) = Node::new(swarm, announce_listen);
    for addr in listen {
        node.swarm_mut().listen_on(addr.clone()).with_context(|| format!("listening on {addr}"))?;
    }
    tokio::spawn(node.run());
    // Wait until every listener has reported its address (ports chosen, certhash appended).
    let mut addrs = Vec::new();
    for _ in 0..100 {
        addrs = handle.addresses().await?;
        if addrs.len() >= listen.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((handle, addrs.into_iter().map(|a| with_peer(a, peer)).collect()))
}

/// `addr` ending in `/p2p/<peer>`.
pub fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))) {
        addr
    } else {
        addr.with(libp2p::multiaddr::Protocol::P2p(peer))
    }
}

/// The default listeners on `host`: TCP and QUIC on `port`, WebSocket (TCP) and WebRTC-direct
/// (UDP) on `port + 1`. Port 0 picks free ports.
pub fn default_listen(host: std::net::IpAddr, port: u16) -> Vec<Multiaddr> {
    let next = if port == 0 { 0 } else { port.saturating_add(1) };
    let ip = match host {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    [
        format!("{ip}/tcp/{port}"),
        format!("{ip}/udp/{port}/quic-v1"),
        format!("{ip}/tcp/{next}/ws"),
        format!("{ip}/udp/{next}/webrtc-direct"),
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// Longest [`bootstrap`] waits for the DHT bootstrap query to end.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(2);

/// Dials each bootstrap address and fills the DHT routing table from them. Unreachable
/// addresses are reported and skipped; it fails only if none answers.
pub async fn bootstrap(handle: &NodeHandle, addrs: &[Multiaddr]) -> anyhow::Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let mut reached = 0;
    for a in addrs {
        match handle.dial(a.clone(), Duration::from_secs(10)).await {
            Ok(peer) => {
                tracing::info!(%peer, "connected to bootstrap peer {a}");
                reached += 1;
            }
            Err(e) => tracing::warn!("bootstrap peer {a}: {e}"),
        }
    }
    anyhow::ensure!(reached > 0, "none of the {} bootstrap address(es) answered", addrs.len());
    // The DHT bootstrap asks the peers nearest this node's id; one that is gone holds the
    // query until its dial times out. Past BOOTSTRAP_WAIT the query goes on in the background.
    match tokio::time::timeout(BOOTSTRAP_WAIT, handle.bootstrap()).await {
        Ok(Err(e)) => tracing::warn!("DHT bootstrap incomplete: {e}"),
        Err(_) => tracing::info!("DHT bootstrap still running after {BOOTSTRAP_WAIT:?}; going on"),
        Ok(Ok(())) => {}
    }
    Ok(())
}
