//! In-memory inboxes: a ring of retained messages per user, with count and age retention.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::ring::ChunkRing;
use super::{InboxStore, NewMessage, Retention, StoreError};
use crate::proto::session::{EmptyInbox, EntryRef, InboxRead};

#[derive(Debug)]
struct Stored {
    msg_id: u64,
    timestamp_ms: u64,
    from: Arc<str>,
    payload: Bytes,
}

/// One user's inbox: `entries[i]` has seq `oldest + i`. No `Default`: an
/// empty inbox starts at oldest 1 (`Inbox::new`), not 0.
#[derive(Debug)]
pub struct Inbox {
    /// Seq of `entries[0]`, or head + 1 when empty.
    oldest: u64,
    head: u64,
    entries: ChunkRing<Stored>,
}

impl Inbox {
    fn new() -> Self {
        Inbox { oldest: 1, head: 0, entries: ChunkRing::new() }
    }

    /// Drops what retention no longer keeps; returns the budget bytes freed.
    fn trim(&mut self, r: &Retention, now_ms: u64) -> u64 {
        let mut freed = 0;
        while self.entries.len() as u64 > r.max_messages {
            freed += self.entries.pop_front().map_or(0, |e| entry_cost(e.payload.len()));
            self.oldest += 1;
        }
        let cutoff = now_ms.saturating_sub(r.max_age_ms);
        while self.entries.front().is_some_and(|e| e.timestamp_ms < cutoff) {
            freed += self.entries.pop_front().map_or(0, |e| entry_cost(e.payload.len()));
            self.oldest += 1;
        }
        freed
    }
}

impl InboxRead for Inbox {
    fn bounds(&self) -> (u64, u64) {
        (self.oldest, self.head)
    }

    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        let i = seq.checked_sub(self.oldest)?;
        let e = self.entries.get(usize::try_from(i).ok()?)?;
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload: e.payload.clone() })
    }
}

/// All inboxes of the users homed on one core.
pub struct MemoryStore {
    retention: Retention,
    inboxes: HashMap<Box<str>, Inbox>,
    /// This core's share of `store.memory_budget_bytes`.
    budget_bytes: u64,
    /// What retained entries count against it.
    used_bytes: u64,
}

/// Bytes an entry counts against the memory budget: its payload plus the
/// entry itself and its share of the inbox's bookkeeping. A group
/// message's payload is stored once but counted per recipient, so the
/// budget errs on the safe side.
fn entry_cost(payload_len: usize) -> u64 {
    payload_len as u64 + 64
}

impl MemoryStore {
    /// A store without a memory budget (tests, tools).
    pub fn new(retention: Retention) -> Self {
        Self::with_budget(retention, u64::MAX)
    }

    /// A store whose retained entries may count at most `budget_bytes`;
    /// beyond it appends fail with `MemoryFull` (SENDACK 5, retry later)
    /// until retention frees room.
    pub fn with_budget(retention: Retention, budget_bytes: u64) -> Self {
        MemoryStore { retention, inboxes: HashMap::new(), budget_bytes, used_bytes: 0 }
    }

    /// Bytes counted against the budget now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
}

impl InboxStore for MemoryStore {
    fn append(&mut self, user: &str, msg: NewMessage, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let cost = entry_cost(msg.payload.len());
        if self.used_bytes.saturating_add(cost) > self.budget_bytes {
            return Err(StoreError::MemoryFull { used: self.used_bytes, budget: self.budget_bytes });
        }
        let inbox = match self.inboxes.get_mut(user) {
            Some(i) => i,
            None => self.inboxes.entry(user.into()).or_insert_with(Inbox::new),
        };
        // Shared, not copied: the core copied it out of the connection's
        // read buffer once, so a group message is held once for all of its
        // recipients.
        let payload = msg.payload;
        inbox.head += 1;
        inbox.entries.push_back(Stored { msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, from: msg.from, payload });
        let freed = inbox.trim(&self.retention, now_ms);
        self.used_bytes = (self.used_bytes + cost).saturating_sub(freed);
        Ok((inbox.head, 0))
    }

    fn inbox(&mut self, user: &str, now_ms: u64) -> &dyn InboxRead {
        match self.inboxes.get_mut(user) {
            Some(i) => {
                let freed = i.trim(&self.retention, now_ms);
                self.used_bytes = self.used_bytes.saturating_sub(freed);
                i
            }
            None => &EmptyInbox,
        }
    }

    fn peek(&self, user: &str) -> &dyn InboxRead {
        match self.inboxes.get(user) {
            Some(i) => i,
            None => &EmptyInbox,
        }
    }

    fn stats(&self) -> (usize, u64) {
        (self.inboxes.len(), self.inboxes.values().map(|i| i.entries.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, ts: u64) -> NewMessage {
        NewMessage {
            msg_id: id,
            timestamp_ms: ts,
            from: Arc::from("a"),
            device: Arc::from("d"),
            client_msg_id: id,
            group: None,
            payload: Bytes::from_static(b"p"),
        }
    }

    #[test]
    fn dense_seqs_and_bounds() {
        let mut s = MemoryStore::new(Retention { max_messages: 10, max_age_ms: u64::MAX });
        assert_eq!(s.peek("u").bounds(), (1, 0));
        for i in 1..=3 {
            assert_eq!(s.append("u", msg(i, 0), 0).unwrap().0, i);
        }
        assert_eq!(s.peek("u").bounds(), (1, 3));
        assert_eq!(s.peek("u").get(2).unwrap().msg_id, 2);
        assert!(s.peek("u").get(4).is_none());
        assert!(s.peek("u").get(0).is_none());
    }

    #[test]
    fn count_retention_moves_oldest() {
        let mut s = MemoryStore::new(Retention { max_messages: 3, max_age_ms: u64::MAX });
        for i in 1..=5 {
            s.append("u", msg(i, 0), 0).unwrap();
        }
        assert_eq!(s.peek("u").bounds(), (3, 5));
        assert!(s.peek("u").get(2).is_none());
        assert_eq!(s.peek("u").get(3).unwrap().msg_id, 3);
    }

    #[test]
    fn age_retention_empties_to_head_plus_one() {
        let mut s = MemoryStore::new(Retention { max_messages: 100, max_age_ms: 1_000 });
        s.append("u", msg(1, 0), 0).unwrap();
        s.append("u", msg(2, 500), 500).unwrap();
        assert_eq!(s.inbox("u", 1_200).bounds(), (2, 2));
        assert_eq!(s.inbox("u", 5_000).bounds(), (3, 2));
        // seqs continue after everything expired
        assert_eq!(s.append("u", msg(3, 5_000), 5_000).unwrap().0, 3);
    }

    #[test]
    fn budget_refuses_beyond_it_and_retention_frees_room() {
        let msg = |n: usize| NewMessage {
            msg_id: 1,
            timestamp_ms: 0,
            from: "a".into(),
            device: "d".into(),
            client_msg_id: 1,
            group: None,
            payload: Bytes::from(vec![0u8; n]),
        };
        let mut s = MemoryStore::with_budget(Retention { max_messages: 2, max_age_ms: u64::MAX }, 3 * (100 + 64));
        s.append("u", msg(100), 0).unwrap();
        s.append("v", msg(100), 0).unwrap();
        s.append("w", msg(100), 0).unwrap();
        assert_eq!(s.used_bytes(), 3 * 164);
        let e = s.append("x", msg(100), 0).unwrap_err();
        assert!(e.to_string().contains("memory budget"), "{e}");
        // Nothing was stored for the refused append.
        assert_eq!(s.peek("x").bounds(), (1, 0));
        // Retention of "u" (2 messages) frees what it drops.
        let mut s = MemoryStore::with_budget(Retention { max_messages: 1, max_age_ms: u64::MAX }, 2 * 164);
        for _ in 0..10 {
            s.append("u", msg(100), 0).unwrap();
        }
        assert_eq!(s.used_bytes(), 164);
    }
}
