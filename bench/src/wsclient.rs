//! The load generator's WebSocket layer: the `/v1/ws` upgrade and an adapter that carries ringgate frames as one masked binary message each, so every scenario runs over WebSocket unchanged.
//!
//! Why an adapter and not tungstenite's stream: the scenarios are written
//! against a byte stream of ringgate frames (`rgclient`), pipelining
//! several frames per write. The adapter keeps that shape: writes are cut
//! at frame boundaries (each frame's own length prefix) and each frame
//! becomes one binary message (WEB.md: one message = exactly one frame);
//! reads hand back the concatenated payloads of binary messages, which
//! are again a stream of length-prefixed frames. Masking uses a cheap
//! xorshift key per message: the mask only has to be unpredictable to a
//! cache in the path, not secret, and client CPU is the scarce side here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Above this much unsent wire data, writes wait for the socket.
const TX_HIGH_WATER: usize = 256 * 1024;
/// A larger server message is refused (the server's max_frame is 64 KiB).
const MAX_MESSAGE: usize = 1 << 20;

/// The upgrade request for `/v1/ws` with subprotocol `ringgate.v1`.
pub fn upgrade_request(host: &str, key_seed: u64) -> (String, String) {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&key_seed.to_le_bytes());
    k[8..].copy_from_slice(&key_seed.rotate_left(29).to_le_bytes());
    let key = base64_std(&k);
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringgate.v1\r\n\r\n"
    );
    (req, key)
}

fn base64_std(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Sends the upgrade and reads the 101; bytes after the response head stay
/// in the returned stream.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, host: &str, seed: u64) -> io::Result<WsStream<S>> {
    let (req, _key) = upgrade_request(host, seed);
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = BytesMut::with_capacity(512);
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("WebSocket upgrade: response head too large"));
        }
        buf.reserve(512);
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "WebSocket upgrade: closed"));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&c| c == b'\r').unwrap_or(0)]).into_owned();
        return Err(io::Error::other(format!("WebSocket upgrade refused: {line}")));
    }
    buf.advance(end);
    Ok(WsStream::new(s, buf, seed | 1))
}

/// Wraps whole ringgate frames (each with its length prefix) from `pending`
/// into masked binary messages appended to `wire`; a partial frame stays.
pub fn wrap_frames(pending: &mut BytesMut, wire: &mut BytesMut, rng: &mut u64) {
    loop {
        if pending.len() < 4 {
            return;
        }
        let n = 4 + u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if pending.len() < n {
            return;
        }
        let msg = pending.split_to(n);
        wire.put_u8(0x82); // FIN, binary
        match n {
            0..=125 => wire.put_u8(0x80 | n as u8),
            126..=0xffff => {
                wire.put_u8(0x80 | 126);
                wire.put_u16(n as u16);
            }
            _ => {
                wire.put_u8(0x80 | 127);
                wire.put_u64(n as u64);
            }
        }
        // xorshift64
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let key = (*rng as u32).to_be_bytes();
        wire.put_slice(&key);
        let at = wire.len();
        wire.put_slice(&msg);
        for (i, b) in wire[at..].iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
}

/// What one parsed server message meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Payload bytes appended to the plain buffer (binary or continuation).
    Data,
    /// A ping: the pong to send is in the wire buffer.
    Control,
    Close,
}

/// Parses one whole message from `raw` into `plain`; `Ok(None)` when incomplete.
pub fn unwrap_message(raw: &mut BytesMut, plain: &mut BytesMut, wire: &mut BytesMut) -> io::Result<Option<Parsed>> {
    if raw.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (raw[0], raw[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut hdr) = match b1 & 0x7f {
        126 if raw.len() >= 4 => (u16::from_be_bytes([raw[2], raw[3]]) as usize, 4),
        127 if raw.len() >= 10 => (u64::from_be_bytes(raw[2..10].try_into().unwrap_or([0xff; 8])) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "WebSocket message too large"));
    }
    let key = if masked {
        if raw.len() < hdr + 4 {
            return Ok(None);
        }
        hdr += 4;
        Some([raw[hdr - 4], raw[hdr - 3], raw[hdr - 2], raw[hdr - 1]])
    } else {
        None
    };
    if raw.len() < hdr + len {
        return Ok(None);
    }
    raw.advance(hdr);
    let mut payload = raw.split_to(len);
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i & 3];
        }
    }
    match b0 & 0x0f {
        0 | 2 => {
            plain.extend_from_slice(&payload);
            Ok(Some(Parsed::Data))
        }
        8 => Ok(Some(Parsed::Close)),
        9 => {
            // Pong, masked with a zero key (any key is valid for the server).
            wire.put_u8(0x8a);
            wire.put_u8(0x80 | payload.len().min(125) as u8);
            wire.put_slice(&[0, 0, 0, 0]);
            wire.put_slice(&payload[..payload.len().min(125)]);
            Ok(Some(Parsed::Control))
        }
        10 => Ok(Some(Parsed::Control)),
        op => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected WebSocket opcode {op}"))),
    }
}

/// A byte stream of ringgate frames over a WebSocket on `S`.
pub struct WsStream<S> {
    inner: S,
    raw: BytesMut,
    plain: BytesMut,
    pending: BytesMut,
    wire: BytesMut,
    closed: bool,
    rng: u64,
}

impl<S> WsStream<S> {
    pub fn new(inner: S, leftover: BytesMut, seed: u64) -> Self {
        WsStream { inner, raw: leftover, plain: BytesMut::new(), pending: BytesMut::new(), wire: BytesMut::new(), closed: false, rng: seed.max(1) }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes queued wire bytes until done or the socket pushes back.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wire.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.wire) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.wire.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            // Every complete message already read is unwrapped before the
            // caller sees any: a read hands back what one socket read
            // brought, as it does on a TLS connection. Returning one message
            // per read made the push receivers ack (and write, and the
            // server read) once per PUSH instead of once per batch.
            while !me.closed && me.plain.len() < buf.remaining() {
                match unwrap_message(&mut me.raw, &mut me.plain, &mut me.wire)? {
                    Some(Parsed::Data) => {}
                    Some(Parsed::Control) => {
                        // Best effort: a pong goes out with the next write or now.
                        let _ = me.poll_drain(cx);
                    }
                    Some(Parsed::Close) => me.closed = true,
                    None => break,
                }
            }
            if !me.plain.is_empty() {
                let n = me.plain.len().min(buf.remaining());
                buf.put_slice(&me.plain[..n]);
                me.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.closed {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        me.closed = true;
                    } else {
                        me.raw.extend_from_slice(rb.filled());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.wire.len() >= TX_HIGH_WATER {
            match me.poll_drain(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if me.wire.len() >= TX_HIGH_WATER => return Poll::Pending,
                _ => {}
            }
        }
        me.pending.extend_from_slice(buf);
        wrap_frames(&mut me.pending, &mut me.wire, &mut me.rng);
        // Start sending now; what the socket does not take goes on flush.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_std(b""), "");
        assert_eq!(base64_std(b"f"), "Zg==");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"foo"), "Zm9v");
        assert_eq!(base64_std(&[0xfb, 0xff]), "+/8=");
        assert_eq!(upgrade_request("h", 7).1.len(), 24);
    }

    /// Frames wrapped by the client parse back (as the server reads masked
    /// client messages) to the same frames, one message each; a partial
    /// frame waits. Interop with the real server is the bench run itself.
    #[test]
    fn wrapped_frames_are_one_masked_message_each() {
        let mut pending = BytesMut::new();
        let frames: Vec<Vec<u8>> = [3usize, 200, 70_000]
            .iter()
            .map(|&n| {
                let mut f = ((n + 1) as u32).to_be_bytes().to_vec();
                f.push(7);
                f.extend((0..n).map(|i| i as u8));
                f
            })
            .collect();
        for f in &frames {
            pending.extend_from_slice(f);
        }
        pending.extend_from_slice(&[0, 0, 0, 9, 1]); // partial: stays
        let (mut wire, mut rng) = (BytesMut::new(), 42u64);
        wrap_frames(&mut pending, &mut wire, &mut rng);
        assert_eq!(pending.len(), 5);
        // Parse them back as a server would (masked client messages).
        let (mut plain, mut out) = (BytesMut::new(), BytesMut::new());
        for f in &frames {
            assert_eq!(wire[0], 0x82);
            assert!(wire[1] & 0x80 != 0, "client messages are masked");
            assert_eq!(unwrap_message(&mut wire, &mut plain, &mut out).unwrap(), Some(Parsed::Data));
            assert_eq!(&plain[..], &f[..]);
            plain.clear();
        }
        assert!(wire.is_empty() && out.is_empty());
    }

    /// One read hands back every message the socket read brought, as a
    /// TLS read does: the push receivers ack once per read, so a read that
    /// stopped after one message made them ack (and the server read) once
    /// per PUSH, which is what the WebSocket figures measured before.
    #[test]
    fn one_read_returns_every_buffered_message() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let mut wire = Vec::new();
            for i in 0..10u8 {
                wire.extend_from_slice(&[0x82, 6, 0, 0, 0, 2, 7, i]);
            }
            server.write_all(&wire).await.unwrap();
            let mut ws = WsStream::new(client, BytesMut::new(), 1);
            let mut got = BytesMut::with_capacity(4096);
            ws.read_buf(&mut got).await.unwrap();
            assert_eq!(got.len(), 60, "all ten frames in one read");
            assert_eq!(&got[54..], &[0, 0, 0, 2, 7, 9]);
        });
    }

    #[test]
    fn server_messages_unwrap_incrementally() {
        // Unmasked binary, a ping, a close, fed one byte at a time.
        let mut all = vec![0x82, 3, 1, 2, 3, 0x89, 1, 9, 0x88, 0];
        let (mut raw, mut plain, mut wire) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
        let mut seen = Vec::new();
        for b in all.drain(..) {
            raw.put_u8(b);
            while let Some(p) = unwrap_message(&mut raw, &mut plain, &mut wire).unwrap() {
                seen.push(p);
            }
        }
        assert_eq!(seen, vec![Parsed::Data, Parsed::Control, Parsed::Close]);
        assert_eq!(&plain[..], &[1, 2, 3]);
        assert_eq!(&wire[..], &[0x8a, 0x81, 0, 0, 0, 0, 9]);
        let mut text = BytesMut::from(&[0x81u8, 0][..]);
        assert!(unwrap_message(&mut text, &mut plain, &mut wire).is_err());
    }
}
