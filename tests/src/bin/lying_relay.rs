//! `lying_relay`: a block server that lies about its computation, for the trust tests (issue
//! 17, test 6a across real processes). It serves `--blocks` of the model `--model` over the
//! real libp2p stack as `ait relay` does (the same `relay::p2p` node and `relay::serving::start`,
//! so it announces the model's id, meters, and signs a receipt for every step), but computes
//! them with the weights of `--weights`: another quantization, another model of the same
//! shape, or the model with a layer skipped. It signs what it computed, as a node that lies
//! and stands by it would.
//!
//! Test-only: it is not part of `ait`, and no flag of `ait` and nothing on the network makes
//! a relay lie. It prints the lines of `ait relay` that `ait_tests::procs::Relay` reads
//! (`peer id:`, `listening:`, `serving:`, `ready`) and has no HTTP API.
//!
//! Usage: `lying_relay --data-dir DIR --model MODEL.gguf --weights OTHER.gguf --blocks A..B
//! [--host IP] [--port N] [--backend cpu|wgpu|auto] [--bootstrap ADDR]... [--http none]`

use std::collections::HashMap;
use std::path::PathBuf;

use relay::local::BackendKind;
use relay::serving::Loaded;
use web_node::model::{Manifest, ModelFile};
use web_node::net::node::Role;
use web_node::net::serve::{parse_blocks, ServeLimits};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The flags it takes (`--http` only as `none`: it has no HTTP API).
const FLAGS: [&str; 9] = ["data-dir", "host", "port", "backend", "model", "weights", "blocks", "bootstrap", "http"];

/// The flags given, each with every value it was given.
struct Flags(HashMap<String, Vec<String>>);

impl Flags {
    /// Reads `--flag value` pairs.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Flags, Error> {
        let mut flags: HashMap<String, Vec<String>> = HashMap::new();
        while let Some(flag) = args.next() {
            let name = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}"))?;
            if !FLAGS.contains(&name) {
                return Err(format!("unknown flag {flag}").into());
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            flags.entry(name.to_string()).or_default().push(value);
        }
        Ok(Flags(flags))
    }

    /// The value of `--name`, else `default`.
    fn get(&self, name: &str, default: Option<&str>) -> Result<String, Error> {
        match (self.0.get(name).and_then(|v| v.last()), default) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(format!("--{name} is required").into()),
        }
    }
}

fn main() -> Result<(), Error> {
    let flags = Flags::parse(std::env::args().skip(1))?;
    if flags.get("http", Some("none"))? != "none" {
        return Err("--http: this relay has no HTTP API (only `--http none`)".into());
    }
    let data_dir = PathBuf::from(flags.get("data-dir", None)?);
    std::fs::create_dir_all(&data_dir)?;
    let backend = match flags.get("backend", Some("cpu"))?.as_str() {
        "cpu" => BackendKind::Cpu,
        "wgpu" => BackendKind::Wgpu,
        "auto" => BackendKind::Auto,
        other => return Err(format!("--backend {other}: cpu, wgpu or auto").into()),
    };
    // What it claims to serve, and what it runs.
    let model = ModelFile::open(&PathBuf::from(flags.get("model", None)?))?;
    let manifest = Manifest::of_file(&model)?;
    let weights = ModelFile::open(&PathBuf::from(flags.get("weights", None)?))?;
    let blocks = parse_blocks(&flags.get("blocks", None)?, model.config().n_layers)?;
    let gpu = relay::local::pick_gpu(backend)?;
    let loaded = Loaded { backend: relay::local::load_backend(&weights, gpu.as_ref(), blocks)?, manifest, file: model };

    let key = relay::p2p::load_or_create_key(&data_dir)?;
    let cert = relay::p2p::load_or_create_cert(&data_dir)?;
    let listen = relay::p2p::default_listen(
        flags.get("host", Some("127.0.0.1"))?.parse()?,
        flags.get("port", Some("0"))?.parse()?,
    );
    let bootstrap = flags.0.get("bootstrap").into_iter().flatten().map(|a| a.parse()).collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let (handle, addrs) =
            relay::p2p::start(key.clone(), cert, Role::Server, &listen, true, &Default::default()).await?;
        println!("peer id: {}", key.public().to_peer_id());
        for a in &addrs {
            println!("listening: {a}");
        }
        relay::p2p::bootstrap(&handle, &bootstrap).await?;
        let serving = relay::serving::start(&handle, &key, loaded, ServeLimits::default()).await?;
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
