//! Frame codec of protocol v1: `check` a buffer, `decode` one frame, `encode` frames.
//!
//! Layout (PROTOCOL.md): `length: u32 | type: u8 | body`, big-endian, where
//! `length` counts the type byte and the body. Decoding follows the
//! mini-redis shape: [`check`] looks at the length prefix only (so an
//! oversized frame is refused before a single body byte is buffered), an
//! incomplete frame is `Ok(None)`, and [`decode`] splits the frame off the
//! read buffer as a `Bytes` and hands out `str` and payload fields as slices
//! of it — no payload is copied while decoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::FrameError;

/// Length prefix size in bytes.
pub const HEADER_LEN: usize = 4;

pub const T_CONNECT: u8 = 0x01;
pub const T_CONNACK: u8 = 0x02;
pub const T_SEND: u8 = 0x03;
pub const T_SENDACK: u8 = 0x04;
pub const T_PUSH: u8 = 0x05;
pub const T_PUSHACK: u8 = 0x06;
pub const T_PING: u8 = 0x07;
pub const T_PONG: u8 = 0x08;
pub const T_DISCONNECT: u8 = 0x09;

/// PUSH flag bit 0: retransmission or replay after reconnect.
pub const FLAG_REDELIVERY: u8 = 0x01;

/// A UTF-8 string that is a slice of a received frame (validated once, never copied).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    pub fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    pub fn from_string(s: String) -> Self {
        Utf8Bytes(Bytes::from(s.into_bytes()))
    }

    fn from_bytes(b: Bytes) -> Result<Self, FrameError> {
        match std::str::from_utf8(&b) {
            Ok(_) => Ok(Utf8Bytes(b)),
            Err(_) => Err(FrameError::BadUtf8),
        }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either validates the bytes
        // (`from_bytes`) or takes them from a `&str`/`String`, the field is
        // private to this module, and `Bytes` is immutable, so the bytes are
        // UTF-8 for the life of the value. Re-validating here cost a scan of
        // every device id and target on every lookup.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: u8,
    pub keepalive_s: u16,
    pub device_id: Utf8Bytes,
    pub token: Utf8Bytes,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub status: u8,
    pub user_id: Utf8Bytes,
    pub heartbeat_s: u16,
    pub max_frame: u32,
    pub oldest_seq: u64,
    pub head_seq: u64,
    pub server_time_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    pub client_msg_id: u64,
    pub target_kind: u8,
    pub target: Utf8Bytes,
    pub payload: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendAck {
    pub client_msg_id: u64,
    pub status: u8,
    pub msg_id: u64,
    pub timestamp_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub seq: u64,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Utf8Bytes,
    pub flags: u8,
    pub payload: Bytes,
}

/// One protocol frame. Field types mirror PROTOCOL.md exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Connect(Connect),
    ConnAck(ConnAck),
    Send(Send),
    SendAck(SendAck),
    Push(Push),
    PushAck { seq: u64 },
    Ping { nonce: u64 },
    Pong { nonce: u64 },
    Disconnect { reason: u8, message: Utf8Bytes },
}

impl Frame {
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Connect(_) => T_CONNECT,
            Frame::ConnAck(_) => T_CONNACK,
            Frame::Send(_) => T_SEND,
            Frame::SendAck(_) => T_SENDACK,
            Frame::Push(_) => T_PUSH,
            Frame::PushAck { .. } => T_PUSHACK,
            Frame::Ping { .. } => T_PING,
            Frame::Pong { .. } => T_PONG,
            Frame::Disconnect { .. } => T_DISCONNECT,
        }
    }

    pub fn name(&self) -> &'static str {
        type_name(self.type_byte())
    }

    /// Appends the encoded frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, self.type_byte());
        match self {
            Frame::Connect(c) => {
                out.put_u8(c.version);
                out.put_u16(c.keepalive_s);
                put_str(out, c.device_id.as_str());
                put_str(out, c.token.as_str());
                out.put_u64(c.last_seq);
            }
            Frame::ConnAck(c) => {
                out.put_u8(c.status);
                put_str(out, c.user_id.as_str());
                out.put_u16(c.heartbeat_s);
                out.put_u32(c.max_frame);
                out.put_u64(c.oldest_seq);
                out.put_u64(c.head_seq);
                out.put_u64(c.server_time_ms);
            }
            Frame::Send(s) => {
                out.put_u64(s.client_msg_id);
                out.put_u8(s.target_kind);
                put_str(out, s.target.as_str());
                out.put_slice(&s.payload);
            }
            Frame::SendAck(a) => put_sendack_body(out, a),
            Frame::Push(p) => put_push_body(
                out,
                p.seq,
                p.msg_id,
                p.timestamp_ms,
                p.from.as_str(),
                p.flags,
                &p.payload,
            ),
            Frame::PushAck { seq } => out.put_u64(*seq),
            Frame::Ping { nonce } | Frame::Pong { nonce } => out.put_u64(*nonce),
            Frame::Disconnect { reason, message } => {
                out.put_u8(*reason);
                put_str(out, message.as_str());
            }
        }
        finish(out, start);
    }
}

/// Encodes a PUSH straight from borrowed inbox data (the hot path: no `Frame` built).
pub fn encode_push(
    out: &mut BytesMut,
    seq: u64,
    msg_id: u64,
    timestamp_ms: u64,
    from: &str,
    flags: u8,
    payload: &[u8],
) {
    let start = begin(out, T_PUSH);
    put_push_body(out, seq, msg_id, timestamp_ms, from, flags, payload);
    finish(out, start);
}

pub fn encode_sendack(out: &mut BytesMut, ack: &SendAck) {
    let start = begin(out, T_SENDACK);
    put_sendack_body(out, ack);
    finish(out, start);
}

pub fn encode_disconnect(out: &mut BytesMut, reason: u8, message: &str) {
    let start = begin(out, T_DISCONNECT);
    out.put_u8(reason);
    put_str(out, message);
    finish(out, start);
}

fn put_push_body(
    out: &mut BytesMut,
    seq: u64,
    msg_id: u64,
    timestamp_ms: u64,
    from: &str,
    flags: u8,
    payload: &[u8],
) {
    out.put_u64(seq);
    out.put_u64(msg_id);
    out.put_u64(timestamp_ms);
    put_str(out, from);
    out.put_u8(flags);
    out.put_slice(payload);
}

fn put_sendack_body(out: &mut BytesMut, a: &SendAck) {
    out.put_u64(a.client_msg_id);
    out.put_u8(a.status);
    out.put_u64(a.msg_id);
    out.put_u64(a.timestamp_ms);
}

/// Reserves the length prefix and writes the type byte; returns where the frame starts.
fn begin(out: &mut BytesMut, ty: u8) -> usize {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(ty);
    start
}

/// Back-fills the length prefix once the body is written.
fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Strings we encode are ids and short messages; one longer than a `str`
/// can carry is cut at a char boundary rather than producing a corrupt frame.
fn put_str(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

pub fn type_name(ty: u8) -> &'static str {
    match ty {
        T_CONNECT => "CONNECT",
        T_CONNACK => "CONNACK",
        T_SEND => "SEND",
        T_SENDACK => "SENDACK",
        T_PUSH => "PUSH",
        T_PUSHACK => "PUSHACK",
        T_PING => "PING",
        T_PONG => "PONG",
        T_DISCONNECT => "DISCONNECT",
        _ => "unknown",
    }
}

/// Looks at the length prefix only. `Ok(Some(n))`: a whole frame of `n`
/// bytes (prefix included) is buffered; `Ok(None)`: need more bytes.
/// A zero or oversized length is refused as soon as the prefix is seen.
pub fn check(buf: &[u8], max_frame: u32) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(total))
}

/// Splits one frame off the front of `buf` and parses it. On `Ok(None)` the
/// buffer is untouched; on error the connection is to be closed, so the
/// buffer's state no longer matters.
pub fn decode(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
    match check(buf, max_frame)? {
        None => Ok(None),
        Some(total) => {
            let mut frame = buf.split_to(total).freeze();
            frame.advance(HEADER_LEN);
            parse(frame).map(Some)
        }
    }
}

/// Parses `type | body` (the length prefix already removed).
pub fn parse(mut b: Bytes) -> Result<Frame, FrameError> {
    let ty = b.get_u8();
    let name = type_name(ty);
    let mut r = Reader { b, frame: name };
    let frame = match ty {
        T_CONNECT => Frame::Connect(Connect {
            version: r.u8()?,
            keepalive_s: r.u16()?,
            device_id: r.str()?,
            token: r.str()?,
            last_seq: r.u64()?,
        }),
        T_CONNACK => Frame::ConnAck(ConnAck {
            status: r.u8()?,
            user_id: r.str()?,
            heartbeat_s: r.u16()?,
            max_frame: r.u32()?,
            oldest_seq: r.u64()?,
            head_seq: r.u64()?,
            server_time_ms: r.u64()?,
        }),
        T_SEND => {
            let client_msg_id = r.u64()?;
            let target_kind = r.u8()?;
            let target = r.str()?;
            return Ok(Frame::Send(Send {
                client_msg_id,
                target_kind,
                target,
                payload: r.rest(),
            }));
        }
        T_SENDACK => Frame::SendAck(SendAck {
            client_msg_id: r.u64()?,
            status: r.u8()?,
            msg_id: r.u64()?,
            timestamp_ms: r.u64()?,
        }),
        T_PUSH => {
            let seq = r.u64()?;
            let msg_id = r.u64()?;
            let timestamp_ms = r.u64()?;
            let from = r.str()?;
            let flags = r.u8()?;
            return Ok(Frame::Push(Push {
                seq,
                msg_id,
                timestamp_ms,
                from,
                flags,
                payload: r.rest(),
            }));
        }
        T_PUSHACK => Frame::PushAck { seq: r.u64()? },
        T_PING => Frame::Ping { nonce: r.u64()? },
        T_PONG => Frame::Pong { nonce: r.u64()? },
        T_DISCONNECT => Frame::Disconnect {
            reason: r.u8()?,
            message: r.str()?,
        },
        other => return Err(FrameError::UnknownType(other)),
    };
    r.end()?;
    Ok(frame)
}

/// Bounds-checked big-endian field reader over one frame's body.
struct Reader {
    b: Bytes,
    frame: &'static str,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.b.remaining() < n {
            Err(FrameError::Truncated { frame: self.frame })
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
    fn str(&mut self) -> Result<Utf8Bytes, FrameError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        Utf8Bytes::from_bytes(self.b.split_to(n))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.b)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                frame: self.frame,
                extra: self.b.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(f: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        out
    }

    #[test]
    fn connect_layout_is_exact() {
        let f = Frame::Connect(Connect {
            version: 1,
            keepalive_s: 30,
            device_id: "d1".into(),
            token: "t".into(),
            last_seq: 7,
        });
        let b = enc(&f);
        let expect: Vec<u8> = [
            &[0, 0, 0, 1 + 1 + 2 + 2 + 2 + 2 + 1 + 8][..],
            &[T_CONNECT, 1, 0, 30, 0, 2, b'd', b'1', 0, 1, b't'],
            &7u64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(&b[..], &expect[..]);
    }

    #[test]
    fn incomplete_is_none_and_untouched() {
        let full = enc(&Frame::Ping { nonce: 9 });
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut b, 1024).unwrap(), None);
            assert_eq!(b.len(), cut);
        }
    }

    #[test]
    fn length_checks_before_body_arrives() {
        let b = [0u8, 0, 0, 0];
        assert_eq!(check(&b, 100), Err(FrameError::Empty));
        let b = 101u32.to_be_bytes();
        assert_eq!(check(&b, 100), Err(FrameError::TooLarge { len: 101, max: 100 }));
        assert!(FrameError::TooLarge { len: 1, max: 0 }.disconnect_reason() == 2);
    }

    #[test]
    fn malformed_classes() {
        // unknown type
        let mut b = BytesMut::from(&[0u8, 0, 0, 1, 0x42][..]);
        assert_eq!(decode(&mut b, 100), Err(FrameError::UnknownType(0x42)));
        // truncated PUSHACK
        let mut b = BytesMut::from(&[0u8, 0, 0, 3, T_PUSHACK, 0, 0][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::Truncated { .. })));
        // trailing bytes after PING nonce
        let mut b = BytesMut::from(&[0u8, 0, 0, 10, T_PING, 0, 0, 0, 0, 0, 0, 0, 1, 9][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::TrailingBytes { .. })));
        // non-UTF-8 str in DISCONNECT
        let mut b = BytesMut::from(&[0u8, 0, 0, 5, T_DISCONNECT, 0, 0, 1, 0xff][..]);
        assert_eq!(decode(&mut b, 100), Err(FrameError::BadUtf8));
        // str length beyond the frame
        let mut b = BytesMut::from(&[0u8, 0, 0, 4, T_DISCONNECT, 0, 0, 9][..]);
        assert!(matches!(decode(&mut b, 100), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn utf8_is_checked_once_at_decode_and_as_str_is_the_buffer() {
        // "é" cut in half is refused at decode, whole it is accepted ...
        assert_eq!(Utf8Bytes::from_bytes(Bytes::from_static(&[b'a', 0xc3])), Err(FrameError::BadUtf8));
        assert_eq!(Utf8Bytes::from_bytes(Bytes::from_static(&[0xed, 0xa0, 0x80])), Err(FrameError::BadUtf8));
        let b = Bytes::from_static("dévice".as_bytes());
        let u = Utf8Bytes::from_bytes(b.clone()).unwrap();
        // ... and as_str hands out the same bytes, not a copy.
        assert_eq!(u.as_str(), "dévice");
        assert_eq!(u.as_str().as_ptr(), b.as_ptr());
        assert_eq!(Utf8Bytes::default().as_str(), "");
    }

    #[test]
    fn payload_is_a_slice_of_the_read_buffer() {
        let f = Frame::Send(Send {
            client_msg_id: 1,
            target_kind: 1,
            target: "bob".into(),
            payload: Bytes::from_static(b"hello world"),
        });
        let mut buf = enc(&f);
        let base = buf.as_ptr() as usize;
        let end = base + buf.len();
        let Some(Frame::Send(s)) = decode(&mut buf, 1024).unwrap() else {
            panic!("not a SEND")
        };
        let p = s.payload.as_ptr() as usize;
        assert!(p >= base && p < end, "payload was copied");
        assert_eq!(&s.payload[..], b"hello world");
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = enc(&Frame::Ping { nonce: 1 });
        buf.extend_from_slice(&enc(&Frame::PushAck { seq: 5 }));
        assert_eq!(decode(&mut buf, 64).unwrap(), Some(Frame::Ping { nonce: 1 }));
        assert_eq!(decode(&mut buf, 64).unwrap(), Some(Frame::PushAck { seq: 5 }));
        assert_eq!(decode(&mut buf, 64).unwrap(), None);
        assert!(buf.is_empty());
    }

    fn arb_str(max: usize) -> impl Strategy<Value = Utf8Bytes> {
        proptest::collection::vec(any::<char>(), 0..max)
            .prop_map(|v| Utf8Bytes::from_string(v.into_iter().collect::<String>()))
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let payload = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (any::<u8>(), any::<u16>(), arb_str(8), arb_str(8), any::<u64>()).prop_map(
                |(version, keepalive_s, device_id, token, last_seq)| Frame::Connect(Connect {
                    version,
                    keepalive_s,
                    device_id,
                    token,
                    last_seq
                })
            ),
            (any::<u8>(), arb_str(8), any::<u16>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(status, user_id, heartbeat_s, max_frame, oldest_seq, head_seq, server_time_ms)| {
                    Frame::ConnAck(ConnAck {
                        status,
                        user_id,
                        heartbeat_s,
                        max_frame,
                        oldest_seq,
                        head_seq,
                        server_time_ms,
                    })
                }),
            (any::<u64>(), any::<u8>(), arb_str(8), payload.clone()).prop_map(
                |(client_msg_id, target_kind, target, payload)| Frame::Send(Send {
                    client_msg_id,
                    target_kind,
                    target,
                    payload
                })
            ),
            (any::<u64>(), any::<u8>(), any::<u64>(), any::<u64>()).prop_map(
                |(client_msg_id, status, msg_id, timestamp_ms)| Frame::SendAck(SendAck {
                    client_msg_id,
                    status,
                    msg_id,
                    timestamp_ms
                })
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), arb_str(8), any::<u8>(), payload).prop_map(
                |(seq, msg_id, timestamp_ms, from, flags, payload)| Frame::Push(Push {
                    seq,
                    msg_id,
                    timestamp_ms,
                    from,
                    flags,
                    payload
                })
            ),
            any::<u64>().prop_map(|seq| Frame::PushAck { seq }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            (any::<u8>(), arb_str(16)).prop_map(|(reason, message)| Frame::Disconnect { reason, message }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..8)) {
            let mut buf = BytesMut::new();
            for f in &frames { f.encode(&mut buf); }
            for f in &frames {
                let got = decode(&mut buf, 1 << 20).unwrap();
                prop_assert_eq!(got.as_ref(), Some(f));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 1u32..512) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Keep decoding until incomplete or error: must terminate without panicking.
            while let Ok(Some(_)) = decode(&mut buf, max) {}
        }

        #[test]
        fn arbitrary_bodies_never_panic(ty in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![ty];
            b.extend_from_slice(&body);
            let _ = parse(Bytes::from(b));
        }
    }
}
