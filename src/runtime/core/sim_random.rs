//! The seeded random simulation of whole cores: random clients (native frames, WebSocket, SSE + POST and long-poll) connect, send, read, ack, stall, drop and reconnect while the driver interleaves the cores' I/O, mailboxes, timers and syncs at random; the delivery and bound invariants are checked after every step.
//!
//! quinn tests endpoints against each other in virtual time and FoundationDB
//! made seeded simulation the way to find ordering bugs: a seed picks the
//! knobs (cores, store, window, output high-water mark, mailbox capacity,
//! frame size, timeouts) and every choice after them, so a failure is a seed
//! to replay, not a flake. The model on the client side is what a correct
//! device can rely on (PROTOCOL.md):
//!
//! - **Delivery.** On every connection, PUSH seqs are dense (each new one is
//!   the one after the last, starting after the CONNECT's `last_seq`);
//!   anything at or below is a retransmission and says so (REDELIVERY); a
//!   seq names the same message on every device of the user. Every SEND
//!   confirmed by SENDACK 0 is in the inbox of every recipient once (the
//!   payload carries the sender device and `client_msg_id`, so a second
//!   copy of a retried SEND is caught) and carries the SENDACK's msg_id;
//!   at the end every device of every user connects and gets everything.
//! - **Bounds**, after every step: a connection's unsent output stays under
//!   the high-water mark plus what one read and one window can add; its
//!   read buffer under one read budget; at most `inflight_window` PUSHes
//!   unacknowledged, at most `max_sends_in_flight` SENDs unanswered; the
//!   appends queued for a core never exceed its mailbox capacity and equal
//!   its reservations.
//! - **No stall.** At every checkpoint every client reads and acks; within
//!   a bounded virtual time each open connection has every message of its
//!   user's inbox, every SEND on it is answered and every CONNECT is
//!   answered.
//!
//! `World::apply` takes one [`Action`]; the random run draws them from a
//! seeded generator, and the `core_events` fuzz target decodes them from
//! the fuzzer's bytes (`crate::fuzzing::core_events`).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::sim::{Client, HttpResponse, Sim, StoreKind, DEFAULT_CAPACITY};
use crate::config::Config;
use crate::proto::error::sendack;
use crate::proto::frame::{self, Frame, Utf8Bytes, FLAG_REDELIVERY};

mod knobs;
mod web;

pub use knobs::{Knobs, Rng};

/// How a client reaches the server (WEB.md): the same frames and session
/// rules over every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Frames on the socket.
    Native,
    /// One binary message per frame after a `/v1/ws` upgrade.
    Ws,
    /// Server frames as events of a `GET /v1/sse` stream, client frames in
    /// `POST /v1/send` bodies on keep-alive HTTP connections of their own.
    Sse,
    /// `POST /v1/lp/connect`, then `POST /v1/lp` polls on keep-alive HTTP
    /// connections: client frames in their bodies, server frames in the
    /// answers. The "connection" is the session.
    LongPoll,
}

impl Via {
    pub const ALL: [Via; 4] = [Via::Native, Via::Ws, Via::Sse, Via::LongPoll];

    /// The transport named by a byte's top two bits (the fuzz target).
    pub fn from_top_bits(b: u8) -> Via {
        match Via::ALL[usize::from(b >> 6)] {
            Via::LongPoll if !long_poll_on() => Via::Sse,
            via => via,
        }
    }
}

/// Whether long-poll clients are drawn: yes unless
/// `RINGGATE_SIM_LONG_POLL=0` (to tell a long-poll failure from others).
pub fn long_poll_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RINGGATE_SIM_LONG_POLL").map_or(true, |v| v != "0"))
}

/// One step of the world.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// A device opens a new connection on `core` over `via`, CONNECT with
    /// its `last_seq`. If it has one already, the old one is replaced (the
    /// server closes it with DISCONNECT 6).
    Connect { dev: usize, core: usize, via: Via },
    /// A new SEND to user or group `to` (users first, then groups) with a
    /// payload of `len` bytes (clamped to at least the 12-byte tag).
    Send { dev: usize, to: usize, len: usize },
    /// The oldest SEND not confirmed yet, again with its id.
    Retry { dev: usize },
    /// The device reads what arrived (if it reads at all) and acks (if it acks).
    Read { dev: usize },
    Ping { dev: usize },
    /// Stops or resumes reading the socket (a slow reader fills the
    /// server's output buffer).
    ToggleRead { dev: usize },
    ToggleAck { dev: usize },
    /// The device half-closes its connection (FIN) and forgets it (SSE:
    /// the stream and its POST connections; long-poll: stops polling).
    HangUp { dev: usize },
    /// Bytes that are not a valid frame (a broken client).
    Garbage { dev: usize, byte: u8 },
    /// Runtime steps, in the order the driver chooses.
    StepIo,
    Deliver { core: usize },
    Flush,
    Sync { core: usize },
    Tick,
    /// Runs I/O and mailboxes to quiescence (time stands still).
    Run,
    /// Every client reads and acks; checks that nothing is stuck.
    Checkpoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// CONNECT written, no CONNACK yet.
    Connecting,
    Open,
    /// The server refused, closed or replaced it; the client hung up.
    Done,
}

struct Conn {
    /// The socket (SSE: the stream; long-poll: the connect request's).
    client: Client,
    via: Via,
    /// SSE and long-poll: the session's HTTP side.
    web: Option<Box<WebConn>>,
    phase: Phase,
    /// The CONNECT's last_seq.
    last_seq: u64,
    /// Highest PUSH seq received on this connection (starts at last_seq).
    highest: u64,
    acked_sent: u64,
    reading: bool,
    acking: bool,
    /// The client half-closed it; what still arrives is read and checked.
    hung: bool,
    id: u64,
}

/// The HTTP side of an SSE or long-poll session.
#[derive(Default)]
struct WebConn {
    /// From the stream's `session` event (SSE) or `X-Ringgate-Session`.
    sid: Option<String>,
    /// Keep-alive HTTP connections for POSTs (SSE) or polls (long-poll),
    /// each with the request it has unanswered: one at a time on each, so
    /// a held poll never holds frames up behind it.
    http: Vec<(Client, Option<Req>)>,
    /// Client frames not sent yet: written before the sid was known, or
    /// refused with 429, or on a connection that closed unanswered.
    backlog: Vec<u8>,
    /// The core the next HTTP connection is accepted on (they move to the
    /// session's core with their first request).
    next_core: usize,
    /// Long-poll: the server said the sid is unknown (404).
    gone: bool,
    /// Long-poll: a poll carrying frames got 429 (the session's queue is
    /// over the high-water mark: "poll it empty, then resend"), so polls
    /// go empty until one is answered with the queue.
    drain_first: bool,
    /// Long-poll: a poll's connection closed before its answer came, so
    /// frames may have been lost with it: a PUSH past the next seq is
    /// dropped unacknowledged, and the retransmission (or the replay after
    /// a reconnect) brings the missing ones first.
    lost_answer: bool,
}

struct Req {
    /// `POST /v1/lp/connect` (its answer is the CONNACK).
    connect: bool,
    body: Vec<u8>,
}

struct Pending {
    /// Users it is addressed to (a group minus the sender's user).
    to: usize,
    len: usize,
    /// The connection it was last written on: while that one is open, it
    /// must be answered by the next checkpoint.
    on: u64,
}

struct Device {
    user: usize,
    name: String,
    /// Every seq up to this was received (the next CONNECT's last_seq).
    have: u64,
    next_cmid: u64,
    /// SENDs not confirmed (no SENDACK 0 yet), by client_msg_id.
    unconfirmed: BTreeMap<u64, Pending>,
    /// The current connection last; older ones until they are seen closed.
    conns: Vec<Conn>,
}

/// What a recipient's inbox holds at one seq.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Entry {
    msg_id: u64,
    tag: (u32, u64),
}

#[derive(Default)]
struct UserLog {
    /// seq - 1 → entry, as learned from pushes (None: not seen yet).
    by_seq: Vec<Option<Entry>>,
    /// (sender device, client_msg_id) → seq: one copy per SEND.
    by_tag: HashMap<(u32, u64), u64>,
}

/// Counts of what happened, printed with the seed.
#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub events: u64,
    pub connects: u64,
    pub sends: u64,
    pub confirmed: u64,
    pub pushes: u64,
    pub redeliveries: u64,
    /// SENDACKs of any status, repeats included.
    pub sendacks: u64,
    /// PUSHes past a gap on a long-poll session that lost a poll's answer
    /// (dropped unacknowledged; WebConn::lost_answer).
    pub skipped_after_lost_answer: u64,
    pub disconnects: u64,
    pub checkpoints: u64,
    pub virtual_ms: u64,
    pub max_out: usize,
}

pub struct World {
    pub sim: Sim,
    pub knobs: Knobs,
    users: Vec<String>,
    groups: Vec<(String, Vec<usize>)>,
    devices: Vec<Device>,
    logs: Vec<UserLog>,
    /// Confirmed SENDs: tag → (msg_id, recipients target index).
    confirmed: HashMap<(u32, u64), (u64, usize)>,
    next_conn_id: u64,
    pub tally: Tally,
}

/// A violated invariant: what and where.
pub type Violation = String;

/// SENDACK frame size.
const SENDACK_LEN: usize = 4 + 1 + 8 + 1 + 8 + 8;
/// The most a WebSocket header adds to one frame (server frames, unmasked).
const WS_HEADER: usize = 10;

impl World {
    pub fn new(knobs: Knobs) -> World {
        let cores = knobs.cores;
        let users: Vec<String> = (0..knobs.users).map(|i| format!("u{i}")).collect();
        // Two groups: the first half of the users, and everyone.
        let half: Vec<usize> = (0..knobs.users.div_ceil(2)).collect();
        let all: Vec<usize> = (0..knobs.users).collect();
        let groups = vec![("g-half".to_string(), half), ("g-all".to_string(), all)];
        let members: Vec<(String, Vec<&str>)> =
            groups.iter().map(|(g, m)| (g.clone(), m.iter().map(|&u| users[u].as_str()).collect())).collect();
        let group_refs: Vec<(&str, &[&str])> = members.iter().map(|(g, m)| (g.as_str(), m.as_slice())).collect();
        let sim = Sim::new(cores, knobs.store, knobs.config(), &group_refs);
        let devices = (0..knobs.users * knobs.devices_per_user)
            .map(|i| Device {
                user: i / knobs.devices_per_user,
                name: format!("d{}", i % knobs.devices_per_user),
                have: 0,
                next_cmid: 1,
                unconfirmed: BTreeMap::new(),
                conns: Vec::new(),
            })
            .collect();
        let logs = (0..knobs.users).map(|_| UserLog::default()).collect();
        World { sim, knobs, users, groups, devices, logs, confirmed: HashMap::new(), next_conn_id: 0, tally: Tally::default() }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Targets: users, then groups.
    pub fn target_count(&self) -> usize {
        self.users.len() + self.groups.len()
    }

    /// The users a SEND from `dev` to target `to` reaches.
    fn recipients(&self, dev: usize, to: usize) -> Vec<usize> {
        if to < self.users.len() {
            vec![to]
        } else {
            let me = self.devices[dev].user;
            self.groups[to - self.users.len()].1.iter().copied().filter(|&u| u != me).collect()
        }
    }

    fn current(&mut self, dev: usize) -> Option<&mut Conn> {
        self.devices[dev].conns.last_mut().filter(|c| c.phase != Phase::Done && !c.hung)
    }

    /// The index of `dev`'s current connection.
    fn current_at(&self, dev: usize) -> Option<usize> {
        let conns = &self.devices[dev].conns;
        conns.last().filter(|c| c.phase != Phase::Done && !c.hung).map(|_| conns.len() - 1)
    }

    /// Writes `f` on connection `i` of `dev`, framed for its transport.
    fn write(&mut self, dev: usize, i: usize, f: &Frame) {
        let c = &self.devices[dev].conns[i];
        match c.via {
            Via::Native => self.sim.write(c.client, f),
            Via::Ws => self.sim.ws_write(c.client, f),
            Via::Sse | Via::LongPoll => {
                let mut b = bytes::BytesMut::new();
                f.encode(&mut b);
                self.web_send(dev, i, &b);
            }
        }
    }

    /// Applies one action, then checks the bounds.
    pub fn apply(&mut self, a: Action) -> Result<(), Violation> {
        self.tally.events += 1;
        match a {
            Action::Connect { dev, core, via } => self.connect(dev % self.devices.len(), core % self.sim.cores.len(), via),
            Action::Send { dev, to, len } => self.send(dev % self.devices.len(), to % self.target_count(), len),
            Action::Retry { dev } => self.retry(dev % self.devices.len()),
            Action::Read { dev } => self.read(dev % self.devices.len())?,
            Action::Ping { dev } => {
                let dev = dev % self.devices.len();
                if let Some(i) = self.current_at(dev).filter(|&i| self.devices[dev].conns[i].phase == Phase::Open) {
                    self.write(dev, i, &Frame::Ping { nonce: 7 });
                }
            }
            Action::ToggleRead { dev } => {
                let dev = dev % self.devices.len();
                if let Some(c) = self.current(dev) {
                    c.reading = !c.reading;
                    let (client, reading, via) = (c.client, c.reading, c.via);
                    // A reader that stops takes (almost) nothing more from the
                    // socket (long-poll: it stops polling).
                    if via != Via::LongPoll {
                        self.sim.set_capacity(client, if reading { DEFAULT_CAPACITY } else { 64 });
                    }
                }
            }
            Action::ToggleAck { dev } => {
                let dev = dev % self.devices.len();
                if let Some(c) = self.current(dev) {
                    c.acking = !c.acking;
                }
            }
            Action::HangUp { dev } => {
                let dev = dev % self.devices.len();
                if let Some(i) = self.current_at(dev) {
                    let c = &mut self.devices[dev].conns[i];
                    c.hung = true;
                    Self::hang_up_conn(&mut self.sim, c);
                }
            }
            Action::Garbage { dev, byte } => {
                let dev = dev % self.devices.len();
                if let Some(i) = self.current_at(dev) {
                    let c = &self.devices[dev].conns[i];
                    let (client, via) = (c.client, c.via);
                    // Length 2, type `byte`: an unknown type or a truncated
                    // frame, a protocol error either way (DISCONNECT 1).
                    let bad = [0, 0, 0, 2, byte | 0x80, 0];
                    match via {
                        // Not one frame per message: DISCONNECT 1, close 4001.
                        Via::Ws => self.sim.ws_write_raw_message(client, &bad[..5]),
                        Via::Native => self.sim.write_raw(client, &bad),
                        // A POST or poll body that breaks the protocol: 400,
                        // DISCONNECT 1 on the stream or the next poll (only
                        // once the sid is known: before, it is not sent yet).
                        Via::Sse | Via::LongPoll => {
                            if self.devices[dev].conns[i].web.as_ref().is_some_and(|w| w.sid.is_some() && w.backlog.is_empty()) {
                                self.web_send(dev, i, &bad);
                            }
                        }
                    }
                }
            }
            Action::StepIo => {
                self.sim.step_io();
            }
            Action::Deliver { core } => {
                let core = core % self.sim.cores.len();
                self.sim.deliver_one(core);
            }
            Action::Flush => {
                self.sim.flush_dirty();
            }
            Action::Sync { core } => {
                let core = core % self.sim.cores.len();
                self.sim.sync(core);
            }
            Action::Tick => {
                self.sim.tick();
                self.tally.virtual_ms += super::TICK_MS;
            }
            Action::Run => self.sim.run(),
            Action::Checkpoint => self.checkpoint()?,
        }
        self.check_bounds()
    }

    /// The client closes every socket of `c` (FIN).
    fn hang_up_conn(sim: &mut Sim, c: &Conn) {
        if c.via != Via::LongPoll {
            sim.hang_up(c.client);
        }
        for (h, _) in c.web.iter().flat_map(|w| w.http.iter()) {
            sim.hang_up(*h);
        }
    }

    /// The server is done with every socket of `c`.
    fn all_closed(sim: &Sim, c: &Conn) -> bool {
        (c.via == Via::LongPoll || sim.closed(c.client)) && c.web.iter().flat_map(|w| w.http.iter()).all(|(h, _)| sim.closed(*h))
    }

    fn forget_conn(sim: &mut Sim, c: &Conn) {
        sim.forget(c.client);
        for (h, _) in c.web.iter().flat_map(|w| w.http.iter()) {
            sim.forget(*h);
        }
    }

    fn connect(&mut self, dev: usize, core: usize, via: Via) {
        // A device keeps at most two connections (the new one and the one
        // it replaces): connections it is done with are dropped unread.
        if self.devices[dev].conns.len() >= 2 {
            let sim = &mut self.sim;
            self.devices[dev].conns.retain(|c| {
                let drop = c.phase == Phase::Done || c.hung;
                if drop {
                    Self::hang_up_conn(sim, c);
                    Self::forget_conn(sim, c);
                }
                !drop
            });
            if self.devices[dev].conns.len() >= 2 {
                return;
            }
        }
        let Ok(client) = self.sim.try_connect_at(core) else { return };
        self.tally.connects += 1;
        let d = &self.devices[dev];
        let f = self.sim.connect_frame(&self.users[d.user], &d.name, 0, d.have);
        let mut web = None;
        match via {
            Via::Native => self.sim.write(client, &f),
            Via::Ws => {
                self.sim.ws_upgrade(client);
                self.sim.ws_write(client, &f);
            }
            Via::Sse => {
                self.sim.sse_open(client, &f);
                web = Some(Box::new(WebConn { next_core: core + 1, ..WebConn::default() }));
            }
            Via::LongPoll => {
                let mut body = bytes::BytesMut::new();
                f.encode(&mut body);
                self.sim.http_post(client, "/v1/lp/connect", &body);
                let req = Req { connect: true, body: body.to_vec() };
                web = Some(Box::new(WebConn { next_core: core + 1, http: vec![(client, Some(req))], ..WebConn::default() }));
            }
        }
        let (have, id) = (self.devices[dev].have, self.next_conn_id);
        self.next_conn_id += 1;
        self.devices[dev].conns.push(Conn {
            client,
            via,
            web,
            phase: Phase::Connecting,
            last_seq: have,
            highest: have,
            acked_sent: have,
            reading: true,
            acking: true,
            hung: false,
            id,
        });
    }

    fn payload(dev: usize, cmid: u64, len: usize) -> Bytes {
        let mut p = Vec::with_capacity(len.max(12));
        p.extend_from_slice(&(dev as u32).to_be_bytes());
        p.extend_from_slice(&cmid.to_be_bytes());
        p.extend((12..len).map(|i| (cmid as u8).wrapping_add(i as u8) ^ dev as u8));
        Bytes::from(p)
    }

    fn send_frame(&self, dev: usize, cmid: u64, to: usize, len: usize) -> Frame {
        let (kind, target) = if to < self.users.len() { (1, self.users[to].as_str()) } else { (2, self.groups[to - self.users.len()].0.as_str()) };
        Frame::Send(frame::Send { client_msg_id: cmid, target_kind: kind, target: Utf8Bytes::from(target), payload: Self::payload(dev, cmid, len) })
    }

    fn send(&mut self, dev: usize, to: usize, len: usize) {
        let Some(i) = self.current_at(dev).filter(|&i| self.devices[dev].conns[i].phase == Phase::Open) else { return };
        let on = self.devices[dev].conns[i].id;
        // Dedup remembers the last 1024 ids per device: an id older than
        // that may legitimately be stored twice, so it is not retried.
        if self.devices[dev].unconfirmed.len() >= 64 {
            return;
        }
        let len = len.max(12);
        let cmid = self.devices[dev].next_cmid;
        self.devices[dev].next_cmid += 1;
        let f = self.send_frame(dev, cmid, to, len);
        self.write(dev, i, &f);
        self.devices[dev].unconfirmed.insert(cmid, Pending { to, len, on });
        self.tally.sends += 1;
    }

    fn retry(&mut self, dev: usize) {
        let Some(i) = self.current_at(dev).filter(|&i| self.devices[dev].conns[i].phase == Phase::Open) else { return };
        let on = self.devices[dev].conns[i].id;
        let Some((&cmid, p)) = self.devices[dev].unconfirmed.iter_mut().next() else { return };
        p.on = on;
        let (to, len) = (p.to, p.len);
        let f = self.send_frame(dev, cmid, to, len);
        self.write(dev, i, &f);
    }

    /// Reads every connection of `dev` that reads, checks what came, acks.
    fn read(&mut self, dev: usize) -> Result<(), Violation> {
        for i in 0..self.devices[dev].conns.len() {
            let c = &self.devices[dev].conns[i];
            if !c.reading && c.phase != Phase::Done && !c.hung {
                continue;
            }
            let (client, via) = (c.client, c.via);
            let (frames, ended) = match via {
                Via::Native => (self.sim.frames(client), false),
                Via::Ws => {
                    let (status, frames, close) = self.sim.ws_frames(client);
                    if let Some(s) = status {
                        if !s.starts_with("HTTP/1.1 101") {
                            return Err(format!("device {dev}: upgrade answered {s:?}"));
                        }
                    }
                    (frames, close.is_some())
                }
                Via::Sse => self.sse_read(dev, i)?,
                Via::LongPoll => self.lp_read(dev, i)?,
            };
            for f in frames {
                self.on_frame(dev, i, f)?;
            }
            let c = &mut self.devices[dev].conns[i];
            let lost = match via {
                // A long-poll session has no socket: it ended when a poll
                // answered 404 (its final DISCONNECT was not polled in time).
                Via::LongPoll => c.web.as_ref().is_some_and(|w| w.gone),
                _ => self.sim.server_fin(client) || self.sim.closed(client),
            };
            if ended || lost {
                c.phase = Phase::Done;
            }
            if c.phase == Phase::Done && !c.hung {
                // A client closes its sockets once the server said goodbye.
                c.hung = true;
                Self::hang_up_conn(&mut self.sim, c);
            }
            if c.phase == Phase::Open && !c.hung && c.acking && c.highest > c.acked_sent {
                c.acked_sent = c.highest;
                let seq = c.highest;
                self.write(dev, i, &Frame::PushAck { seq });
            }
            let c = &self.devices[dev].conns[i];
            if c.phase == Phase::Open && !c.hung && c.web.as_ref().is_some_and(|w| !w.backlog.is_empty()) {
                // Frames held back (no sid yet, 429, a lost request) go now.
                self.web_send(dev, i, &[]);
            }
            let c = &self.devices[dev].conns[i];
            if c.via == Via::LongPoll && c.phase == Phase::Open && !c.hung {
                // A polling client keeps one poll open.
                if c.web.as_ref().is_some_and(|w| w.sid.is_some() && w.http.iter().all(|(_, r)| r.is_none())) {
                    self.web_send(dev, i, &[]);
                }
            }
        }
        // Closed connections the server is done with are forgotten.
        let sim = &mut self.sim;
        self.devices[dev].conns.retain(|c| {
            let gone = (c.phase == Phase::Done || c.hung) && Self::all_closed(sim, c);
            if gone {
                Self::forget_conn(sim, c);
            }
            !gone
        });
        Ok(())
    }

    fn on_frame(&mut self, dev: usize, i: usize, f: Frame) -> Result<(), Violation> {
        let user = self.devices[dev].user;
        match f {
            Frame::ConnAck(a) => {
                let c = &mut self.devices[dev].conns[i];
                if c.phase != Phase::Connecting {
                    return Err(format!("device {dev}: CONNACK on a connection in {:?}", c.phase));
                }
                if a.status != 0 {
                    c.phase = Phase::Done;
                    return Ok(());
                }
                c.phase = Phase::Open;
                if a.oldest_seq > c.last_seq + 1 {
                    return Err(format!("device {dev}: oldest_seq {} > last_seq {} + 1: messages lost", a.oldest_seq, c.last_seq));
                }
                if a.head_seq < c.last_seq {
                    return Err(format!("device {dev}: head_seq {} below the device's last_seq {}", a.head_seq, c.last_seq));
                }
            }
            Frame::Push(p) => {
                self.tally.pushes += 1;
                let c = &mut self.devices[dev].conns[i];
                if c.phase != Phase::Open {
                    return Err(format!("device {dev}: PUSH seq {} before CONNACK", p.seq));
                }
                if p.seq <= c.highest {
                    if p.flags & FLAG_REDELIVERY == 0 {
                        return Err(format!("device {dev}: seq {} again (after {}) without REDELIVERY", p.seq, c.highest));
                    }
                    self.tally.redeliveries += 1;
                } else if p.seq != c.highest + 1 && c.web.as_ref().is_some_and(|w| w.lost_answer) {
                    self.tally.skipped_after_lost_answer += 1;
                    return Ok(());
                } else if p.seq != c.highest + 1 {
                    return Err(format!("device {dev}: seq {} after {}: a gap ({:?}, connection {})", p.seq, c.highest, c.via, i + 1));
                } else {
                    c.highest = p.seq;
                }
                let highest = c.highest;
                let d = &mut self.devices[dev];
                d.have = d.have.max(highest);
                if p.payload.len() < 12 {
                    return Err(format!("device {dev}: seq {} with a {}-byte payload", p.seq, p.payload.len()));
                }
                let from_dev = u32::from_be_bytes(p.payload[..4].try_into().expect("4")) as usize;
                let cmid = u64::from_be_bytes(p.payload[4..12].try_into().expect("8"));
                if from_dev >= self.devices.len() || Self::payload(from_dev, cmid, p.payload.len()) != p.payload {
                    return Err(format!("device {dev}: seq {} carries a corrupted payload", p.seq));
                }
                let sender = self.devices[from_dev].user;
                if p.from.as_str() != self.users[sender] {
                    return Err(format!("device {dev}: seq {} from {:?}, sent by {}", p.seq, p.from.as_str(), self.users[sender]));
                }
                let e = Entry { msg_id: p.msg_id, tag: (from_dev as u32, cmid) };
                let log = &mut self.logs[user];
                let at = (p.seq - 1) as usize;
                if log.by_seq.len() <= at {
                    log.by_seq.resize(at + 1, None);
                }
                match log.by_seq[at] {
                    None => {
                        if let Some(other) = log.by_tag.insert(e.tag, p.seq) {
                            if other != p.seq {
                                return Err(format!("user {user}: SEND {:?} stored twice, at seq {other} and {} (dedup)", e.tag, p.seq));
                            }
                        }
                        log.by_seq[at] = Some(e);
                    }
                    Some(old) if old != e => {
                        return Err(format!("user {user}: seq {} is {old:?} on one device and {e:?} on device {dev}", p.seq));
                    }
                    Some(_) => {}
                }
                if let Some(&(msg_id, _)) = self.confirmed.get(&e.tag) {
                    if msg_id != p.msg_id {
                        return Err(format!("device {dev}: seq {} msg_id {} but SENDACK said {msg_id}", p.seq, p.msg_id));
                    }
                }
            }
            Frame::SendAck(a) => {
                self.tally.sendacks += 1;
                let tag = (dev as u32, a.client_msg_id);
                if a.status == sendack::STORED {
                    if let Some(&(m, _)) = self.confirmed.get(&tag) {
                        if m != a.msg_id {
                            return Err(format!("device {dev}: SENDACK for {} again with msg_id {} (was {m})", a.client_msg_id, a.msg_id));
                        }
                        return Ok(());
                    }
                    let Some(p) = self.devices[dev].unconfirmed.remove(&a.client_msg_id) else {
                        return Err(format!("device {dev}: SENDACK 0 for {}, which it never sent or gave up", a.client_msg_id));
                    };
                    self.tally.confirmed += 1;
                    self.confirmed.insert(tag, (a.msg_id, p.to));
                    // A push seen before the SENDACK must carry its msg_id.
                    for u in self.recipients(dev, p.to) {
                        if let Some(&seq) = self.logs[u].by_tag.get(&tag) {
                            let e = self.logs[u].by_seq[(seq - 1) as usize];
                            if e.map(|e| e.msg_id) != Some(a.msg_id) {
                                return Err(format!("user {u}: seq {seq} is {e:?}, SENDACK said msg_id {}", a.msg_id));
                            }
                        }
                    }
                } else if matches!(a.status, sendack::TOO_LARGE | sendack::NO_SUCH_TARGET | sendack::FORBIDDEN) {
                    // Final answers: nothing stored, no retry.
                    self.devices[dev].unconfirmed.remove(&a.client_msg_id);
                } else if let Some(p) = self.devices[dev].unconfirmed.get_mut(&a.client_msg_id) {
                    // 3 and 5: answered for now; the device may retry.
                    p.on = u64::MAX;
                }
            }
            Frame::Pong { .. } => {}
            Frame::Disconnect { .. } => {
                self.tally.disconnects += 1;
                self.devices[dev].conns[i].phase = Phase::Done;
            }
            other => return Err(format!("device {dev}: server sent {other:?}")),
        }
        Ok(())
    }

    /// What a connection's unsent output may reach: the high-water mark
    /// (above it the core stops reading), plus the answers to one read's
    /// worth of frames (a PONG is the size of its PING), one window of
    /// PUSHes, every SEND in flight answered, a DISCONNECT and, on a
    /// WebSocket, a header per frame.
    fn out_bound(&self) -> usize {
        let k = &self.knobs;
        let push = k.max_frame as usize + 4 + WS_HEADER;
        k.output_high_water_bytes as usize
            + 2 * (crate::runtime::conn::READ_BUDGET + crate::runtime::conn::READ_CHUNK)
            + k.inflight_window as usize * push
            + k.max_sends_in_flight as usize * (SENDACK_LEN + WS_HEADER)
            + 1024
    }

    /// The bounds that must hold after every step.
    pub fn check_bounds(&mut self) -> Result<(), Violation> {
        let out_bound = self.out_bound();
        let rbuf_bound = crate::runtime::conn::READ_BUDGET + 2 * crate::runtime::conn::READ_CHUNK + self.knobs.max_frame as usize + 64;
        let window = u64::from(self.knobs.inflight_window);
        for (id, core) in self.sim.cores.iter().enumerate() {
            for (_, slot) in core.conns.iter() {
                let c = &slot.conn;
                let out = c.unsent_bytes();
                self.tally.max_out = self.tally.max_out.max(out);
                if out > out_bound {
                    return Err(format!("core {id}: {out} bytes of output buffered, bound {out_bound}"));
                }
                let input = c.rbuf.len() + c.framing.buffered_input();
                if input > rbuf_bound {
                    return Err(format!("core {id}: {input} bytes of input buffered, bound {rbuf_bound}"));
                }
                if c.session.inflight() > window {
                    return Err(format!("core {id}: {} PUSHes unacknowledged, window {window}", c.session.inflight()));
                }
                if c.sends_in_flight > self.knobs.max_sends_in_flight {
                    return Err(format!("core {id}: {} SENDs in flight, limit {}", c.sends_in_flight, self.knobs.max_sends_in_flight));
                }
            }
        }
        let cap = self.knobs.mailbox_capacity as usize;
        for core in 0..self.sim.cores.len() {
            let appends = self.sim.queued_appends(core);
            let reserved = self.sim.mesh[core].queued_work();
            if appends > cap || reserved > cap {
                return Err(format!("core {core}: {appends} appends queued ({reserved} reserved), mailbox capacity {cap}"));
            }
            if appends != reserved {
                return Err(format!("core {core}: {appends} appends queued but {reserved} reserved"));
            }
        }
        Ok(())
    }

    /// Bytes web clients hold back (no sid yet, 429, a lost request).
    fn web_backlog(&self) -> usize {
        self.devices.iter().flat_map(|d| d.conns.iter()).filter_map(|c| c.web.as_ref()).map(|w| w.backlog.len()).sum()
    }

    /// Every client reads and acks, the cores run, syncs complete and time
    /// moves a little: then nothing may be left waiting.
    pub fn checkpoint(&mut self) -> Result<(), Violation> {
        self.tally.checkpoints += 1;
        for d in self.devices.iter_mut() {
            for c in d.conns.iter_mut() {
                c.reading = true;
                c.acking = true;
                self.sim.set_capacity(c.client, DEFAULT_CAPACITY);
            }
        }
        // Bounded virtual time: what a reading, acking client is owed must
        // arrive without waiting for a timer, so a few ticks are plenty.
        let mut quiet = 0;
        for _ in 0..400 {
            self.sim.run();
            let mut moved = false;
            for core in 0..self.sim.cores.len() {
                while self.sim.sync(core) {
                    moved = true;
                    self.sim.run();
                }
            }
            // Progress is also any SENDACK (a retried SEND answered from
            // the dedup table confirms nothing new) and a web client's
            // held-back frames going out or coming back (429): a backlog
            // drains over several rounds.
            let before = (self.tally.pushes, self.tally.confirmed, self.tally.disconnects, self.tally.sendacks, self.web_backlog());
            for dev in 0..self.devices.len() {
                self.read(dev)?;
            }
            moved |= before != (self.tally.pushes, self.tally.confirmed, self.tally.disconnects, self.tally.sendacks, self.web_backlog());
            self.check_bounds()?;
            if moved {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet > 3 {
                break;
            }
            self.sim.tick();
            self.tally.virtual_ms += super::TICK_MS;
        }
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            let Some(c) = d.conns.last().filter(|c| !c.hung) else { continue };
            match c.phase {
                Phase::Connecting => {
                    return Err(format!("device {dev}: no CONNACK after a checkpoint"));
                }
                Phase::Open => {
                    let head = self.sim.head(&self.users[d.user]);
                    if c.highest != head {
                        return Err(format!(
                            "device {dev}: has seq {} of {head} after a checkpoint (stall; {:?}, backlog {:?}, requests {:?})",
                            c.highest,
                            c.via,
                            c.web.as_ref().map(|w| w.backlog.len()),
                            c.web.as_ref().map(|w| w.http.iter().filter(|(_, r)| r.is_some()).map(|(h, r)| (self.sim.describe(*h), r.as_ref().map(|r| r.body.len()))).collect::<Vec<_>>())
                        ));
                    }
                    if let Some((cmid, _)) = d.unconfirmed.iter().find(|(_, p)| p.on == c.id) {
                        return Err(format!("device {dev}: SEND {cmid} unanswered after a checkpoint (stall)"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The end of a run: every device connects, reads and acks; then every
    /// confirmed message must be at every device of every recipient.
    pub fn finish(&mut self) -> Result<(), Violation> {
        for _ in 0..4 {
            for dev in 0..self.devices.len() {
                if let Some(c) = self.current(dev) {
                    if c.phase == Phase::Open {
                        continue;
                    }
                }
                let core = dev % self.sim.cores.len();
                let via = match Via::ALL[dev % Via::ALL.len()] {
                    Via::LongPoll if !long_poll_on() => Via::Sse,
                    via => via,
                };
                self.connect(dev, core, via);
            }
            self.checkpoint()?;
        }
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            let head = self.sim.head(&self.users[d.user]);
            if d.have != head {
                let conns: Vec<(Phase, bool, u64)> = d.conns.iter().map(|c| (c.phase, c.hung, c.highest)).collect();
                return Err(format!("device {dev}: has {} of {head} at the end; connections {conns:?}", d.have));
            }
        }
        for (tag, &(msg_id, to)) in &self.confirmed {
            for u in self.recipients(tag.0 as usize, to) {
                let Some(&seq) = self.logs[u].by_tag.get(tag) else {
                    return Err(format!("user {u}: confirmed SEND {tag:?} (msg_id {msg_id}) never delivered"));
                };
                if self.logs[u].by_seq[(seq - 1) as usize].map(|e| e.msg_id) != Some(msg_id) {
                    return Err(format!("user {u}: confirmed SEND {tag:?} at seq {seq} with another msg_id"));
                }
            }
        }
        for (u, log) in self.logs.iter().enumerate() {
            if let Some(gap) = log.by_seq.iter().position(Option::is_none) {
                return Err(format!("user {u}: seq {} never delivered to any device", gap + 1));
            }
        }
        Ok(())
    }

    /// A random action, weighted toward client traffic and runtime steps.
    pub fn random_action(&self, rng: &mut Rng) -> Action {
        let dev = rng.below(self.devices.len() as u64) as usize;
        let core = rng.below(self.sim.cores.len() as u64) as usize;
        match rng.below(1000) {
            0..=39 => {
                // Native a third of the time; the rest over the web
                // transports.
                let via = match rng.below(12) {
                    0..=3 => Via::Native,
                    4..=6 => Via::Ws,
                    7..=9 => Via::Sse,
                    _ if long_poll_on() => Via::LongPoll,
                    _ => Via::Sse,
                };
                Action::Connect { dev, core, via }
            }
            40..=219 => {
                let max = self.knobs.max_payload_bytes as usize;
                let len = match rng.below(10) {
                    0 => max,
                    1 => max + 1 + rng.below(16) as usize,
                    2..=4 => rng.below(max as u64 + 1) as usize,
                    _ => 12 + rng.below(48) as usize,
                };
                Action::Send { dev, to: rng.below(self.target_count() as u64) as usize, len }
            }
            220..=239 => Action::Retry { dev },
            240..=469 => Action::Read { dev },
            470..=499 => Action::Ping { dev },
            500..=519 => Action::ToggleRead { dev },
            520..=529 => Action::ToggleAck { dev },
            530..=544 => Action::HangUp { dev },
            545..=547 => Action::Garbage { dev, byte: rng.next_u64() as u8 },
            548..=699 => Action::StepIo,
            700..=819 => Action::Deliver { core },
            820..=849 => Action::Flush,
            850..=899 => Action::Sync { core },
            900..=989 => Action::Tick,
            _ => Action::Run,
        }
    }
}

/// One seeded run of `events` random actions (a checkpoint every 2,000),
/// then the final delivery check.
pub fn run_seed(seed: u64, events: u64) -> Result<Tally, (Violation, Tally)> {
    let mut rng = Rng::new(seed);
    let knobs = Knobs::random(&mut rng);
    let mut w = World::new(knobs);
    let mut n = 0;
    while n < events {
        let a = if n % 2000 == 1999 { Action::Checkpoint } else { w.random_action(&mut rng) };
        n += 1;
        if let Err(e) = w.apply(a) {
            return Err((format!("event {n} ({a:?}): {e}"), w.tally.clone()));
        }
    }
    w.finish().map_err(|e| (format!("at the end: {e}"), w.tally.clone()))?;
    Ok(w.tally.clone())
}

#[cfg(test)]
mod tests;
