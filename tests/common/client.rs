//! The test client: TLS (rustls, its own config) or plain TCP to the
//! server under test, frame-level send and receive with the waiting
//! policy of [`super::WAIT`], and raw-socket helpers for malformed input.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::frames::Shown;
use super::{connack, send_to_user, sendack, token, ConnAck, Connect, Frame, Push, SendAck, ServerLog, ALPN, WAIT};

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
    pub(super) log: Option<ServerLog>,
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
