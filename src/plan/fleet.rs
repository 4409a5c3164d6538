//! Fleet sizing (`ringgate plan --fleet`): nodes that hold only
//! connections, plus the shared engine (Redis) that holds the inboxes, from
//! the fleet and idle runs this binary embeds (`measured::`). Separate from
//! the single-node model because its inputs, its engine side and its report
//! are its own; it shares the targets and the Markdown-to-HTML step.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{md_to_html, PlanArgs, PlanError, Targets};
use crate::numfmt::thousands_f;

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
pub(super) fn run_fleet(a: &PlanArgs) -> Result<PathBuf, PlanError> {
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
