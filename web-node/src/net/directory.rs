//! The servers of the network, as any node (a tab's model picker and network view, a seeder
//! choosing what to serve) lists them from the DHT.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;

use super::node::{NetError, NodeHandle};
use super::record::{directory_key, peer_key, ServerRecord};

/// The servers of the network: providers of [`directory_key`] whose record under
/// [`peer_key`] verifies and has not expired, one per peer (the latest).
pub async fn list(handle: &NodeHandle, limit: Duration) -> Result<Vec<ServerRecord>, NetError> {
    let settle = Duration::from_millis(300);
    let peers: HashSet<PeerId> = handle.get_providers(directory_key(), settle, limit).await?;
    let queries = peers.into_iter().map(|peer| async move {
        let copies = handle.get_records(peer_key(&peer), settle, limit).await.unwrap_or_default();
        let now = super::unix_ms();
        copies.iter().filter_map(|b| ServerRecord::verify_any(b, &peer, now).ok()).max_by_key(|r| r.expires_ms)
    });
    let mut out: Vec<ServerRecord> = futures::future::join_all(queries).await.into_iter().flatten().collect();
    out.sort_by(|a, b| (&a.status.model, a.status.start, &a.peer).cmp(&(&b.status.model, b.status.start, &b.peer)));
    Ok(out)
}
