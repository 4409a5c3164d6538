//! The durable store's hot-payload cache: payload bytes kept in RAM within one core's share of `store.memory_budget_bytes`, evicted by clock (second chance), keyed by log position.
//!
//! Every retained message is indexed in RAM (ids, time, sender, file
//! position), but its payload only while it is in this cache: new
//! appends go in (online devices are sent them at once), and so do
//! payloads read back from the log for a replay or a retransmission. When
//! the bytes charged pass the budget, the oldest entries not used since
//! the clock hand last passed them go; a cold payload is read again from
//! the log when needed. Keyed by (segment, offset), so index entries that
//! point at the same bytes in the log share one cached copy.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::durable::SegId;

/// A payload's place in the log: (segment, byte offset of the payload).
pub type PayloadKey = (SegId, u64);

/// Bytes charged per cached payload beyond its length: its map slot, its
/// place in the clock queue, the `Bytes` header and allocator rounding
/// (an upper estimate, so small payloads cannot slip past the budget).
pub const ENTRY_OVERHEAD: u64 = 128;

struct Slot {
    bytes: Bytes,
    /// Used since the clock hand last passed: spared once.
    referenced: bool,
}

/// Figures for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserted: u64,
    pub evicted: u64,
}

/// Payload bytes in RAM, bounded by a byte budget (see the module doc).
pub struct PayloadCache {
    budget: u64,
    used: u64,
    map: HashMap<PayloadKey, Slot>,
    /// Insertion order; the front is the clock hand. May hold keys already
    /// removed (skipped, and compacted away when they pile up).
    clock: VecDeque<PayloadKey>,
    pub stats: CacheStats,
}

fn cost(b: &Bytes) -> u64 {
    b.len() as u64 + ENTRY_OVERHEAD
}

impl PayloadCache {
    pub fn new(budget: u64) -> Self {
        PayloadCache { budget, used: 0, map: HashMap::new(), clock: VecDeque::new(), stats: CacheStats::default() }
    }

    /// Changes the budget, evicting at once what no longer fits.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
        self.evict_to(budget);
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes charged now (payloads plus `ENTRY_OVERHEAD` each).
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, key: PayloadKey) -> bool {
        self.map.contains_key(&key)
    }

    /// The payload at `key` if cached (marking it used).
    pub fn get(&mut self, key: PayloadKey) -> Option<Bytes> {
        match self.map.get_mut(&key) {
            Some(s) => {
                s.referenced = true;
                self.stats.hits += 1;
                Some(s.bytes.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Caches `bytes` at `key`, evicting others first so it fits. The new
    /// entry itself is never evicted by its own insertion, even when it
    /// alone is over the budget: a reader always gets the payload it just
    /// asked for.
    pub fn insert(&mut self, key: PayloadKey, bytes: Bytes) {
        if self.map.contains_key(&key) {
            return;
        }
        let c = cost(&bytes);
        self.evict_to(self.budget.saturating_sub(c));
        self.used += c;
        self.map.insert(key, Slot { bytes, referenced: false });
        self.clock.push_back(key);
        self.stats.inserted += 1;
        self.compact();
    }

    /// Evicts until `bytes` more would fit: called before a batch read
    /// back from the log is inserted, so the batch does not evict itself.
    pub fn make_room(&mut self, bytes: u64) {
        self.evict_to(self.budget.saturating_sub(bytes));
    }

    /// Drops `key` (its message left the inbox).
    pub fn remove(&mut self, key: PayloadKey) {
        if let Some(s) = self.map.remove(&key) {
            self.used = self.used.saturating_sub(cost(&s.bytes));
            self.compact();
        }
    }

    fn evict_to(&mut self, target: u64) {
        // Each entry is spared at most once per call: two full turns of the
        // hand at most.
        let mut steps = 2 * self.clock.len() + 1;
        while self.used > target && steps > 0 {
            steps -= 1;
            let Some(k) = self.clock.pop_front() else { break };
            let Some(s) = self.map.get_mut(&k) else { continue };
            if s.referenced {
                s.referenced = false;
                self.clock.push_back(k);
                continue;
            }
            if let Some(s) = self.map.remove(&k) {
                self.used = self.used.saturating_sub(cost(&s.bytes));
                self.stats.evicted += 1;
            }
        }
    }

    /// Keeps the clock queue within a constant of the live entries.
    fn compact(&mut self) {
        if self.clock.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            let mut seen = std::collections::HashSet::with_capacity(map.len());
            self.clock.retain(|k| map.contains_key(k) && seen.insert(*k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn stays_within_budget_and_evicts_oldest_unused_first() {
        let per = 1000 + ENTRY_OVERHEAD;
        let mut c = PayloadCache::new(per * 4);
        for i in 0..4 {
            c.insert((1, i), b(1000));
        }
        assert_eq!(c.used(), per * 4);
        // Entry 0 is used: the hand spares it once, so 1 goes first.
        assert!(c.get((1, 0)).is_some());
        c.insert((1, 4), b(1000));
        assert!(c.used() <= c.budget());
        assert!(c.contains((1, 0)) && !c.contains((1, 1)));
        for i in 5..100 {
            c.insert((1, i), b(1000));
            assert!(c.used() <= c.budget(), "over budget at {i}");
        }
        assert_eq!(c.len(), 4);
        assert!(c.clock.len() <= 2 * c.len() + 64);
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_still_served_and_room_is_made_for_batches() {
        let mut c = PayloadCache::new(500);
        c.insert((1, 0), b(100));
        c.insert((1, 1), b(4000));
        assert!(c.contains((1, 1)) && !c.contains((1, 0)));
        let mut c = PayloadCache::new(10 * (100 + ENTRY_OVERHEAD));
        for i in 0..10 {
            c.insert((2, i), b(100));
        }
        c.make_room(3 * (100 + ENTRY_OVERHEAD));
        assert_eq!(c.len(), 7);
        c.remove((2, 9));
        assert_eq!(c.len(), 6);
        assert_eq!(c.used(), 6 * (100 + ENTRY_OVERHEAD));
    }
}
