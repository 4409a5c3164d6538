//! The per-core timer wheel: O(1) insert and cancel, `advance(now)` hands back what expired.
//!
//! Hierarchical, 6 levels of 64 slots (level L slot covers 64^L ticks), so
//! with 10 ms ticks it spans 64^6 ticks ≈ 21 years. Entries live in one slab
//! (`Vec` plus free list) and are chained into their slot by intrusive
//! doubly-linked indices, so:
//! - insert and cancel are O(1) and allocate nothing once the slab has grown;
//! - memory is O(entries): ~40 bytes each plus a fixed 6×64 heads table;
//! - an `advance` finds the next occupied slot through one `u64` bitmap per
//!   level, so idle ticks cost nothing and a large jump in time costs only
//!   the occupied slots it crosses. Entries of a higher-level slot cascade
//!   down once when their slot's range begins.
//!
//! Keys carry a generation, so cancelling an entry that already fired (or a
//! reused slab index) is a harmless `None`, never the wrong timer.
//! Deadlines are rounded up to whole ticks: a timer never fires early.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Furthest deadline representable, in ticks from now.
const MAX_SPAN_TICKS: u64 = (1u64 << (SLOT_BITS as u64 * LEVELS as u64)) - 1;
const NIL: u32 = u32::MAX;

/// Handle to a pending timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    idx: u32,
    gen: u32,
}

struct Entry<T> {
    value: Option<T>,
    deadline_ms: u64,
    when_tick: u64,
    gen: u32,
    prev: u32,
    /// Next in the slot's list, or next free entry while vacant.
    next: u32,
    /// level * SLOTS + slot while linked.
    slot: u16,
}

/// A hierarchical timing wheel over values `T` (a connection key, typically).
pub struct AckWheel<T> {
    tick_ms: u64,
    origin_ms: u64,
    /// Every tick up to and including this one has been processed.
    now_tick: u64,
    entries: Vec<Entry<T>>,
    free: u32,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    len: usize,
}

impl<T> AckWheel<T> {
    /// A wheel whose tick is `tick_ms` wide, starting at `now_ms`.
    pub fn new(tick_ms: u64, now_ms: u64) -> Self {
        Self {
            tick_ms: tick_ms.max(1),
            origin_ms: now_ms,
            now_tick: 0,
            entries: Vec::new(),
            free: NIL,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The deadline `key` was inserted with, if still pending.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        let e = self.entries.get(key.idx as usize)?;
        (e.gen == key.gen && e.value.is_some()).then_some(e.deadline_ms)
    }

    /// Schedules `value` for `deadline_ms`; a deadline in the past fires on the next advance.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        let rel = deadline_ms.saturating_sub(self.origin_ms);
        let tick = rel.div_ceil(self.tick_ms);
        let when = tick.clamp(self.now_tick, self.now_tick + MAX_SPAN_TICKS);
        let idx = if self.free != NIL {
            let i = self.free;
            let e = &mut self.entries[i as usize];
            self.free = e.next;
            e.value = Some(value);
            e.deadline_ms = deadline_ms;
            e.when_tick = when;
            i
        } else {
            let i = u32::try_from(self.entries.len()).unwrap_or_else(|_| panic!("more than 2^32 timers"));
            self.entries.push(Entry { value: Some(value), deadline_ms, when_tick: when, gen: 0, prev: NIL, next: NIL, slot: 0 });
            i
        };
        self.link(idx);
        self.len += 1;
        TimerKey { idx, gen: self.entries[idx as usize].gen }
    }

    /// Removes a pending timer; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let e = self.entries.get(key.idx as usize)?;
        if e.gen != key.gen || e.value.is_none() {
            return None;
        }
        self.unlink(key.idx);
        self.len -= 1;
        Some(self.release(key.idx))
    }

    /// Moves time to `now_ms`, appending every value whose deadline is ≤ now to `out`.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<T>) {
        let target = now_ms.saturating_sub(self.origin_ms) / self.tick_ms;
        if target < self.now_tick {
            return;
        }
        while let Some((level, slot, tick)) = self.next_expiration() {
            if tick > target {
                break;
            }
            self.now_tick = tick;
            // Take the whole slot, then expire or cascade each entry.
            let mut cur = self.heads[level][slot];
            self.heads[level][slot] = NIL;
            self.occupied[level] &= !(1u64 << slot);
            while cur != NIL {
                let next = self.entries[cur as usize].next;
                if self.entries[cur as usize].when_tick <= self.now_tick {
                    self.len -= 1;
                    out.push(self.release(cur));
                } else {
                    self.link(cur);
                }
                cur = next;
            }
        }
        self.now_tick = target;
    }

    /// Milliseconds until the earliest slot that holds anything may fire
    /// (a lower bound: a higher-level slot only cascades at its start).
    pub fn next_expiry_hint(&self, now_ms: u64) -> Option<u64> {
        let (_, _, tick) = self.next_expiration()?;
        let at = self.origin_ms + tick * self.tick_ms;
        Some(at.saturating_sub(now_ms))
    }

    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occ = self.occupied[level];
            if occ == 0 {
                continue;
            }
            let shift = SLOT_BITS as u64 * level as u64;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let now_slot = (self.now_tick >> shift) & SLOT_MASK;
            let zeros = occ.rotate_right(now_slot as u32).trailing_zeros() as u64;
            let slot = (zeros + now_slot) & SLOT_MASK;
            let level_start = self.now_tick & !(level_range - 1);
            let mut tick = level_start + slot * slot_range;
            // Level 0 may hold entries due exactly now (inserted late). A
            // higher level never holds the slot now is in, except at the top
            // level for deadlines clamped past the end of the wheel: those
            // belong to the next turn.
            if tick < self.now_tick || (level > 0 && tick <= self.now_tick) {
                tick += level_range;
            }
            return Some((level, slot as usize, tick));
        }
        None
    }

    fn link(&mut self, idx: u32) {
        let when = self.entries[idx as usize].when_tick;
        let masked = (self.now_tick ^ when) | SLOT_MASK;
        let significant = 63 - masked.leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let level = level.min(LEVELS - 1);
        let slot = ((when >> (SLOT_BITS as usize * level)) & SLOT_MASK) as usize;
        let head = self.heads[level][slot];
        {
            let e = &mut self.entries[idx as usize];
            e.prev = NIL;
            e.next = head;
            e.slot = (level * SLOTS + slot) as u16;
        }
        if head != NIL {
            self.entries[head as usize].prev = idx;
        }
        self.heads[level][slot] = idx;
        self.occupied[level] |= 1u64 << slot;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next, s) = {
            let e = &self.entries[idx as usize];
            (e.prev, e.next, e.slot as usize)
        };
        let (level, slot) = (s / SLOTS, s % SLOTS);
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[level][slot] = next;
            if next == NIL {
                self.occupied[level] &= !(1u64 << slot);
            }
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Frees a (already unlinked) entry and returns its value.
    fn release(&mut self, idx: u32) -> T {
        let e = &mut self.entries[idx as usize];
        let v = e.value.take().unwrap_or_else(|| unreachable!("released a vacant timer entry"));
        e.gen = e.gen.wrapping_add(1);
        e.prev = NIL;
        e.next = self.free;
        self.free = idx;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = AckWheel::new(10, 1000);
        w.insert(1055, 'a');
        let mut out = Vec::new();
        w.advance(1050, &mut out);
        assert!(out.is_empty());
        w.advance(1059, &mut out);
        assert!(out.is_empty());
        w.advance(1060, &mut out);
        assert_eq!(out, vec!['a']);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_and_stale_keys() {
        let mut w = AckWheel::new(10, 0);
        let k = w.insert(100, 1);
        assert_eq!(w.deadline(k), Some(100));
        assert_eq!(w.cancel(k), Some(1));
        assert_eq!(w.cancel(k), None);
        let k2 = w.insert(100, 2); // reuses the slab index
        assert_eq!(w.cancel(k), None);
        let mut out = Vec::new();
        w.advance(100, &mut out);
        assert_eq!(out, vec![2]);
        assert_eq!(w.cancel(k2), None);
    }

    #[test]
    fn past_deadline_fires_next_advance() {
        let mut w = AckWheel::new(10, 0);
        let mut out = Vec::new();
        w.advance(5000, &mut out);
        w.insert(10, 'x');
        w.advance(5000, &mut out);
        assert_eq!(out, vec!['x']);
    }

    #[test]
    fn far_deadlines_cascade() {
        let mut w = AckWheel::new(10, 0);
        let ds = [650u64, 41_000, 2_700_000, 170_000_000, 86_400_000 * 30];
        for (i, d) in ds.iter().enumerate() {
            w.insert(*d, i);
        }
        let mut out = Vec::new();
        for (i, d) in ds.iter().enumerate() {
            w.advance(d - 1, &mut out);
            assert_eq!(out.len(), i, "fired early before {d}");
            w.advance(*d, &mut out);
            assert_eq!(out.len(), i + 1, "did not fire at {d}");
        }
    }

    proptest! {
        /// Against a model: every entry fires exactly once, at the first
        /// advance whose now is ≥ its deadline, and cancelled ones never.
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u8..3, 0u64..200_000), 1..300)) {
            let mut w = AckWheel::new(10, 0);
            let mut model: Vec<(TimerKey, u64, usize, bool)> = Vec::new();
            let mut now = 0u64;
            for (i, (op, v)) in ops.into_iter().enumerate() {
                match op {
                    0 => { let k = w.insert(now + v, i); model.push((k, now + v, i, true)); }
                    1 if !model.is_empty() => {
                        let j = (v as usize) % model.len();
                        let (k, _, id, live) = model[j];
                        let got = w.cancel(k);
                        prop_assert_eq!(got, live.then_some(id));
                        model[j].3 = false;
                    }
                    _ => {
                        now += v % 20_000;
                        let mut out = Vec::new();
                        w.advance(now, &mut out);
                        out.sort();
                        let mut want: Vec<usize> = Vec::new();
                        for m in model.iter_mut() {
                            if m.3 && m.1.div_ceil(10) * 10 <= now { want.push(m.2); m.3 = false; }
                        }
                        want.sort();
                        prop_assert_eq!(out, want);
                    }
                }
                prop_assert_eq!(w.len(), model.iter().filter(|m| m.3).count());
            }
        }
    }
}
