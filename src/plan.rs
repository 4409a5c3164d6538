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
//!
//! This file holds the inputs (the benchmark figures, the targets) and the
//! arithmetic; `report` renders a plan as Markdown and an HTML page with
//! charts, and `fleet` sizes a fleet (nodes plus the shared engine).

use crate::numfmt::thousands_f;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod fleet;
mod report;
#[cfg(test)]
mod tests;

pub use fleet::{compute_fleet, fleet_markdown, FleetPlan, FleetTargets};
pub use report::{html, markdown, md_to_html};

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

/// `ringgate plan`: writes report.md and report.html, prints the Markdown.
pub fn run(a: &PlanArgs) -> Result<PathBuf, PlanError> {
    if a.fleet {
        return fleet::run_fleet(a);
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
