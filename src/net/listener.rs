//! Listener groups: one SO_REUSEPORT listener per worker on the same address, and the open-files limit that caps connections.
//!
//! The kernel hashes each incoming connection's 4-tuple to one listener of
//! the group, so accepts spread over cores with no shared accept queue and
//! no thundering herd. TCP_DEFER_ACCEPT keeps half-open scanners and silent
//! clients out of the accept path until they send their ClientHello.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Why the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot create a socket for {addr}: {source}")]
    Socket { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set {option} on the listener for {addr}: {source}")]
    Option { addr: SocketAddr, option: &'static str, source: std::io::Error },
    #[error("cannot bind {addr}: {source} (is another program using the port?)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Binds `n` listeners on `addr` with SO_REUSEPORT. Port 0 picks a free port
/// once, for the first listener, and binds the rest to the same port.
pub fn bind_group(addr: SocketAddr, n: usize, backlog: u32, defer_accept_s: u32) -> Result<Vec<std::net::TcpListener>, ListenError> {
    let somaxconn = read_somaxconn();
    if let Some(max) = somaxconn {
        if u64::from(backlog) > max {
            tracing::warn!(
                backlog,
                somaxconn = max,
                "server.backlog {backlog} is clamped by net.core.somaxconn = {max}; raise it (see sysctl/) or bursts of connects overflow the accept queue"
            );
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let l = bind_one(at, backlog, defer_accept_s)?;
        if at.port() == 0 {
            at = l.local_addr().map_err(|source| ListenError::Socket { addr, source })?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr, backlog: u32, defer_accept_s: u32) -> Result<std::net::TcpListener, ListenError> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| ListenError::Socket { addr, source })?;
    let opt = |option: &'static str| move |source| ListenError::Option { addr, option, source };
    s.set_reuse_address(true).map_err(opt("SO_REUSEADDR"))?;
    s.set_reuse_port(true).map_err(opt("SO_REUSEPORT"))?;
    if addr.is_ipv6() {
        s.set_only_v6(false).map_err(opt("IPV6_V6ONLY"))?;
    }
    if defer_accept_s > 0 {
        set_defer_accept(&s, defer_accept_s).map_err(opt("TCP_DEFER_ACCEPT"))?;
    }
    s.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
    s.bind(&addr.into()).map_err(|source| ListenError::Bind { addr, source })?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    s.listen(backlog).map_err(|source| ListenError::Listen { addr, source })?;
    Ok(s.into())
}

/// Who already listens on `addr`, if anyone: a bind without SO_REUSEPORT
/// fails exactly when another socket listens there (SO_REUSEADDR keeps
/// TIME_WAIT leftovers out of it). Our own group binds with SO_REUSEPORT
/// and would otherwise join the other process's group silently, splitting
/// connections between two servers.
pub fn port_holder(addr: SocketAddr) -> Option<PortHolder> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).ok()?;
    let _ = s.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    match s.bind(&addr.into()) {
        Ok(()) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(PortHolder::of_port(addr.port())),
        // Another error (permission for a low port, no such address) is
        // for the real bind to report.
        Err(_) => None,
    }
}

/// The processes listening on a port, as /proc shows them: for an error
/// that names the holder and gives only the advice that fits it (a second
/// ringgate may share the port on purpose; nginx may not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// (pid, comm) of each holder found, at most four.
    pub processes: Vec<(u32, String)>,
}

impl PortHolder {
    /// The holders of `port` (LISTEN sockets in /proc/net/tcp{,6}, matched
    /// to a process through the socket inodes its /proc/PID/fd links name).
    pub fn of_port(port: u16) -> PortHolder {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            use std::io::BufRead;
            let Ok(file) = std::fs::File::open(table) else { continue };
            // Streamed, and only the head of it: the kernel lists every
            // listening socket before any other, and with a million
            // connections the whole table is ~150 MB (reading it all made
            // this check take minutes).
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok).skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 3 && f[3] != "0A" {
                    break;
                }
                // local_address is HEXIP:HEXPORT, st 0A = LISTEN, inode is field 9.
                if f.len() > 9 && f[3] == "0A" {
                    if let Some((_, p)) = f[1].rsplit_once(':') {
                        if u16::from_str_radix(p, 16).ok() == Some(port) {
                            inodes.push(format!("socket:[{}]", f[9]));
                        }
                    }
                }
            }
        }
        let mut processes = Vec::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let name = p.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
                let holds = fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
                });
                if holds {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    processes.push((pid, comm.trim().to_string()));
                }
                if processes.len() >= 4 {
                    break;
                }
            }
        }
        PortHolder { processes }
    }

    /// Whether every holder found is a ringgate process (so sharing the
    /// port with it is a zero-downtime restart, not a mistake).
    pub fn is_ringgate(&self) -> bool {
        !self.processes.is_empty() && self.processes.iter().all(|(_, c)| c.starts_with("ringgate"))
    }

    /// How to stop the holders: `kill PID` when they are known.
    pub fn stop_hint(&self) -> String {
        if self.processes.is_empty() {
            "stop the process that listens there (`ss -ltnp` as root names it)".into()
        } else {
            let pids: Vec<String> = self.processes.iter().map(|(p, _)| p.to_string()).collect();
            format!("stop it (`kill {}`)", pids.join(" "))
        }
    }
}

impl std::fmt::Display for PortHolder {
    /// "pid N (comm)", or "another process" when /proc does not show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.processes.is_empty() {
            return f.write_str("another process (not visible to this user)");
        }
        let names: Vec<String> = self.processes.iter().map(|(p, c)| format!("pid {p} ({c})")).collect();
        f.write_str(&names.join(", "))
    }
}

fn set_defer_accept(s: &Socket, secs: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = secs.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: valid fd, pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn read_somaxconn() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

/// File descriptors a server process keeps besides its connections: stdio,
/// the log and secret files, and per worker a listener and a ring or epoll
/// fd. The one figure the startup log, `doctor` and `plan` all subtract.
pub fn server_fd_reserve(workers: u64) -> u64 {
    16 + 2 * workers
}

/// RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft open-files limit to the hard limit (the only raise an
/// unprivileged process may make) and returns the soft limit now in force.
pub fn raise_nofile_soft_limit() -> u64 {
    let (soft, hard) = nofile_limit();
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: valid pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return hard;
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_shares_one_port() {
        let ls = bind_group("127.0.0.1:0".parse().unwrap(), 3, 64, 1).unwrap();
        let p = ls[0].local_addr().unwrap().port();
        assert_ne!(p, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == p));
    }

    #[test]
    fn port_holder_names_this_process() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let who = port_holder(taken.local_addr().unwrap()).expect("a listening port has a holder").to_string();
        assert!(who.contains(&format!("pid {}", std::process::id())), "{who}");
        drop(taken);
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(port_holder(free), None);
    }

    #[test]
    fn busy_port_is_explained() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_group(taken.local_addr().unwrap(), 1, 64, 0).unwrap_err().to_string();
        assert!(e.contains("cannot bind"), "{e}");
    }
}
