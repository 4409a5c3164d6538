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
//!   (claim done, some appends done, no SENDACK). The engine keeps
//!   presence as the scripts do (CONNECT writes the device online on its
//!   node in the same step as the load, OFFLINE marks it offline unless
//!   it names another node; a crash leaves it online on the dead node)
//!   and the live nodes as the heartbeat does, and an append notifies as
//!   `scripts::NOTIFY` does: on the own channel `rg:n:<node>` of each
//!   other node the recipient's presence shows online, or on `rg:n`
//!   (every node) when the recipient has no presence or the appending
//!   node's last heartbeat saw a node of the previous version live
//!   (`Knobs::legacy_node`: it hears only `rg:n`). Each notification is
//!   dropped, delayed, reordered or duplicated on its way; a node's own
//!   appends reach its cores directly, as in `engine.rs`.
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
//! meanwhile. Checked on every append (the targeting rule, which those
//! checks cannot see: a node left out gets the message by gap repair,
//! within the same deadline): every other node where a device of the
//! recipient is connected and has loaded the inbox hears the notification
//! (but a node of the previous version the appending node had not yet
//! seen live, counted), an OFFLINE that runs after the same device's next
//! CONNECT on that node leaves the newer record alone, and when presence
//! matches the devices exactly no other node is told. At quiescence: every confirmed message and every message in
//! the engine is in each recipient device exactly once, every device's
//! presence names the node it is connected to, and no group send is left
//! pending.
//!
//! This file holds the world (nodes, faults, the loop) and the checks at
//! quiescence; `fake_engine` the engine's data, `calls` the engine calls in
//! flight and the notification network, `devices` the clients and the
//! checks made on every frame.
//!
//! `RINGGATE_FLEET_SIM_SEED=N` replays one seed; `RINGGATE_FLEET_SIM_SEEDS=N`
//! runs N seeds (default in `many_seeds`). A failure names its seed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{Event, Fleet, Node as RouteNode, Request};
use crate::config::Config;
use crate::runtime::core::sim::Sim;
use crate::runtime::core::VirtualClock;
use crate::runtime::core::sim::net as mem;
use crate::store::Retention;

mod calls;
mod devices;
mod fake_engine;

use calls::Op;
use devices::{Device, SendRec};
use fake_engine::Engine;

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

// ---- nodes -------------------------------------------------------------------

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
    /// A node of the previous version: it listens on `rg:n` only, says
    /// so in its heartbeat (no `own-channel`), and its appends notify
    /// every node.
    legacy: bool,
    /// Its appends notify only the nodes in the recipient's presence:
    /// every live node listened on its own channel at its last heartbeat
    /// (`engine.rs` `targeted`; false until the first).
    targeted: bool,
    /// `World::heartbeat_count` at its last heartbeat.
    heartbeat: u64,
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
    /// The engine runs a node's raise after a data loss (`Request::Floor`;
    /// turn off to see how many reuses stay unrecovered without it).
    pub floor_after_loss: bool,
    /// A single engine: a SEND is one call (`rules::one_call`); else the
    /// multi-step path of a Cluster. `run_seeds` alternates it by seed.
    pub one_call: bool,
    /// Appends notify only the nodes the recipient's presence shows
    /// online (`scripts::NOTIFY`); off: every append on `rg:n`, every
    /// node hears it (the previous version's rule).
    pub targeted: bool,
    /// The last node is of the previous version (`NodeState::legacy`):
    /// while it is live, every append goes on `rg:n` again. `run_seeds`
    /// mixes it in on every fifth seed.
    pub legacy_node: bool,
    /// The CONNECT script writes the device's presence in the same
    /// atomic step as it loads the inbox (turn off, presence written by a
    /// call of its own after the load, to see the simulation catch a node
    /// that targeting missed).
    pub presence_with_load: bool,
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
            floor_after_loss: true,
            one_call: false,
            targeted: true,
            legacy_node: false,
            presence_with_load: true,
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
    /// user → the seqs (first, last) the data loss took: messages a device
    /// connected through it had not received yet are gone.
    lost: BTreeMap<String, (u64, u64)>,
    /// msg_id → the SEND (device, client_msg_id) confirmed with it: msg_ids are unique in the fleet.
    msg_ids: HashMap<u64, (usize, u64)>,
    /// Heartbeats of all nodes so far (orders a node's view of the live set).
    heartbeat_count: u64,
    /// A test that breaks a rule on purpose: a failed check unwinds quietly
    /// with its message (`fail`).
    expect_failure: bool,
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
    /// Raises a node asked for after seeing a data loss (`Request::Floor`),
    /// the entries they moved above the floor (reuses), and messages a
    /// device got again at a new seq because the data loss took or a move
    /// vacated the one it first came at (`devices.rs` `on_push`).
    pub floor_requests: u64,
    pub floor_moves: u64,
    pub twice_after_loss: u64,
    /// Seqs a device connected through a data loss never got: lost with
    /// the engine's data, or vacated by a move.
    pub skipped_lost: u64,
    /// After a data loss, at quiescence: (device, seq) where the engine
    /// holds a message the device does not have at that seq (a reuse no
    /// node recognised, docs/fleet.md "Not done yet"), and where they agree.
    pub unrecovered: u64,
    pub recovered: u64,
    /// SENDs stored by one atomic call.
    pub one_calls: u64,
    /// Appends notified on nodes' own channels / on `rg:n`.
    pub targeted_appends: u64,
    pub broadcast_appends: u64,
    /// Targeted appends whose recipient's presence matched its devices.
    pub exact_appends: u64,
    /// Targeted notifications sent to a node that hears them, and those
    /// of them to a node holding no device of the recipient (stale presence).
    pub targeted_notes: u64,
    pub stray_notes: u64,
    /// Appends not told to a node of the previous version that the
    /// appending node's last heartbeat had not seen yet.
    pub unseen_misses: u64,
}

impl World {
    pub fn new(seed: u64, k: Knobs) -> World {
        mem::reset();
        let mut cfg = Config::default();
        let mut fcfg = crate::config::FleetConfig::default();
        fcfg.heartbeat_ms = k.heartbeat_ms;
        fcfg.engine_timeout_ms = 500;
        // One clock for every node: a message appended after a data loss
        // is told apart from an older one by time alone.
        fcfg.max_clock_skew_ms = 0;
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
            lost: BTreeMap::new(),
            msg_ids: HashMap::new(),
            heartbeat_count: 0,
            expect_failure: false,
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
        let what = format!("fleet simulation seed {} (replay: RINGGATE_FLEET_SIM_SEED={}) at t={} ms: {what}", self.seed, self.seed, self.now);
        if self.expect_failure {
            // Unwinds without the panic hook (no message, no backtrace).
            std::panic::resume_unwind(Box::new(what));
        }
        panic!("{what}")
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
        let legacy = self.k.legacy_node && id == format!("n{}", self.k.nodes - 1);
        NodeState { id, sim: Some(sim), fleet, rx, inc: 0, restart_at: 0, next_hb: self.now, last_fault: self.now, legacy, targeted: false, heartbeat: 0 }
    }

    fn fleet_cfg(&self) -> &crate::config::FleetConfig {
        self.cfg.fleet.as_ref().expect("a fleet config")
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].sim.is_some()).collect()
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
            for (u, ib) in &self.engine.inboxes {
                let after = old.inboxes.get(u).map_or(0, |o| o.head);
                self.lost.insert(u.clone(), (after + 1, ib.head));
            }
            if std::env::var("RINGGATE_FLEET_SIM_TRACE").is_ok() {
                eprintln!("t={} DATA LOSS: user → seqs lost {:?}", self.now, self.lost);
            }
            self.engine = old;
            self.lost_data = true;
            self.stats.data_losses += 1;
            for n in self.alive() {
                self.nodes[n].last_fault = self.now;
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
        // Presence, which targeting trusts: every device online on the node
        // it is connected to (a crash's stale records were overwritten when
        // its devices connected again; an OFFLINE of an earlier connection
        // of the device changes only its own record).
        for d in &self.devices {
            let (user, at) = (&self.users[d.user], d.conn.as_ref().map(|c| self.nodes[c.node].id.clone()));
            let rec = self.engine.presence.get(user).and_then(|p| p.get(&d.id));
            let right = rec.is_some_and(|p| p.online && Some(&p.node) == at.as_ref());
            if !right && !self.lost_data {
                self.fail(format!("{user}/{}: connected on {at:?}, its presence at quiescence says {rec:?}", d.id));
            }
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
                    if self.lost_data {
                        // Counted, not failed: see `Stats::unrecovered`.
                        if dev.seen.get(seq) == Some(&tag) {
                            self.stats.recovered += 1;
                        } else {
                            self.stats.unrecovered += 1;
                        }
                        continue;
                    }
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
        let mut w = World::new(seed, Knobs { one_call: seed % 2 == 1, legacy_node: k.legacy_node || seed % 5 == 0, ..k });
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
        total.floor_requests += s.floor_requests;
        total.floor_moves += s.floor_moves;
        total.twice_after_loss += s.twice_after_loss;
        total.skipped_lost += s.skipped_lost;
        total.unrecovered += s.unrecovered;
        total.recovered += s.recovered;
        total.one_calls += s.one_calls;
        total.targeted_appends += s.targeted_appends;
        total.broadcast_appends += s.broadcast_appends;
        total.exact_appends += s.exact_appends;
        total.targeted_notes += s.targeted_notes;
        total.stray_notes += s.stray_notes;
        total.unseen_misses += s.unseen_misses;
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
        assert!(s.targeted_appends > s.broadcast_appends && s.exact_appends > 100, "appends were hardly targeted: {s:?}");
        assert!(s.broadcast_appends > 0 && s.unseen_misses > 0, "the fallback to rg:n (a node of the previous version) was not run: {s:?}");
    }
}

/// An engine data loss in every run (a failover to a replica up to 1 s
/// behind: inboxes, claims, presence and the live set all revert). The
/// per-frame checks hold through it: no seq of a device carries two
/// messages, CONNACK never goes below the `last_seq` presented, and a
/// device's seqs skip only seqs whose messages the engine no longer holds
/// (a message may then come again at a new seq: `on_push`). Confirmed
/// messages the loss took are not owed. At quiescence, messages the
/// engine holds at a seq where a device has another one (a reuse no node
/// recognised: the nodes' views of the lost seqs differ, e.g. one node's
/// raise moves a message to a seq another node's devices hold, with no
/// notification of the move) are counted, not failed: 226 of 28,468
/// (device, seq) pairs in the default 100 seeds, 2,146 without the raise
/// (`floor_after_loss` off). The bound below fails without it.
#[test]
fn seeds_with_an_engine_data_loss_never_reuse_a_seq() {
    let s = run_seeds("seeds_with_an_engine_data_loss_never_reuse_a_seq", 100, Knobs { p_data_loss: 0.01, ..Knobs::default() });
    if std::env::var("RINGGATE_FLEET_SIM_SEED").is_err() {
        assert!(s.data_losses > 50 && s.floor_requests > 0 && s.floor_moves > 0, "the raise after a data loss was hardly run: {s:?}");
        let all = s.recovered + s.unrecovered;
        assert!(all > 1_000 && s.unrecovered * 50 <= all, "more than 2 % of the messages after a data loss sit at a seq the devices have another message at: {s:?}");
    }
}

/// The targeting check guards what makes targeting safe: presence
/// written in the same atomic step as the inbox load. Written by a call
/// of its own after the load, a device that connected meanwhile is loaded
/// but not listed, and an append is not told to its node (the message
/// still arrives by gap repair within the deadline: only this check sees it).
#[test]
fn presence_written_apart_from_the_load_is_caught() {
    let caught = (1..=20).find_map(|seed| {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut w = World::new(seed, Knobs { presence_with_load: false, ..Knobs::default() });
            w.expect_failure = true;
            w.run();
        }));
        run.err().map(|e| e.downcast::<String>().map(|s| *s).unwrap_or_else(|_| "a panic without a message".into()))
    });
    let what = caught.unwrap_or_else(|| panic!("20 seeds with presence written apart from the load passed every check"));
    assert!(what.contains("was not told to"), "{what}");
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
