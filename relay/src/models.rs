//! `ait models`: the models in the swarm. Every seeding node provides the seeders' key in the
//! DHT; each is asked which models' manifests it holds, each model's manifest is fetched once
//! (and checked against its id) with its card (signed by its creator: name, labels, payout),
//! and each of its seeders is asked which of the model's parts it holds, to count seeders and
//! complete copies.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use web_node::model::card::ModelCard;
use web_node::model::{Manifest, ModelId};
use web_node::net::node::NodeHandle;
use web_node::net::parts::{fetch_card, fetch_have, fetch_manifest, fetch_models};
use web_node::net::record::seeders_key;

use web_node::net::seeders::{providers, PROBE};

/// `ait models` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelsOpt {
    /// Join the swarm through this relay (repeatable).
    #[arg(long, value_name = "MULTIADDR", required = true)]
    pub swarm: Vec<Multiaddr>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One model in the swarm.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Its id (hex): what `ait relay --model ID` takes.
    pub id: String,
    /// Architecture.
    pub arch: String,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Context length.
    pub context: usize,
    /// Bytes of all its parts (0 for a model without parts).
    pub bytes: u64,
    /// Nodes that hold its manifest and answered.
    pub seeders: usize,
    /// Complete copies in the swarm: the fewest holders of any of its parts.
    pub copies: usize,
    /// Its card, from the first holder that sent one that opens (signed, about this model).
    pub card: Option<ModelCard>,
    /// The peer whose key signed the card: the creator.
    pub creator: Option<String>,
}

/// Answers awaited within `PROBE` from each of `peers`.
async fn ask_all<T, F, Fut>(peers: &[PeerId], ask: F) -> Vec<(PeerId, T)>
where
    F: Fn(PeerId) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut asking: FuturesUnordered<_> = peers
        .iter()
        .map(|&p| {
            let fut = ask(p);
            async move { (p, tokio::time::timeout(PROBE, fut).await.ok().flatten()) }
        })
        .collect();
    let mut out = Vec::new();
    while let Some((p, got)) = asking.next().await {
        if let Some(v) = got {
            out.push((p, v));
        }
    }
    out
}

/// The models the swarm's seeders hold.
pub async fn list(handle: &NodeHandle) -> anyhow::Result<Vec<Listed>> {
    let seeders = providers(handle, seeders_key()).await?;
    let held = ask_all(&seeders, |p| async move { fetch_models(&mut handle.control(), p).await.ok() }).await;
    let mut by_model: HashMap<ModelId, Vec<PeerId>> = HashMap::new();
    for (peer, ids) in held {
        for id in ids {
            by_model.entry(id).or_default().push(peer);
        }
    }
    let mut out = Vec::new();
    for (id, holders) in by_model {
        let mut manifest: Option<Manifest> = None;
        for &p in &holders {
            if let Ok(Ok(m)) = tokio::time::timeout(PROBE, fetch_manifest(&mut handle.control(), p, &id)).await {
                manifest = Some(m);
                break;
            }
        }
        let Some(m) = manifest else {
            tracing::warn!("no holder of model {} sent its manifest", id.to_hex());
            continue;
        };
        let id_ref = &id;
        let cards = ask_all(&holders, |p| async move { fetch_card(&mut handle.control(), p, id_ref).await.ok() }).await;
        let (card, creator) = match cards.into_iter().next() {
            Some((_, (card, creator, _))) => (Some(card), Some(creator.to_string())),
            None => (None, None),
        };
        let roots: Vec<String> = m.parts.iter().flat_map(|p| p.all()).map(|r| r.root.clone()).collect();
        let bytes = m.parts.as_ref().map_or(0, |p| p.all().map(|r| r.size).sum());
        let roots_ref = &roots;
        let have =
            ask_all(&holders, |p| async move { fetch_have(&mut handle.control(), p, roots_ref).await.ok() }).await;
        let copies = match roots.is_empty() {
            true => 0,
            false => (0..roots.len()).map(|i| have.iter().filter(|(_, h)| h[i]).count()).min().unwrap_or(0),
        };
        out.push(Listed {
            id: id.to_hex(),
            arch: m.arch.clone(),
            layers: m.n_layers,
            hidden: m.hidden,
            context: m.max_seq_len,
            bytes,
            seeders: holders.len(),
            copies,
            card,
            creator,
        });
    }
    out.sort_by(|a, b| b.seeders.cmp(&a.seeders).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// `ait models`.
pub fn run(o: ModelsOpt) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let models = rt.block_on(async {
        let handle = crate::swarm_client::connect(&o.swarm).await?;
        // Let the DHT settle on the peers the bootstrap found.
        tokio::time::sleep(Duration::from_millis(200)).await;
        list(&handle).await
    })?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no models found in the swarm");
        return Ok(());
    }
    println!(
        "{:<64}  {:<8} {:>6} {:>6} {:>7} {:>9} {:>7} {:>6}",
        "id", "arch", "layers", "hidden", "context", "MB", "seeders", "copies"
    );
    for m in models {
        println!(
            "{:<64}  {:<8} {:>6} {:>6} {:>7} {:>9.1} {:>7} {:>6}",
            m.id,
            m.arch,
            m.layers,
            m.hidden,
            m.context,
            m.bytes as f64 / 1e6,
            m.seeders,
            m.copies
        );
        match (&m.card, &m.creator) {
            (Some(c), Some(by)) => {
                let mut labels = vec![c.quantization.clone(), format!("{:.2} B parameters", c.parameters as f64 / 1e9)];
                labels.extend(c.license.iter().map(|l| format!("license {l}")));
                labels.extend((!c.languages.is_empty()).then(|| c.languages.join("/")));
                labels.extend((!c.tags.is_empty()).then(|| format!("tags {}", c.tags.join(","))));
                println!("  {:?} by {by}: {}", c.name, labels.join("; "));
            }
            _ => println!("  (no card)"),
        }
    }
    Ok(())
}
