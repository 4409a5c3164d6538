//! An in-process driver for whole cores: N `Core`s over one mesh, simulated pipes instead of sockets, a virtual clock instead of time, syncs that complete when the test says; no threads, sockets or sleeps.
//!
//! This is quinn's `Pair` one level up: `proto/session_tests.rs` drives one
//! session; this drives the cores above the sessions (routing, dedup,
//! fsync-gated SENDACKs, migration, replacement, timers) through the same
//! entry points the runtime uses, and nothing else:
//!
//! - a connection is a pipe of the simulated network ([`net`], which lives
//!   here: the runtime knows only the `Transport` interface for reads and
//!   the transmits it hands out for writes, and [`SimNet`] is this
//!   driver's side of both, as `transport::Kernel` is the worker's); the
//!   driver does what a connection task does in `runtime/worker.rs`
//!   (`drive`/`conn_task`): when the pipe is ready for the interest
//!   `Core::wants_write` names, or the core woke the connection, it calls
//!   `Core::before_io` and `Core::on_io` with its transport, performs the
//!   transmits after each, and acts on the outcome (close the socket and
//!   `remove`, or post the `Adopt` to the home core); after every other
//!   call into a core it performs that core's transmits too ([`transmit`]);
//! - mailboxes are the real `Mesh`; the test decides when and in which
//!   order each core takes its messages (`deliver`, `deliver_one`), as the
//!   mailbox task would, adopting moved connections like `adopt_conn`;
//! - time is a [`VirtualClock`]; `advance` moves it one `TICK_MS` at a
//!   time and calls `Core::on_tick` on every core, as the ticker does;
//! - the store is the memory store, or the durable store on the simulated
//!   disk with its syncs deferred: `sync(core)` runs them on the disk (an
//!   injected fsync failure fails them) and posts the result to the core's
//!   mailbox as the syncer thread would.
//!
//! Plaintext only (TLS off): the frames the test writes and reads are the
//! wire bytes.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Waker;

use bytes::BytesMut;

use super::{Clock, ConnKey, Core, Outcome, Shared, Tx, VirtualClock, TICK_MS};
use crate::auth::{ClaimRules, JwtKey};
use crate::config::Config;
use crate::proto::frame::{self, ConnAck, Connect, Frame, Utf8Bytes};
use crate::runtime::mesh::{home_core, CoreMsg, Mailbox, Mesh};
use crate::runtime::transport::{Sock, Transport};
use crate::store::durable::{DurableStore, LogSettings};
use crate::store::memory::MemoryStore;
use crate::store::sim_disk::SimDisk;
use crate::store::InboxStore;

/// Wall clock at the start of every simulation (late 2027).
pub const WALL_START_MS: u64 = 1_800_000_000_000;
const SECRET: &[u8] = b"simulation secret";
/// What a simulated socket accepts before a write would block, by default.
pub const DEFAULT_CAPACITY: usize = 1 << 20;
/// `run` gives up (a livelock in the core or the driver) after this many passes.
const MAX_PASSES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    /// The durable log on a simulated disk, fsync per `cfg.store.fsync`.
    Durable,
}

/// A client of the simulation (one TCP connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client(usize);

struct ClientState {
    pipe: Sock,
    /// Where its connection lives now: (core, key); None while it travels
    /// in an `Adopt` and after the server closed it.
    at: Option<(usize, ConnKey)>,
    /// Server bytes taken from the pipe and not yet decoded.
    rx: BytesMut,
    /// An SSE stream's state past its response head (`sse_events`).
    sse: Option<Box<SseRx>>,
    /// Server bytes ever moved into `rx` (the offset of `rx`'s end).
    taken: u64,
    /// The interest its task waits with since its last step (`drive` reads
    /// `wants_write` once after `on_io` and waits on that readiness until
    /// it fires or the core wakes the task): a change of interest the core
    /// does not wake the task for stays unseen, as in the worker. None
    /// before the task's first step here.
    parked_write: Option<bool>,
}

/// What an SSE client has decoded of its stream so far.
#[derive(Default)]
struct SseRx {
    /// The event text un-chunked and not yet split into events.
    text: String,
    /// The last chunk came.
    ended: bool,
}

/// One whole HTTP response (`http_responses`).
#[derive(Debug)]
pub struct HttpResponse {
    /// When the server wrote it (the network's write counter): answers on
    /// different connections are ordered by it, as a client sees them arrive.
    pub written_at: u64,
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One SSE event (`sse_events`): its `event:`, `data:` and `id:` fields.
#[derive(Debug, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

pub struct Sim {
    pub cores: Vec<Core>,
    pub mesh: Mesh,
    pub clock: Arc<VirtualClock>,
    pub disk: SimDisk,
    pub cfg: Config,
    jwt: JwtKey,
    clients: Vec<ClientState>,
    /// Messages taken from a core's mailbox and not yet handled.
    queued: Vec<VecDeque<CoreMsg>>,
}

/// Where the route signing key of every simulation on this thread lives:
/// made once (an Ed25519 key and a file per `Sim` would dominate a fuzz
/// target that builds one per input), removed when the thread ends (test
/// threads end with their test; a fuzzing process's main thread never
/// runs its destructors, which leaves one small directory per process).
fn route_key_dir() -> std::path::PathBuf {
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    // One per thread: tests run in parallel threads, and two creating the
    // same key file at once would race (AlreadyExists).
    thread_local! {
        static DIR: Dir = {
            let dir = std::env::temp_dir().join(format!("ringgate-sim-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""));
            std::fs::create_dir_all(&dir).expect("simulation temp dir");
            Dir(dir)
        };
    }
    DIR.with(|d| d.0.clone())
}

impl Sim {
    /// `n` cores with `cfg` (TLS is turned off) and groups `groups`.
    pub fn new(n: usize, store: StoreKind, cfg: Config, groups: &[(&str, &[&str])]) -> Sim {
        net::reset();
        Sim::build(n, store, cfg, groups, VirtualClock::new(1_000, WALL_START_MS), None)
    }

    /// One node of a fleet (`fleet::sim`): `n` cores on their engine
    /// mirrors, `fleet`'s requests left for the caller to answer, time
    /// from `clock` (shared by every node; the caller advances it and
    /// ticks the cores). Pipes are not reset: the nodes share the network.
    pub fn fleet_node(n: usize, cfg: Config, groups: &[(&str, &[&str])], clock: Arc<VirtualClock>, fleet: Arc<crate::fleet::Fleet>) -> Sim {
        Sim::build(n, StoreKind::Memory, cfg, groups, clock, Some(fleet))
    }

    fn build(
        n: usize,
        store: StoreKind,
        mut cfg: Config,
        groups: &[(&str, &[&str])],
        clock: Arc<VirtualClock>,
        fleet: Option<Arc<crate::fleet::Fleet>>,
    ) -> Sim {
        cfg.tls.enabled = false;
        let route_key = crate::route::load_or_create_key(&cfg.route, &route_key_dir()).expect("route key");
        let gate = Arc::new(crate::runtime::gate_http::Gate::new(
            &cfg,
            crate::route::RouteService::new(cfg.route.clone(), route_key, "127.0.0.1:7443".parse().expect("addr"), false, 1_000),
        ));
        let mesh: Mesh =
            (0..n).map(|_| Mailbox::with_capacity(cfg.limits.mailbox_capacity as usize)).collect::<Vec<_>>().into();
        let metrics = Arc::new(crate::metrics::Metrics::new("tcp"));
        metrics.set_cores(n);
        let shared = Arc::new(Shared {
            limits: crate::runtime::session_limits(&cfg),
            live: Arc::new(crate::runtime::reload::Live {
                jwt: crate::auth::TokenKeys::from_secret(SECRET, ClaimRules::from_config(&cfg.auth)),
                tls: None,
                limits_cfg: cfg.limits.clone(),
                max_connections: match cfg.limits.max_connections {
                    0 => 10_000,
                    m => m,
                },
                gate,
                applied: Default::default(),
            }),
            groups: groups
                .iter()
                .map(|(g, m)| (g.to_string(), m.iter().map(|u| Arc::from(*u)).collect::<Vec<Arc<str>>>()))
                .collect(),
            mesh: mesh.clone(),
            dedup_per_device: cfg.session.dedup_per_device,
            dedup_pack_after_ms: cfg.session.dedup_pack_after_ms,
            sockopts: crate::net::sockopt::SockOpts::from_config(&cfg.server),
            clock: Clock::virtual_from(clock.clone()),
            open_conns: AtomicU64::new(0),
            metrics,
            ledger: crate::runtime::ledger::LedgerLimits {
                retention_ms: cfg.admin.ledger_retention_s.saturating_mul(1000),
                max_entries: cfg.admin.ledger_max_entries,
            },
            mutes: HashMap::new(),
            fleet: fleet.clone(),
        });
        let disk = SimDisk::new(7);
        let settings = LogSettings {
            policy: cfg.store.fsync,
            fsync_interval_ms: cfg.store.fsync_interval_ms,
            segment_max_bytes: cfg.store.segment_max_bytes,
            retention: crate::runtime::retention(&cfg),
        };
        let cores = (0..n)
            .map(|id| {
                let st: Box<dyn InboxStore + Send> = match store {
                    _ if fleet.is_some() => Box::new(crate::fleet::mirror::FleetStore::new(cfg.store.inbox_max_messages)),
                    StoreKind::Memory => Box::new(MemoryStore::with_budget(crate::runtime::retention(&cfg), 1 << 30)),
                    StoreKind::Durable => {
                        let disk_ref: crate::store::disk::DiskRef = Arc::new(disk.clone());
                        let mut d = DurableStore::with_disk(disk_ref, id, Path::new("/sim/log"), settings, HashMap::new(), HashMap::new(), 1)
                            .expect("durable store on the simulated disk");
                        // Syncs wait for `Sim::sync`.
                        d.defer_io();
                        Box::new(d)
                    }
                };
                Core::new(id, shared.clone(), st, Vec::new())
            })
            .collect();
        Sim {
            cores,
            mesh,
            clock,
            disk,
            jwt: JwtKey::new(SECRET),
            clients: Vec::new(),
            queued: (0..n).map(|_| VecDeque::new()).collect(),
            cfg,
        }
    }

    /// A user name (from `prefix`) whose home is `core`.
    pub fn user_homed_at(&self, core: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|u| home_core(u, self.cores.len()) == core)
            .expect("some name hashes to every core")
    }

    /// A valid token for `user` (one hour, from the virtual wall clock).
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, 3600)
    }

    /// A token for `user` that expires `ttl_s` after the virtual wall clock's now.
    pub fn token_for(&self, user: &str, ttl_s: u64) -> String {
        self.jwt.mint(user, self.clock_wall_ms() / 1000, ttl_s)
    }

    pub fn clock_wall_ms(&self) -> u64 {
        self.cores[0].shared.clock.wall_ms()
    }

    // ----- clients -----------------------------------------------------

    /// A new TCP connection, accepted on `core` (as SO_REUSEPORT would pick).
    pub fn connect_at(&mut self, core: usize) -> Client {
        self.try_connect_at(core).unwrap_or_else(|e| panic!("accept refused: {e:?}"))
    }

    /// [`Sim::connect_at`], or why the core refused the connection (its
    /// pipe is then closed, as the accept loop closes the socket).
    pub fn try_connect_at(&mut self, core: usize) -> Result<Client, super::AcceptError> {
        let pipe = net::open(DEFAULT_CAPACITY);
        match self.cores[core].accept(pipe, IpAddr::V4(Ipv4Addr::LOCALHOST)) {
            Ok(key) => {
                self.clients.push(ClientState { pipe, at: Some((core, key)), rx: BytesMut::new(), sse: None, taken: 0, parked_write: None });
                Ok(Client(self.clients.len() - 1))
            }
            Err(e) => {
                net::with(pipe, |p| p.closed = true);
                Err(e)
            }
        }
    }

    /// The client is done with a connection the server closed: both sides
    /// of its pipe are emptied (a long simulation keeps no dead bytes).
    pub fn forget(&mut self, c: Client) {
        let st = &mut self.clients[c.0];
        st.rx = BytesMut::new();
        st.sse = None;
        net::with(st.pipe, |p| {
            p.to_client = BytesMut::new();
            p.to_server = BytesMut::new();
        });
    }

    /// Writes raw bytes on the client's side of the pipe.
    pub fn write_raw(&mut self, c: Client, bytes: &[u8]) {
        net::with(self.clients[c.0].pipe, |p| p.to_server.extend_from_slice(bytes));
    }

    /// Writes `f` on the client's side of the pipe (nothing runs yet).
    pub fn write(&mut self, c: Client, f: &Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        net::with(self.clients[c.0].pipe, |p| p.to_server.extend_from_slice(&b));
    }

    /// A CONNECT for `user`'s `device` with a valid token.
    pub fn connect_frame(&self, user: &str, device: &str, keepalive_s: u16, last_seq: u64) -> Frame {
        Frame::Connect(Connect {
            version: 1,
            keepalive_s,
            device_id: Utf8Bytes::from(device),
            token: Utf8Bytes::from(self.token(user).as_str()),
            last_seq,
        })
    }

    /// Connects on `core`, sends CONNECT, runs to quiescence and checks the
    /// CONNACK is OK; returns the client and every frame it got (CONNACK first).
    pub fn login(&mut self, core: usize, user: &str, device: &str) -> (Client, ConnAck, Vec<Frame>) {
        let c = self.connect_at(core);
        let f = self.connect_frame(user, device, 0, 0);
        self.write(c, &f);
        self.run();
        let mut frames = self.frames(c);
        match frames.first() {
            Some(Frame::ConnAck(a)) if a.status == 0 => {
                let a = a.clone();
                frames.remove(0);
                (c, a, frames)
            }
            other => panic!("{user}/{device}: expected CONNACK 0, got {other:?}"),
        }
    }

    /// The client half-closes (FIN): the server reads EOF once it read the rest.
    pub fn hang_up(&mut self, c: Client) {
        net::with(self.clients[c.0].pipe, |p| p.client_fin = true);
    }

    /// What a server write may still put in the pipe before it blocks
    /// (the client stops or starts reading).
    pub fn set_capacity(&mut self, c: Client, bytes: usize) {
        net::with(self.clients[c.0].pipe, |p| p.capacity = bytes);
    }

    /// Server bytes waiting in the pipe (not yet taken by `frames`).
    pub fn unread(&self, c: Client) -> usize {
        net::with(self.clients[c.0].pipe, |p| p.to_client.len())
    }

    /// Every whole frame the server wrote since the last call.
    pub fn frames(&mut self, c: Client) -> Vec<Frame> {
        let st = &mut self.clients[c.0];
        net::with(st.pipe, |p| {
            st.rx.extend_from_slice(&p.to_client);
            p.to_client.clear();
        });
        let mut out = Vec::new();
        loop {
            match frame::decode(&mut st.rx, u32::MAX) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return out,
                Err(e) => panic!("the server wrote an undecodable frame: {e}"),
            }
        }
    }

    // ----- WebSocket clients (WEB.md: the same core, another framing) ---

    /// Writes the upgrade request for `/v1/ws` (no Origin: a native client).
    pub fn ws_upgrade(&mut self, c: Client) {
        let req = "GET /v1/ws HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Protocol: ringgate.v1\r\n\r\n";
        net::with(self.clients[c.0].pipe, |p| p.to_server.extend_from_slice(req.as_bytes()));
    }

    /// Writes `f` as one masked binary message.
    pub fn ws_write(&mut self, c: Client, f: &Frame) {
        let mut body = BytesMut::new();
        f.encode(&mut body);
        self.ws_write_raw_message(c, &body);
    }

    /// Writes `body` as one masked binary message, whatever it holds.
    pub fn ws_write_raw_message(&mut self, c: Client, body: &[u8]) {
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        let mut b = vec![0x82];
        match body.len() {
            n @ 0..=125 => b.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                b.push(0x80 | 126);
                b.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                b.push(0x80 | 127);
                b.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        b.extend_from_slice(&mask);
        b.extend(body.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
        net::with(self.clients[c.0].pipe, |p| p.to_server.extend_from_slice(&b));
    }

    /// The upgrade's status line, then every protocol frame carried by a
    /// whole binary message since the last call, and the close code if a
    /// close frame came.
    pub fn ws_frames(&mut self, c: Client) -> (Option<String>, Vec<Frame>, Option<u16>) {
        let st = &mut self.clients[c.0];
        net::with(st.pipe, |p| {
            st.rx.extend_from_slice(&p.to_client);
            p.to_client.clear();
        });
        let mut status = None;
        if st.rx.starts_with(b"HTTP/1.1 ") {
            let Some(end) = st.rx.windows(4).position(|w| w == b"\r\n\r\n") else { return (None, Vec::new(), None) };
            let head = st.rx.split_to(end + 4);
            status = String::from_utf8_lossy(&head).lines().next().map(str::to_string);
        }
        let (mut frames, mut close) = (Vec::new(), None);
        loop {
            let b = &st.rx[..];
            if b.len() < 2 {
                break;
            }
            assert_eq!(b[1] & 0x80, 0, "a server frame is never masked");
            let (len, at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < at + len {
                break;
            }
            let op = b[0] & 0x0f;
            let mut msg = st.rx.split_to(at + len);
            let mut payload = msg.split_off(at);
            match op {
                0x2 => match frame::decode(&mut payload, u32::MAX) {
                    Ok(Some(f)) if payload.is_empty() => frames.push(f),
                    other => panic!("a binary message that is not exactly one frame: {other:?}"),
                },
                0x8 => close = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                other => panic!("unexpected opcode {other}"),
            }
        }
        (status, frames, close)
    }

    // ----- SSE + POST and long-poll clients (WEB.md) -----------------

    /// Writes `GET /v1/sse?connect=<base64url of f>` (no Origin: a native
    /// client); the stream is read with [`Sim::sse_events`].
    pub fn sse_open(&mut self, c: Client, f: &Frame) {
        use base64::Engine as _;
        let mut b = BytesMut::new();
        f.encode(&mut b);
        let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b);
        let req = format!("GET /v1/sse?connect={q} HTTP/1.1\r\nHost: sim\r\nAccept: text/event-stream\r\n\r\n");
        self.write_raw(c, req.as_bytes());
    }

    /// Writes `POST <path>` with `body` (Content-Length, keep-alive).
    pub fn http_post(&mut self, c: Client, path: &str, body: &[u8]) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.write_raw(c, &req);
        net::with(self.clients[c.0].pipe, |p| p.stamped = true);
    }

    /// Every whole response (head and Content-Length body; none for 204)
    /// the server wrote since the last call.
    pub fn http_responses(&mut self, c: Client) -> Vec<HttpResponse> {
        let st = &mut self.clients[c.0];
        net::with(st.pipe, |p| {
            st.rx.extend_from_slice(&p.to_client);
            st.taken += p.to_client.len() as u64;
            p.to_client.clear();
        });
        let mut out = Vec::new();
        while let Some((status, headers, head_len)) = parse_head(&st.rx) {
            let len = match headers.iter().find(|(n, _)| n == "content-length") {
                Some((_, v)) => v.parse::<usize>().unwrap_or_else(|_| panic!("Content-Length {v:?}")),
                None => 0,
            };
            assert!(
                !headers.iter().any(|(n, _)| n == "transfer-encoding"),
                "a chunked answer to a POST: {headers:?}"
            );
            if st.rx.len() < head_len + len {
                break;
            }
            let mut r = st.rx.split_to(head_len + len);
            let body = r.split_off(head_len).to_vec();
            // The write its first byte came in.
            let at = st.taken - (st.rx.len() + r.len()) as u64;
            let written_at = net::with(st.pipe, |p| {
                while p.stamps.len() > 1 && p.stamps[1].0 <= at {
                    p.stamps.pop_front();
                }
                p.stamps.front().map_or(0, |s| s.1)
            });
            out.push(HttpResponse { written_at, status, headers, body });
        }
        out
    }

    /// An SSE stream: the response's status and headers (the first call
    /// that finds them whole), every whole event since the last call (a
    /// comment is an event with no field), and whether the last chunk came.
    pub fn sse_events(&mut self, c: Client) -> (Option<HttpResponse>, Vec<SseEvent>, bool) {
        let st = &mut self.clients[c.0];
        net::with(st.pipe, |p| {
            st.rx.extend_from_slice(&p.to_client);
            p.to_client.clear();
        });
        let mut head = None;
        if st.sse.is_none() {
            let Some((status, headers, head_len)) = parse_head(&st.rx) else { return (None, Vec::new(), false) };
            let _ = st.rx.split_to(head_len);
            st.sse = Some(Box::default());
            head = Some(HttpResponse { written_at: 0, status, headers, body: Vec::new() });
        }
        let Some(sse) = st.sse.as_mut() else { return (head, Vec::new(), false) };
        // Un-chunk what is whole.
        while !sse.ended {
            let Some(eol) = st.rx.windows(2).position(|w| w == b"\r\n") else { break };
            let n = std::str::from_utf8(&st.rx[..eol])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("bad chunk size line {:?}", String::from_utf8_lossy(&st.rx[..eol])));
            if st.rx.len() < eol + 2 + n + 2 {
                break;
            }
            let chunk = st.rx.split_to(eol + 2 + n + 2);
            assert_eq!(&chunk[eol + 2 + n..], b"\r\n", "a chunk not followed by CRLF");
            if n == 0 {
                sse.ended = true;
                break;
            }
            sse.text.push_str(std::str::from_utf8(&chunk[eol + 2..eol + 2 + n]).expect("event text is UTF-8"));
        }
        let mut events = Vec::new();
        while let Some(end) = sse.text.find("\n\n") {
            let block: String = sse.text.drain(..end + 2).collect();
            let mut e = SseEvent::default();
            for line in block.lines() {
                match line.split_once(": ") {
                    _ if line.starts_with(':') => {}
                    Some(("event", v)) => e.event = Some(v.to_string()),
                    Some(("data", v)) => e.data.push_str(v),
                    Some(("id", v)) => e.id = Some(v.to_string()),
                    _ if line.is_empty() => {}
                    _ => panic!("an SSE line the server should not write: {line:?}"),
                }
            }
            events.push(e);
        }
        (head, events, sse.ended)
    }

    /// The client's connection as the server holds it, for a failing
    /// simulation's report.
    pub fn describe(&self, c: Client) -> String {
        let st = &self.clients[c.0];
        let server = st.at.and_then(|(core, key)| {
            let slot = self.cores[core].conns.get(key.idx as usize).filter(|s| s.gen == key.gen)?;
            let conn = &slot.conn;
            let http = conn.framing.http().map(|h| format!(" parked {} closing {} deadline {}", h.parked, h.closing, h.deadline_ms)).unwrap_or_default();
            Some(format!("core {core}: {}{http} rbuf {} out {} dead {} woken {} write_blocked {}", conn.framing.name(), conn.rbuf.len(), conn.unsent_bytes(), conn.dead, conn.woken, conn.write_blocked))
        });
        let pipe = net::with(st.pipe, |p| format!("to_server {} to_client {} fin {} closed {}", p.to_server.len(), p.to_client.len(), p.client_fin, p.closed));
        format!("{c:?} at {:?} [{}] {pipe}", st.at.map(|a| a.0), server.unwrap_or_default())
    }

    /// The server sent FIN (after its DISCONNECT).
    pub fn server_fin(&self, c: Client) -> bool {
        net::with(self.clients[c.0].pipe, |p| p.server_fin)
    }

    /// The server dropped the socket (its connection task ended).
    pub fn closed(&self, c: Client) -> bool {
        net::with(self.clients[c.0].pipe, |p| p.closed)
    }

    /// The core the client's connection lives on now (None while moving or closed).
    pub fn core_of(&self, c: Client) -> Option<usize> {
        self.clients[c.0].at.map(|(core, _)| core)
    }

    // ----- the runtime's part ------------------------------------------

    /// One readiness pass over every connection, in client order, as the
    /// connection tasks would run. True if any connection ran.
    pub fn step_io(&mut self) -> bool {
        let mut ran = false;
        for i in 0..self.clients.len() {
            let Some((core, key)) = self.clients[i].at else { continue };
            let pipe = self.clients[i].pipe;
            // `drive`: the interest, then the wait (socket readiness or a wake-up).
            let Some(now_write) = self.cores[core].wants_write(key) else {
                self.end_task(i);
                ran = true;
                continue;
            };
            let write = self.clients[i].parked_write.unwrap_or(now_write);
            let woken = self.cores[core].poll_woken(key, Waker::noop());
            let ready = net::with(pipe, |p| {
                if write {
                    p.to_client.len() < p.capacity
                } else {
                    !p.to_server.is_empty() || p.client_fin
                }
            });
            if !woken && !ready {
                continue;
            }
            ran = true;
            let c = &mut self.cores[core];
            c.before_io(key);
            transmit(c);
            let outcome = c.on_io(key, &mut SimNet);
            transmit(c);
            // `drive`: the interest is read once, after the step's writes.
            self.clients[i].parked_write = c.wants_write(key);
            match outcome {
                Outcome::Continue => {}
                Outcome::Close => self.end_task(i),
                Outcome::Migrate(a) => {
                    // `conn_task`: the socket travels to the home core.
                    let home = a.target_core(self.cores.len());
                    self.mesh[home].post(CoreMsg::Adopt(a));
                    self.cores[core].remove(key);
                    self.clients[i].at = None;
                }
            }
        }
        // The pass is one loop turn: the flushers run behind its tasks.
        self.flush_dirty();
        ran
    }

    /// `conn_task` ends: the socket is dropped and the core forgets the slot.
    fn end_task(&mut self, i: usize) {
        if let Some((core, key)) = self.clients[i].at.take() {
            self.cores[core].remove(key);
        }
        net::with(self.clients[i].pipe, |p| p.closed = true);
    }

    /// Messages waiting for `core` (posted and not yet handled).
    pub fn mailbox_len(&mut self, core: usize) -> usize {
        self.collect(core);
        self.queued[core].len()
    }

    fn collect(&mut self, core: usize) {
        let mut batch = Vec::new();
        self.mesh[core].try_drain(&mut batch);
        self.queued[core].extend(batch);
    }

    /// `core` handles the oldest message in its mailbox; false if none.
    pub fn deliver_one(&mut self, core: usize) -> bool {
        self.collect(core);
        let Some(msg) = self.queued[core].pop_front() else { return false };
        let adopt = self.cores[core].on_message(msg);
        transmit(&mut self.cores[core]);
        if let Some(a) = adopt {
            // `adopt_conn`: register the moved socket here.
            let Some(pipe) = a.sock else { panic!("a moved connection without its pipe") };
            let key = self.cores[core].adopt(*a);
            transmit(&mut self.cores[core]);
            if let Some(st) = self.clients.iter_mut().find(|s| s.pipe == pipe) {
                st.at = Some((core, key));
                st.parked_write = None;
            }
        }
        // One message is one turn here: its output is written behind it.
        self.flush_dirty();
        true
    }

    /// `core` handles every message its mailbox holds now; returns how many.
    pub fn deliver(&mut self, core: usize) -> usize {
        let n = self.mailbox_len(core);
        for _ in 0..n {
            self.deliver_one(core);
        }
        n
    }

    /// The flusher of every core (`runtime::flusher`): writes the
    /// connections the pass made dirty, once each. True if any was.
    pub fn flush_dirty(&mut self) -> bool {
        let mut batch = Vec::new();
        let mut any = false;
        for core in self.cores.iter_mut() {
            if core.poll_dirty(Waker::noop(), &mut batch).is_ready() {
                any = true;
                core.flush_dirty(&mut batch);
                transmit(core);
            }
        }
        any
    }

    /// Runs I/O, mailboxes (cores in order) and the flushers until nothing
    /// moves; time stands still and no sync completes.
    pub fn run(&mut self) {
        for _ in 0..MAX_PASSES {
            let mut progress = self.step_io();
            for core in 0..self.cores.len() {
                progress |= self.deliver(core) > 0;
            }
            // Behind the tasks that were ready, as in a monoio turn.
            progress |= self.flush_dirty();
            if !progress {
                return;
            }
        }
        panic!("the simulation did not settle in {MAX_PASSES} passes");
    }

    /// One tick of virtual time: every core's timers fire; nothing else
    /// runs (the random simulation interleaves the rest itself).
    pub fn tick(&mut self) {
        self.clock.advance(TICK_MS);
        for core in self.cores.iter_mut() {
            core.on_tick();
            transmit(core);
        }
    }

    /// Moves virtual time forward by `ms` in ticks: each tick fires every
    /// core's timers, then everything runs to quiescence.
    pub fn advance(&mut self, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let step = left.min(TICK_MS);
            self.clock.advance(step);
            left -= step;
            for core in self.cores.iter_mut() {
                core.on_tick();
            transmit(core);
            }
            self.run();
        }
    }

    /// Fleet mode: `user`'s mirror on `core` as (visible bounds, engine
    /// head, fetch in flight), for a failing simulation's report.
    pub fn fleet_mirror(&mut self, core: usize, user: &str) -> Option<((u64, u64), u64, bool)> {
        use crate::proto::session::InboxRead;
        let m = self.cores[core].store.fleet_mirror()?.get_mut(user)?;
        Some((m.bounds(), m.engine_head, m.fetching))
    }

    /// Fires every core's timers at the clock's now (which another node's
    /// simulation may have moved), then runs to quiescence.
    pub fn tick_at_now(&mut self) {
        for core in self.cores.iter_mut() {
            core.on_tick();
            transmit(core);
        }
        self.run();
    }

    /// Runs `core`'s queued fsyncs on the simulated disk and posts the
    /// result to its mailbox (as the syncer thread does); false if none was
    /// queued. The result is applied when the core takes the message.
    pub fn sync(&mut self, core: usize) -> bool {
        match self.cores[core].store.take_deferred_sync() {
            Some(r) => {
                self.mesh[core].post(CoreMsg::Synced(r));
                true
            }
            None => false,
        }
    }

    /// Appends waiting in `core`'s mailbox (posted, or taken by the driver
    /// and not handled yet).
    pub fn queued_appends(&mut self, core: usize) -> usize {
        self.collect(core);
        self.queued[core].iter().filter(|m| matches!(m, CoreMsg::Append { .. })).count()
    }

    /// `user`'s head seq on its home core.
    pub fn head(&self, user: &str) -> u64 {
        let home = home_core(user, self.cores.len());
        self.cores[home].store.peek(user).bounds().1
    }
}

/// A whole response head at the start of `b`: status, headers (names in
/// lower case) and the head's length.
fn parse_head(b: &[u8]) -> Option<(u16, Vec<(String, String)>, usize)> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&b[..end]).expect("a response head is ASCII");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

/// This driver's transport: the core's reads from the pipes of [`net`],
/// named by the `Sock` each connection was accepted with.
pub struct SimNet;

impl Transport for SimNet {
    fn recv(&mut self, sock: Sock, buf: &mut [std::mem::MaybeUninit<u8>]) -> std::io::Result<usize> {
        net::recv(sock, buf)
    }
}

/// Performs every write `core` queued, on the pipes (the worker's
/// `transmit`): after each call into a core, as the worker does.
pub fn transmit(core: &mut Core) {
    while let Some(t) = core.poll_transmit() {
        let key = t.key;
        let r = match &t.what {
            // One slice per call, like a socket whose buffer takes a
            // prefix: the core lends one buffer at a time anyway.
            Tx::Data(d) => net::send(t.sock, d.slices().iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..])),
            Tx::Fin => {
                net::with(t.sock, |p| p.server_fin = true);
                Ok(0)
            }
        };
        core.on_sent(key, r);
    }
}

/// The simulated network: one table of pipes per thread (a simulation runs
/// on one thread and never shares its pipes; the nodes of a fleet
/// simulation share the table), addressed by `Sock` the way the kernel's
/// sockets are addressed by fd.
pub mod net {
    use std::cell::RefCell;
    use std::io;
    use std::mem::MaybeUninit;

    use bytes::{Buf, BytesMut};

    use crate::runtime::transport::Sock;

    /// Both directions of one simulated connection.
    #[derive(Default)]
    pub struct Pipe {
        /// Client bytes the server has not read yet.
        pub to_server: BytesMut,
        /// The client half-closed: the server reads EOF once `to_server` is empty.
        pub client_fin: bool,
        /// Server bytes the client (the test) has not taken yet.
        pub to_client: BytesMut,
        /// Most bytes `to_client` holds before a server write would block
        /// (the socket send buffer plus the peer's receive window).
        pub capacity: usize,
        /// The server half-closed (FIN after its last byte).
        pub server_fin: bool,
        /// The server dropped the socket (its connection task ended).
        pub closed: bool,
        /// Record when each server write happened (HTTP request pipes).
        pub stamped: bool,
        /// Server bytes ever written (the offset of `to_client`'s end).
        pub sent_total: u64,
        /// (offset of a write's first byte, the write's number), while stamped.
        pub stamps: std::collections::VecDeque<(u64, u64)>,
    }

    thread_local! {
        static NET: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
        /// Server writes so far, on every pipe (the stamps' clock).
        static WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// Forgets every pipe of this thread (a new simulation starts).
    pub fn reset() {
        NET.with(|n| n.borrow_mut().clear());
    }

    /// A new pipe whose server side may hold `capacity` unread bytes.
    pub fn open(capacity: usize) -> Sock {
        NET.with(|n| {
            let mut n = n.borrow_mut();
            n.push(Pipe { capacity, ..Pipe::default() });
            Sock::new((n.len() - 1) as u32)
        })
    }

    /// Runs `f` on the pipe (the test's side of it).
    pub fn with<R>(id: Sock, f: impl FnOnce(&mut Pipe) -> R) -> R {
        NET.with(|n| f(&mut n.borrow_mut()[id.get() as usize]))
    }

    /// The server's `recv`: what the client wrote, EOF after its FIN,
    /// `WouldBlock` otherwise.
    pub(super) fn recv(id: Sock, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        with(id, |p| {
            if p.to_server.is_empty() {
                return if p.client_fin { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(p.to_server.len());
            for (d, s) in buf[..n].iter_mut().zip(&p.to_server[..n]) {
                d.write(*s);
            }
            p.to_server.advance(n);
            Ok(n)
        })
    }

    /// The server's `send`: as much as the capacity leaves room for.
    pub(super) fn send(id: Sock, buf: &[u8]) -> io::Result<usize> {
        with(id, |p| {
            if p.server_fin || p.closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let room = p.capacity.saturating_sub(p.to_client.len());
            if room == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            p.to_client.extend_from_slice(&buf[..n]);
            if p.stamped && n > 0 {
                let w = WRITES.with(|c| {
                    c.set(c.get() + 1);
                    c.get()
                });
                p.stamps.push_back((p.sent_total, w));
            }
            p.sent_total += n as u64;
            Ok(n)
        })
    }
}
