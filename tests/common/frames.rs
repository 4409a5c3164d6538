//! The test client's own frame codec, written from `shared/PROTOCOL.md`
//! alone (never the crate's), so that a byte the server and the tests
//! disagree on fails a test instead of being shared.

use std::fmt;

use super::{ty, REDELIVERY, TO_GROUP, TO_USER};

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
pub(super) struct Shown<'a>(pub(super) &'a [u8]);

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
