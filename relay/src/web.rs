//! What `ait relay` serves to browsers on its HTTP port: the web app (Trunk's `dist/`), the
//! multiaddrs a page should dial, and the model's parts (head and blocks, each a small GGUF,
//! see [`web_node::model::parts`]) for tabs that chat or seed.
//!
//! - `GET /ait/bootstrap`: `{peer, addrs, model}`; `addrs` are the relay's WebSocket and
//!   WebRTC-direct addresses with `/p2p/<id>`.
//! - `GET /ait/models/{id}/manifest`: the manifest (JSON) whose hash is the model id.
//! - `GET /ait/models/{id}/head`, `GET /ait/models/{id}/blocks/{i}`: parts; a downloader checks
//!   them against the manifest's hashes.
//! - anything else: a file of the app, or its `index.html`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde_json::json;
use tower_http::services::{ServeDir, ServeFile};
use web_node::model::gguf::GgufModel;
use web_node::model::parts::{extract, Part};
use web_node::model::{Manifest, ModelId};

/// A model whose parts this relay hands out.
pub struct ModelParts {
    /// Display name.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its id (the manifest's hash).
    pub id: ModelId,
    /// The whole file.
    pub file: GgufModel,
    head: OnceLock<Bytes>,
}

impl ModelParts {
    /// Parts of `file`, whose manifest is `manifest`.
    pub fn new(name: String, manifest: Manifest, file: GgufModel) -> ModelParts {
        ModelParts { name, id: manifest.id(), manifest, file, head: OnceLock::new() }
    }

    fn part(&self, part: Part) -> Result<Bytes, String> {
        let n = self.manifest.n_layers;
        match part {
            Part::Head => {
                if let Some(b) = self.head.get() {
                    return Ok(b.clone());
                }
                let b = Bytes::from(extract(self.file.file(), n, part).map_err(|e| e.to_string())?);
                Ok(self.head.get_or_init(|| b).clone())
            }
            Part::Block(_) => extract(self.file.file(), n, part).map(Bytes::from).map_err(|e| e.to_string()),
        }
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
        .route("/ait/models/{id}/manifest", get(manifest))
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
    if let Part::Block(i) = part {
        if i >= m.manifest.n_layers {
            return not_found(format!("model {id} has {} blocks", m.manifest.n_layers));
        }
    }
    match tokio::task::spawn_blocking(move || m.part(part)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn head(State(s): State<Arc<WebState>>, Path(id): Path<String>) -> Response {
    send_part(s, id, Part::Head).await
}

async fn block(State(s): State<Arc<WebState>>, Path((id, i)): Path<(String, usize)>) -> Response {
    send_part(s, id, Part::Block(i)).await
}
