//! The byte transport under a connection, as a small `Copy` handle: a kernel socket in production, an in-memory pipe of the simulated network in tests.
//!
//! `Conn` (TLS, frames, buffers) and `Core` (routing, dedup, acks) never
//! touch a socket directly: every `recv`, `send` and half-close goes through
//! a [`Transport`]. The handle is a plain enum, like a file descriptor: the
//! `Fd` variant names a socket in the kernel's table, the `Mem` variant
//! (tests only) names a pipe in the calling thread's simulated network
//! (`mem`). So the hot path pays one `match` on a register-sized value, no
//! allocation and no virtual call, and in a release build, where `Mem` does
//! not exist, the match has one arm and the fd path is exactly the syscalls
//! it always was.
//!
//! What the core needs from a transport is small: non-blocking reads that
//! can report "nothing now" (`WouldBlock`) and end of stream (`Ok(0)`),
//! non-blocking writes that can push back (a short write or `WouldBlock`),
//! and a half-close. Readiness (when to call `Core::on_io` again) belongs to
//! the driver, not to the transport: the monoio task polls the socket, the
//! simulation (`core::sim`) looks at its pipes.
//!
//! Other transports of the same core plug in here. A WebSocket already is
//! one at the layer above (its framing wraps the frame bytes inside `Conn`,
//! over an `Fd`); an SSE stream is the same with a different wrapping. A
//! long-poll session outlives the HTTP requests that carry it, so its
//! variant would name a *parked* outbox rather than a socket: writes land in
//! a bounded buffer that reports `WouldBlock` when full (backpressure, and
//! the slow-consumer timer, work unchanged), and a poll request drains it.
//! The core's rules (routing, dedup, fsync-gated SENDACK, migration,
//! replacement, retransmission) see only bytes in and bytes out, and stay
//! as they are for every variant.

use std::io;
use std::os::fd::RawFd;

/// Where a connection's bytes go. `Copy`: it is a name, not an owner (the
/// connection task owns the socket and closes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A socket in the kernel's fd table, used only with MSG_DONTWAIT.
    Fd(RawFd),
    /// A pipe of this thread's simulated network.
    #[cfg(any(test, feature = "sim"))]
    Mem(mem::MemId),
}

impl From<RawFd> for Transport {
    fn from(fd: RawFd) -> Self {
        Transport::Fd(fd)
    }
}

impl Transport {
    /// The socket, for code that must hand it to the kernel or the runtime
    /// (registration, `getpeername`); None for a simulated pipe.
    pub fn raw_fd(self) -> Option<RawFd> {
        match self {
            Transport::Fd(fd) => Some(fd),
            #[cfg(any(test, feature = "sim"))]
            Transport::Mem(_) => None,
        }
    }

    /// Half-closes our side (FIN after whatever was written).
    pub fn shutdown_write(self) {
        match self {
            // SAFETY: plain syscall on our own fd; an error (peer already
            // gone) is harmless because the connection is closing anyway.
            Transport::Fd(fd) => unsafe {
                libc::shutdown(fd, libc::SHUT_WR);
            },
            #[cfg(any(test, feature = "sim"))]
            Transport::Mem(m) => mem::shutdown_write(m),
        }
    }
}

/// Non-blocking receive into `buf`.
#[inline]
pub(crate) fn recv(t: Transport, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    match t {
        Transport::Fd(fd) => {
            if rx_wait::on() {
                return rx_wait::recv(fd, buf.as_mut_ptr().cast(), buf.len());
            }
            // SAFETY: `buf` is writable memory of `buf.len()` bytes; recv
            // writes at most that many, and the fd stays open for the
            // connection's lifetime.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }
        #[cfg(any(test, feature = "sim"))]
        Transport::Mem(m) => mem::recv_uninit(m, buf),
    }
}

/// Stage trace (`RINGGATE_TRACE_STAGES=1`) of the receive side: how long
/// bytes waited in the socket before this worker read them — the kernel's
/// software receive timestamp (`SO_TIMESTAMPNS`, set on the listener and
/// inherited) to our `recv`. That span is the driver's share of a
/// message's latency (completion or readiness delivery, then the task
/// queue), which is what differs between io_uring and epoll; the outbox
/// wait (`core::flush`) is the share after processing. Off in production:
/// one relaxed load per read.
pub mod rx_wait {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::runtime::core::Log2Hist;

    static ON: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static HIST: RefCell<Log2Hist> = RefCell::new(Log2Hist::default());
    }

    pub fn on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    /// Turns the trace on for `listener` (and so for every socket accepted
    /// from it) when the stage trace is on.
    pub fn enable(listener: RawFd) {
        if std::env::var_os("RINGGATE_TRACE_STAGES").is_some_and(|v| v == "1") {
            enable_on(listener);
        }
    }

    fn enable_on(listener: RawFd) {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option value of the declared size.
        let r = unsafe {
            libc::setsockopt(listener, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as _)
        };
        if r == 0 {
            ON.store(true, Ordering::Relaxed);
        }
    }

    /// This thread's histogram (µs), for the worker's trace line.
    pub fn summary() -> String {
        HIST.with(|h| h.borrow().summary())
    }

    #[cfg(test)]
    fn count() -> u64 {
        HIST.with(|h| h.borrow().count())
    }

    /// `recv` with the arrival timestamp of the first byte read.
    /// `buf` must be writable for `len` bytes.
    pub fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
        let mut iov = libc::iovec { iov_base: buf.cast(), iov_len: len };
        let mut ctl = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid; iov and ctl outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&ctl) as _;
        // SAFETY: msg is initialised above.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled msg's control buffer; CMSG_* walk it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
                    let us = (now.tv_sec - ts.tv_sec) * 1_000_000 + (now.tv_nsec - ts.tv_nsec) / 1_000;
                    HIST.with(|h| h.borrow_mut().add(us.max(0) as u64));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(n as usize)
    }

    #[cfg(test)]
    mod tests {
        use std::io::Write;
        use std::os::fd::AsRawFd;

        /// The timestamp set on the listener reaches an accepted socket and
        /// every read with data lands in the histogram, with a wait no
        /// shorter than the time the bytes sat unread.
        #[test]
        fn accepted_sockets_report_how_long_bytes_waited() {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            super::enable_on(l.as_raw_fd());
            assert!(super::on());
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            // The first socket asking for timestamps makes the kernel turn
            // them on from a work item, so the first packets after it may
            // carry none: a few tries, each a fresh packet.
            let stamped = (0..50).any(|_| {
                c.write_all(b"ping").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                let before = super::count();
                let mut buf = [0u8; 16];
                let n = super::recv(s.as_raw_fd(), buf.as_mut_ptr(), buf.len()).unwrap();
                assert_eq!(&buf[..n], b"ping");
                super::count() == before + 1
            });
            assert!(stamped, "no SCM_TIMESTAMPNS on the accepted socket");
            assert!(super::HIST.with(|h| h.borrow().max()) >= 20_000, "{}", super::summary());
        }
    }
}

/// The simulated network: one table of pipes per thread (a simulation runs
/// on one thread and never shares its pipes), addressed by `MemId` the way
/// the kernel's sockets are addressed by fd.
#[cfg(any(test, feature = "sim"))]
pub mod mem {
    use std::cell::RefCell;
    use std::io;

    use bytes::{Buf, BytesMut};

    /// A pipe of this thread's simulated network.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MemId(u32);

    /// Both directions of one simulated connection.
    #[derive(Default)]
    pub struct Pipe {
        /// Client bytes the server has not read yet.
        pub to_server: BytesMut,
        /// The client half-closed: the server reads EOF once `to_server` is empty.
        pub client_fin: bool,
        /// Server bytes the client (the test) has not taken yet.
        pub to_client: BytesMut,
        /// Most bytes `to_client` holds before a server write would block
        /// (the socket send buffer plus the peer's receive window).
        pub capacity: usize,
        /// The server half-closed (FIN after its last byte).
        pub server_fin: bool,
        /// The server dropped the socket (its connection task ended).
        pub closed: bool,
    }

    thread_local! {
        static NET: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    /// Forgets every pipe of this thread (a new simulation starts).
    pub fn reset() {
        NET.with(|n| n.borrow_mut().clear());
    }

    /// A new pipe whose server side may hold `capacity` unread bytes.
    pub fn open(capacity: usize) -> MemId {
        NET.with(|n| {
            let mut n = n.borrow_mut();
            n.push(Pipe { capacity, ..Pipe::default() });
            MemId((n.len() - 1) as u32)
        })
    }

    /// Runs `f` on the pipe (the test's side of it).
    pub fn with<R>(id: MemId, f: impl FnOnce(&mut Pipe) -> R) -> R {
        NET.with(|n| f(&mut n.borrow_mut()[id.0 as usize]))
    }

    /// The server's `recv`: what the client wrote, EOF after its FIN,
    /// `WouldBlock` otherwise.
    pub(crate) fn recv(id: MemId, buf: &mut [u8]) -> io::Result<usize> {
        with(id, |p| {
            if p.to_server.is_empty() {
                return if p.client_fin { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(p.to_server.len());
            buf[..n].copy_from_slice(&p.to_server[..n]);
            p.to_server.advance(n);
            Ok(n)
        })
    }

    /// [`recv`] into memory not yet initialised (a buffer's spare capacity).
    pub(crate) fn recv_uninit(id: MemId, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
        with(id, |p| {
            if p.to_server.is_empty() {
                return if p.client_fin { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(p.to_server.len());
            for (d, s) in buf[..n].iter_mut().zip(&p.to_server[..n]) {
                d.write(*s);
            }
            p.to_server.advance(n);
            Ok(n)
        })
    }

    /// The server's `send`: as much as the capacity leaves room for.
    pub(crate) fn send(id: MemId, buf: &[u8]) -> io::Result<usize> {
        with(id, |p| {
            if p.server_fin || p.closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let room = p.capacity.saturating_sub(p.to_client.len());
            if room == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            p.to_client.extend_from_slice(&buf[..n]);
            Ok(n)
        })
    }

    pub(crate) fn shutdown_write(id: MemId) {
        with(id, |p| p.server_fin = true);
    }
}
