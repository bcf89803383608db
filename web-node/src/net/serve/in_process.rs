//! A node's own server, reached from its own clients (a relay's HTTP API and `ait chat`, a
//! tab's chat while it seeds) through an in-memory pipe instead of the network: the route's
//! hop through it costs no round trip and is never charged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::compat::TokioAsyncReadCompatExt;

use super::session::{BoxStream, LocalServer, Server};

/// Size of each direction's in-memory buffer, bytes.
const PIPE_BYTES: usize = 1 << 20;

/// Runs a future in the background (tokio's `spawn` natively, the page's `spawn_local` in a
/// tab).
pub type Spawn = Arc<dyn Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

/// [`Server`] as a [`LocalServer`]: each connection is a pipe whose far end the server serves
/// on a task of `spawn`.
pub struct InProcess {
    server: Arc<Server>,
    spawn: Spawn,
}

impl InProcess {
    /// `server`, its sessions run by `spawn`.
    pub fn new(server: Arc<Server>, spawn: Spawn) -> InProcess {
        InProcess { server, spawn }
    }
}

impl LocalServer for InProcess {
    fn connect(&self) -> BoxStream {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let server = self.server.clone();
        (self.spawn)(Box::pin(async move { server.serve_local(theirs.compat()).await }));
        Box::new(ours.compat())
    }
}
