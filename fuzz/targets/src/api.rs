//! The HTTP API target: the relay's whole router (OpenAI API and browser routes) built
//! in-process over the tiny model, served by this process's own in-process server, called
//! with `tower::ServiceExt::oneshot` on a request parsed from the fuzz input.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use relay::api::ApiState;
use relay::seed::FileParts;
use relay::web::{ModelParts, WebState};
use tower::ServiceExt;
use web_node::client::ClientModel;
use web_node::model::ModelFile;
use web_node::net::chain::ChainOptions;
use web_node::net::limits::NetLimits;
use web_node::net::node::Role;

use crate::tiny;

/// The model name the API serves.
pub const MODEL_NAME: &str = "tiny";
/// Largest response body read back.
const MAX_BODY: usize = 4 << 20;
/// Longest a request may take before the target gives up on it (a hang is a finding: the
/// target panics, so libFuzzer keeps the input).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let router = runtime.block_on(build());
        Fixture { runtime, router }
    })
}

async fn build() -> Router {
    let dir = std::env::temp_dir().join(format!("ait-fuzz-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir for the node's key");
    let key = relay::p2p::load_or_create_key(&dir).expect("a node key");
    let cert = relay::p2p::load_or_create_cert(&dir).expect("a WebRTC certificate");
    let server = tiny::server_as(0..tiny::N_LAYERS, key.clone());
    let (node, _) = relay::p2p::start(key, cert, Role::Client, &[], false, &NetLimits::default())
        .await
        .expect("a node without listeners");
    let _ = std::fs::remove_dir_all(&dir);
    let file = ModelFile::Gguf(tiny::model().clone());
    let model = ClientModel::from_file(&file, Some(tiny::model_id())).expect("the tiny client model");
    let chain = ChainOptions {
        discovery_timeout: Duration::from_millis(200),
        settle: Duration::from_millis(20),
        ..ChainOptions::default()
    };
    let api = ApiState {
        model: Some(Arc::new(model)),
        name: MODEL_NAME.into(),
        node,
        local: Some(relay::serving::in_process(server)),
        api_key: None,
        accounts: None,
        permits: tokio::sync::Semaphore::new(4),
        chain,
        audit: relay::swarm_client::AuditOpt { audit_rate: 0.0 },
        accuser: None,
    };
    let dir = std::env::temp_dir().join(format!("ait-fuzz-api-parts-{}", std::process::id()));
    let cut = FileParts::new(tiny::model().clone(), tiny::manifest().clone(), dir).expect("a GGUF model has parts");
    let parts = ModelParts::from_file(MODEL_NAME.into(), tiny::manifest().clone(), Arc::new(cut));
    let web = WebState {
        peer: "fuzz".into(),
        addrs: Vec::new(),
        model: Some(Arc::new(parts)),
        traffic: Default::default(),
        http_parts: true,
        chain: None,
        royalties: None,
    };
    relay::api::router(Arc::new(api)).merge(relay::web::router(Arc::new(web), None))
}

/// Parses `METHOD PATH\nName: value\n...\n\nbody` (lines may end in `\r\n`); `None` when the
/// head is not a request line and headers the HTTP types accept.
pub fn parse_request(data: &[u8]) -> Option<Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let split = split.or_else(|| data.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4)));
    let (head, body) = match split {
        Some((i, n)) => (&data[..i], &data[i + n..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut req = Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        req = req.header(name.trim(), value.trim());
    }
    req.body(Body::from(body.to_vec())).ok()
}

/// One request through the router: the response's status and body (read to its end, or to
/// the first error); `None` when the input is not a request.
pub fn call(data: &[u8]) -> Option<(u16, Vec<u8>)> {
    let req = parse_request(data)?;
    let f = fixture();
    let router = f.router.clone();
    f.runtime.block_on(async move {
        let run = async {
            let resp = router.oneshot(req).await.expect("the router is infallible");
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), MAX_BODY).await.map(|b| b.to_vec()).unwrap_or_default();
            (status, body)
        };
        match tokio::time::timeout(REQUEST_LIMIT, run).await {
            Ok(out) => Some(out),
            Err(_) => panic!("request took over {REQUEST_LIMIT:?}"),
        }
    })
}

/// One request through the router (see [`call`]).
pub fn api(data: &[u8]) {
    let _ = call(data);
}
