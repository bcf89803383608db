//! Finding who seeds a model: the peers that provide its id (they hold its manifest) or a
//! part's root in the DHT, and of those the ones that answer, when asked over
//! `/ait/parts/1`, that they hold the part. Provider records outlive the nodes that made them,
//! so every provider is asked before it is counted, and one that does not answer in time is
//! left out. Portable: relays and tabs use the same lookups.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use libp2p::kad::RecordKey;
use libp2p::PeerId;

use super::node::{NetError, NodeHandle};
use super::parts::{fetch_have, fetch_manifest, FetchError};
use super::record::part_key;
use crate::model::{Manifest, ModelId};

/// How long a provider lookup waits for more answers after the first, and in all.
const LOOKUP: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));
/// Lookups before giving up on finding a provider (records may take a moment to spread).
const LOOKUP_TRIES: usize = 5;
/// How long a provider may take to answer which parts it holds (or with a manifest) before
/// it is left out.
pub const PROBE: Duration = Duration::from_secs(5);
/// How long more answers are awaited once every part has a holder.
const SETTLE: Duration = Duration::from_millis(500);

/// Peers other than this one that provide `key` in the DHT, asking again a few times (with
/// growing pauses) while there are none.
pub async fn providers(handle: &NodeHandle, key: RecordKey) -> Result<Vec<PeerId>, NetError> {
    let me = handle.peer_id();
    for attempt in 0..LOOKUP_TRIES {
        let found = handle.get_providers(key.clone(), LOOKUP.0, LOOKUP.1).await?;
        let peers: Vec<PeerId> = found.into_iter().filter(|p| *p != me).collect();
        if !peers.is_empty() {
            return Ok(peers);
        }
        if attempt + 1 < LOOKUP_TRIES {
            futures_timer::Delay::new(Duration::from_millis(500 << attempt.min(3))).await;
        }
    }
    Ok(Vec::new())
}

/// The manifest of model `id` from the first of `peers` to answer with it (all asked at
/// once, each within [`PROBE`]; each answer checked against the id). The error lists why
/// each peer failed.
pub async fn first_manifest(handle: &NodeHandle, peers: &[PeerId], id: &ModelId) -> Result<Manifest, Vec<String>> {
    let mut asking: FuturesUnordered<_> = peers
        .iter()
        .map(|&peer| async move {
            let got = super::timeout(PROBE, fetch_manifest(&mut handle.control(), peer, id)).await;
            got.unwrap_or_else(|| Err(FetchError::Stream { peer, what: "no answer".into() }))
        })
        .collect();
    let mut errors = Vec::new();
    while let Some(got) = asking.next().await {
        match got {
            Ok(m) => return Ok(m),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors)
}

/// The peers that answer, within [`PROBE`], that they hold each of `roots`: `also` (peers
/// the caller already knows, such as its relay) and the providers of every root, each asked
/// once about all of them. Roots no peer holds are missing from the map.
pub async fn holders(
    handle: &NodeHandle,
    roots: &[String],
    also: &[PeerId],
) -> Result<HashMap<String, Vec<PeerId>>, NetError> {
    let me = handle.peer_id();
    let mut candidates: Vec<PeerId> = also.iter().copied().filter(|p| *p != me).collect();
    let lookups = roots.iter().map(|r| providers(handle, part_key(r)));
    for found in futures::future::join_all(lookups).await {
        for p in found? {
            if !candidates.contains(&p) {
                candidates.push(p);
            }
        }
    }
    let mut asking: FuturesUnordered<_> = candidates
        .iter()
        .map(|&peer| async move { (peer, fetch_have(&mut handle.control(), peer, roots).await) })
        .collect();
    let mut out: HashMap<String, Vec<PeerId>> = HashMap::new();
    // Answers are awaited up to PROBE, and only SETTLE more once every part has a holder:
    // a provider that is gone (its dial times out) does not hold up the fetch.
    let mut deadline = web_time::Instant::now() + PROBE;
    loop {
        let left = deadline.saturating_duration_since(web_time::Instant::now());
        let Some(Some((peer, answer))) = super::timeout(left, asking.next()).await else {
            break;
        };
        match answer {
            Ok(held) => {
                for (root, _) in roots.iter().zip(held).filter(|(_, h)| *h) {
                    out.entry(root.clone()).or_default().push(peer);
                }
            }
            Err(e) => tracing::info!(%peer, "leaving out a provider: {e}"),
        }
        if roots.iter().all(|r| out.contains_key(r)) {
            deadline = deadline.min(web_time::Instant::now() + SETTLE);
        }
    }
    if !asking.is_empty() {
        tracing::info!("left out {} providers that did not answer in time", asking.len());
    }
    Ok(out)
}
