//! `lying_relay`: a block server that lies about its computation, for the trust tests (issue
//! 17, test 6a across real processes). It serves `--blocks` of the model `--model` over the
//! real libp2p stack as `ait relay` does (the same `relay::p2p` node and `relay::serving::start`,
//! so it announces the model's id, meters, and signs a receipt for every step), but computes
//! them with the weights of `--weights` (another quantization, another model of the same
//! shape, or the model with a layer skipped), or answers with the `--lie` of what it computed
//! (noise, its input, a stale position: [`ait_tests::lying_backend`]). It signs its answers,
//! as a node that lies and stands by it would.
//!
//! Test-only: it is not part of `ait`, and no flag of `ait` and nothing on the network makes
//! a relay lie. It prints the lines of `ait relay` that `ait_tests::procs::Relay` reads
//! (`peer id:`, `listening:`, `serving:`, `ready`) and has no HTTP API.
//!
//! Usage: `lying_relay --data-dir DIR --model MODEL.gguf (--weights OTHER.gguf | --lie LIE)
//! --blocks A..B [--host IP] [--port N] [--bootstrap ADDR]... [--http none]` and `ait relay`'s
//! serving flags (`--backend`, the session limits). Logs go to stderr under `RUST_LOG`.

use std::net::IpAddr;
use std::path::PathBuf;

use ait_tests::lying_backend::{Lie, LyingBackend};
use clap::Parser;
use libp2p::Multiaddr;
use relay::serving::{Loaded, ServeOpt, Serving};
use web_node::model::{Manifest, ModelFile};
use web_node::net::node::Role;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A relay that serves `--blocks` of `--model` computed with the weights of `--weights`, or
/// answered with the `--lie` of what it computed.
#[derive(Parser)]
#[command(group = clap::ArgGroup::new("how").required(true).multiple(true).args(["weights", "lie"]))]
struct Opt {
    /// Its key, certificate and manifest cache.
    #[arg(long)]
    data_dir: PathBuf,
    /// The model file whose weights it computes with (`--model` is the one it claims).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// What it answers instead of what it computed.
    #[arg(long, value_enum)]
    lie: Option<Lie>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Relays to join.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Only `none`: it has no HTTP API.
    #[arg(long, default_value = "none", value_parser = ["none"])]
    http: String,
    /// What to serve, as `ait relay` takes it.
    #[command(flatten)]
    serve: ServeOpt,
}

fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut opt = Opt::parse();
    std::fs::create_dir_all(&opt.data_dir)?;
    let limits = opt.serve.limits(Default::default());
    // What it claims to serve; then it loads the blocks as `ait relay` would, of the file it
    // computes with.
    let model = opt.serve.model.clone().ok_or("--model is required")?;
    if let Some(weights) = &opt.weights {
        opt.serve.model = Some(weights.clone());
    }
    let claimed = ModelFile::open(&model)?;
    let manifest = Manifest::of_file(&claimed)?;
    let key = relay::p2p::load_or_create_key(&opt.data_dir)?;
    let cert = relay::p2p::load_or_create_cert(&opt.data_dir)?;
    let listen = relay::p2p::default_listen(opt.host, opt.port);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let runs = relay::serving::load_file(&opt.serve, &opt.data_dir).await?;
        let (handle, addrs) =
            relay::p2p::start(key.clone(), cert, Role::Server, &listen, true, &Default::default()).await?;
        println!("peer id: {}", key.public().to_peer_id());
        for a in &addrs {
            println!("listening: {a}");
        }
        relay::p2p::bootstrap(&handle, &opt.bootstrap).await?;
        let serving: Serving = match opt.lie {
            None => {
                let loaded = Loaded { manifest, file: claimed, ..runs };
                relay::serving::start(&handle, &key, loaded, limits).await?
            }
            Some(lie) => {
                let loaded = Loaded { backend: LyingBackend::new(runs.backend, lie), manifest, file: claimed };
                relay::serving::start(&handle, &key, loaded, limits).await?
            }
        };
        let c = serving.server.config();
        println!(
            "serving: blocks {}..{} of model {} on {} ({:.3} ms per block per token), lying",
            c.blocks.start, c.blocks.end, serving.model, c.backend, c.ms_per_block
        );
        println!("ready");
        // Serves until killed; `serving` withdraws the announcements when dropped.
        std::future::pending::<()>().await;
        drop(serving);
        Ok(())
    })
}
