//! The fraud reports a relay's tribunal cases rest on, kept on disk (`evidence.redb` in its
//! data directory) and shown to peers that ask by id (`/ait/evidence/1`,
//! [`web_node::net::evidence`]): a judge keeps each report it signed a verdict on, an accused
//! or a juror each report it fetched for a case, so that the jurors of an appeal days later
//! can recompute what the judges did.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use web_node::net::evidence::EvidenceInbox;
use web_node::net::node::NodeHandle;
use web_node::trust::FraudReport;

/// Reports kept; the oldest goes first beyond this.
pub const MAX_KEPT: u64 = 1_000;

/// Report id → (unix seconds kept, encoded report).
const REPORTS: TableDefinition<&[u8; 32], (u64, &[u8])> = TableDefinition::new("reports");

/// The evidence database failed.
#[derive(Debug, thiserror::Error)]
#[error("evidence store: {0}")]
pub struct EvidenceStoreError(#[from] redb::Error);

fn store_error<E: Into<redb::Error>>(e: E) -> EvidenceStoreError {
    EvidenceStoreError(e.into())
}

/// Reports kept by id, at most [`MAX_KEPT`].
pub struct EvidenceStore {
    db: redb::Database,
}

impl EvidenceStore {
    /// The store in the database at `path` (created if missing).
    pub fn open(path: &Path) -> Result<EvidenceStore, EvidenceStoreError> {
        let db = redb::Database::create(path).map_err(store_error)?;
        let txn = db.begin_write().map_err(store_error)?;
        txn.open_table(REPORTS).map_err(store_error)?;
        txn.commit().map_err(store_error)?;
        Ok(EvidenceStore { db })
    }

    /// Keeps `report` (again: its time is renewed), dropping the oldest beyond [`MAX_KEPT`].
    pub fn keep(&self, report: &FraudReport) -> Result<(), EvidenceStoreError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let bytes = report.encode();
        let txn = self.db.begin_write().map_err(store_error)?;
        {
            let mut table = txn.open_table(REPORTS).map_err(store_error)?;
            table.insert(&report.id(), (now, bytes.as_slice())).map_err(store_error)?;
            while table.len().map_err(store_error)? > MAX_KEPT {
                let mut oldest: Option<(u64, [u8; 32])> = None;
                for entry in table.iter().map_err(store_error)? {
                    let (id, value) = entry.map_err(store_error)?;
                    let at = value.value().0;
                    if oldest.is_none_or(|(t, _)| at < t) {
                        oldest = Some((at, *id.value()));
                    }
                }
                let Some((_, id)) = oldest else { break };
                table.remove(&id).map_err(store_error)?;
            }
        }
        txn.commit().map_err(store_error)
    }

    /// The encoded report `id`, if kept.
    pub fn get(&self, id: &[u8; 32]) -> Result<Option<Vec<u8>>, EvidenceStoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(REPORTS).map_err(store_error)?;
        let held = table.get(id).map_err(store_error)?.map(|v| v.value().1.to_vec());
        Ok(held)
    }

    /// Answers its node's peers' requests for reports, until the node stops.
    pub fn serve(self: Arc<Self>, node: &NodeHandle) -> anyhow::Result<()> {
        let mut inbox = EvidenceInbox::new(&mut node.control())?;
        tokio::spawn(async move {
            while let Some(mut request) = inbox.next().await {
                let store = self.clone();
                tokio::spawn(async move {
                    let held = match request.read().await {
                        Ok(id) => store.get(&id).unwrap_or_else(|e| {
                            tracing::warn!("{e}");
                            None
                        }),
                        Err(why) => {
                            tracing::info!(peer = %request.peer, "evidence request refused: {why}");
                            None
                        }
                    };
                    metrics::counter!("ait_evidence_requests_total", "held" => if held.is_some() { "yes" } else { "no" })
                        .increment(1);
                    request.answer(held.as_deref()).await;
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_id_is_not_held_and_the_store_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.redb");
        let store = EvidenceStore::open(&path).unwrap();
        assert_eq!(store.get(&[7; 32]).unwrap(), None);
        drop(store);
        assert_eq!(EvidenceStore::open(&path).unwrap().get(&[7; 32]).unwrap(), None);
    }
}
