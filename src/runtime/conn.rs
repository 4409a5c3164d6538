//! One connection's transport: non-blocking reads and writes on the raw socket through rustls, with no buffers held while idle.
//!
//! Why our own glue instead of a TLS stream type: a completion-style read
//! (io_uring `recv`) pins a private buffer for as long as the connection is
//! idle, and stream wrappers keep two 16 KiB TLS buffers for life. Here the
//! connection task only waits for *readiness* (`readable()`, an io_uring
//! PollAdd with no buffer attached), then the driver's [`Transport`] does
//! a non-blocking `recv` into the buffer this module lends it, and the
//! driver sends what [`Conn::sendable`] lends it and reports back through
//! [`Conn::on_sent`] (the driver owns the socket; see `transport.rs` and
//! `core/transmit.rs`):
//!
//! - ciphertext is read into `tls_in`; during the handshake whole records
//!   are fed to rustls one at a time, so when the handshake completes rustls
//!   holds no unread bytes and a TLS 1.3 connection is handed off to our own
//!   record layer (`tls_record`), dropping rustls' ~8 KB of state;
//! - plaintext lands in `rbuf`, frames are split off it as `Bytes`
//!   (zero-copy decode), and once `rbuf` is empty its allocation is released;
//! - frames to send are encoded into `out`, sealed into `tls_out` when the
//!   driver asks what to transmit ([`Conn::stage`]), written from there
//!   until the socket pushes back, and both are released once empty.
//!
//! So an idle, authenticated TLS 1.3 connection owns: this struct, the
//! session, ~120 bytes of traffic keys, and a small task future. Measured
//! figures are in docs/measurements.md.

use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Buf, BytesMut};

use crate::proto::ack_wheel::TimerKey;
use crate::proto::session::Session;
use crate::runtime::framing::Framing;
use crate::runtime::tls_record::{self, Opened, Record13, RecordError, TrafficSecrets};
use crate::runtime::transport::{Sock, Transport};

/// Most bytes read from one socket per readiness event, so one busy
/// connection cannot starve the others on its core (the readiness op fires
/// again at once if more is queued).
pub(crate) const READ_BUDGET: usize = 256 * 1024;
/// Read granularity.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Ciphertext buffered at most during the TLS handshake: one largest record
/// plus its 5-byte header. Plaintext handshake records are at most 2^14
/// bytes and every suite rustls offers is an AEAD (at most 256 bytes of
/// expansion, RFC 8446 §5.2; TLS 1.2 AEAD suites add 24), so the 2^14 + 2048
/// that RFC 5246 allows for CBC-era ciphertext is never needed here.
const MAX_HANDSHAKE_BUF: usize = tls_record::MAX_CIPHERTEXT + 5;
/// TLS record header length.
const HEADER_LEN: usize = 5;
/// First read of a handshake: a typical ClientHello (~0.5–2 KB) fits.
const FIRST_HANDSHAKE_READ: usize = 4096;

/// Who the connection belongs to, once CONNECT is accepted on the home core.
#[derive(Debug)]
pub struct Identity {
    pub user: Arc<str>,
    pub device: Arc<str>,
}

/// The TLS state of a connection.
pub enum Tls {
    /// Plain TCP (`tls.enabled = false`).
    Off,
    /// TLS, before the first complete record (the ClientHello) arrived: no
    /// rustls state yet, so an anonymous peer that never completes a record
    /// costs only its buffered bytes.
    Accepting(Arc<rustls::ServerConfig>),
    /// rustls owns the connection: during the handshake, and for life on TLS 1.2.
    Rustls(Box<RustlsConn>),
    /// TLS 1.3 after hand-off: our record layer with the extracted keys.
    Records(Box<Record13>),
}

/// A connection rustls owns, with the TLS 1.3 traffic secrets its key log
/// hook gave up so far (`tls_record::SecretLog`), for the hand-off.
pub struct RustlsConn {
    pub conn: rustls::ServerConnection,
    pub traffic: TrafficSecrets,
}

impl std::ops::Deref for RustlsConn {
    type Target = rustls::ServerConnection;
    fn deref(&self) -> &rustls::ServerConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for RustlsConn {
    fn deref_mut(&mut self) -> &mut rustls::ServerConnection {
        &mut self.conn
    }
}

pub struct Conn {
    /// The driver's name for the socket (`transport::Sock`); None for a
    /// long-poll session, whose bytes travel on its polls' connections.
    pub sock: Option<Sock>,
    pub tls: Tls,
    /// Ciphertext read but not yet processed (a partial record); empty and
    /// unallocated while idle.
    pub tls_in: BytesMut,
    /// Ciphertext sealed but not yet written.
    pub tls_out: BytesMut,
    pub session: Session,
    pub rbuf: BytesMut,
    pub out: BytesMut,
    /// Armed wheel entry and its deadline.
    pub timer: Option<(TimerKey, u64)>,
    pub waker: Option<Waker>,
    /// Set by the core when the task must look at the connection (close,
    /// blocked write); cleared by the task.
    pub woken: bool,
    /// Unsent bytes remain: the task waits for writability.
    pub write_blocked: bool,
    /// Our side has sent FIN (after DISCONNECT).
    pub shut_wr: bool,
    /// FIN is owed once the output drains ([`Conn::prepare_shutdown`]):
    /// the driver's next transmit for the connection is then a FIN.
    pub fin_wanted: bool,
    /// Transport is gone: drop without writing.
    pub dead: bool,
    pub ident: Option<Box<Identity>>,
    /// `limits.send_rate_per_connection`, refilled from `open`.
    pub send_bucket: crate::limits::TokenBucket,
    /// SENDs of this connection awaiting their SENDACK.
    pub sends_in_flight: u32,
    /// When unsent output went above `limits.output_high_water_bytes`
    /// (monotonic ms); 0 = below it.
    pub over_hw_since_ms: u64,
    /// The server's DISCONNECT was counted in the metrics.
    pub close_counted: bool,
    /// What the plaintext carries (native frames, HTTP, WebSocket, SSE,
    /// long-poll): one enum, one interface (`framing`).
    pub framing: Framing,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Peer fault: bad TLS records or handshake.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Peer fault (or a key at its limit): bad record after the hand-off.
    #[error("TLS record: {0}")]
    Record(#[from] RecordError),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EAGAIN)
}

/// Result of draining the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Socket drained (or budget spent); more may come later.
    Open,
    /// The peer closed its side.
    Eof,
}

impl Conn {
    pub fn new(sock: Option<Sock>, tls: Tls, session: Session) -> Self {
        Conn {
            sock,
            tls,
            tls_in: BytesMut::new(),
            tls_out: BytesMut::new(),
            session,
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            timer: None,
            waker: None,
            woken: false,
            write_blocked: false,
            shut_wr: false,
            fin_wanted: false,
            dead: false,
            ident: None,
            send_bucket: crate::limits::TokenBucket::full(0, 0),
            sends_in_flight: 0,
            over_hw_since_ms: 0,
            close_counted: false,
            framing: Framing::Native,
        }
    }

    /// The ALPN protocol the handshake selected, if any.
    pub fn alpn(&self) -> Option<&'static [u8]> {
        let http = match &self.tls {
            Tls::Rustls(t) => t.alpn_protocol().map(|p| p == b"http/1.1"),
            Tls::Records(r) => r.alpn_http,
            Tls::Off | Tls::Accepting(_) => None,
        };
        http.map(|h| if h { &b"http/1.1"[..] } else { crate::tls::ALPN_V1 })
    }

    /// The next deadline of this connection: its framing's with the session's.
    pub fn next_deadline(&self) -> Option<u64> {
        self.framing.deadline(self.session.next_deadline())
    }

    pub fn tls_handshaking(&self) -> bool {
        match &self.tls {
            Tls::Accepting(_) => true,
            Tls::Rustls(t) => t.is_handshaking(),
            _ => false,
        }
    }

    /// Reads what the socket has (up to a budget) and appends the plaintext
    /// to `rbuf`. TLS handshake progress is made here too; its responses are
    /// queued inside rustls and sent by `flush`.
    ///
    /// Reads go into the buffer's spare capacity (never zero-filled first),
    /// and a read shorter than asked means the socket is drained, so no
    /// extra `recv` is paid just to see EAGAIN. While the TLS handshake runs
    /// the ciphertext buffer never grows past one largest TLS 1.2 record
    /// plus its header: an anonymous peer parked in a partial record holds
    /// at most that (~18 KiB), not a growing chain of 16 KiB chunks.
    pub fn read_available<T: Transport + ?Sized>(&mut self, io: &mut T) -> Result<ReadStatus, TransportError> {
        let Some(sock) = self.sock else { return Ok(ReadStatus::Open) };
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                return Ok(ReadStatus::Open);
            }
            let handshaking = self.tls_handshaking();
            let buf = if matches!(self.tls, Tls::Off) { &mut self.rbuf } else { &mut self.tls_in };
            let want = if handshaking {
                // Complete records are consumed as they arrive, so `buf`
                // starts with the record being received: read what its
                // header says is missing (a small first read before the
                // header is known), never past one largest record. The
                // buffer then grows to the record's size only when the
                // peer has sent that much.
                let need = match buf.get(3..5) {
                    Some(l) => HEADER_LEN + u16::from_be_bytes([l[0], l[1]]) as usize,
                    None => FIRST_HANDSHAKE_READ,
                };
                need.max(FIRST_HANDSHAKE_READ).min(MAX_HANDSHAKE_BUF).saturating_sub(buf.len())
            } else {
                READ_CHUNK
            };
            if want == 0 {
                // A full record is buffered and rustls has not taken it:
                // reading more cannot help.
                return Ok(ReadStatus::Open);
            }
            buf.reserve(want);
            let r = recv_into(io, sock, buf, want);
            match r {
                Ok(0) => {
                    self.process_tls_in()?;
                    return Ok(ReadStatus::Eof);
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if self.process_tls_in()? {
                        return Ok(ReadStatus::Eof);
                    }
                    if n < want {
                        return Ok(ReadStatus::Open);
                    }
                }
                Err(e) if would_block(&e) => return Ok(ReadStatus::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Bytes produced but not yet on the socket (frames and sealed records).
    pub fn unsent_bytes(&self) -> usize {
        self.out.len() + self.tls_out.len()
    }

    /// Turns buffered ciphertext into plaintext in `rbuf`. Returns true when
    /// the peer closed TLS (close_notify).
    fn process_tls_in(&mut self) -> Result<bool, TransportError> {
        loop {
            match &mut self.tls {
                Tls::Off => return Ok(false),
                Tls::Accepting(cfg) => {
                    // Only a whole first record creates the rustls state.
                    if self.tls_in.len() >= 2 && !((0x14..=0x17).contains(&self.tls_in[0]) && self.tls_in[1] == 3) {
                        return Err(RecordError::UnexpectedType(self.tls_in[0]).into());
                    }
                    if handshake_record(&self.tls_in)?.is_none() {
                        return Ok(false);
                    }
                    let conn = rustls::ServerConnection::new(cfg.clone())?;
                    self.tls = Tls::Rustls(Box::new(RustlsConn { conn, traffic: TrafficSecrets::default() }));
                }
                Tls::Records(r) => {
                    return Ok(r.open_all(&mut self.tls_in, &mut self.rbuf)? == Opened::CloseNotify);
                }
                Tls::Rustls(tls) => {
                    if self.tls_in.is_empty() {
                        return Ok(false);
                    }
                    // Feed whole records only, so rustls never holds a partial
                    // one when the hand-off happens. Bytes that do not even
                    // look like a TLS record go to rustls at once, so garbage
                    // is refused now, not after the handshake timeout.
                    let looks_tls = self.tls_in.len() < 2 || ((0x14..=0x17).contains(&self.tls_in[0]) && self.tls_in[1] == 3);
                    let complete = if tls.is_handshaking() {
                        handshake_record(&self.tls_in)?
                    } else {
                        // TLS 1.2 for life: rustls reads and judges its
                        // records (and picks its alerts) itself.
                        tls_record::complete_record(&self.tls_in, tls_record::MAX_CIPHERTEXT_TLS12)?
                    };
                    let take = if looks_tls {
                        match complete {
                            Some(n) => n,
                            None => return Ok(false),
                        }
                    } else {
                        self.tls_in.len()
                    };
                    let mut rec = &self.tls_in[..take];
                    while !rec.is_empty() {
                        if tls.read_tls(&mut rec)? == 0 {
                            break;
                        }
                    }
                    let fed = take - rec.len();
                    self.tls_in.advance(fed);
                    // What rustls' key log hook captures during this call
                    // is this connection's (one thread, one call at a time).
                    tls_record::take_captured();
                    let state = tls.process_new_packets();
                    tls.traffic.absorb(tls_record::take_captured());
                    let state = state?;
                    take_plaintext(tls, &mut self.rbuf)?;
                    if state.peer_has_closed() {
                        return Ok(true);
                    }
                    self.try_handoff()?;
                    if fed == 0 {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Once a TLS 1.3 handshake is complete and rustls has written its last
    /// records, replaces rustls by our record layer.
    fn try_handoff(&mut self) -> Result<(), TransportError> {
        let Tls::Rustls(tls) = &mut self.tls else { return Ok(()) };
        if tls.is_handshaking() || tls.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        // rustls' last records (session tickets) go into `tls_out`, ahead of
        // our own, so they leave with the first frames (CONNACK) in one
        // write instead of a `sendmsg` of their own.
        let mut w = BytesMutWriter(&mut self.tls_out);
        while tls.wants_write() {
            tls.write_tls(&mut w)?;
        }
        let alpn_http = tls.alpn_protocol().map(|p| p == b"http/1.1");
        let Tls::Rustls(tls) = std::mem::replace(&mut self.tls, Tls::Off) else { unreachable!() };
        let RustlsConn { conn, traffic } = *tls;
        let secrets = conn.dangerous_extract_secrets()?;
        let mut rec = Record13::new(secrets, &traffic)?;
        rec.alpn_http = alpn_http;
        self.tls = Tls::Records(Box::new(rec));
        Ok(())
    }

    /// Prepares the output for the driver's next write (`core/transmit.rs`):
    /// the TLS hand-off when due, then the framing's wrap, then sealing —
    /// `out` into `tls_out` by our record layer, or rustls' own records
    /// moved into `tls_out`. Returns false when the connection has no
    /// socket (a long-poll session: its output waits in `out` for a poll;
    /// `write_blocked` then says whether anything waits).
    ///
    /// Staged, nothing is on the wire yet: [`Conn::sendable`] lends the
    /// bytes, the driver writes them, [`Conn::on_sent`] takes the count.
    /// Nothing may touch `out` between the stage and the report (the
    /// driver makes no other call into the core in between), which is what
    /// lets `framed_len` stay right.
    ///
    /// The one copy this adds: rustls keeps the records it produces (the
    /// handshake flight; every record of a TLS 1.2 connection) in a buffer
    /// of its own that it only hands to an `io::Write`, so they are copied
    /// into `tls_out` here, as the session tickets were before. A TLS 1.3
    /// connection after the hand-off and plain TCP are sent from their own
    /// buffers, without a copy.
    pub fn stage(&mut self) -> Result<bool, TransportError> {
        self.try_handoff()?;
        if let Some(done) = self.framing.wrap_out(&mut self.out) {
            // A long-poll session has no socket: its output waits for a poll.
            self.write_blocked = !done;
            return Ok(false);
        }
        match &mut self.tls {
            // Plain TCP sends `out` itself; nothing can be written before
            // the handshake (frames wait in `out`).
            Tls::Off | Tls::Accepting(_) => {}
            Tls::Records(r) => r.seal_all(&mut self.out, &mut self.tls_out)?,
            Tls::Rustls(tls) => loop {
                let mut w = BytesMutWriter(&mut self.tls_out);
                while tls.wants_write() {
                    tls.write_tls(&mut w)?;
                }
                if self.out.is_empty() || tls.is_handshaking() {
                    // Frames written before the handshake completes wait in
                    // `out`; rustls would buffer them unencrypted otherwise.
                    break;
                }
                let n = tls.writer().write(&self.out)?;
                self.out.advance(n);
                if n == 0 && !tls.wants_write() {
                    // rustls refused plaintext without queueing anything:
                    // what is left waits for the next stage.
                    break;
                }
            },
        }
        // What is left in `out` was all wrapped.
        self.framing.after_flush(self.out.len());
        Ok(true)
    }

    /// The staged bytes to write now, in order, borrowed from the
    /// connection's own buffers (no copy): the sealed `tls_out`, then on
    /// plain TCP `out` itself. Empty slices when nothing is staged.
    pub fn sendable(&self) -> [&[u8]; 2] {
        let plain: &[u8] = if matches!(self.tls, Tls::Off) { &self.out } else { &[] };
        [&self.tls_out, plain]
    }

    /// Whether staged bytes wait for the socket.
    pub fn has_sendable(&self) -> bool {
        !self.tls_out.is_empty() || (matches!(self.tls, Tls::Off) && !self.out.is_empty())
    }

    /// Everything produced is on the socket (what `flush` used to call
    /// done): nothing staged, nothing waiting to be staged.
    pub fn drained(&self) -> bool {
        self.tls_out.is_empty() && self.out.is_empty()
    }

    /// The driver wrote `n` bytes of [`Conn::sendable`]: they leave the
    /// buffers, which are released once empty.
    pub fn on_sent(&mut self, n: usize) {
        let sealed = n.min(self.tls_out.len());
        self.tls_out.advance(sealed);
        let plain = n - sealed;
        if plain > 0 && matches!(self.tls, Tls::Off) {
            self.out.advance(plain.min(self.out.len()));
            // What is left in `out` was all wrapped before the write.
            self.framing.after_flush(self.out.len());
        }
    }

    /// The write round ended (drained, or the socket pushed back): idle
    /// connections hold no output buffers, and the task learns whether to
    /// wait for writability.
    pub fn write_ended(&mut self) {
        release_if_empty(&mut self.out);
        release_if_empty(&mut self.tls_out);
        self.write_blocked = !self.drained();
    }

    /// Releases the read buffers when no partial frame or record is left.
    pub fn release_idle_buffers(&mut self) {
        release_if_empty(&mut self.rbuf);
        release_if_empty(&mut self.tls_in);
        self.framing.release_idle_buffers();
    }

    /// Half-close after our DISCONNECT, prepared: the transport's close
    /// answer and TLS close_notify go behind what `out` holds, and FIN is
    /// owed once everything drained (`fin_wanted`; the driver sends it as
    /// the connection's last transmit). Idempotent: the close answer and
    /// close_notify are each sealed once.
    pub fn prepare_shutdown(&mut self) {
        if self.shut_wr {
            return;
        }
        // The transport's close answer (a WebSocket close frame, the SSE
        // stream's last chunk) goes ahead of TLS close_notify and FIN.
        self.framing.close_answer(&mut self.out, self.session.close_reason());
        match &mut self.tls {
            Tls::Rustls(tls) => tls.send_close_notify(),
            Tls::Records(r) => {
                // Whatever `out` holds goes first, then the alert (once: a
                // second call after a blocked write seals nothing more).
                if r.seal_all(&mut self.out, &mut self.tls_out).is_err() {
                    self.dead = true;
                } else {
                    r.close_notify(&mut self.tls_out);
                }
            }
            Tls::Off | Tls::Accepting(_) => {}
        }
        if self.sock.is_some() {
            self.fin_wanted = true;
        }
    }

    /// Before the connection closes on a record error: stages the alert it
    /// calls for ([`RecordError::alert`]) for a best-effort write, at most
    /// once per connection, and marks the connection dead. After the
    /// hand-off it is sealed by our record layer (after any bytes still
    /// owed). During a TLS 1.3 handshake whose server flight is out, rustls
    /// already protects what it sends with the server's first application
    /// key, so the alert is sealed under it; before that (and during a TLS
    /// 1.2 handshake) it goes in plaintext. A TLS 1.2 connection after its
    /// handshake gets none (rustls holds those keys; its own errors come
    /// with its own alerts).
    pub fn stage_record_alert(&mut self, err: &RecordError) {
        let Some(desc) = err.alert() else { return };
        let alert = match &mut self.tls {
            Tls::Records(r) => {
                if !r.error_alert(err, &mut self.tls_out) {
                    return;
                }
                None
            }
            Tls::Accepting(_) => Some(tls_record::plaintext_alert(desc).to_vec()),
            Tls::Rustls(t) if t.is_handshaking() => {
                let sealed = t.negotiated_cipher_suite().and_then(|s| t.traffic.handshake_alert(s.suite(), desc));
                Some(sealed.unwrap_or_else(|| tls_record::plaintext_alert(desc).to_vec()))
            }
            Tls::Rustls(_) | Tls::Off => return,
        };
        if let Some(a) = alert {
            self.tls_out.extend_from_slice(&a);
        }
        self.dead = true;
    }

    /// The peer closed (its close_notify, or EOF) and the connection goes:
    /// our own close_notify is staged first, for a best-effort write (RFC
    /// 8446 §6.1: each side sends one before closing its write side),
    /// unless an alert already went out. Frames still owed are sealed
    /// ahead of it, never after.
    pub fn stage_close_notify(&mut self) {
        match &mut self.tls {
            Tls::Records(r) => {
                if r.seal_all(&mut self.out, &mut self.tls_out).is_ok() {
                    r.close_notify(&mut self.tls_out);
                }
            }
            Tls::Rustls(t) if !t.is_handshaking() => {
                // rustls sends it at most once, and never after its own alert.
                t.send_close_notify();
                let mut w = BytesMutWriter(&mut self.tls_out);
                while t.wants_write() {
                    if t.write_tls(&mut w).is_err() {
                        break;
                    }
                }
            }
            Tls::Rustls(_) | Tls::Off | Tls::Accepting(_) => {}
        }
    }

    /// rustls' pending alerts (e.g. after a handshake failure), staged for
    /// a best-effort write.
    pub fn stage_alert(&mut self) {
        if let Tls::Rustls(tls) = &mut self.tls {
            let mut w = BytesMutWriter(&mut self.tls_out);
            while tls.wants_write() {
                if tls.write_tls(&mut w).is_err() {
                    break;
                }
            }
        }
    }
}

/// Drops an empty buffer's allocation. Not only when `capacity() > 0`: a
/// buffer whose frames were split off up to its very end (the CONNECT
/// frame filling the plaintext buffer exactly, as it does) has no capacity
/// left yet still points into its allocation, which then stayed for the
/// connection's life: 208 B per idle connection (the 150-byte block and
/// the `bytes` header it shares, `tests/conn_memory.rs`). Replacing an
/// already unallocated buffer costs nothing.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// `io::Write` into a `BytesMut` (rustls' output, copied into `tls_out`).
struct BytesMutWriter<'a>(&'a mut BytesMut);

impl Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One non-blocking `recv` of at most `want` bytes into `buf`'s spare
/// capacity (which the caller reserved), extending `buf` by what arrived.
fn recv_into<T: Transport + ?Sized>(io: &mut T, sock: Sock, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    // `spare` is writable memory of at least `want` bytes owned by `buf`:
    // the driver receives straight into it (no copy).
    let n = io.recv(sock, &mut spare[..want])?;
    // A transport that claims more than it was lent is a driver bug, and
    // `set_len` past the written bytes would expose uninitialised memory.
    assert!(n <= want, "transport reported {n} bytes received into {want}");
    // SAFETY: recv initialised exactly `n <= want` bytes after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Length of the complete record at the front of `buf` during the
/// handshake, if it is all there. Records of the types that are plaintext
/// while the handshake runs (handshake, alert, change_cipher_spec) are
/// bounded by 2^14 bytes (RFC 8446 §5.1, RFC 5246 §6.2.1), which rustls
/// does not check (it accepts up to 2^14 + 2047); protected ones by
/// 2^14 + 256 (§5.2; rustls would answer bad_record_mac or decode_error
/// instead of record_overflow). Both are `record_overflow` here.
fn handshake_record(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let max = match buf.first() {
        Some(0x14..=0x16) => tls_record::MAX_PLAINTEXT,
        _ => tls_record::MAX_CIPHERTEXT,
    };
    tls_record::complete_record(buf, max)
}

fn take_plaintext(tls: &mut rustls::ServerConnection, rbuf: &mut BytesMut) -> Result<(), TransportError> {
    let mut reader = tls.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(chunk) => {
                let n = chunk.len();
                rbuf.extend_from_slice(chunk);
                reader.consume(n);
            }
            Err(e) if would_block(&e) => return Ok(()),
            // Closed without close_notify: the EOF path reports it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}


#[cfg(test)]
mod tests {
    use std::io;
    use std::mem::MaybeUninit;

    use super::*;
    use crate::proto::session::SessionLimits;
    use crate::runtime::framing::Framing;
    use crate::runtime::web::lp::LpState;
    use crate::runtime::web::Sid;

    /// A transport that must not be used.
    struct NoSocket;

    impl Transport for NoSocket {
        fn recv(&mut self, _: Sock, _: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
            panic!("recv on a connection without a socket")
        }
    }

    /// A long-poll session has no socket: reading never reaches the
    /// driver's transport, and staging its output, a shutdown or an alert
    /// never give the driver anything to write (its bytes travel on the polls).
    #[test]
    fn a_long_poll_session_never_touches_a_transport() {
        let lim = SessionLimits::default();
        let mut c = Conn::new(None, Tls::Off, Session::new(1, &lim));
        c.framing = Framing::LongPoll(Box::new(LpState::new(Sid::new(0))));
        assert_eq!(c.read_available(&mut NoSocket).unwrap(), ReadStatus::Open);
        c.out.extend_from_slice(b"queued for a poll");
        assert!(!c.stage().unwrap(), "no socket to write");
        assert!(c.write_blocked, "the output waits for a poll");
        c.prepare_shutdown();
        c.stage_close_notify();
        c.stage_alert();
        assert!(!c.fin_wanted, "no FIN without a socket");
        assert!(c.tls_out.is_empty());
        assert_eq!(&c.out[..], b"queued for a poll");
    }

    /// The driver writes from the connection's own buffer (no copy), and
    /// what it reports written leaves it; a partial write leaves the rest.
    #[test]
    fn the_driver_sends_from_the_connections_buffer() {
        let lim = SessionLimits::default();
        let mut c = Conn::new(Some(Sock::new(3)), Tls::Off, Session::new(1, &lim));
        c.out.extend_from_slice(b"hello world");
        assert!(c.stage().unwrap());
        let [sealed, plain] = c.sendable();
        assert!(sealed.is_empty());
        assert_eq!(plain.as_ptr(), c.out.as_ptr(), "lent in place, not copied");
        c.on_sent(6);
        assert_eq!(c.sendable()[1], b"world");
        c.on_sent(5);
        assert!(!c.has_sendable() && c.drained());
        c.write_ended();
        assert!(!c.write_blocked);
        assert_eq!(c.out.capacity(), 0, "an empty output buffer is released");
    }

    /// Reads land in the connection's own buffer, lent to the transport.
    #[test]
    fn the_transport_receives_into_the_connections_buffer() {
        struct Once(Vec<u8>, Option<*const u8>);
        impl Transport for Once {
            fn recv(&mut self, _: Sock, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                self.1 = Some(buf.as_ptr().cast());
                let n = self.0.len().min(buf.len());
                for (d, s) in buf.iter_mut().zip(self.0.drain(..n)) {
                    d.write(s);
                }
                Ok(n)
            }
        }
        let lim = SessionLimits::default();
        let mut c = Conn::new(Some(Sock::new(3)), Tls::Off, Session::new(1, &lim));
        let mut t = Once(b"hello".to_vec(), None);
        assert_eq!(c.read_available(&mut t).unwrap(), ReadStatus::Open);
        assert_eq!(&c.rbuf[..], b"hello");
        assert_eq!(t.1, Some(c.rbuf.as_ptr()), "received in place, not copied");
    }
}
