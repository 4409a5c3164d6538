//! The multi-process idle run: several ringgate processes share one port (SO_REUSEPORT) and several client processes hold hundreds of thousands of idle TLS connections across them, measuring server memory per connection, kernel memory and ramp time.
//!
//! Why processes: one process may open only 20,000 files on this machine
//! (hard limit), so 200,000 connections need at least 11 server processes
//! and 11 client processes. Each server has its own data dir and admin
//! port and `server.allow_shared_port = true`; the kernel's SO_REUSEPORT
//! hash spreads connections over them, so [`plan_servers`] keeps a margin
//! below the limit. The servers do not know each other (messages would not
//! route between them): this setup is for the memory measurement only.
//!
//! Figures: server RSS/PSS per connection (sum over all server processes,
//! after − after the warm-up, ÷ connections), the socket slab caches and
//! `/proc/meminfo` `Slab:` per connection (both ends: client and server
//! share the kernel), client RSS per connection (to show what the load
//! generator costs), connections per server process, and the ramp.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::admin::Admin;
use crate::fleet::{bar, plan_procs, Fleet};
use crate::procfs::{self, KernelMem, ProcsSample};
use crate::stats::{mono_ns, Summary};
use crate::targets::{free_port, Env, Server, TargetKind};
use crate::worker::{HoldJob, Job, Tally, WorkerSpec};

/// Connections planned per server process: the 20,000-file limit less room
/// for the SO_REUSEPORT hash's imbalance (±1 % at 15,000) and the
/// process's own files.
pub const CONNS_PER_SERVER: u64 = 16_000;

/// The input backlog the run asks for (see `idle_multi`).
pub const NETDEV_BACKLOG: u64 = 65_536;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleMultiOpts {
    pub conns: u64,
    pub warmup: u64,
    /// Server processes; 0 = enough for `conns` at [`CONNS_PER_SERVER`] each.
    pub servers: u32,
    pub rate_per_s: f64,
    pub max_inflight: u32,
    pub procs: u32,
    pub settle_s: f64,
    /// Bound on the whole ramp; what was reached by then is reported.
    pub ramp_timeout_s: u64,
    /// Seconds to hold every connection, heartbeats running, before the proof.
    #[serde(default)]
    pub hold_s: u64,
    /// Heartbeat interval the clients ask for in CONNECT (they PING every 0.8 × this).
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u16,
    /// Users (at least) a message is published to after the hold; each must be delivered and acked.
    #[serde(default = "default_sample")]
    pub sample: u64,
    /// PINGs per second, all clients together, when every connection is checked after the hold.
    #[serde(default = "default_check_rate")]
    pub check_rate_per_s: f64,
    /// Bound on the check and on the sample delivery, each.
    #[serde(default = "default_check_timeout_s")]
    pub check_timeout_s: u64,
    /// Abort the run (close everything, report) when MemAvailable drops below this.
    #[serde(default = "default_min_available_mib")]
    pub min_available_mib: u64,
}

fn default_keepalive_s() -> u16 {
    600
}
fn default_sample() -> u64 {
    1_000
}
fn default_check_rate() -> f64 {
    50_000.0
}
fn default_check_timeout_s() -> u64 {
    120
}
fn default_min_available_mib() -> u64 {
    2_048
}

/// The sysctls a run reports as in force.
pub const SYSCTLS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_keepalive_time",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleMultiResult {
    pub target: Option<TargetKind>,
    pub server_version: String,
    /// The config of server 0 (the others differ only in their data dir).
    pub server_config: String,
    pub servers: u32,
    pub client_procs: u32,
    pub conns: u64,
    pub warmup: u64,
    /// Authenticated (CONNACKed) connections held at the sample.
    pub connected: u64,
    pub failed: u64,
    /// Extra connect attempts during the ramp (a connect that failed or timed
    /// out is tried again, at most twice, as a device would); `failed` counts
    /// only connections that never got through.
    #[serde(default)]
    pub retried: u64,
    /// Why the run ended early, if it did.
    pub stopped: Option<String>,
    pub ramp_s: f64,
    pub ramp_conns_per_s: f64,
    /// The ramp's pacing: connections per second asked for (0 = unpaced).
    #[serde(default)]
    pub ramp_rate_asked: f64,
    pub connect_latency_us: Summary,
    /// Open files of each server process at the sample (≈ its connections).
    pub fds_per_server: Vec<u64>,
    /// Open files the servers gained during the ramp: the connections they
    /// still held at the sample. Below `connected`, servers closed some
    /// connections after CONNACK; the table says so.
    #[serde(default)]
    pub server_held: u64,
    /// The same after the hold and the proof.
    #[serde(default)]
    pub server_held_after_hold: u64,
    pub server_before: ProcsSample,
    pub server_after: ProcsSample,
    pub rss_bytes_per_conn: f64,
    pub pss_bytes_per_conn: f64,
    pub kernel_before: KernelMem,
    pub kernel_after: KernelMem,
    /// Socket slab caches (TCP, sock_inode_cache, filp, …) ÷ connections, both ends.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// `/proc/meminfo` `Slab:` delta ÷ connections, both ends (everything the kernel allocated meanwhile).
    pub kernel_meminfo_slab_bytes_per_conn: f64,
    pub kernel_sockbuf_bytes_per_conn: f64,
    /// The load generator's RSS ÷ connections.
    pub client_rss_bytes_per_conn: f64,
    /// Whether the client handed TLS off after CONNACK (the lean client).
    #[serde(default)]
    pub lean_client: bool,
    pub errors: BTreeMap<String, u64>,
    pub wall_s: f64,
    /// `net.core.netdev_max_backlog` during the run (raised for it when root).
    #[serde(default)]
    pub netdev_max_backlog: u64,
    /// Packets dropped at a full CPU input backlog during the run.
    #[serde(default)]
    pub softnet_dropped: u64,
    /// Seconds every connection was held after the ramp, heartbeats running.
    #[serde(default)]
    pub held_s: f64,
    #[serde(default)]
    pub keepalive_s: u16,
    #[serde(default)]
    pub heartbeat_pings: u64,
    #[serde(default)]
    pub heartbeat_pongs: u64,
    /// Connections the clients found closed during the hold.
    #[serde(default)]
    pub dead_during_hold: u64,
    /// Connections that answered a PING after the hold.
    #[serde(default)]
    pub alive_after_hold: u64,
    #[serde(default)]
    pub check_s: f64,
    /// Users a message was published to after the hold (every server's admin API, the same list).
    #[serde(default)]
    pub sample: u64,
    /// Sampled users whose connection received the PUSH (and sent PUSHACK).
    #[serde(default)]
    pub delivered_sample: u64,
    /// Devices the servers' delivery ledgers show as having acked the message.
    #[serde(default)]
    pub acked_sample: u64,
    /// Publish (first POST) to PUSH received, per sampled connection.
    #[serde(default)]
    pub delivery_latency_us: Summary,
    #[serde(default)]
    pub server_rss_bytes_per_conn_after_hold: f64,
    /// Lowest MemAvailable seen while the run held connections.
    #[serde(default)]
    pub min_mem_available_mib: u64,
    #[serde(default)]
    pub src_addrs: u32,
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
}

/// Server processes for `total` connections (0 requested = choose), or why it cannot fit.
pub fn plan_servers(total: u64, requested: u32) -> Result<u32> {
    let needed = total.div_ceil(CONNS_PER_SERVER).max(1) as u32;
    if requested != 0 && (requested as u64) * (procfs::nofile_limit().1.saturating_sub(200)) < total {
        bail!("{total} connections do not fit in {requested} server processes of {} files each", procfs::nofile_limit().1);
    }
    Ok(if requested == 0 { needed } else { requested })
}

/// Every `stride`-th user index of `total`, and the stride, so that at least `want` users are sampled.
pub fn sample_plan(total: u64, want: u64) -> (u64, Vec<u64>) {
    let stride = (total / want.max(1)).max(1);
    (stride, (0..total).step_by(stride as usize).collect())
}

fn mem_available_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    procfs::parse_meminfo_kb(&text, "MemAvailable").unwrap_or(u64::MAX / 1024) / 1024
}

pub fn idle_multi(env: &Env, kind: TargetKind, o: &IdleMultiOpts) -> Result<IdleMultiResult> {
    let t0 = Instant::now();
    if !env.tls {
        bail!("idle-multi holds TLS connections (the lean client hands TLS off after CONNACK); run it with TLS");
    }
    let total = o.warmup + o.conns;
    let nservers = plan_servers(total, o.servers)?;
    let procs = plan_procs(total, o.procs)?;
    // 200,000 handshakes over loopback on two busy cores overflow the
    // default per-CPU input backlog (1,000 packets): the kernel then drops
    // segments, keepalive probes among them, and the servers' sockets
    // (TCP_USER_TIMEOUT 30 s) abort idle connections with ETIMEDOUT — a
    // third of them in a 200,000 run. A real NIC queue is not this path;
    // `ringgate doctor`'s profile raises the same sysctl.
    let _backlog = procfs::SysctlRaise::at_least("net.core.netdev_max_backlog", NETDEV_BACKLOG);
    let sysctls = procfs::read_sysctls(SYSCTLS);
    let backlog = sysctls.get("net.core.netdev_max_backlog").and_then(|v| v.parse().ok()).unwrap_or(0);
    let dropped_before = procfs::softnet_dropped();
    let port = free_port()?;
    let mut servers = Vec::new();
    for i in 0..nservers as usize {
        servers.push(Server::start_shared(env, kind, port, i)?);
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    let admins = servers.iter().map(|s| Admin::of_server_dir(&s.dir, Duration::from_secs(30))).collect::<Result<Vec<_>>>()?;
    let prefix = format!("im{:x}_", mono_ns() % 0xff_ffff);
    let job = Job::Hold(HoldJob {
        warmup: o.warmup,
        conns: o.conns,
        rate_per_s: o.rate_per_s,
        max_inflight: o.max_inflight,
        user_prefix: prefix.clone(),
        keepalive_s: o.keepalive_s,
        check_rate_per_s: o.check_rate_per_s,
        check_timeout_s: o.check_timeout_s,
    });
    let target = servers[0].target_spec(env);
    let specs: Vec<WorkerSpec> = (0..procs)
        .map(|p| WorkerSpec { proc_index: p, procs, threads: env.client_cpus.len().max(1) as u32, target: target.clone(), job: job.clone() })
        .collect();
    let mut fleet = Fleet::spawn(specs, &env.client_cpus)?;
    // Memory watch: other work shares this machine; below the floor the
    // run closes everything and reports what it reached.
    let min_avail = std::rc::Rc::new(std::cell::Cell::new(u64::MAX));
    {
        let (min_avail, floor) = (min_avail.clone(), o.min_available_mib);
        fleet.set_guard(move || {
            let a = mem_available_mib();
            min_avail.set(min_avail.get().min(a));
            (a < floor).then(|| format!("MemAvailable fell to {a} MiB, below the {floor} MiB floor: run aborted"))
        });
    }
    let warm = fleet.wait_stage("warm", Duration::from_secs(120), None)?;
    if warm.count("ok") < o.warmup {
        bail!("{}: only {} of {} warm-up connections opened: {:?}", kind.name(), warm.count("ok"), o.warmup, warm.errors);
    }
    std::thread::sleep(Duration::from_secs_f64(o.settle_s));
    let before = procfs::sample_procs(&pids);
    let kbefore = KernelMem::read();
    let client_before = procfs::sample_procs(&fleet.pids());
    let fds_at_warm: u64 = pids.iter().map(|&p| procfs::fd_count(p)).sum();
    let ramp_start = mono_ns();
    fleet.command("GO", 0)?;
    let b = bar(total, &format!("idle-multi {} × {nservers}", kind.name()));
    let ready = fleet.wait_stage("ready", Duration::from_secs(o.ramp_timeout_s), Some(&b));
    b.finish_and_clear();
    let ramp_wall_s = (mono_ns() - ramp_start) as f64 / 1e9;
    std::thread::sleep(Duration::from_secs_f64(o.settle_s));
    let after = procfs::sample_procs(&pids);
    let kafter = KernelMem::read();
    let client_after = procfs::sample_procs(&fleet.pids());
    let fds: Vec<u64> = pids.iter().map(|&p| procfs::fd_count(p)).collect();
    let (ready, mut stopped) = match ready {
        Ok(t) => (t, None),
        Err(e) => (Default::default(), Some(format!("ramp: {e:#}"))),
    };
    // On a timeout the workers' tallies are lost; the servers' open files say what was held.
    let server_held = fds.iter().sum::<u64>().saturating_sub(fds_at_warm);
    let connected = if stopped.is_none() { ready.count("ok") } else { server_held };

    // Hold, heartbeats running in the workers.
    let hold_start = Instant::now();
    if stopped.is_none() && o.hold_s > 0 {
        let hb = indicatif::ProgressBar::new(o.hold_s);
        hb.set_style(
            indicatif::ProgressStyle::with_template("{msg:>28} [{elapsed_precise}] {bar:30} {pos}/{len} s")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        hb.set_message(format!("holding {}", crate::report::thousands(connected as f64)));
        while hold_start.elapsed().as_secs() < o.hold_s {
            std::thread::sleep(Duration::from_millis(500));
            if let Err(e) = fleet.poll() {
                stopped = Some(format!("hold: {e:#}"));
                break;
            }
            hb.set_position(hold_start.elapsed().as_secs());
        }
        hb.finish_and_clear();
    }
    let held_s = hold_start.elapsed().as_secs_f64();
    let after_hold = procfs::sample_procs(&pids);
    let server_held_after_hold = pids.iter().map(|&p| procfs::fd_count(p)).sum::<u64>().saturating_sub(fds_at_warm);

    // Proof: every connection answers a PING.
    let mut alive = Tally::default();
    if stopped.is_none() {
        fleet.command("CHECK", 0)?;
        match fleet.wait_stage("alive", Duration::from_secs(o.check_timeout_s + 60), None) {
            Ok(t) => alive = t,
            Err(e) => stopped = Some(format!("check: {e:#}")),
        }
    }
    // Proof: a message to each sampled user is delivered and acked. Every
    // server gets the same list (the kernel chose which server holds whom;
    // the others store it in an offline inbox).
    let (stride, users) = sample_plan(total, o.sample);
    let mut sampled = Tally::default();
    let mut acked = 0;
    if stopped.is_none() {
        fleet.command("SAMPLE", stride)?;
        let names: Vec<String> = users.iter().map(|i| format!("{prefix}{i}")).collect();
        let mut msgs = Vec::new();
        for chunk in names.chunks(1_000) {
            for a in &admins {
                msgs.push((a, a.publish(chunk, "c1m sample")?));
            }
        }
        match fleet.wait_stage("sampled", Duration::from_secs(o.check_timeout_s + 60), None) {
            Ok(t) => sampled = t,
            Err(e) => stopped = Some(format!("sample: {e:#}")),
        }
        // PUSHACKs are on the wire; let the servers read them.
        std::thread::sleep(Duration::from_secs(2));
        for (a, id) in msgs {
            acked += a.acked_devices(id)?;
        }
    }
    let mut fin = Tally::default();
    if stopped.is_none() {
        fleet.command("CLOSE", 0)?;
        if let Ok(t) = fleet.wait_results(Duration::from_secs(120), None) {
            fin = t;
        }
    }
    drop(fleet);
    let softnet_dropped = procfs::softnet_dropped().saturating_sub(dropped_before);
    let config = servers[0].config.clone();
    let version = servers[0].version.clone();
    for s in servers {
        s.stop();
    }
    let n = connected.max(1) as f64;
    let ramp_s = match ready.max_ms.get("ramp_ms") {
        Some(&ms) if ready.count("ok") > 0 => ms as f64 / 1000.0,
        _ => ramp_wall_s,
    };
    let mut errors = ready.errors.clone();
    for t in [&alive, &sampled, &fin] {
        for (k, v) in &t.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    Ok(IdleMultiResult {
        target: Some(kind),
        server_version: version,
        server_config: config,
        servers: nservers,
        client_procs: procs,
        conns: o.conns,
        warmup: o.warmup,
        connected,
        failed: ready.count("failed"),
        retried: ready.count("retried"),
        stopped,
        ramp_s,
        ramp_conns_per_s: if ramp_s > 0.0 { connected as f64 / ramp_s } else { 0.0 },
        ramp_rate_asked: o.rate_per_s,
        connect_latency_us: ready.hists.get("connect").map(|h| h.summary()).unwrap_or_default(),
        fds_per_server: fds,
        server_held,
        server_held_after_hold,
        rss_bytes_per_conn: (after.mem.rss_kb as f64 - before.mem.rss_kb as f64) * 1024.0 / n,
        pss_bytes_per_conn: (after.mem.pss_kb as f64 - before.mem.pss_kb as f64) * 1024.0 / n,
        server_rss_bytes_per_conn_after_hold: (after_hold.mem.rss_kb as f64 - before.mem.rss_kb as f64) * 1024.0 / n,
        server_before: before,
        server_after: after,
        kernel_slab_bytes_per_conn: (!kafter.slabs.is_empty()).then(|| (kafter.slab_total() as f64 - kbefore.slab_total() as f64) / n),
        kernel_meminfo_slab_bytes_per_conn: (kafter.meminfo_slab_kb as f64 - kbefore.meminfo_slab_kb as f64) * 1024.0 / n,
        kernel_sockbuf_bytes_per_conn: (kafter.sockstat.tcp_mem_pages as f64 - kbefore.sockstat.tcp_mem_pages as f64) * 4096.0 / n,
        kernel_before: kbefore,
        kernel_after: kafter,
        client_rss_bytes_per_conn: (client_after.mem.rss_kb as f64 - client_before.mem.rss_kb as f64) * 1024.0 / n,
        lean_client: true,
        errors,
        wall_s: t0.elapsed().as_secs_f64(),
        netdev_max_backlog: backlog,
        softnet_dropped,
        held_s,
        keepalive_s: o.keepalive_s,
        heartbeat_pings: fin.count("heartbeat_pings"),
        heartbeat_pongs: fin.count("heartbeat_pongs"),
        dead_during_hold: fin.count("dead_hold"),
        alive_after_hold: alive.count("alive"),
        check_s: alive.max_ms.get("check_ms").copied().unwrap_or(0) as f64 / 1000.0,
        sample: users.len() as u64,
        delivered_sample: sampled.count("delivered"),
        acked_sample: acked,
        delivery_latency_us: sampled.hists.get("delivery").map(|h| h.summary()).unwrap_or_default(),
        min_mem_available_mib: if min_avail.get() == u64::MAX { 0 } else { min_avail.get() },
        src_addrs: env.src_addrs,
        sysctls,
    })
}

/// The Markdown table of multi-process idle runs.
pub fn table(results: &[IdleMultiResult]) -> String {
    let mut s = String::from(
        "| server | processes | connected | server RSS B/conn | server PSS B/conn | kernel socket slab B/conn (both ends) | kernel Slab (meminfo) B/conn (both ends) | client RSS B/conn | ramp s | connects/s | conns per server (min–max) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in results {
        let (lo, hi) = (r.fds_per_server.iter().min().copied().unwrap_or(0), r.fds_per_server.iter().max().copied().unwrap_or(0));
        s += &format!(
            "| {} | {} | {}{} | {} | {} | {} | {} | {} | {:.1} | {} | {lo}–{hi} fds |\n",
            r.target.map(|t| t.name()).unwrap_or("?"),
            r.servers,
            crate::report::thousands(r.connected as f64),
            if r.stopped.is_some() { " (stopped early)" } else { "" },
            crate::report::thousands(r.rss_bytes_per_conn),
            crate::report::thousands(r.pss_bytes_per_conn),
            r.kernel_slab_bytes_per_conn.map(crate::report::thousands).unwrap_or_else(|| "–".into()),
            crate::report::thousands(r.kernel_meminfo_slab_bytes_per_conn),
            crate::report::thousands(r.client_rss_bytes_per_conn),
            r.ramp_s,
            crate::report::thousands(r.ramp_conns_per_s),
        );
    }
    for r in results {
        if let Some(why) = &r.stopped {
            s += &format!("\nThe ramp stopped early: {why}.\n");
        }
        if r.softnet_dropped > 0 {
            s += &format!(
                "\nThe kernel dropped {} packets at a full input backlog during the run (net.core.netdev_max_backlog = {}).\n",
                crate::report::thousands(r.softnet_dropped as f64),
                r.netdev_max_backlog
            );
        }
        if r.server_held * 100 < r.connected * 99 {
            s += &format!(
                "\nThe servers held only {} of the {} connections the clients saw CONNACKed (their open files at the sample): \
                 they closed the others after CONNACK. The per-connection figures divide by {}.\n",
                crate::report::thousands(r.server_held as f64),
                crate::report::thousands(r.connected as f64),
                crate::report::thousands(r.connected as f64)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_planned_with_margin_below_the_file_limit() {
        assert_eq!(plan_servers(200_200, 0).unwrap(), 13);
        assert_eq!(plan_servers(100, 0).unwrap(), 1);
        assert_eq!(plan_servers(200_200, 14).unwrap(), 14);
    }

    #[test]
    fn sample_covers_at_least_the_asked_users() {
        let (stride, users) = sample_plan(1_000_200, 10_000);
        assert_eq!(stride, 100);
        assert_eq!(users.len(), 10_002);
        assert_eq!((users[0], users[1]), (0, 100));
        let (stride, users) = sample_plan(50, 100);
        assert_eq!((stride, users.len()), (1, 50));
    }

    #[test]
    fn table_marks_an_early_stop() {
        let r = IdleMultiResult {
            target: Some(TargetKind::RinggateUring),
            servers: 2,
            connected: 30_000,
            stopped: Some("timed out waiting for stage ready".into()),
            fds_per_server: vec![15_010, 15_020],
            server_held: 20_000,
            ..Default::default()
        };
        let t = table(&[r]);
        assert!(t.contains("held only 20,000 of the 30,000"), "{t}");
        assert!(t.contains("30,000 (stopped early)"), "{t}");
        assert!(t.contains("15010–15020"), "{t}");
        assert!(t.contains("timed out waiting for stage ready"), "{t}");
    }
}
