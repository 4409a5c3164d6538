//! The delivery ledger of one core: for each message appended to an inbox homed here, when each device got its PUSHes and when it acked. Sans-IO, bounded.
//!
//! Fed by the core at three points it already passes: an append (one entry
//! per message and recipient), a PUSH range written to a device (first,
//! replay or retransmission) and a cumulative ack (PUSHACK or CONNECT
//! `last_seq`). Entries live in append order in a ring; two indexes find
//! them: by `(user, seq)` (a per-user `BTreeMap`, so an ack covering a
//! range walks only the entries that exist) and by `msg_id`.
//!
//! Bounded by age (`admin.ledger_retention_s`) and count
//! (`admin.ledger_max_entries` per core); the oldest leave first. Cost per
//! message and recipient: one entry (~96 bytes plus ~40 per device that
//! got it) and two index slots (~48 bytes): about 200 bytes, so the
//! default 200 000 entries cap a core at ~40 MB. CPU: one hash lookup and a
//! B-tree step per PUSH or ack.
//!
//! Not persisted: after a restart the ledger starts empty (ADMIN.md allows it).

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    r: RecipientDelivery,
}

#[derive(Clone, Copy, Debug)]
pub struct LedgerLimits {
    /// 0 = the ledger is off.
    pub retention_ms: u64,
    pub max_entries: usize,
}

pub struct Ledger {
    lim: LedgerLimits,
    /// `entries[i]` has absolute index `first + i`.
    entries: VecDeque<Entry>,
    first: u64,
    by_user: HashMap<Arc<str>, BTreeMap<u64, u64>>,
    by_msg: HashMap<u64, Vec<u64>>,
}

impl Ledger {
    pub fn new(lim: LedgerLimits) -> Self {
        Ledger { lim, entries: VecDeque::new(), first: 0, by_user: HashMap::new(), by_msg: HashMap::new() }
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
        let abs = self.first + self.entries.len() as u64;
        self.entries.push_back(Entry {
            appended_ms: now_ms,
            r: RecipientDelivery {
                msg_id,
                from: from.clone(),
                timestamp_ms,
                user: user.clone(),
                seq,
                devices: Vec::new(),
            },
        });
        match self.by_user.get_mut(user) {
            Some(m) => {
                m.insert(seq, abs);
            }
            None => {
                self.by_user.insert(user.clone(), BTreeMap::from([(seq, abs)]));
            }
        }
        self.by_msg.entry(msg_id).or_default().push(abs);
        self.expire(now_ms);
    }

    /// PUSH frames for seqs `from..=to` were written to `device`.
    pub fn pushed(&mut self, now_ms: u64, user: &str, device: &Arc<str>, from: u64, to: u64) {
        if !self.enabled() || from > to {
            return;
        }
        let Ledger { by_user, entries, first, .. } = self;
        let Some(m) = by_user.get(user) else { return };
        for (_, abs) in m.range(from..=to) {
            let Some(e) = entry_mut(entries, *first, *abs) else { continue };
            match e.r.devices.iter_mut().find(|d| d.device_id == *device) {
                Some(d) => d.attempts = d.attempts.saturating_add(1),
                None => e.r.devices.push(DeviceDelivery {
                    device_id: device.clone(),
                    pushed_at_ms: now_ms,
                    attempts: 1,
                    acked_at_ms: None,
                }),
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
        let Some(m) = by_user.get(user) else { return };
        for (_, abs) in m.range(prev + 1..=upto) {
            let Some(e) = entry_mut(entries, *first, *abs) else { continue };
            let first_one = e.r.devices.iter().all(|d| d.acked_at_ms.is_none());
            let Some(d) = e.r.devices.iter_mut().find(|d| &*d.device_id == device) else { continue };
            if d.acked_at_ms.is_none() {
                d.acked_at_ms = Some(now_ms);
                if first_one {
                    first_ack(now_ms.saturating_sub(e.r.timestamp_ms));
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
            if let Some(m) = self.by_user.get_mut(&e.r.user) {
                if m.get(&e.r.seq) == Some(&abs) {
                    m.remove(&e.r.seq);
                }
                if m.is_empty() {
                    self.by_user.remove(&e.r.user);
                }
            }
            if let Some(v) = self.by_msg.get_mut(&e.r.msg_id) {
                v.retain(|x| *x != abs);
                if v.is_empty() {
                    self.by_msg.remove(&e.r.msg_id);
                }
            }
        }
    }

    /// Every recipient of `msg_id` homed on this core.
    pub fn query(&self, msg_id: u64) -> Vec<RecipientDelivery> {
        let Some(v) = self.by_msg.get(&msg_id) else { return Vec::new() };
        v.iter()
            .filter_map(|a| {
                let i = a.checked_sub(self.first)?;
                self.entries.get(usize::try_from(i).ok()?).map(|e| e.r.clone())
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
