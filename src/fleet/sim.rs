//! A seeded simulation of the fleet rules in virtual time: real nodes (their cores, sessions, mirrors and fleet glue) over a fake engine and a lossy notification network, with crashes, checked against FLEET.md's invariants over many seeds.
//!
//! What is real and what is simulated:
//!
//! - **Real**: every node is `runtime::core::sim::Sim` in fleet mode: the
//!   `Core`s with their sessions, dedup tables, `FleetStore` mirrors and the
//!   fleet glue (`runtime/core/fleet.rs`: deferred CONNECT, SEND through the
//!   engine, notifications, gap repair every heartbeat), reached only
//!   through the wire frames of simulated clients. The engine-side
//!   decisions are `rules.rs`, called here between the fake engine's calls
//!   exactly where `engine.rs` calls them between Redis calls.
//! - **Simulated**: the engine. [`Engine`] re-expresses the Lua scripts of
//!   `scripts.rs` (append idempotent by msg_id with dense seqs, CONNECT's
//!   floor raise, fetch, claim / done with a bounded per-device list,
//!   group intents, heartbeats) over plain maps. Every request of a node
//!   becomes a chain of engine calls, each run after a random delay, so
//!   the calls of several nodes interleave; any call may fail (the node
//!   answers SENDACK 5), and a node may crash between any two of them
//!   (claim done, some appends done, no SENDACK). Notifications (`rg:n`)
//!   to other nodes are dropped, delayed, reordered and duplicated; a
//!   node's own appends reach its cores directly, as in `engine.rs`.
//!
//! Devices connect, disconnect, move between nodes, send to users and to
//! a group and retry every unanswered SEND with the same `client_msg_id`
//! (on whichever node they reach) until it is confirmed, or give up on it
//! (a device that never comes back: a group send it left half done must be
//! completed by a survivor). Checked on every frame: a seq is never given
//! two messages (no reuse), a device's seqs are dense except where its
//! CONNACK announced a loss, no message reaches a device twice, every
//! SENDACK 0 of one `client_msg_id` carries the same msg_id, CONNACK's
//! head is never below the `last_seq` presented (the floor), and a
//! message appended while a device was connected reaches it within
//! 2 x `heartbeat_ms` (plus the engine's call delays) when nothing failed
//! meanwhile. At quiescence: every confirmed message and every message in
//! the engine is in each recipient device exactly once, and no group send
//! is left pending.
//!
//! `RINGGATE_FLEET_SIM_SEED=N` replays one seed; `RINGGATE_FLEET_SIM_SEEDS=N`
//! runs N seeds (default in `many_seeds`). A failure names its seed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::rules::{self, AfterClaim, Sweep};
use super::{Entry, Event, Fleet, FleetError, Loaded, Node as RouteNode, Request, Stored};
use crate::config::Config;
use crate::proto::error::{connack, sendack};
use crate::proto::frame::{Frame, Send, Utf8Bytes};
use crate::runtime::core::sim::{Client, Sim};
use crate::runtime::core::VirtualClock;
use crate::runtime::mesh::CoreMsg;
use crate::runtime::core::sim::net as mem;
use crate::store::Retention;

/// splitmix64: small, seedable, and enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

// ---- the engine ------------------------------------------------------------

/// Entries one CONNECT or fetch returns at most (`engine.rs` LOAD_LIMIT).
const LOAD_LIMIT: usize = 1024;

#[derive(Clone, Default)]
struct Inbox {
    head: u64,
    entries: BTreeMap<u64, Entry>,
    /// append key → seq (`rg:{u}:i`).
    index: HashMap<String, u64>,
}

impl Inbox {
    fn oldest(&self) -> u64 {
        self.entries.keys().next().copied().unwrap_or(self.head + 1)
    }
    fn above(&self, after: u64) -> Vec<Entry> {
        self.entries.range(after + 1..).take(LOAD_LIMIT).map(|(_, e)| e.clone()).collect()
    }
}

#[derive(Clone, Default)]
struct Dedup {
    records: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

/// The engine's data, as the scripts of `scripts.rs` keep it (retention is
/// not simulated: nothing is trimmed, so every gap is a bug).
#[derive(Clone, Default)]
struct Engine {
    inboxes: HashMap<String, Inbox>,
    dedup: HashMap<(String, String), Dedup>,
    /// Pending group sends: intent → claim time.
    intents: BTreeMap<String, u64>,
}

impl Engine {
    /// `scripts::append`: `(seq, new)`.
    fn append(&mut self, user: &str, key: &str, e: Entry) -> (u64, bool) {
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

    /// `scripts::connect`: the floor raise, then the entries above `last_seq`.
    fn connect(&mut self, user: &str, last_seq: u64, raise_floor: bool) -> Loaded {
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

    /// `scripts::FETCH`.
    fn fetch(&self, user: &str, after: u64) -> (u64, u64, Vec<Entry>) {
        match self.inboxes.get(user) {
            Some(ib) => (ib.oldest(), ib.head, ib.above(after)),
            None => (1, 0, Vec::new()),
        }
    }

    fn head(&self, user: &str) -> Option<u64> {
        self.inboxes.get(user).map(|i| i.head)
    }

    /// `scripts::CLAIM`: the existing record, or None when claimed now.
    fn claim(&mut self, sender: &str, device: &str, cmid: u64, rec: Vec<u8>, keep: usize) -> Option<Vec<u8>> {
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

    fn record(&self, sender: &str, device: &str, cmid: u64) -> Option<Vec<u8>> {
        self.dedup.get(&(sender.to_string(), device.to_string()))?.records.get(&cmid).cloned()
    }

    /// `scripts::DONE`.
    fn done(&mut self, sender: &str, device: &str, cmid: u64, rec: String) {
        if let Some(r) = self.dedup.get_mut(&(sender.to_string(), device.to_string())).and_then(|d| d.records.get_mut(&cmid)) {
            *r = rec.into_bytes();
        }
    }
}

/// The claim record `scripts::CLAIM` writes: `p msg_id ts node len(targets) targets payload`.
fn claim_record(msg_id: u64, ts: u64, node: &str, targets: &[Arc<str>], payload: &[u8]) -> Vec<u8> {
    let joined = targets.iter().map(|t| &**t).collect::<Vec<_>>().join("\n");
    let mut v = format!("p {msg_id} {ts} {node} {} {joined}", joined.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

// ---- engine calls in flight ---------------------------------------------------

/// Where a SEND is in `engine.rs`'s `send`: one engine call per stage.
enum SendStage {
    /// The whole SEND in one call (`scripts::send`, a single engine).
    One,
    Intent,
    Claim,
    Append { msg_id: u64, ts: u64, targets: Vec<Arc<str>>, seqs: Vec<(Arc<str>, u64)> },
    Done { msg_id: u64, ts: u64, seqs: Vec<(Arc<str>, u64)> },
    Forget { stored: Stored },
}

enum OpKind {
    Send { core: usize, req: u64, device: Option<Arc<str>>, msg: crate::store::NewMessage, targets: Vec<Arc<str>>, stage: SendStage },
    Connect { core: usize, key: crate::runtime::core::ConnKey, user: Arc<str>, last_seq: u64 },
    Fetch { core: usize, user: Arc<str>, after: u64 },
    /// The heartbeat's gap check: heads first, then one fetch per user behind.
    Repair { core: usize, users: Vec<(Arc<str>, u64)>, fetches: Option<Vec<(Arc<str>, u64)>> },
    /// The intent sweep completing one stale group send.
    Sweep { intent: String, stage: SweepStage },
}

enum SweepStage {
    Read,
    Append { claim: rules::Claim, left: Vec<String> },
    Done { claim: rules::Claim },
    Forget,
}

struct Op {
    node: usize,
    /// The node's incarnation that issued it (a crash drops its calls).
    inc: u32,
    due: u64,
    /// Counts against `max_engine_inflight` (requests from the cores; the
    /// sweep is the engine thread's own work).
    request: bool,
    kind: OpKind,
}

// ---- nodes, network, devices ---------------------------------------------------

struct NodeState {
    id: String,
    sim: Option<Sim>,
    fleet: Arc<Fleet>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Request>,
    inc: u32,
    restart_at: u64,
    next_hb: u64,
    /// Last virtual time an engine call of this node failed or it restarted:
    /// the repair deadline is not promised across a failure.
    last_fault: u64,
}

struct Conn {
    node: usize,
    inc: u32,
    client: Client,
    /// CONNACK 0 received at this time.
    open_since: Option<u64>,
    /// Seqs below this were announced lost by the CONNACK (`oldest_seq`).
    oldest: u64,
    /// SENDs written on this connection and not answered.
    inflight: HashSet<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    User(usize),
    Group,
}

struct Outgoing {
    cmid: u64,
    target: Target,
    next_try: u64,
    /// Written on the current connection at this time (a device retries
    /// an unanswered SEND after `RESEND_MS`, as the ladder does).
    sent_at: u64,
}

const RESEND_MS: u64 = 1_500;

struct Device {
    user: usize,
    id: String,
    conn: Option<Conn>,
    reconnect_at: u64,
    /// Highest seq with nothing missing below it (what CONNECT presents).
    last_seq: u64,
    /// seq → payload tag, for every seq this device ever took.
    seen: BTreeMap<u64, String>,
    /// tag → (seq, msg_id): a message reaching the device twice is a bug,
    /// and its msg_id must be the one its sender's SENDACK carried.
    got: HashMap<String, (u64, u64)>,
    next_cmid: u64,
    outgoing: Vec<Outgoing>,
}

#[derive(Default)]
struct SendRec {
    recipients: Vec<usize>,
    /// msg_id of the first SENDACK 0.
    confirmed: Option<u64>,
    group: bool,
    abandoned: bool,
}

/// The knobs of one run.
#[derive(Clone, Copy)]
pub struct Knobs {
    pub nodes: usize,
    pub cores: usize,
    pub users: usize,
    pub devices_per_user: usize,
    pub heartbeat_ms: u64,
    pub run_ms: u64,
    /// Largest delay of one engine call.
    pub max_call_ms: u64,
    pub p_call_fails: f64,
    pub p_drop: f64,
    pub p_dup: f64,
    pub max_notify_ms: u64,
    /// Per 10 ms step.
    pub p_crash: f64,
    pub p_send: f64,
    pub p_move: f64,
    pub p_give_up: f64,
    /// The engine reverts to what it held `lag` ms earlier (a failover to a
    /// lagging replica), at most once per run, with this chance per step.
    pub p_data_loss: f64,
    /// The CONNECT script raises the inbox head past `last_seq` (turn off
    /// to see the simulation catch a seq reuse).
    pub raise_floor: bool,
    /// A single engine: a SEND is one call (`rules::one_call`); else the
    /// multi-step path of a Cluster. `run_seeds` alternates it by seed.
    pub one_call: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            nodes: 3,
            cores: 2,
            users: 4,
            devices_per_user: 2,
            heartbeat_ms: 200,
            run_ms: 6_000,
            max_call_ms: 20,
            p_call_fails: 0.01,
            p_drop: 0.2,
            p_dup: 0.1,
            max_notify_ms: 60,
            p_crash: 0.002,
            p_send: 0.03,
            p_move: 0.004,
            p_give_up: 0.3,
            p_data_loss: 0.0,
            raise_floor: true,
            one_call: false,
        }
    }
}

const STEP_MS: u64 = 10;
const KEEPALIVE_S: u16 = 600;
const GROUP: &str = "team";

pub struct World {
    seed: u64,
    k: Knobs,
    rng: Rng,
    now: u64,
    clock: Arc<VirtualClock>,
    cfg: Config,
    users: Vec<String>,
    groups: Vec<(String, Vec<String>)>,
    nodes: Vec<NodeState>,
    engine: Engine,
    /// (time, engine) snapshots for a lagging replica.
    snapshots: VecDeque<(u64, Engine)>,
    lost_data: bool,
    ops: Vec<Op>,
    /// (due, node, inc, event) notifications in the network.
    notes: Vec<(u64, usize, u32, Event)>,
    devices: Vec<Device>,
    sends: HashMap<(usize, u64), SendRec>,
    /// (user, seq) → when the engine appended it.
    appended_at: HashMap<(String, u64), u64>,
    /// msg_id → the SEND (device, client_msg_id) confirmed with it: msg_ids are unique in the fleet.
    msg_ids: HashMap<u64, (usize, u64)>,
    /// Statistics for the report line.
    pub stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub confirmed: u64,
    pub pushes: u64,
    pub crashes: u64,
    pub dropped_notes: u64,
    pub failed_calls: u64,
    pub sweeps_completed: u64,
    pub repairs: u64,
    pub floor_raises: u64,
    pub data_losses: u64,
    /// SENDs stored by one atomic call.
    pub one_calls: u64,
}

impl World {
    pub fn new(seed: u64, k: Knobs) -> World {
        mem::reset();
        let mut cfg = Config::default();
        let mut fcfg = crate::config::FleetConfig::default();
        fcfg.heartbeat_ms = k.heartbeat_ms;
        fcfg.engine_timeout_ms = 500;
        fcfg.redis = vec!["redis://sim".into()];
        cfg.fleet = Some(fcfg);
        let users: Vec<String> = (0..k.users).map(|i| format!("u{i}")).collect();
        let groups = vec![(GROUP.to_string(), users.iter().take(3.min(users.len())).cloned().collect())];
        let clock = VirtualClock::new(1_000, crate::runtime::core::sim::WALL_START_MS);
        let mut w = World {
            seed,
            k,
            rng: Rng(seed ^ 0x5eed_f1ee7),
            now: 0,
            clock,
            cfg,
            users,
            groups,
            nodes: Vec::new(),
            engine: Engine::default(),
            snapshots: VecDeque::new(),
            lost_data: false,
            ops: Vec::new(),
            notes: Vec::new(),
            devices: Vec::new(),
            sends: HashMap::new(),
            appended_at: HashMap::new(),
            msg_ids: HashMap::new(),
            stats: Stats::default(),
        };
        for i in 0..k.nodes {
            let n = w.start_node(format!("n{i}"));
            w.nodes.push(n);
        }
        for u in 0..k.users {
            for d in 0..k.devices_per_user {
                w.devices.push(Device {
                    user: u,
                    id: format!("d{d}"),
                    conn: None,
                    reconnect_at: 0,
                    last_seq: 0,
                    seen: BTreeMap::new(),
                    got: HashMap::new(),
                    next_cmid: 1,
                    outgoing: Vec::new(),
                });
            }
        }
        w
    }

    fn fail(&self, what: String) -> ! {
        panic!("fleet simulation seed {} (replay: RINGGATE_FLEET_SIM_SEED={}) at t={} ms: {what}", self.seed, self.seed, self.now)
    }

    fn start_node(&mut self, id: String) -> NodeState {
        let me = RouteNode { id: id.clone(), host: "127.0.0.1".into(), port: 1, transport: "tcp".into() };
        let retention = Retention { max_messages: u64::MAX, max_age_ms: u64::MAX };
        let (fleet, rx) = Fleet::new(self.fleet_cfg().clone(), id.clone(), me, retention, 1024);
        // The engine's LEASE gives each live node its own index (n3 → 3).
        fleet.set_lease_forever(id.trim_start_matches('n').parse().unwrap_or(0));
        let groups: Vec<(&str, Vec<&str>)> = self.groups.iter().map(|(g, m)| (g.as_str(), m.iter().map(|s| s.as_str()).collect())).collect();
        let gref: Vec<(&str, &[&str])> = groups.iter().map(|(g, m)| (*g, m.as_slice())).collect();
        let sim = Sim::fleet_node(self.k.cores, self.cfg.clone(), &gref, self.clock.clone(), fleet.clone());
        NodeState { id, sim: Some(sim), fleet, rx, inc: 0, restart_at: 0, next_hb: self.now, last_fault: self.now }
    }

    fn fleet_cfg(&self) -> &crate::config::FleetConfig {
        self.cfg.fleet.as_ref().expect("a fleet config")
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].sim.is_some()).collect()
    }

    // ---- engine calls ---------------------------------------------------------

    fn call_delay(&mut self) -> u64 {
        1 + self.rng.below(self.k.max_call_ms)
    }

    fn post(&mut self, node: usize, core: usize, ev: Event) {
        if let Some(sim) = self.nodes[node].sim.as_ref() {
            sim.mesh[core].post(CoreMsg::Fleet(Box::new(ev)));
        }
    }

    fn home(&self, user: &str) -> usize {
        crate::runtime::mesh::home_core(user, self.k.cores)
    }

    /// An append and its notification (`engine.rs` append + `rg:n`).
    fn engine_append(&mut self, node: usize, user: &Arc<str>, key: &str, e: Entry) -> u64 {
        let (seq, new) = self.engine.append(user, key, e.clone());
        if new {
            self.appended_at.insert((user.to_string(), seq), self.now);
            let entry = Entry { seq, ..e };
            let ev = || Event::Entries { user: user.clone(), oldest: 0, head: 0, entries: vec![entry.clone()], fetched: false, repaired: false };
            let home = self.home(user);
            // The appending node's own cores: directly.
            self.post(node, home, ev());
            for other in self.alive() {
                if other == node {
                    continue;
                }
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
    fn take_requests(&mut self) {
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
                    Request::Offline { user, device, acked } => format!("4 {user} {device} {acked}"),
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
                    Request::Connect { core, key, user, device: _, last_seq, remote: _ } => OpKind::Connect { core, key, user, last_seq },
                    Request::Fetch { core, user, after } => OpKind::Fetch { core, user, after },
                    Request::Repair { core, mut users } => {
                        users.sort();
                        OpKind::Repair { core, users, fetches: None }
                    }
                    // Only after an engine data loss, which the simulation's
                    // default knobs never cause (tests/fleet_failover.rs
                    // covers it against Redis).
                    Request::Offline { .. } | Request::Floor { .. } => {
                        self.nodes[n].fleet.done();
                        continue;
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
    fn run_ops(&mut self) {
        loop {
            let Some(i) = (0..self.ops.len()).filter(|i| self.ops[*i].due <= self.now).min_by_key(|i| (self.ops[*i].due, *i)) else { return };
            let op = self.ops.swap_remove(i);
            if self.nodes[op.node].inc != op.inc || self.nodes[op.node].sim.is_none() {
                continue; // its node crashed: the rest of this request never runs
            }
            self.step(op);
        }
    }

    fn finish(&mut self, op: &Op) {
        if op.request {
            self.nodes[op.node].fleet.done();
        }
    }

    fn again(&mut self, mut op: Op, kind: OpKind) {
        op.due = self.now + self.call_delay();
        op.kind = kind;
        self.ops.push(op);
    }

    /// One engine call of `op`. A failed call may or may not have taken
    /// effect in the engine (a timeout says nothing), and ends the request
    /// with an error.
    fn step(&mut self, mut op: Op) {
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
                            match rules::after_claim(existing.as_deref(), &msg, targets.clone()) {
                                None => return Err(()),
                                Some(AfterClaim::Answer(stored)) => {
                                    // A retry of a done send: the original answer, nothing
                                    // else (a group send forgets the intent it wrote).
                                    if msg.group.is_some() {
                                        Some(SendStage::Forget { stored })
                                    } else {
                                        self.post(node, core, Event::Sent { req, result: Ok(stored) });
                                        None
                                    }
                                }
                                Some(AfterClaim::Append { msg_id, ts, targets, .. }) => Some(SendStage::Append { msg_id, ts, targets, seqs: Vec::new() }),
                            }
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
                                match rules::after_claim(existing.as_deref(), &msg, targets.clone()) {
                                    None => return Err(()),
                                    Some(AfterClaim::Answer(stored)) => {
                                        if msg.group.is_some() {
                                            Some(SendStage::Forget { stored })
                                        } else {
                                            self.post(node, core, Event::Sent { req, result: Ok(stored) });
                                            None
                                        }
                                    }
                                    Some(AfterClaim::Append { msg_id, ts, targets, .. }) => Some(SendStage::Append { msg_id, ts, targets, seqs: Vec::new() }),
                                }
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
            OpKind::Connect { core, key, user, last_seq } => {
                let result = if applied {
                    let l = self.engine.connect(&user, last_seq, self.k.raise_floor);
                    if l.raised {
                        self.stats.floor_raises += 1;
                    }
                    Ok(l)
                } else {
                    Err(FleetError::Timeout)
                };
                let result = if fails { Err(FleetError::Timeout) } else { result };
                self.post(node, core, Event::Connected { key, user, result });
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

    /// Every `heartbeat_ms` per live node: the intent sweep (`engine.rs`
    /// heartbeat: intents older than 3 x heartbeat + engine timeout).
    fn heartbeats(&mut self) {
        for n in self.alive() {
            if self.now < self.nodes[n].next_hb {
                continue;
            }
            self.nodes[n].next_hb = self.now + self.k.heartbeat_ms;
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

    fn deliver_notes(&mut self) {
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

    // ---- faults ------------------------------------------------------------------

    fn crash(&mut self, n: usize) {
        let ns = &mut self.nodes[n];
        ns.sim = None;
        ns.inc += 1;
        ns.restart_at = self.now + 200 + self.rng.below(1_000);
        self.stats.crashes += 1;
        for (di, d) in self.devices.iter_mut().enumerate() {
            if d.conn.as_ref().is_some_and(|c| c.node == n) {
                let c = d.conn.take();
                d.reconnect_at = self.now + 1 + self.rng.below(300);
                // Unanswered SENDs are retried on the next connection, or
                // given up (the device is gone too).
                let mut inflight: Vec<u64> = c.map(|c| c.inflight.into_iter().collect()).unwrap_or_default();
                inflight.sort();
                for cmid in inflight {
                    if self.rng.chance(self.k.p_give_up) {
                        d.outgoing.retain(|o| o.cmid != cmid);
                        if let Some(r) = self.sends.get_mut(&(di, cmid)) {
                            r.abandoned = true;
                        }
                    }
                }
                for o in &mut d.outgoing {
                    o.next_try = o.next_try.min(self.now);
                }
            }
        }
    }

    fn restart(&mut self, n: usize) {
        let id = self.nodes[n].id.clone();
        let inc = self.nodes[n].inc;
        let mut fresh = self.start_node(id);
        fresh.inc = inc;
        fresh.last_fault = self.now;
        self.nodes[n] = fresh;
    }

    fn faults(&mut self, calm: bool) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].sim.is_none() && self.now >= self.nodes[n].restart_at {
                self.restart(n);
            }
        }
        if calm {
            return;
        }
        let alive = self.alive();
        if alive.len() >= 2 && self.rng.chance(self.k.p_crash) {
            let victim = alive[self.rng.below(alive.len() as u64) as usize];
            self.crash(victim);
        }
        if self.now % 100 == 0 {
            self.snapshots.push_back((self.now, self.engine.clone()));
            if self.snapshots.len() > 10 {
                self.snapshots.pop_front();
            }
        }
        if !self.lost_data && self.snapshots.len() >= 5 && self.rng.chance(self.k.p_data_loss) {
            // A failover to a replica that lagged: the engine forgets its last writes.
            let (_, old) = self.snapshots.pop_front().unwrap_or_default();
            self.engine = old;
            self.lost_data = true;
            self.stats.data_losses += 1;
            for n in self.alive() {
                self.nodes[n].last_fault = self.now;
            }
        }
    }

    // ---- devices -----------------------------------------------------------------

    fn connect(&mut self, d: usize) {
        let alive = self.alive();
        if alive.is_empty() {
            return;
        }
        let node = alive[self.rng.below(alive.len() as u64) as usize];
        let core = self.rng.below(self.k.cores as u64) as usize;
        let user = self.users[self.devices[d].user].clone();
        let (dev, last) = (self.devices[d].id.clone(), self.devices[d].last_seq);
        let Some(sim) = self.nodes[node].sim.as_mut() else { return };
        let client = sim.connect_at(core);
        let f = sim.connect_frame(&user, &dev, KEEPALIVE_S, last);
        sim.write(client, &f);
        let inc = self.nodes[node].inc;
        self.trace(d, || format!("CONNECT on n{node} last_seq {last}"));
        self.devices[d].conn = Some(Conn { node, inc, client, open_since: None, oldest: 0, inflight: HashSet::new() });
    }

    fn drop_conn(&mut self, d: usize, hang_up: bool) {
        self.trace(d, || format!("connection ends (hang up {hang_up})"));
        if let Some(c) = self.devices[d].conn.take() {
            if hang_up {
                let same = self.nodes[c.node].inc == c.inc;
                if let Some(sim) = self.nodes[c.node].sim.as_mut().filter(|_| same) {
                    sim.hang_up(c.client);
                }
            }
        }
        self.devices[d].reconnect_at = self.now + self.rng.below(200);
        let now = self.now;
        for o in &mut self.devices[d].outgoing {
            o.next_try = o.next_try.min(now);
        }
    }

    fn write(&mut self, d: usize, f: &Frame) {
        let Some(c) = self.devices[d].conn.as_ref() else { return };
        if let Some(sim) = self.nodes[c.node].sim.as_mut() {
            sim.write(c.client, f);
        }
    }

    fn new_send(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        let cmid = dev.next_cmid;
        dev.next_cmid += 1;
        let sender = &self.users[self.devices[d].user];
        let member = self.groups[0].1.contains(sender);
        let (target, recipients) = if member && self.rng.chance(0.3) {
            let members = &self.groups[0].1;
            (Target::Group, members.iter().filter(|m| *m != sender).map(|m| self.users.iter().position(|u| u == m).unwrap_or(0)).collect())
        } else {
            let u = self.rng.below(self.k.users as u64) as usize;
            (Target::User(u), vec![u])
        };
        self.sends.insert((d, cmid), SendRec { recipients, group: target == Target::Group, ..Default::default() });
        self.devices[d].outgoing.push(Outgoing { cmid, target, next_try: self.now, sent_at: 0 });
    }

    fn tag(&self, d: usize, cmid: u64) -> String {
        format!("{}/{}/{cmid}", self.users[self.devices[d].user], self.devices[d].id)
    }

    fn send_frame(&self, d: usize, o: &Outgoing) -> Frame {
        let (kind, target) = match o.target {
            Target::User(u) => (1, self.users[u].as_str()),
            Target::Group => (2, GROUP),
        };
        Frame::Send(Send { client_msg_id: o.cmid, target_kind: kind, target: Utf8Bytes::from(target), payload: Bytes::from(self.tag(d, o.cmid)) })
    }

    /// Reads what the device's connection got and acts on it.
    fn read(&mut self, d: usize) {
        let Some(c) = self.devices[d].conn.as_ref() else { return };
        let (node, client) = (c.node, c.client);
        let Some(sim) = self.nodes[node].sim.as_mut() else { return };
        let frames = sim.frames(client);
        let closed = sim.closed(client) || sim.server_fin(client);
        let mut acked = None;
        for f in frames {
            match f {
                Frame::ConnAck(a) => {
                    self.trace(d, || format!("{a:?}"));
                    if a.status != connack::OK {
                        self.drop_conn(d, true);
                        return;
                    }
                    let last = self.devices[d].last_seq;
                    if a.head_seq < last {
                        self.fail(format!(
                            "{}/{}: CONNACK head_seq {} below the last_seq {last} it presented: the seq floor was not raised",
                            self.users[self.devices[d].user], self.devices[d].id, a.head_seq
                        ));
                    }
                    let now = self.now;
                    if let Some(c) = self.devices[d].conn.as_mut() {
                        c.open_since = Some(now);
                        c.oldest = a.oldest_seq;
                    }
                }
                Frame::Push(p) => {
                    self.trace(d, || format!("PUSH seq {} {:?}", p.seq, String::from_utf8_lossy(&p.payload)));
                    self.on_push(d, p.seq, p.msg_id, String::from_utf8_lossy(&p.payload).to_string());
                    acked = Some(self.devices[d].last_seq);
                }
                Frame::SendAck(a) => self.on_sendack(d, a),
                Frame::Disconnect { .. } => {}
                _ => {}
            }
        }
        if let Some(seq) = acked {
            self.write(d, &Frame::PushAck { seq });
        }
        if closed {
            self.drop_conn(d, false);
        }
    }

    fn on_push(&mut self, d: usize, seq: u64, msg_id: u64, tag: String) {
        self.stats.pushes += 1;
        let who = format!("{}/{}", self.users[self.devices[d].user], self.devices[d].id);
        let dev = &self.devices[d];
        if let Some(prev) = dev.seen.get(&seq) {
            if *prev != tag {
                self.fail(format!("{who}: seq {seq} reused: it carried {prev}, now {tag}"));
            }
            return; // a retransmission
        }
        if seq <= dev.last_seq {
            // Below the cursor and never seen: only after a floor raise, where
            // the device presented a last_seq from before the engine's loss.
            self.fail(format!("{who}: seq {seq} at or below its last_seq {} but never received before", dev.last_seq));
        }
        let oldest = dev.conn.as_ref().map_or(0, |c| c.oldest);
        if seq != dev.last_seq + 1 && !(dev.last_seq + 1 < oldest && seq == oldest) {
            self.fail(format!("{who}: seq {seq} after {} (CONNACK oldest {oldest}): a seq was skipped", dev.last_seq));
        }
        if let Some(s) = dev.got.get(&tag) {
            self.fail(format!("{who}: {tag} delivered twice, at seq {} and {seq}", s.0));
        }
        // The repair deadline: appended while this connection was open, no
        // failure on its node since.
        let user = self.users[dev.user].clone();
        if let (Some(at), Some(c)) = (self.appended_at.get(&(user, seq)), dev.conn.as_ref()) {
            let bound = 2 * self.k.heartbeat_ms + 4 * self.k.max_call_ms + 4 * STEP_MS;
            let node = &self.nodes[c.node];
            if c.open_since.is_some_and(|o| o < *at) && node.last_fault < *at && self.now - at > bound {
                self.fail(format!("{who}: seq {seq} appended at {at} ms reached the device {} ms later (bound {bound})", self.now - at));
            }
        }
        let dev = &mut self.devices[d];
        dev.seen.insert(seq, tag.clone());
        dev.got.insert(tag, (seq, msg_id));
        dev.last_seq = seq;
    }

    fn trace(&self, d: usize, what: impl FnOnce() -> String) {
        let who = format!("{}/{}", self.users[self.devices[d].user], self.devices[d].id);
        if std::env::var("RINGGATE_FLEET_SIM_TRACE").is_ok_and(|t| t == who) {
            eprintln!("t={} {who}: {}", self.now, what());
        }
    }

    fn on_sendack(&mut self, d: usize, a: crate::proto::frame::SendAck) {
        self.trace(d, || format!("{a:?}"));
        if let Some(c) = self.devices[d].conn.as_mut() {
            c.inflight.remove(&a.client_msg_id);
        }
        let Some(i) = self.devices[d].outgoing.iter().position(|o| o.cmid == a.client_msg_id) else {
            // An answer to a send already confirmed (a duplicate retry): the same msg_id.
            if a.status == sendack::STORED {
                let first = self.sends.get(&(d, a.client_msg_id)).and_then(|s| s.confirmed);
                if first.is_some_and(|m| m != a.msg_id) {
                    self.fail(format!("{}: SENDACK 0 for {} with msg_id {} after {first:?}", self.tag(d, a.client_msg_id), a.client_msg_id, a.msg_id));
                }
            }
            return;
        };
        if a.status == sendack::STORED {
            self.devices[d].outgoing.remove(i);
            let tag = self.tag(d, a.client_msg_id);
            let rec = self.sends.entry((d, a.client_msg_id)).or_default();
            match rec.confirmed {
                Some(m) if m != a.msg_id => self.fail(format!("{tag}: a retry got msg_id {} instead of the original {m}", a.msg_id)),
                _ => rec.confirmed = Some(a.msg_id),
            }
            match self.msg_ids.insert(a.msg_id, (d, a.client_msg_id)) {
                Some(other) if other != (d, a.client_msg_id) => {
                    self.fail(format!("{tag}: msg_id {} was already given to {}", a.msg_id, self.tag(other.0, other.1)))
                }
                _ => {}
            }
            self.stats.confirmed += 1;
        } else if a.status == sendack::RETRY || a.status == sendack::RATE_LIMITED {
            // SENDACK 5 (engine), 3 (rate): the same id again, later.
            let back = 20 + self.rng.below(200);
            self.devices[d].outgoing[i].next_try = self.now + back;
        } else {
            self.fail(format!("{}: SENDACK {} (the simulation sends only what is allowed)", self.tag(d, a.client_msg_id), a.status));
        }
    }

    fn devices_act(&mut self, calm: bool) {
        for d in 0..self.devices.len() {
            self.read(d);
            if self.devices[d].conn.is_none() {
                if self.now >= self.devices[d].reconnect_at {
                    self.connect(d);
                }
                continue;
            }
            let open = self.devices[d].conn.as_ref().is_some_and(|c| c.open_since.is_some());
            if !open {
                continue;
            }
            if !calm {
                if self.rng.chance(self.k.p_move) {
                    // Off for a while or to another node; what is in flight
                    // is retried there (or, sometimes, never: the device is gone).
                    let mut inflight: Vec<u64> = self.devices[d].conn.as_ref().map(|c| c.inflight.iter().copied().collect()).unwrap_or_default();
                    inflight.sort();
                    for cmid in inflight {
                        if self.rng.chance(self.k.p_give_up) {
                            self.devices[d].outgoing.retain(|o| o.cmid != cmid);
                            if let Some(r) = self.sends.get_mut(&(d, cmid)) {
                                r.abandoned = true;
                            }
                        }
                    }
                    self.drop_conn(d, true);
                    continue;
                }
                if self.rng.chance(self.k.p_send) {
                    self.new_send(d);
                }
            }
            let now = self.now;
            let due: Vec<usize> = (0..self.devices[d].outgoing.len())
                .filter(|i| {
                    let o = &self.devices[d].outgoing[*i];
                    let inflight = self.devices[d].conn.as_ref().is_some_and(|c| c.inflight.contains(&o.cmid));
                    (o.next_try <= now && !inflight) || (inflight && now >= o.sent_at + RESEND_MS)
                })
                .collect();
            for i in due {
                let f = self.send_frame(d, &self.devices[d].outgoing[i]);
                let cmid = self.devices[d].outgoing[i].cmid;
                self.devices[d].outgoing[i].next_try = u64::MAX;
                self.devices[d].outgoing[i].sent_at = now;
                if let Some(c) = self.devices[d].conn.as_mut() {
                    c.inflight.insert(cmid);
                }
                self.trace(d, || format!("SEND {cmid}"));
                self.write(d, &f);
            }
        }
    }

    // ---- the loop ----------------------------------------------------------------

    fn run_nodes(&mut self) {
        for n in 0..self.nodes.len() {
            if let Some(sim) = self.nodes[n].sim.as_mut() {
                sim.run();
            }
        }
    }

    fn step_world(&mut self, calm: bool) {
        self.now += STEP_MS;
        self.clock.advance(STEP_MS);
        for n in 0..self.nodes.len() {
            if let Some(sim) = self.nodes[n].sim.as_mut() {
                sim.tick_at_now();
            }
        }
        self.faults(calm);
        self.heartbeats();
        self.take_requests();
        self.run_ops();
        self.deliver_notes();
        self.run_nodes();
        self.devices_act(calm);
        self.run_nodes();
        self.take_requests();
        self.run_ops();
        self.run_nodes();
    }

    /// The run, a calm phase (no faults, no new sends, every device back
    /// online) long enough for retries, repairs and sweeps, then the final checks.
    pub fn run(&mut self) {
        while self.now < self.k.run_ms {
            self.step_world(false);
        }
        // Calm: devices reconnect and retry; nodes restart; the sweep age passes.
        let calm_until = self.now + 4_000 + 6 * self.k.heartbeat_ms;
        while self.now < calm_until {
            self.step_world(true);
        }
        let settled = self.now + 20_000;
        while self.devices.iter().any(|d| !d.outgoing.is_empty() || d.conn.as_ref().is_none_or(|c| c.open_since.is_none())) {
            if self.now > settled {
                let stuck: Vec<String> = self
                    .devices
                    .iter()
                    .filter(|d| !d.outgoing.is_empty() || d.conn.as_ref().is_none_or(|c| c.open_since.is_none()))
                    .map(|d| {
                        format!(
                            "{}/{}: conn {:?}, unanswered {:?}",
                            self.users[d.user],
                            d.id,
                            d.conn.as_ref().map(|c| (c.node, c.open_since, c.inflight.iter().collect::<Vec<_>>())),
                            d.outgoing.iter().map(|o| (o.cmid, o.next_try)).collect::<Vec<_>>()
                        )
                    })
                    .collect();
                self.fail(format!("devices never settled (a SEND never confirmed or a CONNECT never answered): {stuck:#?}; ops {}", self.ops.len()));
            }
            self.step_world(true);
        }
        for _ in 0..(4 * self.k.heartbeat_ms / STEP_MS) {
            self.step_world(true);
        }
        self.check_final();
    }

    fn check_final(&mut self) {
        if !self.engine.intents.is_empty() {
            self.fail(format!("group sends left pending at quiescence: {:?}", self.engine.intents.keys().collect::<Vec<_>>()));
        }
        // Every message in the engine, once in each of its user's devices.
        for (u, user) in self.users.iter().enumerate() {
            let inbox = self.engine.inboxes.get(user).cloned().unwrap_or_default();
            let mut tags = HashSet::new();
            for e in inbox.entries.values() {
                let tag = String::from_utf8_lossy(&e.payload).to_string();
                if !tags.insert(tag.clone()) {
                    self.fail(format!("{user}: {tag} twice in the engine's inbox"));
                }
            }
            let home = self.home(user);
            for di in (0..self.devices.len()).filter(|d| self.devices[*d].user == u) {
                for (seq, e) in &inbox.entries {
                    let dev = &self.devices[di];
                    let tag = String::from_utf8_lossy(&e.payload).to_string();
                    if dev.seen.get(seq) != Some(&tag) {
                        let at = dev.conn.as_ref().map(|c| c.node);
                        let mirror = at.and_then(|n| self.nodes[n].sim.as_mut()).and_then(|sim| sim.fleet_mirror(home, user));
                        self.fail(format!(
                            "{user}/{}: seq {seq} ({tag}) in the engine, device has {:?} (last_seq {}); its node {at:?} mirrors (bounds, engine head, fetching) {mirror:?}",
                            dev.id,
                            dev.seen.get(seq),
                            dev.last_seq
                        ));
                    }
                }
            }
        }
        // Every confirmed message in each recipient's devices (without a
        // data loss: with one, only what the engine still holds is owed).
        let mut sends: Vec<(&(usize, u64), &SendRec)> = self.sends.iter().collect();
        sends.sort_by_key(|(k, _)| **k);
        for ((d, cmid), rec) in sends {
            let tag = self.tag(*d, *cmid);
            let in_engine_claim = self.engine.record(&self.users[self.devices[*d].user], &self.devices[*d].id, *cmid).is_some();
            let owed = (rec.confirmed.is_some() && !self.lost_data) || (rec.group && rec.abandoned && in_engine_claim && !self.lost_data);
            if !owed {
                continue;
            }
            for r in &rec.recipients {
                for dev in self.devices.iter().filter(|x| x.user == *r) {
                    if let (Some((seq, m)), Some(c)) = (dev.got.get(&tag), rec.confirmed) {
                        if *m != c {
                            self.fail(format!(
                                "{tag}: its SENDACK said msg_id {c}, {}/{} got it as {m} (seq {seq})",
                                self.users[*r], dev.id
                            ));
                        }
                    }
                    if !dev.got.contains_key(&tag) {
                        let ib = self.engine.inboxes.get(&self.users[*r]);
                        let holder = rec
                            .confirmed
                            .and_then(|m| ib?.entries.values().find(|e| e.msg_id == m))
                            .map(|e| (e.seq, String::from_utf8_lossy(&e.payload).to_string()));
                        self.fail(format!(
                            "{tag} (confirmed {:?}, group {}, abandoned {}) never reached {}/{}; the engine's entry with that msg_id: {holder:?}",
                            rec.confirmed, rec.group, rec.abandoned, self.users[*r], dev.id
                        ));
                    }
                }
            }
        }
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("RINGGATE_FLEET_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("RINGGATE_FLEET_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (1..=n).collect()
}

fn run_seeds(name: &str, default: u64, k: Knobs) -> Stats {
    let mut total = Stats::default();
    for seed in seeds(default) {
        let mut w = World::new(seed, Knobs { one_call: seed % 2 == 1, ..k });
        w.run();
        let s = w.stats;
        total.confirmed += s.confirmed;
        total.pushes += s.pushes;
        total.crashes += s.crashes;
        total.dropped_notes += s.dropped_notes;
        total.failed_calls += s.failed_calls;
        total.sweeps_completed += s.sweeps_completed;
        total.repairs += s.repairs;
        total.floor_raises += s.floor_raises;
        total.data_losses += s.data_losses;
        total.one_calls += s.one_calls;
    }
    eprintln!("{name}: {total:?}");
    total
}

#[test]
fn many_seeds_keep_the_fleet_rules() {
    let s = run_seeds("many_seeds_keep_the_fleet_rules", 300, Knobs::default());
    // The runs exercised what they claim to (a sim that never crashes a node checks little).
    if std::env::var("RINGGATE_FLEET_SIM_SEED").is_err() {
        assert!(s.crashes > 0 && s.dropped_notes > 0 && s.failed_calls > 0 && s.repairs > 0 && s.confirmed > 100, "{s:?}");
        assert!(s.sweeps_completed > 0, "no group send was ever completed by a survivor: {s:?}");
        assert!(s.one_calls > 100, "the one-call SEND path was hardly run: {s:?}");
    }
}

/// Seed 642 once skipped a seq: a device's CONNECT on a core where another
/// device of the same user was open and behind moved the shared mirror
/// past a seq that device still lacked (`core/fleet.rs`, the load keeps the
/// lowest open cursor now). Kept as a regression run.
#[test]
fn seed_642_a_connect_does_not_move_the_mirror_past_an_open_device() {
    let mut w = World::new(642, Knobs::default());
    w.run();
}
