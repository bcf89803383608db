//! A bounded set of 32-byte ids (fraud reports), the oldest forgotten first: what a node
//! remembers of the reports it counted, or convicted on.

use std::collections::{HashSet, VecDeque};

/// At most `cap` ids; inserting one more forgets the oldest.
#[derive(Debug)]
pub struct RecentIds {
    cap: usize,
    ids: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl RecentIds {
    /// An empty set that keeps at most `cap` ids.
    pub fn new(cap: usize) -> RecentIds {
        RecentIds { cap, ids: HashSet::new(), order: VecDeque::new() }
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`, forgetting the oldest past the cap; `false` if it was remembered.
    pub fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &[u8; 32]) {
        if self.ids.remove(id) {
            self.order.retain(|r| r != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_id_goes_first_and_an_id_counts_once() {
        let mut r = RecentIds::new(2);
        assert!(r.insert([1; 32]) && !r.insert([1; 32]));
        assert!(r.insert([2; 32]) && r.insert([3; 32]));
        assert!(!r.contains(&[1; 32]) && r.contains(&[2; 32]) && r.contains(&[3; 32]));
        r.remove(&[2; 32]);
        assert!(!r.contains(&[2; 32]) && r.insert([4; 32]) && r.contains(&[3; 32]));
    }
}
