//! `--pin-quota-gib`: a relay keeps whole copies of models published by creators its operator
//! trusts, so a model stays in the swarm after its creator's node goes away.
//!
//! Which models: only those whose card ([`web_node::model::card`]) was signed by a peer named
//! with `--pin-creator`. The allow-list is what keeps junk from filling the quota: anyone can
//! publish and sign a card, so pinning whatever appears would let one peer fill every relay's
//! disk. (Once creators register with stake on the chain, registered creators can be the
//! list.) How much: the models' parts together stay under the quota; a model that does not
//! fit is left out. The relay looks every [`SCAN_EVERY`] (and once at start), fetches each
//! new model's manifest, card and every part into its store (pinned: never evicted), and
//! seeds them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use web_node::model::ModelId;
use web_node::net::node::NodeHandle;

use crate::part_store::PartStore;

/// How often the swarm's models are looked at.
pub const SCAN_EVERY: Duration = Duration::from_secs(60);

/// Pinning flags.
#[derive(Clone, Debug, clap::Args)]
pub struct PinOpt {
    /// Disk for whole copies of other creators' models (in the part store, counted under
    /// --cache-gib), in GiB; 0 turns pinning off. Only models whose card a --pin-creator
    /// signed are pinned.
    #[arg(long, default_value_t = 0.0)]
    pub pin_quota_gib: f64,
    /// Pin the models this creator (the peer id that signed their card) publishes
    /// (repeatable).
    #[arg(long = "pin-creator", value_name = "PEER_ID")]
    pub pin_creators: Vec<PeerId>,
}

impl PinOpt {
    /// The quota in bytes, if pinning is on.
    fn quota(&self) -> Option<u64> {
        (self.pin_quota_gib > 0.0).then_some((self.pin_quota_gib * (1u64 << 30) as f64) as u64)
    }
}

/// Starts pinning on the tokio runtime, if the flags turn it on.
pub fn spawn(handle: &NodeHandle, store: &Arc<PartStore>, opt: &PinOpt) {
    let Some(quota) = opt.quota() else { return };
    if opt.pin_creators.is_empty() {
        tracing::warn!("--pin-quota-gib without --pin-creator: nothing is pinned");
        return;
    }
    let (handle, store) = (handle.clone(), store.clone());
    let creators: HashSet<String> = opt.pin_creators.iter().map(PeerId::to_string).collect();
    tokio::spawn(async move {
        let mut pinned: Vec<(ModelId, u64)> = Vec::new();
        loop {
            if let Err(e) = scan(&handle, &store, &creators, quota, &mut pinned).await {
                tracing::warn!("pinning: {e:#}");
            }
            tokio::time::sleep(SCAN_EVERY).await;
        }
    });
}

/// One look at the swarm: fetches, pins and seeds every model by a trusted creator that is not
/// pinned yet and fits under `quota` beside those that are.
async fn scan(
    handle: &NodeHandle,
    store: &Arc<PartStore>,
    creators: &HashSet<String>,
    quota: u64,
    pinned: &mut Vec<(ModelId, u64)>,
) -> anyhow::Result<()> {
    for m in crate::models::list(handle).await? {
        let trusted = m.creator.as_ref().is_some_and(|c| creators.contains(c));
        let Some(id) = ModelId::from_hex(&m.id).filter(|id| trusted && !pinned.iter().any(|(p, _)| p == id)) else {
            continue;
        };
        let used: u64 = pinned.iter().map(|(_, n)| n).sum();
        if used + m.bytes > quota {
            tracing::info!("model {} ({} bytes) does not fit the pin quota ({used} of {quota} used)", m.id, m.bytes);
            continue;
        }
        // A model that fails (its seeders gone mid-fetch) is tried again at the next look;
        // the others go ahead.
        match pin(handle, store, &id).await {
            Ok((parts, fetched)) => {
                pinned.push((id, m.bytes));
                crate::say(&format!("pinned model {}: {parts} parts, {fetched} bytes fetched", m.id));
            }
            Err(e) => tracing::warn!("pinning model {}: {e:#}", m.id),
        }
    }
    Ok(())
}

/// Fetches model `id`'s manifest, card and every part into `store`, pinned, and seeds them.
/// Returns the number of parts and the bytes fetched.
async fn pin(handle: &NodeHandle, store: &Arc<PartStore>, id: &ModelId) -> anyhow::Result<(usize, u64)> {
    let manifest = crate::swarm_model::manifest(handle, store, id).await?;
    let parts = crate::swarm_model::wanted(&manifest, 0..manifest.n_layers)?;
    let roots: Vec<String> = parts.iter().map(|(_, r)| r.root.clone()).collect();
    store.pin(roots.iter().cloned());
    let mut fetched = 0;
    // One part at a time: the verified parts it returns are dropped before the next, so a
    // large model never sits in memory whole.
    for part in parts.chunks(1) {
        fetched += crate::swarm_model::fetch(handle, store, part).await?.0;
    }
    crate::seed::announce(handle, &roots, &[*id]).await?;
    Ok((roots.len(), fetched))
}
