//! Waiting with a limit, portably (no tokio timers: the wasm build has none). Shared by the
//! swarm ([`crate::net`]) and settlement ([`crate::settle`]), which use nothing else of each
//! other.

use std::time::Duration;

/// Waits for `fut` at most `limit`; `None` on timeout.
pub async fn timeout<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    use futures::future::{select, Either};
    let fut = std::pin::pin!(fut);
    match select(fut, futures_timer::Delay::new(limit)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}
