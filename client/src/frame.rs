//! Protocol v1 frames as the client sees them: encode what a device sends, decode what the server sends.
//!
//! Written from `PROTOCOL.md` alone (the SDK does not link the server crate),
//! so a misreading on one side shows up as a failing test instead of being
//! shared. Decode is check-then-parse: an incomplete frame is `Ok(None)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const CONNECT: u8 = 0x01;
pub const CONNACK: u8 = 0x02;
pub const SEND: u8 = 0x03;
pub const SENDACK: u8 = 0x04;
pub const PUSH: u8 = 0x05;
pub const PUSHACK: u8 = 0x06;
pub const PING: u8 = 0x07;
pub const PONG: u8 = 0x08;
pub const DISCONNECT: u8 = 0x09;

/// Largest frame the client accepts before the CONNACK told it the server's limit.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// CONNACK from the server.
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

/// SENDACK: the answer to one SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAck {
    pub client_msg_id: u64,
    /// 0 stored, 1 no such target, 2 forbidden, 3 rate limited, 4 too large, 5 busy.
    pub status: u8,
    pub msg_id: u64,
    pub timestamp_ms: u64,
}

/// A message delivered to this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub seq: u64,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: String,
    pub flags: u8,
    pub payload: Bytes,
}

/// Frames a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    ConnAck(ConnAck),
    SendAck(SendAck),
    Push(Push),
    Ping(u64),
    Pong(u64),
    Disconnect { reason: u8, message: String },
}

/// The server sent bytes that are not a valid frame: always the server's fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is outside 1..={1}")]
    Length(u32, u32),
    #[error("unknown or client-only frame type {0:#04x}")]
    Type(u8),
    #[error("frame type {0:#04x} is truncated or has trailing bytes")]
    Body(u8),
    #[error("a string field is not UTF-8")]
    Utf8,
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

fn frame(out: &mut BytesMut, ty: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(ty);
    body(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn encode_connect(out: &mut BytesMut, keepalive_s: u16, device: &str, token: &str, last_seq: u64) {
    frame(out, CONNECT, |b| {
        b.put_u8(1);
        b.put_u16(keepalive_s);
        put_str(b, device);
        put_str(b, token);
        b.put_u64(last_seq);
    });
}

pub fn encode_send(out: &mut BytesMut, client_msg_id: u64, target_kind: u8, target: &str, payload: &[u8]) {
    frame(out, SEND, |b| {
        b.put_u64(client_msg_id);
        b.put_u8(target_kind);
        put_str(b, target);
        b.put_slice(payload);
    });
}

pub fn encode_pushack(out: &mut BytesMut, seq: u64) {
    frame(out, PUSHACK, |b| b.put_u64(seq));
}

pub fn encode_ping(out: &mut BytesMut, nonce: u64) {
    frame(out, PING, |b| b.put_u64(nonce));
}

pub fn encode_pong(out: &mut BytesMut, nonce: u64) {
    frame(out, PONG, |b| b.put_u64(nonce));
}

pub fn encode_disconnect(out: &mut BytesMut, reason: u8, message: &str) {
    frame(out, DISCONNECT, |b| {
        b.put_u8(reason);
        put_str(b, message);
    });
}

/// Field reader over one frame body; every read is checked.
struct Body {
    ty: u8,
    b: Bytes,
}

impl Body {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.b.remaining() < n {
            Err(FrameError::Body(self.ty))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn str(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let s = self.b.split_to(n);
        String::from_utf8(s.to_vec()).map_err(|_| FrameError::Utf8)
    }
    fn end(self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Body(self.ty))
        }
    }
}

/// Splits one whole frame off `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut, max_frame: u32) -> Result<Option<ServerFrame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 || len > max_frame.saturating_add(1) {
        return Err(FrameError::Length(len, max_frame));
    }
    if buf.len() < 4 + len as usize {
        return Ok(None);
    }
    buf.advance(4);
    let mut whole = buf.split_to(len as usize).freeze();
    let ty = whole.get_u8();
    let mut b = Body { ty, b: whole };
    let f = match ty {
        CONNACK => {
            let f = ServerFrame::ConnAck(ConnAck {
                status: b.u8()?,
                user_id: b.str()?,
                heartbeat_s: b.u16()?,
                max_frame: b.u32()?,
                oldest_seq: b.u64()?,
                head_seq: b.u64()?,
                server_time_ms: b.u64()?,
            });
            b.end()?;
            f
        }
        SENDACK => {
            let f = ServerFrame::SendAck(SendAck {
                client_msg_id: b.u64()?,
                status: b.u8()?,
                msg_id: b.u64()?,
                timestamp_ms: b.u64()?,
            });
            b.end()?;
            f
        }
        PUSH => ServerFrame::Push(Push {
            seq: b.u64()?,
            msg_id: b.u64()?,
            timestamp_ms: b.u64()?,
            from: b.str()?,
            flags: b.u8()?,
            payload: b.b,
        }),
        PING => {
            let n = b.u64()?;
            b.end()?;
            ServerFrame::Ping(n)
        }
        PONG => {
            let n = b.u64()?;
            b.end()?;
            ServerFrame::Pong(n)
        }
        DISCONNECT => {
            let reason = b.u8()?;
            let message = b.str()?;
            b.end()?;
            ServerFrame::Disconnect { reason, message }
        }
        other => return Err(FrameError::Type(other)),
    };
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(ty: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(body.len() as u32 + 1);
        b.put_u8(ty);
        b.put_slice(body);
        b
    }

    #[test]
    fn push_decodes_and_incomplete_is_none() {
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(&9u64.to_be_bytes());
        body.extend_from_slice(&11u64.to_be_bytes());
        body.extend_from_slice(&5u16.to_be_bytes());
        body.extend_from_slice(b"alice");
        body.push(1);
        body.extend_from_slice(b"hi");
        let whole = server_frame(PUSH, &body);
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(decode(&mut part, 65536), Ok(None));
        let mut buf = whole.clone();
        match decode(&mut buf, 65536).unwrap().unwrap() {
            ServerFrame::Push(p) => {
                assert_eq!((p.seq, p.msg_id, p.timestamp_ms, p.from.as_str(), p.flags), (7, 9, 11, "alice", 1));
                assert_eq!(&p.payload[..], b"hi");
            }
            f => panic!("{f:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut b = server_frame(PING, &[0; 7]);
        assert_eq!(decode(&mut b, 65536), Err(FrameError::Body(PING)));
        let mut b = server_frame(SEND, &[0; 8]);
        assert_eq!(decode(&mut b, 65536), Err(FrameError::Type(SEND)));
        let mut b = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
        assert!(matches!(decode(&mut b, 65536), Err(FrameError::Length(0, _))));
    }

    #[test]
    fn connect_layout() {
        let mut b = BytesMut::new();
        encode_connect(&mut b, 30, "d", "t", 5);
        // len, type, version, keepalive, "d", "t", last_seq
        assert_eq!(&b[..], &[0, 0, 0, 18, 1, 1, 0, 30, 0, 1, b'd', 0, 1, b't', 0, 0, 0, 0, 0, 0, 0, 5]);
    }
}
