//! Tests of the capacity plan: the model's arithmetic and binding
//! constraint, the report's traces back to the JSON, and fleet sizing,
//! over hand-made figures (one file: they share the fixtures).

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
