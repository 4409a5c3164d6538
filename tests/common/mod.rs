//! Harness shared by the integration tests: an independent ringgate client
//! written only from `shared/PROTOCOL.md` (its own frame codec, its own JWT
//! minting, its own TLS setup) and a [`Server`] that runs the real binary on
//! `127.0.0.1:0` in a temporary directory.
//!
//! Nothing here uses the crate under test: if the server and this client
//! disagree about a byte, the test fails instead of both sides sharing the
//! same mistake.
//!
//! Waiting policy: whatever the server *must* do is awaited for up to
//! [`WAIT`] (the machine is small and shared, so this is generous); whatever
//! it *must not* do is watched for [`QUIET`]. No test asserts that something
//! was fast.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Sha256;

/// The JWT secret every test server is configured with.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// The ALPN id of protocol v1.
pub const ALPN: &[u8] = b"ringgate/1";
/// Upper bound for anything the server must do (deliver, answer, close).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something the server must not do.
pub const QUIET: Duration = Duration::from_millis(800);
/// How long to wait for the server's `listening` line.
pub const STARTUP: Duration = Duration::from_secs(20);

/// PUSH flags bit 0.
pub const REDELIVERY: u8 = 1;
/// SEND target kinds.
pub const TO_USER: u8 = 1;
pub const TO_GROUP: u8 = 2;

/// Frame type bytes.
pub mod ty {
    pub const CONNECT: u8 = 0x01;
    pub const CONNACK: u8 = 0x02;
    pub const SEND: u8 = 0x03;
    pub const SENDACK: u8 = 0x04;
    pub const PUSH: u8 = 0x05;
    pub const PUSHACK: u8 = 0x06;
    pub const PING: u8 = 0x07;
    pub const PONG: u8 = 0x08;
    pub const DISCONNECT: u8 = 0x09;
}

/// CONNACK status values.
pub mod connack {
    pub const OK: u8 = 0;
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_TOKEN: u8 = 2;
    pub const BUSY: u8 = 3;
    pub const MALFORMED: u8 = 4;
}

/// SENDACK status values.
pub mod sendack {
    pub const STORED: u8 = 0;
    pub const NO_SUCH_TARGET: u8 = 1;
    pub const FORBIDDEN: u8 = 2;
    pub const RATE_LIMITED: u8 = 3;
    pub const PAYLOAD_TOO_LARGE: u8 = 4;
    pub const BUSY: u8 = 5;
}

/// DISCONNECT reasons.
pub mod reason {
    pub const NORMAL: u8 = 0;
    pub const PROTOCOL_ERROR: u8 = 1;
    pub const FRAME_TOO_LARGE: u8 = 2;
    pub const TOKEN_EXPIRED: u8 = 3;
    pub const ACK_TIMEOUT: u8 = 4;
    pub const IDLE_TIMEOUT: u8 = 5;
    pub const REPLACED: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SLOW_CONSUMER: u8 = 8;
    pub const HANDSHAKE_TIMEOUT: u8 = 9;
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: u8,
    pub keepalive_s: u16,
    pub device_id: String,
    pub token: String,
    pub last_seq: u64,
}

impl Connect {
    /// A version-1 CONNECT with no keepalive preference.
    pub fn new(token: impl Into<String>, device_id: impl Into<String>, last_seq: u64) -> Self {
        Connect { version: 1, keepalive_s: 0, device_id: device_id.into(), token: token.into(), last_seq }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub status: u8,
    pub user_id: String,
    pub heartbeat_s: u16,
    pub max_frame: u32,
    pub oldest_seq: u64,
    pub head_seq: u64,
    pub server_time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub client_msg_id: u64,
    pub target_kind: u8,
    pub target: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAck {
    pub client_msg_id: u64,
    pub status: u8,
    pub msg_id: u64,
    pub timestamp_ms: u64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Push {
    pub seq: u64,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: String,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Push {
    pub fn is_redelivery(&self) -> bool {
        self.flags & REDELIVERY != 0
    }
}

impl fmt::Debug for Push {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push")
            .field("seq", &self.seq)
            .field("msg_id", &self.msg_id)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("from", &self.from)
            .field("flags", &self.flags)
            .field("payload", &Shown(&self.payload))
            .finish()
    }
}

/// Shows a payload as text when it is short printable UTF-8, else its size.
struct Shown<'a>(&'a [u8]);

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

/// The nine frames of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Connect(Connect),
    ConnAck(ConnAck),
    Send(Send),
    SendAck(SendAck),
    Push(Push),
    PushAck { seq: u64 },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Disconnect { reason: u8, message: String },
}

/// Builds a frame body field by field, big-endian; also used by tests to
/// craft deliberately broken frames.
#[derive(Default, Clone)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Self {
        Enc(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// `str`: u16 length then the bytes (which need not be UTF-8 here).
    pub fn str_bytes(self, s: &[u8]) -> Self {
        let len = u16::try_from(s.len()).expect("str longer than u16::MAX");
        self.u16(len).bytes(s)
    }
    pub fn str(self, s: &str) -> Self {
        self.str_bytes(s.as_bytes())
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Prefixes `length` (type byte + body) and the type byte.
    pub fn frame(self, ty: u8) -> Vec<u8> {
        let len = u32::try_from(self.0.len() + 1).expect("frame too long for u32");
        let mut out = Vec::with_capacity(self.0.len() + 5);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(ty);
        out.extend_from_slice(&self.0);
        out
    }
}

/// Reads a frame body field by field; every read is bounds-checked.
struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!("truncated {what}: need {n} bytes at offset {}, have {}", self.pos, self.buf.len() - self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn rest(&mut self) -> Vec<u8> {
        let r = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        r
    }
    fn end(&self, frame: &str) -> Result<(), String> {
        if self.pos != self.buf.len() {
            return Err(format!("{} trailing bytes after {frame}", self.buf.len() - self.pos));
        }
        Ok(())
    }
}

impl Frame {
    /// The complete wire form: length, type, body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Connect(c) => Enc::new()
                .u8(c.version)
                .u16(c.keepalive_s)
                .str(&c.device_id)
                .str(&c.token)
                .u64(c.last_seq)
                .frame(ty::CONNECT),
            Frame::ConnAck(a) => Enc::new()
                .u8(a.status)
                .str(&a.user_id)
                .u16(a.heartbeat_s)
                .u32(a.max_frame)
                .u64(a.oldest_seq)
                .u64(a.head_seq)
                .u64(a.server_time_ms)
                .frame(ty::CONNACK),
            Frame::Send(s) => Enc::new()
                .u64(s.client_msg_id)
                .u8(s.target_kind)
                .str(&s.target)
                .bytes(&s.payload)
                .frame(ty::SEND),
            Frame::SendAck(a) => Enc::new()
                .u64(a.client_msg_id)
                .u8(a.status)
                .u64(a.msg_id)
                .u64(a.timestamp_ms)
                .frame(ty::SENDACK),
            Frame::Push(p) => Enc::new()
                .u64(p.seq)
                .u64(p.msg_id)
                .u64(p.timestamp_ms)
                .str(&p.from)
                .u8(p.flags)
                .bytes(&p.payload)
                .frame(ty::PUSH),
            Frame::PushAck { seq } => Enc::new().u64(*seq).frame(ty::PUSHACK),
            Frame::Ping { nonce } => Enc::new().u64(*nonce).frame(ty::PING),
            Frame::Pong { nonce } => Enc::new().u64(*nonce).frame(ty::PONG),
            Frame::Disconnect { reason, message } => Enc::new().u8(*reason).str(message).frame(ty::DISCONNECT),
        }
    }

    /// Decodes one frame from its type byte and body, strictly: unknown
    /// types, truncated fields, bad UTF-8 and trailing bytes are errors.
    pub fn decode(t: u8, body: &[u8]) -> Result<Frame, String> {
        let mut d = Dec { buf: body, pos: 0 };
        let f = match t {
            ty::CONNECT => {
                let f = Frame::Connect(Connect {
                    version: d.u8("CONNECT.version")?,
                    keepalive_s: d.u16("CONNECT.keepalive_s")?,
                    device_id: d.str("CONNECT.device_id")?,
                    token: d.str("CONNECT.token")?,
                    last_seq: d.u64("CONNECT.last_seq")?,
                });
                d.end("CONNECT")?;
                f
            }
            ty::CONNACK => {
                let f = Frame::ConnAck(ConnAck {
                    status: d.u8("CONNACK.status")?,
                    user_id: d.str("CONNACK.user_id")?,
                    heartbeat_s: d.u16("CONNACK.heartbeat_s")?,
                    max_frame: d.u32("CONNACK.max_frame")?,
                    oldest_seq: d.u64("CONNACK.oldest_seq")?,
                    head_seq: d.u64("CONNACK.head_seq")?,
                    server_time_ms: d.u64("CONNACK.server_time_ms")?,
                });
                d.end("CONNACK")?;
                f
            }
            ty::SEND => Frame::Send(Send {
                client_msg_id: d.u64("SEND.client_msg_id")?,
                target_kind: d.u8("SEND.target_kind")?,
                target: d.str("SEND.target")?,
                payload: d.rest(),
            }),
            ty::SENDACK => {
                let f = Frame::SendAck(SendAck {
                    client_msg_id: d.u64("SENDACK.client_msg_id")?,
                    status: d.u8("SENDACK.status")?,
                    msg_id: d.u64("SENDACK.msg_id")?,
                    timestamp_ms: d.u64("SENDACK.timestamp_ms")?,
                });
                d.end("SENDACK")?;
                f
            }
            ty::PUSH => Frame::Push(Push {
                seq: d.u64("PUSH.seq")?,
                msg_id: d.u64("PUSH.msg_id")?,
                timestamp_ms: d.u64("PUSH.timestamp_ms")?,
                from: d.str("PUSH.from")?,
                flags: d.u8("PUSH.flags")?,
                payload: d.rest(),
            }),
            ty::PUSHACK => {
                let f = Frame::PushAck { seq: d.u64("PUSHACK.seq")? };
                d.end("PUSHACK")?;
                f
            }
            ty::PING => {
                let f = Frame::Ping { nonce: d.u64("PING.nonce")? };
                d.end("PING")?;
                f
            }
            ty::PONG => {
                let f = Frame::Pong { nonce: d.u64("PONG.nonce")? };
                d.end("PONG")?;
                f
            }
            ty::DISCONNECT => {
                let f = Frame::Disconnect { reason: d.u8("DISCONNECT.reason")?, message: d.str("DISCONNECT.message")? };
                d.end("DISCONNECT")?;
                f
            }
            other => return Err(format!("unknown frame type {other:#04x}")),
        };
        Ok(f)
    }
}

/// Convenience constructors.
pub fn send_to_user(client_msg_id: u64, to: &str, payload: &[u8]) -> Frame {
    Frame::Send(Send { client_msg_id, target_kind: TO_USER, target: to.into(), payload: payload.to_vec() })
}

pub fn send_to_group(client_msg_id: u64, group: &str, payload: &[u8]) -> Frame {
    Frame::Send(Send { client_msg_id, target_kind: TO_GROUP, target: group.into(), payload: payload.to_vec() })
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

pub fn unix_now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// An HS256 JWT for `user` signed with `secret`, expiring `ttl_s` from now
/// (negative: already expired).
pub fn token_with(user: &str, secret: &str, ttl_s: i64) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"}).to_string();
    let claims = serde_json::json!({"sub": user, "exp": unix_now_s() + ttl_s}).to_string();
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac accepts any key length");
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64(&sig))
}

/// A valid token for `user` (one hour).
pub fn token(user: &str) -> String {
    token_with(user, SECRET, 3600)
}

/// An unsigned token claiming `alg: none`, which must never be accepted.
pub fn token_alg_none(user: &str) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT"}).to_string();
    let claims = serde_json::json!({"sub": user, "exp": unix_now_s() + 3600}).to_string();
    format!("{}.{}.", b64(header.as_bytes()), b64(claims.as_bytes()))
}

// ---------------------------------------------------------------------------
// Server under test
// ---------------------------------------------------------------------------

/// The last lines the server wrote to stderr, kept for failure messages.
#[derive(Clone, Default)]
pub struct ServerLog(Arc<Mutex<VecDeque<String>>>);

const LOG_LINES: usize = 200;

impl ServerLog {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == LOG_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }
    pub fn tail(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for l in q.iter() {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// The few configuration keys tests change; the rest is the contract's
/// example configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub tls: bool,
    pub workers: u32,
    pub heartbeat_s: u16,
    pub handshake_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub max_retries: u32,
    pub inflight_window: u32,
    pub max_frame: u32,
    pub inbox_max_messages: u64,
    pub inbox_max_age_s: u64,
    pub groups: Vec<(String, Vec<String>)>,
    /// "memory" (default here: most tests need no disk) or "durable".
    pub durability: &'static str,
    pub fsync: &'static str,
    pub segment_max_bytes: u64,
    /// `server.driver`: "auto", "uring" or "legacy".
    pub driver: &'static str,
    /// More `key = value` lines per section (`set`), for keys the fields
    /// above do not cover.
    pub extra: Vec<(String, String)>,
    /// `server.listen` (a fixed port survives `restart`).
    pub listen: String,
    /// TOML appended verbatim (whole tables, e.g. `[route]`).
    pub extra_toml: String,
    /// Extra environment for the server process (fault-injection shims).
    pub env: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tls: true,
            workers: 2,
            heartbeat_s: 30,
            handshake_timeout_ms: 10_000,
            ack_timeout_ms: 5_000,
            max_retries: 2,
            inflight_window: 64,
            max_frame: 65_536,
            inbox_max_messages: 10_000,
            inbox_max_age_s: 604_800,
            groups: vec![("team".into(), vec!["alice".into(), "bob".into(), "carol".into()])],
            durability: "memory",
            fsync: "always",
            segment_max_bytes: 64 << 20,
            driver: "auto",
            extra: Vec::new(),
            listen: "127.0.0.1:0".into(),
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

impl Config {
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    pub fn heartbeat_s(mut self, v: u16) -> Self {
        self.heartbeat_s = v;
        self
    }
    pub fn handshake_timeout_ms(mut self, v: u64) -> Self {
        self.handshake_timeout_ms = v;
        self
    }
    pub fn ack_timeout_ms(mut self, v: u64) -> Self {
        self.ack_timeout_ms = v;
        self
    }
    pub fn max_retries(mut self, v: u32) -> Self {
        self.max_retries = v;
        self
    }
    pub fn inflight_window(mut self, v: u32) -> Self {
        self.inflight_window = v;
        self
    }
    pub fn max_frame(mut self, v: u32) -> Self {
        self.max_frame = v;
        self
    }
    pub fn inbox_max_messages(mut self, v: u64) -> Self {
        self.inbox_max_messages = v;
        self
    }
    pub fn inbox_max_age_s(mut self, v: u64) -> Self {
        self.inbox_max_age_s = v;
        self
    }
    /// Durable inboxes with the given fsync policy.
    pub fn durable(mut self, fsync: &'static str) -> Self {
        self.durability = "durable";
        self.fsync = fsync;
        self
    }

    pub fn driver(mut self, d: &'static str) -> Self {
        self.driver = d;
        self
    }

    pub fn segment_max_bytes(mut self, v: u64) -> Self {
        self.segment_max_bytes = v;
        self
    }

    /// Any other key: `section.key = value` (value in TOML syntax).
    pub fn set(mut self, section: &str, line: impl Into<String>) -> Self {
        self.extra.push((section.into(), line.into()));
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    pub fn group(mut self, name: &str, members: &[&str]) -> Self {
        self.groups.retain(|(g, _)| g != name);
        self.groups.push((name.into(), members.iter().map(|m| m.to_string()).collect()));
        self
    }

    /// The TOML file for this configuration with data under `data_dir`.
    pub fn to_toml(&self, data_dir: &Path) -> String {
        // A JSON string literal is a valid TOML basic string.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let mut t = String::new();
        t += "[server]\n";
        t += &format!("listen = {}\n", q(&self.listen));
        // Each test server gets its own admin port (the default 7080 would collide).
        t += "admin_listen = \"127.0.0.1:0\"\n";
        t += &format!("workers = {}\n", self.workers);
        t += &format!("driver = {}\n", q(self.driver));
        t += "[tls]\n";
        t += &format!("enabled = {}\n", self.tls);
        t += "[auth]\n";
        t += &format!("jwt_secret = {}\n", q(SECRET));
        t += "[session]\n";
        t += &format!("heartbeat_s = {}\n", self.heartbeat_s);
        t += &format!("handshake_timeout_ms = {}\n", self.handshake_timeout_ms);
        t += &format!("ack_timeout_ms = {}\n", self.ack_timeout_ms);
        t += &format!("max_retries = {}\n", self.max_retries);
        t += &format!("inflight_window = {}\n", self.inflight_window);
        t += &format!("max_frame = {}\n", self.max_frame);
        t += "[store]\n";
        t += &format!("data_dir = {}\n", q(&data_dir.to_string_lossy()));
        t += &format!("durability = {}\n", q(self.durability));
        t += &format!("fsync = {}\n", q(self.fsync));
        t += &format!("segment_max_bytes = {}\n", self.segment_max_bytes);
        t += &format!("inbox_max_messages = {}\n", self.inbox_max_messages);
        t += &format!("inbox_max_age_s = {}\n", self.inbox_max_age_s);
        // Extra lines of a section already written go in a repeated header
        // only for sections not written above (TOML forbids repeating one).
        let written = ["server", "tls", "auth", "session", "store"];
        let mut t = t
            .split_inclusive('\n')
            .map(|line| {
                let mut l = line.to_string();
                if let Some(sec) = line.trim().strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                    for (s, extra) in &self.extra {
                        if s == sec {
                            l += extra;
                            l += "\n";
                        }
                    }
                }
                l
            })
            .collect::<String>();
        let mut others: Vec<&str> = self.extra.iter().map(|(s, _)| s.as_str()).filter(|s| !written.contains(s)).collect();
        others.dedup();
        for sec in others {
            t += &format!("[{sec}]\n");
            for (s, extra) in &self.extra {
                if s == sec {
                    t += extra;
                    t += "\n";
                }
            }
        }
        t += "[groups]\n";
        for (g, members) in &self.groups {
            let m: Vec<String> = members.iter().map(|m| q(m)).collect();
            t += &format!("{} = [{}]\n", q(g), m.join(", "));
        }
        t += &self.extra_toml;
        t
    }

    /// Appends TOML tables to the generated file.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// Listens on a fixed address, so a restarted server keeps its port.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }

    pub fn start(self) -> Server {
        Server::start(self)
    }
}

/// A running `ringgate serve` child process; killed on drop.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: ServerLog,
    pub config: Config,
    cert_path: Option<PathBuf>,
}

/// Removes ANSI escape sequences (should there be any) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Finds `listening addr=IP:PORT` in a log line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening addr=")? + "listening addr=".len();
    let rest = &line[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Server {
    /// Starts the server with the contract's default configuration.
    pub fn default_start() -> Server {
        Server::start(Config::default())
    }

    pub fn start(config: Config) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        match Server::spawn(&config, dir.path()) {
            Ok((child, addr, log)) => {
                let cert_path = Server::cert_for(&config, dir.path(), &log);
                Server { child, addr, dir, log, config, cert_path }
            }
            Err(why) => panic!("{why}"),
        }
    }

    fn cert_for(config: &Config, dir: &Path, log: &ServerLog) -> Option<PathBuf> {
        if config.tls {
            let p = dir.join("data").join("dev-cert.pem");
            assert!(p.exists(), "TLS on without a certificate, but {} was not written before listening\nstderr:\n{}", p.display(), log.tail());
            Some(p)
        } else {
            None
        }
    }

    /// Starts `ringgate serve` on `dir`'s config and data directory and
    /// waits for its `listening` line. Err: why it did not come up (exit
    /// status and stderr), for tests that expect a refusal.
    pub fn spawn(config: &Config, dir: &Path) -> Result<(Child, SocketAddr, ServerLog), String> {
        let data_dir = dir.join("data");
        let cfg_path = dir.join("ringgate.toml");
        std::fs::write(&cfg_path, config.to_toml(&data_dir)).expect("write config");

        let log_filter = std::env::var("RINGGATE_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", log_filter)
            .env("NO_COLOR", "1")
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringgate");

        let log = ServerLog::default();
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        let thread_log = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        thread_log.push(line.clone());
                        // After startup nobody listens; keep draining anyway.
                        let _ = tx.send(line);
                    }
                }
            }
        });

        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = parse_listening(&line) {
                        return Ok((child, a, log));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "server printed no `listening addr=` line within {STARTUP:?}\nconfig:\n{}\nstderr:\n{}",
                        config.to_toml(&data_dir),
                        log.tail()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    // The reader thread may still be pushing the last lines.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(format!(
                        "server exited before listening ({status:?})\nconfig:\n{}\nstderr:\n{}",
                        config.to_toml(&data_dir),
                        log.tail()
                    ));
                }
            }
        }
    }

    /// The server's temporary directory (config and `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILL, as a crash would: no shutdown work at all.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same config and data directory (after
    /// `kill9` or a clean exit).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match Server::spawn(&self.config, self.dir.path()) {
            Ok((child, addr, log)) => {
                self.child = child;
                self.addr = addr;
                self.log = log;
                self.cert_path = Server::cert_for(&self.config, self.dir.path(), &self.log);
            }
            Err(why) => panic!("restart failed: {why}"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cert_path(&self) -> &Path {
        self.cert_path.as_deref().expect("server runs without TLS")
    }

    pub fn stderr_tail(&self) -> String {
        self.log.tail()
    }

    pub fn log(&self) -> ServerLog {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with the server's stderr) when the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("server process exited: {status}\nstderr:\n{}", self.log.tail());
        }
    }

    /// Panics when the server's recent stderr reports a panic.
    pub fn assert_no_panic(&self) {
        let tail = self.log.tail();
        assert!(!tail.contains("panicked"), "the server logged a panic:\n{tail}");
    }

    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", io::Error::last_os_error());
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new connection with the transport the server is configured for
    /// (TLS 1.2 or 1.3 with ALPN `ringgate/1`, or plain TCP).
    pub fn client(&self) -> Client {
        let r = if self.config.tls {
            Client::connect_tls(self.addr, self.cert_path(), TlsOptions::default())
        } else {
            Client::connect_plain(self.addr)
        };
        let mut c = r.unwrap_or_else(|e| panic!("connect to {}: {e}\nstderr:\n{}", self.addr, self.log.tail()));
        c.log = Some(self.log.clone());
        c
    }

    pub fn client_tls(&self, opts: TlsOptions) -> Client {
        let mut c = Client::connect_tls(self.addr, self.cert_path(), opts)
            .unwrap_or_else(|e| panic!("TLS connect to {}: {e}\nstderr:\n{}", self.addr, self.log.tail()));
        c.log = Some(self.log.clone());
        c
    }

    /// Connects and logs in; asserts CONNACK status 0.
    pub fn login(&self, user: &str, device: &str, last_seq: u64) -> (Client, ConnAck) {
        let mut c = self.client();
        let ack = c.login(user, device, last_seq);
        (c, ack)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- ringgate stderr (last {LOG_LINES} lines) ----\n{}---- end of ringgate stderr ----", self.log.tail());
        }
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub enum RecvError {
    /// Nothing (complete) arrived in time.
    Timeout,
    /// The peer closed the connection (FIN, RST, or TLS EOF).
    Closed,
    /// Any other I/O or TLS error.
    Io(io::Error),
    /// The server sent bytes that are not a valid frame.
    Decode(String),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Timeout => write!(f, "timed out"),
            RecvError::Closed => write!(f, "connection closed"),
            RecvError::Io(e) => write!(f, "I/O error: {e}"),
            RecvError::Decode(e) => write!(f, "undecodable frame from server: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Any,
    Tls12,
    Tls13,
}

#[derive(Clone, Copy, Debug)]
pub struct TlsOptions {
    pub version: TlsVersion,
    /// Offer ALPN `ringgate/1`.
    pub alpn: bool,
    /// The name the certificate must be valid for (SNI when a DNS name).
    pub server_name: &'static str,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions { version: TlsVersion::Any, alpn: true, server_name: "localhost" }
    }
}

/// A rustls client configuration that trusts exactly the certificate(s) in
/// `cert_pem`.
pub fn tls_config(cert_pem: &Path, opts: TlsOptions) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .unwrap_or_else(|e| panic!("read {}: {e:?}", cert_pem.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e:?}", cert_pem.display()));
    assert!(!certs.is_empty(), "{} holds no certificate", cert_pem.display());
    for c in certs {
        roots.add(c).expect("add dev certificate as trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.version {
        TlsVersion::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls12 => &[&rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if opts.alpn {
        cfg.alpn_protocols = vec![ALPN.to_vec()];
    }
    Arc::new(cfg)
}

/// The first flight of a TLS client (a ClientHello), as raw bytes.
pub fn client_hello_bytes(cert_pem: &Path) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(tls_config(cert_pem, TlsOptions::default()), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

enum Transport {
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Plain(TcpStream),
}

impl Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tls(s) => s.read(buf),
            Transport::Plain(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tls(s) => {
                s.write_all(buf)?;
                s.flush()
            }
            Transport::Plain(s) => s.write_all(buf),
        }
    }
}

/// A blocking protocol client. Frames that helpers skip over while looking
/// for something else are kept, in order, and returned by later reads.
pub struct Client {
    io: Transport,
    /// A handle on the same socket, for timeouts and shutdown.
    sock: TcpStream,
    rbuf: Vec<u8>,
    pending: VecDeque<Frame>,
    /// Answer PINGs from the server with PONG inside `recv_frame` (on by
    /// default: "either side answers PING with PONG").
    pub auto_pong: bool,
    log: Option<ServerLog>,
    /// How the server ended the stream, once it did: `Some(true)` for a
    /// TLS close_notify (or a plain FIN), `Some(false)` for EOF without one.
    pub close_clean: Option<bool>,
}

impl Client {
    pub fn connect_plain(addr: SocketAddr) -> io::Result<Client> {
        let sock = TcpStream::connect_timeout(&addr, WAIT)?;
        sock.set_nodelay(true)?;
        let handle = sock.try_clone()?;
        Ok(Client { io: Transport::Plain(sock), sock: handle, rbuf: Vec::new(), pending: VecDeque::new(), auto_pong: true, log: None, close_clean: None })
    }

    /// Connects and completes the TLS handshake (so that handshake failures
    /// show up here).
    pub fn connect_tls(addr: SocketAddr, cert_pem: &Path, opts: TlsOptions) -> io::Result<Client> {
        let server_name = opts.server_name;
        Self::connect_tls_with(addr, tls_config(cert_pem, opts), server_name)
    }

    /// The TLS session, when there is one.
    pub fn tls(&self) -> Option<&rustls::ClientConnection> {
        match &self.io {
            Transport::Tls(s) => Some(&s.conn),
            Transport::Plain(_) => None,
        }
    }

    /// Another handle on the TCP socket, for writing under TLS.
    pub fn raw_socket(&self) -> TcpStream {
        self.sock.try_clone().expect("clone socket")
    }

    /// The TLS session, mutably (key updates).
    pub fn tls_mut(&mut self) -> Option<&mut rustls::ClientConnection> {
        match &mut self.io {
            Transport::Tls(s) => Some(&mut s.conn),
            Transport::Plain(_) => None,
        }
    }

    /// Panics with `msg` and the server's recent stderr.
    #[track_caller]
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        match &self.log {
            Some(l) => panic!("{msg}\n---- ringgate stderr ----\n{}", l.tail()),
            None => panic!("{msg}"),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.set_write_timeout(Some(WAIT))?;
        self.io.write_all(bytes)
    }

    #[track_caller]
    pub fn send_frame(&mut self, f: &Frame) {
        if let Err(e) = self.send_raw(&f.encode()) {
            self.fail(format!("sending {f:?}: {e}"));
        }
    }

    /// Half-closes (TCP FIN) without a DISCONNECT frame.
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Parses one complete frame out of `rbuf`, if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Frame>, RecvError> {
        if self.rbuf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.rbuf[..4].try_into().unwrap()) as usize;
        if len == 0 {
            return Err(RecvError::Decode("frame with length 0".into()));
        }
        if len > 16 << 20 {
            return Err(RecvError::Decode(format!("absurd frame length {len}")));
        }
        if self.rbuf.len() < 4 + len {
            return Ok(None);
        }
        let t = self.rbuf[4];
        let f = Frame::decode(t, &self.rbuf[5..4 + len]).map_err(RecvError::Decode)?;
        self.rbuf.drain(..4 + len);
        Ok(Some(f))
    }

    /// Next frame from the server within `timeout`. Server PINGs are
    /// answered (and not returned) while `auto_pong` is on.
    pub fn recv_frame(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        let deadline = Instant::now() + timeout;
        let mut tmp = vec![0u8; 32 * 1024];
        loop {
            while let Some(f) = self.parse_buffered()? {
                if let (true, Frame::Ping { nonce }) = (self.auto_pong, &f) {
                    let pong = Frame::Pong { nonce: *nonce }.encode();
                    self.send_raw(&pong).map_err(RecvError::Io)?;
                    continue;
                }
                return Ok(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left)).map_err(RecvError::Io)?;
            match self.io.read(&mut tmp) {
                Ok(0) => {
                    self.close_clean = Some(true);
                    return Err(RecvError::Closed);
                }
                Ok(n) => self.rbuf.extend_from_slice(&tmp[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
                    io::ErrorKind::UnexpectedEof => {
                        self.close_clean = Some(false);
                        return Err(RecvError::Closed);
                    }
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => return Err(RecvError::Closed),
                    _ => return Err(RecvError::Io(e)),
                },
            }
        }
    }

    /// Next frame, which must arrive within `timeout`.
    #[track_caller]
    pub fn expect_frame(&mut self, timeout: Duration, what: &str) -> Frame {
        match self.recv_frame(timeout) {
            Ok(f) => f,
            Err(e) => self.fail(format!("waiting for {what}: {e}")),
        }
    }

    /// Sends CONNECT and returns the CONNACK, whatever its status.
    #[track_caller]
    pub fn connect_frame(&mut self, c: &Connect) -> ConnAck {
        self.send_frame(&Frame::Connect(c.clone()));
        match self.expect_frame(WAIT, "CONNACK") {
            Frame::ConnAck(a) => a,
            other => self.fail(format!("expected CONNACK for {c:?}, got {other:?}")),
        }
    }

    /// Logs in with a valid token and no keepalive preference; asserts
    /// CONNACK status 0.
    #[track_caller]
    pub fn login(&mut self, user: &str, device: &str, last_seq: u64) -> ConnAck {
        let a = self.connect_frame(&Connect::new(token(user), device, last_seq));
        if a.status != connack::OK {
            self.fail(format!("login {user}/{device}: {a:?}"));
        }
        a
    }

    /// Sends SEND to a user (without waiting).
    #[track_caller]
    pub fn send_msg(&mut self, client_msg_id: u64, to: &str, payload: &[u8]) {
        self.send_frame(&send_to_user(client_msg_id, to, payload));
    }

    /// Waits for the SENDACK of `client_msg_id`; other frames are kept for
    /// later reads.
    #[track_caller]
    pub fn expect_sendack(&mut self, client_msg_id: u64) -> SendAck {
        let deadline = Instant::now() + WAIT;
        let mut skipped = VecDeque::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_frame(left) {
                Ok(Frame::SendAck(a)) if a.client_msg_id == client_msg_id => break a,
                Ok(f) => skipped.push_back(f),
                Err(e) => self.fail(format!("waiting for SENDACK({client_msg_id}): {e}; frames seen meanwhile: {skipped:?}")),
            }
        };
        // Keep what was skipped ahead of anything still pending, in order.
        while let Some(f) = skipped.pop_back() {
            self.pending.push_front(f);
        }
        found
    }

    /// SEND to a user, then its SENDACK.
    #[track_caller]
    pub fn send_and_ack(&mut self, client_msg_id: u64, to: &str, payload: &[u8]) -> SendAck {
        self.send_msg(client_msg_id, to, payload);
        self.expect_sendack(client_msg_id)
    }

    /// SEND to a user and assert SENDACK status 0 with a msg_id.
    #[track_caller]
    pub fn send_ok(&mut self, client_msg_id: u64, to: &str, payload: &[u8]) -> SendAck {
        let a = self.send_and_ack(client_msg_id, to, payload);
        if a.status != sendack::STORED || a.msg_id == 0 {
            self.fail(format!("SEND {client_msg_id} to {to}: expected status 0 and a msg_id, got {a:?}"));
        }
        a
    }

    /// The next frame must be a PUSH.
    #[track_caller]
    pub fn expect_push(&mut self) -> Push {
        match self.expect_frame(WAIT, "PUSH") {
            Frame::Push(p) => p,
            other => self.fail(format!("expected PUSH, got {other:?}")),
        }
    }

    /// The next frame must be a PUSH with this seq and payload; returns it.
    #[track_caller]
    pub fn expect_push_seq(&mut self, seq: u64, payload: &[u8]) -> Push {
        let p = self.expect_push();
        if p.seq != seq || p.payload != payload {
            self.fail(format!("expected PUSH seq {seq} payload {:?}, got {p:?}", Shown(payload)));
        }
        p
    }

    #[track_caller]
    pub fn ack(&mut self, seq: u64) {
        self.send_frame(&Frame::PushAck { seq });
    }

    /// The connection must stay silent for `d`.
    #[track_caller]
    pub fn expect_silence(&mut self, d: Duration) {
        match self.recv_frame(d) {
            Err(RecvError::Timeout) => {}
            Ok(f) => self.fail(format!("expected no frame for {d:?}, got {f:?}")),
            Err(e) => self.fail(format!("expected a silent open connection for {d:?}, got: {e}")),
        }
    }

    /// PING with `nonce`; the next frame must be the matching PONG.
    #[track_caller]
    pub fn ping_pong(&mut self, nonce: u64) {
        self.send_frame(&Frame::Ping { nonce });
        match self.expect_frame(WAIT, "PONG") {
            Frame::Pong { nonce: n } if n == nonce => {}
            other => self.fail(format!("expected PONG({nonce:#x}), got {other:?}")),
        }
    }

    /// The server must close the connection (within [`WAIT`]) without
    /// sending any further frame.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.recv_frame(WAIT) {
            Err(RecvError::Closed) => {}
            Ok(f) => self.fail(format!("expected the server to close, got another frame: {f:?}")),
            Err(e) => self.fail(format!("expected the server to close, got: {e}")),
        }
    }

    /// The next frame must be DISCONNECT(reason), followed by a close.
    #[track_caller]
    pub fn expect_disconnect(&mut self, reason: u8) -> String {
        let msg = match self.recv_frame(WAIT) {
            Ok(Frame::Disconnect { reason: r, message }) if r == reason => message,
            Ok(f) => self.fail(format!("expected DISCONNECT({reason}), got {f:?}")),
            Err(e) => self.fail(format!("expected DISCONNECT({reason}), got: {e}")),
        };
        self.expect_closed();
        msg
    }
}

/// Reads from a raw socket until the peer closes (`Ok(bytes received)`) or
/// `timeout` passes (`Err`).
pub fn wait_closed_raw(sock: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(got);
        }
        sock.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1)))).unwrap();
        match sock.read(&mut tmp) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
                _ => return Ok(got),
            },
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), for garbage input.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Client {
    /// Connects with a caller's rustls configuration (a shared session
    /// store, say, to test resumption) and completes the handshake.
    pub fn connect_tls_with(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, server_name: &'static str) -> io::Result<Client> {
        let mut sock = TcpStream::connect_timeout(&addr, WAIT)?;
        sock.set_nodelay(true)?;
        let handle = sock.try_clone()?;
        let name = ServerName::try_from(server_name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn = rustls::ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_write_timeout(Some(WAIT))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(Client {
            io: Transport::Tls(Box::new(rustls::StreamOwned::new(conn, sock))),
            sock: handle,
            rbuf: Vec::new(),
            pending: VecDeque::new(),
            auto_pong: true,
            log: None,
            close_clean: None,
        })
    }
}

// ---------------------------------------------------------------------------
// A real browser (the JS client tests, the plan report)
// ---------------------------------------------------------------------------

/// Where Chromium is: `RINGGATE_CHROMIUM`, else the usual names on PATH.
pub fn chromium_path() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("RINGGATE_CHROMIUM") {
        return Some(std::path::PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser, or `None` (with a message) when it is absent and not required.
pub fn chromium_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match chromium_path() {
        Some(p) => Some(p),
        None if std::env::var("RINGGATE_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") => {
            panic!("RINGGATE_REQUIRE_CHROMIUM=1 but no chromium on PATH (nor RINGGATE_CHROMIUM)")
        }
        None => {
            eprintln!("{test}: no chromium installed (apt-get install chromium): real-browser test SKIPPED");
            None
        }
    }
}

