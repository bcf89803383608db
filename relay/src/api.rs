//! The OpenAI-compatible HTTP API of `ait relay` (`--http`, default 127.0.0.1:8080).
//!
//! `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (and `GET /v1/key`
//! with prepaid API keys, [`accounts`]), streamed as
//! server-sent events (ending with `data: [DONE]`) or not. Each request runs as a client of the
//! swarm through a [`SwarmChain`]; when this relay serves blocks itself, routing reaches them
//! in-process, so a relay holding every block answers alone. Chat messages go through the
//! model's own chat template. Errors use OpenAI's error shape.
//!
//! Bounded everywhere ([`HttpLimits`]): [`serve_with`] runs the port with header, body and
//! write timeouts, connection caps, the `Host`/`Origin` checks and CORS ([`guard`]); requests
//! beyond the running slots and the queue are refused at once with 429; `max_tokens` has a
//! default and a cap; templates and tokenizing run off the async runtime.

/// Logs a refusal at most once per kind every 10 s (`HTTP_LOG`), with the count held back.
macro_rules! limited_warn {
    ($kind:expr, $($arg:tt)+) => {
        web_node::limited_warn!($crate::api::HTTP_LOG, $kind, $($arg)+)
    };
}

pub mod accounts;
pub mod limits;

mod guard;
mod server;

pub use accounts::Accounts;
pub use limits::HttpLimits;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use alloy::primitives::U256;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use web_node::client::{
    ClientError, ClientModel, FinishReason, GenerateError, GenerateOptions, Generation, SamplingParams,
};
use web_node::model::{ChatMessage, ModelError};
use web_node::net::chain::{ChainError, ChainOptions, QueueWatch, SwarmChain};
use web_node::net::log_limit::LogLimit;
use web_node::net::node::NodeHandle;
use web_node::net::serve::LocalServer;

use crate::openai::{ApiError, ChatRequest, CompletionRequest, Content, Prompt, Sampling, Usage};

/// The HTTP port's log limiter: which address was limited and why, without flooding the log.
static HTTP_LOG: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new(std::time::Duration::from_secs(10)));

/// Audits the API runs at once, after their answers (each is a prefill on another server);
/// a request whose audits find no free slot skips them.
const AUDITS_AT_ONCE: usize = 2;

/// The slots of [`AUDITS_AT_ONCE`].
static AUDITS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| tokio::sync::Semaphore::new(AUDITS_AT_ONCE));

/// What the API serves and how it runs requests.
pub struct ApiState {
    /// The model (head, tokenizer, template), if this relay has one.
    pub model: Option<Arc<ClientModel>>,
    /// The model's name in `/v1/models` (requests may also name it by content id).
    pub name: String,
    /// The relay's node, used as a swarm client.
    pub node: NodeHandle,
    /// The relay's own server, if it serves blocks.
    pub local: Option<Arc<dyn LocalServer>>,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Prepaid API keys (`--api-keys`): each request names one, and is charged to its account.
    pub accounts: Option<Arc<Accounts>>,
    /// Requests generating at once; others wait their turn (at most `--api-queue` of them).
    pub permits: tokio::sync::Semaphore,
    /// Timeouts of the chains.
    pub chain: ChainOptions,
    /// The share of each request's hop sessions audited after its answer went out.
    pub audit: crate::swarm_client::AuditOpt,
    /// What accuses on chain the nodes its audits find faulty (a relay with a wallet).
    pub accuser: Option<Arc<crate::settle::tribunal::Accuser>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The API's handlers' state: what main gave, and the limits.
struct Api {
    state: Arc<ApiState>,
    /// Requests admitted (running or waiting): `--api-concurrency` plus `--api-queue`.
    admission: Arc<tokio::sync::Semaphore>,
    running: usize,
    limits: HttpLimits,
}

/// The router with the default [`HttpLimits`].
pub fn router(state: Arc<ApiState>) -> Router {
    router_with(state, &HttpLimits::default())
}

/// The API's routes (all behind the API key, when one is set) with `limits`' queue and token
/// caps. Serve it with [`serve_with`], which adds the connection-level limits and the `Host`,
/// `Origin` and CORS checks for every route.
pub fn router_with(state: Arc<ApiState>, limits: &HttpLimits) -> Router {
    let running = state.permits.available_permits();
    let key: Option<Arc<str>> = state.api_key.as_deref().map(Arc::from);
    let accounts = state.accounts.clone();
    let api = Arc::new(Api {
        state,
        admission: Arc::new(tokio::sync::Semaphore::new(running + limits.api_queue)),
        running,
        limits: limits.clone(),
    });
    let routes = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/key", get(key_info))
        .route(
            "/v1/{*rest}",
            axum::routing::any(|| async { ApiError { status: 404, ..ApiError::bad_request("No such endpoint.") } }),
        );
    let routes = match accounts {
        Some(accounts) => routes.route_layer(axum::middleware::from_fn_with_state(accounts, guard::require_account)),
        None => routes.route_layer(axum::middleware::from_fn_with_state(key, guard::require_key)),
    };
    routes.with_state(api)
}

/// `GET /v1/key`: where the request's prepaid account stands (404 without `--api-keys`).
async fn key_info(State(api): State<Arc<Api>>, req: Request) -> Result<Response, ApiError> {
    let (Some(accounts), Some(guard::AccountName(name))) =
        (&api.state.accounts, req.extensions().get::<guard::AccountName>())
    else {
        return Err(ApiError { status: 404, ..ApiError::bad_request("This relay has no prepaid API keys.") });
    };
    Ok(axum::Json(accounts.standing(name, now())?.to_json()).into_response())
}

/// The account `req` is charged to, if this relay has prepaid keys, once it may run another
/// request (something left of what it paid, when this relay pays; of its daily quota).
fn account_of(api: &Api, req: &Request) -> Result<Option<accounts::InFlight>, ApiError> {
    let (Some(accounts), Some(guard::AccountName(name))) = (&api.state.accounts, req.extensions().get()) else {
        return Ok(None);
    };
    accounts.admit(name, api.state.chain.payer.is_some(), now()).map(Some)
}

/// [`serve_with`] the default [`HttpLimits`].
pub async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<SocketAddr> {
    serve_with(addr, app, &HttpLimits::default()).await
}

/// Binds `addr` and serves `app` (the API and the browser routes) in the background within
/// `limits`; returns the bound address.
pub async fn serve_with(addr: SocketAddr, app: Router, limits: &HttpLimits) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("HTTP API cannot listen on {addr}: {e} (choose another with --http ADDR:PORT)"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(server::accept_loop(listener, guard::layer(app, limits), limits.clone()));
    Ok(bound)
}

fn now() -> u64 {
    web_node::net::unix_ms() / 1000
}

async fn models(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let state = &api.state;
    let data: Vec<Value> = state
        .model
        .iter()
        .map(|m| json!({ "id": state.name, "object": "model", "created": 0, "owned_by": "ai-torrent", "content_id": m.id.to_hex() }))
        .collect();
    Ok(axum::Json(json!({ "object": "list", "data": data })).into_response())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// The request body, within `--http-max-body` bytes and `--http-body-timeout`.
async fn read_body(api: &Api, peer: SocketAddr, body: Body) -> Result<Bytes, ApiError> {
    let max = api.limits.http_max_body;
    match tokio::time::timeout(api.limits.body_timeout(), axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            limited_warn!(
                "http-body-size",
                "HTTP request from {peer} refused: body over {max} bytes (--http-max-body)"
            );
            Err(ApiError::body_too_large(max))
        }
        Err(_) => {
            limited_warn!("http-body-timeout", "HTTP request from {peer} refused: body too slow (--http-body-timeout)");
            Err(ApiError::body_timeout(api.limits.http_body_timeout))
        }
    }
}

/// A place among the running and queued requests, or 429 at once when there is none.
fn admit(api: &Api, peer: SocketAddr) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    api.admission.clone().try_acquire_owned().map_err(|_| {
        limited_warn!(
            "api-queue",
            "API request from {peer} refused: queue full (--api-queue {})",
            api.limits.api_queue
        );
        ApiError::queue_full(api.running, api.limits.api_queue)
    })
}

/// Reads, parses and prepares (template, tokenizer: on a blocking thread) a request.
async fn prepare<R: serde::de::DeserializeOwned + Send + 'static>(
    api: &Arc<Api>,
    peer: SocketAddr,
    body: Body,
    make: fn(&Api, R) -> Result<Job, ApiError>,
) -> Result<Job, ApiError> {
    let body = read_body(api, peer, body).await?;
    let api = api.clone();
    tokio::task::spawn_blocking(move || make(&api, parse(&body)?))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request: {e}")))?
}

/// A request ready to run.
struct Job {
    /// Its place among the admitted requests, given back when it ends.
    _admitted: Option<tokio::sync::OwnedSemaphorePermit>,
    model: Arc<ClientModel>,
    prompt: Vec<u32>,
    opts: GenerateOptions,
    stream: bool,
    include_usage: bool,
    /// The prepaid account it is charged to.
    account: Option<accounts::InFlight>,
}

fn resolve_model(state: &ApiState, name: &str) -> Result<Arc<ClientModel>, ApiError> {
    match &state.model {
        Some(m) if name == state.name || name == m.id.to_hex() => Ok(m.clone()),
        _ => Err(ApiError::unknown_model(name)),
    }
}

/// Generation options from the request's sampling fields for a model of `context` tokens;
/// `max_tokens` is `default_max` when not given and at most `cap`; `param` names the prompt
/// field.
fn options(
    context: usize,
    s: &Sampling,
    prompt_len: usize,
    (default_max, cap): (usize, usize),
    param: &'static str,
) -> Result<GenerateOptions, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError { param: Some("n"), ..ApiError::bad_request("Only n = 1 is supported.") });
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError {
            param: Some("temperature"),
            ..ApiError::bad_request("temperature must be between 0 and 2.")
        });
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError { param: Some("top_p"), ..ApiError::bad_request("top_p must be in (0, 1].") });
    }
    if prompt_len >= context {
        return Err(ApiError::too_long(prompt_len, context, param));
    }
    let room = (context - prompt_len).min(cap.max(1));
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(0) => {
            return Err(ApiError {
                param: Some("max_tokens"),
                ..ApiError::bad_request("max_tokens must be at least 1.")
            })
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(room),
        None => default_max.min(room),
    };
    Ok(GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: s.seed.map(|v| v as u64),
            ..SamplingParams::default()
        },
        stop: stops(s)?,
        ..GenerateOptions::default()
    })
}

/// The stop sequences, within OpenAI's limits (4, each at most 256 bytes).
fn stops(s: &Sampling) -> Result<Vec<String>, ApiError> {
    let stops = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > 4 || stops.iter().any(|s| s.len() > 256) {
        return Err(ApiError {
            param: Some("stop"),
            ..ApiError::bad_request("At most 4 stop sequences of 256 bytes each.")
        });
    }
    Ok(stops)
}

fn chat_job(api: &Api, req: ChatRequest) -> Result<Job, ApiError> {
    let model = resolve_model(&api.state, &req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError { param: Some("messages"), ..ApiError::bad_request("messages must not be empty.") });
    }
    let mut messages = Vec::new();
    for m in &req.messages {
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError {
                                param: Some("messages"),
                                ..ApiError::bad_request("Only text content parts are supported.")
                            })
                        }
                    }
                }
                text
            }
        };
        messages.push(match m.role.as_str() {
            "system" | "developer" => ChatMessage::system(text),
            "user" => ChatMessage::user(text),
            "assistant" => ChatMessage::assistant(text),
            other => {
                return Err(ApiError {
                    param: Some("messages"),
                    ..ApiError::bad_request(format!("Unsupported role `{other}`."))
                })
            }
        });
    }
    let prompt = model.chat_prompt(&messages).map_err(|e| match e {
        ClientError::Model(e @ ModelError::Template(_)) => ApiError::bad_request(format!("Chat template: {e}")),
        e => ApiError::internal(format!("Tokenizer: {e}")),
    })?;
    let limits = (api.limits.api_default_max_tokens, api.limits.api_max_tokens);
    let opts = options(model.config.max_seq_len, &req.sampling, prompt.len(), limits, "messages")?;
    let include_usage = req.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    Ok(Job { _admitted: None, model, prompt, opts, stream: req.sampling.stream, include_usage, account: None })
}

fn completion_job(api: &Api, req: CompletionRequest) -> Result<Job, ApiError> {
    let model = resolve_model(&api.state, &req.model)?;
    let text = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError {
                param: Some("prompt"),
                ..ApiError::bad_request("Only one prompt per request is supported.")
            })
        }
    };
    let prompt = model.encode(&text).map_err(|e| ApiError::internal(format!("Tokenizer: {e}")))?;
    if prompt.is_empty() {
        return Err(ApiError { param: Some("prompt"), ..ApiError::bad_request("The prompt is empty.") });
    }
    // OpenAI's default for the legacy completions endpoint.
    let limits = (16, api.limits.api_max_tokens);
    let opts = options(model.config.max_seq_len, &req.sampling, prompt.len(), limits, "prompt")?;
    let include_usage = req.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    Ok(Job { _admitted: None, model, prompt, opts, stream: req.sampling.stream, include_usage, account: None })
}

fn api_error(e: GenerateError<ChainError>) -> ApiError {
    match e {
        GenerateError::Client(ClientError::PromptTooLong { prompt, context }) => {
            ApiError::too_long(prompt, context, "messages")
        }
        GenerateError::Chain(e @ (ChainError::NoRoute { .. } | ChainError::GaveUp { .. })) => {
            ApiError::unavailable(format!("The swarm cannot run this model now: {e}"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// A generation and what its sessions' vouchers paid (`None` when this relay pays nobody).
struct Paid {
    generation: Generation,
    cost: Option<U256>,
}

/// Runs a job through the swarm, calling `on_text` with each piece (and `on_queued` while a
/// full node queues it).
async fn run(
    state: &ApiState,
    job: &Job,
    on_text: impl FnMut(&str),
    on_queued: Option<QueueWatch>,
) -> Result<Paid, ApiError> {
    let _permit = state.permits.acquire().await.map_err(|_| ApiError::internal("shutting down"))?;
    let m = &job.model;
    let opts = ChainOptions { on_queued, ..state.chain.clone() };
    let mut chain = SwarmChain::new(state.node.clone(), m.id, m.config.n_layers, m.config.hidden, opts);
    if let Some(local) = &state.local {
        chain = chain.with_local(local.clone());
    }
    let chain = state.audit.apply(chain);
    let account = job.account.as_ref().map(|a| (a.accounts().clone(), a.name().to_string()));
    let mut metered = Metered { chain, account, tokens: job.prompt.len() as u64 };
    let generation = m.generate(&mut metered.chain, &job.prompt, &job.opts, on_text).await.map_err(api_error)?;
    metered.tokens = (generation.prompt_tokens + generation.tokens.len()) as u64;
    let cost = state.chain.payer.as_ref().map(|_| metered.chain.paid());
    // Charged before the answer goes out: the account's next request sees it.
    if let Some(charge) = metered.charge() {
        let _ = tokio::task::spawn_blocking(charge).await;
    }
    // The audits the request drew run after its answer, off its path (each is logged and
    // counted in `/metrics`; a node judged faulty is convicted in the gateway's book, and
    // the fraud report goes to the relay's peers).
    // At most [`AUDITS_AT_ONCE`] requests' audits run at once; the others are skipped.
    let slot = (state.audit.audit_rate > 0.0).then(|| AUDITS.try_acquire().ok());
    if slot.as_ref().is_some_and(Option::is_none) {
        tracing::debug!("audits skipped: {AUDITS_AT_ONCE} requests' audits running");
    }
    if let Some(Some(slot)) = slot {
        let accuser = state.accuser.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut outcomes = Vec::new();
            for found in metered.chain.run_audits().await {
                crate::swarm_client::count_audit(&found);
                outcomes.extend(found.ok());
            }
            crate::fraud::publish(metered.chain.node(), &outcomes, accuser.as_deref()).await;
        });
    }
    Ok(Paid { generation, cost })
}

/// A request's chain, charging the request's prepaid account what its vouchers paid and the
/// tokens it ran when it ends, however it ends (done, failed, or dropped because its client
/// left: then what was signed and run until then).
struct Metered {
    chain: SwarmChain,
    account: Option<(Arc<Accounts>, String)>,
    /// Tokens to count against the account's quota (at least those run through the chain).
    tokens: u64,
}

impl Metered {
    /// The charge of what was paid and run so far, taken once (a durable write: run it off
    /// the async workers).
    fn charge(&mut self) -> Option<impl FnOnce() + Send + 'static> {
        let (accounts, name) = self.account.take()?;
        let (cost, tokens) = (self.chain.paid(), self.tokens.max(self.chain.position() as u64));
        Some(move || {
            if let Err(e) = accounts.charge(&name, cost, tokens, now()) {
                tracing::warn!(account = name, "charging the request: {e}");
            }
        })
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let Some(charge) = self.charge() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(charge)),
            Err(_) => charge(),
        }
    }
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(p: &Paid) -> Usage {
    let g = &p.generation;
    Usage {
        prompt_tokens: g.prompt_tokens,
        completion_tokens: g.tokens.len(),
        total_tokens: g.prompt_tokens + g.tokens.len(),
        cost: p.cost.map(web_node::settle::format_ait),
    }
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The client's address (set by the server loop; absent in in-process tests).
fn peer_of(req: &Request) -> SocketAddr {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0)
}

async fn chat(State(api): State<Arc<Api>>, req: Request) -> Result<Response, ApiError> {
    let peer = peer_of(&req);
    let account = account_of(&api, &req)?;
    let admitted = admit(&api, peer)?;
    let job = prepare(&api, peer, req.into_body(), chat_job).await?;
    respond(api.state.clone(), Job { _admitted: Some(admitted), account, ..job }, Kind::Chat).await
}

async fn completions(State(api): State<Arc<Api>>, req: Request) -> Result<Response, ApiError> {
    let peer = peer_of(&req);
    let account = account_of(&api, &req)?;
    let admitted = admit(&api, peer)?;
    let job = prepare(&api, peer, req.into_body(), completion_job).await?;
    respond(api.state.clone(), Job { _admitted: Some(admitted), account, ..job }, Kind::Completion).await
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }
    }

    /// A streamed chunk carrying `text` (and `finish`, on the last one).
    fn chunk(self, id: &str, model: &str, text: Option<&str>, finish: Option<&str>, first: bool) -> Value {
        match self {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({ "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
                        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }] })
            }
            Kind::Completion => json!({ "id": id, "object": "text_completion", "created": now(), "model": model,
                "choices": [{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }] }),
        }
    }

    fn whole(self, id: &str, model: &str, p: &Paid) -> Value {
        let g = &p.generation;
        let finish = finish_reason(g.finish);
        let choice = match self {
            Kind::Chat => json!({ "index": 0, "message": { "role": "assistant", "content": g.text },
                                   "logprobs": null, "finish_reason": finish }),
            Kind::Completion => json!({ "index": 0, "text": g.text, "logprobs": null, "finish_reason": finish }),
        };
        let object = match self {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        json!({ "id": id, "object": object, "created": now(), "model": model, "choices": [choice], "usage": usage(p) })
    }
}

async fn respond(state: Arc<ApiState>, job: Job, kind: Kind) -> Result<Response, ApiError> {
    let id = request_id(kind.prefix());
    let name = state.name.clone();
    if !job.stream {
        let g = run(&state, &job, |_| {}, None).await?;
        return Ok(axum::Json(kind.whole(&id, &name, &g)).into_response());
    }
    // Unbounded, but holds at most `--api-max-tokens` small events for a slow reader (and a
    // reader that stops altogether is cut off by `--http-write-timeout`).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let event = |v: Value| Event::default().data(v.to_string());
    tokio::spawn(async move {
        let pieces = tx.clone();
        let _ = pieces.send(event(kind.chunk(&id, &name, Some(""), None, true)));
        // Where the request waits while a full node queues it: an SSE comment, which clients
        // that do not look for it skip.
        let notices = tx.clone();
        let on_queued = QueueWatch(Arc::new(move |_, position, waiting| {
            let _ =
                notices.send(Event::default().comment(format!("queued: {position} of {waiting} waiting at a server")));
        }));
        let work = run(
            &state,
            &job,
            |piece| {
                let _ = pieces.send(event(kind.chunk(&id, &name, Some(piece), None, false)));
            },
            Some(on_queued),
        );
        let result = tokio::select! {
            r = work => r,
            // The client went away: dropping `work` ends the sessions.
            () = tx.closed() => return,
        };
        match result {
            Ok(g) => {
                let _ = tx.send(event(kind.chunk(&id, &name, None, Some(finish_reason(g.generation.finish)), false)));
                if job.include_usage {
                    let object = match kind {
                        Kind::Chat => "chat.completion.chunk",
                        Kind::Completion => "text_completion",
                    };
                    let _ = tx.send(event(json!({ "id": id, "object": object, "created": now(),
                        "model": name, "choices": [], "usage": usage(&g) })));
                }
            }
            Err(e) => {
                let _ = tx.send(event(e.body()));
            }
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).into_response())
}
