//! Reading the live host: sysctls under /proc/sys, io_uring and kTLS probes, memory, cores, rlimits, kernel version.

use super::*;

// ---------------------------------------------------------------------------
// Reading the live host
// ---------------------------------------------------------------------------

/// The sysctl tree.
pub const PROC_SYS: &str = "/proc/sys";

/// What a sysctl read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    Value(String),
    /// No such key in this kernel or network namespace.
    Absent,
    /// Exists but could not be read (write-only key, permissions).
    Unreadable(String),
}

/// Reads one sysctl under `root`, whitespace folded.
pub fn read_sysctl(root: &Path, key: &str) -> Live {
    let path = root.join(relative_proc_path(key));
    match std::fs::read_to_string(&path) {
        Ok(s) => Live::Value(normalize_value(&s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Live::Absent,
        Err(e) => Live::Unreadable(e.to_string()),
    }
}

pub(super) fn read_u64(key: &str) -> Option<u64> {
    match read_sysctl(Path::new(PROC_SYS), key) {
        Live::Value(v) => v.split_whitespace().next()?.parse().ok(),
        _ => None,
    }
}

/// Outcome of the io_uring probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UringProbe {
    /// `io_uring_setup` succeeded.
    pub available: bool,
    /// kernel.io_uring_disabled (0 on, 1 only for io_uring_group, 2 off), if the key exists.
    pub disabled_sysctl: Option<u64>,
    /// The setup error, when it failed.
    pub error: Option<String>,
}

/// `struct io_uring_params` (120 bytes): all zero asks for a default ring.
/// The two offset structs are 40 bytes each, ending in a u64.
#[repr(C)]
#[derive(Default)]
pub(super) struct IoUringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: [u64; 5],
    cq_off: [u64; 5],
}

const _: () = assert!(std::mem::size_of::<IoUringParams>() == 120);

/// Sets up a real 4-entry ring and closes it: the only reliable answer, since
/// seccomp filters, `kernel.io_uring_disabled` and old kernels all fail here
/// in the same place the runtime would.
pub fn probe_io_uring() -> UringProbe {
    let disabled_sysctl = read_u64("kernel.io_uring_disabled");
    let mut p = IoUringParams::default();
    // SAFETY: io_uring_setup(entries, params) reads and writes exactly
    // sizeof(struct io_uring_params) bytes at `params`, which points at our
    // own zeroed, correctly sized (asserted above) and aligned struct.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4 as libc::c_uint, &mut p as *mut IoUringParams) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENOSYS) => " (kernel without io_uring, or a seccomp filter)",
            Some(libc::EPERM) => " (kernel.io_uring_disabled, or a seccomp filter)",
            Some(libc::ENOMEM) => " (RLIMIT_MEMLOCK too low on this kernel: LimitMEMLOCK=infinity)",
            _ => "",
        };
        return UringProbe { available: false, disabled_sysctl, error: Some(format!("io_uring_setup: {e}{why}")) };
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    UringProbe { available: true, disabled_sysctl, error: None }
}

/// Kernel TLS: the `tls` upper-layer protocol is registered or its module loaded.
pub fn ktls_available() -> bool {
    let ulp = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    ulp.split_whitespace().any(|u| u == "tls") || Path::new("/sys/module/tls").exists()
}

pub(super) fn meminfo() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Free memory under this process's memory cgroup limit (v2 `memory.max`,
/// v1 `memory.limit_in_bytes`); None when there is no limit. Limits at or
/// above 2^62 are the kernel's way of writing "unlimited" in v1.
pub(super) fn cgroup_memory_free() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage) = if id == "0" && ctrl.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (read(&format!("{dir}/memory.max")), read(&format!("{dir}/memory.current")))
        } else if ctrl.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (read(&format!("{dir}/memory.limit_in_bytes")), read(&format!("{dir}/memory.usage_in_bytes")))
        } else {
            continue;
        };
        if let Some(limit) = limit {
            if limit < (1u64 << 62) {
                return Some(limit.saturating_sub(usage.unwrap_or(0)));
            }
        }
    }
    None
}

pub(super) fn cores() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

// rlim_t is u64 on 64-bit Linux but u32 on some 32-bit targets; the
// conversions are only useless on the former.
#[allow(clippy::useless_conversion)]
pub(super) fn memlock_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return (0, 0);
    }
    (u64::from(r.rlim_cur), u64::from(r.rlim_max))
}

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// (major, minor) of a release string like "6.8.0-45-generic".
pub(super) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Reads the live limits of this host and process.
pub fn live_limits() -> Limits {
    let (nofile_soft, nofile_hard) = crate::net::listener::nofile_limit();
    let (_, mem_available_bytes) = meminfo();
    let port_range = match read_sysctl(Path::new(PROC_SYS), "net.ipv4.ip_local_port_range") {
        Live::Value(v) => {
            let mut it = v.split_whitespace().map(|x| x.parse::<u64>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
                _ => None,
            }
        }
        _ => None,
    };
    Limits {
        nofile_soft,
        nofile_hard,
        nr_open: read_u64("fs.nr_open"),
        file_max: read_u64("fs.file-max"),
        files_allocated: read_u64("fs.file-nr"),
        mem_available_bytes,
        cgroup_memory_free_bytes: cgroup_memory_free(),
        conntrack_max: read_u64("net.netfilter.nf_conntrack_max"),
        conntrack_count: read_u64("net.netfilter.nf_conntrack_count"),
        local_port_range: port_range,
        workers: cores(),
    }
}

