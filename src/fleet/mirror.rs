//! A core's in-memory mirror of the engine's inboxes, for the users with a device online on this core.
//!
//! In fleet mode the engine (Redis) holds every inbox and assigns every seq;
//! a core keeps a copy of the part its devices still need, so that PUSH,
//! retransmission and replay read memory exactly as they do on the local
//! log (the session code is the same). Entries arrive from three places,
//! all through the core's mailbox: the CONNECT load (everything above the
//! device's `last_seq`), notifications of new appends (this node's own
//! appends and other nodes' via the engine's PUB/SUB), and fetches that fill
//! a gap (a lost notification, found by the heartbeat's head comparison).
//!
//! The view a session sees is the *contiguous* run `base..=head`: an entry
//! that arrives ahead of a missing one waits (bounded) until the gap is
//! fetched, so a device never sees seqs out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::proto::session::{EmptyInbox, EntryRef, InboxRead};
use crate::store::{InboxStore, NewMessage, StoreError};

/// One entry as the engine holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Arc<str>,
    pub payload: Bytes,
}

/// Entries parked ahead of a gap, per user; beyond this they are dropped
/// and fetched again with the gap (the engine has them).
const MAX_AHEAD: usize = 4096;

/// One user's mirrored inbox.
#[derive(Debug, Default)]
pub struct MirrorInbox {
    /// Seq of `entries[0]`; with no entries, `head + 1`.
    base: u64,
    /// Highest seq of the contiguous run.
    head: u64,
    entries: std::collections::VecDeque<Entry>,
    /// Arrived ahead of a gap (seq > head + 1).
    ahead: BTreeMap<u64, Entry>,
    /// The engine's head as last reported (>= head).
    pub engine_head: u64,
    /// A fetch of the gap above `head` is in flight.
    pub fetching: bool,
    /// Wall-clock ms up to which the seqs below `base` are accounted for:
    /// the last CONNECT load (the device had everything below its cursor,
    /// appended before that) and the newest entry dropped here since. An
    /// entry below `base` appended later than this cannot be one of them:
    /// the engine lost data and handed its seq out again
    /// ([`MirrorInbox::reused_below`]).
    known_ms: u64,
}

impl MirrorInbox {
    fn new() -> Self {
        MirrorInbox { base: 1, head: 0, ..Default::default() }
    }

    /// The engine's `(oldest, head)`: drops what retention dropped there
    /// and starts an empty mirror at the engine's position.
    pub fn set_bounds(&mut self, oldest: u64, head: u64) {
        self.engine_head = self.engine_head.max(head);
        if self.entries.is_empty() && self.ahead.is_empty() && self.head < oldest.saturating_sub(1) {
            // Nothing kept here yet: the run starts right below the engine's oldest.
            self.head = oldest.saturating_sub(1);
            self.base = oldest;
        }
        while self.base < oldest && !self.entries.is_empty() {
            self.drop_front();
        }
        if self.entries.is_empty() && self.base < oldest {
            // Everything here is older than the engine keeps.
            self.base = oldest;
            self.head = self.head.max(oldest - 1);
        }
        let floor = self.head;
        self.ahead.retain(|s, _| *s > floor);
    }

    /// A CONNECT's load for a device whose cursor is `after`: the run must
    /// reach down to `after + 1`, or the session would take the missing
    /// seqs for ones retention dropped. When the batch cannot join what is
    /// here (a far older cursor and a truncated load), the mirror restarts
    /// at `after` and the rest is fetched.
    /// `now_ms`: the wall clock when the engine answered the load.
    pub fn load(&mut self, after: u64, oldest: u64, head: u64, entries: Vec<Entry>, now_ms: u64) {
        let after = after.min(head).max(oldest.saturating_sub(1));
        self.known_ms = self.known_ms.max(now_ms);
        let joins = self.entries.is_empty() && self.ahead.is_empty()
            || self.base <= after + 1
            || entries.last().is_some_and(|e| e.seq + 1 >= self.base) && entries.first().is_some_and(|e| e.seq == after + 1);
        if !joins || (self.entries.is_empty() && self.head != after) {
            *self = MirrorInbox { engine_head: self.engine_head, known_ms: self.known_ms, ..MirrorInbox::new() };
            self.head = after;
            self.base = after + 1;
        }
        self.set_bounds(oldest, head);
        self.insert(entries);
    }

    /// Adds entries (any order, duplicates ignored). Entries below `base`
    /// extend the run downwards when they join it (a device connecting with
    /// an older cursor than the ones already here). Returns true when the
    /// visible run grew.
    pub fn insert(&mut self, mut batch: Vec<Entry>) -> bool {
        batch.sort_by_key(|e| e.seq);
        let before = (self.base, self.head);
        // Downwards: a contiguous prefix ending at base - 1 (only when the
        // batch reaches it; what is below and not contiguous is left out).
        let below: Vec<&Entry> = batch.iter().filter(|e| e.seq < self.base).collect();
        if let Some(last) = below.last() {
            if last.seq + 1 == self.base {
                let mut want = self.base;
                for e in below.iter().rev() {
                    if e.seq + 1 != want {
                        break;
                    }
                    self.entries.push_front((*e).clone());
                    want = e.seq;
                }
                self.base = want;
            }
        }
        for e in batch {
            self.engine_head = self.engine_head.max(e.seq);
            if e.seq <= self.head {
                continue;
            }
            if self.ahead.len() < MAX_AHEAD || e.seq == self.head + 1 {
                self.ahead.insert(e.seq, e);
            }
        }
        while let Some(e) = self.ahead.remove(&(self.head + 1)) {
            if self.entries.is_empty() {
                self.base = e.seq;
            }
            self.head = e.seq;
            self.entries.push_back(e);
        }
        (self.base, self.head) != before
    }

    /// Keeps at most `max` entries (the engine's count retention applies
    /// there too; this bounds the mirror's memory the same way).
    pub fn trim(&mut self, max: u64) {
        while self.entries.len() as u64 > max.max(1) {
            self.drop_front();
        }
    }

    fn drop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.known_ms = self.known_ms.max(e.timestamp_ms);
            self.base += 1;
        }
    }

    /// `batch` has an entry below `base` appended after everything this
    /// mirror accounts for there ([`MirrorInbox::accounted_below`]): the
    /// engine lost data and gave out again a seq the devices here already
    /// have (they would drop that message as a duplicate). What joins the
    /// run from below (an older cursor's load) is older than that.
    pub fn reused_below(&self, batch: &[Entry], skew_ms: u64) -> bool {
        let (below, after_ms) = self.accounted_below(skew_ms);
        batch.iter().any(|e| e.seq < below && e.timestamp_ms > after_ms)
    }

    /// `(seq, msg_id)` of the contiguous run: what the devices here have
    /// at those seqs (compared with the engine's after a data loss).
    pub fn held(&self) -> Vec<(u64, u64)> {
        self.entries.iter().map(|e| (e.seq, e.msg_id)).collect()
    }

    /// `(base, ms)`: every message the devices here have below `base` was
    /// appended by `ms` (`known_ms` with the clocks' margin); the engine
    /// moves later ones found there (`scripts::FLOOR`).
    ///
    /// `skew_ms` is `fleet.max_clock_skew_ms`: how far the nodes' wall
    /// clocks may disagree (an entry's timestamp is its SENDACK's, from the
    /// clock of the node that appended it). A larger real skew makes a late
    /// notification of an old message look new (it would be moved and
    /// reach the devices twice); a loss within this long of a device's
    /// CONNECT is not recognised below its cursor.
    pub fn accounted_below(&self, skew_ms: u64) -> (u64, u64) {
        (self.base, self.known_ms.saturating_add(skew_ms))
    }

    /// The contiguous head.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The engine has entries this mirror lacks.
    pub fn behind(&self) -> bool {
        self.engine_head > self.head
    }
}

impl InboxRead for MirrorInbox {
    fn bounds(&self) -> (u64, u64) {
        (self.base, self.head)
    }

    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        let i = seq.checked_sub(self.base)?;
        let e = self.entries.get(usize::try_from(i).ok()?)?;
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload: e.payload.clone() })
    }
}

/// A core's store in fleet mode: the mirrors of its online users. It never
/// appends itself (the engine does, through `fleet::Engine`).
pub struct FleetStore {
    inboxes: HashMap<Box<str>, MirrorInbox>,
    max_messages: u64,
}

impl FleetStore {
    pub fn new(max_messages: u64) -> Self {
        FleetStore { inboxes: HashMap::new(), max_messages }
    }

    pub fn get_mut(&mut self, user: &str) -> Option<&mut MirrorInbox> {
        self.inboxes.get_mut(user)
    }

    /// The mirror of `user`, created empty when absent.
    pub fn mirror(&mut self, user: &str) -> &mut MirrorInbox {
        let max = self.max_messages;
        let m = self.inboxes.entry(Box::from(user)).or_insert_with(MirrorInbox::new);
        m.trim(max);
        m
    }

    /// Forgets `user`'s mirror (no device of theirs is online here).
    pub fn drop_user(&mut self, user: &str) {
        self.inboxes.remove(user);
    }

    /// Users mirrored here with their contiguous heads (the heartbeat's gap check).
    pub fn heads(&self) -> impl Iterator<Item = (&str, u64)> {
        self.inboxes.iter().map(|(u, m)| (&**u, m.head))
    }
}

impl InboxStore for FleetStore {
    fn append(&mut self, _user: &str, _msg: NewMessage, _now_ms: u64) -> Result<(u64, u64), StoreError> {
        // Appends go to the engine; a path that reaches here is a bug, and
        // SENDACK 5 is the safe answer for it.
        Err(StoreError::NotLocal)
    }

    fn inbox(&mut self, user: &str, _now_ms: u64) -> &dyn InboxRead {
        self.peek(user)
    }

    fn peek(&self, user: &str) -> &dyn InboxRead {
        match self.inboxes.get(user) {
            Some(m) => m,
            None => &EmptyInbox,
        }
    }

    fn stats(&self) -> (usize, u64) {
        (self.inboxes.len(), self.inboxes.values().map(|m| m.entries.len() as u64).sum())
    }

    fn fleet_mirror(&mut self) -> Option<&mut FleetStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64) -> Entry {
        Entry { seq, msg_id: 1000 + seq, timestamp_ms: 0, from: Arc::from("a"), payload: Bytes::from_static(b"x") }
    }

    #[test]
    fn out_of_order_waits_for_the_gap() {
        let mut m = MirrorInbox::new();
        m.set_bounds(1, 0);
        assert!(m.insert(vec![e(1)]));
        assert!(!m.insert(vec![e(3)]), "3 waits for 2");
        assert_eq!(m.bounds(), (1, 1));
        assert!(m.behind());
        assert!(m.insert(vec![e(2)]));
        assert_eq!(m.bounds(), (1, 3));
        assert!(!m.insert(vec![e(2), e(3)]), "duplicates change nothing");
        assert_eq!(m.get(2).unwrap().msg_id, 1002);
    }

    /// What a mirror vouches for below its first seq: everything appended
    /// by its last load, and by the newest entry it dropped since.
    #[test]
    fn below_the_run_only_later_entries_are_reuses() {
        let at = |seq: u64, ts: u64| Entry { timestamp_ms: ts, ..e(seq) };
        const SKEW: u64 = 1000;
        let mut m = MirrorInbox::new();
        m.load(5, 1, 5, Vec::new(), 10_000);
        assert_eq!(m.bounds(), (6, 5));
        assert_eq!(m.accounted_below(SKEW), (6, 10_000 + SKEW));
        // A late notification of a message from before the load: not a reuse.
        assert!(!m.reused_below(&[at(5, 9_999)], SKEW));
        // Within the clocks' margin: not told apart.
        assert!(!m.reused_below(&[at(3, 10_000 + SKEW)], SKEW));
        assert!(m.reused_below(&[at(3, 10_001 + SKEW)], SKEW));
        // New entries above the run are not below it.
        assert!(!m.reused_below(&[at(6, 50_000)], SKEW));
        m.insert((6..=9).map(|s| at(s, 20_000 + s)).collect());
        m.trim(2);
        assert_eq!(m.bounds(), (8, 9));
        assert_eq!(m.held(), vec![(8, 1008), (9, 1009)]);
        // Seqs 6 and 7 were dropped here: their times are vouched for now.
        assert_eq!(m.accounted_below(SKEW), (8, 20_007 + SKEW));
        assert!(!m.reused_below(&[at(7, 20_007)], SKEW));
    }

    #[test]
    fn starts_at_the_engine_position_and_extends_down() {
        let mut m = MirrorInbox::new();
        m.set_bounds(5, 9);
        assert_eq!(m.bounds(), (5, 4));
        m.insert(vec![e(8), e(9)]);
        assert_eq!(m.bounds(), (5, 4), "6, 7 missing");
        m.insert(vec![e(5), e(6), e(7)]);
        assert_eq!(m.bounds(), (5, 9));
        // A device with an older cursor loads 3..4 (retention moved oldest to 3).
        m.insert(vec![e(3), e(4)]);
        assert_eq!(m.bounds(), (3, 9));
        m.set_bounds(6, 9);
        assert_eq!(m.bounds(), (6, 9));
        m.trim(2);
        assert_eq!(m.bounds(), (8, 9));
    }
}
