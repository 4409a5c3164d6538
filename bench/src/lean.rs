//! The lean idle client: after the TLS handshake and CONNACK a connection is handed off to the server's own TLS 1.3 record layer and kept as one fd plus ~130 bytes of keys.
//!
//! Why: the tokio-rustls client keeps a whole `ClientConnection` (its
//! buffers, the handshake's leftovers) and a registered tokio stream per
//! connection: 13.2 KB of client RSS per idle connection in the 200,000
//! run, 13 GB for a million — more than this machine can give the load
//! generator next to the servers and the kernel. A held connection here is
//! a [`Held`]: the socket (no longer registered with tokio), the traffic
//! keys as `ringgate::runtime::tls_record::Record13` (the same hand-off the
//! server does, through the library; the same checks on every record), the
//! user's index and a few flags. Nothing else is resident; a read that
//! stops mid-record keeps its bytes in a box that exists only then.
//!
//! Held connections are driven without readiness notification: each
//! worker thread sends PINGs to a slice of its connections on a timer and
//! reads (non-blocking `recv`) only from the connections it expects an
//! answer from. An idle connection costs no syscall between its
//! heartbeats, and a thread of 19,000 connections needs no epoll set.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use bytes::BytesMut;
use ringgate::proto::frame::{self, Frame};
use ringgate::runtime::tls_record::{ConnSecretLog, Opened, Record13};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::clientnet::{self, Conn, Kx};
use crate::rgclient;

/// A client TLS config whose connections may hand their keys off after the handshake.
pub fn tls_config(kx: Kx) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*clientnet::tls_config(&[b"ringgate/1"], false, kx)).clone();
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Connects from `src`, runs the TLS handshake and CONNECT/CONNACK with
/// rustls, then keeps only the socket and the traffic keys.
pub async fn establish(dst: SocketAddr, src: Ipv4Addr, tls: &TlsConnector, token: &str, keepalive_s: u16, idx: u32) -> io::Result<Held> {
    let tcp = clientnet::connect_from(dst, src).await?;
    let name = ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!("valid DNS name"));
    // The traffic secrets come from a key log of this connection's own:
    // handshakes interleave on this thread (see `ConnSecretLog`).
    let log = Arc::new(ConnSecretLog::default());
    let mut cfg = (**tls.config()).clone();
    cfg.key_log = log.clone();
    let tls = TlsConnector::from(Arc::new(cfg));
    let mut conn = Conn::Tls(Box::new(tls.connect(name, tcp).await?));
    let mut rbuf = BytesMut::with_capacity(256);
    rgclient::connect_keepalive(&mut conn, &mut rbuf, "d", token, 0, keepalive_s).await?;
    if !rbuf.is_empty() {
        // The server sends nothing after CONNACK until asked; bytes here
        // would be lost by the hand-off.
        return Err(other("data after CONNACK before the hand-off"));
    }
    let Conn::Tls(tls) = conn else { unreachable!("built as TLS above") };
    let (tcp, client) = (*tls).into_inner();
    // The session ticket came before CONNACK (the server sends it with its
    // Finished), so rustls has consumed every handshake record by now.
    let secrets = client.dangerous_extract_secrets().map_err(other)?;
    let rec = Record13::new_client(secrets, &log.take()).map_err(other)?;
    let fd: OwnedFd = tcp.into_std()?.into();
    Ok(Held { fd, rec, idx, flags: 0, ping_at_ds: 0, carry: None })
}

/// Per-thread buffers shared by every held connection of the thread.
pub struct Scratch {
    buf: Vec<u8>,
    wire: BytesMut,
    plain: BytesMut,
}

impl Default for Scratch {
    fn default() -> Self {
        Self { buf: vec![0; 64 * 1024], wire: BytesMut::with_capacity(64 * 1024), plain: BytesMut::with_capacity(64 * 1024) }
    }
}

/// A record or frame cut by a read boundary (rare: answers are ~40 bytes).
struct Carry {
    wire: BytesMut,
    plain: BytesMut,
}

pub const F_DEAD: u8 = 1;
pub const F_AWAIT_PONG: u8 = 2;
pub const F_PUSHED: u8 = 4;
pub const F_ALIVE: u8 = 8;

/// One held connection: socket, keys, user index, state.
pub struct Held {
    fd: OwnedFd,
    rec: Record13,
    /// Global connection index (the user is `prefix + idx`).
    pub idx: u32,
    pub flags: u8,
    /// When the outstanding PING was sent, in deciseconds of the thread's clock.
    pub ping_at_ds: u32,
    carry: Option<Box<Carry>>,
}

/// What one read of a held connection found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub pongs: u32,
    /// Highest PUSH seq seen.
    pub push_seq: u64,
    pub pushes: u32,
}

impl Held {
    /// Seals `f` into one record and writes it without blocking. A short
    /// write is an error: an idle socket's send buffer is empty, and a
    /// record cut in half would corrupt the stream.
    pub fn send(&mut self, f: &Frame, s: &mut Scratch) -> io::Result<()> {
        s.plain.clear();
        s.wire.clear();
        f.encode(&mut s.plain);
        self.rec.seal_all(&mut s.plain, &mut s.wire).map_err(other)?;
        // SAFETY: the pointer and length describe `s.wire`, alive for the call.
        let n = unsafe {
            libc::send(self.fd.as_raw_fd(), s.wire.as_ptr().cast(), s.wire.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != s.wire.len() {
            return Err(other(format!("short write {n} of {}", s.wire.len())));
        }
        Ok(())
    }

    /// Reads whatever has arrived (non-blocking) and decodes its frames.
    /// PONGs and PUSHes are counted; a DISCONNECT, close_notify or EOF is an error.
    pub fn poll(&mut self, s: &mut Scratch) -> io::Result<Got> {
        let (mut wire, mut plain) = match self.carry.take() {
            Some(c) => (c.wire, c.plain),
            None => {
                s.wire.clear();
                s.plain.clear();
                (std::mem::take(&mut s.wire), std::mem::take(&mut s.plain))
            }
        };
        let r = self.poll_into(s, &mut wire, &mut plain);
        if r.is_ok() && (!wire.is_empty() || !plain.is_empty()) {
            self.carry = Some(Box::new(Carry { wire: BytesMut::from(&wire[..]), plain: BytesMut::from(&plain[..]) }));
        }
        wire.clear();
        plain.clear();
        if wire.capacity() >= s.wire.capacity() {
            s.wire = wire;
        }
        if plain.capacity() >= s.plain.capacity() {
            s.plain = plain;
        }
        r
    }

    fn poll_into(&mut self, s: &mut Scratch, wire: &mut BytesMut, plain: &mut BytesMut) -> io::Result<Got> {
        loop {
            // SAFETY: `s.buf` is a live, writable buffer of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), s.buf.as_mut_ptr().cast(), s.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"));
            }
            wire.extend_from_slice(&s.buf[..n as usize]);
            if (n as usize) < s.buf.len() {
                break;
            }
        }
        if self.rec.open_all(wire, plain).map_err(other)? == Opened::CloseNotify {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server sent close_notify"));
        }
        let mut got = Got::default();
        while let Some(f) = frame::decode(plain, rgclient::CLIENT_MAX_FRAME).map_err(other)? {
            match f {
                Frame::Pong { .. } => got.pongs += 1,
                Frame::Push(p) => {
                    got.pushes += 1;
                    got.push_seq = got.push_seq.max(p.seq);
                }
                Frame::Ping { nonce } => self.send(&Frame::Pong { nonce }, s)?,
                Frame::Disconnect { reason, message } => {
                    return Err(other(format!("DISCONNECT({reason}): {}", message.as_str())));
                }
                _ => {}
            }
        }
        Ok(got)
    }

    /// Heap bytes this connection holds beyond its own struct (0 unless a read was cut).
    pub fn carry_bytes(&self) -> usize {
        self.carry.as_ref().map_or(0, |c| std::mem::size_of::<Carry>() + c.wire.capacity() + c.plain.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_connection_is_small() {
        // The bound is 4 KiB of client RSS per connection in all;
        // the struct is the part that scales with connections in user space
        // (most of it is the record layer: keys, and the two traffic
        // secrets a KeyUpdate derives from).
        assert!(std::mem::size_of::<Held>() <= 320, "{}", std::mem::size_of::<Held>());
    }
}
