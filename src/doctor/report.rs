//! The report: each profile key compared with the live value and explained, the verdict for a target, and its text rendering.

use super::*;

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

pub(super) fn nums(v: &str) -> Vec<u64> {
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
pub(super) const RLIM_INFINITY: u64 = libc::RLIM_INFINITY as u64;

pub(super) fn limit_str(v: u64) -> String {
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
    let cost = measured_idle_connection();
    let ceiling = connection_ceiling(&limits, cost, side);
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
                "~{} idle TLS connections at ~{} each (measured)",
                thousands(a / cost.total().max(1)),
                human_bytes_short(cost.total())
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

    let m = crate::measured::idle_cost();
    let assumption = format!(
        "an idle TLS connection costs ~{} in ringgate + ~{} in the kernel = ~{}, measured with {} connections \
         across {} processes ({}, {}, commit {}); traffic adds socket buffers",
        human_bytes_short(cost.process_bytes),
        human_bytes_short(cost.kernel_bytes),
        human_bytes_short(cost.total()),
        thousands(m.connections),
        m.servers,
        m.source,
        m.date,
        m.commit
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
    // Lowest first, so the binding constraint leads and the eye reads the
    // headroom of each next one; limits that do not apply go last.
    let mut sorted: Vec<_> = c.constraints.iter().collect();
    sorted.sort_by_key(|x| (!x.applies, x.connections));
    for x in sorted {
        let n = if x.applies { thousands(x.connections) } else { "n/a".into() };
        let mark = if x.id == c.binding { "   <- binding" } else { "" };
        let _ = writeln!(o, "  {n:>width$}  {}{mark}", x.name);
        let _ = writeln!(o, "  {:>width$}  {}", "", x.note);
    }
    let _ = writeln!(o, "Measured: {}.", r.assumption);
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

pub(super) fn side_word(s: Side) -> &'static str {
    match s {
        Side::Server => "server",
        Side::Client => "client",
    }
}

