//! Announcing a server in the DHT and withdrawing it.
//!
//! A serving node provides [`block_key`] for each block it holds and [`directory_key`], and
//! stores its signed [`ServerRecord`] under [`server_key`] (found by clients routing one model)
//! and [`peer_key`] (found by anyone listing the network, see
//! [`directory`](crate::net::directory)). [`announce`] re-signs the record every
//! [`RECORD_REFRESH`] with a validity of [`RECORD_VALIDITY`], so a node that goes away drops
//! out within a minute and a half. Portable: native relays and browser tabs share it.

use std::time::Duration;

use futures::future::{select, Either};
use libp2p::identity::Keypair;

use super::session::Server;
use crate::net::node::{NetError, NodeHandle};
use crate::net::record::{block_key, directory_key, peer_key, server_key, RecordError, ServerRecord};

/// How often the server record is re-signed and republished.
pub const RECORD_REFRESH: Duration = Duration::from_secs(30);
/// How long a server record stays valid after it is signed.
pub const RECORD_VALIDITY: Duration = Duration::from_secs(90);

/// Why an announcement failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The node is gone.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The record could not be signed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Signs the server's current record and stores it under its model key and its peer key.
pub async fn publish(handle: &NodeHandle, key: &Keypair, server: &Server) -> Result<(), AnnounceError> {
    let c = server.config();
    let peer = key.public().to_peer_id();
    let record = ServerRecord {
        peer: peer.to_string(),
        addrs: handle.addresses().await?.iter().map(|a| a.to_string()).collect(),
        expires_ms: crate::net::unix_ms() + RECORD_VALIDITY.as_millis() as u64,
        status: server.status(),
    };
    let signed = record.sign(key)?;
    handle.put_record(server_key(&c.model, &peer), signed.clone()).await?;
    handle.put_record(peer_key(&peer), signed).await?;
    Ok(())
}

/// Provides the server's keys and keeps its record fresh until `stop` resolves; then stops
/// providing. Errors while republishing are logged and retried at the next refresh.
pub async fn announce(
    handle: NodeHandle,
    key: Keypair,
    server: std::sync::Arc<Server>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AnnounceError> {
    let mut keys: Vec<_> = server.config().blocks.clone().map(|b| block_key(&server.config().model, b)).collect();
    keys.push(directory_key());
    handle.provide(keys.clone()).await?;
    let mut stop = std::pin::pin!(stop);
    loop {
        if let Err(e) = publish(&handle, &key, &server).await {
            tracing::warn!("publishing the server record: {e}");
        }
        match select(stop.as_mut(), futures_timer::Delay::new(RECORD_REFRESH)).await {
            Either::Left(_) => break,
            Either::Right(_) => {}
        }
    }
    handle.stop_providing(keys).await?;
    Ok(())
}
