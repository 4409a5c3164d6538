//! Dedup tables of devices (PROTOCOL.md rule 4): a live table while a device sends, a packed, exactly sized byte string once it has had no connection for a while.
//!
//! ## Why two forms
//!
//! Rule 4 makes the server remember the last `dedup_per_device` (1,024)
//! client_msg_ids of every device *across reconnects*, with the original
//! SENDACK. The entries cannot be dropped and cannot be rebuilt cheaply
//! (the log is indexed by recipient, not by sender), so an offline device
//! keeps its whole table. In the live form (a ring of 40-byte entries in
//! id order, or a `VecDeque` for the eviction order plus a `HashMap` of
//! 48-byte slots at ≤ 7/8 load for a device whose ids do not increase; see
//! `Live`) a full table costs about 40–80 KB or 117 KB of heap; with
//! millions of offline users that is most of the server's RAM.
//!
//! The packed form keeps the same entries in insertion order (oldest
//! first) as varints of deltas (`Packed`): about 4–6 bytes per entry for
//! real traffic, a full table 4–6 KB (`tests` below and
//! `tests/store_budget.rs` measure it). A lookup scans it without
//! unpacking; anything that changes the table (a new SEND, a completion, a
//! failure) expands it back to the live form first.
//!
//! ## When a table is packed
//!
//! Not at disconnect: a flapping mobile device would pack and unpack on
//! every reconnect. `Core::remove` queues the device (`PackQueue`) and the
//! tick packs those whose connection has been gone for
//! `session.dedup_pack_after_ms`, a bounded number per tick so a
//! reconnect storm's disconnects never stall the core. The queue itself is
//! bounded: past `PACK_QUEUE_MAX` the oldest entry is packed at once.
//! Tables recovered at start belong to devices with no connection yet and
//! are packed as they are built.
//!
//! A table with entries still pending (SEND accepted, SENDACK not yet
//! known: the `None` values) is not packed; when such a SEND completes
//! after its device left, `complete` queues the device again. A table is
//! only ever packed while its device has no connection, but every
//! operation works on either form, so correctness never depends on that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Core;
use crate::proto::error::sendack;
use crate::proto::frame::SendAck;

/// Devices waiting to be packed, at most; beyond it the oldest is packed at once.
pub const PACK_QUEUE_MAX: usize = 65_536;
/// Tables packed per tick at most (a full one takes ~20–30 µs).
pub const PACK_PER_TICK: usize = 32;

/// The last `dedup_per_device` accepted client_msg_ids of one device and
/// their SENDACKs (`None` while the SEND is still being stored).
pub(super) struct Dedup(Form);

enum Form {
    Live(Box<Live>),
    /// Also the form of an empty table: an empty box owns no heap.
    Packed(Packed),
}

/// The live form. Clients number their SENDs with a counter, so a
/// device's ids normally arrive in increasing order: then the entries are
/// one ring in id order, binary-searched on lookup, and forgetting the
/// oldest is a `pop_front` of memory next to what was just read. A hash
/// table (`Ids::Hashed`) is built only when a device's ids stop
/// increasing. Why it matters: in the hash table the oldest id's bucket
/// was last touched a whole table of SENDs ago, so its eviction was a
/// cache miss on every SEND (8 % of server CPU at saturation in
/// `flamegraphs/push.svg`), and a full table took ~117 KB instead of ~40.
#[derive(Default)]
struct Live {
    ids: Ids,
    /// Entries whose answer is not known yet (`None`).
    pending: usize,
}

enum Ids {
    /// Oldest first, strictly increasing ids.
    Sorted(VecDeque<(u64, Option<SendAck>)>),
    /// Insertion order, and the answers by id.
    Hashed { order: VecDeque<u64>, map: HashMap<u64, Option<SendAck>> },
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Sorted(VecDeque::new())
    }
}

impl Live {
    /// Room for `n` entries, in the form that suits ids in this order.
    fn with_capacity(n: usize, increasing: bool) -> Live {
        let ids = if increasing {
            Ids::Sorted(VecDeque::with_capacity(n))
        } else {
            Ids::Hashed { order: VecDeque::with_capacity(n), map: HashMap::with_capacity(n) }
        };
        Live { ids, pending: 0 }
    }

    fn get(&self, id: u64) -> Option<Option<SendAck>> {
        match &self.ids {
            Ids::Sorted(r) => r.binary_search_by_key(&id, |e| e.0).ok().map(|i| r[i].1),
            Ids::Hashed { map, .. } => map.get(&id).copied(),
        }
    }

    /// Sets the answer of `id`, adding it as the newest entry when absent;
    /// returns the previous answer.
    fn set(&mut self, id: u64, v: Option<SendAck>) -> Option<Option<SendAck>> {
        if let Ids::Sorted(r) = &mut self.ids {
            match r.binary_search_by_key(&id, |e| e.0) {
                Ok(i) => return Some(std::mem::replace(&mut r[i].1, v)),
                Err(i) if i == r.len() => {
                    r.push_back((id, v));
                    return None;
                }
                // Older than the newest and not remembered: the ids no
                // longer increase; switch to the hash table for good.
                Err(_) => self.hash(),
            }
        }
        match &mut self.ids {
            Ids::Hashed { order, map } => {
                let old = map.insert(id, v);
                if old.is_none() {
                    order.push_back(id);
                }
                old
            }
            Ids::Sorted(_) => unreachable!("switched above"),
        }
    }

    fn hash(&mut self) {
        if let Ids::Sorted(r) = &mut self.ids {
            let order: VecDeque<u64> = r.iter().map(|e| e.0).collect();
            let map: HashMap<u64, Option<SendAck>> = r.drain(..).collect();
            self.ids = Ids::Hashed { order, map };
        }
    }

    fn pop_oldest(&mut self) -> Option<Option<SendAck>> {
        match &mut self.ids {
            Ids::Sorted(r) => r.pop_front().map(|e| e.1),
            Ids::Hashed { order, map } => {
                let old = order.pop_front()?;
                map.remove(&old)
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Option<SendAck>> {
        match &mut self.ids {
            Ids::Sorted(r) => {
                let i = r.binary_search_by_key(&id, |e| e.0).ok()?;
                r.remove(i).map(|e| e.1)
            }
            Ids::Hashed { order, map } => {
                let old = map.remove(&id)?;
                order.retain(|x| *x != id);
                Some(old)
            }
        }
    }

    fn len(&self) -> usize {
        match &self.ids {
            Ids::Sorted(r) => r.len(),
            Ids::Hashed { order, .. } => order.len(),
        }
    }

    /// Every entry, oldest first.
    fn for_each(&self, mut f: impl FnMut(u64, Option<SendAck>)) {
        match &self.ids {
            Ids::Sorted(r) => r.iter().for_each(|e| f(e.0, e.1)),
            Ids::Hashed { order, map } => order.iter().for_each(|id| f(*id, map.get(id).copied().flatten())),
        }
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup(Form::Packed(Packed::default()))
    }
}

impl Dedup {
    /// A table rebuilt by recovery, (client_msg_id, msg_id, timestamp_ms)
    /// oldest first, packed at once (its device has no connection yet).
    pub(super) fn recovered(acks: impl IntoIterator<Item = (u64, u64, u64)>) -> Self {
        let mut live = Live::default();
        for (cmid, msg_id, ts) in acks {
            let ack = SendAck { client_msg_id: cmid, status: sendack::STORED, msg_id, timestamp_ms: ts };
            live.set(cmid, Some(ack));
        }
        let mut d = Dedup(Form::Live(Box::new(live)));
        d.pack();
        d
    }

    /// `Some(Some(ack))`: accepted and answered; `Some(None)`: accepted,
    /// its SENDACK not known yet; `None`: not remembered. A packed table
    /// is scanned, not expanded.
    pub(super) fn lookup(&self, client_msg_id: u64) -> Option<Option<SendAck>> {
        match &self.0 {
            Form::Live(l) => l.get(client_msg_id),
            Form::Packed(p) => p.iter().find(|a| a.client_msg_id == client_msg_id).map(Some),
        }
    }

    /// A SEND with a new id was accepted: remembered as pending.
    pub(super) fn begin(&mut self, client_msg_id: u64) {
        let l = self.live();
        // One search: already pending stays pending (and counted once).
        if let Some(None) = l.set(client_msg_id, None) {
            return;
        }
        l.pending += 1;
    }

    /// The SEND of `ack.client_msg_id` is stored: remember its answer and
    /// forget the oldest ids beyond `limit`.
    pub(super) fn finish(&mut self, ack: SendAck, limit: usize) {
        let l = self.live();
        // Normally present (pending); absent only if it was evicted while
        // pending, and then it goes in as the newest.
        if let Some(None) = l.set(ack.client_msg_id, Some(ack)) {
            l.pending -= 1;
        }
        while l.len() > limit {
            if let Some(None) = l.pop_oldest() {
                l.pending -= 1;
            }
        }
    }

    /// Some SEND is accepted and not yet answered.
    pub(super) fn has_pending(&self) -> bool {
        matches!(&self.0, Form::Live(l) if l.pending > 0)
    }

    /// The SEND failed: it may be retried with the same id and must be tried again.
    pub(super) fn forget(&mut self, client_msg_id: u64) {
        if self.lookup(client_msg_id).is_none() {
            return;
        }
        let l = self.live();
        if let Some(None) = l.remove(client_msg_id) {
            l.pending -= 1;
        }
    }

    /// Converts a live table without pending entries to the packed form;
    /// false (and nothing changed) when some SEND is still pending.
    pub(super) fn pack(&mut self) -> bool {
        let Form::Live(l) = &self.0 else { return true };
        // Pending: the completion path wants the live form.
        if l.pending > 0 {
            return false;
        }
        let mut acks = Vec::with_capacity(l.len());
        l.for_each(|_, a| acks.extend(a));
        debug_assert_eq!(acks.len(), l.len(), "dedup pending count is off");
        self.0 = Form::Packed(Packed::encode(acks.into_iter()));
        true
    }

    pub(super) fn is_packed(&self) -> bool {
        matches!(self.0, Form::Packed(_))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match &self.0 {
            Form::Live(l) => l.len(),
            Form::Packed(p) => p.iter().count(),
        }
    }

    /// Whether the live table is the sorted ring (tests).
    #[cfg(test)]
    pub(super) fn is_sorted_ring(&self) -> bool {
        matches!(&self.0, Form::Live(l) if matches!(l.ids, Ids::Sorted(_)))
    }

    /// Heap bytes the table owns, from capacities: the boxed live part,
    /// the ring, or the order ring plus the hash table's slots with one
    /// control byte per bucket and a group's worth of trailing control
    /// bytes (hashbrown keeps buckets a power of two, at most 7/8 full).
    /// An estimate of std's layout, checked against RSS in
    /// `tests/store_budget.rs`.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        match &self.0 {
            Form::Packed(p) => p.0.len(),
            Form::Live(l) => {
                let slot = std::mem::size_of::<(u64, Option<SendAck>)>();
                std::mem::size_of::<Live>()
                    + match &l.ids {
                        Ids::Sorted(r) => r.capacity() * slot,
                        Ids::Hashed { order, map } => {
                            let buckets = match map.capacity() {
                                0 => 0,
                                1..=3 => 4,
                                4..=7 => 8,
                                c => (c * 8 / 7).next_power_of_two(),
                            };
                            let table = if buckets == 0 { 0 } else { buckets * (slot + 1) + 16 };
                            order.capacity() * std::mem::size_of::<u64>() + table
                        }
                    }
            }
        }
    }

    /// The live form, expanded from the packed one if need be.
    fn live(&mut self) -> &mut Live {
        if let Form::Packed(p) = &self.0 {
            // Sized once for what it holds and the SEND that expands it (no
            // regrowth through every power of two on the core thread).
            let mut n = 0;
            let mut increasing = true;
            let mut prev = None;
            for a in p.iter() {
                n += 1;
                increasing &= prev.is_none_or(|x| a.client_msg_id > x);
                prev = Some(a.client_msg_id);
            }
            let mut l = Live::with_capacity(n + 1, increasing);
            for ack in p.iter() {
                l.set(ack.client_msg_id, Some(ack));
            }
            self.0 = Form::Live(Box::new(l));
        }
        match &mut self.0 {
            Form::Live(l) => l,
            Form::Packed(_) => unreachable!("expanded above"),
        }
    }
}

/// Answered entries, oldest first, each as three varints (LEB128):
///
/// 1. zigzag(client_msg_id − previous one) << 1 | (status ≠ STORED), as
///    up to 65 bits; a status other than STORED follows as one byte;
/// 2. zigzag(msg_id − (timestamp_ms << 20)): a msg_id is minted as
///    `(counter << 8) | core` with `counter ≥ wall_ms << 12` (`send.rs`),
///    so this is small when the counter kept up with the clock;
/// 3. zigzag(timestamp_ms − previous one).
///
/// All arithmetic wraps, so any u64 values round-trip (an extreme entry
/// takes 31 bytes); the first entry's deltas are from 0.
#[derive(Default)]
struct Packed(Box<[u8]>);

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

fn put_varint(out: &mut [u8], len: &mut usize, mut v: u128) {
    while v >= 0x80 {
        out[*len] = (v as u8) | 0x80;
        *len += 1;
        v >>= 7;
    }
    out[*len] = v as u8;
    *len += 1;
}

/// None at the end of the buffer or on a varint longer than a u128 holds
/// (neither happens to what `encode` wrote).
fn get_varint(b: &[u8], pos: &mut usize) -> Option<u128> {
    let mut v: u128 = 0;
    for shift in (0..128).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u128) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The widest entry: 10 + 1 + 10 + 10 bytes.
const MAX_ENTRY: usize = 31;

/// Writes entry `a` after (`prev_cmid`, `prev_ts`) into `out`; returns its length.
fn put_entry(a: &SendAck, prev_cmid: u64, prev_ts: u64, out: &mut [u8; MAX_ENTRY]) -> usize {
    let mut len = 0;
    let other = a.status != sendack::STORED;
    put_varint(out, &mut len, (zigzag(a.client_msg_id.wrapping_sub(prev_cmid)) as u128) << 1 | other as u128);
    if other {
        out[len] = a.status;
        len += 1;
    }
    put_varint(out, &mut len, zigzag(a.msg_id.wrapping_sub(a.timestamp_ms << 20)) as u128);
    put_varint(out, &mut len, zigzag(a.timestamp_ms.wrapping_sub(prev_ts)) as u128);
    len
}

impl Packed {
    /// Two passes (size, then bytes) so the buffer is allocated once at
    /// its exact size: no growth, no shrinking realloc (which allocators
    /// may do in place, keeping the slack), no temporary copy.
    fn encode<I: Iterator<Item = SendAck> + Clone>(acks: I) -> Packed {
        let walk = |f: &mut dyn FnMut(&[u8])| {
            let (mut cmid, mut ts) = (0u64, 0u64);
            let mut entry = [0u8; MAX_ENTRY];
            for a in acks.clone() {
                let n = put_entry(&a, cmid, ts, &mut entry);
                f(&entry[..n]);
                cmid = a.client_msg_id;
                ts = a.timestamp_ms;
            }
        };
        let mut size = 0;
        walk(&mut |b| size += b.len());
        let mut out = Vec::with_capacity(size);
        walk(&mut |b| out.extend_from_slice(b));
        debug_assert_eq!(out.len(), out.capacity());
        Packed(out.into_boxed_slice())
    }

    fn iter(&self) -> PackedIter<'_> {
        PackedIter { b: &self.0, pos: 0, cmid: 0, ts: 0 }
    }
}

struct PackedIter<'a> {
    b: &'a [u8],
    pos: usize,
    cmid: u64,
    ts: u64,
}

impl Iterator for PackedIter<'_> {
    type Item = SendAck;

    fn next(&mut self) -> Option<SendAck> {
        if self.pos >= self.b.len() {
            return None;
        }
        let first = get_varint(self.b, &mut self.pos)?;
        let status = if first & 1 == 1 {
            let s = *self.b.get(self.pos)?;
            self.pos += 1;
            s
        } else {
            sendack::STORED
        };
        let cmid = self.cmid.wrapping_add(unzigzag((first >> 1) as u64));
        let residual = unzigzag(get_varint(self.b, &mut self.pos)? as u64);
        let ts = self.ts.wrapping_add(unzigzag(get_varint(self.b, &mut self.pos)? as u64));
        self.cmid = cmid;
        self.ts = ts;
        Some(SendAck { client_msg_id: cmid, status, msg_id: residual.wrapping_add(ts << 20), timestamp_ms: ts })
    }
}

/// Devices whose connection ended, oldest first: (due mono ms, the
/// device's `connected_at_ms` then, user, device). The stamp tells a stale
/// entry (the device came back and left again since: a later entry is due
/// later) from the one to act on.
#[derive(Default)]
pub(super) struct PackQueue(VecDeque<(u64, u64, Arc<str>, Arc<str>)>);

impl Core {
    /// `user`'s `device` has no connection now: its table is packed
    /// `dedup_pack_after_ms` from now unless it reconnects first.
    pub(super) fn dedup_went_idle(&mut self, user: Arc<str>, device: Arc<str>) {
        let due = self.shared.clock.mono_ms().saturating_add(self.shared.dedup_pack_after_ms);
        // Most devices only receive: their table is empty, i.e. packed already.
        let Some(stamp) = self.device_mut(&user, &device).filter(|d| !d.dedup.is_packed()).map(|d| d.connected_at_ms) else { return };
        if self.idle_dedup.0.len() >= PACK_QUEUE_MAX {
            if let Some((_, stamp, u, d)) = self.idle_dedup.0.pop_front() {
                self.pack_if_idle(&u, &d, stamp);
            }
        }
        self.idle_dedup.0.push_back((due, stamp, user, device));
    }

    /// From the tick: packs the tables of devices that have been without a
    /// connection since their due time, `PACK_PER_TICK` at most.
    pub(super) fn pack_idle_dedup(&mut self, now: u64) {
        for _ in 0..PACK_PER_TICK {
            match self.idle_dedup.0.front() {
                Some((due, ..)) if *due <= now => {}
                _ => return,
            }
            if let Some((_, stamp, u, d)) = self.idle_dedup.0.pop_front() {
                self.pack_if_idle(&u, &d, stamp);
            }
        }
    }

    fn pack_if_idle(&mut self, user: &str, device: &str, stamp: u64) {
        if let Some(d) = self.device_mut(user, device) {
            // Skipped when the device is online, or came back since (its
            // later disconnect queued it again); `pack` itself refuses while
            // a SEND is pending (its completion queues the device again).
            if d.conn.is_none() && d.connected_at_ms == stamp {
                d.dedup.pack();
            }
        }
    }

    /// A device's table: (packed, entries, heap bytes); tests and measurement.
    #[cfg(test)]
    pub(super) fn dedup_of(&self, user: &str, device: &str) -> Option<(bool, usize, usize)> {
        let u = self.users.get(user)?;
        let d = &u.devices[u.find(device)?];
        Some((d.dedup.is_packed(), d.dedup.len(), d.dedup.heap_bytes()))
    }
}

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(cmid: u64, status: u8, msg_id: u64, ts: u64) -> SendAck {
        SendAck { client_msg_id: cmid, status, msg_id, timestamp_ms: ts }
    }

    fn roundtrip(acks: &[SendAck]) -> Packed {
        let p = Packed::encode(acks.iter().copied());
        assert_eq!(p.iter().collect::<Vec<_>>(), acks, "round trip");
        p
    }

    /// `n` SENDs as `send.rs` answers them: ids 1.., msg_ids minted on
    /// `core` at wall ms `ts` (a burst: several per ms, and gaps).
    fn realistic(n: u64, core: u64) -> Vec<SendAck> {
        let mut counter = 0u64;
        let mut wall = 1_800_000_000_000u64;
        (1..=n)
            .map(|i| {
                wall += [0, 0, 1, 3, 250][(i % 5) as usize];
                counter = (counter + 1).max(wall << 12);
                ack(i, sendack::STORED, (counter << 8) | core, wall)
            })
            .collect()
    }

    #[test]
    fn extreme_values_round_trip() {
        let m = u64::MAX;
        roundtrip(&[
            ack(m, sendack::STORED, m, m),
            ack(0, 255, 0, 0),
            ack(m, 1, 0, m),
            ack(1, sendack::STORED, m, 0),
            ack(m / 2 + 1, sendack::STORED, 1 << 63, 1 << 44),
            ack(m / 2, 0, (1 << 63) - 1, (1 << 44) - 1),
        ]);
        roundtrip(&[]);
        // The first field is 65 bits wide: the widest varint still decodes.
        let p = roundtrip(&[ack(1 << 63, 7, m, m)]);
        assert!(p.0.len() <= 31, "{} bytes", p.0.len());
    }

    #[test]
    fn non_monotonic_ids_and_clock_steps_round_trip() {
        let mut acks = realistic(300, 3);
        // Ids a device chose in any order, a clock stepped back.
        for (i, a) in acks.iter_mut().enumerate() {
            a.client_msg_id = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if i % 7 == 0 {
                a.timestamp_ms -= 10_000;
            }
        }
        roundtrip(&acks);
    }

    #[test]
    fn a_full_table_packs_to_a_few_bytes_per_entry() {
        let acks = realistic(1024, 1);
        let p = roundtrip(&acks);
        let per_entry = p.0.len() as f64 / 1024.0;
        eprintln!("packed: {} B for 1,024 entries ({per_entry:.2} B each)", p.0.len());
        assert!(per_entry <= 6.0, "{per_entry} B per entry");
    }

    #[test]
    fn packing_keeps_every_answer_and_the_eviction_order() {
        let mut d = Dedup::default();
        assert_eq!(d.heap_bytes(), 0, "an empty table owns no heap");
        let acks = realistic(20, 2);
        for a in &acks {
            d.begin(a.client_msg_id);
            d.finish(*a, 16);
        }
        assert_eq!(d.len(), 16);
        assert!(d.pack());
        assert!(d.is_packed());
        for a in &acks[..4] {
            assert_eq!(d.lookup(a.client_msg_id), None, "evicted before packing");
        }
        for a in &acks[4..] {
            assert_eq!(d.lookup(a.client_msg_id), Some(Some(*a)), "a packed table answers without expanding");
        }
        assert!(d.is_packed());
        // A new SEND expands it; the oldest packed entry is the next evicted.
        let next = ack(1_000, sendack::STORED, 42, 43);
        d.begin(next.client_msg_id);
        assert!(!d.is_packed());
        assert_eq!(d.lookup(1_000), Some(None));
        d.finish(next, 16);
        assert_eq!(d.lookup(acks[4].client_msg_id), None, "eviction order survived packing");
        assert_eq!(d.lookup(acks[5].client_msg_id), Some(Some(acks[5])));
        assert_eq!(d.len(), 16);
    }

    #[test]
    fn a_table_with_a_pending_send_is_not_packed() {
        let mut d = Dedup::default();
        d.begin(1);
        d.finish(ack(1, 0, 10, 11), 1024);
        d.begin(2);
        assert!(d.has_pending());
        assert!(!d.pack());
        assert!(!d.is_packed());
        assert_eq!(d.lookup(2), Some(None));
        d.finish(ack(2, 0, 12, 13), 1024);
        assert!(!d.has_pending());
        assert!(d.pack());
        // A failure of an id of a packed table (it is not there) changes nothing.
        d.forget(3);
        assert!(d.is_packed());
        d.forget(2);
        assert_eq!((d.lookup(2), d.lookup(1)), (None, Some(Some(ack(1, 0, 10, 11)))));
    }

    #[test]
    fn recovered_tables_are_packed_and_keep_the_first_position_of_a_repeated_id() {
        let d = Dedup::recovered([(5, 100, 1), (6, 101, 2), (5, 102, 3)]);
        assert!(d.is_packed());
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(5), Some(Some(ack(5, sendack::STORED, 102, 3))));
    }

    /// A full table of realistic answers, live vs packed (heap bytes from
    /// capacities; `tests/dedup_memory.rs` measures the RSS).
    #[test]
    fn a_full_table_costs_a_tenth_or_less_packed() {
        let mut d = Dedup::default();
        for a in realistic(1025, 1) {
            d.begin(a.client_msg_id);
            d.finish(a, 1024);
        }
        let live = d.heap_bytes();
        assert!(d.pack());
        let packed = d.heap_bytes();
        eprintln!("full dedup table (1,024 entries): live {live} B, packed {packed} B");
        assert!(d.lookup(1025).is_some());
        assert!(live >= 1024 * 40, "{live}");
        assert!(packed * 10 < live && packed <= 6 * 1024, "{packed}");
    }

    #[test]
    fn increasing_ids_stay_in_the_sorted_ring_and_evict_oldest_first() {
        let mut d = Dedup::default();
        let acks = realistic(40, 3);
        for a in &acks {
            d.begin(a.client_msg_id);
            assert!(d.is_sorted_ring());
            d.finish(*a, 32);
        }
        assert!(d.is_sorted_ring());
        assert_eq!(d.len(), 32);
        for a in &acks[..8] {
            assert_eq!(d.lookup(a.client_msg_id), None, "evicted");
        }
        for a in &acks[8..] {
            assert_eq!(d.lookup(a.client_msg_id), Some(Some(*a)));
        }
        // A failed SEND in the middle is forgotten; the rest stays.
        d.forget(acks[20].client_msg_id);
        assert_eq!(d.lookup(acks[20].client_msg_id), None);
        assert_eq!(d.lookup(acks[21].client_msg_id), Some(Some(acks[21])));
        assert!(d.is_sorted_ring());
        // Packed and expanded again: still the ring, same answers.
        assert!(d.pack());
        d.begin(10_000);
        assert!(d.is_sorted_ring());
        assert_eq!(d.lookup(acks[39].client_msg_id), Some(Some(acks[39])));
        assert_eq!(d.lookup(10_000), Some(None));
    }

    #[test]
    fn an_id_out_of_order_switches_to_the_hash_table_and_keeps_every_answer_and_the_order() {
        let mut d = Dedup::default();
        for id in [10u64, 20, 30] {
            d.begin(id);
            d.finish(ack(id, sendack::STORED, id * 100, id), 4);
        }
        assert!(d.is_sorted_ring());
        // A device that picks random ids: 15 is older than 30.
        d.begin(15);
        assert!(!d.is_sorted_ring());
        assert_eq!(d.lookup(15), Some(None));
        d.finish(ack(15, sendack::STORED, 1_500, 15), 4);
        for id in [10u64, 20, 30, 15] {
            assert_eq!(d.lookup(id).flatten().map(|a| a.msg_id), Some(id * 100), "{id}");
        }
        // Eviction follows acceptance order, not id order: 10 goes first, then 20.
        d.begin(5);
        d.finish(ack(5, sendack::STORED, 500, 5), 4);
        assert_eq!(d.lookup(10), None);
        assert_eq!(d.lookup(20).flatten().map(|a| a.msg_id), Some(2_000));
        d.begin(7);
        d.finish(ack(7, sendack::STORED, 700, 7), 4);
        assert_eq!(d.lookup(20), None);
        assert_eq!(d.len(), 4);
        // Packed and expanded: out of order, so the hash table again.
        assert!(d.pack());
        assert_eq!(d.lookup(15).flatten().map(|a| a.msg_id), Some(1_500));
        d.begin(99);
        assert!(!d.is_sorted_ring());
        assert_eq!(d.lookup(5).flatten().map(|a| a.msg_id), Some(500));
    }
}
