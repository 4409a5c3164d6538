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
    /// (offered msg/s or None for saturation, server µs per message, p99 ms).
    pub push: Vec<(Option<f64>, f64, f64)>,
    pub nofile_limit: u64,
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
}

/// `ringgate plan` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Benchmark suite JSON (`ringgate-bench suite` writes bench/results/latest.json).
    #[arg(long)]
    pub bench: PathBuf,
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
    let hs = of("handshake", &|e| e.get("mode").and_then(Value::as_str) == Some("full")).ok_or_else(|| missing("full handshake result"))?;
    let storm = of("storm", &|_| true);
    let env = json.get("envelope").cloned().unwrap_or(Value::Null);
    let mut push = Vec::new();
    for e in json.get("push").and_then(Value::as_array).into_iter().flatten() {
        if e.get("target").and_then(Value::as_str) != Some(target) {
            continue;
        }
        let offered = e.get("offered_per_s").and_then(Value::as_f64);
        let cpu = f(e, "server_cpu_us_per_msg").ok_or_else(|| missing("push server_cpu_us_per_msg"))?;
        let p99 = e.pointer("/latency_us/p99_us").and_then(Value::as_f64).map_or(f64::NAN, |us| us / 1000.0);
        push.push((offered, cpu, p99));
    }
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
        process_bytes_per_conn: f(&idle, "rss_bytes_per_conn").ok_or_else(|| missing("rss_bytes_per_conn"))?,
        kernel_bytes_per_conn: f(&idle, "kernel_slab_bytes_per_conn").ok_or_else(|| missing("kernel_slab_bytes_per_conn"))? / 2.0,
        cpu_us_per_handshake: hs_cpu,
        cpu_us_per_reconnect: storm.as_ref().and_then(|s| f(s, "server_cpu_us_per_reconnect")).unwrap_or(hs_cpu),
        push,
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
    pub nodes: u64,
    pub processes_per_node: u64,
    pub binding: String,
    pub profile: &'static str,
    /// p99 at the highest measured offered load at or above the per-core load, if any.
    pub p99_ms: Option<(f64, f64)>,
}

pub fn compute(m: &Measured, t: &Targets) -> Result<Plan, PlanError> {
    if t.connections == 0 || t.cores_per_node == 0 || t.ram_per_node_gib <= 0.0 || t.headroom < 0.0 || t.reconnect_window_s <= 0.0 {
        return Err(PlanError::Invalid("connections, cores_per_node, ram_per_node_gib and reconnect_window_s must be positive, headroom ≥ 0".into()));
    }
    let h = 1.0 + t.headroom;
    let bytes_per_conn = m.process_bytes_per_conn + m.kernel_bytes_per_conn;
    let ram_bytes = (m.base_rss_bytes + t.connections as f64 * bytes_per_conn) * h;
    // The costliest measured per-message CPU: saturation amortises better
    // than light load, and planning must not assume the cheap case.
    let cpu_us_per_msg = m.push.iter().map(|p| p.1).fold(0.0, f64::max);
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
    let nodes = nodes_for_ram.max(nodes_for_cpu);
    let conns_per_node = (t.connections as f64 / nodes as f64).ceil() as u64;
    let processes_per_node = conns_per_node.div_ceil(conns_per_process).max(1);
    let binding = if nodes_for_ram >= nodes_for_cpu {
        format!("memory: {:.1} GiB for {} connections at {:.0} B each (+{:.0} % headroom)", ram_bytes / (1u64 << 30) as f64, t.connections, bytes_per_conn, t.headroom * 100.0)
    } else if msg_cores >= storm_cores {
        format!("CPU for messages: {:.0} msg/s × {:.2} µs", t.messages_per_s, cpu_us_per_msg)
    } else {
        format!("CPU for reconnect storms: {:.0} reconnects in {:.0} s × {:.0} µs", reconnects, t.reconnect_window_s, m.cpu_us_per_reconnect)
    };
    let per_core_load = t.messages_per_s / nodes as f64 / t.cores_per_node as f64;
    let p99_ms = m
        .push
        .iter()
        .filter_map(|p| p.0.map(|o| (o / m.cpus.max(1) as f64, p.2)))
        .filter(|(o, _)| *o >= per_core_load)
        .fold(None, |best: Option<(f64, f64)>, x| match best {
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
        nodes,
        processes_per_node,
        binding,
        profile,
        p99_ms,
    })
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// The Markdown report.
pub fn markdown(m: &Measured, t: &Targets, p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# ringgate capacity plan\n");
    let _ = writeln!(s, "**Nodes: {}** ({} cores, {:.0} GiB each) — binding constraint: {}.\n", p.nodes, t.cores_per_node, t.ram_per_node_gib, p.binding);
    let _ = writeln!(s, "## Inputs\n\nTargets: {} connections, {:.0} messages/s, {:.0} % reconnecting within {:.0} s, headroom {:.0} %.\n", t.connections, t.messages_per_s, t.reconnect_fraction * 100.0, t.reconnect_window_s, t.headroom * 100.0);
    let _ = writeln!(s, "Measured figures, from `{}` (target `{}`, run {} on {}, commit `{}`):\n", m.source, m.target, m.date, m.machine, m.commit);
    let _ = writeln!(s, "| figure | value | JSON |\n|---|---:|---|");
    let _ = writeln!(s, "| process memory per idle TLS connection | {:.0} B | `idle[target].rss_bytes_per_conn` |", m.process_bytes_per_conn);
    let _ = writeln!(s, "| kernel memory per connection (server side) | {:.0} B | `idle[target].kernel_slab_bytes_per_conn` ÷ 2 |", m.kernel_bytes_per_conn);
    let _ = writeln!(s, "| base process memory | {} | `idle[target].server_before.mem.rss_kb` |", gib(m.base_rss_bytes));
    let _ = writeln!(s, "| server CPU per full TLS handshake | {:.0} µs | `handshake[target, full].server_cpu_us_per_handshake` |", m.cpu_us_per_handshake);
    let _ = writeln!(s, "| server CPU per reconnect (storm) | {:.0} µs | `storm[target].server_cpu_us_per_reconnect` |", m.cpu_us_per_reconnect);
    for (offered, cpu, p99) in &m.push {
        let load = offered.map_or("saturation".to_string(), |o| format!("{o:.0} msg/s offered"));
        let _ = writeln!(s, "| server CPU per message, {load} (p99 {p99:.2} ms) | {cpu:.2} µs | `push[target].server_cpu_us_per_msg` |");
    }
    let _ = writeln!(s, "\n## Result\n\n| resource | need | nodes |\n|---|---:|---:|");
    let _ = writeln!(s, "| RAM: ({} + {} × {:.0} B) × {:.2} | {} | {} |", gib(m.base_rss_bytes), t.connections, p.bytes_per_conn, 1.0 + t.headroom, gib(p.ram_bytes), p.nodes_for_ram);
    let _ = writeln!(
        s,
        "| cores: messages {:.0}/s × {:.2} µs × {:.2} = {:.2}; storm {:.0} / {:.0} s × {:.0} µs × {:.2} = {:.2} | {:.2} cores | {} |",
        t.messages_per_s, p.cpu_us_per_msg, 1.0 + t.headroom, p.msg_cores, p.reconnects, t.reconnect_window_s, m.cpu_us_per_reconnect, 1.0 + t.headroom, p.storm_cores, p.cores, p.nodes_for_cpu
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
    let _ = writeln!(s, "\nsysctl profile: **`sysctl/{}.conf`** (check a node with `ringgate doctor --profile {} --target-connections {}`).", p.profile, p.profile, (t.connections as f64 / p.nodes as f64).ceil());
    match p.p99_ms {
        Some((load, p99)) => {
            let _ = writeln!(s, "\nLatency: per-core load {:.0} msg/s; the nearest measured load at or above it ({:.0} msg/s per core) had p99 {:.2} ms.", t.messages_per_s / p.nodes as f64 / t.cores_per_node as f64, load, p99);
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
        "The highest measured CPU per message is used; CPU per reconnect includes TLS, CONNECT and replay.",
        "A reconnect storm coincides with steady traffic; their cores add up.",
        "Open files: 16 + 2 per core are kept for listeners, the log and the runtime.",
        "Per-core message load is compared with the benchmark's offered load divided by the cores the server had in that run (`envelope.server_cpus`).",
    ] {
        let _ = writeln!(s, "- {a}");
    }
    s
}

/// A self-contained HTML page with the Markdown figures and three SVG charts.
pub fn html(m: &Measured, t: &Targets, p: &Plan, md: &str) -> String {
    let n = t.connections as f64;
    let mem = chart(
        "Memory vs connections",
        "connections",
        "GiB",
        (0..=10).map(|i| n * i as f64 / 10.0).map(|c| (c, (m.base_rss_bytes + c * p.bytes_per_conn) / (1u64 << 30) as f64)).collect(),
    );
    let max_rate = t.messages_per_s.max(1.0);
    let cpu = chart(
        "CPU vs message rate",
        "messages/s",
        "cores",
        (0..=10).map(|i| max_rate * i as f64 / 10.0).map(|r| (r, r * p.cpu_us_per_msg / 1e6)).collect(),
    );
    let storm = chart(
        "Reconnect-storm recovery time vs handshake capacity",
        "cores for handshakes",
        "seconds",
        (1..=t.cores_per_node.max(2) * p.nodes).map(|c| (c as f64, p.reconnects * m.cpu_us_per_reconnect / 1e6 / c as f64)).collect(),
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringgate capacity plan</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:1em}}</style></head>\
         <body><h1>ringgate capacity plan</h1>{mem}{cpu}{storm}<h2>Report</h2><pre>{}</pre></body></html>\n",
        escape(md)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line chart as inline SVG (axes, ticks, one series).
fn chart(title: &str, xlabel: &str, ylabel: &str, pts: Vec<(f64, f64)>) -> String {
    let (w, h, l, b) = (640.0, 320.0, 70.0, 40.0);
    let xmax = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| l + v / xmax * (w - l - 20.0);
    let y = |v: f64| h - b - v / ymax * (h - b - 20.0);
    let mut s = format!("<h2>{}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">", escape(title));
    let _ = write!(s, "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - b, w - 20.0, h - b);
    let _ = write!(s, "<line x1=\"{l}\" y1=\"20\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>", h - b);
    for i in 0..=4 {
        let (xv, yv) = (xmax * i as f64 / 4.0, ymax * i as f64 / 4.0);
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x(xv), h - b + 14.0, short(xv));
        let _ = write!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", l - 4.0, y(yv) + 4.0, short(yv));
    }
    let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
    let _ = write!(s, "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", (l + w) / 2.0, h - 6.0, escape(xlabel));
    let _ = write!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text></svg>", h / 2.0, h / 2.0, escape(ylabel));
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `ringgate plan`: writes report.md and report.html, prints the Markdown.
pub fn run(a: &PlanArgs) -> Result<PathBuf, PlanError> {
    let text = std::fs::read_to_string(&a.bench).map_err(|source| PlanError::Read { path: a.bench.clone(), source })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| PlanError::Json { path: a.bench.clone(), source })?;
    let m = read_measured(&a.bench, &json, &a.target)?;
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
            push: vec![(None, 17.0, 30.0), (Some(8000.0), 36.0, 2.1), (Some(16000.0), 38.0, 4.6)],
            nofile_limit: 20_000,
        }
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
        }
    }

    #[test]
    fn memory_binds_for_many_idle_connections() {
        let p = compute(&measured(), &targets(50_000_000, 10_000.0)).unwrap();
        // (20 MB + 50M × 6800 B) × 1.3 = 442 GB → 7 nodes of 64 GiB.
        assert!((p.ram_bytes - (20e6 + 50e6 * 6800.0) * 1.3).abs() < 1.0);
        assert_eq!(p.nodes_for_ram, 7);
        assert_eq!(p.nodes, 7);
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
        assert!(md.contains("| 3000 B | `idle[target].rss_bytes_per_conn` |"), "{md}");
        assert!(md.contains("250 µs"));
        let h = html(&m, &t, &p, &md);
        assert_eq!(h.matches("<svg").count(), 3);
    }
}
