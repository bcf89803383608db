//! The fraud reports a relay's tribunal cases rest on, kept on disk (`evidence.redb` in its
//! data directory) and shown to peers that ask by id (`/ait/evidence/1`,
//! [`web_node::net::evidence`]): a judge keeps each report it signed a verdict on, an accused
//! or a juror each report it fetched for a case, so that the jurors of an appeal days later
//! can recompute what the judges did. The same database holds the tribunal cases this node
//! is a party to and the next block whose events its duties read ([`crate::settle::duty`]):
//! a restarted relay goes on where it stopped, and a report an open case names is never
//! dropped for newer ones.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use web_node::net::evidence::EvidenceInbox;
use web_node::net::node::NodeHandle;
use web_node::trust::FraudReport;

/// Reports kept; beyond this, the oldest that no open case names goes first.
pub const MAX_KEPT: u64 = 1_000;

/// Report id → (Unix milliseconds kept, encoded report).
const REPORTS: TableDefinition<&[u8; 32], (u64, &[u8])> = TableDefinition::new("reports");

/// (Unix milliseconds kept, report id): the reports oldest first, read without their bodies.
const KEPT_AT: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("kept_at");

/// A case's key: (report id, accused address).
type CaseKey<'a> = (&'a [u8; 32], &'a [u8; 20]);

/// A case's key → (this node's part, the seed block once appealed): the open cases this node
/// is a party to.
const CASES: TableDefinition<CaseKey, (u8, Option<u64>)> = TableDefinition::new("cases");

/// [`NEXT_BLOCK`] → the next block whose tribunal events the duties read; [`SCOPE`] → what
/// the cases were read from (the chain, the tribunal and the wallet).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const NEXT_BLOCK: &str = "next_block";
const SCOPE: &str = "scope";

/// An open tribunal case as kept: the report, the accused, this node's part (as
/// [`crate::settle::duty::Party`] numbers it) and the seed block once appealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptCase {
    /// The report's id.
    pub report: [u8; 32],
    /// The accused's address.
    pub accused: [u8; 20],
    /// This node's part.
    pub party: u8,
    /// The seed block of the jury draw, once the case is appealed.
    pub seed: Option<u64>,
}

/// The evidence database failed.
#[derive(Debug, thiserror::Error)]
#[error("evidence store: {0}")]
pub struct EvidenceStoreError(#[from] redb::Error);

fn store_error<E: Into<redb::Error>>(e: E) -> EvidenceStoreError {
    EvidenceStoreError(e.into())
}

/// Reports kept by id, at most [`MAX_KEPT`] besides those open cases name, and those cases.
pub struct EvidenceStore {
    db: redb::Database,
    limit: u64,
}

impl EvidenceStore {
    /// The store in the database at `path` (created if missing).
    pub fn open(path: &Path) -> Result<EvidenceStore, EvidenceStoreError> {
        Self::open_keeping(path, MAX_KEPT)
    }

    /// The store at `path`, keeping `limit` reports besides those open cases name.
    fn open_keeping(path: &Path, limit: u64) -> Result<EvidenceStore, EvidenceStoreError> {
        let db = redb::Database::create(path).map_err(store_error)?;
        let txn = db.begin_write().map_err(store_error)?;
        txn.open_table(REPORTS).map_err(store_error)?;
        txn.open_table(KEPT_AT).map_err(store_error)?;
        txn.open_table(CASES).map_err(store_error)?;
        txn.open_table(META).map_err(store_error)?;
        txn.commit().map_err(store_error)?;
        Ok(EvidenceStore { db, limit })
    }

    /// Keeps `report` (again: its time is renewed).
    pub fn keep(&self, report: &FraudReport) -> Result<(), EvidenceStoreError> {
        self.keep_encoded(&report.id(), &report.encode())
    }

    /// Keeps the encoded report `id`, then drops the oldest reports that no open case names
    /// while more than the limit of those are kept (reading the time index and the cases,
    /// not the reports).
    fn keep_encoded(&self, id: &[u8; 32], bytes: &[u8]) -> Result<(), EvidenceStoreError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let txn = self.db.begin_write().map_err(store_error)?;
        {
            let mut reports = txn.open_table(REPORTS).map_err(store_error)?;
            let mut kept_at = txn.open_table(KEPT_AT).map_err(store_error)?;
            if let Some(was) = reports.insert(id, (now, bytes)).map_err(store_error)?.map(|v| v.value().0) {
                kept_at.remove((was, id)).map_err(store_error)?;
            }
            kept_at.insert((now, id), ()).map_err(store_error)?;
            if reports.len().map_err(store_error)? > self.limit {
                let mut named: HashSet<[u8; 32]> = HashSet::new();
                for entry in txn.open_table(CASES).map_err(store_error)?.iter().map_err(store_error)? {
                    named.insert(*entry.map_err(store_error)?.0.value().0);
                }
                // Oldest first, as the index orders them.
                let mut loose = Vec::new();
                for entry in kept_at.iter().map_err(store_error)? {
                    let (key, _) = entry.map_err(store_error)?;
                    let (at, id) = key.value();
                    if !named.contains(id) {
                        loose.push((at, *id));
                    }
                }
                let over = loose.len().saturating_sub(self.limit as usize);
                for (at, id) in loose.into_iter().take(over) {
                    kept_at.remove((at, &id)).map_err(store_error)?;
                    reports.remove(&id).map_err(store_error)?;
                }
            }
        }
        txn.commit().map_err(store_error)
    }

    /// The open cases kept, and the next block to read; none (and `None`) before the first
    /// save, or when they were read from another `scope` (another chain, tribunal or wallet:
    /// what the caller names, as bytes).
    pub fn cases(&self, scope: &[u8]) -> Result<(Vec<KeptCase>, Option<u64>), EvidenceStoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let meta = txn.open_table(META).map_err(store_error)?;
        if meta.get(SCOPE).map_err(store_error)?.is_none_or(|s| s.value() != scope) {
            return Ok((Vec::new(), None));
        }
        let next = meta.get(NEXT_BLOCK).map_err(store_error)?.and_then(|v| v.value().try_into().ok());
        let table = txn.open_table(CASES).map_err(store_error)?;
        let mut cases = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (key, value) = entry.map_err(store_error)?;
            let ((report, accused), (party, seed)) = (key.value(), value.value());
            cases.push(KeptCase { report: *report, accused: *accused, party, seed });
        }
        Ok((cases, next.map(u64::from_be_bytes)))
    }

    /// Replaces the open cases kept with `cases` read from `scope`, and the next block to read
    /// with `next_block`.
    pub fn save_cases(&self, scope: &[u8], cases: &[KeptCase], next_block: u64) -> Result<(), EvidenceStoreError> {
        let txn = self.db.begin_write().map_err(store_error)?;
        {
            let mut table = txn.open_table(CASES).map_err(store_error)?;
            table.retain(|_, _| false).map_err(store_error)?;
            for c in cases {
                table.insert((&c.report, &c.accused), (c.party, c.seed)).map_err(store_error)?;
            }
            let mut meta = txn.open_table(META).map_err(store_error)?;
            meta.insert(SCOPE, scope).map_err(store_error)?;
            meta.insert(NEXT_BLOCK, next_block.to_be_bytes().as_slice()).map_err(store_error)?;
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

    #[test]
    fn reports_of_open_cases_outlive_newer_ones_and_cases_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.redb");
        let store = EvidenceStore::open_keeping(&path, 2).unwrap();
        let scope = b"chain 1, tribunal t, wallet w";
        assert_eq!(store.cases(scope).unwrap(), (vec![], None));
        let case = KeptCase { report: [1; 32], accused: [9; 20], party: 2, seed: Some(77) };
        store.save_cases(scope, std::slice::from_ref(&case), 1234).unwrap();
        // Report 1 (its case open) and 2 are kept first; 3, 4 and 5 come later, each a few
        // milliseconds apart so that their times order them.
        store.keep_encoded(&[1; 32], b"one").unwrap();
        store.keep_encoded(&[2; 32], b"two").unwrap();
        for id in 3..=5u8 {
            std::thread::sleep(std::time::Duration::from_millis(3));
            store.keep_encoded(&[id; 32], &[id]).unwrap();
        }
        // Two loose reports stay, the newest; the open case's stays although it is older.
        let held = |s: &EvidenceStore| (1..=6u8).map(|i| s.get(&[i; 32]).unwrap().is_some()).collect::<Vec<_>>();
        assert_eq!(held(&store), [true, false, false, true, true, false]);
        assert_eq!(store.get(&[1; 32]).unwrap().as_deref(), Some(&b"one"[..]));
        // Kept again, report 4 is the newest: 5 goes when 6 comes.
        std::thread::sleep(std::time::Duration::from_millis(3));
        store.keep_encoded(&[4; 32], &[4]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        store.keep_encoded(&[6; 32], b"six").unwrap();
        assert_eq!(held(&store), [true, false, false, true, false, true]);
        drop(store);
        // Reopened: the case and the next block are back, for the same scope only. Once the
        // case closes, its report is a loose one like the others, and goes as the oldest.
        let store = EvidenceStore::open_keeping(&path, 2).unwrap();
        assert_eq!(store.cases(scope).unwrap(), (vec![case], Some(1234)));
        assert_eq!(store.cases(b"another chain").unwrap(), (vec![], None));
        store.save_cases(scope, &[], 1300).unwrap();
        assert_eq!(store.cases(scope).unwrap(), (vec![], Some(1300)));
        std::thread::sleep(std::time::Duration::from_millis(3));
        store.keep_encoded(&[7; 32], b"seven").unwrap();
        assert_eq!(held(&store), [false, false, false, false, false, true]);
        assert!(store.get(&[7; 32]).unwrap().is_some());
    }
}
