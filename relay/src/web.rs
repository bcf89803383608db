//! What `ait relay` serves to browsers on its HTTP port: the web app (Trunk's `dist/`), the
//! multiaddrs a page should dial, and the model's parts (head and blocks, each a small GGUF,
//! see [`web_node::model::parts`]) for tabs that chat or seed.
//!
//! - `GET /ait/bootstrap`: `{peer, addrs, model}`; `addrs` are the relay's WebSocket and
//!   WebRTC-direct addresses with `/p2p/<id>`.
//! - `GET /ait/models/{id}/manifest`: the manifest (JSON) whose hash is the model id.
//! - `GET /ait/models/{id}/head`, `GET /ait/models/{id}/blocks/{i}`: parts; a downloader checks
//!   them against the manifest's hashes. Each part is streamed from the file the seeder keeps
//!   it in ([`FileParts`], cut once; or the part store), so a slow reader holds a file handle
//!   and one chunk, not a part.
//!   A relay that fetched its model from the swarm (`--model ID`) serves the parts its store
//!   holds (the head and its blocks), each checked against its root before it is sent.
//!   Tabs fetch parts over libp2p first and use these only as the fallback; a relay started
//!   with `--no-http-parts` answers 404 here.
//! - `GET /ait/seeding`: the relay's part traffic, seeding ratio and part streams taken.
//! - `GET /ait/models/{id}/earnings`: what model `id` earned its creator, from the
//!   settlement chain (see [`crate::settle::royalties`]; 404 without a chain).
//! - anything else: a file of the app, or its `index.html`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde_json::json;
use tower_http::services::{ServeDir, ServeFile};
use web_node::model::parts::Part;
use web_node::model::{Manifest, ModelId};
use web_node::net::parts::PartSource;

use crate::part_store::PartStore;
use crate::seed::FileParts;
use crate::settle::royalties;

/// A model whose parts this relay hands out.
pub struct ModelParts {
    /// Display name.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its id (the manifest's hash).
    pub id: ModelId,
    from: PartsFrom,
}

/// Where a model's parts come from: both keep each part verified in a file of its own, which
/// HTTP streams as the seeder answers ranges of it over libp2p.
enum PartsFrom {
    /// Cut from the whole model file, each on first use ([`FileParts`]).
    File(Arc<FileParts>),
    /// The complete parts in the part store (for a model fetched from the swarm: the head and
    /// the blocks this relay serves).
    Store(Arc<PartStore>),
}

impl ModelParts {
    /// The parts of `manifest`'s model cut from its file by `parts` (the relay's seeder of it).
    pub fn from_file(name: String, manifest: Manifest, parts: Arc<FileParts>) -> ModelParts {
        ModelParts { name, id: manifest.id(), manifest, from: PartsFrom::File(parts) }
    }

    /// The parts of `manifest`'s model that `store` holds.
    pub fn from_store(name: String, manifest: Manifest, store: Arc<PartStore>) -> ModelParts {
        ModelParts { name, id: manifest.id(), manifest, from: PartsFrom::Store(store) }
    }

    /// Whether this relay has `part` to hand out (a store may hold only some blocks).
    fn holds(&self, part: Part) -> bool {
        let PartsFrom::Store(store) = &self.from else {
            return true;
        };
        let r = self.manifest.parts.as_ref().and_then(|p| p.get(part));
        r.is_some_and(|r| PartSource::has(&**store, &r.root))
    }

    /// The file holding `part`, checked against its root (cut or hashed on first use, on a
    /// blocking thread).
    async fn part_file(self: &Arc<Self>, part: Part) -> Result<PathBuf, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.verified_file(part)).await.map_err(|e| e.to_string())?
    }

    fn verified_file(&self, part: Part) -> Result<PathBuf, String> {
        let r = self.manifest.parts.as_ref().and_then(|p| p.get(part));
        let root = &r.ok_or_else(|| format!("the manifest lists no {part}"))?.root;
        let missing = || format!("this relay does not hold {part} of model {}", self.id.to_hex());
        let path = match &self.from {
            PartsFrom::File(f) => f.part(root).and_then(|_| f.part_path(root)),
            PartsFrom::Store(s) => PartSource::part(&**s, root).and_then(|_| s.part_path(root)),
        };
        path.ok_or_else(missing)
    }
}

/// What the browser-facing routes serve.
pub struct WebState {
    /// The relay's peer id.
    pub peer: String,
    /// Addresses a browser can dial (WebSocket, WebRTC-direct), with `/p2p/<id>`.
    pub addrs: Vec<Multiaddr>,
    /// The model whose parts are offered, if any.
    pub model: Option<Arc<ModelParts>>,
    /// Parts sent to and received from other nodes over `/ait/parts/1`.
    pub traffic: Arc<web_node::net::parts::PartTraffic>,
    /// Whether the model's parts are handed out over HTTP too (else tabs fetch them over
    /// libp2p only).
    pub http_parts: bool,
    /// The settlement chain this relay uses (`--chain FILE`), if any: the page's wallet
    /// panel reads its chain id and contract addresses.
    pub chain: Option<crate::settle::Deployment>,
    /// What models earned their creators, read from that chain (the page's Creator view).
    pub royalties: Option<Arc<crate::settle::royalties::Royalties>>,
}

/// The addresses of `addrs` that a browser can dial: `/ws`, `/wss`, `/webrtc-direct`.
pub fn browser_addrs(addrs: &[Multiaddr]) -> Vec<Multiaddr> {
    addrs
        .iter()
        .filter(|a| {
            a.iter().any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_) | Protocol::WebRTCDirect))
                && !a.iter().any(|p| matches!(p, Protocol::P2pCircuit))
        })
        .cloned()
        .collect()
}

/// The app's directory: `--web-dir`, else `dist/` here, else the workspace's `dist/`.
pub fn find_web_dir(arg: Option<PathBuf>) -> Option<PathBuf> {
    let candidates = match arg {
        Some(p) => vec![p],
        None => vec![PathBuf::from("dist"), PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist"))],
    };
    candidates.into_iter().find(|p| p.join("index.html").is_file())
}

/// The browser routes, with the app from `web_dir` (or a page saying how to build it).
pub fn router(state: Arc<WebState>, web_dir: Option<PathBuf>) -> Router {
    let routes = Router::new()
        .route("/ait/bootstrap", get(bootstrap))
        .route("/ait/seeding", get(seeding))
        .route("/ait/chain", get(chain))
        .route("/ait/models/{id}/manifest", get(manifest))
        .route("/ait/models/{id}/earnings", get(earnings))
        .route("/ait/models/{id}/head", get(head))
        .route("/ait/models/{id}/blocks/{i}", get(block))
        .with_state(state);
    match web_dir {
        Some(dir) => {
            let index = dir.join("index.html");
            routes.fallback_service(ServeDir::new(dir).fallback(ServeFile::new(index)))
        }
        None => routes.fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "The web app is not built: run `trunk build --release` in the repository (or pass --web-dir).",
            )
        }),
    }
}

async fn bootstrap(State(s): State<Arc<WebState>>) -> Json<serde_json::Value> {
    let model = s.model.as_ref().map(|m| json!({"id": m.id.to_hex(), "name": m.name, "n_layers": m.manifest.n_layers}));
    Json(json!({
        "peer": s.peer,
        "addrs": s.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "model": model,
    }))
}

/// `GET /ait/seeding`: this node's part traffic and seeding ratio (sent over received), and
/// the part streams other nodes opened to it.
async fn seeding(State(s): State<Arc<WebState>>) -> Json<serde_json::Value> {
    let (sent, received) = s.traffic.totals();
    let streams = s.traffic.streams.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({ "sent_bytes": sent, "received_bytes": received, "ratio": s.traffic.ratio(), "streams": streams }))
}

/// `GET /ait/chain`: the settlement chain's id and contract addresses (404 when this relay
/// runs without a chain, and serves free).
async fn chain(State(s): State<Arc<WebState>>) -> Response {
    match &s.chain {
        Some(d) => Json(json!({
            "chain_id": d.chain_id,
            "token": d.token,
            "escrow": d.escrow,
            "registry": d.registry,
            "staking": d.staking,
            "tribunal": d.tribunal,
            "treasury": d.treasury,
            "thaw_seconds": d.thaw_seconds,
            "confirmations": d.confirmations,
        }))
        .into_response(),
        None => not_found("this relay runs without a settlement chain (start it with --chain FILE)".into()),
    }
}

/// `GET /ait/models/{id}/earnings`: model `id`'s registration and what redeems paid for it
/// over the last [`royalties::DEFAULT_BLOCKS`] blocks (amounts as decimal strings of the
/// smallest unit).
async fn earnings(State(s): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    let Some(royalties) = &s.royalties else {
        return not_found("this relay runs without a settlement chain (start it with --chain FILE)".into());
    };
    let Some(model) = ModelId::from_hex(&id) else {
        return (StatusCode::BAD_REQUEST, format!("{id:?} is not a model id (64 hex digits)")).into_response();
    };
    match royalties.of(alloy::primitives::B256::from(model.0)).await {
        Ok(e) => Json(json!({
            "model": id,
            "creator": e.creator,
            "payout": e.payout,
            "royalty_bps": e.royalty_bps,
            "sessions": e.totals.sessions,
            "work": e.totals.work.to_string(),
            "paid": e.totals.paid.to_string(),
            "royalties": e.totals.royalties.to_string(),
            "from_block": e.from_block,
            "to_block": e.to_block,
        }))
        .into_response(),
        Err(e @ royalties::LookError::Busy) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

fn model_for(s: &WebState, id: &str) -> Result<Arc<ModelParts>, String> {
    match &s.model {
        Some(m) if m.id.to_hex() == id => Ok(m.clone()),
        _ => Err(format!("this relay has no parts of model {id}")),
    }
}

async fn manifest(State(s): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    match model_for(&s, &id) {
        Ok(m) => Json(m.manifest.clone()).into_response(),
        Err(e) => not_found(e),
    }
}

async fn send_part(s: Arc<WebState>, id: String, part: Part) -> Response {
    let m = match model_for(&s, &id) {
        Ok(m) => m,
        Err(e) => return not_found(e),
    };
    if !s.http_parts {
        return not_found("this relay hands out parts over libp2p only (/ait/parts/1), not over HTTP".into());
    }
    if let Part::Block(i) = part {
        if i >= m.manifest.n_layers {
            return not_found(format!("model {id} has {} blocks", m.manifest.n_layers));
        }
    }
    if !m.holds(part) {
        return not_found(format!("this relay does not hold {part} of model {id}"));
    }
    let opened = match m.part_file(part).await {
        Ok(path) => tokio::fs::File::open(&path).await.map_err(|e| format!("cannot open {}: {e}", path.display())),
        Err(e) => Err(e),
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("serving {part} of model {id}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    if let Some(len) = len {
        resp.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    }
    resp
}

async fn head(State(s): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    send_part(s, id, Part::Head).await
}

async fn block(State(s): State<Arc<WebState>>, Path((id, i)): Path<(String, usize)>) -> Response {
    send_part(s, id, Part::Block(i)).await
}
