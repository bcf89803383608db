//! Incoming streams of one protocol, admitted under a [`KeyedLimit`] of streams at once in
//! all and per peer (a stream beyond it is closed at once): the inboxes of fraud reports
//! ([`super::fraud`]) and evidence requests ([`super::evidence`]).

use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};

use super::keyed_limit::{KeyedLimit, Ticket};

/// A protocol's incoming streams, admitted.
pub struct AdmittedStreams {
    incoming: libp2p_stream::IncomingStreams,
    open: KeyedLimit<PeerId>,
    what: &'static str,
}

/// One admitted stream: it counts against the limit until its ticket is dropped.
pub struct Admitted {
    /// Who opened it.
    pub peer: PeerId,
    /// The stream.
    pub stream: libp2p::Stream,
    /// Its place under the limit.
    pub ticket: Ticket<PeerId>,
}

impl AdmittedStreams {
    /// Takes `protocol`'s streams on `control`: `at_once` in all (from as many peers), and
    /// `per_peer` from one peer; `what` names them in logs.
    pub fn new(
        control: &mut libp2p_stream::Control,
        protocol: StreamProtocol,
        at_once: usize,
        per_peer: usize,
        what: &'static str,
    ) -> Result<AdmittedStreams, libp2p_stream::AlreadyRegistered> {
        let incoming = control.accept(protocol)?;
        Ok(AdmittedStreams { incoming, open: KeyedLimit::new(at_once, per_peer).with_max_keys(at_once), what })
    }

    /// The next admitted stream; `None` when the node stopped.
    pub async fn next(&mut self) -> Option<Admitted> {
        loop {
            let (peer, stream) = self.incoming.next().await?;
            match self.open.admit(peer, false) {
                Ok(ticket) => return Some(Admitted { peer, stream, ticket }),
                Err(over) => tracing::debug!(%peer, what = self.what, "stream closed: {over}"),
            }
        }
    }
}
