//! Caps on things held at once (connections, streams), in total and per key (an IP address,
//! a peer). Each admission is a [`Ticket`] that gives its place back when dropped, however the
//! holder ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Admits up to `max_total` holders at once, at most `max_per_key` of them under one key.
/// Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct KeyedLimit<K> {
    counts: Arc<Mutex<Counts<K>>>,
    max_total: usize,
    max_per_key: usize,
    max_keys: usize,
}

struct Counts<K> {
    total: usize,
    per_key: HashMap<K, usize>,
}

/// Which cap an admission would exceed (with its value).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    /// The total cap.
    #[error("{0} held in all already")]
    Total(usize),
    /// The cap per key.
    #[error("{0} held under this key already")]
    PerKey(usize),
    /// The cap on distinct keys holding at once.
    #[error("{0} keys hold places already")]
    Keys(usize),
}

/// One admitted holder; uncounted on drop.
pub struct Ticket<K: Eq + Hash> {
    counts: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> KeyedLimit<K> {
    /// A limit of `max_total` holders, `max_per_key` per key.
    pub fn new(max_total: usize, max_per_key: usize) -> Self {
        KeyedLimit {
            counts: Arc::new(Mutex::new(Counts { total: 0, per_key: HashMap::new() })),
            max_total,
            max_per_key,
            max_keys: usize::MAX,
        }
    }

    /// The same limit, admitting holders under at most `max_keys` distinct keys at once.
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        KeyedLimit { max_keys, ..self }
    }

    /// Admits a holder under `key` if both caps allow; `exempt` ones skip the per-key cap
    /// (they still count in the total).
    pub fn admit(&self, key: K, exempt: bool) -> Result<Ticket<K>, Over> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Over::Total(self.max_total));
        }
        if !c.per_key.contains_key(&key) && c.per_key.len() >= self.max_keys {
            return Err(Over::Keys(self.max_keys));
        }
        let n = c.per_key.entry(key.clone()).or_default();
        if *n >= self.max_per_key && !exempt {
            return Err(Over::PerKey(self.max_per_key));
        }
        *n += 1;
        c.total += 1;
        Ok(Ticket { counts: self.counts.clone(), key })
    }
}

impl<K: Eq + Hash> Drop for Ticket<K> {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_dropped_tickets_give_their_place_back() {
        let l = KeyedLimit::new(3, 2);
        let a1 = l.admit("a", false).unwrap();
        let _a2 = l.admit("a", false).unwrap();
        assert_eq!(l.admit("a", false).err(), Some(Over::PerKey(2)));
        let _a3 = l.admit("a", true).expect("exempt from the per-key cap");
        assert_eq!(l.admit("b", false).err(), Some(Over::Total(3)));
        drop(a1);
        assert!(l.admit("b", false).is_ok());

        let l = KeyedLimit::new(10, 10).with_max_keys(2);
        let (_a, b, _a2) = (l.admit("a", false).unwrap(), l.admit("b", false).unwrap(), l.admit("a", false).unwrap());
        assert_eq!(l.admit("c", false).err(), Some(Over::Keys(2)));
        drop(b);
        assert!(l.admit("c", false).is_ok());
    }
}
