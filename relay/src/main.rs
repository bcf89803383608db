//! `ait`: the AI Torrent native node.
//!
//! Subcommands: `relay` (a swarm node: relay, DHT server, and optionally a server of some
//! blocks), `generate` (run a model on this machine or through a swarm and stream text),
//! `bench` (measure the engine, printing JSON), `fetch-model` (download the default model),
//! `inspect` (what a model file is and whether this build runs it), `models` (the models in
//! the swarm), `publish` (a creator's model enters the swarm: a relay seeding a file, with a
//! signed model card), `chain dev` (a local chain with the settlement contracts).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use relay::local::{BackendKind, LocalModel};
use std::sync::Arc;
use web_node::client::{ClientModel, GenerateOptions, Generation, SamplingParams};
use web_node::model::{ChatMessage, Manifest, ModelFile};
use web_node::net::node::Role;
use web_node::net::parts::PartSource;
use web_node::net::serve::LocalServer;

#[derive(Parser)]
#[command(name = "ait", version, about = "AI Torrent: peer-to-peer LLM inference")]
struct Opt {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a swarm node: circuit relay, DHT server, OpenAI-compatible HTTP API, and with
    /// --blocks a server of those blocks.
    Relay(Box<RelayOpt>),
    /// Chat in the terminal with a model run by a swarm or a relay's API.
    Chat(relay::chat::ChatOpt),
    /// Generate text on this machine, streaming it to stdout.
    Generate(GenerateOpt),
    /// Measure prefill and decode speed per backend and the matrix-vector kernels; prints JSON.
    Bench(relay::bench::BenchOpt),
    /// Measure the honest drift of block outputs between backends (a session's steps against
    /// an audit's prefill) and the same metric for each way a node can lie; prints the margin
    /// the audit limit leaves on both sides.
    Calibrate(relay::calibrate::CalibrateOpt),
    /// Download the default model into the cache (if needed) and print its path.
    FetchModel,
    /// List the models in the swarm: name and labels, id, shape, size, seeders and complete
    /// copies.
    Models(relay::models::ModelsOpt),
    /// Publish a model (a GGUF file, or a Hugging Face directory converted to GGUF, quantized
    /// if asked): a relay that seeds every part of the file, with a model card
    /// (name, tags, license, payout address, and the speed of a block here) signed by this
    /// node's key, until stopped. With --blocks it also serves those blocks.
    Publish(Box<PublishOpt>),
    /// Print what a model file is (architecture, shapes, quantization mix, context,
    /// tokenizer, chat template) and whether this build can run it; exits 1 if it cannot.
    Inspect(relay::inspect::InspectOpt),
    /// Settlement chains: `ait chain dev` starts a local chain (anvil) with the contracts
    /// deployed and AIT in its dev accounts.
    Chain(relay::settle::dev::ChainOpt),
    /// Settlement: wallet, deposit, withdraw, stake, unstake, redeem, model register.
    #[command(flatten)]
    Settle(relay::settle::cli::SettleCmd),
}

#[derive(clap::Args)]
struct GenerateOpt {
    /// Model file (GGUF) or Hugging Face directory; default: SmolLM2-135M-Instruct Q4_1.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template (with its default system prompt).
    #[arg(long)]
    chat: bool,
    /// Compute backend for the layers.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Run the layers on a swarm joined through this relay address (repeatable) instead of on
    /// this machine; the tokenizer, embeddings, LM head and sampling stay here.
    #[arg(long, value_name = "MULTIADDR")]
    swarm: Vec<Multiaddr>,
    /// With --swarm: paying servers that charge.
    #[command(flatten)]
    pay: relay::settle::node::ClientPayOpt,
    /// With --swarm: spot checks of the servers.
    #[command(flatten)]
    audit: relay::swarm_client::AuditOpt,
}

#[derive(clap::Args)]
struct PublishOpt {
    /// The model: a GGUF file, or a Hugging Face directory (config.json, safetensors in f32,
    /// f16 or bf16, tokenizer.json), which is converted to GGUF under --data-dir/published.
    path: PathBuf,
    /// Quantize every matrix to this type first (q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16), and
    /// report how far the quantized model's greedy tokens and logits drift from the original.
    #[arg(long, value_name = "TYPE", value_parser = relay::publish::parse_quantize)]
    quantize: Option<web_node::model::WeightType>,
    #[command(flatten)]
    card: relay::publish::CardOpt,
    #[command(flatten)]
    relay: RelayOpt,
}

#[derive(clap::Args)]
struct RelayOpt {
    /// Directory for the identity key and WebRTC certificate (one per relay).
    #[arg(long, default_value_os_t = relay::p2p::default_data_dir())]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// TCP and QUIC port; WebSocket and WebRTC-direct use the next one. 0 picks free ports.
    #[arg(long, default_value_t = 4001)]
    port: u16,
    /// Listen on exactly these multiaddrs instead of --host/--port (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Address others should dial, announced instead of the listen addresses (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    external_addr: Vec<Multiaddr>,
    /// Join the swarm through this node (repeatable); with none, start a new swarm.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    #[command(flatten)]
    serve: relay::serving::ServeOpt,
    /// Most disk the part store (parts fetched from the swarm, under --data-dir) may take, in
    /// GiB; the least recently used parts not being served are evicted first.
    #[arg(long, default_value_t = 20.0)]
    cache_gib: f64,
    #[command(flatten)]
    seed: relay::seed::SeedOpt,
    #[command(flatten)]
    pin: relay::pin::PinOpt,
    #[command(flatten)]
    net: relay::limits::NetLimitOpt,
    /// Do not hand out model parts over HTTP: tabs fetch them over libp2p (`/ait/parts/1`)
    /// only, as every other node does.
    #[arg(long)]
    no_http_parts: bool,
    /// The settlement chain: a deployment file (`ait chain dev --out FILE` writes one). The
    /// page's wallet panel uses it; without it the relay serves free.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    #[command(flatten)]
    settle: relay::settle::node::SettleOpt,
    /// Address of the OpenAI-compatible HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Do not serve the HTTP API.
    #[arg(long)]
    no_http: bool,
    /// Require this bearer token on the HTTP API (also AIT_API_KEY).
    #[arg(long, env = "AIT_API_KEY", hide_env_values = true, conflicts_with = "api_keys")]
    api_key: Option<String>,
    /// Prepaid API keys: a JSON file of `{"keys": [{"key", "name", "prepaid" (AIT),
    /// "tokens_per_day" (optional)}]}`. Each request must carry one of the keys and is charged
    /// its cost (with --pay) and tokens; spending is kept in DATA_DIR/accounts.redb and shown
    /// by `GET /v1/key`.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Spot checks of the servers that answer the API's requests.
    #[command(flatten)]
    audit: relay::swarm_client::AuditOpt,
    /// HTTP API requests generating at once (others wait). Their steps share the blocks'
    /// batches. Each holds a session on every server of its route, and other servers let one
    /// peer hold 4 (`--max-sessions-per-peer`). Default: `--max-sessions` when this relay
    /// serves every block itself (its own batches carry them all), else 4; raise it when the
    /// route's servers trust this relay (`--trusted-peer`).
    #[arg(long)]
    api_concurrency: Option<usize>,
    #[command(flatten)]
    http_limits: relay::api::HttpLimits,
    /// The built web app served on the HTTP port (default: `dist/` here or in the workspace).
    #[arg(long, env = "AIT_WEB_DIR")]
    web_dir: Option<PathBuf>,
}

/// The name a model goes by in the API: its file (or directory) name without `.gguf`.
fn model_name(path: &std::path::Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    file.strip_suffix(".gguf").map(str::to_string).unwrap_or(file)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ait=info,relay=info,web_node::net=info,libp2p_kad=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Opt::parse().cmd {
        Cmd::Relay(o) => relay_main(*o, None),
        Cmd::Publish(o) => {
            let PublishOpt { path, quantize, card, mut relay } = *o;
            anyhow::ensure!(relay.serve.model.is_none(), "ait publish takes the model as PATH, not --model");
            anyhow::ensure!(path.exists(), "{}: no such file or directory", path.display());
            let backend = relay.serve.backend;
            relay.serve.model = Some(relay::publish::to_gguf(&path, quantize, &relay.data_dir, backend)?);
            relay_main(relay, Some(card))
        }
        Cmd::Chat(o) => relay::chat::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::Generate(o) if !o.swarm.is_empty() => generate_swarm(o),
        Cmd::Generate(o) => generate(o),
        Cmd::Bench(o) => relay::bench::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::Calibrate(o) => relay::calibrate::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::Models(o) => relay::models::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::Inspect(o) => relay::inspect::run(o).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Cmd::Chain(o) => relay::settle::dev::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::Settle(c) => relay::settle::cli::run(c).map(|()| ExitCode::SUCCESS),
        Cmd::FetchModel => {
            println!("{}", relay::fetch::default_model()?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// `ait relay`, and with `card` `ait publish`.
fn relay_main(o: RelayOpt, card: Option<relay::publish::CardOpt>) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&o.data_dir).with_context(|| format!("creating {}", o.data_dir.display()))?;
    // One relay per data directory: a second one would share its peer id.
    let lock_path = o.data_dir.join("lock");
    let lock_file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.try_write().map_err(|_| {
        anyhow::anyhow!("another relay is using {}; give each relay its own --data-dir", o.data_dir.display())
    })?;
    let key = relay::p2p::load_or_create_key(&o.data_dir)?;
    let cert = relay::p2p::load_or_create_cert(&o.data_dir)?;
    let listen = if o.listen.is_empty() { relay::p2p::default_listen(o.host, o.port) } else { o.listen.clone() };
    let chain = match &o.chain {
        Some(path) => Some(relay::settle::Deployment::load(path)?),
        None => None,
    };
    let settlement = relay::settle::node::Settlement::open(&o.settle, chain.as_ref(), &o.data_dir)?;
    runtime()?.block_on(async move {
        let peer = key.public().to_peer_id();
        let (handle, addrs) =
            relay::p2p::start(key.clone(), cert, Role::Server, &listen, o.external_addr.is_empty(), &o.net.limits())
                .await?;
        for a in &o.external_addr {
            handle.add_external_address(a.clone()).await?;
        }
        println!("peer id: {peer}");
        for a in &addrs {
            println!("listening: {a}");
        }
        relay::p2p::bootstrap(&handle, &o.bootstrap).await?;
        let mut local: Option<Arc<dyn LocalServer>> = None;
        // The parts this relay fetched from the swarm; it seeds them all.
        let store = Arc::new(
            relay::part_store::PartStore::open(&o.data_dir.join("store"), (o.cache_gib * (1u64 << 30) as f64) as u64)
                .context("opening the part store")?,
        );
        let mut sources: Vec<Arc<dyn PartSource>> = vec![store.clone()];
        // The model this relay knows: the one it serves, or --model.
        let mut known: Option<(ModelFile, Manifest)> = None;
        // Serving until the process ends.
        let mut _withdraw = None;
        // Whether this relay serves every block of its model.
        let mut serves_all = false;
        // The speed of its blocks, when it serves some.
        let mut measured = None;
        // `--model ID`: a model known only by its id, fetched from the swarm.
        let swarm_id = o.serve.model_id();
        let loaded = match (swarm_id, &o.serve.blocks) {
            (Some(id), blocks) => {
                let manifest = relay::swarm_model::manifest(&handle, &store, &id).await?;
                let blocks = match blocks {
                    Some(b) => web_node::net::serve::parse_blocks(b, manifest.n_layers).context("--blocks")?,
                    None => 0..0,
                };
                let parts = relay::swarm_model::wanted(&manifest, blocks.clone())?;
                store.pin(parts.iter().map(|(_, r)| r.root.clone()));
                let (fetched, held) = relay::swarm_model::fetch(&handle, &store, &parts).await?;
                println!("model {}: {} parts ready, {fetched} bytes fetched", id.to_hex(), parts.len());
                let (m, kind) = (manifest.clone(), o.serve.backend);
                let (head, backend) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let head = relay::swarm_model::load_head(&held, &m)?;
                    let backend = match blocks.is_empty() {
                        true => None,
                        false => Some(relay::swarm_model::load_blocks(&held, &m, blocks, kind)?),
                    };
                    Ok((head, backend))
                })
                .await??;
                match backend {
                    Some(backend) => Some(relay::serving::Loaded { backend, manifest, file: head }),
                    None => {
                        known = Some((head, manifest));
                        None
                    }
                }
            }
            (None, Some(_)) => Some(relay::serving::load_file(&o.serve, &o.data_dir).await?),
            (None, None) => {
                if let Some(path) = o.serve.model.clone() {
                    let data_dir = o.data_dir.clone();
                    known = Some(
                        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                            let file = ModelFile::open(&path).context("opening the model")?;
                            let (manifest, source) =
                                relay::manifest_cache::manifest_for(&path, &file, &data_dir, 0..0, true)?;
                            tracing::info!(?source, "manifest of {}", path.display());
                            Ok((file, manifest))
                        })
                        .await??,
                    );
                }
                None
            }
        };
        relay::metrics::install();
        let mut metrics = relay::metrics::MetricsState::default();
        let mut limits = o.serve.limits(o.net.trusted());
        match (&settlement, &loaded) {
            (Some(s), Some(l)) => {
                let layers = web_node::engine::Backend::layers(&l.backend).len() as u64;
                let gate = s.charge(&o.settle, &o.data_dir, layers, peer).await?;
                metrics.ledger = gate.as_ref().map(|g| g.ledger().clone());
                limits.payments = gate.map(|g| g as Arc<dyn web_node::settle::PaymentGate>);
            }
            (_, None) if o.settle.price.is_some() => {
                anyhow::bail!("--price charges for the blocks this relay serves: pass --blocks")
            }
            _ => {}
        }
        if let Some(loaded) = loaded {
            let s = relay::serving::start(&handle, &key, loaded, limits).await?;
            let c = s.server.config();
            println!(
                "serving: blocks {}..{} of model {} on {} ({:.3} ms per block per token)",
                c.blocks.start, c.blocks.end, s.model, c.backend, c.ms_per_block
            );
            serves_all = c.blocks == (0..s.manifest.n_layers);
            measured =
                Some(web_node::model::card::Measured { ms_per_block: c.ms_per_block, backend: c.backend.clone() });
            local = Some(relay::serving::in_process(s.server.clone()));
            metrics.server = Some(s.server.clone());
            known = Some((s.file, s.manifest));
            _withdraw = Some(s.withdraw);
        }
        // Every part of a GGUF model file is offered to other nodes over `/ait/parts/1`,
        // besides what the store holds; the DHT says so.
        let mut roots = Vec::new();
        let (stored, mut models) = store.contents();
        roots.extend(stored);
        let from_swarm = swarm_id.is_some();
        let mut file_parts = None;
        if let Some((file, manifest)) = &known {
            models.push(manifest.id());
            if let (ModelFile::Gguf(g), false) = (file, from_swarm) {
                let dir = o.data_dir.join("file-parts");
                if let Some(parts) = relay::seed::FileParts::new(g.clone(), manifest.clone(), dir) {
                    let parts = Arc::new(parts);
                    roots.extend(parts.roots());
                    sources.insert(0, parts.clone());
                    file_parts = Some(parts);
                }
            }
        }
        if let (Some(opt), Some((file, manifest))) = (&card, &known) {
            let measured = match measured {
                Some(m) => m,
                None => tokio::task::block_in_place(|| relay::publish::measure(file, o.serve.backend))
                    .context("measuring a block")?,
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let c = relay::publish::card_for(file, manifest, opt, Some(measured), now)?;
            let id = manifest.id();
            if !store.add_card(&id, &c.sign(&key)?)? {
                tracing::warn!("the store keeps another creator's card of model {}", id.to_hex());
            }
            println!(
                "card: {:?} by {peer}, {} parameters, {}, {:.3} ms per block per token",
                c.name,
                c.parameters,
                c.quantization,
                c.measured.as_ref().map_or(0.0, |m| m.ms_per_block)
            );
            println!("published: model {} (`ait relay --model {}` fetches it)", id.to_hex(), id.to_hex());
        }
        relay::seed::serve_parts(&handle, sources, o.seed.limits(), store.traffic())?;
        relay::seed::announce(&handle, &roots, &models).await?;
        relay::pin::spawn(&handle, &store, &o.pin);
        // The chain options of this relay's own requests; their reputation book is the one
        // fraud reports convict in. Convictions outlive a restart: a liar stays out of routes.
        let gateway_chain = web_node::net::chain::ChainOptions {
            reputation: web_node::trust::Reputation::open(&o.data_dir.join("reputation.redb"))
                .context("opening the reputation book")?,
            ..match &settlement {
                Some(s) => s.chain_options(&o.settle).await?,
                None => Default::default(),
            }
        };
        // Fraud reports from peers are recomputed and convict in that book; with --judge,
        // confirmed ones get this relay's signed verdict. A relay with a wallet also keeps the
        // reports its cases rest on, shows them to peers, and does its tribunal duties
        // (appeals, juries, closing its cases).
        match &known {
            Some((_, manifest)) => {
                let judge = match &settlement {
                    Some(s) => s.judge(&o.settle)?,
                    None => None,
                };
                let evidence = match &settlement {
                    Some(_) => {
                        let store = relay::evidence::EvidenceStore::open(&o.data_dir.join("evidence.redb"))
                            .context("opening the evidence store")?;
                        let store = Arc::new(store);
                        store.clone().serve(&handle)?;
                        Some(store)
                    }
                    None => None,
                };
                let verifier = Arc::new(relay::fraud::Verifier::new(
                    handle.clone(),
                    manifest,
                    local.clone(),
                    gateway_chain.clone(),
                    judge,
                    evidence.clone(),
                ));
                verifier.clone().serve()?;
                if let (Some(s), Some(store)) = (&settlement, evidence) {
                    if let Some(duty) = s.duty(&o.settle, verifier, peer, store).await? {
                        tokio::spawn(duty.run(relay::settle::duty::EVERY));
                    }
                }
            }
            None if o.settle.judge || o.settle.jury => {
                tracing::warn!("--judge/--jury: this relay has no model, so it recomputes no fraud reports");
            }
            None => {}
        }
        if !o.no_http {
            let api_concurrency = o.api_concurrency.unwrap_or(if serves_all { o.serve.max_sessions } else { 4 }).max(1);
            tracing::info!(api_concurrency, "HTTP API requests generating at once");
            let name = match (&o.serve.model, &known) {
                (Some(p), _) => model_name(p),
                (None, Some(_)) => model_name(&relay::fetch::default_model()?),
                (None, None) => String::new(),
            };
            // The API needs the model's head and tokenizer; browsers get its parts (GGUF only).
            let (model, parts) = match known {
                Some((file, manifest)) => {
                    let id = manifest.id();
                    let client = ClientModel::from_file(&file, Some(id))?.with_batched_head(api_concurrency);
                    let parts = match file {
                        ModelFile::Gguf(_) if from_swarm => {
                            Some(Arc::new(relay::web::ModelParts::from_store(name.clone(), manifest, store.clone())))
                        }
                        ModelFile::Gguf(_) => file_parts
                            .clone()
                            .map(|f| Arc::new(relay::web::ModelParts::from_file(name.clone(), manifest, f))),
                        ModelFile::Safetensors(_) => {
                            tracing::warn!("browsers cannot download parts of a safetensors model yet");
                            None
                        }
                    };
                    (Some(Arc::new(client)), parts)
                }
                None => (None, None),
            };
            let state = relay::api::ApiState {
                model,
                name,
                node: handle.clone(),
                local,
                api_key: o.api_key.clone(),
                accounts: match &o.api_keys {
                    Some(file) => {
                        let accounts = relay::api::Accounts::open(file, &o.data_dir.join("accounts.redb"))?;
                        tracing::info!(keys = accounts.len(), "prepaid API keys");
                        if !o.settle.paying.pay {
                            tracing::warn!(
                                "--api-keys without --pay: this relay pays nobody, so only the keys' daily tokens count"
                            );
                        }
                        Some(Arc::new(accounts))
                    }
                    None => None,
                },
                permits: tokio::sync::Semaphore::new(api_concurrency),
                chain: gateway_chain.clone(),
                audit: o.audit.clone(),
                accuser: settlement.as_ref().and_then(|s| s.accuser()).map(Arc::new),
            };
            let web = relay::web::WebState {
                peer: peer.to_string(),
                addrs: relay::web::browser_addrs(&addrs),
                model: parts,
                traffic: store.traffic(),
                http_parts: !o.no_http_parts,
                chain: chain.clone(),
                royalties: match &chain {
                    Some(d) => Some(Arc::new(relay::settle::royalties::Royalties::new(d.clone())?)),
                    None => None,
                },
            };
            let web_dir = relay::web::find_web_dir(o.web_dir.clone());
            if web_dir.is_none() {
                tracing::warn!(
                    "web app not found (run `trunk build --release` or pass --web-dir): only the API is served"
                );
            }
            let app = relay::api::router_with(Arc::new(state), &o.http_limits)
                .merge(relay::web::router(Arc::new(web), web_dir))
                .merge(relay::metrics::router(metrics));
            let addr = relay::api::serve_with(o.http, app, &o.http_limits).await?;
            println!("http: http://{addr}");
        }
        println!("ready");
        tokio::signal::ctrl_c().await?;
        eprintln!("shutting down");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn sampling_options(o: &GenerateOpt) -> GenerateOptions {
    GenerateOptions {
        max_tokens: o.max_tokens,
        sampling: SamplingParams {
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            repetition_penalty: o.repeat_penalty,
            seed: o.seed,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    }
}

/// The prompt's tokens: `--prompt` as is, or with `--chat` through the model's template.
fn prompt_tokens(model: &ClientModel, o: &GenerateOpt) -> anyhow::Result<Vec<u32>> {
    let tokens =
        if o.chat { model.chat_prompt(&[ChatMessage::user(o.prompt.clone())]) } else { model.encode(&o.prompt) };
    tokens.context("preparing the prompt")
}

/// Prints each piece of text as it comes; a closed stdout (e.g. `| head`) must not abort the
/// generation with a panic.
fn print_piece(piece: &str) {
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
}

fn generate_swarm(o: GenerateOpt) -> anyhow::Result<ExitCode> {
    let path = match &o.model {
        Some(p) => p.clone(),
        None => relay::fetch::default_model()?,
    };
    let model = ClientModel::load(&path).context("loading the model")?;
    let prompt = prompt_tokens(&model, &o)?;
    let opts = sampling_options(&o);
    let rt = runtime()?;
    let (chain_opts, accuser) = rt.block_on(o.pay.open())?;
    let paying = chain_opts.payer.is_some();
    let (result, recoveries, cost) = rt.block_on(async {
        let handle = relay::swarm_client::connect(&o.swarm).await?;
        let mut chain = o.audit.apply(relay::swarm_client::chain(handle, &model, chain_opts));
        let r = model.generate(&mut chain, &prompt, &opts, print_piece).await;
        relay::swarm_client::audit(&mut chain, accuser.as_ref()).await;
        // The generation ended the route: what it paid includes the closing vouchers.
        anyhow::Ok((r, chain.recoveries().len(), chain.paid()))
    })?;
    // What was paid is said, whether the generation completed or not.
    let cost = || {
        if paying {
            eprintln!("cost: {} AIT", web_node::settle::format_ait(cost));
        }
    };
    let result = result.inspect_err(|_| cost()).context("generating through the swarm")?;
    report(&format!("swarm: model {}", model.id.short()), &format!(", re-routes: {recoveries}"), &result);
    cost();
    Ok(ExitCode::SUCCESS)
}

/// Ends the streamed text and prints the generation's numbers on stderr.
fn report(what: &str, extra: &str, g: &Generation) {
    println!();
    eprintln!(
        "{what}, prompt: {} tokens, generated: {} tokens ({:?}){extra}",
        g.prompt_tokens,
        g.tokens.len(),
        g.finish
    );
    eprintln!("prefill: {:.1} tok/s", g.prefill_tok_per_s());
    eprintln!("decode: {:.1} tok/s", g.decode_tok_per_s());
}

fn generate(o: GenerateOpt) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!o.pay.flags.pay, "--pay pays the servers of a swarm: add --swarm");
    let path = match &o.model {
        Some(p) => p.clone(),
        None => relay::fetch::default_model()?,
    };
    let local = LocalModel::load(&path, o.backend, None)?;
    let backend_name = local.backend_name();
    let LocalModel { client: model, mut chain, adapter } = local;
    let prompt = prompt_tokens(&model, &o)?;
    let opts = sampling_options(&o);
    let result: Generation = pollster::block_on(model.generate(&mut chain, &prompt, &opts, print_piece))
        .with_context(|| format!("generating with {}", path.display()))?;
    let adapter = adapter.map(|a| format!(" on {a}")).unwrap_or_default();
    report(&format!("backend: {backend_name}{adapter}"), "", &result);
    Ok(ExitCode::SUCCESS)
}
