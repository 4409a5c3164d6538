//! One connection's transport: non-blocking reads and writes on the raw socket through rustls, with no buffers held while idle.
//!
//! Why our own glue instead of a TLS stream type: a completion-style read
//! (io_uring `recv`) pins a private buffer for as long as the connection is
//! idle, and stream wrappers keep two 16 KiB TLS buffers for life. Here the
//! connection task only waits for *readiness* (`readable()`, an io_uring
//! PollAdd with no buffer attached), then this module does non-blocking
//! `recv`/`send` syscalls itself:
//!
//! - ciphertext goes straight into rustls (`read_tls`), plaintext is copied
//!   out into `rbuf`, frames are split off `rbuf` as `Bytes` (zero-copy
//!   decode), and once `rbuf` is empty its allocation is released;
//! - frames to send are encoded into `out`, handed to rustls, written until
//!   the socket pushes back, and `out` is released once empty.
//!
//! So an idle, authenticated connection owns: this struct, the session,
//! rustls' connection state, and a small task future. Measurements are in
//! the README.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::Waker;

use bytes::{Buf, BytesMut};

use crate::proto::ack_wheel::TimerKey;
use crate::proto::session::Session;

/// Most bytes read from one socket per readiness event, so one busy
/// connection cannot starve the others on its core (the readiness op fires
/// again at once if more is queued).
const READ_BUDGET: usize = 256 * 1024;
/// Plaintext read granularity into `rbuf`.
const READ_CHUNK: usize = 16 * 1024;

/// Who the connection belongs to, once CONNECT is accepted on the home core.
#[derive(Debug)]
pub struct Identity {
    pub user: Arc<str>,
    pub device: Arc<str>,
}

pub struct Conn {
    pub fd: RawFd,
    pub tls: Option<Box<rustls::ServerConnection>>,
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
    /// Transport is gone: drop without writing.
    pub dead: bool,
    pub ident: Option<Box<Identity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Peer fault: bad TLS records or handshake.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Non-blocking socket I/O on a raw fd (the fd is O_NONBLOCK).
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes and
        // the fd stays open for the lifetime of the connection.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid readable slice; MSG_NOSIGNAL turns a
        // closed peer into EPIPE instead of killing the process.
        let n = unsafe {
            libc::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid; iov points at `bufs`, whose
        // layout IoSlice guarantees to match `struct iovec`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
        // SAFETY: msg is initialised above and outlives the call.
        let n = unsafe { libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
    pub fn new(fd: RawFd, tls: Option<Box<rustls::ServerConnection>>, session: Session) -> Self {
        Conn {
            fd,
            tls,
            session,
            rbuf: BytesMut::new(),
            out: BytesMut::new(),
            timer: None,
            waker: None,
            woken: false,
            write_blocked: false,
            shut_wr: false,
            dead: false,
            ident: None,
        }
    }

    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads what the socket has (up to a budget) and appends the plaintext
    /// to `rbuf`. TLS handshake progress is made here too; its responses are
    /// queued inside rustls and sent by `flush`.
    pub fn read_available(&mut self) -> Result<ReadStatus, TransportError> {
        let mut budget = READ_BUDGET;
        match self.tls.as_deref_mut() {
            None => loop {
                if budget == 0 {
                    return Ok(ReadStatus::Open);
                }
                let len = self.rbuf.len();
                self.rbuf.resize(len + READ_CHUNK, 0);
                let r = Fd(self.fd).read(&mut self.rbuf[len..]);
                let n = *r.as_ref().unwrap_or(&0);
                self.rbuf.truncate(len + n);
                match r {
                    Ok(0) => return Ok(ReadStatus::Eof),
                    Ok(n) => budget = budget.saturating_sub(n),
                    Err(e) if would_block(&e) => return Ok(ReadStatus::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            },
            Some(tls) => loop {
                if budget == 0 {
                    return Ok(ReadStatus::Open);
                }
                match tls.read_tls(&mut Fd(self.fd)) {
                    Ok(0) => {
                        tls.process_new_packets()?;
                        take_plaintext(tls, &mut self.rbuf)?;
                        return Ok(ReadStatus::Eof);
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        let state = tls.process_new_packets()?;
                        let closed = state.peer_has_closed();
                        take_plaintext(tls, &mut self.rbuf)?;
                        if closed {
                            return Ok(ReadStatus::Eof);
                        }
                    }
                    Err(e) if would_block(&e) => return Ok(ReadStatus::Open),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// Sends `out` (through TLS when on). `Ok(true)`: everything is on the
    /// socket; `Ok(false)`: the socket pushed back, wait for writability.
    pub fn flush(&mut self) -> Result<bool, TransportError> {
        let done = match self.tls.as_deref_mut() {
            None => {
                while !self.out.is_empty() {
                    match Fd(self.fd).write(&self.out) {
                        Ok(n) => self.out.advance(n),
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.out.is_empty()
            }
            Some(tls) => loop {
                while tls.wants_write() {
                    match tls.write_tls(&mut Fd(self.fd)) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if tls.wants_write() {
                    break false;
                }
                if self.out.is_empty() || tls.is_handshaking() {
                    // Frames written before the handshake completes wait in
                    // `out`; rustls would buffer them unencrypted otherwise.
                    break self.out.is_empty();
                }
                let n = tls.writer().write(&self.out)?;
                self.out.advance(n);
                if n == 0 && !tls.wants_write() {
                    // rustls refused plaintext without queueing anything:
                    // nothing to wait for, report as blocked and retry later.
                    break false;
                }
            },
        };
        if self.out.is_empty() && self.out.capacity() > 0 {
            // Idle connections hold no output buffer.
            self.out = BytesMut::new();
        }
        self.write_blocked = !done;
        Ok(done)
    }

    /// Releases the read buffer when no partial frame is left in it.
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Half-closes after our DISCONNECT: TLS close_notify, then FIN.
    pub fn shutdown_write(&mut self) {
        if self.shut_wr {
            return;
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
        }
        if !matches!(self.flush(), Ok(true)) {
            // Unsent bytes remain; FIN goes after them once writable.
            return;
        }
        self.shut_wr = true;
        // SAFETY: plain syscall on our own fd; an error (peer already gone)
        // is harmless because the connection is closing anyway.
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
    }

    /// Sends pending TLS alerts (e.g. after a handshake failure) best-effort.
    pub fn send_alert(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut Fd(self.fd)).is_err() {
                    break;
                }
            }
        }
    }
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
