//! Engine calls in flight: each request a node makes becomes a chain of
//! calls to the fake engine, each run after a random delay and any of them
//! failing, with the engine-side decisions (`rules.rs`) between them where
//! `engine.rs` makes them; plus the heartbeat (the live nodes, each
//! node's `targeted`, the intent sweep) and the lossy notification
//! network with its channels, checked on every append against the nodes
//! that hold the recipient (`check_notify`). Separate from the world's
//! loop and the devices because this is the node↔engine half of the
//! simulation.

use std::sync::Arc;

use bytes::Bytes;

use super::super::rules::{self, AfterClaim, Sweep};
use super::super::{Entry, Event, FleetError, Request, Stored};
use super::fake_engine::{claim_record, Notify};
use super::World;
use crate::runtime::mesh::CoreMsg;

/// Where a SEND is in `engine.rs`'s `send`: one engine call per stage.
pub(super) enum SendStage {
    /// The whole SEND in one call (`scripts::send`, a single engine).
    One,
    Intent,
    Claim,
    Append { msg_id: u64, ts: u64, targets: Vec<Arc<str>>, seqs: Vec<(Arc<str>, u64)> },
    Done { msg_id: u64, ts: u64, seqs: Vec<(Arc<str>, u64)> },
    Forget { stored: Stored },
}

pub(super) enum OpKind {
    Send { core: usize, req: u64, device: Option<Arc<str>>, msg: crate::store::NewMessage, targets: Vec<Arc<str>>, stage: SendStage },
    Connect { core: usize, key: crate::runtime::core::ConnKey, user: Arc<str>, device: Arc<str>, last_seq: u64, at_ms: u64 },
    /// CONNECT's presence write as a call of its own after the load, only
    /// with `Knobs::presence_with_load` off (the rule broken on purpose).
    Present { user: Arc<str>, device: Arc<str>, at_ms: u64 },
    /// A connection that was open ended here (`scripts::OFFLINE`).
    Offline { user: Arc<str>, device: Arc<str>, at_ms: u64 },
    Fetch { core: usize, user: Arc<str>, after: u64 },
    /// The heartbeat's gap check: heads first, then one fetch per user behind.
    Repair { core: usize, users: Vec<(Arc<str>, u64)>, fetches: Option<Vec<(Arc<str>, u64)>> },
    /// The intent sweep completing one stale group send.
    Sweep { intent: String, stage: SweepStage },
    /// The raise after a data loss (`engine.rs` `raise_floor`): the
    /// engine's entries at the seqs the node holds read and compared, the
    /// FLOOR script, then the entries above the floor fetched for the core.
    Floor { core: usize, user: Arc<str>, floor: u64, held: Vec<(u64, u64)>, newer: (u64, u64), stage: FloorStage },
}

pub(super) enum FloorStage {
    Compare,
    Script { moved: Vec<u64> },
    Fetch,
}

pub(super) enum SweepStage {
    Read,
    Append { claim: rules::Claim, left: Vec<String> },
    Done { claim: rules::Claim },
    Forget,
}

pub(super) struct Op {
    pub(super) node: usize,
    /// The node's incarnation that issued it (a crash drops its calls).
    pub(super) inc: u32,
    pub(super) due: u64,
    /// Counts against `max_engine_inflight` (requests from the cores; the
    /// sweep is the engine thread's own work).
    pub(super) request: bool,
    pub(super) kind: OpKind,
}

impl World {
    pub(super) fn call_delay(&mut self) -> u64 {
        1 + self.rng.below(self.k.max_call_ms)
    }

    /// The next stage of a SEND whose claim found `existing` (the rule is
    /// `rules::after_claim`): a retry of a done send gets the original
    /// answer and nothing else (a group send forgets the intent it wrote);
    /// a pending or fresh claim goes on to its appends. Err: the rule
    /// refused the record (the call fails as the engine would).
    fn claimed(&mut self, node: usize, core: usize, req: u64, existing: Option<&[u8]>, msg: &crate::store::NewMessage, targets: Vec<Arc<str>>) -> Result<Option<SendStage>, ()> {
        Ok(match rules::after_claim(existing, msg, targets) {
            None => return Err(()),
            Some(AfterClaim::Answer(stored)) if msg.group.is_some() => Some(SendStage::Forget { stored }),
            Some(AfterClaim::Answer(stored)) => {
                self.post(node, core, Event::Sent { req, result: Ok(stored) });
                None
            }
            Some(AfterClaim::Append { msg_id, ts, targets, .. }) => Some(SendStage::Append { msg_id, ts, targets, seqs: Vec::new() }),
        })
    }

    pub(super) fn post(&mut self, node: usize, core: usize, ev: Event) {
        if let Some(sim) = self.nodes[node].sim.as_ref() {
            sim.mesh[core].post(CoreMsg::Fleet(Box::new(ev)));
        }
    }

    pub(super) fn home(&self, user: &str) -> usize {
        crate::runtime::mesh::home_core(user, self.k.cores)
    }

    /// An append and its notification (`scripts::append` + `NOTIFY`): on
    /// the channel of each other node the recipient's presence shows
    /// online, or on `rg:n` (every node) without presence, from a node of
    /// the previous version, or while the appending node's heartbeat saw
    /// one live (its `targeted`).
    pub(super) fn engine_append(&mut self, node: usize, user: &Arc<str>, key: &str, e: Entry) -> u64 {
        let (seq, new) = self.engine.append(user, key, e.clone());
        if new {
            self.appended_at.insert((user.to_string(), seq), self.now);
            let entry = Entry { seq, ..e };
            let ev = || Event::Entries { user: user.clone(), oldest: 0, head: 0, entries: vec![entry.clone()], fetched: false, repaired: false };
            let home = self.home(user);
            // The appending node's own cores: directly.
            self.post(node, home, ev());
            let targeted = self.nodes[node].targeted && !self.nodes[node].legacy;
            let to = self.engine.notify(user, &self.nodes[node].id, targeted);
            // Who hears it: a node of the previous version listens on `rg:n` only.
            let hears: Vec<usize> = self
                .alive()
                .into_iter()
                .filter(|o| *o != node)
                .filter(|o| match &to {
                    Notify::All => true,
                    Notify::Nodes(ids) => !self.nodes[*o].legacy && ids.contains(&self.nodes[*o].id),
                })
                .collect();
            self.check_notify(node, user, &to, &hears);
            for other in hears {
                if self.rng.chance(self.k.p_drop) {
                    self.stats.dropped_notes += 1;
                    continue;
                }
                let copies = if self.rng.chance(self.k.p_dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let due = self.now + self.rng.below(self.k.max_notify_ms);
                    let inc = self.nodes[other].inc;
                    self.notes.push((due, other, inc, ev()));
                }
            }
        }
        seq
    }

    /// The node's requests, each the first engine call of an op.
    pub(super) fn take_requests(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].sim.is_none() {
                continue;
            }
            // In an order that does not depend on the cores' hash maps, so
            // a seed replays exactly (the delays are drawn in this order).
            let mut batch = Vec::new();
            while let Ok(r) = self.nodes[n].rx.try_recv() {
                let key = match &r {
                    Request::Send { core, req, .. } => format!("0 {core} {req}"),
                    Request::Connect { core, user, device, last_seq, .. } => format!("1 {core} {user} {device} {last_seq}"),
                    Request::Fetch { core, user, after } => format!("2 {core} {user} {after}"),
                    Request::Repair { core, .. } => format!("3 {core}"),
                    Request::Offline { user, device, acked, .. } => format!("4 {user} {device} {acked}"),
                    Request::Floor { core, user, floor, .. } => format!("6 {core} {user} {floor}"),
                    Request::Admin { .. } => "5".to_string(),
                };
                batch.push((key, r));
            }
            batch.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, r) in batch {
                let kind = match r {
                    Request::Send { core, req, device, msg, mut targets } => {
                        if let Some(g) = msg.group.as_deref() {
                            // Fleet mode resolves a group in the engine
                            // (engine.rs `group_get`); the fake engine does it
                            // here. Only members send to the group here.
                            targets = self
                                .groups
                                .iter()
                                .find(|(name, _)| name == g)
                                .map(|(_, m)| m.iter().filter(|x| **x != *msg.from).map(|x| Arc::from(x.as_str())).collect())
                                .unwrap_or_default();
                        }
                        let stage = if rules::one_call(self.k.one_call, targets.len()) {
                            SendStage::One
                        } else if msg.group.is_some() {
                            SendStage::Intent
                        } else {
                            SendStage::Claim
                        };
                        OpKind::Send { core, req, device, msg, targets, stage }
                    }
                    Request::Connect { core, key, user, device, last_seq, remote: _, at_ms } => OpKind::Connect { core, key, user, device, last_seq, at_ms },
                    Request::Offline { user, device, acked: _, at_ms } => OpKind::Offline { user, device, at_ms },
                    Request::Fetch { core, user, after } => OpKind::Fetch { core, user, after },
                    Request::Repair { core, mut users } => {
                        users.sort();
                        OpKind::Repair { core, users, fetches: None }
                    }
                    Request::Floor { .. } if !self.k.floor_after_loss => {
                        self.nodes[n].fleet.done();
                        continue;
                    }
                    Request::Floor { core, user, floor, held, below, after_ms } => {
                        self.stats.floor_requests += 1;
                        OpKind::Floor { core, user, floor, held, newer: (below, after_ms), stage: FloorStage::Compare }
                    }
                    // The admin API's fleet-wide state is not simulated
                    // (tests/fleet_admin.rs covers it against Redis).
                    Request::Admin { reply, .. } => {
                        let _ = reply.send(Err(FleetError::Engine("the admin API is not simulated".into())));
                        self.nodes[n].fleet.done();
                        continue;
                    }
                };
                let due = self.now + self.call_delay();
                let inc = self.nodes[n].inc;
                self.ops.push(Op { node: n, inc, due, request: true, kind });
            }
        }
    }

    /// Runs every engine call that is due, in time order.
    pub(super) fn run_ops(&mut self) {
        loop {
            let Some(i) = (0..self.ops.len()).filter(|i| self.ops[*i].due <= self.now).min_by_key(|i| (self.ops[*i].due, *i)) else { return };
            let op = self.ops.swap_remove(i);
            if self.nodes[op.node].inc != op.inc || self.nodes[op.node].sim.is_none() {
                continue; // its node crashed: the rest of this request never runs
            }
            self.step(op);
        }
    }

    pub(super) fn finish(&mut self, op: &Op) {
        if op.request {
            self.nodes[op.node].fleet.done();
        }
    }

    pub(super) fn again(&mut self, mut op: Op, kind: OpKind) {
        op.due = self.now + self.call_delay();
        op.kind = kind;
        self.ops.push(op);
    }

    /// One engine call of `op`. A failed call may or may not have taken
    /// effect in the engine (a timeout says nothing), and ends the request
    /// with an error.
    pub(super) fn step(&mut self, mut op: Op) {
        let fails = self.rng.chance(self.k.p_call_fails);
        let applied = !fails || self.rng.chance(0.5);
        if fails {
            self.stats.failed_calls += 1;
            self.nodes[op.node].last_fault = self.now;
        }
        let node = op.node;
        let node_id = self.nodes[node].id.clone();
        let kind = std::mem::replace(&mut op.kind, OpKind::Sweep { intent: String::new(), stage: SweepStage::Forget });
        match kind {
            OpKind::Send { core, req, device, msg, targets, stage } => {
                let result: Result<Option<SendStage>, ()> = (|| {
                    let Some(dev) = device.as_deref() else {
                        // An admin publish: appends only (not generated here).
                        return Err(());
                    };
                    let sender = &*msg.from;
                    Ok(match stage {
                        SendStage::Claim => {
                            let payload: &[u8] = if msg.group.is_some() { &msg.payload } else { b"" };
                            let rec = claim_record(msg.msg_id, msg.timestamp_ms, &node_id, &targets, payload);
                            let existing = if applied { self.engine.claim(sender, dev, msg.client_msg_id, rec, self.nodes[node].fleet.dedup_keep) } else { None };
                            if fails {
                                return Err(());
                            }
                            self.claimed(node, core, req, existing.as_deref(), &msg, targets.clone())?
                        }
                        SendStage::One => {
                            let existing = self.engine.record(sender, dev, msg.client_msg_id);
                            if existing.is_none() {
                                if !applied {
                                    return Err(());
                                }
                                // Claim, every copy and done: one atomic step.
                                let key = rules::append_key(sender, dev, msg.client_msg_id);
                                let mut seqs = Vec::with_capacity(targets.len());
                                for t in &targets {
                                    let e = Entry { seq: 0, msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, from: msg.from.clone(), payload: msg.payload.clone() };
                                    seqs.push((t.clone(), self.engine_append(node, t, &key, e)));
                                }
                                let rec = rules::done_record(msg.msg_id, msg.timestamp_ms).into_bytes();
                                self.engine.claim(sender, dev, msg.client_msg_id, rec, self.nodes[node].fleet.dedup_keep);
                                self.stats.one_calls += 1;
                                if fails {
                                    return Err(());
                                }
                                self.post(node, core, Event::Sent { req, result: Ok(Stored { refused: None, msg_id: msg.msg_id, timestamp_ms: msg.timestamp_ms, seqs }) });
                                None
                            } else {
                                if fails {
                                    return Err(());
                                }
                                // Found: done answers, pending is finished step by step.
                                self.claimed(node, core, req, existing.as_deref(), &msg, targets.clone())?
                            }
                        }
                        SendStage::Intent => {
                            // A group send's durable intent, before its claim (`engine.rs`).
                            if applied {
                                let t = self.now;
                                self.engine.intents.insert(rules::intent(sender, dev, msg.client_msg_id), t);
                            }
                            if fails {
                                return Err(());
                            }
                            Some(SendStage::Claim)
                        }
                        SendStage::Append { msg_id, ts, targets, mut seqs } => {
                            let t = targets[seqs.len()].clone();
                            if applied {
                                let e = Entry { seq: 0, msg_id, timestamp_ms: ts, from: msg.from.clone(), payload: msg.payload.clone() };
                                let key = rules::append_key(sender, dev, msg.client_msg_id);
                                let seq = self.engine_append(node, &t, &key, e);
                                seqs.push((t, seq));
                            }
                            if fails {
                                return Err(());
                            }
                            if seqs.len() < targets.len() {
                                Some(SendStage::Append { msg_id, ts, targets, seqs })
                            } else {
                                Some(SendStage::Done { msg_id, ts, seqs })
                            }
                        }
                        SendStage::Done { msg_id, ts, seqs } => {
                            if applied {
                                self.engine.done(sender, dev, msg.client_msg_id, rules::done_record(msg_id, ts));
                            }
                            if fails {
                                return Err(());
                            }
                            let stored = Stored { refused: None, msg_id, timestamp_ms: ts, seqs };
                            if msg.group.is_some() {
                                Some(SendStage::Forget { stored })
                            } else {
                                self.post(node, core, Event::Sent { req, result: Ok(stored) });
                                None
                            }
                        }
                        SendStage::Forget { stored } => {
                            // `forget_intent` ignores its errors.
                            if applied {
                                self.engine.intents.remove(&rules::intent(sender, dev, msg.client_msg_id));
                            }
                            self.post(node, core, Event::Sent { req, result: Ok(stored) });
                            None
                        }
                    })
                })();
                match result {
                    Ok(Some(stage)) => self.again(op, OpKind::Send { core, req, device, msg, targets, stage }),
                    Ok(None) => self.finish(&op),
                    Err(()) => {
                        self.post(node, core, Event::Sent { req, result: Err(FleetError::Timeout) });
                        self.finish(&op);
                    }
                }
            }
            OpKind::Connect { core, key, user, device, last_seq, at_ms } => {
                let result = if applied {
                    let with_load = self.k.presence_with_load;
                    let l = self.engine.connect(&user, &device, &node_id, at_ms, last_seq, self.k.raise_floor, with_load);
                    if l.raised {
                        self.stats.floor_raises += 1;
                    }
                    self.loaded(node, &user, &device);
                    if !with_load {
                        let due = self.now + self.call_delay();
                        self.ops.push(Op { node, inc: op.inc, due, request: false, kind: OpKind::Present { user: user.clone(), device, at_ms } });
                    }
                    Ok(l)
                } else {
                    Err(FleetError::Timeout)
                };
                let result = if fails { Err(FleetError::Timeout) } else { result };
                self.post(node, core, Event::Connected { key, user, result });
                self.finish(&op);
            }
            OpKind::Present { user, device, at_ms } => {
                if applied {
                    self.engine.present(&user, &device, &node_id, at_ms);
                }
            }
            OpKind::Offline { user, device, at_ms } => {
                if applied && self.engine.offline(&user, &device, &node_id, at_ms) {
                    self.offline_applied(node, &user, &device);
                }
                self.finish(&op);
            }
            OpKind::Fetch { core, user, after } => {
                let ev = if fails {
                    Event::Entries { user, oldest: 0, head: 0, entries: Vec::new(), fetched: true, repaired: false }
                } else {
                    let (oldest, head, entries) = self.engine.fetch(&user, after);
                    Event::Entries { user, oldest, head, entries, fetched: true, repaired: false }
                };
                self.post(node, core, ev);
                self.finish(&op);
            }
            OpKind::Repair { core, users, fetches } => match fetches {
                None => {
                    if fails {
                        return self.finish(&op);
                    }
                    let heads: Vec<Option<u64>> = users.iter().map(|(u, _)| self.engine.head(u)).collect();
                    let f = rules::repairs(users, &heads);
                    self.again(op, OpKind::Repair { core, users: Vec::new(), fetches: Some(f) });
                }
                Some(mut f) => {
                    let Some((user, have)) = f.pop() else { return self.finish(&op) };
                    if !fails {
                        let (oldest, head, entries) = self.engine.fetch(&user, have);
                        self.stats.repairs += 1;
                        self.post(node, core, Event::Entries { user, oldest, head, entries, fetched: true, repaired: true });
                    }
                    self.again(op, OpKind::Repair { core, users, fetches: Some(f) });
                }
            },
            OpKind::Floor { core, user, floor, held, newer, stage } => match stage {
                FloorStage::Compare => {
                    // A failed read: the raise goes on without them (`engine.rs`).
                    let mut moved = Vec::new();
                    if let (Some(&(first, _)), false) = (held.first(), fails) {
                        let (_, _, entries) = self.engine.fetch(&user, first - 1);
                        let held: std::collections::HashMap<u64, u64> = held.iter().copied().collect();
                        moved = entries.iter().filter(|e| e.seq <= floor && held.get(&e.seq).is_some_and(|m| *m != e.msg_id)).map(|e| e.seq).collect();
                    }
                    self.again(op, OpKind::Floor { core, user, floor, held, newer, stage: FloorStage::Script { moved } });
                }
                FloorStage::Script { moved } => {
                    if applied {
                        let (changed, moves) = self.engine.floor(&user, floor, newer.0, newer.1, &moved);
                        if std::env::var("RINGGATE_FLEET_SIM_TRACE").is_ok() {
                            eprintln!("t={} FLOOR {user} by {node_id}: floor {floor}, held {held:?}, newer {newer:?}, listed {moved:?}: (from, to) {moves:?}", self.now);
                        }
                        if changed {
                            self.stats.floor_raises += 1;
                        }
                        self.stats.floor_moves += moves.len() as u64;
                        for (_, to) in moves {
                            // For the deadline check: appended now, at its new seq.
                            self.appended_at.insert((user.to_string(), to), self.now);
                        }
                    }
                    if fails {
                        return self.finish(&op);
                    }
                    self.again(op, OpKind::Floor { core, user, floor, held, newer, stage: FloorStage::Fetch });
                }
                FloorStage::Fetch => {
                    if !fails {
                        let (oldest, head, entries) = self.engine.fetch(&user, floor);
                        self.post(node, core, Event::Entries { user, oldest, head, entries, fetched: true, repaired: false });
                    }
                    self.finish(&op);
                }
            },
            OpKind::Sweep { intent, stage } => {
                if fails && !applied {
                    return; // the next heartbeat's sweep tries again
                }
                let Some((sender, device, cmid)) = rules::parse_intent(&intent).map(|(s, d, c)| (s.to_string(), d.to_string(), c.parse::<u64>().unwrap_or(0))) else {
                    self.engine.intents.remove(&intent);
                    return;
                };
                match stage {
                    SweepStage::Read => match rules::sweep(self.engine.record(&sender, &device, cmid).as_deref()) {
                        Sweep::Forget => self.again(op, OpKind::Sweep { intent, stage: SweepStage::Forget }),
                        Sweep::Complete(claim) => {
                            let left = claim.targets.clone();
                            self.again(op, OpKind::Sweep { intent, stage: SweepStage::Append { claim, left } });
                        }
                    },
                    SweepStage::Append { claim, mut left } => {
                        let Some(t) = left.pop() else {
                            return self.again(op, OpKind::Sweep { intent, stage: SweepStage::Done { claim } });
                        };
                        let e = Entry {
                            seq: 0,
                            msg_id: claim.msg_id,
                            timestamp_ms: claim.ts,
                            from: Arc::from(sender.as_str()),
                            payload: Bytes::from(claim.payload.clone()),
                        };
                        let key = rules::append_key(&sender, &device, cmid);
                        self.engine_append(node, &Arc::from(t.as_str()), &key, e);
                        if fails {
                            return;
                        }
                        self.again(op, OpKind::Sweep { intent, stage: SweepStage::Append { claim, left } });
                    }
                    SweepStage::Done { claim } => {
                        self.engine.done(&sender, &device, cmid, rules::done_record(claim.msg_id, claim.ts));
                        self.stats.sweeps_completed += 1;
                        if fails {
                            return;
                        }
                        self.again(op, OpKind::Sweep { intent, stage: SweepStage::Forget });
                    }
                    SweepStage::Forget => {
                        self.engine.intents.remove(&intent);
                    }
                }
            }
        }
    }

    /// Every `heartbeat_ms` per live node (`heartbeat.rs`): the node in the
    /// live set, its `targeted` (every live node listens on its own
    /// channel), and the intent sweep (intents older than 3 x heartbeat +
    /// engine timeout).
    pub(super) fn heartbeats(&mut self) {
        for n in self.alive() {
            if self.now < self.nodes[n].next_hb {
                continue;
            }
            self.nodes[n].next_hb = self.now + self.k.heartbeat_ms;
            self.heartbeat_count += 1;
            let (id, own) = (self.nodes[n].id.clone(), !self.nodes[n].legacy);
            let all_own = self.engine.heartbeat(&id, own, self.now, 3 * self.k.heartbeat_ms, self.heartbeat_count);
            self.nodes[n].targeted = self.k.targeted && all_own;
            self.nodes[n].heartbeat = self.heartbeat_count;
            let age = 3 * self.k.heartbeat_ms + self.fleet_cfg().engine_timeout_ms;
            let cutoff = self.now.saturating_sub(age);
            let stale: Vec<String> = self.engine.intents.iter().filter(|(_, t)| **t <= cutoff).map(|(i, _)| i.clone()).take(32).collect();
            let inc = self.nodes[n].inc;
            for intent in stale {
                let due = self.now + self.call_delay();
                self.ops.push(Op { node: n, inc, due, request: false, kind: OpKind::Sweep { intent, stage: SweepStage::Read } });
            }
        }
    }

    pub(super) fn deliver_notes(&mut self) {
        let mut i = 0;
        while i < self.notes.len() {
            if self.notes[i].0 <= self.now {
                let (_, node, inc, ev) = self.notes.swap_remove(i);
                if self.nodes[node].inc == inc {
                    let home = match &ev {
                        Event::Entries { user, .. } => self.home(user),
                        _ => 0,
                    };
                    self.post(node, home, ev);
                }
            } else {
                i += 1;
            }
        }
    }
}
