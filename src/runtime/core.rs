//! One core's state and message path: its connections, the inboxes of the users homed here, dedup, routing and the ACK wheel.
//!
//! ## Shared-nothing design
//!
//! Every user has one *home core* (`mesh::home_core`, a hash of the user id).
//! That core owns the user's inbox, every device's delivery cursor and the
//! dedup table of the user's devices. A connection is accepted on whichever
//! core the kernel's SO_REUSEPORT hash picks, does its TLS handshake and
//! reads CONNECT there; once the token names the user, the connection *moves*
//! to the home core (the raw fd, the rustls state and any bytes already
//! read travel through the home core's mailbox). From then on everything
//! about that device is core-local: PUSH, PUSHACK, retransmission, replay.
//!
//! A SEND is handled on the sender's home core (where its connection now
//! lives): dedup there, then one `Append` message per recipient's home core
//! (or a direct append when it is this core). Each home core appends, pushes
//! to the recipient's online devices (all of them live on that core) and
//! answers `Appended`; when every recipient has answered, the SENDACK goes
//! out. So a message crosses cores at most twice, and no lock is ever taken.
//!
//! Moving connections rather than routing every frame keeps the steady state
//! (pushes and acks, the bulk of the traffic) free of cross-core hops; the
//! price is one hop per connection lifetime.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub mod admin;
mod connect;
mod dedup;
mod fleet;
mod io;
mod send;
mod sessions;
mod flush;
pub use flush::Log2Hist;
mod transmit;
pub use transmit::{Slices, Transmit, Tx};
mod web;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(any(test, feature = "sim"))]
pub mod sim_random;
#[cfg(test)]
mod sim_tests;

use slab::Slab;

use super::conn::{Conn, Identity, ReadStatus, Tls, TransportError};
use super::transport::{Sock, Transport};
use super::mesh::{home_core, Adopt, CoreMsg, Mesh};
use super::reload::Live;
use crate::limits::{AddrTable, AdmitError, TokenBucket};
use crate::metrics::{
    REJ_ADDRESS_TABLE_FULL, REJ_BAD_TARGET, REJ_BUSY, REJ_CONNECT_RATE, REJ_CONNECT_RATE_IP, REJ_FULL,
    REJ_RATE_LIMITED, REJ_SHED_PREAUTH, REJ_SLOW_CONSUMER, REJ_TOO_LARGE, REJ_TOO_MANY_DEVICES,
};
use crate::net::sockopt::SockOpts;
use crate::proto::ack_wheel::AckWheel;
use crate::proto::error::{connack, sendack};
use crate::proto::frame::{self, SendAck};
use crate::proto::session::{ConnectRequest, EmptyInbox, Event, InboxRead, Phase, Session, SessionLimits};
use crate::proto::DisconnectReason;
use crate::store::recovery::DedupSeed;
use crate::store::{InboxStore, NewMessage};

/// Recipients on this core appended inline during a SEND; a larger fan-out
/// goes through the mailbox in slices.
pub const FANOUT_INLINE: usize = 64;

/// Timer wheel resolution.
pub const TICK_MS: u64 = 10;

/// Monotonic and wall clocks of the process, or virtual ones a test sets.
/// Every time the core reads (deadlines, timestamps, token expiry,
/// retention) comes from here, so a simulation controls all of it.
pub enum Clock {
    Real { start: Instant },
    Virtual(Arc<VirtualClock>),
}

impl Clock {
    pub fn new() -> Self {
        Clock::Real { start: Instant::now() }
    }
    /// A clock that moves only when `v` is set or advanced.
    pub fn virtual_from(v: Arc<VirtualClock>) -> Self {
        Clock::Virtual(v)
    }
    /// Monotonic milliseconds (deadlines).
    pub fn mono_ms(&self) -> u64 {
        match self {
            Clock::Real { start } => start.elapsed().as_millis() as u64 + 1,
            Clock::Virtual(v) => v.mono.load(Ordering::Relaxed),
        }
    }
    /// Unix milliseconds (timestamps, retention, token expiry).
    pub fn wall_ms(&self) -> u64 {
        match self {
            Clock::Real { .. } => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            Clock::Virtual(v) => v.wall.load(Ordering::Relaxed),
        }
    }
}

/// Virtual time for a simulation: monotonic and wall milliseconds that
/// move together, only when told to.
pub struct VirtualClock {
    mono: AtomicU64,
    wall: AtomicU64,
}

impl VirtualClock {
    /// Starts at `mono_ms` (at least 1: 0 means "unset" in some deadlines) and `wall_ms`.
    pub fn new(mono_ms: u64, wall_ms: u64) -> Arc<Self> {
        Arc::new(VirtualClock { mono: AtomicU64::new(mono_ms.max(1)), wall: AtomicU64::new(wall_ms) })
    }
    /// Moves both clocks forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.mono.fetch_add(ms, Ordering::Relaxed);
        self.wall.fetch_add(ms, Ordering::Relaxed);
    }
    /// Sets the wall clock alone (an NTP step): deadlines are not affected.
    pub fn set_wall(&self, wall_ms: u64) {
        self.wall.store(wall_ms, Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Read-only state every core shares (built once, behind an `Arc`).
pub struct Shared {
    pub limits: SessionLimits,
    /// What a reload may change, as at start; each core then keeps its own
    /// `Core::live`, replaced by `CoreMsg::Reload` (`runtime/reload.rs`).
    pub live: Arc<Live>,
    pub groups: HashMap<String, Vec<Arc<str>>>,
    pub mesh: Mesh,
    pub dedup_per_device: usize,
    /// `session.dedup_pack_after_ms`: a device's dedup table is packed this
    /// long after its connection ended (`core/dedup.rs`).
    pub dedup_pack_after_ms: u64,
    pub sockopts: SockOpts,
    pub clock: Clock,
    /// Open connections in the process: written on accept and close only
    /// (never on the message path), read by every core's accept path.
    pub open_conns: AtomicU64,
    /// Every metric; this core writes only `metrics.core(id)`.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub ledger: super::ledger::LedgerLimits,
    /// Mutes at start (user → until, epoch ms); each core keeps those of its users.
    pub mutes: HashMap<Arc<str>, u64>,
    /// Fleet mode: the engine handle (`crate::fleet`); None on the local log.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// A connection's slab slot plus a generation, so stale keys never alias a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    idx: u32,
    gen: u32,
}

struct Slot {
    gen: u32,
    conn: Conn,
    /// Set while the connection has not completed CONNECT on the core that
    /// accepted it: its place in the shedding order and its address.
    preauth: Option<(u64, IpAddr)>,
    /// In the core's dirty list: written at the end of this turn (`flush.rs`).
    dirty: bool,
    /// In the transmit queue, with the follow-ups of its write (bits of
    /// `transmit::then`).
    tx: u8,
    /// Stage trace only: when the oldest unacknowledged PUSH was written.
    written_at: Option<Instant>,
}

/// What the connection task must do after the core handled its I/O.
pub enum Outcome {
    Continue,
    Close,
    Migrate(Box<Adopt>),
}

use dedup::Dedup;

struct Device {
    id: Arc<str>,
    conn: Option<ConnKey>,
    dedup: Dedup,
    /// The cursor of its last connection (presence shows it while offline).
    acked_seq: u64,
    /// Wall ms of its last CONNECT since start; 0 = not seen since start.
    connected_at_ms: u64,
    /// Monotonic ms of its last CONNECT or disconnect (0 = recovered, not
    /// seen since start): the least recently seen offline device is the
    /// one evicted for a new one at `limits.max_devices_per_user`.
    seen_ms: u64,
}

impl Device {
    fn new(id: Arc<str>, dedup: Dedup) -> Self {
        Device { id, conn: None, dedup, acked_seq: 0, connected_at_ms: 0, seen_ms: 0 }
    }
}

/// Devices kept in a plain list up to this many; beyond, an index by id
/// is kept beside the list. Most users have one to three devices, where a
/// scan beats hashing the id on every SEND; the index makes the lookup
/// O(1) for a user with many (up to `limits.max_devices_per_user`).
const DEVICE_INDEX_FROM: usize = 8;

#[derive(Default)]
struct User {
    devices: Vec<Device>,
    /// Device id → position in `devices`; Some while there are more than
    /// `DEVICE_INDEX_FROM` devices. Boxed: every user has a bucket in the
    /// core's users table and few need an index (8 bytes in each bucket
    /// instead of 48; `tests/conn_memory.rs`).
    index: Option<Box<HashMap<Arc<str>, usize>>>,
}

impl User {
    fn find(&self, id: &str) -> Option<usize> {
        match &self.index {
            Some(ix) => ix.get(id).copied(),
            None => self.devices.iter().position(|d| &*d.id == id),
        }
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Device> {
        let i = self.find(id)?;
        self.devices.get_mut(i)
    }

    fn push(&mut self, d: Device) -> usize {
        let i = self.devices.len();
        if let Some(ix) = self.index.as_mut() {
            ix.insert(d.id.clone(), i);
        }
        if self.devices.capacity() == 0 {
            // Most users have one device: room for exactly one, not the
            // four a first `push` reserves (288 bytes, 216 of them unused
            // for every connected user; `tests/conn_memory.rs`). A second
            // device grows it as usual.
            self.devices.reserve_exact(1);
        }
        self.devices.push(d);
        if self.index.is_none() && self.devices.len() > DEVICE_INDEX_FROM {
            self.index = Some(Box::new(self.devices.iter().enumerate().map(|(i, d)| (d.id.clone(), i)).collect()));
        }
        i
    }

    /// Makes room for one more device under `cap` by forgetting the least
    /// recently seen offline devices (their dedup tables and cursors go
    /// with them: a device that comes back is a new device, and a SEND it
    /// retries from before may be stored twice). False when every device
    /// is online: nothing may be evicted.
    fn make_room(&mut self, cap: usize) -> bool {
        while self.devices.len() >= cap.max(1) {
            let Some(i) = self.devices.iter().enumerate().filter(|(_, d)| d.conn.is_none()).min_by_key(|(_, d)| d.seen_ms).map(|(i, _)| i) else {
                return false;
            };
            let gone = self.devices.swap_remove(i);
            if let Some(ix) = self.index.as_mut() {
                ix.remove(&gone.id);
                if let Some(moved) = self.devices.get(i) {
                    ix.insert(moved.id.clone(), i);
                }
            }
        }
        if self.devices.len() <= DEVICE_INDEX_FROM {
            self.index = None;
        }
        true
    }
}

/// A SEND waiting for remote appends.
struct PendingSend {
    /// The connection that sent it (its in-flight count drops on
    /// completion); none for an admin publish.
    origin: Option<ConnKey>,
    user: Arc<str>,
    device: Arc<str>,
    ack: SendAck,
    remaining: u32,
    failed: bool,
    received: Instant,
    /// Set for an admin publish: who waits for the answer, and the seqs so far.
    admin: Option<Box<admin::PublishWait>>,
    /// A group send: its FANOUT record is closed when it completes.
    group: bool,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub accepted: u64,
    pub tls_failures: u64,
    pub handshake_timeouts: u64,
    pub panics: u64,
    pub migrated_out: u64,
    pub sends: u64,
}

/// Why a freshly accepted connection is closed before any byte is read.
#[derive(Debug)]
pub enum AcceptError {
    /// A per-address limit (peer fault, or a crowd behind one address).
    Admission(AdmitError),
    /// The process is at `max_connections` and has no pre-auth connection to shed.
    Full,
}

pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// Token keys, TLS config, limits, origins and route of the last
    /// reload this core took (read without a lock on every accept and CONNECT).
    pub live: Arc<Live>,
    wheel: AckWheel<ConnKey>,
    conns: Slab<Slot>,
    next_gen: u32,
    store: Box<dyn InboxStore + Send>,
    /// Appends waiting for their fsync before `Appended` may be answered,
    /// in lsn order: (lsn, origin core, request, recipient, seq).
    waiting: VecDeque<(u64, usize, u64, Arc<str>, u64)>,
    woken_users: Vec<Arc<str>>,
    users: HashMap<Arc<str>, User>,
    pending: Slab<(u32, PendingSend)>,
    last_msg_id: u64,
    pub stats: Stats,
    pub shutting_down: bool,
    expired: Vec<ConnKey>,
    /// Pre-auth connections accepted here, oldest first (shedding order).
    preauth_order: BTreeMap<u64, ConnKey>,
    preauth_seq: u64,
    addrs: AddrTable,
    /// `limits.connect_rate` for CONNECTs handled on this core.
    connect_bucket: TokenBucket,
    last_prune_ms: u64,
    /// This core's copy of the groups, replaced by the admin API (every core gets each change).
    groups: HashMap<Arc<str>, Arc<[Arc<str>]>>,
    /// Mutes of the users homed here (user → until, epoch ms).
    mutes: HashMap<Arc<str>, u64>,
    ledger: super::ledger::Ledger,
    last_gauge_ms: u64,
    /// The once-a-minute info summary of peer failures.
    peer_log: super::peer_log::PeerLog,
    /// Refused origins: when the next warning may be logged, and how many
    /// refusals the last one did not name (one line per 10 s per core: a
    /// page polling from a wrong origin must not flood the log).
    origin_log: (u64, u64),
    /// SSE and long-poll sessions on this core by sid (`core/sessions.rs`).
    web_sids: HashMap<super::web::Sid, ConnKey>,
    /// Connections to write at the end of this turn (`flush.rs`).
    pub dirty: flush::Dirty,
    /// Writes the driver is to perform (`transmit.rs`).
    tx: transmit::Transmits,
    /// Devices whose dedup table is to be packed (`core/dedup.rs`).
    idle_dedup: dedup::PackQueue,
    /// Fleet mode (`core/fleet.rs`); None on the local log.
    fleet: Option<Box<fleet::CoreFleet>>,
    /// The driver's answer to "who is at the other end of this socket"
    /// (the admin API's presence, the fleet engine's connection record):
    /// `transport::kernel_peer_addr` in the server, nobody by default.
    pub peer_of: fn(Sock) -> Option<std::net::SocketAddr>,
}

impl Core {
    /// A core over `store` (in memory, or this core's durable log) with the
    /// dedup tables recovery rebuilt for the users homed here.
    pub fn new(id: usize, shared: Arc<Shared>, store: Box<dyn InboxStore + Send>, dedup: Vec<DedupSeed>) -> Self {
        let now = shared.clock.mono_ms();
        let mut users: HashMap<Arc<str>, User> = HashMap::new();
        for seed in dedup {
            let d = Dedup::recovered(seed.acks);
            users.entry(seed.user).or_default().push(Device::new(seed.device, d));
        }
        Core {
            id,
            wheel: AckWheel::new(TICK_MS, now),
            conns: Slab::new(),
            next_gen: 0,
            store,
            waiting: VecDeque::new(),
            woken_users: Vec::new(),
            users,
            pending: Slab::new(),
            last_msg_id: 0,
            stats: Stats::default(),
            shutting_down: false,
            expired: Vec::new(),
            preauth_order: BTreeMap::new(),
            preauth_seq: 0,
            addrs: AddrTable::new(&shared.live.limits_cfg, shared.mesh.len()),
            connect_bucket: TokenBucket::full(shared.live.limits_cfg.connect_rate, now),
            live: shared.live.clone(),
            last_prune_ms: now,
            groups: shared.groups.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_slice()))).collect(),
            mutes: shared
                .mutes
                .iter()
                .filter(|(u, _)| home_core(u, shared.mesh.len()) == id)
                .map(|(u, t)| (u.clone(), *t))
                .collect(),
            ledger: super::ledger::Ledger::new(shared.ledger),
            last_gauge_ms: 0,
            peer_log: Default::default(),
            origin_log: (0, 0),
            web_sids: HashMap::new(),
            dirty: flush::Dirty::new(),
            tx: transmit::Transmits::default(),
            idle_dedup: Default::default(),
            fleet: shared.fleet.clone().map(fleet::CoreFleet::new),
            peer_of: |_| None,
            shared,
        }
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    fn conn(&mut self, key: ConnKey) -> Option<&mut Conn> {
        match self.conns.get_mut(key.idx as usize) {
            Some(s) if s.gen == key.gen => Some(&mut s.conn),
            _ => None,
        }
    }

    /// Registers a freshly accepted (or adopted) connection.
    pub fn insert(&mut self, conn: Conn) -> ConnKey {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let idx = self.conns.insert(Slot { gen, conn, preauth: None, dirty: false, tx: 0, written_at: None }) as u32;
        let key = ConnKey { idx, gen };
        self.rearm(key);
        self.m().conns.set(self.conns.len() as u64);
        key
    }

    /// Registers a new connection accepted on this core from `peer`, or
    /// says why it must be closed at once. Near `max_connections` the oldest
    /// pre-auth connection on this core is shed to make room: authenticated
    /// clients are never shed, and a legitimate login still gets in while
    /// anonymous connections hold the process near its fd limit.
    pub fn accept(&mut self, sock: Sock, peer: IpAddr) -> Result<ConnKey, AcceptError> {
        let now = self.shared.clock.mono_ms();
        self.preauth_seq += 1;
        let seq = self.preauth_seq;
        match self.addrs.admit(peer, seq, now) {
            Err(e) => {
                self.reject(match e {
                    AdmitError::ConnectRate => REJ_CONNECT_RATE_IP,
                    AdmitError::TableFull => REJ_ADDRESS_TABLE_FULL,
                });
                return Err(AcceptError::Admission(e));
            }
            Ok(Some(oldest)) => self.shed_preauth(oldest),
            Ok(None) => {}
        }
        if self.shared.open_conns.load(Ordering::Relaxed) >= self.live.max_connections && !self.shed_oldest_preauth() {
            self.addrs.leave_preauth(peer, seq);
            self.reject(REJ_FULL);
            return Err(AcceptError::Full);
        }
        let tls = match &self.live.tls {
            // rustls' state is created when the first record is complete.
            Some(cfg) => Tls::Accepting(cfg.clone()),
            None => Tls::Off,
        };
        self.stats.accepted += 1;
        self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(now, &self.shared.limits);
        let key = self.insert(Conn::new(Some(sock), tls, session));
        self.preauth_order.insert(seq, key);
        if let Some(slot) = self.conns.get_mut(key.idx as usize) {
            slot.preauth = Some((seq, peer));
        }
        Ok(key)
    }

    /// Reserves room for one `Append` per remote target in the target
    /// cores' mailboxes, so a message goes to all of its recipients or to
    /// none (a partial fan-out could not be retried without duplicates).
    /// False, with nothing reserved, when a mailbox is full.
    pub(crate) fn reserve_mailboxes(&self, targets: &[Arc<str>]) -> bool {
        let cores = self.shared.mesh.len();
        // A sliced fan-out posts this core's appends to its own mailbox too.
        let own = targets.len() > FANOUT_INLINE;
        if let [t] = targets {
            // The common case, without the per-core tally.
            let home = home_core(t, cores);
            return home == self.id || self.shared.mesh[home].try_reserve(1);
        }
        let mut per_core = vec![0usize; cores];
        for t in targets {
            per_core[home_core(t, cores)] += 1;
        }
        for core in 0..cores {
            if (core == self.id && !own) || per_core[core] == 0 {
                continue;
            }
            if !self.shared.mesh[core].try_reserve(per_core[core]) {
                for (undo, n) in per_core.iter().enumerate().take(core) {
                    if (undo != self.id || own) && *n > 0 {
                        self.shared.mesh[undo].release(*n);
                    }
                }
                return false;
            }
        }
        true
    }

    /// Gives back what `reserve_mailboxes` reserved for `targets` when the
    /// message is not posted after all.
    pub(crate) fn release_mailboxes(&self, targets: &[Arc<str>]) {
        let cores = self.shared.mesh.len();
        let own = targets.len() > FANOUT_INLINE;
        for t in targets {
            let home = home_core(t, cores);
            if home != self.id || own {
                self.shared.mesh[home].release(1);
            }
        }
    }

    /// Counts one refusal by a limit (`ringgate_rejections_total{reason}`).
    pub(crate) fn reject(&self, reason: usize) {
        self.m().rejections[reason].inc();
    }

    /// `n` HTTP requests got 403 for their `Origin`. A browser hides that
    /// 403 from the page (no CORS headers), so the gateway's log is where a
    /// developer learns which line of the configuration to add.
    pub(crate) fn origin_refused(&mut self, n: u32, origin: &str, now_ms: u64) {
        for _ in 0..n {
            self.reject(crate::metrics::REJ_ORIGIN);
        }
        let (next, unnamed) = &mut self.origin_log;
        if now_ms < *next {
            *unnamed += u64::from(n);
            return;
        }
        tracing::warn!(
            worker = self.id,
            origin,
            earlier_unlogged = *unnamed,
            "refused an HTTP request from origin {origin:?}: not in web.allowed_origins (add `allowed_origins = [\"{origin}\"]` under [web] if that page is yours); at most one such line per 10 s per worker"
        );
        *next = now_ms + 10_000;
        *unnamed = 0;
    }

    /// Closes the oldest connection accepted here that has not completed
    /// CONNECT. False when there is none.
    pub fn shed_oldest_preauth(&mut self) -> bool {
        while let Some((_, key)) = self.preauth_order.pop_first() {
            let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { continue };
            if let Some((seq, ip)) = slot.preauth.take() {
                self.addrs.leave_preauth(ip, seq);
            }
            // No DISCONNECT: it may not even have finished TLS, and it has
            // not earned an answer; its task closes the socket.
            slot.conn.dead = true;
            self.reject(REJ_SHED_PREAUTH);
            self.wake(key);
            return true;
        }
        false
    }

    /// Closes pre-auth connection `seq`, which its address's admission
    /// already stopped counting (a newcomer from the address took its slot).
    fn shed_preauth(&mut self, seq: u64) {
        let Some(key) = self.preauth_order.remove(&seq) else { return };
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        slot.preauth = None;
        slot.conn.dead = true;
        self.reject(REJ_SHED_PREAUTH);
        self.wake(key);
    }

    /// The connection completed CONNECT (or is going away): it no longer
    /// counts against its address's pre-auth limit.
    fn leave_preauth(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        if let Some((seq, ip)) = slot.preauth.take() {
            self.preauth_order.remove(&seq);
            self.addrs.leave_preauth(ip, seq);
        }
    }

    /// Forgets a connection whose task is ending.
    pub fn remove(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get(key.idx as usize) else { return };
        if slot.gen != key.gen {
            return;
        }
        self.leave_preauth(key);
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        let slot = self.conns.remove(key.idx as usize);
        if let Some((t, _)) = slot.conn.timer {
            self.wheel.cancel(t);
        }
        self.m().conns.set(self.conns.len() as u64);
        if let Some(sid) = slot.conn.framing.sid() {
            self.web_sids.remove(&sid);
        }
        // A long-poll session's newer poll waited for this connection's
        // answer to go out; it never will: the session goes on now.
        if let Some(v) = slot.conn.framing.http().and_then(|h| h.lp_waiting) {
            self.kick(v);
        }
        if let Some(ident) = slot.conn.ident {
            let m = &self.shared.metrics.core(self.id).conns_open;
            m.set(m.get().saturating_sub(1));
            if let Some(u) = self.users.get_mut(&ident.user) {
                if let Some(d) = u.find_mut(&ident.device) {
                    if d.conn == Some(key) {
                        d.conn = None;
                        d.seen_ms = self.shared.clock.mono_ms();
                        d.acked_seq = slot.conn.session.acked();
                        let device = d.id.clone();
                        let stamp = d.connected_at_ms;
                        if self.fleet.is_some() {
                            self.fleet_offline(ident.user.clone(), device.clone(), slot.conn.session.acked(), stamp);
                        }
                        self.dedup_went_idle(ident.user, device);
                    }
                }
            }
        }
    }

    /// Interest of the task: `None` when the connection is gone, else whether it waits to write.
    pub fn wants_write(&mut self, key: ConnKey) -> Option<bool> {
        let c = self.conn(key)?;
        Some(c.write_blocked)
    }

    /// Consumes the "look at me" flag, or stores the waker for it.
    pub fn poll_woken(&mut self, key: ConnKey, waker: &std::task::Waker) -> bool {
        match self.conn(key) {
            None => true,
            Some(c) if c.woken => {
                c.woken = false;
                true
            }
            Some(c) => {
                if !c.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    c.waker = Some(waker.clone());
                }
                false
            }
        }
    }

    fn wake(&mut self, key: ConnKey) {
        if let Some(c) = self.conn(key) {
            c.woken = true;
            if let Some(w) = c.waker.take() {
                w.wake();
            }
        }
    }

    /// Keeps one wheel entry per connection at or before the session's next deadline.
    fn rearm(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key.idx as usize) else { return };
        let mut want = slot.conn.next_deadline();
        if slot.conn.over_hw_since_ms != 0 {
            let slow = slot.conn.over_hw_since_ms.saturating_add(self.live.limits_cfg.slow_consumer_timeout_ms);
            want = Some(want.map_or(slow, |d| d.min(slow)));
        }
        match (slot.conn.timer, want) {
            (Some((_, armed)), Some(d)) if armed <= d => {}
            (old, want) => {
                if let Some((t, _)) = old {
                    self.wheel.cancel(t);
                }
                slot.conn.timer = want.map(|d| (self.wheel.insert(d, key), d));
            }
        }
    }

    /// The `Arc<str>` of a user homed here (shared with its table entry), or a new one.
    fn intern_user(&self, user: &str) -> Arc<str> {
        match self.users.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => Arc::from(user),
        }
    }

    /// Handles one message from another core.
    pub fn on_message(&mut self, msg: CoreMsg) -> Option<Box<Adopt>> {
        match msg {
            CoreMsg::Adopt(a) => return Some(a),
            CoreMsg::Append { origin, req, user, msg } => {
                // Taken: its mailbox reservation (made by the sender) ends.
                self.shared.mesh[self.id].release(1);
                let wall = self.shared.clock.wall_ms();
                self.append_for(origin, req, &user, msg, wall);
            }
            CoreMsg::Appended { req, user, result } => self.on_appended(req, user, result),
            CoreMsg::Synced(result) => self.on_synced(result),
            CoreMsg::StoreIo => self.on_store_io(),
            CoreMsg::Admin(cmd) => self.on_admin(*cmd),
            CoreMsg::Fleet(ev) => self.on_fleet(*ev),
            CoreMsg::Shutdown => self.begin_shutdown(),
            CoreMsg::Reload(live) => {
                // New connections and CONNECTs see it from here on;
                // connections keep what they were set up with.
                self.addrs.set_limits(&live.limits_cfg, self.shared.mesh.len());
                live.applied.fetch_add(1, std::sync::atomic::Ordering::Release);
                self.live = live;
            }
        }
        None
    }

    /// Fires due timers. The last write to a slow consumer, and what the
    /// timers produce, are transmits the driver performs after the call.
    pub fn on_tick(&mut self) {
        let now = self.shared.clock.mono_ms();
        if now.saturating_sub(self.last_prune_ms) >= 1_000 {
            self.addrs.prune(now);
            self.last_prune_ms = now;
        }
        self.pack_idle_dedup(now);
        if self.fleet.is_some() {
            self.fleet_tick(now);
        }
        self.store.tick(self.shared.clock.wall_ms());
        if now >= self.last_gauge_ms + 1_000 {
            self.last_gauge_ms = now;
            self.refresh_gauges();
            self.peer_log.tick(self.id, now, self.shared.metrics.core(self.id));
        }
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for key in expired.drain(..) {
            let Some(slot) = self.conns.get_mut(key.idx as usize) else { continue };
            if slot.gen != key.gen {
                continue;
            }
            let conn = &mut slot.conn;
            conn.timer = None;
            if conn.over_hw_since_ms != 0
                && now >= conn.over_hw_since_ms.saturating_add(self.live.limits_cfg.slow_consumer_timeout_ms)
            {
                // The peer has not read what we owe it for the whole timeout.
                // DISCONNECT 8 goes behind the backlog (it reaches the peer
                // only if it ever reads that far); the connection is dropped
                // now so its buffers are freed.
                conn.session.close(now, DisconnectReason::SlowConsumer, "output above the high-water mark for too long", &mut conn.out);
                conn.dead = true;
                // One last write, best effort, before the task drops it.
                self.transmit(key, 0);
                self.reject(REJ_SLOW_CONSUMER);
                tracing::debug!(worker = self.id, "slow consumer closed");
                self.wake(key);
                continue;
            }
            if let Some(h) = conn.framing.http() {
                // HTTP: the head did not complete in time, or keep-alive idled out.
                if now >= h.deadline_ms {
                    conn.dead = true;
                    self.wake(key);
                } else {
                    self.rearm(key);
                }
                continue;
            }
            if conn.tls_handshaking() {
                if conn.session.next_deadline().is_some_and(|d| now >= d) {
                    // A stalled handshake: no DISCONNECT is possible before TLS is up.
                    conn.dead = true;
                    self.stats.handshake_timeouts += 1;
                    self.m().handshakes[crate::metrics::HS_TIMEOUT].inc();
                    self.wake(key);
                } else {
                    self.rearm(key);
                }
                continue;
            }
            let blocked = conn.write_blocked;
            let Core { store, shared, .. } = self;
            let inbox: &dyn InboxRead = match &conn.ident {
                Some(i) => store.peek(&i.user),
                None => &EmptyInbox,
            };
            let before = conn.session.phase();
            let retrans_before = conn.session.retransmissions();
            conn.session.on_timeout(now, &shared.limits, inbox, blocked, &mut conn.out);
            if let Some(i) = &conn.ident {
                store.fetch_cold(&i.user);
            }
            let retransmitted =
                (conn.session.retransmissions() != retrans_before).then(|| (conn.session.acked() + 1, conn.session.sent()));
            if before != Phase::Closing && conn.session.phase() == Phase::Closing {
                if let Some(r) = conn.session.close_reason() {
                    if r == DisconnectReason::HandshakeTimeout {
                        self.stats.handshake_timeouts += 1;
                        self.m().handshakes[crate::metrics::HS_TIMEOUT].inc();
                    }
                }
            }
            if let Some((from, to)) = retransmitted {
                self.record_retransmit(key, from, to);
            }
            self.kick(key);
        }
        self.expired = expired;
    }

    /// SIGTERM: DISCONNECT(7) to every connection.
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shared.metrics.health.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        // A SEND still waiting (for another core's append or for the fsync)
        // is answered SENDACK 5 before the DISCONNECT: its outcome is not
        // known yet, a retry with the same id is safe (dedup, which recovery
        // rebuilds from the log), and without an answer the client cannot
        // tell "retry" from "lost with the connection". Its later completion
        // finds the session closed and writes nothing more.
        let waiting: Vec<(Arc<str>, Arc<str>, SendAck)> = self
            .pending
            .iter()
            .filter(|(_, (_, p))| p.admin.is_none())
            .map(|(_, (_, p))| (p.user.clone(), p.device.clone(), SendAck { status: sendack::RETRY, msg_id: 0, ..p.ack }))
            .collect();
        for (user, device, ack) in waiting {
            if let Some(key) = self.device_mut(&user, &device).and_then(|d| d.conn) {
                self.write_sendack(key, &ack);
            }
        }
        let keys: Vec<ConnKey> = self.conns.iter().map(|(i, s)| ConnKey { idx: i as u32, gen: s.gen }).collect();
        for key in keys {
            self.close_conn(key, DisconnectReason::ServerShutdown, "server shutting down");
        }
    }

    /// Graceful shutdown, after the connections are gone: make the log durable.
    pub fn shutdown_store(&mut self) {
        self.store.shutdown();
    }

    pub fn fsync_stats(&self) -> Option<crate::store::durable::DurableStats> {
        self.store.fsync_stats()
    }

    pub fn stats_line(&self) -> (usize, u64, Stats) {
        let (inboxes, retained) = self.store.stats();
        (inboxes, retained, self.stats)
    }
}
