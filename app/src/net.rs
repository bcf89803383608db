//! The tab's node: joins the swarm through the relay that served the page, and loads what a
//! client needs of a model (manifest, head, tokenizer) from that relay.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use serde::Deserialize;
use web_node::client::Head;
use web_node::model::parts::{verify_block, verify_head};
use web_node::model::{ChatTemplate, LayerWeights, LlamaConfig, Manifest, ModelId, Tokenizer};
use web_node::net::node::NodeHandle;

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
pub async fn connect(pref: TransportPref) -> Result<Rc<Net>, String> {
    let boot: Bootstrap = http::json("/ait/bootstrap").await?;
    let key = Keypair::generate_ed25519();
    let (node, handle) = web_node::net::browser::start(key.clone()).map_err(|e| e.to_string())?;
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
    Err(format!("cannot reach the relay: {}", errors.join("; ")))
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
pub async fn manifest(id: &ModelId) -> Result<Manifest, String> {
    let m: Manifest = http::json(&format!("/ait/models/{}/manifest", id.to_hex())).await?;
    if m.id() != *id {
        return Err(format!("the relay's manifest for {} hashes to {}", id.short(), m.id().short()));
    }
    Ok(m)
}

/// Downloads (or reads from browser storage) one part, verifies it with `verify`, and keeps
/// it in storage. A cached copy that fails verification is dropped and downloaded again.
/// Returns the verified value and a warning when the part could not be stored.
pub async fn part<T>(
    url: &str,
    mut progress: impl FnMut(u64, u64),
    verify: impl Fn(Bytes) -> Result<T, String>,
) -> Result<(T, Option<String>), String> {
    let (bytes, source) = http::cached_bytes(url, &mut progress).await?;
    let bytes = Bytes::from(bytes);
    match (verify(bytes.clone()), source) {
        (Ok(v), http::Source::Cache) => Ok((v, None)),
        (Ok(v), http::Source::Network) => Ok((v, http::store(url, &bytes).await.err())),
        (Err(e), http::Source::Network) => Err(e),
        (Err(e), http::Source::Cache) => {
            tracing::warn!("cached {url} fails verification ({e}): downloading again");
            http::forget(url).await;
            let (bytes, _) = http::cached_bytes(url, progress).await?;
            let bytes = Bytes::from(bytes);
            let v = verify(bytes.clone())?;
            Ok((v, http::store(url, &bytes).await.err()))
        }
    }
}

/// What the page needs to chat with a model: everything but the decoder layers.
pub struct ClientModel {
    /// Content id.
    pub id: ModelId,
    /// Configuration.
    pub config: LlamaConfig,
    /// Embeddings and LM head (on the CPU, in wasm).
    pub head: Head,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Chat template.
    pub template: ChatTemplate,
}

/// Loads the head part of model `id` from the relay (or browser storage), verified.
pub async fn load_client_model(
    id: ModelId,
    progress: impl FnMut(u64, u64),
) -> Result<(ClientModel, Option<String>), String> {
    let manifest = manifest(&id).await?;
    let url = format!("/ait/models/{}/head", id.to_hex());
    let (model, warning) = part(&url, progress, |b| verify_head(&manifest, b).map_err(|e| e.to_string())).await?;
    let tokenizer = model.tokenizer().map_err(|e| e.to_string())?;
    let template = ChatTemplate::for_model(model.chat_template().as_deref(), &tokenizer).map_err(|e| e.to_string())?;
    let config = model.config().clone();
    let head = Head::new(config.clone(), model.load_head().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok((ClientModel { id, config, head, tokenizer, template }, warning))
}

/// Loads block `i` of a model, verified against its manifest.
pub async fn load_block(
    manifest: &Manifest,
    i: usize,
    progress: impl FnMut(u64, u64),
) -> Result<((LlamaConfig, LayerWeights), Option<String>), String> {
    let url = format!("/ait/models/{}/blocks/{i}", manifest.id().to_hex());
    part(&url, progress, |b| verify_block(manifest, i, b).map_err(|e| e.to_string())).await
}
