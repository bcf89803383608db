//! The tab's node: joins the swarm through the relay that served the page, and loads what a
//! client needs of a model (manifest, head, tokenizer) from that relay.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use serde::Deserialize;
use web_node::client::ClientModel;
use web_node::model::parts::{verify_block, verify_head};
use web_node::model::{LayerWeights, LlamaConfig, Manifest, ModelError, ModelFile, ModelId};
use web_node::net::node::NodeHandle;

use crate::error::AppError;
use crate::http;

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
                return Ok(Rc::new(Net { handle, key, relay_addr: addr, boot }));
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

/// A model's manifest from the relay, checked against the id.
pub async fn manifest(id: &ModelId) -> Result<Manifest, AppError> {
    let m: Manifest = http::json(&format!("/ait/models/{}/manifest", id.to_hex())).await?;
    if m.id() != *id {
        return Err(AppError::ManifestMismatch { expected: id.short(), actual: m.id().short() });
    }
    Ok(m)
}

/// Downloads (or reads from browser storage) one part, verifies it with `verify`, and keeps
/// it in storage. A cached copy that fails verification is dropped and downloaded again.
/// Returns the verified value and a warning when the part could not be stored.
pub async fn part<T>(
    url: &str,
    mut progress: impl FnMut(u64, u64),
    verify: impl Fn(Bytes) -> Result<T, ModelError>,
) -> Result<(T, Option<AppError>), AppError> {
    let (bytes, source) = http::cached_bytes(url, &mut progress).await?;
    let bytes = Bytes::from(bytes);
    match (verify(bytes.clone()), source) {
        (Ok(v), http::Source::Cache) => Ok((v, None)),
        (Ok(v), http::Source::Network) => Ok((v, http::store(url, &bytes).await.err())),
        (Err(e), http::Source::Network) => Err(AppError::Verify(e)),
        (Err(e), http::Source::Cache) => {
            tracing::warn!("cached {url} fails verification ({e}): downloading again");
            http::forget(url).await;
            let (bytes, _) = http::cached_bytes(url, progress).await?;
            let bytes = Bytes::from(bytes);
            let v = verify(bytes.clone()).map_err(AppError::Verify)?;
            Ok((v, http::store(url, &bytes).await.err()))
        }
    }
}

/// Loads the head part of model `id` from the relay (or browser storage), verified, as the
/// client's part of the model. Also returns a warning when the part could not be stored.
pub async fn load_client_model(
    id: ModelId,
    progress: impl FnMut(u64, u64),
) -> Result<(ClientModel, Option<AppError>), AppError> {
    let manifest = manifest(&id).await?;
    let url = format!("/ait/models/{}/head", id.to_hex());
    let (head, warning) = part(&url, progress, |b| verify_head(&manifest, b)).await?;
    Ok((ClientModel::from_file(&ModelFile::Gguf(head), Some(id))?, warning))
}

/// Loads block `i` of a model, verified against its manifest.
pub async fn load_block(
    manifest: &Manifest,
    i: usize,
    progress: impl FnMut(u64, u64),
) -> Result<((LlamaConfig, LayerWeights), Option<AppError>), AppError> {
    let url = format!("/ait/models/{}/blocks/{i}", manifest.id().to_hex());
    part(&url, progress, |b| verify_block(manifest, i, b)).await
}
