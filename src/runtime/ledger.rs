//! The delivery ledger of one core: for each message appended to an inbox homed here, when each device got its PUSHes and when it acked. Sans-IO, bounded.
//!
//! Fed by the core at three points it already passes: an append (one entry
//! per message and recipient), a PUSH range written to a device (first,
//! replay or retransmission) and a cumulative ack (PUSHACK or CONNECT
//! `last_seq`). Entries live in append order in a ring; two indexes find
//! them: by `(user, seq)` (a per-user ring indexed by `seq - first_seq`:
//! seqs are dense on a user's home core, so an ack covering a range walks a
//! slice) and by `msg_id` (a B-tree set).
//!
//! Bounded by age (`admin.ledger_retention_s`) and count
//! (`admin.ledger_max_entries` per core); the oldest leave first. Cost per
//! message and recipient: one entry (~140 bytes with its first device
//! inline, ~40 more per further device) and two index slots (~40 bytes):
//! about 180 bytes, so the default 200 000 entries cap a core at ~36 MB.
//! CPU: a hash lookup per PUSH batch or ack and a slice walk; measured in
//! the push benchmark (2026-12-01, one worker, 16 → 64 users, 64 B) at
//! ~0.3 µs of server CPU per message on top of ~6.3 µs (docs/admin.md, "Admin
//! API"). A first version with a per-user `BTreeMap` and a `Vec` per
//! message and device cost ~1.5 µs; `ledger_retention_s = 0` turns it off.
//!
//! Not persisted: after a restart the ledger starts empty (ADMIN.md allows it).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// One device's deliveries of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDelivery {
    pub device_id: Arc<str>,
    pub pushed_at_ms: u64,
    pub attempts: u32,
    pub acked_at_ms: Option<u64>,
}

/// One recipient of a message, as the ledger answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientDelivery {
    pub msg_id: u64,
    pub from: Arc<str>,
    pub timestamp_ms: u64,
    pub user: Arc<str>,
    pub seq: u64,
    pub devices: Vec<DeviceDelivery>,
}

struct Entry {
    appended_ms: u64,
    msg_id: u64,
    from: Arc<str>,
    timestamp_ms: u64,
    user: Arc<str>,
    seq: u64,
    /// The first device inline: most messages reach one device, and this
    /// saves an allocation per message.
    d0: Option<DeviceDelivery>,
    dn: Vec<DeviceDelivery>,
}

impl Entry {
    fn devices_mut(&mut self) -> impl Iterator<Item = &mut DeviceDelivery> {
        self.d0.iter_mut().chain(self.dn.iter_mut())
    }

    fn any_acked(&self) -> bool {
        self.d0.iter().chain(self.dn.iter()).any(|d| d.acked_at_ms.is_some())
    }

    fn view(&self) -> RecipientDelivery {
        RecipientDelivery {
            msg_id: self.msg_id,
            from: self.from.clone(),
            timestamp_ms: self.timestamp_ms,
            user: self.user.clone(),
            seq: self.seq,
            devices: self.d0.iter().chain(self.dn.iter()).cloned().collect(),
        }
    }
}

/// Entries reserved up front at most (a larger `ledger_max_entries` grows beyond by doubling).
const RESERVE_MAX_ENTRIES: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub struct LedgerLimits {
    /// 0 = the ledger is off.
    pub retention_ms: u64,
    pub max_entries: usize,
}

/// One user's entries: seqs are dense on the user's home core, so the
/// entry of `seq` is `abs[seq - first_seq]` (no tree, no hashing per seq).
struct UserIdx {
    first_seq: u64,
    abs: VecDeque<u64>,
}

impl UserIdx {
    /// Absolute indexes of the entries for seqs `from..=to` that are here.
    fn range(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        let lo = from.max(self.first_seq) - self.first_seq;
        let hi = to.saturating_sub(self.first_seq).saturating_add(1).min(self.abs.len() as u64);
        let (lo, hi) = (lo.min(hi) as usize, hi as usize);
        self.abs.range(lo..hi).copied()
    }
}

pub struct Ledger {
    lim: LedgerLimits,
    /// `entries[i]` has absolute index `first + i`.
    entries: VecDeque<Entry>,
    first: u64,
    by_user: HashMap<Arc<str>, UserIdx>,
    /// (msg_id, absolute index): a set rather than a map to a `Vec`, so a
    /// message costs no allocation of its own here.
    by_msg: BTreeSet<(u64, u64)>,
}

impl Ledger {
    pub fn new(lim: LedgerLimits) -> Self {
        Ledger { lim, entries: VecDeque::new(), first: 0, by_user: HashMap::new(), by_msg: BTreeSet::new() }
    }

    pub fn enabled(&self) -> bool {
        self.lim.retention_ms > 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A message was appended to `user`'s inbox as `seq`.
    pub fn appended(&mut self, now_ms: u64, msg_id: u64, from: &Arc<str>, timestamp_ms: u64, user: &Arc<str>, seq: u64) {
        if !self.enabled() {
            return;
        }
        if self.entries.capacity() == 0 {
            // Room for the whole bound at once, on first use: growing by
            // doubling would copy the ring (13 MB at 100,000 entries) and
            // fault in twice that in one go, a stall of milliseconds on the
            // core's thread each time. Reserved pages cost nothing until
            // written; an idle server never reserves.
            self.entries.reserve_exact(self.lim.max_entries.min(RESERVE_MAX_ENTRIES).saturating_add(1));
        }
        let abs = self.first + self.entries.len() as u64;
        self.entries.push_back(Entry {
            appended_ms: now_ms,
            msg_id,
            from: from.clone(),
            timestamp_ms,
            user: user.clone(),
            seq,
            d0: None,
            dn: Vec::new(),
        });
        match self.by_user.get_mut(user) {
            Some(u) if u.first_seq + u.abs.len() as u64 == seq => u.abs.push_back(abs),
            Some(u) => {
                // Not dense (cannot happen while every append is recorded;
                // kept safe anyway): forget the older index of this user.
                u.first_seq = seq;
                u.abs.clear();
                u.abs.push_back(abs);
            }
            None => {
                self.by_user.insert(user.clone(), UserIdx { first_seq: seq, abs: VecDeque::from([abs]) });
            }
        }
        self.by_msg.insert((msg_id, abs));
        self.expire(now_ms);
    }

    /// PUSH frames for seqs `from..=to` were written to `device`.
    pub fn pushed(&mut self, now_ms: u64, user: &str, device: &Arc<str>, from: u64, to: u64) {
        if !self.enabled() || from > to {
            return;
        }
        let Ledger { by_user, entries, first, .. } = self;
        let Some(u) = by_user.get(user) else { return };
        for abs in u.range(from, to) {
            let Some(e) = entry_mut(entries, *first, abs) else { continue };
            if let Some(d) = e.devices_mut().find(|d| d.device_id == *device) {
                d.attempts = d.attempts.saturating_add(1);
                continue;
            }
            let d = DeviceDelivery { device_id: device.clone(), pushed_at_ms: now_ms, attempts: 1, acked_at_ms: None };
            if e.d0.is_none() {
                e.d0 = Some(d);
            } else {
                e.dn.push(d);
            }
        }
    }

    /// `device` acknowledged everything up to `upto` (its cursor was `prev`).
    /// Calls `first_ack(latency_ms)` for each message this is the first
    /// device ack of (for the delivery histogram).
    pub fn acked(&mut self, now_ms: u64, user: &str, device: &str, prev: u64, upto: u64, mut first_ack: impl FnMut(u64)) {
        if !self.enabled() || prev >= upto {
            return;
        }
        let Ledger { by_user, entries, first, .. } = self;
        let Some(u) = by_user.get(user) else { return };
        for abs in u.range(prev + 1, upto) {
            let Some(e) = entry_mut(entries, *first, abs) else { continue };
            let first_one = !e.any_acked();
            let ts = e.timestamp_ms;
            let Some(d) = e.devices_mut().find(|d| &*d.device_id == device) else { continue };
            if d.acked_at_ms.is_none() {
                d.acked_at_ms = Some(now_ms);
                if first_one {
                    first_ack(now_ms.saturating_sub(ts));
                }
            }
        }
    }

    /// Drops entries past their retention or over the count bound.
    pub fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.lim.retention_ms);
        while let Some(e) = self.entries.front() {
            if self.entries.len() <= self.lim.max_entries && e.appended_ms >= cutoff {
                break;
            }
            let Some(e) = self.entries.pop_front() else { break };
            let abs = self.first;
            self.first += 1;
            if let Some(u) = self.by_user.get_mut(&e.user) {
                // Entries leave in append order, so a user's oldest goes first.
                if u.abs.front() == Some(&abs) {
                    u.abs.pop_front();
                    u.first_seq += 1;
                }
                if u.abs.is_empty() {
                    self.by_user.remove(&e.user);
                }
            }
            self.by_msg.remove(&(e.msg_id, abs));
        }
    }

    /// Every recipient of `msg_id` homed on this core.
    pub fn query(&self, msg_id: u64) -> Vec<RecipientDelivery> {
        self.by_msg
            .range((msg_id, 0)..=(msg_id, u64::MAX))
            .filter_map(|(_, a)| {
                let i = a.checked_sub(self.first)?;
                self.entries.get(usize::try_from(i).ok()?).map(Entry::view)
            })
            .collect()
    }
}

fn entry_mut(entries: &mut VecDeque<Entry>, first: u64, abs: u64) -> Option<&mut Entry> {
    let i = abs.checked_sub(first)?;
    entries.get_mut(usize::try_from(i).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(ret: u64, max: usize) -> Ledger {
        Ledger::new(LedgerLimits { retention_ms: ret, max_entries: max })
    }

    #[test]
    fn push_attempts_and_first_ack() {
        let mut g = l(10_000, 100);
        let (a, bob, d1, d2): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) = ("alice".into(), "bob".into(), "b1".into(), "b2".into());
        g.appended(100, 7, &a, 90, &bob, 1);
        g.appended(100, 8, &a, 95, &bob, 2);
        g.pushed(110, "bob", &d1, 1, 2);
        g.pushed(120, "bob", &d1, 2, 2); // a retransmission of seq 2
        g.pushed(130, "bob", &d2, 1, 2);
        let mut lat = Vec::new();
        g.acked(140, "bob", "b1", 0, 1, |ms| lat.push(ms));
        g.acked(150, "bob", "b2", 0, 2, |ms| lat.push(ms));
        // seq 1: b1 first (140 - 90); seq 2: b2 first (150 - 95).
        assert_eq!(lat, vec![50, 55]);
        let r = g.query(8);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].seq, 2);
        let b1 = r[0].devices.iter().find(|d| &*d.device_id == "b1").unwrap();
        assert_eq!((b1.pushed_at_ms, b1.attempts, b1.acked_at_ms), (110, 2, None));
        let b2 = r[0].devices.iter().find(|d| &*d.device_id == "b2").unwrap();
        assert_eq!((b2.attempts, b2.acked_at_ms), (1, Some(150)));
        // A later ack does not move the first one.
        g.acked(200, "bob", "b2", 0, 2, |_| panic!("not a first ack"));
        assert_eq!(g.query(8)[0].devices[1].acked_at_ms, Some(150));
        assert!(g.query(99).is_empty());
    }

    #[test]
    fn bounded_by_age_and_count() {
        let mut g = l(1_000, 3);
        let a: Arc<str> = "a".into();
        let u: Arc<str> = "u".into();
        for i in 1..=5 {
            g.appended(i, i, &a, i, &u, i);
        }
        assert_eq!(g.len(), 3);
        assert!(g.query(2).is_empty());
        assert_eq!(g.query(3)[0].seq, 3);
        // Appended at 4 and 5 are within 1 s of 1004; 3 is not.
        g.expire(1_004);
        assert_eq!(g.len(), 2);
        g.expire(10_000);
        assert!(g.is_empty());
        assert!(g.by_user.is_empty() && g.by_msg.is_empty());
        // Pushes for expired seqs are ignored.
        g.pushed(10_000, "u", &a, 1, 5);
    }

    #[test]
    fn off_records_nothing() {
        let mut g = l(0, 10);
        let a: Arc<str> = "a".into();
        g.appended(1, 1, &a, 1, &a, 1);
        assert!(g.is_empty());
    }

    #[test]
    fn group_message_has_one_entry_per_recipient() {
        let mut g = l(1_000, 10);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        g.appended(1, 42, &a, 1, &b, 3);
        g.appended(1, 42, &a, 1, &c, 9);
        let mut seqs: Vec<u64> = g.query(42).iter().map(|r| r.seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![3, 9]);
    }
}
