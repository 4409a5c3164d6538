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
pub const CLOSE_INVALID_DATA: u16 = 1007;
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
    /// continuation, a close frame with a 1-byte body or a code that must
    /// not be sent: close 1002.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message on the gateway: close 1003, no DISCONNECT before it.
    #[error("text message (only binary messages carry frames)")]
    Text,
    /// A close reason, or (echo mode) a text message, that is not UTF-8:
    /// close 1007 (RFC 6455 §8.1).
    #[error("text that is not UTF-8")]
    InvalidUtf8,
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
            WsError::InvalidUtf8 => Some(CLOSE_INVALID_DATA),
            WsError::TooBig => Some(CLOSE_TOO_BIG),
            WsError::NotOneFrame => None,
        }
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4.1 and the
/// IANA registry it opens): 1000–1003, 1007–1014 and the 3000–4999 ranges
/// for libraries and applications. 1004 is reserved, 1005, 1006 and 1015
/// are for APIs only ("MUST NOT be set as a status code in a Close control
/// frame"), everything else below 3000 is unassigned, and 5000+ undefined.
pub fn close_code_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code we answer a client's close frame with (§5.5.1: echo its code;
/// no code → 1000), or the violation to close on instead (§7.4, §8.1).
fn close_reply(body: &[u8]) -> Result<u16, WsError> {
    match body {
        [] => Ok(CLOSE_NORMAL),
        [_] => Err(WsError::Protocol("close frame with a 1-byte body")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_on_wire(code) {
                return Err(WsError::Protocol("close code that must not be sent"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            Ok(code)
        }
    }
}

/// Checks the not yet checked part of a text message (`buf[*checked..]`):
/// false on a sequence that cannot be UTF-8. A sequence cut at the end is
/// fine while `complete` is false (the next fragment may finish it);
/// `*checked` then stops before it. Each byte is looked at about once.
fn utf8_prefix_ok(buf: &[u8], checked: &mut usize, complete: bool) -> bool {
    match std::str::from_utf8(&buf[*checked..]) {
        Ok(_) => {
            *checked = buf.len();
            true
        }
        Err(e) if e.error_len().is_none() && !complete => {
            *checked += e.valid_up_to();
            true
        }
        Err(_) => false,
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

/// What a connection does with complete data messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// WEB.md: a binary message carries one protocol frame for the
    /// session; a text message is refused with 1003.
    #[default]
    Gateway,
    /// Test only (`RINGGATE_TEST_WS_ECHO=1`, refused unless the listener
    /// is on loopback): every text and binary message is sent back as it
    /// came, text checked as UTF-8 first (1007), and no protocol frame
    /// reaches the session. It exists because the Autobahn|Testsuite's
    /// fuzzing client needs an echo server to check messages, fragments
    /// and UTF-8 through this very codec (`.ci/autobahn.sh`).
    Echo,
}

/// The environment variable of the test-only echo mode ([`Mode::Echo`]).
pub const TEST_ECHO_ENV: &str = "RINGGATE_TEST_WS_ECHO";

/// The mode of `/v1/ws` for a server whose gateway listens on `listen`,
/// given the value of [`TEST_ECHO_ENV`]. Echo is refused unless the
/// listener is loopback, so that the switch, set by mistake on a real
/// deployment, stops the start instead of turning a public gateway into an
/// echo server; any value but unset, empty, `0` or `1` is refused too.
pub fn mode_from_env(value: Option<&str>, listen: std::net::IpAddr) -> Result<Mode, String> {
    match value {
        None | Some("" | "0") => Ok(Mode::Gateway),
        Some("1") if listen.is_loopback() => Ok(Mode::Echo),
        Some("1") => Err(format!(
            "{TEST_ECHO_ENV}=1 (the test-only WebSocket echo) is refused on server.listen {listen}: it needs a loopback address"
        )),
        Some(v) => Err(format!("{TEST_ECHO_ENV}={v:?}: only 0 or 1 (test-only WebSocket echo)")),
    }
}

/// One WebSocket connection's transport state. Holds no allocation while
/// idle: both buffers are released once empty.
#[derive(Debug, Default)]
pub struct WsState {
    /// Protocol frames decoded from binary messages, for the session.
    pub frames: BytesMut,
    /// A fragmented message being reassembled.
    partial: BytesMut,
    /// A fragmented message is in progress.
    in_message: bool,
    /// Echo mode: the fragmented message in progress is text.
    text: bool,
    /// Echo mode: bytes at the front of `partial` known to be UTF-8.
    utf8_checked: usize,
    mode: Mode,
    /// Bytes at the front of `conn.out` already wrapped in message headers.
    pub framed_len: usize,
    /// Our close frame is written: nothing more goes out, input is discarded.
    pub close_sent: bool,
}

impl WsState {
    /// After the 101: `out_len` bytes of HTTP already wait in `out`.
    pub fn new(out_len: usize, mode: Mode) -> Self {
        WsState { framed_len: out_len, mode, ..WsState::default() }
    }

    /// Decodes every complete client frame in `rbuf`: binary messages are
    /// appended to `frames` (echo mode: data messages are echoed into
    /// `out`), pings answered into `out`, a close echoed. `max_msg` bounds
    /// a message (`max_frame + 4`). On an error, what was decoded before it
    /// stays (echoes in `out` go out before the close).
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
                // §5.4: a data frame other than a continuation inside a
                // fragmented message is a protocol error, text or binary.
                OP_TEXT | OP_BINARY if self.in_message => return Err(WsError::Protocol("new message inside a fragmented one")),
                OP_TEXT if self.mode == Mode::Gateway => return Err(WsError::Text),
                OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
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
                if self.mode == Mode::Echo && !control && (op == OP_TEXT || self.text) {
                    self.check_partial_text(&rbuf[hlen..])?;
                }
                return Ok(Input::Open);
            }
            let mask = [rbuf[hlen], rbuf[hlen + 1], rbuf[hlen + 2], rbuf[hlen + 3]];
            // The body is copied to where it goes and unmasked there, so
            // `rbuf` is only advanced, never split: no shared allocation
            // and no reference count per message.
            let taken = self.take_message(op, fin, &rbuf[hlen + 4..total], mask, out);
            rbuf.advance(total);
            if taken? == Input::Closed {
                rbuf.clear();
                return Ok(Input::Closed);
            }
        }
    }

    /// One complete client frame, still masked: a binary message goes to
    /// `frames`, a fragment to `partial`, a ping's pong and a close's echo
    /// (echo mode: the data) to `out`.
    fn take_message(&mut self, op: u8, fin: bool, body: &[u8], mask: [u8; 4], out: &mut BytesMut) -> Result<Input, WsError> {
        match op {
            OP_PING => {
                // Answered, but not traffic for the heartbeat (WEB.md):
                // the session never sees it.
                self.wrap_out(out);
                put_header(out, OP_PONG, body.len());
                put_unmasked(out, body, mask);
                self.framed_len = out.len();
            }
            OP_PONG => {}
            OP_CLOSE => {
                // Validated before it is echoed (§5.5.1, §7.4, §8.1). A
                // control frame's body is at most 125 bytes (checked on
                // its header).
                let mut buf = [0u8; 125];
                let plain = &mut buf[..body.len().min(125)];
                plain.copy_from_slice(&body[..plain.len()]);
                unmask(plain, mask);
                let code = close_reply(plain)?;
                self.push_close(out, code);
                return Ok(Input::Closed);
            }
            _ if self.mode == Mode::Echo => {
                let mut plain = body.to_vec();
                unmask(&mut plain, mask);
                self.echo(op, fin, &plain, out)?;
            }
            _ if !fin => {
                self.in_message = true;
                put_unmasked(&mut self.partial, body, mask);
            }
            _ if self.in_message => {
                self.in_message = false;
                put_unmasked(&mut self.partial, body, mask);
                let msg = std::mem::take(&mut self.partial);
                if !one_frame(msg.len(), msg.first_chunk::<4>().copied()) {
                    return Err(WsError::NotOneFrame);
                }
                self.frames.extend_from_slice(&msg);
            }
            _ => {
                // The common case, one whole message in one frame: its
                // prefix is checked on the masked bytes, then it is
                // unmasked straight into `frames`.
                let prefix = body.first_chunk::<4>().map(|p| [p[0] ^ mask[0], p[1] ^ mask[1], p[2] ^ mask[2], p[3] ^ mask[3]]);
                if !one_frame(body.len(), prefix) {
                    return Err(WsError::NotOneFrame);
                }
                put_unmasked(&mut self.frames, body, mask);
            }
        }
        Ok(Input::Open)
    }

    /// Echo mode: one unmasked data frame; a whole message goes back into
    /// `out` with the opcode it started with. Text is checked fragment by
    /// fragment, so an invalid sequence fails at once (§8.1), not at the end.
    fn echo(&mut self, op: u8, fin: bool, body: &[u8], out: &mut BytesMut) -> Result<(), WsError> {
        if !self.in_message && fin {
            if op == OP_TEXT && std::str::from_utf8(body).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            self.put_echo(out, op, body);
            return Ok(());
        }
        if !self.in_message {
            (self.in_message, self.text, self.utf8_checked) = (true, op == OP_TEXT, 0);
        }
        self.partial.extend_from_slice(body);
        if self.text && !utf8_prefix_ok(&self.partial, &mut self.utf8_checked, fin) {
            return Err(WsError::InvalidUtf8);
        }
        if fin {
            let msg = std::mem::take(&mut self.partial);
            self.put_echo(out, if self.text { OP_TEXT } else { OP_BINARY }, &msg);
            (self.in_message, self.text) = (false, false);
        }
        Ok(())
    }

    fn put_echo(&mut self, out: &mut BytesMut, op: u8, body: &[u8]) {
        self.wrap_out(out);
        put_header(out, op, body.len());
        out.extend_from_slice(body);
        self.framed_len = out.len();
    }

    /// Echo mode, a text frame not complete yet: fails as soon as the bytes
    /// that arrived cannot be UTF-8, without waiting for the rest of the
    /// frame. `masked` is the frame from its mask key on. Only the test
    /// echo pays for this copy; the gateway refuses text on the header.
    fn check_partial_text(&self, masked: &[u8]) -> Result<(), WsError> {
        let Some((mask, body)) = masked.split_first_chunk::<4>() else { return Ok(()) };
        let mut text = self.partial[self.utf8_checked.min(self.partial.len())..].to_vec();
        text.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        match std::str::from_utf8(&text) {
            Err(e) if e.error_len().is_some() => Err(WsError::InvalidUtf8),
            _ => Ok(()),
        }
    }

    /// Wraps every protocol frame of `out` past `framed_len` in a binary
    /// message header. The frames are our own, so their prefixes are right.
    ///
    /// Once per flush, not per frame: the headers' total is counted first
    /// (four bytes read per frame), then the batch is copied once behind
    /// exactly enough room, with no growth on the way. Output already
    /// wrapped and still unsent (a slow reader's backlog) stays in place.
    pub fn wrap_out(&mut self, out: &mut BytesMut) {
        if out.len() <= self.framed_len || self.close_sent {
            if self.close_sent {
                // Nothing follows a close frame.
                out.truncate(self.framed_len.min(out.len()));
            }
            return;
        }
        let mut headers = 0;
        let mut pos = self.framed_len;
        while pos < out.len() {
            let n = frame_len(&out[pos..]);
            headers += header_len(n);
            pos += n;
        }
        let frames = if self.framed_len == 0 {
            std::mem::take(out)
        } else {
            let tail = BytesMut::from(&out[self.framed_len..]);
            out.truncate(self.framed_len);
            tail
        };
        out.reserve(frames.len() + headers);
        let mut pos = 0;
        while pos < frames.len() {
            let n = frame_len(&frames[pos..]);
            put_header(out, OP_BINARY, n);
            out.extend_from_slice(&frames[pos..pos + n]);
            pos += n;
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
    /// Whenever empty, not only when `capacity() > 0`: the session splits
    /// frames off `frames` up to its end, which leaves it with no capacity
    /// yet still pointing into (and keeping) the allocation the frames came
    /// from, for as long as the connection stays idle.
    pub fn release_idle_buffers(&mut self) {
        if self.frames.is_empty() {
            self.frames = BytesMut::new();
        }
        if self.partial.is_empty() {
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

/// The length of the protocol frame at the front of `b`, prefix included;
/// a frame cut short (never the case for the session's own output) ends at
/// the end of `b`.
fn frame_len(b: &[u8]) -> usize {
    b.first_chunk::<4>().map_or(b.len(), |p| (4 + u32::from_be_bytes(*p) as usize).min(b.len()))
}

/// The bytes of a server frame header for a `len`-byte payload.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Whether a binary message of `len` bytes starting with `prefix` (its
/// first four bytes, unmasked) is exactly one protocol frame (WEB.md).
fn one_frame(len: usize, prefix: Option<[u8; 4]>) -> bool {
    len >= 5 && prefix.is_some_and(|p| u32::from_be_bytes(p) as usize == len - 4)
}

/// Appends `masked` to `dst`, unmasked with `mask` (the body's first byte
/// takes `mask[0]`).
fn put_unmasked(dst: &mut BytesMut, masked: &[u8], mask: [u8; 4]) {
    let at = dst.len();
    dst.extend_from_slice(masked);
    unmask(&mut dst[at..], mask);
}

/// XORs `buf` with the repeating 4-byte `mask` (RFC 6455 §5.3), eight
/// bytes at a time: a word holds the mask twice, so every word starts on a
/// mask boundary and the tail continues where the words stopped.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for w in words {
        *w = (u64::from_ne_bytes(*w) ^ word).to_ne_bytes();
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= mask[i & 3];
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

    /// The session splits every frame off `frames` (as `Bytes`, zero-copy)
    /// up to its very end; the idle connection must then hold nothing:
    /// `frames` kept the message's allocation while it had no capacity left.
    #[test]
    fn idle_buffers_released_after_frames_split_to_the_end() {
        let f = ping_frame();
        let mut rbuf = BytesMut::new();
        rbuf.extend_from_slice(&client_frame(false, OP_BINARY, &f[..3]));
        rbuf.extend_from_slice(&client_frame(true, OP_CONT, &f[3..]));
        rbuf.extend_from_slice(&client_frame(true, OP_BINARY, &f));
        let (mut ws, mut out) = (WsState::new(0, Mode::Gateway), BytesMut::new());
        assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Ok(Input::Open));
        let taken = ws.frames.split_to(ws.frames.len()).freeze();
        assert_eq!(taken.len(), 2 * f.len());
        let unallocated = BytesMut::new().as_ptr();
        ws.release_idle_buffers();
        assert_eq!(ws.frames.as_ptr(), unallocated, "frames still points into the message's allocation");
        assert_eq!(ws.partial.as_ptr(), unallocated, "partial still points into an allocation");
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
        let (mut ws, mut out) = (WsState::new(0, Mode::Gateway), BytesMut::new());
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
            let (mut ws, mut out) = (WsState::new(0, Mode::Gateway), BytesMut::new());
            let mut rbuf = BytesMut::from(&bytes[..]);
            assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Err(want));
        }
        assert_eq!(WsError::NotOneFrame.close_code(), None);
        assert_eq!(WsError::Text.close_code(), Some(1003));
        // A huge 64-bit length is refused on the header alone.
        let mut rbuf = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(WsState::new(0, Mode::Gateway).decode(&mut rbuf, 100, &mut BytesMut::new()), Err(WsError::TooBig));
    }

    #[test]
    fn output_wrapped_once_and_nothing_after_close() {
        let mut out = BytesMut::from(&b"HTTP/1.1 101\r\n\r\n"[..]);
        let mut ws = WsState::new(out.len(), Mode::Gateway);
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

    #[test]
    fn unmask_word_wise_matches_byte_wise() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let want: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
            let mut got = data.clone();
            unmask(&mut got, mask);
            assert_eq!(got, want, "length {len}");
            let mut dst = BytesMut::from(&b"xyz"[..]);
            put_unmasked(&mut dst, &data, mask);
            assert_eq!(&dst[3..], &want[..], "appended after 3 bytes, length {len}");
        }
    }

    /// A frame of `n` bytes (prefix included, n >= 5), its bytes numbered.
    fn proto_frame(n: usize) -> Vec<u8> {
        let mut f = ((n - 4) as u32).to_be_bytes().to_vec();
        f.extend((4..n).map(|i| (i * 31) as u8));
        f
    }

    #[test]
    fn many_messages_of_every_header_size_decode_in_any_split() {
        // Odd sizes (the word-wise unmask's tail), 16-bit lengths, a ping
        // between messages.
        let sizes = [5usize, 6, 13, 64, 125, 126, 127, 200, 1000, 70_000, 9];
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let f = proto_frame(n);
            wire.extend_from_slice(&client_frame_any(&f, [i as u8, 0xa5, 0x5a, 0xff]));
            want.extend_from_slice(&f);
            if i == 3 {
                wire.extend_from_slice(&client_frame(true, OP_PING, b"p"));
            }
        }
        for step in [1usize, 7, 4096, wire.len()] {
            let (mut ws, mut out, mut rbuf) = (WsState::new(0, Mode::Gateway), BytesMut::new(), BytesMut::new());
            for chunk in wire.chunks(step) {
                rbuf.extend_from_slice(chunk);
                assert_eq!(ws.decode(&mut rbuf, 1 << 20, &mut out), Ok(Input::Open));
            }
            assert!(rbuf.is_empty());
            assert!(ws.frames[..] == want[..], "split into {step}-byte reads");
            assert_eq!(&out[..], &[0x8a, 1, b'p']);
        }
    }

    /// A masked binary message of any length (64-bit lengths included).
    fn client_frame_any(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![0x82];
        match payload.len() {
            0..=125 => v.push(0x80 | payload.len() as u8),
            126..=0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    #[test]
    fn wrap_out_frames_every_size_behind_an_unsent_backlog() {
        let sizes = [5usize, 125, 126, 70_000, 6];
        // Already wrapped and still unsent (a blocked write): kept as is.
        let backlog = [0x82u8, 5, 0, 0, 0, 1, 9];
        let mut out = BytesMut::from(&backlog[..]);
        let mut ws = WsState::new(out.len(), Mode::Gateway);
        let mut want = backlog.to_vec();
        for &n in &sizes {
            let f = proto_frame(n);
            out.extend_from_slice(&f);
            let mut h = BytesMut::new();
            put_header(&mut h, OP_BINARY, n);
            assert_eq!(h.len(), header_len(n));
            want.extend_from_slice(&h);
            want.extend_from_slice(&f);
        }
        ws.wrap_out(&mut out);
        assert!(out[..] == want[..]);
        assert_eq!(ws.framed_len, out.len());
        // From an empty backlog (the usual flush).
        let mut out = BytesMut::from(&proto_frame(5)[..]);
        let mut ws = WsState::new(0, Mode::Gateway);
        ws.wrap_out(&mut out);
        assert_eq!(&out[..], &[0x82, 5, 0, 0, 0, 1, 124]);
    }

    fn decode_all(ws: &mut WsState, bytes: &[u8], out: &mut BytesMut) -> Result<Input, WsError> {
        ws.decode(&mut BytesMut::from(bytes), 1 << 20, out)
    }

    #[test]
    fn close_frames_validated_before_the_echo() {
        let with_code = |code: u16, reason: &[u8]| {
            let mut b = code.to_be_bytes().to_vec();
            b.extend_from_slice(reason);
            client_frame(true, OP_CLOSE, &b)
        };
        // Echoed: no body (1000), and every code a peer may send.
        for (bytes, echoed) in [
            (client_frame(true, OP_CLOSE, b""), 1000),
            (with_code(1000, b"bye"), 1000),
            (with_code(1001, "é".as_bytes()), 1001),
            (with_code(1003, b""), 1003),
            (with_code(1007, b""), 1007),
            (with_code(1011, b""), 1011),
            (with_code(1014, b""), 1014),
            (with_code(3000, b""), 3000),
            (with_code(4999, b""), 4999),
        ] {
            let (mut ws, mut out) = (WsState::new(0, Mode::Gateway), BytesMut::new());
            assert_eq!(decode_all(&mut ws, &bytes, &mut out), Ok(Input::Closed), "{bytes:?}");
            assert_eq!(&out[..], &[0x88, 2, (echoed >> 8) as u8, echoed as u8]);
        }
        // Refused: 1002 for the body and the codes, 1007 for the reason.
        let mut refused = vec![(client_frame(true, OP_CLOSE, &[3]), CLOSE_PROTOCOL), (with_code(1000, &[0xff, 0xfe]), CLOSE_INVALID_DATA)];
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            refused.push((with_code(code, b""), CLOSE_PROTOCOL));
        }
        for (bytes, want) in refused {
            for mode in [Mode::Gateway, Mode::Echo] {
                let (mut ws, mut out) = (WsState::new(0, mode), BytesMut::new());
                let err = decode_all(&mut ws, &bytes, &mut out).unwrap_err();
                assert_eq!(err.close_code(), Some(want), "{bytes:?}: {err}");
                assert!(out.is_empty() && !ws.close_sent, "no echo of a bad close");
            }
        }
    }

    #[test]
    fn echo_mode_sends_messages_back_and_checks_text() {
        let (mut ws, mut out) = (WsState::new(0, Mode::Echo), BytesMut::new());
        let mut rbuf = BytesMut::new();
        rbuf.extend_from_slice(&client_frame(true, OP_TEXT, "héllo".as_bytes()));
        rbuf.extend_from_slice(&client_frame(true, OP_BINARY, &[0xff, 0]));
        // "€" (e2 82 ac) cut between fragments, a ping inside the message.
        rbuf.extend_from_slice(&client_frame(false, OP_TEXT, &[b'a', 0xe2]));
        rbuf.extend_from_slice(&client_frame(true, OP_PING, b""));
        rbuf.extend_from_slice(&client_frame(false, OP_CONT, &[0x82]));
        rbuf.extend_from_slice(&client_frame(true, OP_CONT, &[0xac]));
        assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Ok(Input::Open));
        let mut want = vec![0x81, 6];
        want.extend_from_slice("héllo".as_bytes());
        want.extend_from_slice(&[0x82, 2, 0xff, 0, 0x8a, 0, 0x81, 4, b'a', 0xe2, 0x82, 0xac]);
        assert_eq!(&out[..], &want[..]);
        assert!(ws.frames.is_empty(), "nothing reaches the session");

        // Invalid UTF-8 fails on the fragment that has it, before the end.
        let (mut ws, mut out) = (WsState::new(0, Mode::Echo), BytesMut::new());
        let mut rbuf = BytesMut::from(&client_frame(false, OP_TEXT, b"ok")[..]);
        rbuf.extend_from_slice(&client_frame(false, OP_CONT, &[0xed, 0xa0, 0x80]));
        assert_eq!(ws.decode(&mut rbuf, 100, &mut out), Err(WsError::InvalidUtf8));
        // A sequence still cut when the message ends is invalid too.
        let mut ws = WsState::new(0, Mode::Echo);
        assert_eq!(decode_all(&mut ws, &client_frame(true, OP_TEXT, &[b'a', 0xe2, 0x82]), &mut out), Err(WsError::InvalidUtf8));
        let mut ws = WsState::new(0, Mode::Echo);
        let mut two = client_frame(false, OP_TEXT, &[0xe2, 0x82]);
        two.extend_from_slice(&client_frame(true, OP_CONT, b""));
        assert_eq!(decode_all(&mut ws, &two, &mut out), Err(WsError::InvalidUtf8));
        // Inside one frame not yet complete: refused on the bytes that came.
        let mut ws = WsState::new(0, Mode::Echo);
        let frame = client_frame(true, OP_TEXT, &[b'a', b'b', 0xe0, 0x80, b'c', b'd']);
        assert_eq!(decode_all(&mut ws, &frame[..frame.len() - 3], &mut out), Ok(Input::Open), "valid so far");
        assert_eq!(decode_all(&mut ws, &frame[..frame.len() - 2], &mut out), Err(WsError::InvalidUtf8));
        // A new data frame inside a fragmented message: 1002, text or binary.
        for op in [OP_TEXT, OP_BINARY] {
            for mode in [Mode::Gateway, Mode::Echo] {
                let mut ws = WsState::new(0, mode);
                let mut b = client_frame(false, OP_BINARY, &[0, 0]);
                b.extend_from_slice(&client_frame(true, op, b"x"));
                assert_eq!(decode_all(&mut ws, &b, &mut out), Err(WsError::Protocol("new message inside a fragmented one")));
            }
        }
    }

    #[test]
    fn echo_mode_only_from_the_env_on_loopback() {
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(mode_from_env(None, any), Ok(Mode::Gateway));
        assert_eq!(mode_from_env(Some("0"), any), Ok(Mode::Gateway));
        assert_eq!(mode_from_env(Some("1"), lo), Ok(Mode::Echo));
        assert_eq!(mode_from_env(Some("1"), "::1".parse().unwrap()), Ok(Mode::Echo));
        assert!(mode_from_env(Some("1"), any).unwrap_err().contains("loopback"));
        assert!(mode_from_env(Some("1"), "10.0.0.1".parse().unwrap()).is_err());
        assert!(mode_from_env(Some("yes"), lo).is_err());
    }
}
