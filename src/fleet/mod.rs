//! Fleet mode: several nodes share every inbox through Redis 7 / Valkey (the "engine").
//!
//! ## Shape
//!
//! The cores stay as they are: thread-per-core, no lock, no await on the
//! message path. What changes in fleet mode is where an inbox lives: in the
//! engine, which assigns every seq (one Lua script per append, atomic in
//! the engine, all keys of a user in one hash slot; `scripts.rs`). A core
//! keeps a mirror of the inboxes of its online users (`mirror.rs`) and
//! reads it exactly like the local store.
//!
//! One **engine thread** per node runs a small tokio runtime with the
//! `redis` crate: a `ConnectionManager` (one multiplexed connection that
//! pipelines whatever is in flight and reconnects by itself) or, with
//! several URLs, a Redis Cluster connection (slot map, MOVED/ASK). Cores
//! submit [`Request`]s through an unbounded channel guarded by a counter
//! (`max_engine_inflight`: beyond it the core answers SENDACK 5 at once);
//! every answer comes back to the core's mailbox as `CoreMsg::Fleet`, the
//! same way the local log's fsync completions arrive. Every request runs
//! under `engine_timeout_ms`: past it the core gets a typed error (SENDACK
//! 5), never a hang.
//!
//! Why the `redis` crate: it is the most used Rust Redis client, speaks
//! RESP2/3, pipelines concurrent requests on one connection (so the
//! requests of one loop turn of every core share a write), reconnects
//! (`ConnectionManager`), and handles Cluster slots and redirects, so none
//! of that is hand-written here. Its cost is a tokio runtime on one extra
//! thread, which the cores never touch.
//!
//! ## Delivery across nodes
//!
//! The append script publishes the new entry (payload included) to the
//! nodes the recipient's presence shows a device online on, each on its
//! own channel `rg:n:<node>` (every node while a node of the previous
//! version, which hears only `rg:n`, is live, or when the recipient has no
//! presence at all: `scripts::NOTIFY`); the node's subscriber (a second,
//! RESP3 connection that subscribes again on the next seed URL, on a
//! Cluster also on any node the cluster lists, when its connection dies:
//! `engine/pubsub.rs`) hands it to the user's home core,
//! which adds it to the mirror if a device of the user is online there
//! and pushes. PUB/SUB rather than streams: a notification is only a
//! shortcut (the inbox in the engine is the truth), so losing one is
//! harmless: every heartbeat each core compares its mirrors' heads with
//! the engine's and fetches what is missing (`ringgate_fleet_gap_repairs_total`).
//! Streams would add a per-node consumer cursor to keep and trim for no
//! gain in what the devices get. One channel for all nodes cost every
//! node every notification (2.5 µs per message on a node that holds no
//! recipient, docs/fleet.md "Latency"); a presence record that is stale
//! (a device online on a node it does not say) only delays that device's
//! message to the next gap repair.
//!
//! ## Dedup across nodes (PROTOCOL.md rule 4)
//!
//! On a single engine a client SEND is one script (`scripts::send`): it
//! looks up `(device, client_msg_id)` in the sender's slot, checks the
//! mute, appends to every recipient (idempotent per SEND), records the
//! answer `d msg_id ts` and publishes the notifications, atomically. One
//! round trip per SEND instead of three in turn, each waiting for the
//! engine's `appendfsync always`: at 10,000 msg/s on the bench this took
//! the cross-node p99 from seconds to ~12 ms and the CPU per message from
//! 3.9–8.6× to 2.4–2.5× a single node's. Nothing is ever left half done,
//! so such a SEND needs no group intent.
//!
//! On a Redis Cluster (the sender's keys and the recipients' inboxes are
//! in different slots), and for groups larger than
//! `rules::ONE_CALL_MAX_TARGETS`, a SEND first claims the id with the
//! msg_id it will use and its recipients. A retry on any node finds the
//! claim: `done` → the original SENDACK; `pending` (the first node died, or
//! is still at it) → it re-runs the appends with the claimed msg_id, which
//! the append script makes idempotent (a per-inbox append key → seq map
//! returns the first seq), then marks it done. A group send's claim is
//! also its durable intent: pending group claims of nodes that stopped
//! heartbeating are completed by a survivor. The one-call path reads the
//! same records, so it answers or finishes what the other path left.
//!
//! The engine keeps the last `max(dedup_per_device, 1024)` ids per
//! device in 16 small hashes (compact encoding) that expire after
//! `inbox_max_age_s`, at least a day, without a SEND of the device.
//!
//! ## Groups, mutes, idempotency keys, presence (FLEET.md point 7)
//!
//! The admin API on any node acts on the engine, so every node sees the
//! same state (`admin::api` sends [`AdminOp`]s here and waits at most
//! `engine_timeout_ms`: 503 past it).
//!
//! - **Groups** live in the engine only (`rg:{g:<name>}:members`), and a
//!   client's group SEND reads the membership from there, in the engine
//!   thread, before claiming. Why not a per-node cache with invalidation:
//!   "in effect on every node before the answer" would then need every
//!   live node to acknowledge each change (and a rule for a node that is
//!   slow to), while a group SEND already makes an engine round trip: one
//!   GET more per group SEND is
//!   the simplest thing that is exactly right. The change is in effect the
//!   moment the engine has it, which is before the admin's answer.
//! - **Mutes** are `rg:{u}:m`, in the user's slot, and the claim script
//!   every client SEND runs checks it (after the dedup lookup, as ADMIN.md
//!   orders): no extra round trip.
//! - **Idempotency keys** are claimed with a short-lived pending record
//!   before the publish and replaced with the answer after it; a retry on
//!   any node finds one or the other (409 while pending, as on one node).
//! - **Presence** is the `rg:{u}:p` record each CONNECT writes and each
//!   disconnect updates (only while the record still names this node);
//!   `online` also needs the record's node to be live now.

pub mod mirror;
pub mod rules;
pub mod scripts;
mod engine;
#[cfg(test)]
mod sim;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::config::FleetConfig;
use crate::runtime::core::ConnKey;
use crate::store::{NewMessage, Retention};

pub use engine::start;
pub use mirror::Entry;

/// Why an engine request failed; all of them mean "retry later" to a
/// device (SENDACK 5, admin 503) and are the engine's or the network's
/// fault, never the client's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FleetError {
    #[error("engine did not answer within engine_timeout_ms")]
    Timeout,
    #[error("engine error: {0}")]
    Engine(String),
    #[error("max_engine_inflight requests already queued")]
    Busy,
}

/// Work for the engine thread, from a core.
pub enum Request {
    /// A client SEND (or a retry): claim, append to every target, mark
    /// done. `device` None: an admin publish (no claim: the admin API's
    /// idempotency keys dedup those).
    Send { core: usize, req: u64, device: Option<Arc<str>>, msg: NewMessage, targets: Vec<Arc<str>> },
    /// A CONNECT on this node: retention, floor, presence, replacement
    /// notice, and the entries above `last_seq`.
    /// `remote`: the device's address, for presence on any node.
    /// `at_ms`: the connection's own stamp (wall ms at its CONNECT), kept
    /// in its presence record, so that its OFFLINE touches only that record.
    Connect { core: usize, key: ConnKey, user: Arc<str>, device: Arc<str>, last_seq: u64, remote: Option<std::net::SocketAddr>, at_ms: u64 },
    /// Entries of `user` above `after` (a gap in a mirror).
    Fetch { core: usize, user: Arc<str>, after: u64 },
    /// The heartbeat's gap check: mirrored users and their heads.
    Repair { core: usize, users: Vec<(Arc<str>, u64)> },
    /// The engine lost data under connected devices whose mirror holds
    /// `held` (seq, msg_id) up to `floor`: the engine's head is below it,
    /// or it holds another message at one of those seqs, or one below the
    /// mirror's first seq `below` appended after `after_ms` (by when the
    /// devices had everything there). Raise the head past `floor`, moving
    /// every such message above it (`Engine::raise_floor`, `scripts::FLOOR`).
    Floor { core: usize, user: Arc<str>, floor: u64, held: Vec<(u64, u64)>, below: u64, after_ms: u64 },
    /// A device's connection ended here: presence shows it offline, unless
    /// the record is another connection's (`at_ms` is its CONNECT's stamp):
    /// the same device may have connected again on this node, and the two
    /// calls run as separate tasks, so this one may come second.
    Offline { user: Arc<str>, device: Arc<str>, acked: u64, at_ms: u64 },
    /// From the admin API (a blocking thread waiting on `reply`).
    Admin { op: AdminOp, reply: std::sync::mpsc::Sender<Result<AdminAnswer, FleetError>> },
}

/// An admin API operation on the fleet-wide state.
#[derive(Debug)]
pub enum AdminOp {
    /// A group's members; None when absent.
    GroupGet(String),
    /// Replace (create) a group's member list.
    GroupPut(String, Vec<String>),
    /// Add and remove members (add first, then remove wins); None when absent.
    GroupEdit { group: String, add: Vec<String>, remove: Vec<String> },
    /// Whether it existed.
    GroupDelete(String),
    /// `until_ms` 0 or past: lift.
    Mute { user: String, until_ms: u64 },
    /// Presence, bounds and mute of a user.
    User(String),
    /// Claim an idempotency key for a publish (`pending` is this claim's record).
    IdemClaim { key: String, pending: String, ttl_ms: u64 },
    /// Replace this node's pending claim with the answer (`done` empty: forget it).
    IdemFinish { key: String, pending: String, done: String, ttl_ms: u64 },
    /// Close the user's connections on every other live node (the asking
    /// node closes its own); how many were closed there.
    Kick(String),
}

/// What an [`AdminOp`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminAnswer {
    Members(Option<Vec<String>>),
    Deleted(bool),
    Done,
    User(UserView),
    /// None: claimed now; else the record already there.
    Idem(Option<String>),
    /// Connections the other nodes closed.
    Kicked(u64),
}

/// A user as the engine knows it, with liveness applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserView {
    pub head_seq: u64,
    pub oldest_seq: u64,
    pub muted_until_ms: u64,
    pub devices: Vec<DeviceRecord>,
}

/// One device in `rg:{u}:p`.
#[derive(Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    /// The node it is, or was last, connected to.
    pub node: String,
    pub connected_at_ms: u64,
    pub acked_seq: u64,
    /// Connected (per the record) and its node is live.
    pub online: bool,
    pub remote: Option<String>,
}

/// Why the engine refused a client SEND (a SENDACK status, not a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// SENDACK 1: the group does not exist.
    NoSuchGroup,
    /// SENDACK 2: the sender is not a member of the group.
    NotMember,
    /// SENDACK 2: the sender is muted.
    Muted,
}

/// Where a SEND is stored: its msg_id and timestamp (the original ones
/// when it was a retry of a stored SEND) and each recipient's seq (empty
/// for such a retry).
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    /// Not stored: the engine's answer instead of a msg_id.
    pub refused: Option<Refused>,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub seqs: Vec<(Arc<str>, u64)>,
}

/// What a CONNECT found in the engine.
#[derive(Debug)]
pub struct Loaded {
    pub oldest: u64,
    pub head: u64,
    /// The head was raised past the device's `last_seq` (the engine had lost data).
    pub raised: bool,
    pub entries: Vec<Entry>,
}

/// An engine answer or notification, delivered to a core's mailbox.
pub enum Event {
    /// A SEND's outcome: the msg_id and timestamp it is stored under (the
    /// original ones when it was a retry of a stored SEND).
    Sent { req: u64, result: Result<Stored, FleetError> },
    Connected { key: ConnKey, user: Arc<str>, result: Result<Loaded, FleetError> },
    /// Entries of `user` (a notification, a fetch or a repair) with the
    /// engine's bounds when known (0, 0 for a notification).
    Entries { user: Arc<str>, oldest: u64, head: u64, entries: Vec<Entry>, fetched: bool, repaired: bool },
    /// A device of `user` connected on another node: close it here (rule 8).
    Kick { user: Arc<str>, device: Arc<str> },
}

/// One live node, as the route lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub transport: String,
}

/// Fleet metrics (FLEET.md "Metrics"). Written by the engine thread, and
/// by cores for gap repairs (rare): plain atomics.
#[derive(Default)]
pub struct FleetMetrics {
    /// [op][result]: result 0 ok, 1 error, 2 timeout.
    pub requests: [[AtomicU64; 3]; OPS.len()],
    /// Per op: count, sum in µs, and bucket counts.
    pub seconds: [Hist; OPS.len()],
    pub nodes: AtomicU64,
    pub durable: AtomicU64,
    pub gap_repairs: AtomicU64,
    pub seq_floor_raises: AtomicU64,
}

/// Engine operations by label.
pub const OPS: [&str; 11] = ["claim", "append", "done", "connect", "fetch", "heartbeat", "presence", "group", "mute", "idem", "send"];
pub const OP_CLAIM: usize = 0;
pub const OP_APPEND: usize = 1;
pub const OP_DONE: usize = 2;
pub const OP_CONNECT: usize = 3;
pub const OP_FETCH: usize = 4;
pub const OP_HEARTBEAT: usize = 5;
pub const OP_PRESENCE: usize = 6;
/// A group read (every client group SEND) or change.
pub const OP_GROUP: usize = 7;
pub const OP_MUTE: usize = 8;
/// An admin idempotency key's claim or answer.
pub const OP_IDEM: usize = 9;
/// A whole client SEND in one script (a single engine: `scripts::send`).
pub const OP_SEND: usize = 10;

/// Histogram bucket bounds, seconds.
pub const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

#[derive(Default)]
pub struct Hist {
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
    pub buckets: [AtomicU64; BUCKETS.len()],
}

impl FleetMetrics {
    pub fn record(&self, op: usize, result: usize, d: std::time::Duration) {
        self.requests[op][result.min(2)].fetch_add(1, Relaxed);
        let h = &self.seconds[op];
        h.count.fetch_add(1, Relaxed);
        h.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
    }

    /// The fleet families in Prometheus text (OpenMetrics counters are named without `_total` in HELP/TYPE).
    pub fn render(&self, out: &mut String, openmetrics: bool) {
        use std::fmt::Write;
        let fam = |out: &mut String, name: &str, kind: &str, help: &str| {
            let n = if openmetrics && kind == "counter" { name.trim_end_matches("_total") } else { name };
            let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} {kind}");
        };
        fam(out, "ringgate_fleet_engine_requests_total", "counter", "Engine requests by operation and result.");
        for (i, op) in OPS.iter().enumerate() {
            for (j, r) in ["ok", "error", "timeout"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ringgate_fleet_engine_requests_total{{op=\"{op}\",result=\"{r}\"}} {}",
                    self.requests[i][j].load(Relaxed)
                );
            }
        }
        fam(out, "ringgate_fleet_engine_seconds", "histogram", "Engine request duration by operation.");
        for (i, op) in OPS.iter().enumerate() {
            let h = &self.seconds[i];
            let mut cum = 0;
            for (k, b) in BUCKETS.iter().enumerate() {
                cum += h.buckets[k].load(Relaxed);
                let _ = writeln!(out, "ringgate_fleet_engine_seconds_bucket{{op=\"{op}\",le=\"{b}\"}} {cum}");
            }
            let n = h.count.load(Relaxed);
            let _ = writeln!(out, "ringgate_fleet_engine_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(out, "ringgate_fleet_engine_seconds_sum{{op=\"{op}\"}} {}", h.sum_us.load(Relaxed) as f64 / 1e6);
            let _ = writeln!(out, "ringgate_fleet_engine_seconds_count{{op=\"{op}\"}} {n}");
        }
        fam(out, "ringgate_fleet_nodes", "gauge", "Live nodes this node sees, itself included.");
        let _ = writeln!(out, "ringgate_fleet_nodes {}", self.nodes.load(Relaxed));
        fam(out, "ringgate_fleet_engine_durable", "gauge", "1 when the engine's settings lose nothing confirmed.");
        let _ = writeln!(out, "ringgate_fleet_engine_durable {}", self.durable.load(Relaxed));
        fam(out, "ringgate_fleet_gap_repairs_total", "counter", "Live notifications missed and repaired from the inbox.");
        let _ = writeln!(out, "ringgate_fleet_gap_repairs_total {}", self.gap_repairs.load(Relaxed));
        fam(out, "ringgate_fleet_seq_floor_raises_total", "counter", "Inbox heads raised past a device's last_seq the engine did not know.");
        let _ = writeln!(out, "ringgate_fleet_seq_floor_raises_total {}", self.seq_floor_raises.load(Relaxed));
    }
}

/// The node's handle on the fleet, shared by every core, the route and the admin API.
pub struct Fleet {
    pub node_id: Arc<str>,
    pub cfg: FleetConfig,
    pub metrics: Arc<FleetMetrics>,
    /// Live nodes (refreshed by every heartbeat), ordered by id.
    live: Mutex<Arc<Vec<Node>>>,
    /// The engine answered the last heartbeat (readiness).
    pub engine_ok: AtomicBool,
    inflight: AtomicUsize,
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
    pub retention: Retention,
    /// Dedup ids remembered per device in the engine.
    pub dedup_keep: usize,
    /// This node's msg_id index leased from the engine, plus one (0: none
    /// yet, or the lease lapsed): see [`fleet_msg_id`].
    lease: AtomicU64,
    /// Until when the lease is held, ms since `born` (renewed by every
    /// heartbeat; u64::MAX: for good, in the simulation).
    lease_until_ms: AtomicU64,
    born: std::time::Instant,
}

/// Bits of a fleet msg_id for the node's leased index (and the largest
/// number of nodes minting at once).
pub const NODE_INDEX_BITS: u32 = 8;

/// A msg_id unique across the fleet, time-ordered like a single node's.
///
/// One node (`runtime/core/send.rs`) mints `wall_ms << 20 | counter(12) <<
/// 8 | core(8)`, unique across its cores and restarts (the counter never
/// falls behind the clock). Two nodes could mint the same one, so in a
/// fleet 8 of the counter's bits carry the node's index, leased from the
/// engine (`scripts::LEASE`, renewed with the heartbeat, never held by two
/// live nodes): `wall_ms << 20 | counter(4) << 16 | node(8) << 8 | core(8)`.
/// The timestamp part and the core part stay where they are (the dedup
/// record's encoding and anyone reading the time out of an id see the same
/// thing). The price: 16 ids per ms per core before the counter runs ahead
/// of the clock (16,000 SENDs/s per core, far above what a fleet node
/// sustains through its engine); an index taken over from a dead node is
/// free only 3 x heartbeat_ms after its last renewal, so the new holder's
/// ids start above the dead one's unless that one's counter ran more than
/// that far ahead of its clock.
pub fn fleet_msg_id(last: &mut u64, wall_ms: u64, node_index: u64, core: usize) -> u64 {
    *last = (*last + 1).max(wall_ms << 4);
    (*last << 16) | ((node_index & 0xff) << 8) | (core as u64 & 0xff)
}

/// The node index a fleet msg_id carries.
pub fn msg_id_node_index(msg_id: u64) -> u64 {
    (msg_id >> 8) & 0xff
}

impl Fleet {
    /// The handle and the receiving end of its request queue (the engine
    /// thread's, or a simulation's), with only this node live until the
    /// first heartbeat.
    pub(crate) fn new(
        cfg: FleetConfig,
        node_id: String,
        me: Node,
        retention: Retention,
        dedup_keep: usize,
    ) -> (Arc<Fleet>, tokio::sync::mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let fleet = Arc::new(Fleet {
            node_id: Arc::from(node_id.as_str()),
            cfg,
            metrics: Arc::new(FleetMetrics::default()),
            live: Mutex::new(Arc::new(vec![me])),
            engine_ok: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            tx,
            retention,
            dedup_keep,
            lease: AtomicU64::new(0),
            lease_until_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
        });
        (fleet, rx)
    }

    /// This node's msg_id index while its lease holds; None before the
    /// engine granted one or after a renewal was missed for longer than the
    /// lease lives (another node may hold the index by then): no msg_id is
    /// minted then, the SEND gets SENDACK 5.
    pub fn node_index(&self) -> Option<u64> {
        let i = self.lease.load(Relaxed);
        if i == 0 {
            return None;
        }
        let until = self.lease_until_ms.load(Relaxed);
        (until == u64::MAX || (self.born.elapsed().as_millis() as u64) < until).then_some(i - 1)
    }

    /// The engine granted (or renewed) `index` for `ttl_ms` from `since`
    /// (when the renewal was asked: the lease cannot outlive it in the engine).
    pub(crate) fn set_lease(&self, index: u64, since: std::time::Instant, ttl_ms: u64) {
        let until = since.saturating_duration_since(self.born).as_millis() as u64 + ttl_ms;
        self.lease_until_ms.store(until, Relaxed);
        self.lease.store(index + 1, Relaxed);
    }

    /// A lease for good (the simulation, which has no heartbeat of leases).
    #[cfg(test)]
    pub(crate) fn set_lease_forever(&self, index: u64) {
        self.lease_until_ms.store(u64::MAX, Relaxed);
        self.lease.store(index + 1, Relaxed);
    }

    /// Queues `r` for the engine thread; `Busy` when `max_engine_inflight`
    /// requests are already queued or running.
    pub fn submit(&self, r: Request) -> Result<(), FleetError> {
        if self.inflight.fetch_add(1, Relaxed) >= self.cfg.max_engine_inflight {
            self.inflight.fetch_sub(1, Relaxed);
            return Err(FleetError::Busy);
        }
        if self.tx.send(r).is_err() {
            self.inflight.fetch_sub(1, Relaxed);
            return Err(FleetError::Engine("engine thread stopped".into()));
        }
        Ok(())
    }

    fn done(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }

    /// Runs an admin operation and waits for its answer (from a blocking
    /// admin thread, never a core). Bounded like every request
    /// (`max_engine_inflight`); the engine thread gives up after
    /// `engine_timeout_ms`, and so does this wait, with a margin for the
    /// hand-over, should that thread itself be stuck.
    pub fn admin(&self, op: AdminOp) -> Result<AdminAnswer, FleetError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(Request::Admin { op, reply: tx })?;
        let wait = std::time::Duration::from_millis(self.cfg.engine_timeout_ms + 250);
        rx.recv_timeout(wait).map_err(|_| FleetError::Timeout)?
    }

    /// Requests queued or running.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// Live nodes, ordered by node id.
    pub fn live_nodes(&self) -> Arc<Vec<Node>> {
        self.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn set_live(&self, mut nodes: Vec<Node>) {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        self.metrics.nodes.store(nodes.len() as u64, Relaxed);
        if let Ok(mut l) = self.live.lock() {
            *l = Arc::new(nodes);
        }
    }
}

/// Rendezvous (highest random weight) order of `nodes` for `user`: every
/// node computes the same order, so one user's devices meet on one node.
pub fn rendezvous<'a>(user: &str, nodes: &'a [Node]) -> Vec<&'a Node> {
    let mut v: Vec<(u64, &Node)> = nodes.iter().map(|n| (hrw(user, &n.id), n)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    v.into_iter().map(|(_, n)| n).collect()
}

fn hrw(user: &str, node: &str) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// The node id when `fleet.node_id` is unset: hostname + listen port.
pub fn default_node_id(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0 {
        let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..n]).replace([' ', ',', ':', '{', '}'], "-")
    } else {
        "node".into()
    };
    format!("{host}-{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str) -> Node {
        Node { id: id.into(), host: "h".into(), port: 1, transport: "tcp".into() }
    }

    #[test]
    fn fleet_msg_ids_carry_the_node_index_and_keep_the_single_node_time_and_core() {
        let wall = 1_765_000_000_000u64;
        let (mut a, mut b) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        // Two nodes, the same core index, the same ms, bursts past the counter.
        for _ in 0..100 {
            let x = fleet_msg_id(&mut a, wall, 1, 3);
            let y = fleet_msg_id(&mut b, wall, 2, 3);
            assert!(seen.insert(x) && seen.insert(y), "a msg_id minted twice");
            assert_eq!((msg_id_node_index(x), msg_id_node_index(y)), (1, 2));
            assert_eq!((x & 0xff, y & 0xff), (3, 3));
        }
        // The time part is where a single node's is.
        let first = fleet_msg_id(&mut 0, wall, 5, 0);
        assert_eq!(first >> 20, wall);
        // Ids grow with time and within a ms.
        let mut c = 0;
        let (p, q, r) = (fleet_msg_id(&mut c, wall, 0, 0), fleet_msg_id(&mut c, wall, 0, 0), fleet_msg_id(&mut c, wall + 1, 0, 0));
        assert!(p < q && q < r);
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_dead_nodes_users() {
        let all = vec![n("a"), n("b"), n("c")];
        let mut first = std::collections::HashMap::new();
        for i in 0..300 {
            let u = format!("u{i}");
            let o = rendezvous(&u, &all);
            assert_eq!(o.len(), 3);
            first.insert(u, o[0].id.clone());
        }
        let per: Vec<usize> = ["a", "b", "c"].iter().map(|x| first.values().filter(|v| v == x).count()).collect();
        assert!(per.iter().all(|c| *c > 60), "{per:?}");
        // b dies: only b's users move.
        let two = vec![n("a"), n("c")];
        for (u, f) in &first {
            let now = &rendezvous(u, &two)[0].id;
            if f != "b" {
                assert_eq!(now, f, "{u} moved although its node lives");
            }
        }
    }
}
