//! Parsers for the `/proc` files the figures come from: memory, CPU time, kernel socket memory, sysctls.
//!
//! Every parser takes the file's text, so the tests feed it recorded
//! samples; the `read_*` wrappers only add the path. Memory is taken from
//! `smaps_rollup` rather than `status` because it has PSS: nginx's workers
//! share pages with their master, and summing their RSS would count those
//! pages once per process.

use std::collections::BTreeMap;

/// Resident and proportional set size of one process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemRollup {
    pub rss_kb: u64,
    pub pss_kb: u64,
}

impl std::ops::Add for MemRollup {
    type Output = MemRollup;
    fn add(self, o: MemRollup) -> MemRollup {
        MemRollup { rss_kb: self.rss_kb + o.rss_kb, pss_kb: self.pss_kb + o.pss_kb }
    }
}

/// `Rss:` and `Pss:` lines of `/proc/PID/smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Option<MemRollup> {
    let mut rss = None;
    let mut pss = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("Rss:") => rss = it.next().and_then(|v| v.parse().ok()),
            Some("Pss:") => pss = it.next().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    Some(MemRollup { rss_kb: rss?, pss_kb: pss? })
}

/// The fields of `/proc/PID/stat` we use. `comm` may hold spaces and
/// parentheses, so fields are counted from the *last* `)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// User and system CPU time in clock ticks.
    pub utime: u64,
    pub stime: u64,
}

pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    // After the comm: state(3) ppid(4) ... utime(14) stime(15), 1-based in proc(5).
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(ProcStat { ppid: f.get(1)?.parse().ok()?, utime: f.get(11)?.parse().ok()?, stime: f.get(12)?.parse().ok()? })
}

/// The TCP line of `/proc/net/sockstat`; `mem` is in pages and counts
/// socket buffer memory charged to TCP (not the socket structs: those are slab).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sockstat {
    pub sockets_used: u64,
    pub tcp_inuse: u64,
    pub tcp_orphan: u64,
    pub tcp_tw: u64,
    pub tcp_alloc: u64,
    pub tcp_mem_pages: u64,
}

pub fn parse_sockstat(text: &str) -> Option<Sockstat> {
    let mut s = Sockstat::default();
    let mut seen_tcp = false;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("sockets:") => {
                // "sockets: used N"
                s.sockets_used = it.nth(1)?.parse().ok()?;
            }
            Some("TCP:") => {
                seen_tcp = true;
                let rest: Vec<&str> = it.collect();
                for kv in rest.chunks(2) {
                    let [k, v] = kv else { continue };
                    let v: u64 = v.parse().ok()?;
                    match *k {
                        "inuse" => s.tcp_inuse = v,
                        "orphan" => s.tcp_orphan = v,
                        "tw" => s.tcp_tw = v,
                        "alloc" => s.tcp_alloc = v,
                        "mem" => s.tcp_mem_pages = v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    seen_tcp.then_some(s)
}

/// One cache line of `/proc/slabinfo` (version 2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlabCache {
    pub active_objs: u64,
    pub num_objs: u64,
    pub objsize: u64,
}

impl SlabCache {
    pub fn active_bytes(&self) -> u64 {
        self.active_objs * self.objsize
    }
}

pub fn parse_slabinfo(text: &str) -> BTreeMap<String, SlabCache> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("slabinfo") || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(active_objs), Ok(num_objs), Ok(objsize)) = (f[1].parse(), f[2].parse(), f[3].parse()) else {
            continue;
        };
        out.insert(f[0].to_string(), SlabCache { active_objs, num_objs, objsize });
    }
    out
}

/// Slab caches that grow with each TCP connection (either end), plus the
/// io_uring request cache: together the kernel's per-socket cost.
pub const SOCKET_SLABS: &[&str] =
    &["TCP", "TCPv6", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq", "io_kiocb", "request_sock_TCP"];

/// Kernel memory figures at one instant.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KernelMem {
    pub sockstat: Sockstat,
    /// Active bytes of each of [`SOCKET_SLABS`]; empty when slabinfo is unreadable.
    pub slabs: BTreeMap<String, u64>,
    /// `Slab:` of `/proc/meminfo` in KiB: all kernel slab memory, whoever
    /// allocated it (0 when unreadable).
    #[serde(default)]
    pub meminfo_slab_kb: u64,
}

impl KernelMem {
    pub fn read() -> KernelMem {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok().and_then(|t| parse_sockstat(&t)).unwrap_or_default();
        let slabs = std::fs::read_to_string("/proc/slabinfo")
            .map(|t| {
                let all = parse_slabinfo(&t);
                SOCKET_SLABS.iter().filter_map(|n| all.get(*n).map(|c| (n.to_string(), c.active_bytes()))).collect()
            })
            .unwrap_or_default();
        let meminfo_slab_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_meminfo_kb(&t, "Slab")).unwrap_or(0);
        KernelMem { sockstat, slabs, meminfo_slab_kb }
    }

    pub fn slab_total(&self) -> u64 {
        self.slabs.values().sum()
    }
}

/// The `kB` value of `key:` in `/proc/meminfo` text.
pub fn parse_meminfo_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Open file descriptors of `pid` (for a server: its connections, plus a few).
pub fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// One CPU's line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq + steal: everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
}

/// Per-CPU ticks from `/proc/stat` (`cpuN` lines; the aggregate `cpu` line is skipped).
/// Unlike a process's own utime/stime, this includes softirq time (loopback
/// packet processing) and anything else running on the CPU.
pub fn parse_proc_stat(text: &str) -> BTreeMap<usize, CpuTicks> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(n) = name.strip_prefix("cpu").and_then(|n| n.parse::<usize>().ok()) else { continue };
        let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            continue;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        let total = busy + v[3] + v[4];
        out.insert(n, CpuTicks { busy, total });
    }
    out
}

pub fn read_proc_stat() -> BTreeMap<usize, CpuTicks> {
    std::fs::read_to_string("/proc/stat").map(|t| parse_proc_stat(&t)).unwrap_or_default()
}

/// Cores' worth of busy time on `cpus` between two `/proc/stat` samples
/// (1.0 = one CPU fully busy over the interval).
pub fn cores_busy(before: &BTreeMap<usize, CpuTicks>, after: &BTreeMap<usize, CpuTicks>, cpus: &[usize]) -> f64 {
    let mut busy = 0.0;
    for c in cpus {
        let (Some(a), Some(b)) = (before.get(c), after.get(c)) else { continue };
        let total = b.total.saturating_sub(a.total);
        if total > 0 {
            busy += b.busy.saturating_sub(a.busy) as f64 / total as f64;
        }
    }
    busy
}

pub fn read_smaps_rollup(pid: u32) -> Option<MemRollup> {
    parse_smaps_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

pub fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second (`utime`/`stime` unit), almost always 100.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Direct children of `pid` (nginx's workers), found by scanning `/proc`
/// because `/proc/PID/task/TID/children` needs CONFIG_PROC_CHILDREN.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if read_stat(child).is_some_and(|s| s.ppid == pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Summed memory and CPU of a set of processes (a server and its workers).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcsSample {
    pub mem: MemRollup,
    pub cpu_s: f64,
}

pub fn sample_procs(pids: &[u32]) -> ProcsSample {
    let tck = clk_tck() as f64;
    let mut s = ProcsSample::default();
    for &p in pids {
        if let Some(m) = read_smaps_rollup(p) {
            s.mem = s.mem + m;
        }
        if let Some(st) = read_stat(p) {
            s.cpu_s += (st.utime + st.stime) as f64 / tck;
        }
    }
    s
}

/// Sysctls recorded with every result: the ones that shape a loopback
/// load test (backlogs, port range, TIME_WAIT reuse, socket buffers).
pub const RECORDED_SYSCTLS: &[&str] = &[
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "net.core.netdev_max_backlog",
    "fs.file-max",
    "fs.nr_open",
    "kernel.io_uring_disabled",
];

pub fn read_sysctls(names: &[&str]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|n| {
            let path = format!("/proc/sys/{}", n.replace('.', "/"));
            let v = std::fs::read_to_string(path).ok()?;
            Some((n.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Packets the kernel dropped because a CPU's input backlog was full
/// (`/proc/net/softnet_stat`, second column, summed over CPUs). Loopback
/// traffic goes through that backlog: when it overflows, segments and
/// their retransmissions are lost, and a socket with TCP_USER_TIMEOUT
/// whose keepalive probes go unanswered is aborted (ETIMEDOUT).
pub fn softnet_dropped() -> u64 {
    parse_softnet_dropped(&std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default())
}

pub fn parse_softnet_dropped(text: &str) -> u64 {
    text.lines().filter_map(|l| l.split_whitespace().nth(1)).filter_map(|h| u64::from_str_radix(h, 16).ok()).sum()
}

/// Raises a sysctl to at least `want` for the life of the guard and puts
/// the old value back on drop. `None` when it cannot be read or written
/// (not root, read-only /proc/sys): the run goes on with the old value.
pub struct SysctlRaise {
    path: String,
    old: String,
}

impl SysctlRaise {
    pub fn at_least(name: &str, want: u64) -> Option<SysctlRaise> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let old = std::fs::read_to_string(&path).ok()?.trim().to_string();
        if old.parse::<u64>().ok()? >= want {
            return None;
        }
        std::fs::write(&path, want.to_string()).ok()?;
        Some(SysctlRaise { path, old })
    }
}

impl Drop for SysctlRaise {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.old);
    }
}

/// The soft and hard open-file limits of this process.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        (r.rlim_cur, r.rlim_max)
    } else {
        (1024, 1024)
    }
}

/// Raises the soft open-file limit to the hard limit (what a load generator
/// needs; the hard limit here is 20,000 and cannot be raised, even by root).
pub fn raise_nofile() -> u64 {
    let (_, hard) = nofile_limit();
    let r = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    nofile_limit().0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "55d0c6a5e000-7ffd3c1f7000 ---p 00000000 00:00 0                          [rollup]
Rss:               41236 kB
Pss:               38010 kB
Pss_Dirty:         30000 kB
Pss_Anon:          29000 kB
Shared_Clean:       4000 kB
Swap:                  0 kB
";

    #[test]
    fn smaps_rollup_rss_and_pss() {
        assert_eq!(parse_smaps_rollup(SMAPS), Some(MemRollup { rss_kb: 41236, pss_kb: 38010 }));
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None, "Pss missing is not a zero");
    }

    #[test]
    fn stat_with_hostile_comm() {
        // A comm with spaces and a ')' must not shift the fields.
        let t = "1234 (evil) name) S 77 1234 1234 0 -1 4194560 500 0 0 0 321 45 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(t), Some(ProcStat { ppid: 77, utime: 321, stime: 45 }));
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn stat_of_self_is_readable() {
        let s = read_stat(std::process::id()).expect("own /proc/self/stat");
        assert!(s.ppid > 0);
    }

    #[test]
    fn sockstat_tcp_line() {
        let t = "sockets: used 20345\nTCP: inuse 20004 orphan 2 tw 31 alloc 20010 mem 1208\nUDP: inuse 0 mem 0\n";
        let s = parse_sockstat(t).unwrap();
        assert_eq!(s.sockets_used, 20345);
        assert_eq!(s.tcp_inuse, 20004);
        assert_eq!(s.tcp_orphan, 2);
        assert_eq!(s.tcp_tw, 31);
        assert_eq!(s.tcp_alloc, 20010);
        assert_eq!(s.tcp_mem_pages, 1208);
        assert_eq!(parse_sockstat("UDP: inuse 0 mem 0\n"), None);
    }

    #[test]
    fn slabinfo_lines() {
        let t = "slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
TCP                   79    156   2368   13    8 : tunables    0    0    0 : slabdata     12     12      0
sock_inode_cache     204    323    832   19    4 : tunables    0    0    0 : slabdata     17     17      0
garbage line
";
        let m = parse_slabinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m["TCP"], SlabCache { active_objs: 79, num_objs: 156, objsize: 2368 });
        assert_eq!(m["sock_inode_cache"].active_bytes(), 204 * 832);
    }

    #[test]
    fn proc_stat_busy_includes_softirq_and_steal() {
        let t = "cpu  300 0 100 500 10 0 30 5 0 0
cpu0 100 0 50 200 5 0 20 5 0 0
cpu1 200 0 50 300 5 0 10 0 0 0
intr 12345
";
        let m = parse_proc_stat(t);
        assert_eq!(m.len(), 2, "aggregate line skipped");
        assert_eq!(m[&0], CpuTicks { busy: 175, total: 380 });
        let mut later = m.clone();
        later.insert(0, CpuTicks { busy: 175 + 90, total: 380 + 100 });
        later.insert(1, CpuTicks { busy: m[&1].busy + 25, total: m[&1].total + 100 });
        assert!((cores_busy(&m, &later, &[0]) - 0.9).abs() < 1e-9);
        assert!((cores_busy(&m, &later, &[0, 1]) - 1.15).abs() < 1e-9);
        assert_eq!(cores_busy(&m, &later, &[7]), 0.0);
    }

    #[test]
    fn softnet_drops_are_the_second_column_summed() {
        let t = "01e2462b 0005c306 00000007 00000000\n00db7961 00000318 00000005 00000000\n";
        assert_eq!(parse_softnet_dropped(t), 0x5c306 + 0x318);
        assert_eq!(parse_softnet_dropped(""), 0);
    }

    #[test]
    fn sysctl_names_map_to_paths() {
        let m = read_sysctls(&["net.ipv4.ip_local_port_range", "no.such.sysctl"]);
        assert!(!m.contains_key("no.such.sysctl"));
        if let Some(v) = m.get("net.ipv4.ip_local_port_range") {
            assert_eq!(v.split(' ').count(), 2, "tabs normalised to one space: {v:?}");
        }
    }
}
