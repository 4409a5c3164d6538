//! Per-connection socket options, each chosen on purpose and each failure reported by name.
//!
//! - TCP_NODELAY: frames are small and latency-bound; Nagle would hold a
//!   PUSH back behind the previous unacknowledged segment.
//! - SO_KEEPALIVE + TCP_KEEPIDLE/INTVL/CNT: mobile peers vanish without a
//!   FIN (NAT timeouts, radio loss); the kernel finds them even when the
//!   application heartbeat is long.
//! - TCP_USER_TIMEOUT: data we sent that stays unacknowledged this long kills
//!   the connection, instead of the kernel's ~15 minutes of retransmission.
//! - SO_RCVBUF/SO_SNDBUF only when configured: setting them disables the
//!   kernel's autotuning, which is what keeps idle sockets small.
//! - Never SO_LINGER: a linger of 0 would turn our closes into RSTs and lose
//!   the DISCONNECT frame we just wrote.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::ServerConfig;

/// A socket option that could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {option}: {source}")]
pub struct SockOptError {
    pub option: &'static str,
    pub source: std::io::Error,
}

/// The options applied to every accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockOpts {
    pub keepalive_idle_s: u32,
    pub keepalive_interval_s: u32,
    pub keepalive_count: u32,
    pub user_timeout_ms: u32,
    pub recv_buffer_bytes: u32,
    pub send_buffer_bytes: u32,
}

impl SockOpts {
    pub fn from_config(s: &ServerConfig) -> Self {
        Self {
            keepalive_idle_s: s.tcp_keepalive_idle_s,
            keepalive_interval_s: s.tcp_keepalive_interval_s,
            keepalive_count: s.tcp_keepalive_count,
            user_timeout_ms: s.tcp_user_timeout_ms,
            recv_buffer_bytes: s.recv_buffer_bytes,
            send_buffer_bytes: s.send_buffer_bytes,
        }
    }
}

/// Applies `opts` to an accepted stream and makes it non-blocking.
pub fn apply_to_stream(fd: BorrowedFd<'_>, opts: &SockOpts) -> Result<(), SockOptError> {
    apply_to_listener(fd, opts)?;
    SockRef::from(&fd).set_nonblocking(true).map_err(|source| SockOptError { option: "O_NONBLOCK", source })
}

/// Sets the inheritable options (TCP_NODELAY, keepalive, TCP_USER_TIMEOUT,
/// buffer sizes) on a listening socket: Linux copies them into every socket
/// accepted from it, which saves 6–8 `setsockopt` calls per connection.
/// `inherited` then checks one accepted stream.
pub fn apply_to_listener(fd: BorrowedFd<'_>, opts: &SockOpts) -> Result<(), SockOptError> {
    let s = SockRef::from(&fd);
    let e = |option: &'static str| move |source| SockOptError { option, source };
    s.set_nodelay(true).map_err(e("TCP_NODELAY"))?;
    if opts.keepalive_idle_s > 0 {
        let mut ka = TcpKeepalive::new().with_time(Duration::from_secs(opts.keepalive_idle_s.into()));
        if opts.keepalive_interval_s > 0 {
            ka = ka.with_interval(Duration::from_secs(opts.keepalive_interval_s.into()));
        }
        if opts.keepalive_count > 0 {
            ka = ka.with_retries(opts.keepalive_count);
        }
        s.set_tcp_keepalive(&ka).map_err(e("SO_KEEPALIVE/TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT"))?;
    }
    if opts.user_timeout_ms > 0 {
        s.set_tcp_user_timeout(Some(Duration::from_millis(opts.user_timeout_ms.into())))
            .map_err(e("TCP_USER_TIMEOUT"))?;
    }
    if opts.recv_buffer_bytes > 0 {
        s.set_recv_buffer_size(opts.recv_buffer_bytes as usize).map_err(e("SO_RCVBUF"))?;
    }
    if opts.send_buffer_bytes > 0 {
        s.set_send_buffer_size(opts.send_buffer_bytes as usize).map_err(e("SO_SNDBUF"))?;
    }
    Ok(())
}

/// Whether an accepted stream carries the options `apply_to_listener` set
/// (checked once per listener; if not, every stream gets `apply_to_stream`).
pub fn inherited(fd: BorrowedFd<'_>, opts: &SockOpts) -> bool {
    let s = SockRef::from(&fd);
    let ka_ok = opts.keepalive_idle_s == 0
        || (s.keepalive().unwrap_or(false)
            && s.keepalive_time().ok() == Some(Duration::from_secs(opts.keepalive_idle_s.into())));
    let uto_ok = opts.user_timeout_ms == 0
        || s.tcp_user_timeout().ok().flatten() == Some(Duration::from_millis(opts.user_timeout_ms.into()));
    s.nodelay().unwrap_or(false) && ka_ok && uto_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn options_are_applied() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let opts = SockOpts::from_config(&ServerConfig::default());
        apply_to_stream(a.as_fd(), &opts).unwrap();
        let r = SockRef::from(&a);
        assert!(r.nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(r.keepalive_retries().unwrap(), 6);
        assert_eq!(r.tcp_user_timeout().unwrap(), Some(Duration::from_millis(30_000)));
        assert!(r.linger().unwrap().is_none());
        drop(c);
    }

    #[test]
    fn listener_options_are_inherited_by_accepted_streams() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let opts = SockOpts::from_config(&ServerConfig::default());
        apply_to_listener(l.as_fd(), &opts).unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(inherited(a.as_fd(), &opts));
        let r = SockRef::from(&a);
        assert!(r.nodelay().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(r.tcp_user_timeout().unwrap(), Some(Duration::from_millis(30_000)));
        // A stream accepted from a plain listener does not pass the check.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c2 = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (b, _) = plain.accept().unwrap();
        assert!(!inherited(b.as_fd(), &opts));
        drop((c, c2));
    }
}
