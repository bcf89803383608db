//! The servers of the network, as any node (a tab's model picker and network view, a seeder
//! choosing what to serve) lists them from the DHT, and what a view may compute from them
//! without trusting them further: coverage and layer counts bounded by [`MAX_LAYERS`], and
//! abbreviations cut on character boundaries.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::PeerId;

use super::chain::{sample_providers, unpredictable_rng};
use super::node::{NetError, NodeHandle};
use super::record::{directory_key, peer_key, ServerRecord, MAX_LAYERS};

/// Most providers of [`directory_key`] whose records one listing reads (a random sample
/// beyond that): a flood of fake providers costs a bounded number of DHT queries.
pub const MAX_LISTED: usize = 128;

/// The servers of the network: providers of [`directory_key`] (at most [`MAX_LISTED`]) whose
/// record under [`peer_key`] verifies and has not expired, one per peer (the latest).
pub async fn list(handle: &NodeHandle, limit: Duration) -> Result<Vec<ServerRecord>, NetError> {
    let settle = Duration::from_millis(300);
    let found: HashSet<PeerId> = handle.get_providers(directory_key(), settle, limit).await?;
    let found: Vec<PeerId> = found.into_iter().collect();
    let peers = sample_providers(&[found], &HashMap::new(), MAX_LISTED, &mut unpredictable_rng());
    let queries = peers.into_iter().map(|peer| async move {
        let copies = handle.get_records(peer_key(&peer), settle, limit).await.unwrap_or_default();
        let now = super::unix_ms();
        copies.iter().filter_map(|b| ServerRecord::verify_any(b, &peer, now).ok()).max_by_key(|r| r.expires_ms)
    });
    let mut out: Vec<ServerRecord> = futures::future::join_all(queries).await.into_iter().flatten().collect();
    out.sort_by(|a, b| (&a.status.model, a.status.start, &a.peer).cmp(&(&b.status.model, b.status.start, &b.peer)));
    Ok(out)
}

/// How many of `servers` serve each block of `model`, for blocks `0..n_layers` (at most
/// [`MAX_LAYERS`], whatever a caller or a record says).
pub fn coverage(servers: &[ServerRecord], model: &str, n_layers: usize) -> Vec<usize> {
    let mut cover = vec![0; n_layers.min(MAX_LAYERS)];
    for r in servers.iter().filter(|r| r.status.model == model) {
        let end = r.status.end.min(cover.len());
        for c in cover.iter_mut().take(end).skip(r.status.start) {
            *c += 1;
        }
    }
    cover
}

/// The layers of `model` that `servers` show: the largest block end among them (at most
/// [`MAX_LAYERS`]), 0 when none serves it.
pub fn layers_seen(servers: &[ServerRecord], model: &str) -> usize {
    servers.iter().filter(|r| r.status.model == model).map(|r| r.status.end).max().unwrap_or(0).min(MAX_LAYERS)
}

/// The first `n` characters of `s` (all of it if shorter); never splits a character.
pub fn head_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The last `n` characters of `s` (all of it if shorter); never splits a character.
pub fn tail_chars(s: &str, n: usize) -> &str {
    match n.checked_sub(1) {
        None => "",
        Some(k) => s.char_indices().rev().nth(k).map_or(s, |(i, _)| &s[i..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::ServerStatus;

    fn rec(model: &str, start: usize, end: usize) -> ServerRecord {
        ServerRecord {
            peer: "p".into(),
            addrs: vec![],
            expires_ms: 0,
            status: ServerStatus {
                version: 1,
                model: model.into(),
                start,
                end,
                backend: "cpu".into(),
                ms_per_block: 1.0,
                free_slots: 1,
                active_sessions: 0,
                max_len: 1,
                pay: None,
                queued: None,
            },
        }
    }

    /// Regression test for issue 11: a record's `end` sized the tab's coverage vector.
    #[test]
    fn coverage_and_layers_are_bounded_whatever_records_say() {
        let servers = [rec("m", 0, 2), rec("m", 1, 3), rec("other", 0, 9), rec("m", 2, usize::MAX)];
        assert_eq!(coverage(&servers[..2], "m", 4), vec![1, 2, 1, 0]);
        assert_eq!(layers_seen(&servers[..2], "m"), 3);
        assert_eq!(layers_seen(&servers, "m"), MAX_LAYERS);
        assert_eq!(layers_seen(&servers, "none"), 0);
        let cover = coverage(&servers, "m", usize::MAX);
        assert_eq!(cover.len(), MAX_LAYERS);
        assert_eq!(&cover[..4], &[1, 2, 2, 1]);
    }

    /// Regression test for issue 11: the tab sliced a record's model id by byte index.
    #[test]
    fn abbreviations_never_split_a_character() {
        assert_eq!(head_chars("abcdef", 3), "abc");
        assert_eq!(head_chars("ab", 12), "ab");
        assert_eq!(head_chars("ééééé", 2), "éé");
        assert_eq!(tail_chars("abcdef", 2), "ef");
        assert_eq!(tail_chars("ab", 8), "ab");
        assert_eq!(tail_chars("日本語のテキスト", 3), "キスト");
        assert_eq!(tail_chars("abc", 0), "");
        assert_eq!(head_chars("abc", 0), "");
    }
}
