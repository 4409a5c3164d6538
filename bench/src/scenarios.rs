//! The scenarios — `idle`, `handshake`, `push`, `reconnect-storm` — each against one server, producing one result record.
//!
//! The parent process owns the clock points and the server-side
//! measurements (memory and CPU from `/proc`); worker processes only
//! generate load and count. Server CPU is sampled at the exact instants
//! the workers' measurement window opens and closes (they share
//! `CLOCK_MONOTONIC` with the parent), so CPU per operation divides the
//! CPU spent in a window by the operations completed in the same window.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::fleet::{bar, plan_procs, Fleet};
use crate::procfs::{self, KernelMem, ProcsSample};
use crate::stats::{mono_ns, Summary};
use crate::targets::{Env, Server, TargetKind};
use crate::worker::{HandshakeJob, IdleJob, Job, PushJob, StormJob, Tally, WorkerSpec};

/// Sleeps until a `mono_ns` instant.
fn sleep_until_ns(t: u64) {
    let now = mono_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

fn specs(env: &Env, server: &Server, procs: u32, job: Job) -> Vec<WorkerSpec> {
    (0..procs)
        .map(|p| WorkerSpec {
            proc_index: p,
            procs,
            threads: env.client_cpus.len().max(1) as u32,
            target: server.target_spec(env),
            job: job.clone(),
        })
        .collect()
}

fn summary(t: &Tally, name: &str) -> Summary {
    t.hists.get(name).map(|h| h.summary()).unwrap_or_default()
}

/// A per-run prefix so users of one run never see another run's inbox.
fn run_prefix(tag: &str) -> String {
    format!("{tag}{:x}_", mono_ns() % 0xff_ffff)
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleOpts {
    pub conns: u64,
    pub warmup: u64,
    pub rate_per_s: f64,
    pub max_inflight: u32,
    pub procs: u32,
    /// Seconds to let the server settle before each memory sample.
    pub settle_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleResult {
    pub target: TargetKind,
    pub server_version: String,
    pub server_config: String,
    pub conns: u64,
    pub warmup: u64,
    pub connected: u64,
    pub failed: u64,
    pub ramp_s: f64,
    pub ramp_conns_per_s: f64,
    pub connect_latency_us: Summary,
    pub server_before: ProcsSample,
    pub server_after: ProcsSample,
    /// (RSS after − RSS after warm-up) ÷ connections, bytes.
    pub rss_bytes_per_conn: f64,
    pub pss_bytes_per_conn: f64,
    pub kernel_before: KernelMem,
    pub kernel_after: KernelMem,
    /// `/proc/net/sockstat` TCP `mem` delta × page size ÷ connections:
    /// socket buffer memory, both ends of each loopback connection.
    pub kernel_sockbuf_bytes_per_conn: f64,
    /// Slab delta of the socket caches (TCP, sock_inode_cache, filp, …)
    /// ÷ connections; both ends, since client and server share the kernel.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    pub kernel_slab_bytes_per_conn_by_cache: std::collections::BTreeMap<String, f64>,
    pub client_cpu_s: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub fn idle(env: &Env, kind: TargetKind, o: &IdleOpts) -> Result<IdleResult> {
    let procs = plan_procs(o.warmup + o.conns, o.procs)?;
    // The server is one process too (nginx: one per worker), under the same hard limit.
    let server_fds = procfs::nofile_limit().1.saturating_sub(100) * env.workers.max(1) as u64;
    let per_server = if kind == TargetKind::Nginx { server_fds } else { procfs::nofile_limit().1.saturating_sub(100) };
    if o.warmup + o.conns > per_server {
        bail!(
            "{}: {} connections do not fit: the server process may open {} files here (hard limit; root cannot raise it)",
            kind.name(),
            o.warmup + o.conns,
            procfs::nofile_limit().1
        );
    }
    let server = Server::start(env, kind)?;
    let job = Job::Idle(IdleJob {
        warmup: o.warmup,
        conns: o.conns,
        rate_per_s: o.rate_per_s,
        max_inflight: o.max_inflight,
        user_prefix: run_prefix("idle"),
    });
    let mut fleet = Fleet::spawn(specs(env, &server, procs, job), &env.client_cpus)?;
    let warm = fleet.wait_stage("warm", Duration::from_secs(60), None)?;
    if warm.count("ok") < o.warmup {
        bail!("{}: only {} of {} warm-up connections opened: {:?}", kind.name(), warm.count("ok"), o.warmup, warm.errors);
    }
    std::thread::sleep(Duration::from_secs_f64(o.settle_s));
    let before = server.sample();
    let kbefore = KernelMem::read();
    fleet.command("GO", 0)?;
    let b = bar(o.warmup + o.conns, &format!("idle {}", kind.name()));
    let ready = fleet.wait_stage("ready", Duration::from_secs(600), Some(&b))?;
    b.finish_and_clear();
    std::thread::sleep(Duration::from_secs_f64(o.settle_s));
    let after = server.sample();
    let kafter = KernelMem::read();
    fleet.command("CLOSE", 0)?;
    let res = fleet.wait_results(Duration::from_secs(60), None)?;
    drop(fleet);
    let config = server.config.clone();
    let version = server.version.clone();
    server.stop();

    let n = ready.count("ok").max(1) as f64;
    let page = 4096.0;
    let per_cache: std::collections::BTreeMap<String, f64> = kafter
        .slabs
        .iter()
        .map(|(k, v)| (k.clone(), (*v as f64 - kbefore.slabs.get(k).copied().unwrap_or(0) as f64) / n))
        .collect();
    let ramp_s = ready.max_ms.get("ramp_ms").copied().unwrap_or(0) as f64 / 1000.0;
    let mut errors = ready.errors.clone();
    for (k, v) in &res.errors {
        *errors.entry(k.clone()).or_default() += v;
    }
    Ok(IdleResult {
        target: kind,
        server_version: version,
        server_config: config,
        conns: o.conns,
        warmup: o.warmup,
        connected: ready.count("ok"),
        failed: ready.count("failed"),
        ramp_s,
        ramp_conns_per_s: if ramp_s > 0.0 { ready.count("ok") as f64 / ramp_s } else { 0.0 },
        connect_latency_us: summary(&ready, "connect"),
        rss_bytes_per_conn: (after.mem.rss_kb as f64 - before.mem.rss_kb as f64) * 1024.0 / n,
        pss_bytes_per_conn: (after.mem.pss_kb as f64 - before.mem.pss_kb as f64) * 1024.0 / n,
        server_before: before,
        server_after: after,
        kernel_sockbuf_bytes_per_conn: (kafter.sockstat.tcp_mem_pages as f64 - kbefore.sockstat.tcp_mem_pages as f64) * page / n,
        kernel_slab_bytes_per_conn: (!kafter.slabs.is_empty())
            .then(|| (kafter.slab_total() as f64 - kbefore.slab_total() as f64) / n),
        kernel_slab_bytes_per_conn_by_cache: per_cache,
        kernel_before: kbefore,
        kernel_after: kafter,
        client_cpu_s: res.max_ms.get("client_cpu_ms").copied().unwrap_or(0) as f64 / 1000.0,
        errors,
    })
}

// ---------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandshakeOpts {
    pub resume: bool,
    pub concurrency: u32,
    pub duration_s: f64,
    pub max_count: u64,
    pub procs: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandshakeResult {
    pub target: TargetKind,
    pub mode: String,
    pub server_version: String,
    pub server_config: String,
    pub concurrency: u32,
    pub duration_s: f64,
    pub completed: u64,
    pub failed: u64,
    pub resumed: u64,
    pub handshakes_per_s: f64,
    pub server_cpu_s: f64,
    /// Server CPU (user + system) ÷ completed handshakes, microseconds.
    pub server_cpu_us_per_handshake: f64,
    /// Server CPU ÷ wall time: 1.0 = one core busy.
    pub server_cores_busy: f64,
    /// Busy time of the server and client CPUs from /proc/stat (softirq
    /// and anything else running there included), cores.
    pub server_cpus_busy: f64,
    pub client_cpus_busy: f64,
    pub latency_us: Summary,
    pub client_cpu_s: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub fn handshake(env: &Env, kind: TargetKind, o: &HandshakeOpts) -> Result<HandshakeResult> {
    let procs = plan_procs(o.concurrency as u64, o.procs)?;
    let server = Server::start(env, kind)?;
    let duration_ms = (o.duration_s * 1000.0) as u64;
    let job = Job::Handshake(HandshakeJob {
        resume: o.resume,
        concurrency: o.concurrency,
        duration_ms,
        max_count: o.max_count,
        user_prefix: run_prefix("hs"),
    });
    let mut fleet = Fleet::spawn(specs(env, &server, procs, job), &env.client_cpus)?;
    fleet.wait_stage("primed", Duration::from_secs(60), None)?;
    let start = mono_ns() + 200_000_000;
    fleet.command("GO", start)?;
    sleep_until_ns(start);
    let c0 = server.sample().cpu_s;
    let s0 = procfs::read_proc_stat();
    let b = bar(0, &format!("handshake {} {}", kind.name(), if o.resume { "resumed" } else { "full" }));
    sleep_until_ns(start + duration_ms * 1_000_000);
    let c1 = server.sample().cpu_s;
    let s1 = procfs::read_proc_stat();
    let res = fleet.wait_results(Duration::from_secs(60), Some(&b))?;
    b.finish_and_clear();
    drop(fleet);
    let (config, version) = (server.config.clone(), server.version.clone());
    server.stop();
    let ok = res.count("ok");
    let cpu = c1 - c0;
    Ok(HandshakeResult {
        target: kind,
        mode: if o.resume { "resumed".into() } else { "full".into() },
        server_version: version,
        server_config: config,
        concurrency: o.concurrency,
        duration_s: o.duration_s,
        completed: ok,
        failed: res.count("failed"),
        resumed: res.count("resumed"),
        handshakes_per_s: ok as f64 / o.duration_s,
        server_cpu_s: cpu,
        server_cpu_us_per_handshake: if ok > 0 { cpu * 1e6 / ok as f64 } else { f64::NAN },
        server_cores_busy: cpu / o.duration_s,
        server_cpus_busy: procfs::cores_busy(&s0, &s1, &env.server_cpus),
        client_cpus_busy: procfs::cores_busy(&s0, &s1, &env.client_cpus),
        latency_us: summary(&res, "connect"),
        client_cpu_s: res.max_ms.get("client_cpu_ms").copied().unwrap_or(0) as f64 / 1000.0,
        errors: res.errors,
    })
}

// ---------------------------------------------------------------------------
// push
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushOpts {
    pub senders: u32,
    pub receivers: u32,
    pub payload_bytes: usize,
    pub window: u32,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub drain_s: f64,
    pub procs: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushResult {
    pub target: TargetKind,
    /// `saturation` (closed loop) or `open-loop`.
    pub mode: String,
    pub offered_per_s: Option<f64>,
    pub server_version: String,
    pub server_config: String,
    pub opts: PushOpts,
    pub sent_in_window: u64,
    pub delivered_in_window: u64,
    /// Messages delivered to receivers per second during the measurement window.
    pub msgs_per_s: f64,
    pub server_cpu_s: f64,
    /// Server CPU ÷ messages delivered in the window (SEND + SENDACK + PUSH + PUSHACK), µs.
    pub server_cpu_us_per_msg: f64,
    pub server_cores_busy: f64,
    /// Busy time of the server and client CPUs from /proc/stat, cores.
    pub server_cpus_busy: f64,
    pub client_cpus_busy: f64,
    /// End to end: payload timestamp (scheduled time in open loop) → receipt.
    pub latency_us: Summary,
    /// Messages sent in the window that had not arrived when the drain ended
    /// (late or lost; `seq_gaps` tells which).
    pub missing: u64,
    /// Seqs a receiver never got while later ones arrived (ringgate
    /// receivers, whose seqs are dense): messages lost, not late.
    #[serde(default)]
    pub seq_gaps: u64,
    /// PUSHes received again after a late PUSHACK (counted once).
    #[serde(default)]
    pub redelivered: u64,
    pub sender_backlog_capped: u64,
    pub client_cpu_s: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub fn push(env: &Env, kind: TargetKind, o: &PushOpts, rate: Option<f64>) -> Result<PushResult> {
    if kind == TargetKind::Nginx {
        bail!("push has no nginx form");
    }
    let procs = plan_procs(o.senders as u64 + o.receivers as u64, o.procs)?;
    let server = Server::start(env, kind)?;
    let job = PushJob {
        senders: o.senders,
        receivers: o.receivers,
        payload_bytes: o.payload_bytes,
        rate_per_s: rate,
        window: o.window,
        warmup_ms: (o.warmup_s * 1000.0) as u64,
        measure_ms: (o.measure_s * 1000.0) as u64,
        drain_ms: (o.drain_s * 1000.0) as u64,
        user_prefix: run_prefix("p"),
    };
    let mut fleet = Fleet::spawn(specs(env, &server, procs, Job::Push(job.clone())), &env.client_cpus)?;
    let conn = fleet.wait_stage("connected", Duration::from_secs(60), None)?;
    if conn.count("failed") > 0 {
        bail!("{}: {} push connections failed: {:?}", kind.name(), conn.count("failed"), conn.errors);
    }
    let start = mono_ns() + 300_000_000;
    fleet.command("GO", start)?;
    let win = crate::worker::PushWindow::new(start, &job);
    let label = match rate {
        None => format!("push {} saturation", kind.name()),
        Some(r) => format!("push {} {} msg/s", kind.name(), r),
    };
    let b = bar(0, &label);
    sleep_until_ns(win.measure_from);
    let c0 = server.sample().cpu_s;
    let s0 = procfs::read_proc_stat();
    sleep_until_ns(win.measure_to);
    let c1 = server.sample().cpu_s;
    let s1 = procfs::read_proc_stat();
    let res = fleet.wait_results(Duration::from_secs_f64(o.drain_s + 60.0), Some(&b))?;
    b.finish_and_clear();
    drop(fleet);
    let (config, version) = (server.config.clone(), server.version.clone());
    server.stop();
    let delivered = res.count("received_in_window");
    let cpu = c1 - c0;
    Ok(PushResult {
        target: kind,
        mode: if rate.is_some() { "open-loop".into() } else { "saturation".into() },
        offered_per_s: rate,
        server_version: version,
        server_config: config,
        opts: o.clone(),
        sent_in_window: res.count("sent_in_window"),
        delivered_in_window: delivered,
        msgs_per_s: delivered as f64 / o.measure_s,
        server_cpu_s: cpu,
        server_cpu_us_per_msg: if delivered > 0 { cpu * 1e6 / delivered as f64 } else { f64::NAN },
        server_cores_busy: cpu / o.measure_s,
        server_cpus_busy: procfs::cores_busy(&s0, &s1, &env.server_cpus),
        client_cpus_busy: procfs::cores_busy(&s0, &s1, &env.client_cpus),
        latency_us: summary(&res, "latency"),
        missing: res.count("sent_in_window").saturating_sub(res.count("received_sent_in_window")),
        seq_gaps: res.count("seq_gaps"),
        redelivered: res.count("redelivered"),
        sender_backlog_capped: res.count("sender_backlog_capped"),
        client_cpu_s: res.max_ms.get("client_cpu_ms").copied().unwrap_or(0) as f64 / 1000.0,
        errors: res.errors,
    })
}

// ---------------------------------------------------------------------------
// reconnect-storm
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormOpts {
    pub clients: u64,
    pub messages: u64,
    pub max_inflight: u32,
    pub timeout_s: u64,
    pub procs: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormResult {
    pub target: TargetKind,
    pub server_version: String,
    pub server_config: String,
    /// Server processes (one per client process past one server's file limit).
    #[serde(default)]
    pub servers: u32,
    #[serde(default)]
    pub client_procs: u32,
    pub clients: u64,
    pub messages_before_drop: u64,
    pub messages_while_offline: u64,
    pub primed: u64,
    pub caught_up: u64,
    pub failed: u64,
    pub replayed: u64,
    /// From the reconnect signal until the last CONNACK / the last client holds its inbox head.
    pub all_connacked_ms: u64,
    pub all_caught_up_ms: u64,
    pub reconnects_per_s: f64,
    pub to_connack_us: Summary,
    pub to_caught_up_us: Summary,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_reconnect: f64,
    pub client_cpu_s: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub fn storm(env: &Env, kind: TargetKind, o: &StormOpts) -> Result<StormResult> {
    if !kind.is_ringgate() {
        bail!("reconnect-storm speaks ringgate only");
    }
    // One server process holds at most ~20,000 open files here. Past that
    // the run starts one server per client process, each on its own port:
    // a client must come back to the server that holds its inbox (the
    // servers do not share inboxes outside fleet mode), and every user of a
    // client process, its sender included, lives on that process's server.
    let per_server = crate::idle_multi::CONNS_PER_SERVER;
    let clients_total = o.clients + 8;
    let mut procs = plan_procs(clients_total, o.procs)?;
    let nservers = if clients_total > per_server {
        procs = procs.max(clients_total.div_ceil(per_server) as u32);
        procs as usize
    } else {
        1
    };
    let servers = (0..nservers).map(|i| Server::start_nth(env, kind, i)).collect::<Result<Vec<_>>>()?;
    let job = Job::Storm(StormJob {
        clients: o.clients,
        messages: o.messages,
        max_inflight: o.max_inflight,
        timeout_ms: o.timeout_s * 1000,
        user_prefix: run_prefix("st"),
    });
    let mut worker_specs = specs(env, &servers[0], procs, job);
    for (p, spec) in worker_specs.iter_mut().enumerate() {
        spec.target = servers[p % nservers].target_spec(env);
    }
    let cpu_s = |servers: &[Server]| servers.iter().map(|s| s.sample().cpu_s).sum::<f64>();
    let mut fleet = Fleet::spawn(worker_specs, &env.client_cpus)?;
    let b = bar(o.clients, &format!("storm {} connect", kind.name()));
    let primed = fleet.wait_stage("primed", Duration::from_secs(o.timeout_s * 2 + 60), Some(&b))?;
    b.finish_and_clear();
    fleet.command("DROP", 0)?;
    let dropped = fleet.wait_stage("dropped", Duration::from_secs(o.timeout_s + 60), None)?;
    // Let the server notice every close before the storm starts.
    std::thread::sleep(Duration::from_secs(1));
    let t = mono_ns() + 100_000_000;
    fleet.command("RECONNECT", t)?;
    sleep_until_ns(t);
    let c0 = cpu_s(&servers);
    let b = bar(o.clients * 2, &format!("storm {} reconnect", kind.name()));
    let res = fleet.wait_results(Duration::from_secs(o.timeout_s + 60), Some(&b))?;
    let c1 = cpu_s(&servers);
    b.finish_and_clear();
    drop(fleet);
    let (config, version) = (servers[0].config.clone(), servers[0].version.clone());
    for s in servers {
        s.stop();
    }
    let all_connacked_ms = res.max_ms.get("all_connacked_ms").copied().unwrap_or(0);
    let all_caught_up_ms = res.max_ms.get("all_caught_up_ms").copied().unwrap_or(0);
    let caught_up = res.count("caught_up");
    Ok(StormResult {
        target: kind,
        server_version: version,
        server_config: config,
        servers: nservers as u32,
        client_procs: procs,
        clients: o.clients,
        messages_before_drop: o.messages,
        messages_while_offline: dropped.count("offline_sent") / o.clients.max(1),
        primed: primed.count("primed"),
        caught_up,
        failed: res.count("failed"),
        replayed: res.count("replayed"),
        all_connacked_ms,
        all_caught_up_ms,
        reconnects_per_s: if all_connacked_ms > 0 { caught_up as f64 * 1000.0 / all_connacked_ms as f64 } else { 0.0 },
        to_connack_us: summary(&res, "to_connack"),
        to_caught_up_us: summary(&res, "to_caught_up"),
        server_cpu_s: c1 - c0,
        server_cpu_us_per_reconnect: if caught_up > 0 { (c1 - c0) * 1e6 / caught_up as f64 } else { f64::NAN },
        client_cpu_s: res.max_ms.get("client_cpu_ms").copied().unwrap_or(0) as f64 / 1000.0,
        errors: res.errors,
    })
}
