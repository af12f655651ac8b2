//! Second-chance (CLOCK) eviction for the bounded tables (connections, sessions): a
//! queue of keys in the order they were queued; the victim is the first one not seen
//! since it was queued, and one seen since goes to the back with a new stamp. Under a
//! flood of new keys the entries that stay active survive, and picking a victim costs
//! O(1) amortised — unlike sampling a hash map's first buckets, which always looks at
//! the same few entries.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

use crate::Nanos;

/// Entries looked at for one victim before the front one is taken regardless.
const MAX_STEPS: usize = 64;

#[derive(Debug)]
pub struct EvictionQueue<K> {
    order: VecDeque<(K, Nanos)>,
}

impl<K> Default for EvictionQueue<K> {
    fn default() -> Self {
        Self {
            order: VecDeque::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> EvictionQueue<K> {
    /// A key entered the table at `now`.
    pub fn push(&mut self, key: K, now: Nanos) {
        self.order.push_back((key, now));
    }

    /// The key to evict: the first queued one not seen since it was queued.
    /// `last_seen` says when a key was last active, `None` if it has left the table.
    pub fn victim(
        &mut self,
        now: Nanos,
        mut last_seen: impl FnMut(&K) -> Option<Nanos>,
    ) -> Option<K> {
        let mut steps = 0;
        while let Some((key, queued)) = self.order.pop_front() {
            let Some(seen) = last_seen(&key) else {
                continue; // Left the table already.
            };
            steps += 1;
            if seen <= queued || steps > MAX_STEPS {
                return Some(key);
            }
            self.order.push_back((key, now)); // Seen since: a second chance.
        }
        None
    }

    /// Drops the keys that left the table once they outnumber the live ones, so the
    /// queue stays within a constant factor of the table.
    pub fn compact(&mut self, live: usize, contains: impl Fn(&K) -> bool) {
        if self.order.len() <= 2 * live + 1024 {
            return;
        }
        self.order.retain(|(k, _)| contains(k));
        if self.order.len() > 2 * live + 1024 {
            // A key that left and came back is queued twice: keep its newest entry.
            let mut seen = HashSet::with_capacity(self.order.len());
            let mut kept: VecDeque<(K, Nanos)> = self
                .order
                .drain(..)
                .rev()
                .filter(|(k, _)| seen.insert(*k))
                .collect();
            kept.make_contiguous().reverse();
            self.order = kept;
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn active_keys_survive_a_flood_of_new_ones() {
        // A table of 100: key 0 is active all along, the others are a flood.
        let mut table: HashMap<u32, Nanos> = HashMap::new();
        let mut queue = EvictionQueue::default();
        for now in 0..10_000u64 {
            let key = now as u32;
            if table.len() >= 100 {
                let victim = queue.victim(now, |k| table.get(k).copied()).unwrap();
                table.remove(&victim);
            }
            table.insert(key, now);
            queue.push(key, now);
            table.insert(0, now); // key 0 seen again every step
            queue.compact(table.len(), |k| table.contains_key(k));
            assert!(queue.len() <= 2 * table.len() + 1024);
        }
        assert!(table.contains_key(&0), "the active key was evicted");
        assert!(table.len() <= 100);
    }

    #[test]
    fn keys_that_left_are_skipped_and_compacted() {
        let mut queue = EvictionQueue::default();
        for k in 0..5000u32 {
            queue.push(k, 0);
        }
        // Only 10 keys are left in the table.
        let live = |k: &u32| *k >= 4990;
        let victim = queue.victim(1, |k| live(k).then_some(0)).unwrap();
        assert_eq!(victim, 4990);
        queue.compact(10, live);
        assert_eq!(queue.len(), 9);
        // Duplicates of a key that came back keep its newest entry.
        for _ in 0..3000 {
            queue.push(4991, 7);
        }
        queue.compact(10, live);
        assert!(queue.len() <= 10, "{}", queue.len());
    }
}
