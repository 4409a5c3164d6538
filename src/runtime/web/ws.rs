//! WebSocket (RFC 6455) as a transport of the core: the upgrade's accept key, client frames → protocol frames, protocol frames → binary messages, close codes.
//!
//! Our own small codec rather than tungstenite's `FrameHeader`: the server
//! side of RFC 6455 that WEB.md needs is ~150 lines (masked client frames
//! only, no extensions), and owning it lets every violation map straight to
//! the close code the contract names (1002, 1003, 1009, 4001) without
//! translating another crate's error type, and lets the reassembly buffer
//! and the output framing live in the connection's own `BytesMut`s (which
//! are released while idle). tungstenite is the independent client in the
//! integration tests (`tests/web_ws.rs`), so the codec is tested against it.
//!
//! Output: the session writes whole protocol frames into `conn.out` as for
//! TLS; before each flush [`WsState::wrap_out`] puts a binary-message header
//! in front of every frame not yet wrapped (`framed_len` marks the wrapped
//! prefix). Input: [`WsState::decode`] turns complete client frames in
//! `rbuf` into protocol frames in `frames`, which the session reads exactly
//! as it reads `rbuf` on a TLS connection.

use bytes::{Buf, BufMut, BytesMut};

/// RFC 6455 §1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The subprotocol of WEB.md.
pub const SUBPROTOCOL: &str = "ringgate.v1";

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Close codes (RFC 6455 §7.4.1 and WEB.md).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether a `Sec-WebSocket-Key` is well formed: base64 of 16 bytes.
pub fn key_valid(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|k| k.len() == 16)
}

/// A client's WebSocket input that ends the connection (peer fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Unmasked frame, RSV bits, unknown opcode, bad control frame, bad
    /// continuation: close 1002.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message: close 1003, no DISCONNECT before it.
    #[error("text message (only binary messages carry frames)")]
    Text,
    /// A message above `max_frame + 4`: close 1009.
    #[error("message too large")]
    TooBig,
    /// A binary message that is not exactly one frame (length prefix
    /// disagrees, or under 5 bytes): DISCONNECT(1), then close 4001.
    #[error("binary message is not exactly one frame")]
    NotOneFrame,
}

impl WsError {
    /// The close code sent without a DISCONNECT; `None` when the session's
    /// DISCONNECT(1) goes first (its close code follows from the reason).
    pub fn close_code(self) -> Option<u16> {
        match self {
            WsError::Protocol(_) => Some(CLOSE_PROTOCOL),
            WsError::Text => Some(CLOSE_UNSUPPORTED),
            WsError::TooBig => Some(CLOSE_TOO_BIG),
            WsError::NotOneFrame => None,
        }
    }
}

/// What decoding found besides frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Everything complete was consumed; wait for more.
    Open,
    /// The client sent a close frame (echoed already): end the connection.
    Closed,
}

/// One WebSocket connection's transport state. Holds no allocation while
/// idle: both buffers are released once empty.
#[derive(Debug, Default)]
pub struct WsState {
    /// Protocol frames decoded from binary messages, for the session.
    pub frames: BytesMut,
    /// A fragmented binary message being reassembled.
    partial: BytesMut,
    /// A fragmented message is in progress.
    in_message: bool,
    /// Bytes at the front of `conn.out` already wrapped in message headers.
    pub framed_len: usize,
    /// Our close frame is written: nothing more goes out, input is discarded.
    pub close_sent: bool,
}

impl WsState {
    /// After the 101: `out_len` bytes of HTTP already wait in `out`.
    pub fn new(out_len: usize) -> Self {
        WsState { framed_len: out_len, ..WsState::default() }
    }

    /// Decodes every complete client frame in `rbuf`: binary messages are
    /// appended to `frames`, pings answered into `out`, a close echoed.
    /// `max_msg` bounds a message (`max_frame + 4`).
    pub fn decode(&mut self, rbuf: &mut BytesMut, max_msg: usize, out: &mut BytesMut) -> Result<Input, WsError> {
        loop {
            if self.close_sent {
                rbuf.clear();
                return Ok(Input::Closed);
            }
            if rbuf.len() < 2 {
                return Ok(Input::Open);
            }
            let (b0, b1) = (rbuf[0], rbuf[1]);
            let (fin, rsv, op) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
            if rsv != 0 {
                return Err(WsError::Protocol("RSV bits set"));
            }
            if b1 & 0x80 == 0 {
                return Err(WsError::Protocol("unmasked client frame"));
            }
            let control = op & 0x08 != 0;
            match op {
                OP_CONT if !self.in_message => return Err(WsError::Protocol("continuation without a message")),
                OP_TEXT => return Err(WsError::Text),
                OP_BINARY if self.in_message => return Err(WsError::Protocol("new message inside a fragmented one")),
                OP_CONT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
            let (len, hlen) = match b1 & 0x7f {
                126 => match rbuf.get(2..4) {
                    Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                    None => return Ok(Input::Open),
                },
                127 => match rbuf.get(2..10) {
                    Some(l) => {
                        let n = u64::from_be_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]);
                        if n >> 63 != 0 {
                            return Err(WsError::Protocol("length with its top bit set"));
                        }
                        (n, 10)
                    }
                    None => return Ok(Input::Open),
                },
                n => (u64::from(n), 2),
            };
            if control && (!fin || len > 125) {
                return Err(WsError::Protocol("fragmented or long control frame"));
            }
            // Checked on the header, before any of the body is buffered.
            if !control && (self.partial.len() as u64).saturating_add(len) > max_msg as u64 {
                return Err(WsError::TooBig);
            }
            let len = len as usize;
            let total = hlen + 4 + len;
            if rbuf.len() < total {
                return Ok(Input::Open);
            }
            let mask = [rbuf[hlen], rbuf[hlen + 1], rbuf[hlen + 2], rbuf[hlen + 3]];
            rbuf.advance(hlen + 4);
            let mut body = rbuf.split_to(len);
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match op {
                OP_PING => {
                    // Answered, but not traffic for the heartbeat (WEB.md):
                    // the session never sees it.
                    self.wrap_out(out);
                    put_header(out, OP_PONG, body.len());
                    out.extend_from_slice(&body);
                    self.framed_len = out.len();
                }
                OP_PONG => {}
                OP_CLOSE => {
                    // Echo the client's code (RFC 6455 §5.5.1).
                    let code = match body.get(..2) {
                        Some(c) => u16::from_be_bytes([c[0], c[1]]),
                        None => CLOSE_NORMAL,
                    };
                    self.push_close(out, code);
                    rbuf.clear();
                    return Ok(Input::Closed);
                }
                _ if !fin => {
                    self.in_message = true;
                    self.partial.extend_from_slice(&body);
                }
                _ => {
                    let msg = if self.in_message {
                        self.in_message = false;
                        self.partial.extend_from_slice(&body);
                        std::mem::take(&mut self.partial)
                    } else {
                        body
                    };
                    let prefix = msg.get(..4).map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
                    if msg.len() < 5 || prefix != Some(msg.len() - 4) {
                        return Err(WsError::NotOneFrame);
                    }
                    self.frames.extend_from_slice(&msg);
                }
            }
        }
    }

    /// Wraps every protocol frame of `out` past `framed_len` in a binary
    /// message header. The frames are our own, so their prefixes are right.
    pub fn wrap_out(&mut self, out: &mut BytesMut) {
        if out.len() <= self.framed_len || self.close_sent {
            if self.close_sent {
                // Nothing follows a close frame.
                out.truncate(self.framed_len.min(out.len()));
            }
            return;
        }
        let tail = out.split_off(self.framed_len);
        out.reserve(tail.len() + 16);
        let mut pos = 0;
        while pos < tail.len() {
            let n = tail.get(pos..pos + 4).map_or(tail.len() - pos, |p| 4 + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
            let end = (pos + n).min(tail.len());
            put_header(out, OP_BINARY, end - pos);
            out.extend_from_slice(&tail[pos..end]);
            pos = end;
        }
        self.framed_len = out.len();
    }

    /// Appends our close frame (after wrapping what precedes it). Once.
    pub fn push_close(&mut self, out: &mut BytesMut, code: u16) {
        if self.close_sent {
            return;
        }
        self.wrap_out(out);
        put_header(out, OP_CLOSE, 2);
        out.put_u16(code);
        self.framed_len = out.len();
        self.close_sent = true;
    }

    /// Drops empty buffers' allocations (an idle connection holds none).
    pub fn release_idle_buffers(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = BytesMut::new();
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = BytesMut::new();
        }
    }
}

/// A server frame header: FIN, `op`, unmasked length.
fn put_header(out: &mut BytesMut, op: u8, len: usize) {
    out.put_u8(0x80 | op);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![if fin { 0x80 } else { 0 } | op];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    fn ping_frame() -> Vec<u8> {
        // PING nonce 7: length 9, type 7.
        let mut f = vec![0, 0, 0, 9, 7];
        f.extend_from_slice(&7u64.to_be_bytes());
        f
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_valid("short"));
    }

    #[test]
    fn fragments_reassembled_and_pings_answered() {
        let f = ping_frame();
        let mut rbuf = BytesMut::new();
        rbuf.extend_from_slice(&client_frame(false, OP_BINARY, &f[..3]));
        rbuf.extend_from_slice(&client_frame(true, OP_PING, b"hi"));
        rbuf.extend_from_slice(&client_frame(true, OP_CONT, &f[3..]));
        let (mut ws, mut out) = (WsState::new(0), BytesMut::new());
        // Byte by byte: incomplete input is never an error.
        let all = rbuf.split();
        for b in all.iter() {
            rbuf.extend_from_slice(&[*b]);
            assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Ok(Input::Open));
        }
        assert_eq!(&ws.frames[..], &f[..]);
        assert_eq!(&out[..], &[0x8a, 2, b'h', b'i']);
    }

    #[test]
    fn violations_map_to_close_codes() {
        let cases: [(Vec<u8>, WsError); 6] = [
            (client_frame(true, OP_TEXT, b"x"), WsError::Text),
            (vec![0x82, 0x01, b'x'], WsError::Protocol("unmasked client frame")),
            (vec![0xc2, 0x80, 0, 0, 0, 0], WsError::Protocol("RSV bits set")),
            (client_frame(true, 3, b""), WsError::Protocol("unknown opcode")),
            (client_frame(true, OP_BINARY, &[0, 0, 0, 9, 7]), WsError::NotOneFrame),
            (client_frame(true, OP_BINARY, &[0u8; 200]), WsError::TooBig),
        ];
        for (bytes, want) in cases {
            let (mut ws, mut out) = (WsState::new(0), BytesMut::new());
            let mut rbuf = BytesMut::from(&bytes[..]);
            assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Err(want));
        }
        assert_eq!(WsError::NotOneFrame.close_code(), None);
        assert_eq!(WsError::Text.close_code(), Some(1003));
        // A huge 64-bit length is refused on the header alone.
        let mut rbuf = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(WsState::new(0).decode(&mut rbuf, 100, &mut BytesMut::new()), Err(WsError::TooBig));
    }

    #[test]
    fn output_wrapped_once_and_nothing_after_close() {
        let mut out = BytesMut::from(&b"HTTP/1.1 101\r\n\r\n"[..]);
        let mut ws = WsState::new(out.len());
        out.extend_from_slice(&ping_frame());
        out.extend_from_slice(&ping_frame());
        ws.wrap_out(&mut out);
        ws.wrap_out(&mut out);
        assert_eq!(out.len(), 16 + 2 * (2 + 13));
        assert_eq!(&out[16..18], &[0x82, 13]);
        ws.push_close(&mut out, 4006);
        assert_eq!(&out[out.len() - 4..], &[0x88, 2, 0x0f, 0xa6]);
        let n = out.len();
        out.extend_from_slice(&ping_frame());
        ws.wrap_out(&mut out);
        assert_eq!(out.len(), n);
    }
}
