//! The tab's node: joins the swarm through the relay that served the page, and loads a model's
//! manifest and parts (the head for chat, blocks for seeding) from the swarm ([`parts`]),
//! holding them to seed.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;
use web_node::client::ClientModel;
use web_node::model::parts::{verify_block, verify_head, Part};
use web_node::model::{LayerWeights, LlamaConfig, Manifest, ModelError, ModelFile, ModelId};
use web_node::net::node::NodeHandle;

use crate::error::AppError;
use crate::http;
use crate::parts::{self, Origin, TabParts};

/// The model a relay offers parts of (`/ait/bootstrap`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct OfferedModel {
    /// Content id (hex).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Decoder layers.
    pub n_layers: usize,
}

/// What the relay tells a page about itself.
#[derive(Clone, Debug, Deserialize)]
pub struct Bootstrap {
    /// Relay peer id.
    pub peer: String,
    /// Multiaddrs a browser can dial.
    pub addrs: Vec<String>,
    /// The model whose parts it offers.
    pub model: Option<OfferedModel>,
}

/// Which browser transport to use for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportPref {
    /// WebSocket (`/ws`), falling back to WebRTC-direct.
    WebSocket,
    /// WebRTC-direct, falling back to WebSocket.
    WebRtc,
}

impl TransportPref {
    /// `?transport=webrtc` or the default (WebSocket).
    pub fn from_page() -> TransportPref {
        match http::query_param("transport").as_deref() {
            Some("webrtc") | Some("webrtc-direct") => TransportPref::WebRtc,
            _ => TransportPref::WebSocket,
        }
    }
}

/// The tab's running node.
pub struct Net {
    /// Handle to the node's event loop.
    pub handle: NodeHandle,
    /// The tab's identity (fresh per page load).
    pub key: Keypair,
    /// The relay address dialed (with `/p2p/<relay>`).
    pub relay_addr: Multiaddr,
    /// What the relay said about itself.
    pub boot: Bootstrap,
    /// The parts the tab holds and seeds.
    pub parts: Arc<TabParts>,
}

impl Net {
    /// Holds a circuit relay reservation on the page's relay; returns the tab's circuit address.
    pub async fn reserve(&self) -> Result<String, AppError> {
        let is_circuit = |a: &libp2p::Multiaddr| a.iter().any(|p| p == Protocol::P2pCircuit);
        if let Some(a) = self.handle.addresses().await?.into_iter().find(is_circuit) {
            return Ok(a.to_string());
        }
        self.handle.listen_on(self.relay_addr.clone().with(Protocol::P2pCircuit)).await?;
        for _ in 0..100 {
            if let Some(a) = self.handle.addresses().await?.into_iter().find(is_circuit) {
                return Ok(a.to_string());
            }
            futures_timer::Delay::new(Duration::from_millis(100)).await;
        }
        Err(AppError::NoReservation)
    }

    /// The page's relay.
    pub fn relay_peer(&self) -> PeerId {
        self.boot.peer.parse().unwrap_or(self.handle.peer_id())
    }
}

fn is_webrtc(a: &str) -> bool {
    a.contains("/webrtc-direct")
}

/// Starts the node and connects it to the relay that served the page.
pub async fn connect(pref: TransportPref) -> Result<Rc<Net>, AppError> {
    let boot: Bootstrap = http::json("/ait/bootstrap").await?;
    let key = Keypair::generate_ed25519();
    let (node, handle) = web_node::net::browser::start(key.clone())?;
    wasm_bindgen_futures::spawn_local(node.run());
    let mut addrs: Vec<&String> = boot.addrs.iter().collect();
    // The preferred transport first, and among those the page's own host (the relay may also
    // listen on addresses this browser cannot reach).
    let host = web_sys::window().and_then(|w| w.location().hostname().ok()).unwrap_or_default();
    let on_host = |a: &str| a.contains(&format!("/{host}/"));
    addrs.sort_by_key(|a| (is_webrtc(a) != (pref == TransportPref::WebRtc), !on_host(a)));
    let mut errors = Vec::new();
    for a in addrs {
        let Ok(addr) = a.parse::<Multiaddr>() else { continue };
        match handle.dial(addr.clone(), Duration::from_secs(10)).await {
            Ok(_) => {
                if let Err(e) = handle.bootstrap().await {
                    tracing::warn!("DHT bootstrap incomplete: {e}");
                }
                let parts = Arc::new(TabParts::default());
                crate::parts::serve(&handle, parts.clone());
                return Ok(Rc::new(Net { handle, key, relay_addr: addr, boot, parts }));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(AppError::RelayUnreachable(errors))
}

/// Which transport `addr` uses, for display.
pub fn transport_name(addr: &Multiaddr) -> &'static str {
    if is_webrtc(&addr.to_string()) {
        "WebRTC-direct"
    } else {
        "WebSocket"
    }
}

/// A model's manifest, checked against the id: from the page's relay over libp2p, else over
/// HTTP. The tab holds it (and so can hand it to others).
pub async fn manifest(net: &Net, id: &ModelId) -> Result<Manifest, AppError> {
    let m = match web_node::net::seeders::first_manifest(&net.handle, &[net.relay_peer()], id).await {
        Ok(m) => m,
        Err(errors) => {
            tracing::info!("manifest over libp2p: {}; asking over HTTP", errors.join("; "));
            let m: Manifest = http::json(&format!("/ait/models/{}/manifest", id.to_hex())).await?;
            if m.id() != *id {
                return Err(AppError::ManifestMismatch { expected: id.short(), actual: m.id().short() });
            }
            m
        }
    };
    net.parts.hold_manifest(&m);
    Ok(m)
}

/// A part fetched and verified: its value, where its bytes came from, and a warning when it
/// could not be kept in browser storage.
pub struct Loaded<T> {
    /// What `verify` made of the bytes.
    pub value: T,
    /// Where the bytes came from.
    pub origin: Origin,
    /// Why the part is not in browser storage, if it is not.
    pub warning: Option<AppError>,
}

/// Fetches part `which` of `manifest`'s model ([`parts::fetch`]: browser storage, the swarm,
/// the relay over HTTP), verifies it with `verify`, keeps it in storage and holds it for
/// seeding. A stored copy that fails verification is dropped and fetched again.
pub async fn part<T>(
    net: &Net,
    manifest: &Manifest,
    which: Part,
    mut progress: impl FnMut(u64, u64),
    verify: impl Fn(Bytes) -> Result<T, ModelError>,
) -> Result<Loaded<T>, AppError> {
    let r =
        manifest.parts.as_ref().and_then(|p| p.get(which)).ok_or_else(|| AppError::NoPart(which.to_string()))?.clone();
    let id = manifest.id().to_hex();
    let url = match which {
        Part::Head => format!("/ait/models/{id}/head"),
        Part::Block(i) => format!("/ait/models/{id}/blocks/{i}"),
    };
    let traffic = &net.parts.traffic;
    let (mut bytes, mut origin) = parts::fetch(&net.handle, net.relay_peer(), traffic, &r, &url, &mut progress).await?;
    let mut checked = verify(bytes.clone());
    if checked.is_err() && origin == Origin::Stored {
        tracing::warn!("stored {url} fails verification: fetching it again");
        http::forget(&url).await;
        (bytes, origin) = parts::fetch(&net.handle, net.relay_peer(), traffic, &r, &url, &mut progress).await?;
        checked = verify(bytes.clone());
    }
    let value = checked.map_err(AppError::Verify)?;
    let warning = match origin {
        Origin::Stored => None,
        _ => http::store(&url, &bytes).await.err(),
    };
    net.parts.hold(bytes);
    Ok(Loaded { value, origin, warning })
}

/// Loads the head part of model `id`, verified, as the client's part of the model.
pub async fn load_client_model(
    net: &Net,
    id: ModelId,
    progress: impl FnMut(u64, u64),
) -> Result<Loaded<ClientModel>, AppError> {
    let manifest = manifest(net, &id).await?;
    let head = part(net, &manifest, Part::Head, progress, |b| verify_head(&manifest, b)).await?;
    let model = ClientModel::from_file(&ModelFile::Gguf(head.value), Some(id))?;
    Ok(Loaded { value: model, origin: head.origin, warning: head.warning })
}

/// Loads block `i` of a model, verified against its manifest.
pub async fn load_block(
    net: &Net,
    manifest: &Manifest,
    i: usize,
    progress: impl FnMut(u64, u64),
) -> Result<Loaded<(LlamaConfig, LayerWeights)>, AppError> {
    part(net, manifest, Part::Block(i), progress, |b| verify_block(manifest, i, b)).await
}
