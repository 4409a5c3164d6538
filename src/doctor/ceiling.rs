//! The connection ceiling: a pure function from the host's limits and the measured cost of a connection to the tightest limit and its name.

use super::*;

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

/// What an idle TLS 1.3 connection costs, as measured by the newest
/// committed `idle-multi` run ([`crate::measured`]): server RSS per
/// connection, and half the kernel slab growth per connection (the run
/// holds both ends on one host). Traffic adds socket buffers on top.
pub fn measured_idle_connection() -> ConnectionCost {
    let m = crate::measured::idle_cost();
    ConnectionCost { process_bytes: m.process_bytes_per_conn.round() as u64, kernel_bytes: m.kernel_bytes_per_conn.round() as u64 }
}

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
                "MemAvailable divided by the measured cost of an idle TLS connection ({} in ringgate + {} in the kernel); \
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

