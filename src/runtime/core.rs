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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use slab::Slab;

use super::conn::{Conn, Identity, ReadStatus, Tls, TransportError};
use super::mesh::{home_core, Adopt, CoreMsg, Mesh};
use crate::auth::JwtKey;
use crate::net::sockopt::SockOpts;
use crate::proto::ack_wheel::AckWheel;
use crate::proto::error::{connack, sendack};
use crate::proto::frame::{self, SendAck};
use crate::proto::session::{ConnectRequest, EmptyInbox, Event, InboxRead, Phase, Session, SessionLimits};
use crate::proto::DisconnectReason;
use crate::store::recovery::DedupSeed;
use crate::store::{InboxStore, NewMessage};

/// Timer wheel resolution.
pub const TICK_MS: u64 = 10;

/// Monotonic and wall clocks of the process.
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { start: Instant::now() }
    }
    /// Monotonic milliseconds (deadlines).
    pub fn mono_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
    /// Unix milliseconds (timestamps, retention, token expiry).
    pub fn wall_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    pub jwt: JwtKey,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub groups: HashMap<String, Vec<Arc<str>>>,
    pub mesh: Mesh,
    pub dedup_per_device: usize,
    pub sockopts: SockOpts,
    pub clock: Clock,
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
}

/// What the connection task must do after the core handled its I/O.
pub enum Outcome {
    Continue,
    Close,
    Migrate(Box<Adopt>),
}

/// The last `dedup_per_device` accepted client_msg_ids of one device and their SENDACKs.
#[derive(Default)]
struct Dedup {
    order: VecDeque<u64>,
    map: HashMap<u64, Option<SendAck>>,
}

struct Device {
    id: Arc<str>,
    conn: Option<ConnKey>,
    dedup: Dedup,
}

#[derive(Default)]
struct User {
    devices: Vec<Device>,
}

/// A SEND waiting for remote appends.
struct PendingSend {
    user: Arc<str>,
    device: Arc<str>,
    ack: SendAck,
    remaining: u32,
    failed: bool,
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

pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    wheel: AckWheel<ConnKey>,
    conns: Slab<Slot>,
    next_gen: u32,
    store: Box<dyn InboxStore + Send>,
    /// Appends waiting for their fsync before `Appended` may be answered,
    /// in lsn order: (lsn, origin core, request).
    waiting: VecDeque<(u64, usize, u64)>,
    woken_users: Vec<Arc<str>>,
    users: HashMap<Arc<str>, User>,
    pending: Slab<(u32, PendingSend)>,
    last_msg_id: u64,
    pub stats: Stats,
    pub shutting_down: bool,
    expired: Vec<ConnKey>,
}

impl Core {
    /// A core over `store` (in memory, or this core's durable log) with the
    /// dedup tables recovery rebuilt for the users homed here.
    pub fn new(id: usize, shared: Arc<Shared>, store: Box<dyn InboxStore + Send>, dedup: Vec<DedupSeed>) -> Self {
        let now = shared.clock.mono_ms();
        let mut users: HashMap<Arc<str>, User> = HashMap::new();
        for seed in dedup {
            let mut d = Dedup::default();
            for (cmid, msg_id, ts) in seed.acks {
                let ack = SendAck { client_msg_id: cmid, status: sendack::STORED, msg_id, timestamp_ms: ts };
                if d.map.insert(cmid, Some(ack)).is_none() {
                    d.order.push_back(cmid);
                }
            }
            users.entry(seed.user).or_default().devices.push(Device { id: seed.device, conn: None, dedup: d });
        }
        Core {
            id,
            shared,
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
        let idx = self.conns.insert(Slot { gen, conn }) as u32;
        let key = ConnKey { idx, gen };
        self.rearm(key);
        key
    }

    /// Registers a new connection accepted on this core.
    pub fn accept(&mut self, fd: std::os::fd::RawFd) -> Result<ConnKey, rustls::Error> {
        let now = self.shared.clock.mono_ms();
        let tls = match &self.shared.tls {
            Some(cfg) => Tls::Rustls(Box::new(rustls::ServerConnection::new(cfg.clone())?)),
            None => Tls::Off,
        };
        self.stats.accepted += 1;
        let session = Session::new(now, &self.shared.limits);
        Ok(self.insert(Conn::new(fd, tls, session)))
    }

    /// Forgets a connection whose task is ending.
    pub fn remove(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get(key.idx as usize) else { return };
        if slot.gen != key.gen {
            return;
        }
        let slot = self.conns.remove(key.idx as usize);
        if let Some((t, _)) = slot.conn.timer {
            self.wheel.cancel(t);
        }
        if let Some(ident) = slot.conn.ident {
            if let Some(u) = self.users.get_mut(&ident.user) {
                if let Some(d) = u.devices.iter_mut().find(|d| d.id == ident.device) {
                    if d.conn == Some(key) {
                        d.conn = None;
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
        let want = slot.conn.session.next_deadline();
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

    /// The connection's socket is ready (or the core woke its task): read,
    /// handle frames, write. Returns what the task must do next.
    pub fn on_io(&mut self, key: ConnKey) -> Outcome {
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        if conn.dead || conn.session.phase() == Phase::Finished {
            return Outcome::Close;
        }
        let status = match conn.read_available() {
            Ok(s) => s,
            Err(TransportError::Tls(e)) => {
                tracing::debug!(error = %e, "TLS failure");
                conn.send_alert();
                self.stats.tls_failures += 1;
                return Outcome::Close;
            }
            Err(TransportError::Record(e)) => {
                tracing::debug!(error = %e, "TLS record failure");
                self.stats.tls_failures += 1;
                return Outcome::Close;
            }
            Err(TransportError::Io(e)) => {
                tracing::debug!(error = %e, "socket error");
                return Outcome::Close;
            }
        };
        if conn.tls_handshaking() {
            if status == ReadStatus::Eof {
                self.stats.tls_failures += 1;
                return Outcome::Close;
            }
            return self.after_io(key);
        }
        if let Some(m) = self.process_frames(key) {
            return Outcome::Migrate(m);
        }
        if status == ReadStatus::Eof {
            if let Some(c) = self.conn(key) {
                // The device vanished; its messages stay in the inbox.
                c.session.abort();
            }
            return Outcome::Close;
        }
        self.after_io(key)
    }

    /// Flushes, half-closes a closing session, releases idle buffers, re-arms the timer.
    fn after_io(&mut self, key: ConnKey) -> Outcome {
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        if conn.flush().is_err() {
            conn.dead = true;
            return Outcome::Close;
        }
        match conn.session.phase() {
            Phase::Finished => return Outcome::Close,
            Phase::Closing => conn.shutdown_write(),
            _ => {}
        }
        conn.release_idle_buffers();
        self.rearm(key);
        Outcome::Continue
    }

    /// After the core touched a connection outside its task (push, close,
    /// timer): flush, and wake the task if it must act (blocked write, close).
    fn kick(&mut self, key: ConnKey) {
        let outcome = self.after_io(key);
        let blocked = self.conn(key).is_some_and(|c| c.write_blocked);
        if matches!(outcome, Outcome::Close) || blocked {
            if let Some(c) = self.conn(key) {
                if matches!(outcome, Outcome::Close) {
                    c.dead = true;
                }
            }
            self.wake(key);
        }
    }

    /// Runs the session over buffered plaintext until it needs more bytes.
    fn process_frames(&mut self, key: ConnKey) -> Option<Box<Adopt>> {
        let now = self.shared.clock.mono_ms();
        let shared = self.shared.clone();
        loop {
            let conn = self.conn(key)?;
            let ev = conn.session.poll_frame(now, &shared.limits, &mut conn.rbuf, &mut conn.out);
            match ev {
                Event::NeedMore | Event::Closed => return None,
                Event::Handled => {}
                Event::Acked => self.fill(key, now),
                Event::Send(s) => self.on_send(key, s),
                Event::Connect(req) => {
                    if let Some(m) = self.on_connect(key, req) {
                        return Some(m);
                    }
                }
            }
        }
    }

    fn fill(&mut self, key: ConnKey, now: u64) {
        let Core { conns, store, shared, .. } = self;
        let Some(slot) = conns.get_mut(key.idx as usize) else { return };
        let conn = &mut slot.conn;
        let inbox: &dyn InboxRead = match &conn.ident {
            Some(i) => store.peek(&i.user),
            None => &EmptyInbox,
        };
        conn.session.fill(now, &shared.limits, inbox, &mut conn.out);
    }

    /// CONNECT passed the session's checks: verify the token, then open here or move home.
    fn on_connect(&mut self, key: ConnKey, req: ConnectRequest) -> Option<Box<Adopt>> {
        let now = self.shared.clock.mono_ms();
        let wall = self.shared.clock.wall_ms();
        let claims = match self.shared.jwt.verify(req.token.as_str(), wall / 1000) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT refused: bad token");
                let lim = self.shared.limits.clone();
                if let Some(c) = self.conn(key) {
                    c.session.refuse(now, &lim, connack::BAD_TOKEN, &mut c.out);
                }
                return None;
            }
        };
        let user: Arc<str> = Arc::from(claims.sub.as_str());
        let token_exp_wall_ms = claims.exp.saturating_mul(1000);
        let home = home_core(&user, self.shared.mesh.len());
        if home == self.id {
            self.open(key, user, req, token_exp_wall_ms);
            return None;
        }
        // Move to the home core: take the connection out of this core
        // entirely; the task hands over the fd.
        let slot = self.conns.remove(key.idx as usize);
        if let Some((t, _)) = slot.conn.timer {
            self.wheel.cancel(t);
        }
        let c = slot.conn;
        self.stats.migrated_out += 1;
        Some(Box::new(Adopt {
            fd: c.fd,
            tls: c.tls,
            tls_in: c.tls_in,
            tls_out: c.tls_out,
            session: c.session,
            rbuf: c.rbuf,
            out: c.out,
            user,
            req,
            token_exp_wall_ms,
        }))
    }

    /// A connection moved here from another core: register it and open its session.
    pub fn adopt(&mut self, a: Adopt) -> ConnKey {
        let mut conn = Conn::new(a.fd, a.tls, a.session);
        conn.tls_in = a.tls_in;
        conn.tls_out = a.tls_out;
        conn.rbuf = a.rbuf;
        conn.out = a.out;
        let key = self.insert(conn);
        self.open(key, a.user, a.req, a.token_exp_wall_ms);
        // Frames pipelined behind CONNECT were read on the other core.
        let _ = self.process_frames(key);
        self.kick(key);
        key
    }

    /// Accepts the CONNECT on the user's home core: replacement, CONNACK, replay.
    fn open(&mut self, key: ConnKey, user: Arc<str>, req: ConnectRequest, token_exp_wall_ms: u64) {
        let now = self.shared.clock.mono_ms();
        let wall = self.shared.clock.wall_ms();
        let device: Arc<str> = Arc::from(req.device_id.as_str());
        let u = self.users.entry(user.clone()).or_default();
        let d = match u.devices.iter().position(|d| d.id == device) {
            Some(i) => &mut u.devices[i],
            None => {
                u.devices.push(Device { id: device.clone(), conn: None, dedup: Dedup::default() });
                u.devices.last_mut().expect("invariant: just pushed")
            }
        };
        let older = d.conn.replace(key);
        if let Some(old) = older.filter(|o| *o != key) {
            self.close_conn(old, DisconnectReason::Replaced, "replaced by a newer connection of this device");
        }
        // Monotonic deadline for the token's wall-clock expiry.
        let token_exp_ms = if token_exp_wall_ms > wall { now + (token_exp_wall_ms - wall) } else { now };
        let Core { conns, store, shared, .. } = self;
        let Some(slot) = conns.get_mut(key.idx as usize) else { return };
        let conn = &mut slot.conn;
        let bounds = store.inbox(&user, wall).bounds();
        conn.session.accept(now, wall, &shared.limits, &user, &req, bounds, token_exp_ms, &mut conn.out);
        conn.session.fill(now, &shared.limits, store.peek(&user), &mut conn.out);
        conn.ident = Some(Box::new(Identity { user, device }));
        self.rearm(key);
    }

    /// Writes DISCONNECT to a connection from outside its task and lets it close.
    fn close_conn(&mut self, key: ConnKey, reason: DisconnectReason, msg: &str) {
        let now = self.shared.clock.mono_ms();
        let Some(c) = self.conn(key) else { return };
        if c.tls_handshaking() {
            c.dead = true;
        } else {
            c.session.close(now, reason, msg, &mut c.out);
        }
        self.kick(key);
        self.wake(key);
    }

    fn next_msg_id(&mut self, wall_ms: u64) -> u64 {
        // Time-ordered and unique across cores (low 8 bits = core) and
        // restarts (the counter never falls behind the clock).
        self.last_msg_id = (self.last_msg_id + 1).max(wall_ms << 12);
        (self.last_msg_id << 8) | (self.id as u64 & 0xff)
    }

    fn on_send(&mut self, key: ConnKey, s: frame::Send) {
        let wall = self.shared.clock.wall_ms();
        let Some(ident) = self.conn(key).and_then(|c| c.ident.as_ref()).map(|i| (i.user.clone(), i.device.clone()))
        else {
            return;
        };
        let (user, device) = ident;
        self.stats.sends += 1;
        let reply = |status: u8| SendAck { client_msg_id: s.client_msg_id, status, msg_id: 0, timestamp_ms: wall };
        // Dedup: a retried id gets its original answer, or none yet if the
        // original is still being appended (its SENDACK is on the way).
        if let Some(d) = self.device_mut(&user, &device) {
            match d.dedup.map.get(&s.client_msg_id) {
                Some(Some(ack)) => {
                    let ack = *ack;
                    self.write_sendack(key, &ack);
                    return;
                }
                Some(None) => return,
                None => {}
            }
        }
        let targets: Vec<Arc<str>> = match s.target_kind {
            1 if !s.target.is_empty() => vec![Arc::from(s.target.as_str())],
            2 => match self.shared.groups.get(s.target.as_str()) {
                None => return self.write_sendack(key, &reply(sendack::NO_SUCH_TARGET)),
                Some(members) if !members.iter().any(|m| **m == *user) => {
                    return self.write_sendack(key, &reply(sendack::FORBIDDEN))
                }
                Some(members) => members.iter().filter(|m| ***m != *user).cloned().collect(),
            },
            _ => return self.write_sendack(key, &reply(sendack::NO_SUCH_TARGET)),
        };
        let msg_id = self.next_msg_id(wall);
        let ack = SendAck { client_msg_id: s.client_msg_id, status: sendack::STORED, msg_id, timestamp_ms: wall };
        let group = (s.target_kind == 2).then(|| Arc::from(s.target.as_str()));
        let msg = NewMessage {
            msg_id,
            timestamp_ms: wall,
            from: user.clone(),
            device: device.clone(),
            client_msg_id: s.client_msg_id,
            group,
            payload: s.payload,
        };
        if let Some(d) = self.device_mut(&user, &device) {
            d.dedup.map.insert(s.client_msg_id, None);
            d.dedup.order.push_back(s.client_msg_id);
        }
        let gen = self.next_gen_pending();
        let group = msg.group.is_some() && !targets.is_empty();
        let idx = self.pending.insert((gen, PendingSend { user, device, ack, remaining: 0, failed: false, group }));
        let req = ((gen as u64) << 32) | idx as u64;
        // A group send logs its recipients (the membership now) before any
        // copy exists anywhere, so recovery completes exactly these; the
        // SENDACK waits for that record like for a copy.
        let intent = match group {
            true => match self.store.record_fanout(&msg, &targets) {
                Ok(lsn) => Some(lsn),
                Err(e) => {
                    self.pending[idx].1.remaining = 1;
                    self.on_appended(req, Err(e));
                    return;
                }
            },
            false => None,
        };
        // Every target, local or not, answers through `Appended`, so a local
        // append under fsync "always" waits for its fsync like a remote one.
        let cores = self.shared.mesh.len();
        let mut local = Vec::new();
        let mut remaining = 0;
        for t in targets {
            remaining += 1;
            let home = home_core(&t, cores);
            if home == self.id {
                local.push(t);
            } else {
                self.shared.mesh[home].post(CoreMsg::Append { origin: self.id, req, user: t, msg: msg.clone() });
            }
        }
        if intent.is_some() {
            remaining += 1;
        }
        self.pending[idx].1.remaining = remaining;
        if remaining == 0 {
            // A group whose only member is the sender: nothing to store.
            self.complete(idx);
            return;
        }
        match intent {
            Some(lsn) if lsn > self.store.synced_lsn() => self.waiting.push_back((lsn, self.id, req)),
            Some(_) => self.on_appended(req, Ok(0)),
            None => {}
        }
        for t in local {
            self.append_for(self.id, req, &t, msg.clone(), wall);
        }
    }

    /// Appends for a SEND handled on core `origin`; answers `Appended` once
    /// the entry is durable per the fsync policy.
    fn append_for(&mut self, origin: usize, req: u64, user: &Arc<str>, msg: NewMessage, wall: u64) {
        match self.append_local(user, msg, wall) {
            Ok(lsn) if lsn > self.store.synced_lsn() => self.waiting.push_back((lsn, origin, req)),
            Ok(_) => self.answer_appended(origin, req, Ok(0)),
            Err(e) => {
                self.answer_appended(origin, req, Err(e));
                self.refuse_waiting_if_failed();
            }
        }
    }

    /// Once the store has failed nothing waiting for an fsync will ever be
    /// confirmed: those SENDs are answered SENDACK 5 now (store/durable.rs,
    /// "When the disk fails").
    fn refuse_waiting_if_failed(&mut self) {
        let Some(why) = self.store.failed().map(str::to_string) else { return };
        while let Some((_, origin, req)) = self.waiting.pop_front() {
            self.answer_appended(origin, req, Err(crate::store::StoreError::Unavailable(why.clone())));
        }
    }

    fn answer_appended(&mut self, origin: usize, req: u64, result: Result<u64, crate::store::StoreError>) {
        if origin == self.id {
            self.on_appended(req, result);
        } else {
            self.shared.mesh[origin].post(CoreMsg::Appended { req, result });
        }
    }

    fn on_appended(&mut self, req: u64, result: Result<u64, crate::store::StoreError>) {
        let idx = (req & 0xffff_ffff) as usize;
        let gen = (req >> 32) as u32;
        let done = match self.pending.get_mut(idx) {
            Some((g, p)) if *g == gen => {
                p.failed |= result.is_err();
                p.remaining = p.remaining.saturating_sub(1);
                p.remaining == 0
            }
            _ => false,
        };
        if done {
            self.complete(idx);
        }
    }

    /// The syncer finished an fsync: show the entries it covered to online
    /// devices and release the SENDACKs that waited for it.
    pub fn on_synced(&mut self, result: Result<u64, String>) {
        let mut woken = std::mem::take(&mut self.woken_users);
        self.store.on_synced(result, &mut woken);
        let now = self.shared.clock.mono_ms();
        for user in woken.drain(..) {
            self.push_to_online(&user, now);
        }
        self.woken_users = woken;
        let synced = self.store.synced_lsn();
        while let Some(&(lsn, origin, req)) = self.waiting.front() {
            if lsn > synced {
                break;
            }
            self.waiting.pop_front();
            self.answer_appended(origin, req, Ok(0));
        }
        self.refuse_waiting_if_failed();
    }

    fn next_gen_pending(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    fn device_mut(&mut self, user: &str, device: &str) -> Option<&mut Device> {
        self.users.get_mut(user)?.devices.iter_mut().find(|d| &*d.id == device)
    }

    /// Appends to a user homed here; pushes to their online devices when the
    /// entry is already visible (memory, or fsync policies other than always).
    fn append_local(&mut self, user: &Arc<str>, msg: NewMessage, wall: u64) -> Result<u64, crate::store::StoreError> {
        let (_, lsn) = self.store.append(user, msg, wall).inspect_err(|e| tracing::warn!(error = %e, "append failed"))?;
        if lsn <= self.store.synced_lsn() {
            let now = self.shared.clock.mono_ms();
            self.push_to_online(user, now);
        }
        Ok(lsn)
    }

    fn push_to_online(&mut self, user: &Arc<str>, now: u64) {
        let online: Vec<ConnKey> = match self.users.get(user) {
            Some(u) => u.devices.iter().filter_map(|d| d.conn).collect(),
            None => return,
        };
        for key in online {
            self.fill(key, now);
            self.kick(key);
        }
    }

    fn complete(&mut self, idx: usize) {
        let (_, p) = self.pending.remove(idx);
        let ack = if p.failed { SendAck { status: sendack::RETRY, msg_id: 0, ..p.ack } } else { p.ack };
        if p.group && !p.failed {
            // Every copy is confirmed: recovery must not complete it again.
            self.store.fanout_done(&p.user, &p.device, ack.client_msg_id);
        }
        let limit = self.shared.dedup_per_device;
        let target = match self.device_mut(&p.user, &p.device) {
            Some(d) => {
                if p.failed {
                    // A failed SEND may be retried with the same id and must be tried again.
                    d.dedup.map.remove(&ack.client_msg_id);
                    d.dedup.order.retain(|id| *id != ack.client_msg_id);
                } else {
                    d.dedup.map.insert(ack.client_msg_id, Some(ack));
                    while d.dedup.order.len() > limit {
                        if let Some(old) = d.dedup.order.pop_front() {
                            d.dedup.map.remove(&old);
                        }
                    }
                }
                d.conn
            }
            None => None,
        };
        // The answer goes to the device's current connection, which may be a
        // newer one than the connection that sent.
        if let Some(key) = target {
            self.write_sendack(key, &ack);
        }
    }

    fn write_sendack(&mut self, key: ConnKey, ack: &SendAck) {
        if let Some(c) = self.conn(key) {
            if c.session.phase() == Phase::Open {
                frame::encode_sendack(&mut c.out, ack);
            }
        }
        self.kick(key);
    }

    /// Handles one message from another core.
    pub fn on_message(&mut self, msg: CoreMsg) -> Option<Box<Adopt>> {
        match msg {
            CoreMsg::Adopt(a) => return Some(a),
            CoreMsg::Append { origin, req, user, msg } => {
                let wall = self.shared.clock.wall_ms();
                self.append_for(origin, req, &user, msg, wall);
            }
            CoreMsg::Appended { req, result } => self.on_appended(req, result),
            CoreMsg::Synced(result) => self.on_synced(result),
            CoreMsg::Shutdown => self.begin_shutdown(),
        }
        None
    }

    /// Fires due timers.
    pub fn on_tick(&mut self) {
        let now = self.shared.clock.mono_ms();
        self.store.tick(self.shared.clock.wall_ms());
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for key in expired.drain(..) {
            let Some(slot) = self.conns.get_mut(key.idx as usize) else { continue };
            if slot.gen != key.gen {
                continue;
            }
            let conn = &mut slot.conn;
            conn.timer = None;
            if conn.tls_handshaking() {
                if conn.session.next_deadline().is_some_and(|d| now >= d) {
                    // A stalled handshake: no DISCONNECT is possible before TLS is up.
                    conn.dead = true;
                    self.stats.handshake_timeouts += 1;
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
            conn.session.on_timeout(now, &shared.limits, inbox, blocked, &mut conn.out);
            if before != Phase::Closing && conn.session.phase() == Phase::Closing {
                if let Some(r) = conn.session.close_reason() {
                    if r == DisconnectReason::HandshakeTimeout {
                        self.stats.handshake_timeouts += 1;
                    }
                }
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
