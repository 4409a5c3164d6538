//! `ringgate doctor`: compares this host's kernel and process limits with a sysctl profile, computes how many connections it can hold, and applies profiles.
//!
//! The profiles are the files in `sysctl/`, embedded at build time, so the
//! binary checks against exactly what the repository documents. The check is
//! split in three so each part can be tested without the live machine:
//!
//! - [`parse_profile`]: sysctl.d text to settings;
//! - [`connection_ceiling`]: a pure function from [`Limits`] (numbers read
//!   from /proc, or given by a test) to the tightest limit and its name;
//! - [`apply_settings`]: writes settings under a sysctl root (`/proc/sys`
//!   for real, a temporary directory in tests).
//!
//! Exit codes: 0 all good; 1 the answer is "no" (the target does not fit, a
//! key could not be written); 2 the command could not do what was asked
//! (unknown profile, unreadable file, not root).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

// ---------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------

/// The embedded profiles, by name. The files in `sysctl/` are the source of
/// truth; `sysctl/README.md` says what each is for.
pub const PROFILES: &[(&str, &str)] = &[
    ("c1m", include_str!("../sysctl/c1m.conf")),
    ("low-latency", include_str!("../sysctl/low-latency.conf")),
    ("loadgen", include_str!("../sysctl/loadgen.conf")),
];

/// The profile checked when none is named: the gateway's production profile.
pub const DEFAULT_PROFILE: &str = "c1m";

/// Keys whose profile value is a floor, not a target: a live value above it
/// is fine and `--apply` never lowers it. systemd (>= 240) raises the first
/// two to their maximum at boot; lowering a queue length or a file limit
/// only ever loses connections.
pub const FLOOR_KEYS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
];

/// One `key = value` line of a sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The key as written, without a leading `-`.
    pub key: String,
    /// The value with runs of whitespace folded to one space (the kernel
    /// prints multi-value keys with tabs; the files use spaces).
    pub value: String,
    /// 1-based line in the file, for messages.
    pub line: usize,
    /// The key was written `-key`: sysctl.d's "a failure to set this is not
    /// an error" (e.g. a key that only exists with a module loaded).
    pub ignore_failure: bool,
}

impl Setting {
    /// The key in dotted form, for lookups and display.
    pub fn canonical_key(&self) -> String {
        canonical_key(&self.key)
    }

    /// The file under a sysctl root (normally `/proc/sys`) holding the key.
    pub fn path_under(&self, root: &Path) -> PathBuf {
        root.join(relative_proc_path(&self.key))
    }
}

/// A named set of settings.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Embedded profile name, or the file's path.
    pub name: String,
    pub settings: Vec<Setting>,
}

/// Why a profile could not be used. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; the profiles are: {known} (or use --profile-file PATH)")]
    Unknown { name: String, known: String },
    #[error("cannot read profile file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} line {line}: {message}")]
    Syntax { origin: String, line: usize, message: String },
    #[error("{origin} sets no keys")]
    Empty { origin: String },
}

/// Looks up an embedded profile by name and parses it.
pub fn embedded_profile(name: &str) -> Result<Profile, ProfileError> {
    let Some((_, text)) = PROFILES.iter().find(|(n, _)| *n == name) else {
        let known = PROFILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        return Err(ProfileError::Unknown { name: name.to_string(), known });
    };
    let origin = format!("sysctl/{name}.conf");
    Ok(Profile { name: name.to_string(), settings: parse_profile(&origin, text)? })
}

/// Reads and parses a sysctl.d file.
pub fn file_profile(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: path.to_path_buf(), source })?;
    let origin = path.display().to_string();
    Ok(Profile { name: origin.clone(), settings: parse_profile(&origin, &text)? })
}

/// Parses sysctl.d text (see sysctl.d(5)): `key = value` lines; lines
/// starting with `#` or `;` are comments; a leading `-` on the key marks a
/// setting whose failure is not an error; a key containing `/` uses slashes
/// as separators. Globs are refused rather than silently matching nothing,
/// and so is a key set twice (in one profile that is always a mistake).
pub fn parse_profile(origin: &str, text: &str) -> Result<Vec<Setting>, ProfileError> {
    let err = |line: usize, message: String| ProfileError::Syntax { origin: origin.to_string(), line, message };
    let mut out: Vec<Setting> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            return Err(err(line, format!("expected `key = value`, found {t:?}")));
        };
        let mut key = k.trim();
        let ignore_failure = key.starts_with('-');
        if ignore_failure {
            key = key[1..].trim_start();
        }
        validate_key(key).map_err(|m| err(line, m))?;
        let value = normalize_value(v);
        if value.is_empty() {
            return Err(err(line, format!("{key} has no value")));
        }
        let canon = canonical_key(key);
        if let Some(first) = out.iter().find(|s| s.canonical_key() == canon) {
            return Err(err(line, format!("{key} is already set on line {}", first.line)));
        }
        out.push(Setting { key: key.to_string(), value, line, ignore_failure });
    }
    if out.is_empty() {
        return Err(ProfileError::Empty { origin: origin.to_string() });
    }
    Ok(out)
}

fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key before `=`".into());
    }
    if key.contains(['*', '?', '[', ']']) {
        return Err(format!("{key}: glob keys are not supported; list each key"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{key:?}: a key has no spaces"));
    }
    // The key becomes a path under /proc/sys: refuse anything that could
    // leave it.
    let rel = relative_proc_path(key);
    if rel.is_empty() || key.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{key}: not a sysctl key (empty or `.`/`..` component)"));
    }
    Ok(())
}

/// The path of a key relative to /proc/sys. sysctl.d(5): if the key uses
/// `/` then dots are literal (interface names like `eth0.100`), otherwise
/// dots separate.
fn relative_proc_path(key: &str) -> String {
    if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    }
}

fn canonical_key(key: &str) -> String {
    key.replace('/', ".")
}

/// Folds whitespace so `4096\t16384` (what /proc prints) equals `4096 16384`.
pub fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_floor_key(canonical: &str) -> bool {
    FLOOR_KEYS.contains(&canonical)
}

/// True when `live` is above `wanted` for a floor key (both single numbers).
fn live_exceeds_floor(canonical: &str, live: &str, wanted: &str) -> bool {
    is_floor_key(canonical)
        && matches!((live.trim().parse::<u128>(), wanted.trim().parse::<u128>()), (Ok(l), Ok(w)) if l > w)
}

// ---------------------------------------------------------------------------
// The connection ceiling (pure)
// ---------------------------------------------------------------------------

/// Which end of the connections this host is: a server accepts them (all on
/// one listening port), a client opens them (one ephemeral port each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Server,
    Client,
}

/// Memory one idle connection costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionCost {
    /// Bytes in the ringgate process (session, record keys, map entries).
    pub process_bytes: u64,
    /// Bytes in the kernel (socket, TCP state, file, dentry, epoll/uring).
    pub kernel_bytes: u64,
}

impl ConnectionCost {
    pub fn total(&self) -> u64 {
        self.process_bytes + self.kernel_bytes
    }
}

/// The default assumption: an idle TLS 1.3 connection after the record-layer
/// hand-off (runtime::tls_record) measured ~3.8 KB in the process; ~3.7 KB
/// of kernel socket state is the usual figure for an idle TCP socket with
/// empty buffers. Traffic adds buffers on top.
pub const IDLE_TLS_CONNECTION: ConnectionCost = ConnectionCost { process_bytes: 3_800, kernel_bytes: 3_700 };

/// File descriptors a process keeps besides connections
/// (`net::listener::server_fd_reserve` for the gateway).
pub fn fd_reserve(side: Side, workers: u64) -> u64 {
    match side {
        Side::Server => crate::net::listener::server_fd_reserve(workers),
        Side::Client => 16,
    }
}

/// Everything the ceiling depends on, as plain numbers. `None` = not
/// present on this host (no conntrack module, no cgroup limit) or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// RLIMIT_NOFILE soft limit of this process.
    pub nofile_soft: u64,
    /// RLIMIT_NOFILE hard limit of this process.
    pub nofile_hard: u64,
    /// fs.nr_open: no process's fd table may grow beyond it.
    pub nr_open: Option<u64>,
    /// fs.file-max: open files on the whole host.
    pub file_max: Option<u64>,
    /// First field of fs.file-nr: files open on the host now.
    pub files_allocated: Option<u64>,
    /// MemAvailable.
    pub mem_available_bytes: Option<u64>,
    /// Memory cgroup limit minus usage, when a limit is set.
    pub cgroup_memory_free_bytes: Option<u64>,
    /// net.netfilter.nf_conntrack_max, when conntrack is loaded.
    pub conntrack_max: Option<u64>,
    /// net.netfilter.nf_conntrack_count.
    pub conntrack_count: Option<u64>,
    /// net.ipv4.ip_local_port_range (low, high).
    pub local_port_range: Option<(u64, u64)>,
    /// Worker threads (one per core by default).
    pub workers: u64,
}

/// One limit on the number of connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Constraint {
    /// Stable identifier for scripts: `open_files_per_process`, `nr_open`,
    /// `file_max`, `memory`, `cgroup_memory`, `conntrack`, `local_ports`.
    pub id: &'static str,
    /// What the limit is, with its number.
    pub name: String,
    /// Connections this limit allows.
    pub connections: u64,
    /// Whether it limits this side at all (ports do not limit a server).
    pub applies: bool,
    /// Why, in words.
    pub note: String,
    /// How to raise it.
    pub fix: String,
}

/// The tightest of the limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ceiling {
    /// Connections this host can hold in one process.
    pub connections: u64,
    /// `id` of the binding constraint.
    pub binding: &'static str,
    /// `name` of the binding constraint.
    pub binding_name: String,
    /// Every constraint considered, in a fixed order.
    pub constraints: Vec<Constraint>,
    pub cost: ConnectionCost,
    pub side: Side,
}

impl Ceiling {
    /// Does `target` fit under every limit that applies?
    pub fn fits(&self, target: u64) -> bool {
        target <= self.connections
    }

    /// The constraints that `target` exceeds, tightest first.
    pub fn short_of(&self, target: u64) -> Vec<&Constraint> {
        let mut v: Vec<&Constraint> = self.constraints.iter().filter(|c| c.applies && c.connections < target).collect();
        v.sort_by_key(|c| c.connections);
        v
    }
}

/// Computes the connection ceiling from the tightest limit. Pure: the live
/// numbers come in through `l`. On a tie the earlier constraint in the list
/// binds (the per-process limit first: it is the one an operator changes).
pub fn connection_ceiling(l: &Limits, cost: ConnectionCost, side: Side) -> Ceiling {
    let reserve = fd_reserve(side, l.workers);
    let per_conn = cost.total().max(1);
    let mut cs: Vec<Constraint> = Vec::new();

    cs.push(Constraint {
        id: "open_files_per_process",
        name: format!("open files per process (RLIMIT_NOFILE hard limit {})", limit_str(l.nofile_hard)),
        connections: l.nofile_hard.saturating_sub(reserve),
        applies: true,
        note: match side {
            Side::Server => format!(
                "one file descriptor per connection, {reserve} kept for listeners, rings and files; ringgate raises its soft limit \
                 ({}) to the hard limit at start. The limit is per process: several processes sharing the port (SO_REUSEPORT) \
                 would each get it, but ringgate is one process, so this is its ceiling. It is this shell's limit; a systemd \
                 service gets LimitNOFILE= instead (systemctl show ringgate -p LimitNOFILE)",
                limit_str(l.nofile_soft)
            ),
            Side::Client => format!(
                "one file descriptor per connection, {reserve} kept for the load generator's own files; raise the soft limit \
                 ({}) to the hard limit before a run (`ulimit -n`). Per process: a generator split over several processes \
                 gets this limit in each",
                limit_str(l.nofile_soft)
            ),
        },
        fix: "raise the hard limit: LimitNOFILE= in the systemd unit (deploy/ringgate.service asks for 4194304), \
              or `ulimit -Hn` as root before starting; it cannot exceed fs.nr_open"
            .into(),
    });
    if let Some(n) = l.nr_open {
        cs.push(Constraint {
            id: "nr_open",
            name: format!("fs.nr_open {}", thousands(n)),
            connections: n.saturating_sub(reserve),
            applies: true,
            note: "no process's file table may grow beyond fs.nr_open, whatever its RLIMIT_NOFILE".into(),
            fix: "raise fs.nr_open (c1m: 4194304), then LimitNOFILE".into(),
        });
    }
    if let Some(max) = l.file_max {
        let used = l.files_allocated.unwrap_or(0);
        cs.push(Constraint {
            id: "file_max",
            name: format!("fs.file-max {} for the whole host ({} open now)", thousands(max), thousands(used)),
            connections: max.saturating_sub(used).saturating_sub(reserve),
            applies: true,
            note: "open files of all processes together; at the limit accept() fails with ENFILE for every program on the host".into(),
            fix: "raise fs.file-max (c1m: 8388608)".into(),
        });
    }
    if let Some(avail) = l.mem_available_bytes {
        cs.push(Constraint {
            id: "memory",
            name: format!("memory: {} available at ~{} per connection", human_bytes(avail), human_bytes_short(per_conn)),
            connections: avail / per_conn,
            applies: true,
            note: format!(
                "MemAvailable divided by the assumed cost of an idle TLS connection ({} in ringgate + {} in the kernel); \
                 traffic adds socket buffers on top",
                human_bytes_short(cost.process_bytes),
                human_bytes_short(cost.kernel_bytes)
            ),
            fix: "more memory, or fewer bytes per connection".into(),
        });
    }
    if let Some(free) = l.cgroup_memory_free_bytes {
        cs.push(Constraint {
            id: "cgroup_memory",
            name: format!("memory cgroup: {} left under its limit", human_bytes(free)),
            connections: free / per_conn,
            applies: true,
            note: "this shell's memory cgroup has a limit; the service's own cgroup (MemoryMax=) may differ".into(),
            fix: "raise MemoryMax= of the service (or memory.max / memory.limit_in_bytes of its cgroup)".into(),
        });
    }
    if let Some(max) = l.conntrack_max {
        let used = l.conntrack_count.unwrap_or(0);
        cs.push(Constraint {
            id: "conntrack",
            name: format!("net.netfilter.nf_conntrack_max {} ({} tracked now)", thousands(max), thousands(used)),
            connections: max.saturating_sub(used),
            applies: true,
            note: "connection tracking is loaded: every TCP connection needs an entry and a full table drops new SYNs".into(),
            fix: "exempt the gateway port from tracking (nft `notrack`, or iptables -t raw ... -j NOTRACK), or raise nf_conntrack_max".into(),
        });
    }
    if let Some((lo, hi)) = l.local_port_range {
        let ports = hi.saturating_sub(lo) + u64::from(hi >= lo);
        let (name, applies, note) = match side {
            Side::Server => (
                format!("ephemeral ports {lo}-{hi} ({})", thousands(ports)),
                false,
                "limits clients, not a server: accepted connections all share the listening port, so this only bounds \
                 the gateway's own outgoing connections per destination",
            ),
            Side::Client => (
                format!("ephemeral ports {lo}-{hi} ({}) per source IP and server address", thousands(ports)),
                true,
                "each outgoing connection takes one local port for its (source IP, server address) pair",
            ),
        };
        cs.push(Constraint {
            id: "local_ports",
            name,
            connections: ports,
            applies,
            note: note.into(),
            fix: "widen net.ipv4.ip_local_port_range (loadgen: 1024 65535), then add source IPs or server ports".into(),
        });
    }

    // The open-files constraint always exists and applies, so there is a minimum.
    let mut best = 0usize;
    for (i, c) in cs.iter().enumerate() {
        if c.applies && c.connections < cs[best].connections {
            best = i;
        }
    }
    Ceiling {
        connections: cs[best].connections,
        binding: cs[best].id,
        binding_name: cs[best].name.clone(),
        constraints: cs,
        cost,
        side,
    }
}

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

fn read_u64(key: &str) -> Option<u64> {
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
struct IoUringParams {
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

fn meminfo() -> (Option<u64>, Option<u64>) {
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
fn cgroup_memory_free() -> Option<u64> {
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

fn cores() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

// rlim_t is u64 on 64-bit Linux but u32 on some 32-bit targets; the
// conversions are only useless on the former.
#[allow(clippy::useless_conversion)]
fn memlock_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return (0, 0);
    }
    (u64::from(r.rlim_cur), u64::from(r.rlim_max))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// (major, minor) of a release string like "6.8.0-45-generic".
fn kernel_version(release: &str) -> Option<(u32, u32)> {
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

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// How a row compares with the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    /// Live equals the profile.
    Ok,
    /// A floor key above the profile: fine.
    Above,
    /// Live differs from the profile.
    Differs,
    /// Not in this kernel or network namespace.
    Absent,
    /// Exists but unreadable.
    Unreadable,
    /// A fact about the host (no profile value).
    Info,
    /// A fact that limits ringgate.
    Warn,
}

impl RowStatus {
    fn label(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::Above => "above",
            RowStatus::Differs => "DIFFERS",
            RowStatus::Absent => "absent",
            RowStatus::Unreadable => "UNREADABLE",
            RowStatus::Info => "-",
            RowStatus::Warn => "WARN",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub key: String,
    pub live: String,
    pub profile: Option<String>,
    pub status: RowStatus,
    pub consequence: String,
}

/// Facts the consequences are phrased with.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub mem_total_bytes: Option<u64>,
    pub files_allocated: Option<u64>,
    pub side: Option<Side>,
}

/// Compares one profile setting with its live value.
pub fn compare_row(s: &Setting, live: &Live, ctx: &Context) -> Row {
    let key = s.canonical_key();
    let (live_str, status, consequence) = match live {
        Live::Absent => (
            "(absent)".to_string(),
            RowStatus::Absent,
            "not in this kernel or network namespace: nothing to check (sysctl --system would report it)".to_string(),
        ),
        Live::Unreadable(e) => (format!("(unreadable: {e})"), RowStatus::Unreadable, String::new()),
        Live::Value(v) => {
            let status = if *v == s.value {
                RowStatus::Ok
            } else if live_exceeds_floor(&key, v, &s.value) {
                RowStatus::Above
            } else {
                RowStatus::Differs
            };
            (v.clone(), status, explain(&key, v, ctx))
        }
    };
    Row { key, live: live_str, profile: Some(s.value.clone()), status, consequence }
}

fn nums(v: &str) -> Vec<u64> {
    v.split_whitespace().filter_map(|x| x.parse().ok()).collect()
}

/// The consequence of a live value, in words. Unknown keys get none.
pub fn explain(key: &str, v: &str, ctx: &Context) -> String {
    let n = nums(v);
    let first = n.first().copied();
    let k = key.rsplit('.').next().unwrap_or(key);
    match (key, first) {
        ("fs.file-max", Some(x)) => match ctx.files_allocated {
            Some(used) => format!(
                "{} open files on the whole host, {} open now: ~{} more connections before accept() fails with ENFILE",
                thousands(x),
                thousands(used),
                thousands(x.saturating_sub(used))
            ),
            None => format!("{} open files on the whole host", thousands(x)),
        },
        ("fs.nr_open", Some(x)) => format!("no process can be given more than {} open files (caps LimitNOFILE)", thousands(x)),
        ("net.core.somaxconn", Some(x)) => {
            if x < 4096 {
                format!("accept queue at most {x} per listener: server.backlog 4096 is clamped; reconnect bursts overflow")
            } else {
                format!("accept queue at most {} per listener (server.backlog is clamped to it)", thousands(x))
            }
        }
        ("net.ipv4.tcp_max_syn_backlog", Some(x)) => format!(
            "with SYN cookies off, SYNs from new peers are dropped beyond ~{} half-open connections",
            thousands(x / 4 * 3)
        ),
        ("net.ipv4.tcp_syncookies", Some(0)) => "no SYN cookies: a full SYN queue drops new connections (a SYN flood is an outage)".into(),
        ("net.ipv4.tcp_syncookies", Some(1)) => "SYN cookies when the SYN queue overflows: floods and storms still connect".into(),
        ("net.ipv4.tcp_syncookies", Some(_)) => "SYN cookies always: every connection loses some TCP options".into(),
        ("net.ipv4.tcp_abort_on_overflow", Some(0)) => {
            "full accept queue: the handshake's last ACK is dropped and retried, a burst costs latency, not connections".into()
        }
        ("net.ipv4.tcp_abort_on_overflow", Some(_)) => {
            "full accept queue: clients get RST (\"connection reset\") and come back as a second storm".into()
        }
        ("net.core.netdev_max_backlog", Some(x)) => {
            format!("{} packets per CPU wait for TCP; a burst beyond is dropped (/proc/net/softnet_stat column 2)", thousands(x))
        }
        ("net.ipv4.tcp_mem", _) if n.len() == 3 => {
            let page = 4096u64;
            let pct = ctx.mem_total_bytes.filter(|t| *t > 0).map(|t| format!(" ({}% of RAM)", n[2] * page * 100 / t)).unwrap_or_default();
            format!(
                "all TCP buffers: pressure at {}, refused above {}{pct}; one ~2 KB PUSH queued on every socket reaches pressure at ~{} connections",
                human_bytes(n[1] * page),
                human_bytes(n[2] * page),
                thousands(n[1] * page / 2048)
            )
        }
        ("net.ipv4.tcp_rmem", _) | ("net.ipv4.tcp_wmem", _) if n.len() == 3 => format!(
            "{} buffer per socket starts at {}, autotunes up to {}; limits, not allocated while idle",
            if k == "tcp_rmem" { "receive" } else { "send" },
            human_bytes(n[1]),
            human_bytes(n[2])
        ),
        ("net.ipv4.tcp_max_orphans", Some(x)) => format!(
            "beyond {} closed-but-unfinished sockets the kernel resets them and clients miss the DISCONNECT",
            thousands(x)
        ),
        ("net.ipv4.tcp_fin_timeout", Some(x)) => format!("a connection we closed waits {x} s in FIN_WAIT_2 for a vanished peer"),
        ("net.ipv4.tcp_tw_reuse", Some(0)) => "outgoing connections never reuse TIME_WAIT ports".into(),
        ("net.ipv4.tcp_tw_reuse", Some(1)) => "outgoing connections reuse TIME_WAIT ports when timestamps allow".into(),
        ("net.ipv4.tcp_tw_reuse", Some(_)) => "TIME_WAIT ports are reused on loopback only".into(),
        ("net.ipv4.tcp_max_tw_buckets", Some(x)) => format!(
            "beyond {} TIME_WAIT sockets the kernel drops them early (at most ~{} of memory)",
            thousands(x),
            human_bytes(x * 250)
        ),
        ("net.ipv4.ip_local_port_range", _) if n.len() == 2 => {
            let ports = thousands(n[1].saturating_sub(n[0]) + 1);
            match ctx.side {
                Some(Side::Client) => format!("at most {ports} connections per (source IP, server address)"),
                _ => format!("{ports} ephemeral ports for outgoing connections; does not limit accepted connections"),
            }
        }
        ("net.ipv4.tcp_keepalive_time", Some(x)) => {
            format!("first keepalive probe after {x} s idle, for sockets without their own (ringgate sets its own)")
        }
        ("net.ipv4.tcp_keepalive_intvl", Some(x)) => format!("{x} s between keepalive probes"),
        ("net.ipv4.tcp_keepalive_probes", Some(x)) => format!("{x} unanswered probes close the socket"),
        ("net.ipv4.tcp_slow_start_after_idle", Some(0)) => "congestion window kept across idle periods".into(),
        ("net.ipv4.tcp_slow_start_after_idle", Some(_)) => {
            "after an idle RTO the window restarts at 10 segments: a burst after idle takes extra round trips".into()
        }
        ("net.ipv4.tcp_notsent_lowat", Some(x)) if x >= u64::from(u32::MAX) => {
            "no limit: unsent data queues up to the send buffer and new PUSHes wait behind it".into()
        }
        ("net.ipv4.tcp_notsent_lowat", Some(x)) => {
            format!("at most {} unsent per socket before it stops being writable", human_bytes(x))
        }
        ("net.ipv4.tcp_autocorking", Some(0)) => "small writes go out at once".into(),
        ("net.ipv4.tcp_autocorking", Some(_)) => "small writes may wait for an earlier packet still queued (throughput over latency)".into(),
        ("net.ipv4.tcp_thin_linear_timeouts", Some(0)) => "a loss on a thin stream waits for a doubling RTO".into(),
        ("net.ipv4.tcp_thin_linear_timeouts", Some(_)) => "first 6 retransmissions of thin streams use linear timeouts".into(),
        ("net.ipv4.tcp_timestamps", Some(0)) => "no TCP timestamps: tcp_tw_reuse cannot work".into(),
        ("net.ipv4.tcp_timestamps", Some(_)) => "TCP timestamps on (tcp_tw_reuse relies on them)".into(),
        _ => String::new(),
    }
}

/// The whole check, as printed or serialized.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub profile: String,
    pub kernel: String,
    pub rows: Vec<Row>,
    pub limits: Limits,
    pub ceiling: Ceiling,
    pub assumption: String,
    pub target: Option<TargetVerdict>,
}

/// Whether `--target-connections` fits.
#[derive(Debug, Clone, Serialize)]
pub struct TargetVerdict {
    pub connections: u64,
    pub fits: bool,
    /// Constraints below the target, tightest first (their ids).
    pub short_of: Vec<&'static str>,
}

/// "No limit" as getrlimit reports it, widened (see `memlock_limit`).
#[allow(clippy::unnecessary_cast)]
const RLIM_INFINITY: u64 = libc::RLIM_INFINITY as u64;

fn limit_str(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".into()
    } else {
        thousands(v)
    }
}

/// Builds the report from the live host.
pub fn check(profile: &Profile, target: Option<u64>) -> Report {
    let limits = live_limits();
    let side = side_of(profile);
    let ceiling = connection_ceiling(&limits, IDLE_TLS_CONNECTION, side);
    let (mem_total, mem_avail) = meminfo();
    let kernel = kernel_release();
    let ctx = Context { mem_total_bytes: mem_total, files_allocated: limits.files_allocated, side: Some(side) };
    let mut rows = Vec::new();

    let reserve = fd_reserve(side, limits.workers);
    let per_proc = limits.nofile_hard.saturating_sub(reserve);
    rows.push(Row {
        key: "RLIMIT_NOFILE".into(),
        live: format!("soft {}, hard {}", limit_str(limits.nofile_soft), limit_str(limits.nofile_hard)),
        profile: None,
        status: if target.is_some_and(|t| per_proc < t) { RowStatus::Warn } else { RowStatus::Info },
        consequence: format!(
            "open files {} per process: at most ~{} connections per process (this shell's limit; the service gets LimitNOFILE=)",
            limit_str(limits.nofile_hard),
            thousands(per_proc)
        ),
    });
    let (ml_soft, ml_hard) = memlock_limit();
    let old_kernel = kernel_version(&kernel).is_some_and(|v| v < (5, 12));
    rows.push(Row {
        key: "RLIMIT_MEMLOCK".into(),
        live: format!("soft {}, hard {}", limit_bytes(ml_soft), limit_bytes(ml_hard)),
        profile: None,
        status: RowStatus::Info,
        consequence: if old_kernel {
            "this kernel (< 5.12) charges io_uring rings to it: use LimitMEMLOCK=infinity or rings fail with ENOMEM".into()
        } else {
            "io_uring rings are charged to the memory cgroup on this kernel (>= 5.12); LimitMEMLOCK=infinity covers older ones".into()
        },
    });
    rows.push(Row {
        key: "memory".into(),
        live: format!(
            "{} available of {}",
            mem_avail.map(human_bytes).unwrap_or_else(|| "?".into()),
            mem_total.map(human_bytes).unwrap_or_else(|| "?".into())
        ),
        profile: None,
        status: RowStatus::Info,
        consequence: match mem_avail {
            Some(a) => format!(
                "~{} idle TLS connections at ~{} each (assumed)",
                thousands(a / IDLE_TLS_CONNECTION.total()),
                human_bytes_short(IDLE_TLS_CONNECTION.total())
            ),
            None => "/proc/meminfo unreadable".into(),
        },
    });
    rows.push(Row {
        key: "cores".into(),
        live: limits.workers.to_string(),
        profile: None,
        status: RowStatus::Info,
        consequence: format!("{} workers with server.workers = 0 (one per core, each its own listener and ring)", limits.workers),
    });
    let uring = probe_io_uring();
    let disabled = uring.disabled_sysctl.map(|d| format!("; kernel.io_uring_disabled = {d}")).unwrap_or_default();
    rows.push(Row {
        key: "io_uring".into(),
        live: if uring.available { format!("available{disabled}") } else { format!("unavailable{disabled}") },
        profile: None,
        status: if uring.available { RowStatus::Info } else { RowStatus::Warn },
        consequence: match &uring.error {
            None => "server.driver = \"auto\" runs on io_uring".into(),
            Some(e) => format!("{e}: ringgate falls back to epoll, and server.driver = \"uring\" refuses to start"),
        },
    });
    let ktls = ktls_available();
    rows.push(Row {
        key: "kernel TLS".into(),
        live: if ktls { "available".into() } else { "not loaded".into() },
        profile: None,
        status: RowStatus::Info,
        consequence: if ktls {
            "the tls ULP is registered; ringgate seals records in user space today (runtime::tls_record) and does not need it".into()
        } else {
            "not needed: ringgate seals TLS records in user space (runtime::tls_record); `modprobe tls` enables it for offload".into()
        },
    });
    if let Some(max) = limits.conntrack_max {
        rows.push(Row {
            key: "net.netfilter.nf_conntrack_max".into(),
            live: thousands(max),
            profile: None,
            status: if target.is_some_and(|t| max < t) { RowStatus::Warn } else { RowStatus::Info },
            consequence: "connection tracking is loaded: one entry per connection, a full table drops SYNs".into(),
        });
    }

    let root = Path::new(PROC_SYS);
    for s in &profile.settings {
        rows.push(compare_row(s, &read_sysctl(root, &s.key), &ctx));
    }

    let assumption = format!(
        "an idle TLS connection costs ~{} in ringgate (measured after the TLS record hand-off) + ~{} in the kernel = ~{}; \
         traffic adds socket buffers",
        human_bytes_short(IDLE_TLS_CONNECTION.process_bytes),
        human_bytes_short(IDLE_TLS_CONNECTION.kernel_bytes),
        human_bytes_short(IDLE_TLS_CONNECTION.total())
    );
    let target = target.map(|t| TargetVerdict {
        connections: t,
        fits: ceiling.fits(t),
        short_of: ceiling.short_of(t).iter().map(|c| c.id).collect(),
    });
    Report { profile: profile.name.clone(), kernel, rows, limits, ceiling, assumption, target }
}

/// The loadgen profile describes a client; everything else a server.
pub fn side_of(profile: &Profile) -> Side {
    if profile.name == "loadgen" {
        Side::Client
    } else {
        Side::Server
    }
}

/// The report as the table an operator reads.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ringgate doctor: profile {}, kernel {}, {} side", r.profile, r.kernel, side_word(r.ceiling.side));
    let _ = writeln!(o);
    let headers = ["KEY", "LIVE", "PROFILE", "STATUS", "CONSEQUENCE"];
    let cells: Vec<[String; 5]> = r
        .rows
        .iter()
        .map(|row| {
            [
                row.key.clone(),
                row.live.clone(),
                row.profile.clone().unwrap_or_else(|| "-".into()),
                row.status.label().to_string(),
                row.consequence.clone(),
            ]
        })
        .collect();
    let mut w = [0usize; 4];
    for (i, h) in headers.iter().take(4).enumerate() {
        w[i] = h.len();
    }
    for c in &cells {
        for i in 0..4 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |o: &mut String, c: [&str; 5]| {
        let _ = writeln!(o, "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}", c[0], c[1], c[2], c[3], c[4], w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3]);
    };
    line(&mut o, headers);
    for c in &cells {
        line(&mut o, [&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }

    let c = &r.ceiling;
    let _ = writeln!(o);
    let _ = writeln!(o, "Connection ceiling of this host (one ringgate process):");
    let width = c.constraints.iter().map(|x| thousands(x.connections).len()).max().unwrap_or(0).max(11);
    for x in &c.constraints {
        let n = if x.applies { thousands(x.connections) } else { "n/a".into() };
        let mark = if x.id == c.binding { "   <- binding" } else { "" };
        let _ = writeln!(o, "  {n:>width$}  {}{mark}", x.name);
        let _ = writeln!(o, "  {:>width$}  {}", "", x.note);
    }
    let _ = writeln!(o, "Assumption: {}.", r.assumption);
    let _ = writeln!(o, "Ceiling: ~{} connections.", thousands(c.connections));
    let _ = writeln!(o, "Binding constraint: {}.", c.binding_name);
    if let Some(t) = &r.target {
        if t.fits {
            let _ = writeln!(
                o,
                "Target {}: fits ({} to spare).",
                thousands(t.connections),
                thousands(c.connections - t.connections)
            );
        } else {
            let _ = writeln!(
                o,
                "Target {}: DOES NOT FIT, short by {}. To fit, raise:",
                thousands(t.connections),
                thousands(t.connections - c.connections)
            );
            for x in c.short_of(t.connections) {
                let _ = writeln!(o, "  - {} (allows {}): {}", x.name, thousands(x.connections), x.fix);
            }
        }
    }
    let differs = r.rows.iter().filter(|x| x.status == RowStatus::Differs).count();
    if differs > 0 {
        let _ = writeln!(
            o,
            "{differs} key(s) differ from the profile; apply with `ringgate doctor --apply {}` (root), or install the file in /etc/sysctl.d.",
            r.profile
        );
    }
    o
}

fn side_word(s: Side) -> &'static str {
    match s {
        Side::Server => "server",
        Side::Client => "client",
    }
}

// ---------------------------------------------------------------------------
// Applying a profile
// ---------------------------------------------------------------------------

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Changed { old: String, new: String },
    Unchanged { value: String },
    /// A floor key already above the profile: left alone.
    KeptHigher { live: String, profile: String },
    /// Not in this kernel or network namespace: reported, not fatal.
    Absent,
    Failed { old: Option<String>, wanted: String, error: String },
}

/// One key's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub key: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The setting was marked `-key`: a failure is reported, not fatal.
    pub ignore_failure: bool,
}

impl Applied {
    /// A failure that makes the command exit non-zero.
    pub fn is_fatal(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. }) && !self.ignore_failure
    }
}

/// Writes each setting under `root` (normally `/proc/sys`), reading the old
/// value first and the stored value after, so a kernel that silently
/// adjusts a value is caught. Every key is tried; nothing stops at the first
/// failure, so the report is complete.
pub fn apply_settings(root: &Path, settings: &[Setting]) -> Vec<Applied> {
    settings
        .iter()
        .map(|s| {
            let key = s.canonical_key();
            let outcome = apply_one(root, s, &key);
            Applied { key, outcome, ignore_failure: s.ignore_failure }
        })
        .collect()
}

fn apply_one(root: &Path, s: &Setting, key: &str) -> Outcome {
    let path = s.path_under(root);
    let old = match read_sysctl(root, &s.key) {
        Live::Absent => return Outcome::Absent,
        Live::Unreadable(e) => {
            return Outcome::Failed { old: None, wanted: s.value.clone(), error: format!("cannot read {}: {e}", path.display()) }
        }
        Live::Value(v) => v,
    };
    if old == s.value {
        return Outcome::Unchanged { value: old };
    }
    if live_exceeds_floor(key, &old, &s.value) {
        return Outcome::KeptHigher { live: old, profile: s.value.clone() };
    }
    // No O_CREAT: a key that vanished between the read and the write is a
    // failure, not a new file. O_TRUNC is what sysctl(8) does too.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, s.value.as_bytes()));
    if let Err(e) = written {
        return Outcome::Failed { old: Some(old), wanted: s.value.clone(), error: e.to_string() };
    }
    match read_sysctl(root, &s.key) {
        Live::Value(now) if now == s.value => Outcome::Changed { old, new: now },
        Live::Value(now) => Outcome::Failed {
            old: Some(old),
            wanted: s.value.clone(),
            error: format!("the kernel accepted the write but stores {now:?}"),
        },
        other => Outcome::Failed { old: Some(old), wanted: s.value.clone(), error: format!("cannot read back: {other:?}") },
    }
}

/// The apply results as lines for an operator.
pub fn render_apply(profile: &Profile, results: &[Applied]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ringgate doctor --apply {}: {} keys through {PROC_SYS}", profile.name, results.len());
    let w = results.iter().map(|r| r.key.len()).max().unwrap_or(0);
    let mut counts = [0usize; 5];
    for r in results {
        let (i, tag, text) = match &r.outcome {
            Outcome::Changed { old, new } => (0, "changed", format!("{old} -> {new}")),
            Outcome::Unchanged { value } => (1, "unchanged", value.clone()),
            Outcome::KeptHigher { live, profile } => {
                (2, "kept", format!("{live} (above the profile's {profile}; this limit is never lowered)"))
            }
            Outcome::Absent => (3, "absent", "not in this kernel or network namespace (not an error)".to_string()),
            Outcome::Failed { old, wanted, error } => (
                4,
                if r.ignore_failure { "failed (ignored)" } else { "FAILED" },
                format!("{} -> {wanted}: {error}", old.as_deref().unwrap_or("?")),
            ),
        };
        counts[i] += 1;
        let _ = writeln!(o, "  {tag:<16} {:<w$}  {text}", r.key);
    }
    let ignored = results.iter().filter(|r| r.ignore_failure && matches!(r.outcome, Outcome::Failed { .. })).count();
    let ignored = if ignored > 0 { format!(" ({ignored} ignored: marked `-key`)") } else { String::new() };
    let _ = writeln!(
        o,
        "{} changed, {} unchanged, {} kept, {} absent, {} failed{ignored}.",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
    if counts[0] > 0 {
        let _ = writeln!(
            o,
            "These values last until reboot; to keep them install the profile in /etc/sysctl.d/ (see sysctl/README.md)."
        );
    }
    o
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// `ringgate doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit status: 0 all good; 1 the target does not fit, or a key could not be written; \
2 the command could not run (unknown profile, unreadable file, --apply without root).\n\
Profiles are the files in sysctl/ (see sysctl/README.md), embedded in the binary.")]
pub struct DoctorArgs {
    /// Embedded profile to compare with: c1m (default), low-latency or loadgen.
    #[arg(long, value_name = "NAME", conflicts_with = "profile_file")]
    pub profile: Option<String>,
    /// A sysctl.d file to use instead of an embedded profile.
    #[arg(long, value_name = "PATH")]
    pub profile_file: Option<PathBuf>,
    /// Exit 1 unless this many connections fit under every limit of this host.
    #[arg(long, value_name = "N")]
    pub target_connections: Option<u64>,
    /// Print the report (or the apply results) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the profile through /proc/sys (root only): `--apply NAME`, or
    /// `--apply` with --profile / --profile-file. Exit 1 if a key failed.
    #[arg(long, value_name = "PROFILE", num_args = 0..=1, conflicts_with = "target_connections")]
    #[allow(clippy::option_option)]
    pub apply: Option<Option<String>>,
}

/// Resolves the one profile the arguments name.
fn selected_profile(a: &DoctorArgs) -> Result<Profile, String> {
    let from_apply = a.apply.as_ref().and_then(|x| x.as_deref());
    match (from_apply, a.profile.as_deref(), a.profile_file.as_deref()) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("name the profile once: `--apply NAME`, or `--apply` with --profile NAME / --profile-file PATH".into())
        }
        (Some(name), None, None) | (None, Some(name), None) => embedded_profile(name).map_err(|e| e.to_string()),
        (None, None, Some(path)) => file_profile(path).map_err(|e| e.to_string()),
        (None, None, None) => {
            if a.apply.is_some() {
                Err("--apply needs a profile: `--apply c1m`, or `--apply --profile-file PATH`".into())
            } else {
                embedded_profile(DEFAULT_PROFILE).map_err(|e| e.to_string())
            }
        }
        (None, Some(_), Some(_)) => Err("--profile and --profile-file exclude each other".into()),
    }
}

/// Runs `ringgate doctor`.
pub fn run(a: DoctorArgs) -> ExitCode {
    let profile = match selected_profile(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringgate doctor: {e}");
            return ExitCode::from(2);
        }
    };
    if a.apply.is_some() {
        return run_apply(&profile, a.json);
    }
    let report = check(&profile, a.target_connections);
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ringgate doctor: cannot serialize the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_text(&report));
    }
    match &report.target {
        Some(t) if !t.fits => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn run_apply(profile: &Profile, json: bool) -> ExitCode {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let install = if PROFILES.iter().any(|(n, _)| *n == profile.name) {
            format!("sudo cp sysctl/{0}.conf /etc/sysctl.d/60-ringgate-{0}.conf && sudo sysctl --system", profile.name)
        } else {
            format!("sudo cp {} /etc/sysctl.d/ && sudo sysctl --system", profile.name)
        };
        eprintln!(
            "ringgate doctor: --apply writes /proc/sys and must run as root (effective uid is {euid}); nothing was changed.\n\
             Run it with sudo, or install the profile for every boot: {install}"
        );
        return ExitCode::from(2);
    }
    let results = apply_settings(Path::new(PROC_SYS), &profile.settings);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            profile: &'a str,
            results: &'a [Applied],
            failed: usize,
        }
        let failed = results.iter().filter(|r| r.is_fatal()).count();
        match serde_json::to_string_pretty(&Out { profile: &profile.name, results: &results, failed }) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("ringgate doctor: cannot serialize the results: {e}"),
        }
    } else {
        print!("{}", render_apply(profile, &results));
    }
    if results.iter().any(Applied::is_fatal) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------
// Number formatting
// ---------------------------------------------------------------------------

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Binary units with one decimal: "23.2 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Decimal kilobytes for per-connection costs, as they are usually quoted: "3.8 KB".
fn human_bytes_short(b: u64) -> String {
    format!("{:.1} KB", b as f64 / 1000.0)
}

fn limit_bytes(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".into()
    } else {
        human_bytes(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nr_open: Some(1_048_576),
            file_max: Some(2_466_174),
            files_allocated: Some(174),
            mem_available_bytes: Some(24 * 1024 * 1024 * 1024),
            cgroup_memory_free_bytes: None,
            conntrack_max: None,
            conntrack_count: None,
            local_port_range: Some((32_768, 60_999)),
            workers: 2,
        }
    }

    fn setting(key: &str, value: &str) -> Setting {
        Setting { key: key.into(), value: value.into(), line: 1, ignore_failure: false }
    }

    // --- parsing ---

    #[test]
    fn parses_keys_values_and_comments() {
        let text = "# comment\n; also a comment\n\n  net.core.somaxconn = 4096  \nnet.ipv4.tcp_rmem=4096\t16384   2097152\n-net.netfilter.nf_conntrack_max = 5\nnet/ipv4/conf/eth0.100/rp_filter = 1\n";
        let s = parse_profile("t", text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Setting { key: "net.core.somaxconn".into(), value: "4096".into(), line: 4, ignore_failure: false });
        assert_eq!(s[1].value, "4096 16384 2097152");
        assert_eq!(s[1].line, 5);
        assert!(s[2].ignore_failure);
        assert_eq!(s[2].key, "net.netfilter.nf_conntrack_max");
        // Slash form: dots are literal (VLAN interface names).
        assert_eq!(s[3].path_under(Path::new("/proc/sys")), Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"));
        assert_eq!(s[0].path_under(Path::new("/proc/sys")), Path::new("/proc/sys/net/core/somaxconn"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let cases = [
            ("a.b = 1\nnot a setting\n", 2, "expected `key = value`"),
            ("= 5\n", 1, "empty key"),
            ("net.core.somaxconn =   \n", 1, "has no value"),
            ("net.ipv4.conf.*.rp_filter = 1\n", 1, "glob"),
            ("net/../../etc/passwd = x\n", 1, "not a sysctl key"),
            ("/etc/passwd = x\n", 1, "not a sysctl key"),
            ("net..core = 1\n", 1, "not a sysctl key"),
            ("a.b = 1\n# x\na/b = 2\n", 3, "already set on line 1"),
        ];
        for (text, line, needle) in cases {
            match parse_profile("f.conf", text) {
                Err(ProfileError::Syntax { line: l, message, origin }) => {
                    assert_eq!(origin, "f.conf");
                    assert_eq!(l, line, "{text:?}: {message}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
        assert!(matches!(parse_profile("e", "# only comments\n"), Err(ProfileError::Empty { .. })));
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let e = embedded_profile("c10m").unwrap_err().to_string();
        assert!(e.contains("c10m") && e.contains("c1m, low-latency, loadgen"), "{e}");
    }

    #[test]
    fn embedded_profiles_parse_and_document_every_key() {
        for (name, text) in PROFILES {
            let p = embedded_profile(name).unwrap();
            assert!(!p.settings.is_empty(), "{name}");
            for s in &p.settings {
                assert!(!s.key.contains("tw_recycle"), "{name} sets {}", s.key);
            }
            // Every setting sits in a paragraph that starts with a comment
            // (a few related keys may share one), so none is unexplained.
            let lines: Vec<&str> = text.lines().collect();
            for s in &p.settings {
                let mut i = s.line - 1;
                loop {
                    assert!(i > 0, "{name}: {} has no comment above it", s.key);
                    i -= 1;
                    let l = lines[i].trim();
                    assert!(!l.is_empty(), "{name}: {} (line {}) has no comment above it", s.key, s.line);
                    if l.starts_with('#') {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn c1m_has_the_keys_the_issue_asks_for_and_keeps_abort_on_overflow_off() {
        let p = embedded_profile("c1m").unwrap();
        let get = |k: &str| p.settings.iter().find(|s| s.key == k).map(|s| s.value.clone());
        for k in [
            "fs.file-max",
            "fs.nr_open",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.tcp_mem",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_max_tw_buckets",
            "net.ipv4.ip_local_port_range",
            "net.core.netdev_max_backlog",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.tcp_abort_on_overflow",
        ] {
            assert!(get(k).is_some(), "c1m lacks {k}");
        }
        assert_eq!(get("net.ipv4.tcp_abort_on_overflow").as_deref(), Some("0"));
        // LimitNOFILE in deploy/ringgate.service must fit under fs.nr_open.
        let nr_open: u64 = get("fs.nr_open").unwrap().parse().unwrap();
        let unit = include_str!("../deploy/ringgate.service");
        let nofile: u64 = unit
            .lines()
            .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
            .expect("unit sets LimitNOFILE")
            .parse()
            .unwrap();
        assert!(nofile <= nr_open, "LimitNOFILE={nofile} > fs.nr_open={nr_open}");
    }

    #[test]
    fn low_latency_only_sets_namespaced_net_keys() {
        // tests/doctor.rs applies it inside a network namespace and checks
        // the host is untouched; fs.*, vm.* or kernel.* keys would leak.
        for s in embedded_profile("low-latency").unwrap().settings {
            assert!(s.key.starts_with("net.ipv4.tcp_"), "{}", s.key);
        }
    }

    // --- ceiling ---

    #[test]
    fn open_files_bind_on_a_20k_host() {
        let c = connection_ceiling(&limits(), IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!(c.binding, "open_files_per_process");
        assert_eq!(c.connections, 20_000 - 16 - 2 * 2);
        assert!(c.binding_name.contains("20,000"), "{}", c.binding_name);
        assert!(!c.fits(1_000_000));
        assert!(c.fits(19_980));
        assert!(!c.fits(19_981));
        // fs.nr_open (1,048,576) holds a million; only the rlimit is short.
        assert_eq!(c.short_of(1_000_000).iter().map(|x| x.id).collect::<Vec<_>>(), ["open_files_per_process"]);
        assert_eq!(c.short_of(1_100_000).iter().map(|x| x.id).collect::<Vec<_>>(), ["open_files_per_process", "nr_open"]);
    }

    #[test]
    fn memory_binds_when_limits_are_raised() {
        let mut l = limits();
        l.nofile_hard = 4_194_304;
        l.nr_open = Some(4_194_304);
        l.file_max = Some(8_388_608);
        l.mem_available_bytes = Some(7_500 * 1_000_000 + 7_499);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!(c.binding, "memory");
        assert_eq!(c.connections, 1_000_000);
        assert!(c.fits(1_000_000));
        assert!(!c.fits(1_000_001));
        // A different per-connection cost moves the ceiling proportionally.
        let c2 = connection_ceiling(&l, ConnectionCost { process_bytes: 11_300, kernel_bytes: 3_700 }, Side::Server);
        assert_eq!(c2.connections, 500_000);
    }

    #[test]
    fn file_max_counts_files_already_open() {
        let mut l = limits();
        l.nofile_hard = 10_000_000;
        l.nr_open = Some(10_000_000);
        l.file_max = Some(100_000);
        l.files_allocated = Some(30_000);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!(c.binding, "file_max");
        assert_eq!(c.connections, 100_000 - 30_000 - 20);
    }

    #[test]
    fn nr_open_binds_when_the_hard_limit_is_unlimited() {
        let mut l = limits();
        l.nofile_hard = RLIM_INFINITY;
        l.nofile_soft = RLIM_INFINITY;
        l.nr_open = Some(50_000);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!(c.binding, "nr_open");
        assert!(c.constraints[0].name.contains("unlimited"));
    }

    #[test]
    fn a_tie_names_the_per_process_limit() {
        let mut l = limits();
        l.nr_open = Some(20_000);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!(c.binding, "open_files_per_process");
    }

    #[test]
    fn cgroup_and_conntrack_count_when_present() {
        let mut l = limits();
        l.nofile_hard = 4_194_304;
        l.cgroup_memory_free_bytes = Some(75_000_000);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!((c.binding, c.connections), ("cgroup_memory", 10_000));
        l.conntrack_max = Some(9_000);
        l.conntrack_count = Some(1_000);
        let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        assert_eq!((c.binding, c.connections), ("conntrack", 8_000));
    }

    #[test]
    fn ports_limit_a_client_not_a_server() {
        let mut l = limits();
        l.nofile_hard = 4_194_304;
        l.nr_open = Some(4_194_304);
        let server = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
        let ports = server.constraints.iter().find(|c| c.id == "local_ports").unwrap();
        assert!(!ports.applies);
        assert!(ports.note.contains("not a server"), "{}", ports.note);
        assert_ne!(server.binding, "local_ports");
        let client = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Client);
        assert_eq!((client.binding, client.connections), ("local_ports", 60_999 - 32_768 + 1));
    }

    #[test]
    fn zero_limits_give_zero_not_a_panic() {
        let l = Limits {
            nofile_soft: 0,
            nofile_hard: 0,
            nr_open: None,
            file_max: None,
            files_allocated: None,
            mem_available_bytes: None,
            cgroup_memory_free_bytes: None,
            conntrack_max: None,
            conntrack_count: None,
            local_port_range: Some((5, 1)),
            workers: 0,
        };
        let c = connection_ceiling(&l, ConnectionCost { process_bytes: 0, kernel_bytes: 0 }, Side::Client);
        assert_eq!(c.connections, 0);
    }

    // --- comparison and consequences ---

    #[test]
    fn rows_compare_whitespace_insensitively_and_floors_allow_more() {
        let ctx = Context::default();
        let r = compare_row(&setting("net.ipv4.tcp_rmem", "4096 16384 2097152"), &Live::Value("4096 16384 2097152".into()), &ctx);
        assert_eq!(r.status, RowStatus::Ok);
        let r = compare_row(&setting("fs.file-max", "8388608"), &Live::Value("9223372036854775807".into()), &ctx);
        assert_eq!(r.status, RowStatus::Above);
        let r = compare_row(&setting("fs.file-max", "8388608"), &Live::Value("2466174".into()), &ctx);
        assert_eq!(r.status, RowStatus::Differs);
        // Not a floor key: more is not automatically fine.
        let r = compare_row(&setting("net.ipv4.tcp_fin_timeout", "15"), &Live::Value("60".into()), &ctx);
        assert_eq!(r.status, RowStatus::Differs);
        assert!(r.consequence.contains("60 s"), "{}", r.consequence);
        let r = compare_row(&setting("net.core.netdev_max_backlog", "16384"), &Live::Absent, &ctx);
        assert_eq!(r.status, RowStatus::Absent);
    }

    #[test]
    fn consequences_describe_the_live_value() {
        let ctx = Context { mem_total_bytes: Some(32 << 30), files_allocated: Some(1_000), side: Some(Side::Server) };
        assert!(explain("net.core.somaxconn", "128", &ctx).contains("clamped"));
        assert!(explain("net.ipv4.tcp_abort_on_overflow", "1", &ctx).contains("RST"));
        assert!(explain("net.ipv4.tcp_abort_on_overflow", "0", &ctx).contains("latency, not connections"));
        assert!(explain("fs.file-max", "100000", &ctx).contains("~99,000 more"));
        let mem = explain("net.ipv4.tcp_mem", "786432 1048576 1572864", &ctx);
        assert!(mem.contains("4.0 GiB") && mem.contains("6.0 GiB") && mem.contains("(18% of RAM)"), "{mem}");
        assert!(explain("net.ipv4.ip_local_port_range", "32768 60999", &ctx).contains("does not limit accepted"));
        let client = Context { side: Some(Side::Client), ..ctx.clone() };
        assert!(explain("net.ipv4.ip_local_port_range", "1024 65535", &client).contains("64,512"));
        assert!(explain("net.ipv4.tcp_notsent_lowat", "4294967295", &ctx).contains("no limit"));
        assert_eq!(explain("net.ipv4.something_new", "1", &ctx), "");
    }

    // --- apply (against a directory standing in for /proc/sys) ---

    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |rel: &str, v: &str| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w("net/ipv4/tcp_fin_timeout", "60\n");
        w("net/ipv4/tcp_rmem", "4096\t16384\t2097152\n");
        w("fs/file-max", "9223372036854775807\n");
        w("net/core/somaxconn", "4096\n");
        // A directory where a file should be: writing it fails.
        std::fs::create_dir_all(d.path().join("net/ipv4/tcp_mem")).unwrap();
        d
    }

    #[test]
    fn apply_reports_every_key() {
        let root = fake_root();
        let settings = parse_profile(
            "t",
            "net.ipv4.tcp_fin_timeout = 15\nnet.ipv4.tcp_rmem = 4096 16384 2097152\nfs.file-max = 8388608\n\
             net.core.somaxconn = 65535\nnet.core.netdev_max_backlog = 16384\nnet.ipv4.tcp_mem = 1 2 3\n",
        )
        .unwrap();
        let r = apply_settings(root.path(), &settings);
        assert_eq!(r[0].outcome, Outcome::Changed { old: "60".into(), new: "15".into() });
        assert_eq!(r[1].outcome, Outcome::Unchanged { value: "4096 16384 2097152".into() });
        assert_eq!(
            r[2].outcome,
            Outcome::KeptHigher { live: "9223372036854775807".into(), profile: "8388608".into() }
        );
        assert_eq!(r[3].outcome, Outcome::Changed { old: "4096".into(), new: "65535".into() });
        assert_eq!(r[4].outcome, Outcome::Absent);
        assert!(!r[4].is_fatal());
        assert!(matches!(&r[5].outcome, Outcome::Failed { .. }), "{:?}", r[5]);
        assert!(r[5].is_fatal());
        // The files hold the new values (and only them: O_TRUNC).
        assert_eq!(std::fs::read_to_string(root.path().join("net/ipv4/tcp_fin_timeout")).unwrap(), "15");
        assert_eq!(std::fs::read_to_string(root.path().join("fs/file-max")).unwrap().trim(), "9223372036854775807");
        let text = render_apply(&Profile { name: "t".into(), settings }, &r);
        assert!(text.contains("60 -> 15"), "{text}");
        assert!(text.contains("2 changed, 1 unchanged, 1 kept, 1 absent, 1 failed"), "{text}");
    }

    #[test]
    fn a_refused_write_is_a_failure_with_the_old_value() {
        // /proc/self/stat reads fine and has no write handler: a stand-in
        // for a sysctl the kernel refuses (read-only, EINVAL).
        let root = fake_root();
        std::os::unix::fs::symlink("/proc/self/stat", root.path().join("net/ipv4/refuses")).unwrap();
        let r = apply_settings(root.path(), &parse_profile("t", "net.ipv4.refuses = 1\n").unwrap());
        match &r[0].outcome {
            Outcome::Failed { old: Some(old), wanted, error } => {
                assert!(!old.is_empty());
                assert_eq!(wanted, "1");
                assert!(!error.is_empty());
            }
            other => panic!("expected a failed write, got {other:?}"),
        }
        assert!(r[0].is_fatal());
    }

    #[test]
    fn ignored_failures_are_not_fatal() {
        let root = fake_root();
        let settings = parse_profile("t", "-net.ipv4.tcp_mem = 1 2 3\n").unwrap();
        let r = apply_settings(root.path(), &settings);
        assert!(matches!(r[0].outcome, Outcome::Failed { .. }));
        assert!(!r[0].is_fatal());
    }

    // --- formatting ---

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(20_000), "20,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes_short(7_500), "7.5 KB");
    }

    #[test]
    fn text_report_names_the_binding_constraint_and_the_gap() {
        let ceiling = connection_ceiling(&limits(), IDLE_TLS_CONNECTION, Side::Server);
        let report = Report {
            profile: "c1m".into(),
            kernel: "6.8.0".into(),
            rows: vec![],
            limits: limits(),
            target: Some(TargetVerdict {
                connections: 1_000_000,
                fits: ceiling.fits(1_000_000),
                short_of: ceiling.short_of(1_000_000).iter().map(|c| c.id).collect(),
            }),
            ceiling,
            assumption: "x".into(),
        };
        let t = render_text(&report);
        let binding = t.lines().find(|l| l.starts_with("Binding constraint:")).unwrap();
        assert!(binding.contains("RLIMIT_NOFILE hard limit 20,000"), "{binding}");
        assert!(t.contains("DOES NOT FIT, short by 980,020"), "{t}");
        assert!(t.contains("LimitNOFILE"), "{t}");
    }
}
