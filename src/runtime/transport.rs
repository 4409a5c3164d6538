//! The byte transport under a connection, seen from the core: the driver's name for a socket ([`Sock`]), the non-blocking read the driver performs into the buffer the core lends it ([`Transport`]), and the kernel's writes the server's driver performs for the core's transmits ([`Kernel::send`], [`Kernel::shutdown_write`]).
//!
//! `Core` (routing, dedup, acks) and `Conn` (TLS, frames, buffers) own
//! every buffer but no socket, no syscall and no simulated pipe: the driver
//! of a core owns the sockets.
//!
//! **Reads** stay inside the core's call: the driver hands `Core::on_io`
//! its transport, and the core lends it the spare capacity of the read
//! buffer to `recv` into, so the bytes go from the kernel straight into
//! `rbuf`/`tls_in` (zero-copy). This is rustls' `read_tls(&mut dyn Read)`
//! one level up, generic (`T: Transport + ?Sized`) rather than `dyn`, so
//! the server's core is compiled for [`Kernel`] alone and its `recv` is a
//! direct, inlinable call (push saturation, 2026-12-05: 1.97 µs per
//! message against 2.04 with the core's own transport enum,
//! `bench/results/sansio-ab-2026-12-05/`).
//!
//! **Writes** are the driver's, quinn's way (`core/transmit.rs`): the core
//! queues what each connection has to write, the driver asks for it
//! (`Core::poll_transmit`: the connection's `Sock` and slices of its sealed
//! output, or a FIN), performs it, and reports the result
//! (`Core::on_sent`), in which the core's follow-ups run (advance the
//! buffer, half-close after the flush, wake a blocked task, the
//! slow-consumer clock). So the core needs nothing from a transport but
//! `recv`; `send` and `shutdown_write` are plain functions of the driver
//! (here for the kernel; the simulation's pipes have their own).
//!
//! Three drivers: the monoio worker (`worker.rs`, [`Kernel`]: the fd
//! syscalls with `MSG_DONTWAIT`), the simulation (`core::sim`, its
//! in-memory pipes, which live there and nowhere in the runtime) and the
//! fuzz targets (`crate::fuzzing`, a socket pair through [`Kernel`], or the
//! simulation).
//!
//! What the core needs from a read is small: "nothing now" (`WouldBlock`)
//! and end of stream (`Ok(0)`). Readiness (when to call `Core::on_io`
//! again) and the wake-ups (`Core::wants_write`, `Core::poll_woken`, the
//! ticker's `TICK_MS`) belong to the driver too.
//!
//! A connection names its socket with a [`Sock`], a number the driver gave
//! it at accept (the fd in the server, a pipe index in the simulation) and
//! that the core only hands back: in a transmit, to the transport, and in
//! the `Adopt` of a connection moving to another core. A long-poll session
//! has none (`Conn::sock` is `None`): its input arrives in POSTs and its
//! output leaves in the answers to polls, both on the requests' own
//! connections. Per connection the name costs four bytes (`Option<Sock>`
//! included).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::RawFd;

/// The driver's name for a connection's socket: a kernel fd in the server,
/// an index of the simulation's pipes. `Copy`: it is a name, not an owner
/// (the driver owns the socket and closes it). Stored as the number + 1,
/// so that `Option<Sock>` is four bytes like the number itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock(NonZeroU32);

impl Sock {
    /// The socket numbered `n` (non-negative; an fd or a pipe index).
    pub fn new(n: u32) -> Sock {
        Sock(NonZeroU32::new(n.wrapping_add(1)).unwrap_or(NonZeroU32::MAX))
    }

    /// A kernel socket.
    pub fn from_fd(fd: RawFd) -> Sock {
        Sock::new(fd as u32)
    }

    /// The number the driver gave.
    pub fn get(self) -> u32 {
        self.0.get() - 1
    }

    /// The number as a kernel fd (meaningful to the kernel driver only).
    pub fn fd(self) -> RawFd {
        self.get() as RawFd
    }
}

/// The read a driver performs for the core into the buffer the core lends
/// it. Non-blocking.
pub trait Transport {
    /// Receives into `buf` (spare capacity of one of the connection's
    /// buffers): `Ok(n)` bytes written at its start, `Ok(0)` at end of
    /// stream, `WouldBlock` when nothing is there now.
    fn recv(&mut self, sock: Sock, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize>;
}

/// The kernel's sockets: [`Sock`] is an fd, used only with `MSG_DONTWAIT`
/// (so the fd itself need not be `O_NONBLOCK`; accepted sockets are not).
pub struct Kernel;

impl Transport for Kernel {
    #[inline]
    fn recv(&mut self, sock: Sock, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        let fd = sock.fd();
        if rx_wait::on() {
            return rx_wait::recv(fd, buf.as_mut_ptr().cast(), buf.len());
        }
        // SAFETY: `buf` is writable memory of `buf.len()` bytes; recv
        // writes at most that many, and the driver keeps the fd open while
        // the connection lives.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Kernel {
    /// Sends the slices in order, as much as the socket takes: a short
    /// count or `WouldBlock` is push-back; `BrokenPipe` and the like end
    /// the connection. One slice is a `send`, more a `sendmsg`.
    #[inline]
    pub fn send(sock: Sock, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = sock.fd();
        let n = if let [one] = bufs {
            // SAFETY: `one` is a valid readable slice; MSG_NOSIGNAL turns a
            // closed peer into EPIPE instead of killing the process.
            unsafe { libc::send(fd, one.as_ptr().cast(), one.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
        } else {
            // SAFETY: an all-zero msghdr is valid; iov points at `bufs`,
            // whose layout IoSlice guarantees to match `struct iovec`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
            // SAFETY: msg is initialised above and outlives the call.
            unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Half-closes our side (FIN after whatever was sent).
    pub fn shutdown_write(sock: Sock) {
        // SAFETY: plain syscall on the connection's fd; an error (peer
        // already gone) is harmless because the connection is closing anyway.
        unsafe {
            libc::shutdown(sock.fd(), libc::SHUT_WR);
        }
    }
}

/// The peer address of a kernel socket (the admin API's presence, the
/// fleet engine's record of a connection); the worker installs it as the
/// core's `peer_of`.
pub fn kernel_peer_addr(sock: Sock) -> Option<SocketAddr> {
    // SAFETY: the fd is owned by a live connection for the duration of this
    // call; the borrowed socket is not closed by SockRef.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.fd()) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
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

#[cfg(test)]
mod tests {
    use super::Sock;

    #[test]
    fn a_sock_is_its_number_and_an_absent_one_costs_nothing() {
        assert_eq!(Sock::new(0).get(), 0);
        assert_eq!(Sock::from_fd(7).fd(), 7);
        assert_eq!(std::mem::size_of::<Option<Sock>>(), 4);
    }
}
