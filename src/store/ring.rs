//! A FIFO ring in fixed-size chunks for inbox entries: growing it never copies more than a few entries, unlike a `VecDeque` that copies its whole ring on each doubling.
//!
//! Why: on a fresh server under uniform load every receiver's inbox grows
//! in step, so their `VecDeque`s doubled at the same moment, each copying
//! its whole ring on the core thread, a burst of milliseconds in the
//! open-loop tail. Here the entries live in chunks of [`CHUNK`] entries;
//! a full last chunk is followed by a new one, never moved. Only the deque
//! of chunk headers grows by doubling (32 bytes per 64 entries).
//!
//! Small inboxes stay small: the front chunk is an ordinary `VecDeque`
//! that grows 1 → 4 → 8 → … → [`CHUNK`] (copying at most `CHUNK / 2`
//! entries once), so a one-entry inbox (what a large group message makes
//! for most members) is one allocation of one entry, and the deque of
//! further chunks allocates nothing until a second chunk exists.
//!
//! Layout invariant (what makes `get(i)` O(1)): `rest[k]` holds exactly
//! [`CHUNK`] entries for every `k` but the last; `head` (the front chunk)
//! may hold fewer (entries popped from it, or the ring is short). Pushes go
//! to the last chunk, pops come from `head`; when `head` empties the next
//! chunk becomes `head`.

use std::collections::VecDeque;

/// Entries per chunk. 64 entries of an inbox (64 bytes each in the memory
/// store, 56 in the durable one) are 4 KiB: one allocation per 64 appends,
/// and a copy of at most 32 entries while the first chunk grows.
pub const CHUNK: usize = 64;

/// The chunked ring (see the module doc).
pub struct ChunkRing<T> {
    head: VecDeque<T>,
    /// Further chunks, each with capacity `CHUNK`; all but the last full.
    rest: VecDeque<VecDeque<T>>,
}

impl<T> Default for ChunkRing<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ChunkRing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> ChunkRing<T> {
    /// An empty ring; allocates nothing.
    pub const fn new() -> Self {
        ChunkRing { head: VecDeque::new(), rest: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        match self.rest.back() {
            None => self.head.len(),
            Some(last) => self.head.len() + (self.rest.len() - 1) * CHUNK + last.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        // `head` is empty only when the whole ring is (see `pop_front`).
        self.head.is_empty()
    }

    pub fn push_back(&mut self, v: T) {
        match self.rest.back_mut() {
            None if self.head.len() < CHUNK => {
                if self.head.capacity() == 0 {
                    // Room for one: most inboxes a large group message
                    // creates hold just it (a `VecDeque` would make room
                    // for 4). A second entry grows it to 4.
                    self.head.reserve_exact(1);
                }
                self.head.push_back(v)
            }
            Some(last) if last.len() < CHUNK => last.push_back(v),
            _ => {
                let mut c = VecDeque::with_capacity(CHUNK);
                c.push_back(v);
                self.rest.push_back(c);
            }
        }
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let v = self.head.pop_front()?;
        if self.head.is_empty() {
            if let Some(next) = self.rest.pop_front() {
                self.head = next;
            }
        }
        Some(v)
    }

    pub fn front(&self) -> Option<&T> {
        self.head.front()
    }

    pub fn back(&self) -> Option<&T> {
        self.rest.back().map_or(self.head.back(), |c| c.back())
    }

    /// The entry at position `i` from the front (O(1)).
    pub fn get(&self, i: usize) -> Option<&T> {
        match i.checked_sub(self.head.len()) {
            None => self.head.get(i),
            Some(j) => self.rest.get(j / CHUNK)?.get(j % CHUNK),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter_from(0)
    }

    /// The entries from position `start` on; finding `start` is O(1).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + '_ {
        let (in_head, chunk, off) = match start.checked_sub(self.head.len()) {
            None => (start, 0, 0),
            Some(j) => (self.head.len(), j / CHUNK, j % CHUNK),
        };
        let chunk = chunk.min(self.rest.len());
        self.head
            .range(in_head..)
            .chain(self.rest.range(chunk..).enumerate().flat_map(move |(k, c)| c.range(if k == 0 { off.min(c.len()) } else { 0 }..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
        /// Pushes this many in a row (to cross chunk boundaries quickly).
        PushMany(u16),
        PopMany(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u32>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            1 => (0u16..300).prop_map(Op::PushMany),
            1 => (0u16..300).prop_map(Op::PopMany),
        ]
    }

    fn check_same(r: &ChunkRing<u32>, m: &VecDeque<u32>) -> Result<(), TestCaseError> {
        prop_assert_eq!(r.len(), m.len());
        prop_assert_eq!(r.is_empty(), m.is_empty());
        prop_assert_eq!(r.front(), m.front());
        prop_assert_eq!(r.back(), m.back());
        prop_assert!(r.iter().eq(m.iter()));
        for i in 0..m.len() + 2 {
            prop_assert_eq!(r.get(i), m.get(i), "get({})", i);
        }
        for s in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, m.len() / 2, m.len().saturating_sub(1), m.len(), m.len() + 5] {
            prop_assert!(r.iter_from(s).eq(m.iter().skip(s)), "iter_from({})", s);
        }
        // The invariant behind O(1) `get`: all chunks after the front one
        // but the last are full, and none is over.
        prop_assert!(r.head.len() <= CHUNK);
        for (k, c) in r.rest.iter().enumerate() {
            prop_assert!(c.len() <= CHUNK && !c.is_empty());
            if k + 1 < r.rest.len() {
                prop_assert_eq!(c.len(), CHUNK);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut r = ChunkRing::new();
            let mut m = VecDeque::new();
            let mut next = 0u32;
            for o in ops {
                match o {
                    Op::Push(v) => { r.push_back(v); m.push_back(v); }
                    Op::Pop => prop_assert_eq!(r.pop_front(), m.pop_front()),
                    Op::PushMany(n) => for _ in 0..n { next += 1; r.push_back(next); m.push_back(next); },
                    Op::PopMany(n) => for _ in 0..n { prop_assert_eq!(r.pop_front(), m.pop_front()); },
                }
                check_same(&r, &m)?;
            }
        }
    }

    #[test]
    fn a_one_entry_ring_holds_one_small_allocation() {
        let mut r = ChunkRing::new();
        r.push_back([0u8; 64]);
        // Room for one, no deque of further chunks.
        assert_eq!(r.head.capacity(), 1);
        assert_eq!(r.rest.capacity(), 0);
        r.push_back([1u8; 64]);
        assert_eq!(r.head.capacity(), 4);
    }

    #[test]
    fn full_chunks_are_never_moved() {
        let mut r = ChunkRing::new();
        for i in 0..CHUNK * 10 {
            r.push_back(i);
        }
        let addr = |r: &ChunkRing<usize>| r.get(CHUNK * 5).unwrap() as *const usize;
        let before = addr(&r);
        for i in 0..CHUNK * 100 {
            r.push_back(i);
        }
        // The deque of chunk headers grew several times; the entries did not move.
        assert_eq!(before, addr(&r));
        assert_eq!(r.len(), CHUNK * 110);
        for _ in 0..CHUNK * 110 {
            r.pop_front();
        }
        assert!(r.is_empty() && r.rest.is_empty());
    }

    /// The worst single push, and the worst turn of one push into each of
    /// 80 rings growing in step (uniform load: their doublings coincide),
    /// with a plain `VecDeque` and with `ChunkRing`. A measurement, not a
    /// check (wall time is noisy; the least of five runs' worst is shown,
    /// which a preemption rarely hits):
    /// `cargo test --release --lib store::ring -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn worst_single_push() {
        #[allow(dead_code)]
        struct E([u64; 8]);
        const RINGS: usize = 80;
        const PUSHES: usize = 100_000;
        fn run<R>(mut rings: Vec<R>, push: impl Fn(&mut R, E)) -> (u128, u128) {
            let (mut worst, mut worst_turn) = (0u128, 0u128);
            for turn in 0..PUSHES / RINGS {
                let t0 = std::time::Instant::now();
                for (k, r) in rings.iter_mut().enumerate() {
                    let t = std::time::Instant::now();
                    push(r, E([(turn * RINGS + k) as u64; 8]));
                    worst = worst.max(t.elapsed().as_nanos());
                }
                worst_turn = worst_turn.max(t0.elapsed().as_nanos());
            }
            (worst, worst_turn)
        }
        let (mut v, mut c) = ((u128::MAX, u128::MAX), (u128::MAX, u128::MAX));
        for _ in 0..5 {
            let a = run((0..RINGS).map(|_| VecDeque::new()).collect(), |r: &mut VecDeque<E>, e| r.push_back(e));
            let b = run((0..RINGS).map(|_| ChunkRing::new()).collect(), |r: &mut ChunkRing<E>, e| r.push_back(e));
            eprintln!("run: VecDeque worst push {} ns, worst turn {} ns; ChunkRing {} ns, {} ns", a.0, a.1, b.0, b.1);
            v = (v.0.min(a.0), v.1.min(a.1));
            c = (c.0.min(b.0), c.1.min(b.1));
        }
        eprintln!(
            "{PUSHES} pushes of 64 B into {RINGS} rings, least of 5 runs: worst single push VecDeque {} ns, ChunkRing {} ns; worst turn of {RINGS} pushes VecDeque {} ns, ChunkRing {} ns",
            v.0, c.0, v.1, c.1
        );
    }
}
