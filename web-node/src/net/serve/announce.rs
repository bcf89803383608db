//! Announcing a server in the DHT and withdrawing it.
//!
//! A serving node provides [`block_key`] for each block it holds and [`directory_key`], and
//! stores its signed [`ServerRecord`] under [`server_key`] (found by clients routing one model)
//! and [`peer_key`] (found by anyone listing the network, see
//! [`directory`](crate::net::directory)). [`announce`] re-signs the record every
//! [`RECORD_REFRESH`] with a validity of [`RECORD_VALIDITY`], so a node that goes away drops
//! out within a minute and a half. Portable: native relays and browser tabs share it.
//!
//! A server whose device keeps running out of memory refuses every session, so it should not
//! draw clients: [`Health`] is the signal. The compute loop reports each result to it; after
//! [`Health::threshold`] out-of-memory errors in a row (or a lost device) the server is
//! unhealthy, and [`announce_while_healthy`] stops providing its keys and lets its record
//! expire, until a success or the end of a cool-down makes it healthy again.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures::future::{select, Either};
use futures::task::AtomicWaker;
use libp2p::identity::Keypair;
use web_time::Instant;

use super::session::Server;
use crate::engine::EngineError;
use crate::net::node::{NetError, NodeHandle};
use crate::net::record::{
    block_key, directory_key, peer_key, server_key, RecordError, ServerRecord, MAX_ADDRS, MAX_ADDR_LEN,
};

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

/// The addresses a record carries: readers refuse records with more than [`MAX_ADDRS`]
/// addresses or any longer than [`MAX_ADDR_LEN`], so those are dropped here, keeping the
/// first [`MAX_ADDRS`] in the node's order.
fn announced_addrs(addrs: &[libp2p::Multiaddr]) -> Vec<String> {
    addrs.iter().map(|a| a.to_string()).filter(|a| a.len() <= MAX_ADDR_LEN).take(MAX_ADDRS).collect()
}

/// Signs the server's current record and stores it under its model key and its peer key.
pub async fn publish(handle: &NodeHandle, key: &Keypair, server: &Server) -> Result<(), AnnounceError> {
    let c = server.config();
    let peer = key.public().to_peer_id();
    let record = ServerRecord {
        peer: peer.to_string(),
        addrs: announced_addrs(&handle.addresses().await?),
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
    server: Arc<Server>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AnnounceError> {
    announce_while_healthy(handle, key, server, Health::new(), stop).await
}

/// [`announce`], withdrawn while `health` says the server cannot take sessions: it stops
/// providing its keys and republishing its record (which expires within
/// [`RECORD_VALIDITY`]), and announces again as soon as it is healthy (checked when `health`
/// changes and at every [`RECORD_REFRESH`], which ends a cool-down).
pub async fn announce_while_healthy(
    handle: NodeHandle,
    key: Keypair,
    server: Arc<Server>,
    health: Health,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AnnounceError> {
    let mut keys: Vec<_> = server.config().blocks.clone().map(|b| block_key(&server.config().model, b)).collect();
    keys.push(directory_key());
    let mut providing = false;
    let mut stop = std::pin::pin!(stop);
    loop {
        let healthy = health.is_healthy();
        if healthy {
            if !providing {
                handle.provide(keys.clone()).await?;
                providing = true;
            }
            if let Err(e) = publish(&handle, &key, &server).await {
                tracing::warn!("publishing the server record: {e}");
            }
        } else if providing {
            tracing::warn!("withdrawing the server from the DHT: its device is out of memory or lost");
            handle.stop_providing(keys.clone()).await?;
            providing = false;
        }
        let wake = select(futures_timer::Delay::new(RECORD_REFRESH), health.changed(healthy));
        if let Either::Left(_) = select(stop.as_mut(), wake).await {
            break;
        }
    }
    if providing {
        handle.stop_providing(keys).await?;
    }
    Ok(())
}

/// Whether a server can take sessions, as its compute results show; cheap to clone, all
/// clones share one state. The compute loop calls [`Health::record`] with each result, the
/// announcer reads [`Health::is_healthy`]. Only out-of-memory errors and a lost device count:
/// bad requests say nothing about the server.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<HealthState>,
    /// The announcer waiting for a change ([`Health::changed`]).
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Out-of-memory errors since the last success.
    ooms: u32,
    /// Unhealthy until then (a cool-down after [`Health::threshold`] errors in a row).
    until: Option<Instant>,
    /// The device is lost: unhealthy for good.
    lost: bool,
}

impl Default for Health {
    /// Unhealthy after 3 out-of-memory errors in a row, for a cool-down of 60 s.
    fn default() -> Self {
        Self::with_limits(3, Duration::from_secs(60))
    }
}

impl Health {
    /// A healthy server with the default limits (see [`Health::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Unhealthy after `threshold` (at least 1) out-of-memory errors in a row, for `cooldown`
    /// after the last of them.
    pub fn with_limits(threshold: u32, cooldown: Duration) -> Self {
        let inner = HealthInner {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(HealthState::default()),
            waker: AtomicWaker::new(),
        };
        Health { inner: Arc::new(inner) }
    }

    /// Out-of-memory errors in a row that make the server unhealthy.
    pub fn threshold(&self) -> u32 {
        self.inner.threshold
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one compute result (an open or a step): a success makes the server healthy, an
    /// out-of-memory error counts towards the threshold (and, past it, restarts the
    /// cool-down), a lost device makes it unhealthy for good; other errors change nothing.
    pub fn record<T>(&self, result: &Result<T, EngineError>) {
        let before = self.is_healthy();
        {
            let mut s = self.state();
            match result {
                Ok(_) => {
                    s.ooms = 0;
                    s.until = None;
                }
                Err(EngineError::OutOfMemory { .. }) => {
                    s.ooms = s.ooms.saturating_add(1);
                    if s.ooms >= self.inner.threshold {
                        s.until = Some(Instant::now() + self.inner.cooldown);
                    }
                }
                Err(EngineError::DeviceLost(_)) => s.lost = true,
                Err(_) => {}
            }
        }
        if self.is_healthy() != before {
            tracing::info!(healthy = !before, "server health changed");
            self.inner.waker.wake();
        }
    }

    /// Whether the server should be announced: no lost device, and fewer than
    /// [`Health::threshold`] out-of-memory errors in a row or their cool-down over.
    pub fn is_healthy(&self) -> bool {
        let s = self.state();
        !s.lost && s.until.is_none_or(|t| Instant::now() >= t)
    }

    /// Resolves once [`Health::is_healthy`] differs from `seen`, as reported by
    /// [`Health::record`] (a cool-down ending is only seen by the next check). One waiter at a
    /// time: the announcer.
    pub fn changed(&self, seen: bool) -> impl std::future::Future<Output = ()> + Unpin + '_ {
        futures::future::poll_fn(move |cx| {
            self.inner.waker.register(cx.waker());
            if self.is_healthy() != seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn announced_addresses_fit_what_readers_accept() {
        let long: libp2p::Multiaddr = format!("/dns4/{}.example/tcp/1", "a".repeat(300)).parse().unwrap();
        let mut addrs = vec![long];
        addrs.extend((0..100u16).map(|p| format!("/ip4/1.2.3.4/tcp/{p}").parse().unwrap()));
        let out = announced_addrs(&addrs);
        assert_eq!(out.len(), MAX_ADDRS);
        assert!(out.iter().all(|a| a.len() <= MAX_ADDR_LEN && a.starts_with("/ip4/")));
    }

    fn oom() -> Result<(), EngineError> {
        Err(EngineError::OutOfMemory { what: "kv cache".into(), bytes: Some(1 << 30) })
    }

    /// Issue 11 (item 9): repeated out-of-memory errors withdraw the server; one success, or
    /// the end of the cool-down, brings it back; bad requests and single errors do not count.
    #[test]
    fn repeated_oom_makes_the_server_unhealthy_until_a_success() {
        let h = Health::with_limits(2, Duration::from_secs(3600));
        assert!(h.is_healthy());
        h.record(&oom());
        h.record(&Err::<(), _>(EngineError::UnknownSession(7)));
        assert!(h.is_healthy(), "one out-of-memory error is not a pattern");
        let waiter = h.clone();
        let mut changed = waiter.changed(true);
        assert!((&mut changed).now_or_never().is_none());
        h.record(&oom());
        assert!(!h.is_healthy(), "two in a row withdraw the server");
        assert!(changed.now_or_never().is_some(), "the announcer is woken");
        h.record(&Ok(()));
        assert!(h.is_healthy(), "a success brings it back");

        let short = Health::with_limits(1, Duration::ZERO);
        short.record(&oom());
        assert!(short.is_healthy(), "the cool-down is over");

        let lost = Health::new();
        lost.record(&Err::<(), _>(EngineError::DeviceLost("driver reset".into())));
        lost.record(&Ok(()));
        assert!(!lost.is_healthy(), "a lost device stays withdrawn");
    }
}
