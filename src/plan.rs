//! Capacity planning: turns the benchmark suite's measured figures and a deployment's targets into cores, RAM and nodes, the binding constraint, and a report.
//!
//! Every number in the report is either an input (a target or a headroom
//! the planner chose) or a figure read from the benchmark JSON, named with
//! its JSON path, or arithmetic on those shown in the report. Nothing is
//! assumed silently: the assumptions are listed in the report itself.
//!
//! Model (per node, one ringgate process per node unless the open-files
//! limit forces more):
//! - memory = base RSS + connections × (process bytes/conn + kernel bytes/conn),
//!   where the kernel figure is half the loopback benchmark's slab delta (it
//!   counts both ends of every connection);
//! - CPU = messages/s × CPU per message + reconnects/s × CPU per reconnect
//!   (the reconnect-storm figure: TLS handshake, CONNECT, replay);
//! - a reconnect storm of `reconnect_fraction` of all connections must be
//!   absorbed within `reconnect_window_s` by the cores the plan buys;
//! - each of those gets `headroom` on top (default 30 %).

use crate::numfmt::thousands_f;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What the report needs from the benchmark JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub source: String,
    pub target: String,
    pub machine: String,
    pub date: String,
    pub commit: String,
    pub cpus: u64,
    pub base_rss_bytes: f64,
    pub process_bytes_per_conn: f64,
    pub kernel_bytes_per_conn: f64,
    pub cpu_us_per_handshake: f64,
    pub cpu_us_per_reconnect: f64,
    /// Where the per-connection memory figures came from (a point of `memory`).
    pub memory_source: String,
    /// The latency/CPU curve: one point per push run of the target.
    pub push: Vec<PushPoint>,
    /// The memory curve: one point per idle run of the target (single and multi-process).
    pub memory: Vec<MemPoint>,
    pub nofile_limit: u64,
}

/// One measured point of the push curve.
#[derive(Debug, Clone, PartialEq)]
pub struct PushPoint {
    /// Open-loop offered load, msg/s; None = closed-loop saturation.
    pub offered_per_s: Option<f64>,
    pub delivered_per_s: f64,
    pub cpu_us_per_msg: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Its place in the JSON, e.g. `push[4]`.
    pub json: String,
}

impl PushPoint {
    /// Where the point sits on the load axis: the offered load, or the rate delivered at saturation.
    pub fn load(&self) -> f64 {
        self.offered_per_s.unwrap_or(self.delivered_per_s)
    }

    fn label(&self) -> String {
        self.offered_per_s.map_or(format!("saturation ({} msg/s delivered)", thousands_f(self.delivered_per_s)), |o| format!("{} msg/s offered", thousands_f(o)))
    }
}

/// One measured point of the memory curve.
#[derive(Debug, Clone, PartialEq)]
pub struct MemPoint {
    pub conns: f64,
    pub process_bytes_per_conn: f64,
    /// Server side only: half the loopback slab delta.
    pub kernel_bytes_per_conn: f64,
    /// Server processes that held them (more than one: the multi-process run).
    pub processes: u64,
    /// Its place in the JSON, e.g. `idle[2]` or `idle_multi[0]`.
    pub json: String,
}

/// The deployment's targets.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Targets {
    /// Concurrent connections to hold.
    #[arg(long)]
    pub connections: u64,
    /// Messages pushed and acknowledged per second, fleet-wide.
    #[arg(long, default_value_t = 0.0)]
    pub messages_per_s: f64,
    /// Fraction of connections that may reconnect at once (e.g. 0.2 after a network blip).
    #[arg(long, default_value_t = 0.2)]
    pub reconnect_fraction: f64,
    /// ... within this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub reconnect_window_s: f64,
    /// Spare capacity on every resource (0.3 = 30 %).
    #[arg(long, default_value_t = 0.3)]
    pub headroom: f64,
    /// Cores per node you would buy.
    #[arg(long, default_value_t = 16)]
    pub cores_per_node: u64,
    /// RAM per node, GiB.
    #[arg(long, default_value_t = 64.0)]
    pub ram_per_node_gib: f64,
    /// Open files per process on the nodes (LimitNOFILE; 1048576 is the usual
    /// fs.nr_open ceiling; 0 = the benchmark machine's limit).
    #[arg(long, default_value_t = 1_048_576)]
    pub nofile_per_process: u64,
    /// Users with retained messages and no connection, fleet-wide (durable
    /// store; each costs 34,000 B: its inbox's index and one device's packed dedup table).
    #[arg(long, default_value_t = 0)]
    pub offline_users: u64,
}

/// RAM per offline user with 100 retained messages in the durable store
/// (its inbox's index; payloads live in the budgeted cache, counted by
/// `store.memory_budget_bytes`). Not in the benchmark JSON: measured by a
/// test, see `OFFLINE_USER_SOURCE`.
pub const OFFLINE_USER_BYTES: f64 = 21_000.0;
/// Where `OFFLINE_USER_BYTES` comes from.
pub const OFFLINE_USER_SOURCE: &str = "tests/store_budget.rs `ram_per_offline_user_is_measured_and_bounded`: RSS growth over 2,000 offline users × 100 retained messages, durable store, 2 workers (20,791 B on 2026-12-02)";
/// RAM a device that sent `dedup_per_device` (1,024) SENDs keeps in its
/// core once offline: its dedup table, packed `session.dedup_pack_after_ms`
/// after it left (`runtime/core/dedup.rs`), plus the device's own entry.
/// Measured by a test, see `OFFLINE_DEDUP_SOURCE`.
pub const OFFLINE_DEDUP_BYTES: f64 = 13_000.0;
/// Where `OFFLINE_DEDUP_BYTES` comes from.
pub const OFFLINE_DEDUP_SOURCE: &str = "tests/dedup_memory.rs `a_full_dedup_table_of_an_offline_device_costs_a_few_kilobytes_packed`: RSS growth over 2,000 offline devices with full tables, packed, 2 workers (11,128-12,734 B in three runs on 2026-12-02; live tables 136,611-137,072 B; a device that never sent 3,184-4,198 B; the packed buffer itself 4,597 B by capacity count)";
/// What the plan counts per offline user: the inbox (`OFFLINE_USER_BYTES`)
/// and one device with a full, packed dedup table (`OFFLINE_DEDUP_BYTES`).
pub const OFFLINE_USER_TOTAL_BYTES: f64 = OFFLINE_USER_BYTES + OFFLINE_DEDUP_BYTES;

/// `ringgate plan` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Benchmark suite JSON (`ringgate-bench suite` writes bench/results/latest.json); not needed with `--fleet`.
    #[arg(long, required_unless_present = "fleet")]
    pub bench: Option<PathBuf>,
    /// Size a fleet (nodes sharing inboxes through Redis): nodes, engine
    /// memory and engine ops/s, from the committed `ringgate-bench fleet`
    /// run. `--connections` are the users online.
    #[arg(long)]
    pub fleet: bool,
    #[command(flatten)]
    pub fleet_targets: FleetTargets,
    /// Which server of the run to plan for.
    #[arg(long, default_value = "ringgate-uring")]
    pub target: String,
    #[command(flatten)]
    pub targets: Targets,
    /// Directory for report.md and report.html.
    #[arg(long, default_value = "plan")]
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: no {what} for target {target:?} (run the suite with that target)")]
    Missing { path: PathBuf, what: String, target: String },
    #[error("invalid target: {0}")]
    Invalid(String),
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

/// Reads the figures for `target` from a suite JSON.
pub fn read_measured(path: &Path, json: &Value, target: &str) -> Result<Measured, PlanError> {
    let missing = |what: &str| PlanError::Missing { path: path.to_path_buf(), what: what.into(), target: target.into() };
    let of = |section: &str, pred: &dyn Fn(&Value) -> bool| -> Option<Value> {
        json.get(section)?.as_array()?.iter().find(|e| e.get("target").and_then(Value::as_str) == Some(target) && pred(e)).cloned()
    };
    let idle = of("idle", &|_| true).ok_or_else(|| missing("idle result"))?;
    let mut memory = Vec::new();
    for (section, multi) in [("idle", false), ("idle_multi", true)] {
        for (i, e) in json.get(section).and_then(Value::as_array).into_iter().flatten().enumerate() {
            if e.get("target").and_then(Value::as_str) != Some(target) {
                continue;
            }
            let (Some(conns), Some(rss), Some(slab)) = (f(e, "connected"), f(e, "rss_bytes_per_conn"), f(e, "kernel_slab_bytes_per_conn")) else { continue };
            let processes = if multi { e.get("servers").and_then(Value::as_u64).unwrap_or(1) } else { 1 };
            memory.push(MemPoint { conns, process_bytes_per_conn: rss, kernel_bytes_per_conn: slab / 2.0, processes, json: format!("{section}[{i}]") });
        }
    }
    // The newest committed multi-process run (the one `ringgate doctor`
    // sizes with) is a point of every plan's curve, so the curve reaches
    // the largest run ever made and both tools quote the same figure.
    let m = crate::measured::idle_cost();
    if !memory.iter().any(|p| p.conns as u64 == m.connections && (p.process_bytes_per_conn - m.process_bytes_per_conn).abs() < 0.5) {
        memory.push(MemPoint {
            conns: m.connections as f64,
            process_bytes_per_conn: m.process_bytes_per_conn,
            kernel_bytes_per_conn: m.kernel_bytes_per_conn,
            processes: m.servers,
            json: format!("{}: idle_multi[0]", m.source),
        });
    }
    memory.sort_by(|a, b| a.conns.total_cmp(&b.conns));
    // The plan uses the point with the most connections: fixed costs are
    // amortised there as they will be on a node, and it is the measured
    // point nearest a node's load.
    let used = memory.last().cloned().ok_or_else(|| missing("idle rss_bytes_per_conn and kernel_slab_bytes_per_conn"))?;
    let hs = of("handshake", &|e| e.get("mode").and_then(Value::as_str) == Some("full")).ok_or_else(|| missing("full handshake result"))?;
    let storm = of("storm", &|_| true);
    let env = json.get("envelope").cloned().unwrap_or(Value::Null);
    let mut push = Vec::new();
    for (i, e) in json.get("push").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if e.get("target").and_then(Value::as_str) != Some(target) {
            continue;
        }
        let ms = |p: &str| e.pointer(p).and_then(Value::as_f64).map_or(f64::NAN, |us| us / 1000.0);
        push.push(PushPoint {
            offered_per_s: e.get("offered_per_s").and_then(Value::as_f64),
            delivered_per_s: f(e, "msgs_per_s").unwrap_or(f64::NAN),
            cpu_us_per_msg: f(e, "server_cpu_us_per_msg").ok_or_else(|| missing("push server_cpu_us_per_msg"))?,
            p50_ms: ms("/latency_us/p50_us"),
            p99_ms: ms("/latency_us/p99_us"),
            json: format!("push[{i}]"),
        });
    }
    push.sort_by(|a, b| a.load().total_cmp(&b.load()));
    if push.is_empty() {
        return Err(missing("push result"));
    }
    let hs_cpu = f(&hs, "server_cpu_us_per_handshake").ok_or_else(|| missing("server_cpu_us_per_handshake"))?;
    Ok(Measured {
        source: path.display().to_string(),
        target: target.into(),
        machine: format!(
            "{} × {}, {}",
            env.get("cpus").and_then(Value::as_u64).unwrap_or(0),
            env.get("cpu_model").and_then(Value::as_str).unwrap_or("?"),
            env.get("kernel").and_then(Value::as_str).unwrap_or("?")
        ),
        date: env.get("date_utc").and_then(Value::as_str).unwrap_or("?").into(),
        commit: env.get("git_commit").and_then(Value::as_str).unwrap_or("?").chars().take(12).collect(),
        // The server's share of the machine (the load generator had the rest).
        cpus: env.get("server_cpus").and_then(Value::as_array).map_or(0, |a| a.len() as u64).max(1),
        base_rss_bytes: idle.pointer("/server_before/mem/rss_kb").and_then(Value::as_f64).unwrap_or(0.0) * 1024.0,
        process_bytes_per_conn: used.process_bytes_per_conn,
        kernel_bytes_per_conn: used.kernel_bytes_per_conn,
        memory_source: used.json.clone(),
        cpu_us_per_handshake: hs_cpu,
        cpu_us_per_reconnect: storm.as_ref().and_then(|s| f(s, "server_cpu_us_per_reconnect")).unwrap_or(hs_cpu),
        push,
        memory,
        nofile_limit: env.get("nofile_limit").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// The plan's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub bytes_per_conn: f64,
    pub ram_bytes: f64,
    pub cpu_us_per_msg: f64,
    pub msg_cores: f64,
    pub reconnects: f64,
    pub storm_cores: f64,
    pub cores: f64,
    pub conns_per_process: u64,
    pub nodes_for_ram: u64,
    pub nodes_for_cpu: u64,
    /// Nodes the load needs: the larger of the two above.
    pub nodes_for_load: u64,
    /// Nodes to buy: N+1, so the others hold everything while one is down.
    pub nodes: u64,
    /// Share of the load nodes' RAM and cores the plan uses (the binding one is the larger).
    pub ram_share: f64,
    pub cpu_share: f64,
    pub processes_per_node: u64,
    pub binding: String,
    pub profile: &'static str,
    /// p99 at the lowest measured offered load at or above the per-core
    /// load, if any: (that load per core, p99 ms, the point's JSON place).
    pub p99_ms: Option<(f64, f64, String)>,
    /// The push point whose CPU per message the plan uses.
    pub cpu_source: String,
    /// The plan's per-core message load, msg/s.
    pub per_core_load: f64,
}

pub fn compute(m: &Measured, t: &Targets) -> Result<Plan, PlanError> {
    if t.connections == 0 || t.cores_per_node == 0 || t.ram_per_node_gib <= 0.0 || t.headroom < 0.0 || t.reconnect_window_s <= 0.0 {
        return Err(PlanError::Invalid("connections, cores_per_node, ram_per_node_gib and reconnect_window_s must be positive, headroom ≥ 0".into()));
    }
    let h = 1.0 + t.headroom;
    let bytes_per_conn = m.process_bytes_per_conn + m.kernel_bytes_per_conn;
    let ram_bytes = (m.base_rss_bytes + t.connections as f64 * bytes_per_conn + t.offline_users as f64 * OFFLINE_USER_TOTAL_BYTES) * h;
    // The costliest measured per-message CPU: saturation amortises better
    // than light load, and planning must not assume the cheap case.
    let costliest = m.push.iter().max_by(|a, b| a.cpu_us_per_msg.total_cmp(&b.cpu_us_per_msg));
    let cpu_us_per_msg = costliest.map_or(0.0, |p| p.cpu_us_per_msg);
    let cpu_source = costliest.map_or_else(String::new, |p| p.json.clone());
    let msg_cores = t.messages_per_s * cpu_us_per_msg / 1e6 * h;
    let reconnects = t.connections as f64 * t.reconnect_fraction;
    let storm_cores = reconnects / t.reconnect_window_s * m.cpu_us_per_reconnect / 1e6 * h;
    // A storm and steady traffic coincide (the messages queue for the
    // reconnecting devices), so the cores add up.
    let cores = msg_cores + storm_cores;
    let nofile = if t.nofile_per_process > 0 { t.nofile_per_process } else { m.nofile_limit.max(1) };
    let conns_per_process = nofile.saturating_sub(crate::net::listener::server_fd_reserve(t.cores_per_node)).max(1);
    let ram_per_node = t.ram_per_node_gib * (1u64 << 30) as f64;
    let nodes_for_ram = (ram_bytes / ram_per_node).ceil().max(1.0) as u64;
    let nodes_for_cpu = (cores / t.cores_per_node as f64).ceil().max(1.0) as u64;
    let nodes_for_load = nodes_for_ram.max(nodes_for_cpu);
    // N+1: one spare, so a node can fail (or be upgraded) and the other N
    // still hold every connection; per-node figures are for that case.
    let nodes = nodes_for_load + 1;
    let conns_per_node = (t.connections as f64 / nodes_for_load as f64).ceil() as u64;
    let ram_share = ram_bytes / (nodes_for_load as f64 * ram_per_node);
    let cpu_share = cores / (nodes_for_load as f64 * t.cores_per_node as f64);
    let processes_per_node = conns_per_node.div_ceil(conns_per_process).max(1);
    let shares = format!(
        "{:.0} % of the RAM and {:.0} % of the cores of {nodes_for_load} node(s)",
        ram_share * 100.0,
        cpu_share * 100.0
    );
    let binding = if ram_share >= cpu_share {
        format!(
            "memory, {shares}: {:.1} GiB for {} connections at {} B each (+{:.0} % headroom)",
            ram_bytes / (1u64 << 30) as f64,
            thousands_f(t.connections as f64),
            thousands_f(bytes_per_conn),
            t.headroom * 100.0
        )
    } else if msg_cores >= storm_cores {
        format!("CPU for messages, {shares}: {} msg/s × {:.2} µs", thousands_f(t.messages_per_s), cpu_us_per_msg)
    } else {
        format!("CPU for reconnect storms, {shares}: {} reconnects in {:.0} s × {:.0} µs", thousands_f(reconnects), t.reconnect_window_s, m.cpu_us_per_reconnect)
    };
    let per_core_load = t.messages_per_s / nodes_for_load as f64 / t.cores_per_node as f64;
    let p99_ms = m
        .push
        .iter()
        .filter_map(|p| p.offered_per_s.map(|o| (o / m.cpus.max(1) as f64, p.p99_ms, p.json.clone())))
        .filter(|(o, _, _)| *o >= per_core_load)
        .fold(None, |best: Option<(f64, f64, String)>, x| match best {
            Some(b) if b.0 <= x.0 => Some(b),
            _ => Some(x),
        });
    let profile = if conns_per_node > 100_000 { "c1m" } else { "low-latency" };
    Ok(Plan {
        bytes_per_conn,
        ram_bytes,
        cpu_us_per_msg,
        msg_cores,
        reconnects,
        storm_cores,
        cores,
        conns_per_process,
        nodes_for_ram,
        nodes_for_cpu,
        nodes_for_load,
        nodes,
        ram_share,
        cpu_share,
        processes_per_node,
        binding,
        profile,
        p99_ms,
        cpu_source,
        per_core_load,
    })
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// The Markdown report.
pub fn markdown(m: &Measured, t: &Targets, p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# ringgate capacity plan\n");
    let _ = writeln!(
        s,
        "**Nodes: {}** ({} for the load + 1 spare; {} cores, {:.0} GiB each) — binding constraint: {}.\n",
        p.nodes, p.nodes_for_load, t.cores_per_node, t.ram_per_node_gib, p.binding
    );
    let _ = writeln!(s, "## Inputs\n\nTargets: {} connections, {} messages/s, {:.0} % reconnecting within {:.0} s, headroom {:.0} %.\n", thousands_f(t.connections as f64), thousands_f(t.messages_per_s), t.reconnect_fraction * 100.0, t.reconnect_window_s, t.headroom * 100.0);
    let _ = writeln!(s, "Measured figures, from `{}` (target `{}`, run {} on {}, commit `{}`):\n", m.source, m.target, m.date, m.machine, m.commit);
    let mem_at = m.memory.iter().find(|p| p.json == m.memory_source).map_or(0.0, |p| p.conns);
    let _ = writeln!(s, "| figure | value | from (curve, point) | JSON |\n|---|---:|---|---|");
    let _ = writeln!(s, "| process memory per idle TLS connection | {} B | memory curve, point at {} connections | `{}.rss_bytes_per_conn` |", thousands_f(m.process_bytes_per_conn), thousands_f(mem_at), m.memory_source);
    let _ = writeln!(s, "| kernel memory per connection (server side) | {} B | memory curve, point at {} connections | `{}.kernel_slab_bytes_per_conn` ÷ 2 |", thousands_f(m.kernel_bytes_per_conn), thousands_f(mem_at), m.memory_source);
    let _ = writeln!(s, "| base process memory | {} | single-process idle run | `idle[target].server_before.mem.rss_kb` |", gib(m.base_rss_bytes));
    if t.offline_users > 0 {
        let _ = writeln!(s, "| memory per offline user: inbox index (100 retained messages, durable store) | {OFFLINE_USER_BYTES:.0} B | {OFFLINE_USER_SOURCE} | — |");
        let _ = writeln!(s, "| memory per offline user: one device's full dedup table (1,024 ids), packed | {OFFLINE_DEDUP_BYTES:.0} B | {OFFLINE_DEDUP_SOURCE} | — |");
    }
    let _ = writeln!(s, "| server CPU per full TLS handshake | {:.0} µs | handshake run | `handshake[target, full].server_cpu_us_per_handshake` |", m.cpu_us_per_handshake);
    let _ = writeln!(s, "| server CPU per reconnect (storm) | {:.0} µs | reconnect-storm run | `storm[target].server_cpu_us_per_reconnect` |", m.cpu_us_per_reconnect);
    if let Some(c) = m.push.iter().find(|c| c.json == p.cpu_source) {
        let _ = writeln!(s, "| server CPU per message (the costliest point) | {:.2} µs | load curve, point at {} | `{}.server_cpu_us_per_msg` |", c.cpu_us_per_msg, c.label(), c.json);
    }
    let _ = writeln!(s, "\n### Load curve (measured: latency and CPU per message against offered load)\n");
    let _ = writeln!(s, "| offered msg/s | delivered msg/s | p50 ms | p99 ms | server CPU µs/msg | used by the plan | JSON |\n|---:|---:|---:|---:|---:|---|---|");
    for c in &m.push {
        let mut used = Vec::new();
        if c.json == p.cpu_source {
            used.push("CPU per message");
        }
        if p.p99_ms.as_ref().is_some_and(|q| q.2 == c.json) {
            used.push("p99 quoted");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | `{}` |",
            c.offered_per_s.map_or("saturation".into(), thousands_f),
            thousands_f(c.delivered_per_s),
            c.p50_ms,
            c.p99_ms,
            c.cpu_us_per_msg,
            if used.is_empty() { "–".to_string() } else { used.join(", ") },
            c.json
        );
    }
    let _ = writeln!(s, "\n### Memory curve (measured: bytes per idle connection against connections held)\n");
    let _ = writeln!(s, "| connections | server processes | process B/conn | kernel B/conn (server side) | used by the plan | JSON |\n|---:|---:|---:|---:|---|---|");
    for c in &m.memory {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | `{}` |",
            thousands_f(c.conns),
            c.processes,
            thousands_f(c.process_bytes_per_conn),
            thousands_f(c.kernel_bytes_per_conn),
            if c.json == m.memory_source { "memory per connection" } else { "–" },
            c.json
        );
    }
    let _ = writeln!(s, "\n## Result\n\n| resource | need | nodes |\n|---|---:|---:|");
    let offline = if t.offline_users > 0 { format!(" + {} × {} B", thousands_f(t.offline_users as f64), thousands_f(OFFLINE_USER_TOTAL_BYTES)) } else { String::new() };
    let _ = writeln!(s, "| RAM: ({} + {} × {} B{offline}) × {:.2} | {} | {} |", gib(m.base_rss_bytes), thousands_f(t.connections as f64), thousands_f(p.bytes_per_conn), 1.0 + t.headroom, gib(p.ram_bytes), p.nodes_for_ram);
    let _ = writeln!(
        s,
        "| cores: messages {}/s × {:.2} µs × {:.2} = {:.2}; storm {} / {:.0} s × {:.0} µs × {:.2} = {:.2} | {:.2} cores | {} |",
        thousands_f(t.messages_per_s), p.cpu_us_per_msg, 1.0 + t.headroom, p.msg_cores, thousands_f(p.reconnects), t.reconnect_window_s, m.cpu_us_per_reconnect, 1.0 + t.headroom, p.storm_cores, p.cores, p.nodes_for_cpu
    );
    let _ = writeln!(
        s,
        "\nOpen files: {} per process ({}) leave {} connections per process, so **{} ringgate process(es) per node**{}.",
        if t.nofile_per_process > 0 { t.nofile_per_process } else { m.nofile_limit },
        if t.nofile_per_process > 0 { "`--nofile-per-process`, set LimitNOFILE to match" } else { "the benchmark machine's limit" },
        p.conns_per_process,
        p.processes_per_node,
        if p.processes_per_node > 1 { " (each with its own port or SO_REUSEPORT group and its own data directory)" } else { "" }
    );
    let _ = writeln!(
        s,
        "\nN+1: {} nodes carry the load; the spare means any one can fail and the other {} still hold every connection, so each node is sized for {} connections.",
        p.nodes,
        p.nodes_for_load,
        thousands_f((t.connections as f64 / p.nodes_for_load as f64).ceil())
    );
    let _ = writeln!(s, "\nsysctl profile: **`sysctl/{}.conf`** (check a node with `ringgate doctor --profile {} --target-connections {}`).", p.profile, p.profile, (t.connections as f64 / p.nodes_for_load as f64).ceil());
    match &p.p99_ms {
        Some((load, p99, json)) => {
            let _ = writeln!(s, "\nLatency: per-core load {} msg/s (one node down); the nearest measured load at or above it ({} msg/s per core, load curve point `{json}`) had p99 {:.2} ms.", thousands_f(p.per_core_load), thousands_f(*load), p99);
        }
        None => {
            let _ = writeln!(s, "\nLatency: the planned per-core load is above every measured open-loop load; no p99 can be quoted from this run.");
        }
    }
    let _ = writeln!(s, "\n## Assumptions\n");
    for a in [
        "Figures scale linearly with cores and connections (thread-per-core, shared-nothing); the benchmark ran on fewer cores than a node has.",
        "Connections are idle between messages (the idle figure); active ones briefly hold buffers of up to 16 KiB each.",
        "The kernel figure is half the loopback slab delta, which counts both ends of each connection.",
        "The highest CPU per message on the load curve is used; CPU per reconnect includes TLS, CONNECT and replay.",
        "Memory per connection is the memory curve's point with the most connections (fixed costs amortised as on a node).",
        "A reconnect storm coincides with steady traffic; their cores add up.",
        "Open files: 16 + 2 per core are kept for listeners, the log and the runtime.",
        "Per-core message load is compared with the benchmark's offered load divided by the cores the server had in that run (`envelope.server_cpus`).",
    ] {
        let _ = writeln!(s, "- {a}");
    }
    s
}

/// A self-contained HTML page: the measured curves plotted (with the
/// plan's operating point and headroom marked), then the report with its
/// tables as HTML tables.
pub fn html(m: &Measured, t: &Targets, p: &Plan, md: &str) -> String {
    let h = 1.0 + t.headroom;
    // The plan's per-core load as an offered load on the benchmark's server
    // (it had `m.cpus` cores), so it can sit on the measured load axis.
    let op = p.per_core_load * m.cpus.max(1) as f64;
    let marks = vec![
        Mark { x: op, label: format!("operating point {op:.0} msg/s"), dashed: false },
        Mark { x: op * h, label: format!("+{:.0} % headroom", t.headroom * 100.0), dashed: true },
    ];
    let series = |name: &str, color: &'static str, f: &dyn Fn(&PushPoint) -> f64| Series {
        name: name.into(),
        color,
        pts: m.push.iter().map(|c| (c.load(), f(c))).filter(|q| q.1.is_finite()).collect(),
    };
    let mut notes = String::new();
    if op * h > m.push.iter().map(PushPoint::load).fold(0.0, f64::max) {
        notes += "<p class=\"warn\">The operating point with headroom lies beyond the highest measured load: the curve does not cover it.</p>";
    }
    let lat = Chart {
        title: format!("Latency vs offered load (measured, {} points, push runs of `{}`)", m.push.len(), m.target),
        xlabel: "offered load on the benchmark server, msg/s (saturation: delivered; log scale)".into(),
        ylabel: "ms".into(),
        series: vec![series("p50", "#1f6feb", &|c| c.p50_ms), series("p99", "#d1242f", &|c| c.p99_ms)],
        marks: marks.clone(),
        logx: true,
    }
    .svg();
    let cpu = Chart {
        title: "Server CPU per message vs offered load (measured)".into(),
        xlabel: "offered load on the benchmark server, msg/s (log scale)".into(),
        ylabel: "µs per message".into(),
        series: vec![series("CPU µs/msg", "#8250df", &|c| c.cpu_us_per_msg)],
        marks,
        logx: true,
    }
    .svg();
    let conns_per_process = (t.connections as f64 / p.nodes_for_load as f64 / p.processes_per_node as f64).ceil();
    let mem = Chart {
        title: format!("Memory per connection vs connections held (measured, {} points)", m.memory.len()),
        xlabel: "connections held (log scale)".into(),
        ylabel: "bytes per connection".into(),
        series: vec![
            Series { name: "process RSS".into(), color: "#1f6feb", pts: m.memory.iter().map(|c| (c.conns, c.process_bytes_per_conn)).collect() },
            Series { name: "kernel (server side)".into(), color: "#1a7f37", pts: m.memory.iter().map(|c| (c.conns, c.kernel_bytes_per_conn)).collect() },
        ],
        marks: vec![Mark { x: conns_per_process, label: format!("plan: {conns_per_process:.0} per process"), dashed: false }],
        logx: true,
    }
    .svg();
    let storm = Chart {
        title: "Reconnect-storm recovery time vs handshake cores (model: measured CPU per reconnect × reconnects ÷ cores)".into(),
        xlabel: "cores for handshakes".into(),
        ylabel: "seconds".into(),
        series: vec![Series {
            name: "recovery time".into(),
            color: "#1f6feb",
            pts: (1..=t.cores_per_node.max(2) * p.nodes).map(|c| (c as f64, p.reconnects * m.cpu_us_per_reconnect / 1e6 / c as f64)).collect(),
        }],
        marks: vec![Mark { x: t.cores_per_node as f64 * p.nodes as f64, label: "cores bought".into(), dashed: false }],
        logx: false,
    }
    .svg();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringgate capacity plan</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#1f2328}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #d0d7de;padding:4px 8px}}\
         th{{background:#f6f8fa}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}\
         code{{background:#f6f8fa;padding:0 3px}}.warn{{color:#9a6700}}svg{{display:block}}</style></head>\
         <body>{}<h2>Measured curves</h2>{notes}{lat}{cpu}{mem}{storm}</body></html>\n",
        md_to_html(md)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Inline Markdown of our own reports: `code` and **bold**, escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            for (j, b) in part.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{b}</strong>");
                } else {
                    out += b;
                }
            }
        }
    }
    out
}

/// The subset of Markdown this module writes (headings, paragraphs, `-`
/// lists, pipe tables) as HTML, so the page's tables are real tables.
pub fn md_to_html(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l.starts_with('|') {
            let row = |l: &str| -> Vec<String> { l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };
            let head = row(l);
            let right: Vec<bool> = lines.get(i + 1).map_or(vec![], |a| row(a).iter().map(|c| c.ends_with(':')).collect());
            out += "<table><thead><tr>";
            for c in &head {
                let _ = write!(out, "<th>{}</th>", inline(c));
            }
            out += "</tr></thead><tbody>";
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                out += "<tr>";
                for (k, c) in row(lines[i]).iter().enumerate() {
                    let class = if right.get(k) == Some(&true) { " class=\"num\"" } else { "" };
                    let _ = write!(out, "<td{class}>{}</td>", inline(c));
                }
                out += "</tr>";
                i += 1;
            }
            out += "</tbody></table>\n";
            continue;
        }
        if let Some(h) = l.strip_prefix("### ") {
            let _ = writeln!(out, "<h3>{}</h3>", inline(h));
        } else if let Some(h) = l.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = l.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if l.starts_with("- ") {
            out += "<ul>";
            while i < lines.len() && lines[i].starts_with("- ") {
                let _ = write!(out, "<li>{}</li>", inline(&lines[i][2..]));
                i += 1;
            }
            out += "</ul>\n";
            continue;
        } else if !l.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(l));
        }
        i += 1;
    }
    out
}

/// One series of measured (or modelled) points.
struct Series {
    name: String,
    color: &'static str,
    pts: Vec<(f64, f64)>,
}

/// A vertical marker (the operating point, its headroom).
#[derive(Clone)]
struct Mark {
    x: f64,
    label: String,
    dashed: bool,
}

/// A chart as inline SVG: axes with ticks, each series as points joined by
/// a line (every point is a measurement), vertical markers, a legend.
struct Chart {
    title: String,
    xlabel: String,
    ylabel: String,
    series: Vec<Series>,
    marks: Vec<Mark>,
    logx: bool,
}

impl Chart {
    fn svg(&self) -> String {
        // The legend sits in a row above the plot, the markers' labels inside it.
        let (w, h, l, b, top, right) = (720.0, 350.0, 70.0, 44.0, 40.0, 24.0);
        let all = || self.series.iter().flat_map(|s| s.pts.iter());
        let xs = all().map(|p| p.0).chain(self.marks.iter().map(|m| m.x)).filter(|x| x.is_finite() && *x > 0.0);
        let xmax = xs.clone().fold(0.0, f64::max).max(1e-9) * 1.05;
        let xmin = if self.logx { xs.fold(f64::INFINITY, f64::min).min(xmax / 10.0) / 1.3 } else { 0.0 };
        let ymax = all().map(|p| p.1).filter(|y| y.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.15;
        let fx = |v: f64| if self.logx { (v.max(xmin).ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) } else { v / xmax };
        let x = |v: f64| l + fx(v) * (w - l - right);
        let y = |v: f64| h - b - v / ymax * (h - b - top);
        let mut s = format!("<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">", inline(&self.title));
        let _ = write!(s, "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - b, w - right, h - b);
        let _ = write!(s, "<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>", h - b);
        let xticks: Vec<f64> = if self.logx {
            let mut v = Vec::new();
            let mut d = 10f64.powi(xmin.log10().floor() as i32);
            while d <= xmax {
                for k in [1.0, 2.0, 5.0] {
                    if d * k >= xmin && d * k <= xmax {
                        v.push(d * k);
                    }
                }
                d *= 10.0;
            }
            v
        } else {
            (0..=5).map(|i| xmax * i as f64 / 5.0).collect()
        };
        for xv in xticks {
            let _ = write!(s, "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#eee\"/>", x(xv), top, h - b);
            let _ = write!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x(xv), h - b + 14.0, short(xv));
        }
        for i in 0..=4 {
            let yv = ymax * i as f64 / 4.0;
            let _ = write!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", l - 4.0, y(yv) + 4.0, short(yv));
        }
        for (k, m) in self.marks.iter().enumerate() {
            if !m.x.is_finite() || m.x <= 0.0 {
                continue;
            }
            let dash = if m.dashed { " stroke-dasharray=\"5,4\"" } else { "" };
            let _ = write!(s, "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#9a6700\" stroke-width=\"1.5\"{dash}/>", x(m.x), top, h - b);
            // Label on the side of the line with more room.
            let (tx, anchor) = if x(m.x) > (l + w) / 2.0 { (x(m.x) - 4.0, "end") } else { (x(m.x) + 4.0, "start") };
            let _ = write!(s, "<text x=\"{tx:.1}\" y=\"{}\" fill=\"#9a6700\" text-anchor=\"{anchor}\">{}</text>", top + 12.0 + 13.0 * k as f64, escape(&m.label));
        }
        for (k, ser) in self.series.iter().enumerate() {
            let path: Vec<String> = ser.pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
            let _ = write!(s, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>", ser.color, path.join(" "));
            for p in &ser.pts {
                let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{}: {} at {}</title></circle>", x(p.0), y(p.1), ser.color, escape(&ser.name), short(p.1), short(p.0));
            }
            let lx = l + 12.0 + 170.0 * k as f64;
            let _ = write!(s, "<circle cx=\"{lx}\" cy=\"14\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"18\">{}</text>", ser.color, lx + 8.0, escape(&ser.name));
        }
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", (l + w) / 2.0, h - 8.0, escape(&self.xlabel));
        let _ = write!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text></svg>", h / 2.0, h / 2.0, escape(&self.ylabel));
        s
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `ringgate plan`: writes report.md and report.html, prints the Markdown.
pub fn run(a: &PlanArgs) -> Result<PathBuf, PlanError> {
    if a.fleet {
        return run_fleet(a);
    }
    let bench = a.bench.clone().ok_or_else(|| PlanError::Invalid("--bench is required (or --fleet)".into()))?;
    let text = std::fs::read_to_string(&bench).map_err(|source| PlanError::Read { path: bench.clone(), source })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| PlanError::Json { path: bench.clone(), source })?;
    let m = read_measured(&bench, &json, &a.target)?;
    let p = compute(&m, &a.targets)?;
    let md = markdown(&m, &a.targets, &p);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlanError::Read { path, source }
    };
    std::fs::create_dir_all(&a.out).map_err(io(&a.out))?;
    let mdp = a.out.join("report.md");
    std::fs::write(&mdp, &md).map_err(io(&mdp))?;
    let hp = a.out.join("report.html");
    std::fs::write(&hp, html(&m, &a.targets, &p, &md)).map_err(io(&hp))?;
    print!("{md}");
    Ok(a.out.clone())
}

// ---------------------------------------------------------------------------
// fleet
// ---------------------------------------------------------------------------

/// What `--fleet` adds to the targets.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct FleetTargets {
    /// Users of the fleet, online or not (0 = `--connections`).
    #[arg(long, default_value_t = 0)]
    pub users: u64,
    /// Messages each user's inbox retains in the engine (at most `inbox_max_messages`).
    #[arg(long, default_value_t = 100.0)]
    pub retained_per_user: f64,
    /// Devices whose dedup record the engine keeps (every device that ever
    /// sent keeps one, up to 1,024 ids, until it has not sent for
    /// `inbox_max_age_s`; default: one per user).
    #[arg(long)]
    pub sending_devices: Option<u64>,
    /// RAM of one engine host (a Redis master), GiB.
    #[arg(long, default_value_t = 64.0)]
    pub engine_ram_gib: f64,
    /// `[fleet] heartbeat_ms` (each node writes a heartbeat and checks its users' heads once per beat).
    #[arg(long, default_value_t = 1_000)]
    pub heartbeat_ms: u64,
}

/// A fleet's sizing.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPlan {
    pub users: u64,
    pub sending_devices: u64,
    /// Node side: idle connections' memory and message CPU, with headroom.
    pub node_ram_bytes: f64,
    pub node_cores: f64,
    pub nodes_for_ram: u64,
    pub nodes_for_cpu: u64,
    pub nodes_for_load: u64,
    /// N+1.
    pub nodes: u64,
    /// Engine memory, with headroom: users, retained messages, dedup records.
    pub engine_users_bytes: f64,
    pub engine_messages_bytes: f64,
    pub engine_dedup_bytes: f64,
    pub engine_bytes: f64,
    /// Commands per second the engine serves: messages × commands per message + heartbeats.
    pub engine_ops_per_s: f64,
    /// Engine CPU with headroom, cores (one Redis process uses one).
    pub engine_cores: f64,
    /// Redis masters: one for a single instance, more for a Cluster.
    pub engine_masters: u64,
    pub engine_binding: String,
}

pub fn compute_fleet(c: &crate::measured::FleetCost, idle: &crate::measured::IdleCost, t: &Targets, f: &FleetTargets) -> Result<FleetPlan, PlanError> {
    if t.connections == 0 || t.cores_per_node == 0 || t.ram_per_node_gib <= 0.0 || f.engine_ram_gib <= 0.0 || t.headroom < 0.0 || f.retained_per_user < 0.0 || f.heartbeat_ms == 0 {
        return Err(PlanError::Invalid("connections, cores_per_node, ram_per_node_gib, engine_ram_gib and heartbeat_ms must be positive, headroom and retained_per_user ≥ 0".into()));
    }
    let users = if f.users == 0 { t.connections } else { f.users };
    if users < t.connections {
        return Err(PlanError::Invalid(format!("--users {users} is below --connections {} (the users online are some of the users)", t.connections)));
    }
    let h = 1.0 + t.headroom;
    let gib = (1u64 << 30) as f64;
    // Nodes hold connections and move messages; the inboxes are in the engine.
    let node_ram_bytes = t.connections as f64 * idle.total_bytes_per_conn() * h;
    let node_cores = t.messages_per_s * c.node_cpu_us_per_msg / 1e6 * h;
    let nodes_for_ram = (node_ram_bytes / (t.ram_per_node_gib * gib)).ceil().max(1.0) as u64;
    let nodes_for_cpu = (node_cores / t.cores_per_node as f64).ceil().max(1.0) as u64;
    let nodes_for_load = nodes_for_ram.max(nodes_for_cpu);
    let nodes = nodes_for_load + 1;
    let sending_devices = f.sending_devices.unwrap_or(users);
    let engine_users_bytes = users as f64 * c.bytes_per_offline_user * h;
    let engine_messages_bytes = users as f64 * f.retained_per_user * c.bytes_per_message * h;
    let engine_dedup_bytes = sending_devices as f64 * c.dedup_bytes_per_device * h;
    let engine_bytes = engine_users_bytes + engine_messages_bytes + engine_dedup_bytes;
    let heartbeats_per_s = nodes as f64 * 2.0 * 1000.0 / f.heartbeat_ms as f64;
    let engine_ops_per_s = t.messages_per_s * c.engine_cmds_per_msg + heartbeats_per_s;
    let engine_cores = t.messages_per_s * c.engine_cpu_us_per_msg / 1e6 * h;
    // Redis runs commands on one thread: more than a core of work, or more
    // memory than one host, needs a Cluster of that many masters.
    let for_cpu = engine_cores.ceil().max(1.0) as u64;
    let for_ram = (engine_bytes / (f.engine_ram_gib * gib)).ceil().max(1.0) as u64;
    let engine_masters = for_cpu.max(for_ram);
    let engine_binding = if engine_masters == 1 {
        "one Redis instance holds it".to_string()
    } else if for_ram >= for_cpu {
        format!("memory: {:.1} GiB over {:.0} GiB hosts", engine_bytes / gib, f.engine_ram_gib)
    } else {
        format!("CPU: {engine_cores:.2} cores of command execution, one per master")
    };
    Ok(FleetPlan {
        users,
        sending_devices,
        node_ram_bytes,
        node_cores,
        nodes_for_ram,
        nodes_for_cpu,
        nodes_for_load,
        nodes,
        engine_users_bytes,
        engine_messages_bytes,
        engine_dedup_bytes,
        engine_bytes,
        engine_ops_per_s,
        engine_cores,
        engine_masters,
        engine_binding,
    })
}

/// The fleet report (Markdown).
pub fn fleet_markdown(c: &crate::measured::FleetCost, idle: &crate::measured::IdleCost, t: &Targets, f: &FleetTargets, p: &FleetPlan) -> String {
    let h = 1.0 + t.headroom;
    let mut s = String::new();
    let _ = writeln!(s, "# ringgate fleet plan\n");
    let _ = writeln!(
        s,
        "**Nodes: {}** ({} for the load + 1 spare; {} cores, {:.0} GiB each). **Engine: {} GiB, {} commands/s, {:.2} cores → {} Redis master(s)** ({}).\n",
        p.nodes,
        p.nodes_for_load,
        t.cores_per_node,
        t.ram_per_node_gib,
        format_args!("{:.2}", p.engine_bytes / (1u64 << 30) as f64),
        thousands_f(p.engine_ops_per_s),
        p.engine_cores,
        p.engine_masters,
        p.engine_binding
    );
    let _ = writeln!(
        s,
        "## Inputs\n\nTargets: {} users, {} online, {} messages/s, {} messages retained per user, {} sending devices, headroom {:.0} %.\n",
        thousands_f(p.users as f64),
        thousands_f(t.connections as f64),
        thousands_f(t.messages_per_s),
        thousands_f(f.retained_per_user),
        thousands_f(p.sending_devices as f64),
        t.headroom * 100.0
    );
    let _ = writeln!(s, "Measured figures (one per quantity, from the committed runs this binary embeds):\n");
    let _ = writeln!(s, "| figure | value | from |\n|---|---:|---|");
    let _ = writeln!(s, "| node memory per idle TLS connection (process + kernel) | {} B | `{}` ({} connections, {}) |", thousands_f(idle.total_bytes_per_conn()), idle.source, thousands_f(idle.connections as f64), idle.date);
    let _ = writeln!(s, "| node CPU per cross-node message (all nodes) | {:.1} µs | `{}` `fleet[0].fleet_nodes_cpu_us_per_msg` ({}) |", c.node_cpu_us_per_msg, c.source, c.date);
    let _ = writeln!(s, "| engine CPU per message | {:.1} µs | `{}` `fleet[0].fleet_engine_cpu_us_per_msg` |", c.engine_cpu_us_per_msg, c.source);
    let _ = writeln!(s, "| engine commands per message | {:.2} | `{}` `fleet[0].engine_cmds_per_msg` |", c.engine_cmds_per_msg, c.source);
    let _ = writeln!(s, "| engine memory per offline user (device record + inbox keys) | {} B | `{}` `fleet[0].memory.bytes_per_offline_user` |", thousands_f(c.bytes_per_offline_user), c.source);
    let _ = writeln!(s, "| engine memory per retained message ({} B payload) | {} B | `{}` `fleet[0].memory.bytes_per_message` |", c.payload_bytes, thousands_f(c.bytes_per_message), c.source);
    let _ = writeln!(s, "| engine memory per sending device (full dedup record) | {} B | `{}` `fleet[0].memory.dedup_bytes_per_sending_device` |", thousands_f(c.dedup_bytes_per_device), c.source);
    let _ = writeln!(s, "\n## Result\n\n| resource | need | gives |\n|---|---:|---:|");
    let gib = |b: f64| format!("{:.2} GiB", b / (1u64 << 30) as f64);
    let _ = writeln!(s, "| node RAM: {} × {} B × {h:.2} | {} | {} node(s) |", thousands_f(t.connections as f64), thousands_f(idle.total_bytes_per_conn()), gib(p.node_ram_bytes), p.nodes_for_ram);
    let _ = writeln!(s, "| node cores: {} msg/s × {:.1} µs × {h:.2} | {:.2} cores | {} node(s) |", thousands_f(t.messages_per_s), c.node_cpu_us_per_msg, p.node_cores, p.nodes_for_cpu);
    let _ = writeln!(s, "| engine RAM, users: {} × {} B × {h:.2} | {} | |", thousands_f(p.users as f64), thousands_f(c.bytes_per_offline_user), gib(p.engine_users_bytes));
    let _ = writeln!(s, "| engine RAM, messages: {} × {} × {} B × {h:.2} | {} | |", thousands_f(p.users as f64), thousands_f(f.retained_per_user), thousands_f(c.bytes_per_message), gib(p.engine_messages_bytes));
    let _ = writeln!(s, "| engine RAM, dedup: {} × {} B × {h:.2} | {} | |", thousands_f(p.sending_devices as f64), thousands_f(c.dedup_bytes_per_device), gib(p.engine_dedup_bytes));
    let _ = writeln!(s, "| engine RAM, total | {} | {} master(s) of {:.0} GiB |", gib(p.engine_bytes), (p.engine_bytes / (f.engine_ram_gib * (1u64 << 30) as f64)).ceil().max(1.0), f.engine_ram_gib);
    let _ = writeln!(
        s,
        "| engine commands/s: {} msg/s × {:.2} + {} nodes × 2 / {} ms | {} /s | |",
        thousands_f(t.messages_per_s),
        c.engine_cmds_per_msg,
        p.nodes,
        f.heartbeat_ms,
        thousands_f(p.engine_ops_per_s)
    );
    let _ = writeln!(s, "| engine cores: {} msg/s × {:.1} µs × {h:.2} | {:.2} cores | {} master(s) |", thousands_f(t.messages_per_s), c.engine_cpu_us_per_msg, p.engine_cores, p.engine_cores.ceil().max(1.0));
    let _ = writeln!(s, "\n## Assumptions\n");
    for a in [
        "Every message crosses nodes (sender and receiver on different nodes), as in the benchmark; a route with `?user=` puts one user's devices on one node, which only lowers the cost.",
        "Node memory counts idle connections only (the process's base memory, tens of MiB, is not included); nodes hold no inboxes in fleet mode.",
        "Engine memory is Redis `used_memory`; the host also needs room for the AOF rewrite's copy-on-write (up to the dataset's size under heavy writes) and the OS.",
        "A dedup record never expires in the engine; a device that sent fewer than 2,048 messages holds a smaller one, so the dedup line is an upper bound.",
        "Redis executes commands on one thread: a master is counted per core of command CPU; with more than one master, run a Redis Cluster (all keys of a user share a hash slot) and give each master a replica for failover.",
        "Each node writes a heartbeat and checks its online users' inbox heads once per heartbeat (2 commands per beat counted).",
    ] {
        let _ = writeln!(s, "- {a}");
    }
    s
}

/// `ringgate plan --fleet`: writes report.md, prints it.
fn run_fleet(a: &PlanArgs) -> Result<PathBuf, PlanError> {
    let c = crate::measured::fleet_cost();
    let idle = crate::measured::idle_cost();
    let p = compute_fleet(c, idle, &a.targets, &a.fleet_targets)?;
    let md = fleet_markdown(c, idle, &a.targets, &a.fleet_targets, &p);
    std::fs::create_dir_all(&a.out).map_err(|source| PlanError::Read { path: a.out.clone(), source })?;
    let mdp = a.out.join("report.md");
    std::fs::write(&mdp, &md).map_err(|source| PlanError::Read { path: mdp.clone(), source })?;
    let hp = a.out.join("report.html");
    let page = format!("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ringgate fleet plan</title></head><body>\n{}</body></html>\n", md_to_html(&md));
    std::fs::write(&hp, page).map_err(|source| PlanError::Read { path: hp.clone(), source })?;
    print!("{md}");
    Ok(a.out.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Measured {
        Measured {
            source: "x.json".into(),
            target: "ringgate-uring".into(),
            machine: "2 × test".into(),
            date: "d".into(),
            commit: "c".into(),
            cpus: 2,
            base_rss_bytes: 20e6,
            process_bytes_per_conn: 3000.0,
            kernel_bytes_per_conn: 3800.0,
            cpu_us_per_handshake: 250.0,
            cpu_us_per_reconnect: 260.0,
            memory_source: "idle[1]".into(),
            push: vec![pt(Some(8000.0), 36.0, 2.1, 0), pt(Some(16000.0), 38.0, 4.6, 1), pt(None, 17.0, 30.0, 2)],
            memory: vec![
                MemPoint { conns: 2000.0, process_bytes_per_conn: 3900.0, kernel_bytes_per_conn: 4100.0, processes: 1, json: "idle[0]".into() },
                MemPoint { conns: 10000.0, process_bytes_per_conn: 3000.0, kernel_bytes_per_conn: 3800.0, processes: 1, json: "idle[1]".into() },
            ],
            nofile_limit: 20_000,
        }
    }

    fn pt(offered: Option<f64>, cpu: f64, p99: f64, i: usize) -> PushPoint {
        PushPoint { offered_per_s: offered, delivered_per_s: offered.unwrap_or(60_000.0), cpu_us_per_msg: cpu, p50_ms: p99 / 3.0, p99_ms: p99, json: format!("push[{i}]") }
    }

    fn targets(conns: u64, msgs: f64) -> Targets {
        Targets {
            connections: conns,
            messages_per_s: msgs,
            reconnect_fraction: 0.2,
            reconnect_window_s: 60.0,
            headroom: 0.3,
            cores_per_node: 16,
            ram_per_node_gib: 64.0,
            nofile_per_process: 1_000_000,
            offline_users: 0,
        }
    }

    #[test]
    fn offline_users_add_their_measured_memory() {
        let mut t = targets(1_000_000, 0.0);
        let base = compute(&measured(), &t).unwrap().ram_bytes;
        t.offline_users = 10_000_000;
        let p = compute(&measured(), &t).unwrap();
        assert!((p.ram_bytes - base - 10e6 * (OFFLINE_USER_BYTES + OFFLINE_DEDUP_BYTES) * 1.3).abs() < 1.0);
        let md = markdown(&measured(), &t, &p);
        assert!(md.contains("+ 10,000,000 × 34,000 B") && md.contains("tests/store_budget.rs") && md.contains("tests/dedup_memory.rs"), "{md}");
    }

    #[test]
    fn memory_binds_for_many_idle_connections() {
        let p = compute(&measured(), &targets(50_000_000, 10_000.0)).unwrap();
        // (20 MB + 50M × 6800 B) × 1.3 = 442 GB → 7 nodes of 64 GiB.
        assert!((p.ram_bytes - (20e6 + 50e6 * 6800.0) * 1.3).abs() < 1.0);
        assert_eq!(p.nodes_for_ram, 7);
        assert_eq!((p.nodes_for_load, p.nodes), (7, 8));
        assert!(p.binding.starts_with("memory"), "{}", p.binding);
        assert_eq!(p.profile, "c1m");
    }

    #[test]
    fn cpu_binds_for_heavy_traffic_and_uses_the_costliest_figure() {
        let p = compute(&measured(), &targets(100_000, 2_000_000.0)).unwrap();
        assert_eq!(p.cpu_us_per_msg, 38.0);
        // 2M × 38 µs × 1.3 = 98.8 cores → 7 nodes of 16.
        assert!((p.msg_cores - 98.8).abs() < 1e-9);
        assert_eq!(p.nodes_for_cpu, 7);
        assert!(p.binding.starts_with("CPU for messages"), "{}", p.binding);
    }

    #[test]
    fn open_files_split_processes() {
        let mut t = targets(1_000_000, 0.0);
        t.nofile_per_process = 20_000;
        let p = compute(&measured(), &t).unwrap();
        assert_eq!(p.conns_per_process, 20_000 - 16 - 32);
        assert_eq!(p.processes_per_node, 1_000_000u64.div_ceil(19_952));
    }


    fn fleet_cost() -> crate::measured::FleetCost {
        crate::measured::FleetCost {
            source: "bench/results/fleet-x.json",
            date: "d".into(),
            commit: "c".into(),
            node_cpu_us_per_msg: 50.0,
            engine_cpu_us_per_msg: 20.0,
            engine_cmds_per_msg: 4.0,
            bytes_per_offline_user: 400.0,
            bytes_per_message: 200.0,
            dedup_bytes_per_device: 100_000.0,
            payload_bytes: 64,
        }
    }

    fn idle_cost() -> crate::measured::IdleCost {
        crate::measured::IdleCost {
            source: "i.json",
            connections: 900_000,
            servers: 60,
            date: "d".into(),
            commit: "c".into(),
            process_bytes_per_conn: 3000.0,
            kernel_bytes_per_conn: 2000.0,
        }
    }

    fn fleet_targets(users: u64) -> FleetTargets {
        FleetTargets { users, retained_per_user: 100.0, sending_devices: None, engine_ram_gib: 64.0, heartbeat_ms: 1000 }
    }

    #[test]
    fn fleet_sizing_arithmetic() {
        // 10M users, 1M online, 100,000 msg/s, 100 retained each.
        let t = targets(1_000_000, 100_000.0);
        let p = compute_fleet(&fleet_cost(), &idle_cost(), &t, &fleet_targets(10_000_000)).unwrap();
        // Nodes: RAM 1M × 5000 B × 1.3 = 6.5 GB → 1 node; CPU 100k × 50 µs × 1.3 = 6.5 cores → 1 node of 16; N+1 = 2.
        assert!((p.node_ram_bytes - 1e6 * 5000.0 * 1.3).abs() < 1.0);
        assert!((p.node_cores - 6.5).abs() < 1e-9);
        assert_eq!((p.nodes_for_ram, p.nodes_for_cpu, p.nodes_for_load, p.nodes), (1, 1, 1, 2));
        // Engine: users 10M × 400 B, messages 10M × 100 × 200 B, dedup 10M × 100 kB, all × 1.3.
        assert!((p.engine_users_bytes - 10e6 * 400.0 * 1.3).abs() < 1.0);
        assert!((p.engine_messages_bytes - 10e6 * 100.0 * 200.0 * 1.3).abs() < 1.0);
        assert!((p.engine_dedup_bytes - 10e6 * 100_000.0 * 1.3).abs() < 1.0);
        assert_eq!(p.engine_bytes, p.engine_users_bytes + p.engine_messages_bytes + p.engine_dedup_bytes);
        // 100k × 4 commands + 2 nodes × 2 beats/s.
        assert!((p.engine_ops_per_s - 400_004.0).abs() < 1e-6);
        // 100k × 20 µs × 1.3 = 2.6 cores → 3 masters by CPU; 1.3 TB / 64 GiB → 23 by RAM.
        assert!((p.engine_cores - 2.6).abs() < 1e-9);
        assert_eq!(p.engine_masters, (p.engine_bytes / (64.0 * (1u64 << 30) as f64)).ceil() as u64);
        assert!(p.engine_binding.starts_with("memory"), "{}", p.engine_binding);
    }

    #[test]
    fn fleet_cpu_binds_nodes_and_engine_cores_count_masters() {
        let mut t = targets(10_000, 1_000_000.0);
        t.cores_per_node = 16;
        let mut f = fleet_targets(0);
        f.sending_devices = Some(0);
        f.retained_per_user = 0.0;
        let p = compute_fleet(&fleet_cost(), &idle_cost(), &t, &f).unwrap();
        assert_eq!(p.users, 10_000, "users default to the online count");
        // 1M × 50 µs × 1.3 = 65 cores → 5 nodes of 16, + 1.
        assert_eq!((p.nodes_for_cpu, p.nodes), (5, 6));
        // 1M × 20 µs × 1.3 = 26 cores → 26 masters (one thread each).
        assert_eq!(p.engine_masters, 26);
        assert!(p.engine_binding.starts_with("CPU"), "{}", p.engine_binding);
        let md = fleet_markdown(&fleet_cost(), &idle_cost(), &t, &f, &p);
        assert!(md.contains("**Nodes: 6** (5 for the load + 1 spare"), "{md}");
        assert!(md.contains("26 Redis master(s)"), "{md}");
        assert!(md.contains("| engine memory per retained message (64 B payload) | 200 B | `bench/results/fleet-x.json` `fleet[0].memory.bytes_per_message` |"), "{md}");
    }

    #[test]
    fn fleet_targets_are_checked() {
        let t = targets(1_000, 1.0);
        assert!(compute_fleet(&fleet_cost(), &idle_cost(), &t, &fleet_targets(999)).is_err(), "fewer users than online");
        assert!(compute_fleet(&fleet_cost(), &idle_cost(), &targets(0, 1.0), &fleet_targets(10)).is_err());
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(compute(&measured(), &targets(0, 1.0)).is_err());
    }

    #[test]
    fn report_traces_back_to_the_json() {
        let m = measured();
        let t = targets(1_000_000, 50_000.0);
        let p = compute(&m, &t).unwrap();
        let md = markdown(&m, &t, &p);
        assert!(md.contains("| 3,000 B | memory curve, point at 10,000 connections | `idle[1].rss_bytes_per_conn` |"), "{md}");
        assert!(md.contains("250 µs"));
        // The costliest load-curve point is the CPU figure, and says so.
        assert!(md.contains("| 38.00 µs | load curve, point at 16,000 msg/s offered | `push[1].server_cpu_us_per_msg` |"), "{md}");
        assert_eq!(p.cpu_source, "push[1]");
        let h = html(&m, &t, &p, &md);
        assert_eq!(h.matches("<svg").count(), 4);
        assert!(!h.contains("<pre>"));
        // Every Markdown table became an HTML table with the same rows.
        let md_tables = md.lines().filter(|l| l.starts_with("|---") || l.starts_with("|--:") || l.starts_with("|---:")).count();
        assert_eq!(h.matches("<table>").count(), md_tables);
        assert_eq!(h.matches("<tr>").count(), md.lines().filter(|l| l.starts_with('|')).count() - md_tables);
        // Each measured point is plotted: 3 load points × (p50, p99, CPU), 2 memory points × 2.
        assert_eq!(h.matches("<title>").count(), 1 + 3 * 3 + 2 * 2 + (t.cores_per_node.max(2) * p.nodes) as usize);
        assert!(h.contains("operating point"), "{h}");
        assert!(h.contains("headroom"));
    }

    #[test]
    fn markdown_subset_renders_as_html() {
        let h = md_to_html("# T\n\n**B** `c` & <x>\n\n| a | n |\n|---|---:|\n| `k` | 5 |\n\n- one\n- two\n");
        assert!(h.contains("<h1>T</h1>"), "{h}");
        assert!(h.contains("<p><strong>B</strong> <code>c</code> &amp; &lt;x&gt;</p>"), "{h}");
        assert!(h.contains("<table><thead><tr><th>a</th><th>n</th></tr></thead><tbody><tr><td><code>k</code></td><td class=\"num\">5</td></tr></tbody></table>"), "{h}");
        assert!(h.contains("<ul><li>one</li><li>two</li></ul>"), "{h}");
    }
}
