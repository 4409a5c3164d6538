//! The fake engine: the engine's data as the Lua scripts of `scripts.rs`
//! keep it (inboxes with dense seqs and an append index, dedup claims,
//! group intents, presence, the live nodes), and whom an append notifies
//! (`scripts::NOTIFY`), re-expressed over plain maps. Separate from the world
//! that drives it because it is the model of Redis the simulation trusts;
//! it must read like the scripts, not like the simulation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::super::{Entry, Loaded};

/// Entries one CONNECT or fetch returns at most (`engine.rs` LOAD_LIMIT).
pub(super) const LOAD_LIMIT: usize = 1024;

#[derive(Clone, Default)]
pub(super) struct Inbox {
    pub(super) head: u64,
    pub(super) entries: BTreeMap<u64, Entry>,
    /// append key → seq (`rg:{u}:i`).
    pub(super) index: HashMap<String, u64>,
}

impl Inbox {
    pub(super) fn oldest(&self) -> u64 {
        self.entries.keys().next().copied().unwrap_or(self.head + 1)
    }
    pub(super) fn above(&self, after: u64) -> Vec<Entry> {
        self.entries.range(after + 1..).take(LOAD_LIMIT).map(|(_, e)| e.clone()).collect()
    }
}

/// A device's presence record (`rg:{u}:p`: `node connected_at_ms acked_seq
/// online remote`; only the fields `NOTIFY` reads are kept).
#[derive(Clone, Debug)]
pub(super) struct Presence {
    pub(super) node: String,
    /// The connection's stamp (`connected_at_ms`).
    pub(super) at_ms: u64,
    pub(super) online: bool,
}

/// A live node as the heartbeat keeps it (`rg:{nodes}:z` and `:i`).
#[derive(Clone, Copy)]
pub(super) struct NodeRec {
    /// The world's heartbeat count when the node entered the live set:
    /// a node's view (`targeted`) taken before it did not know this one.
    pub(super) first: u64,
    pub(super) last_ms: u64,
    /// Its address ends with `own-channel`: it listens on `rg:n:<node>`.
    pub(super) own_channel: bool,
}

/// Where an append's notification goes (`scripts::NOTIFY`).
#[derive(Debug)]
pub(super) enum Notify {
    /// `rg:n`: every node.
    All,
    /// `rg:n:<node>` of each of these nodes (maybe none).
    Nodes(Vec<String>),
}

#[derive(Clone, Default)]
pub(super) struct Dedup {
    pub(super) records: HashMap<u64, Vec<u8>>,
    pub(super) order: VecDeque<u64>,
}

/// The engine's data, as the scripts of `scripts.rs` keep it (retention is
/// not simulated: nothing is trimmed, so every gap is a bug).
#[derive(Clone, Default)]
pub(super) struct Engine {
    pub(super) inboxes: HashMap<String, Inbox>,
    pub(super) dedup: HashMap<(String, String), Dedup>,
    /// Pending group sends: intent → claim time.
    pub(super) intents: BTreeMap<String, u64>,
    /// user → device → presence (`rg:{u}:p`).
    pub(super) presence: HashMap<String, BTreeMap<String, Presence>>,
    /// Live nodes by id (`rg:{nodes}:z`).
    pub(super) nodes: BTreeMap<String, NodeRec>,
}

impl Engine {
    /// `scripts::append`: `(seq, new)`.
    pub(super) fn append(&mut self, user: &str, key: &str, e: Entry) -> (u64, bool) {
        let ib = self.inboxes.entry(user.to_string()).or_default();
        if let Some(s) = ib.index.get(key) {
            return (*s, false);
        }
        ib.head += 1;
        let seq = ib.head;
        ib.index.insert(key.to_string(), seq);
        ib.entries.insert(seq, Entry { seq, ..e });
        (seq, true)
    }

    /// `scripts::connect`: the floor raise, the device's presence on
    /// `node` (with `presence`; the same atomic step as the load), then
    /// the entries above `last_seq`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect(&mut self, user: &str, device: &str, node: &str, at_ms: u64, last_seq: u64, raise_floor: bool, presence: bool) -> Loaded {
        if presence {
            self.present(user, device, node, at_ms);
        }
        let ib = self.inboxes.entry(user.to_string()).or_default();
        let mut raised = false;
        if raise_floor && last_seq > ib.head {
            ib.head = last_seq;
            ib.entries.retain(|s, _| *s > last_seq);
            raised = true;
        }
        let oldest = ib.oldest();
        ib.index.retain(|_, s| *s >= oldest);
        Loaded { oldest, head: ib.head, raised, entries: ib.above(last_seq) }
    }

    /// `scripts::FLOOR` (the raise after a data loss the node saw): the
    /// head up to `floor`, and every entry at or below it that is a reuse
    /// moved above the head with its append keys: those below `below`
    /// appended after `after_ms`, and those at the `listed` seqs (where the
    /// node holds another message). Returns whether anything changed, and
    /// each move (from seq, to seq).
    pub(super) fn floor(&mut self, user: &str, floor: u64, below: u64, after_ms: u64, listed: &[u64]) -> (bool, Vec<(u64, u64)>) {
        let ib = self.inboxes.entry(user.to_string()).or_default();
        let mut changed = false;
        if ib.head < floor {
            ib.head = floor;
            changed = true;
        }
        let mut moves = Vec::new();
        let mut seqs: Vec<u64> = if below > 1 { ib.entries.range(..below).filter(|(_, e)| e.timestamp_ms > after_ms).map(|(s, _)| *s).collect() } else { Vec::new() };
        seqs.extend_from_slice(listed);
        for s in seqs {
            if s > floor {
                continue;
            }
            if let Some(e) = ib.entries.remove(&s) {
                ib.head += 1;
                let to = ib.head;
                moves.push((s, to));
                ib.entries.insert(to, Entry { seq: to, ..e });
                for v in ib.index.values_mut().filter(|v| **v == s) {
                    *v = to;
                }
                changed = true;
            }
        }
        (changed, moves)
    }

    /// The presence write of `scripts::connect`: the device online on `node`.
    pub(super) fn present(&mut self, user: &str, device: &str, node: &str, at_ms: u64) {
        let p = Presence { node: node.to_string(), at_ms, online: true };
        self.presence.entry(user.to_string()).or_default().insert(device.to_string(), p);
    }

    /// `scripts::OFFLINE`: the device offline, unless its record is
    /// another connection's (another node, or another stamp: it connected
    /// again since). True when it changed.
    pub(super) fn offline(&mut self, user: &str, device: &str, node: &str, at_ms: u64) -> bool {
        match self.presence.get_mut(user).and_then(|p| p.get_mut(device)) {
            Some(p) if p.node == node && p.at_ms == at_ms => {
                p.online = false;
                true
            }
            _ => false,
        }
    }

    /// `scripts::NOTIFY` for an append to `user` by `me`: with `targeted`
    /// and any presence record, the other nodes a device is online on;
    /// else every node.
    pub(super) fn notify(&self, user: &str, me: &str, targeted: bool) -> Notify {
        match self.presence.get(user) {
            Some(recs) if targeted && !recs.is_empty() => {
                let mut to: Vec<String> = recs.values().filter(|p| p.online && p.node != me).map(|p| p.node.clone()).collect();
                to.sort();
                to.dedup();
                Notify::Nodes(to)
            }
            _ => Notify::All,
        }
    }

    /// `scripts::HEARTBEAT` (with the address word `engine.rs` adds): records
    /// `node`, forgets nodes silent for longer than `ttl_ms`, and returns
    /// whether every live node listens on its own channel (the node's
    /// `targeted`, `heartbeat.rs`). `count` numbers the world's heartbeats.
    pub(super) fn heartbeat(&mut self, node: &str, own_channel: bool, now_ms: u64, ttl_ms: u64, count: u64) -> bool {
        let first = self.nodes.get(node).map_or(count, |r| r.first);
        self.nodes.insert(node.to_string(), NodeRec { first, last_ms: now_ms, own_channel });
        self.nodes.retain(|_, r| r.last_ms + ttl_ms >= now_ms);
        self.nodes.values().all(|r| r.own_channel)
    }

    /// `scripts::FETCH`.
    pub(super) fn fetch(&self, user: &str, after: u64) -> (u64, u64, Vec<Entry>) {
        match self.inboxes.get(user) {
            Some(ib) => (ib.oldest(), ib.head, ib.above(after)),
            None => (1, 0, Vec::new()),
        }
    }

    pub(super) fn head(&self, user: &str) -> Option<u64> {
        self.inboxes.get(user).map(|i| i.head)
    }

    /// `scripts::CLAIM`: the existing record, or None when claimed now.
    pub(super) fn claim(&mut self, sender: &str, device: &str, cmid: u64, rec: Vec<u8>, keep: usize) -> Option<Vec<u8>> {
        let d = self.dedup.entry((sender.to_string(), device.to_string())).or_default();
        if let Some(r) = d.records.get(&cmid) {
            return Some(r.clone());
        }
        d.records.insert(cmid, rec);
        d.order.push_back(cmid);
        if d.order.len() > keep {
            if let Some(old) = d.order.pop_front() {
                d.records.remove(&old);
            }
        }
        None
    }

    pub(super) fn record(&self, sender: &str, device: &str, cmid: u64) -> Option<Vec<u8>> {
        self.dedup.get(&(sender.to_string(), device.to_string()))?.records.get(&cmid).cloned()
    }

    /// `scripts::DONE`.
    pub(super) fn done(&mut self, sender: &str, device: &str, cmid: u64, rec: String) {
        if let Some(r) = self.dedup.get_mut(&(sender.to_string(), device.to_string())).and_then(|d| d.records.get_mut(&cmid)) {
            *r = rec.into_bytes();
        }
    }
}

/// The claim record `scripts::CLAIM` writes: `p msg_id ts node len(targets) targets payload`.
pub(super) fn claim_record(msg_id: u64, ts: u64, node: &str, targets: &[Arc<str>], payload: &[u8]) -> Vec<u8> {
    let joined = targets.iter().map(|t| &**t).collect::<Vec<_>>().join("\n");
    let mut v = format!("p {msg_id} {ts} {node} {} {joined}", joined.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}
