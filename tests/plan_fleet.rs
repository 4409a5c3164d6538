//! `ringgate plan --fleet` end to end: the binary sizes a fleet from the
//! committed fleet run it embeds (`ringgate::measured::fleet_cost`), and
//! prints the same figures the library computes.

use std::process::Command;

#[test]
fn plan_fleet_prints_nodes_engine_memory_and_ops() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--fleet", "--users", "10000000", "--connections", "1000000", "--messages-per-s", "100000", "--retained-per-user", "50", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert_eq!(stdout, md, "prints the report it writes");
    assert!(out.path().join("report.html").exists());

    let c = ringgate::measured::fleet_cost();
    let idle = ringgate::measured::idle_cost();
    let t = ringgate::plan::Targets {
        connections: 1_000_000,
        messages_per_s: 100_000.0,
        reconnect_fraction: 0.2,
        reconnect_window_s: 60.0,
        headroom: 0.3,
        cores_per_node: 16,
        ram_per_node_gib: 64.0,
        nofile_per_process: 1_048_576,
        offline_users: 0,
    };
    let f = ringgate::plan::FleetTargets { users: 10_000_000, retained_per_user: 50.0, sending_devices: None, engine_ram_gib: 64.0, heartbeat_ms: 1000 };
    let p = ringgate::plan::compute_fleet(c, idle, &t, &f).unwrap();
    assert!(md.contains(&format!("**Nodes: {}** ({} for the load + 1 spare", p.nodes, p.nodes_for_load)), "{md}");
    assert!(md.contains(&format!("**Engine: {:.2} GiB", p.engine_bytes / (1u64 << 30) as f64)), "{md}");
    assert!(md.contains(&format!("{} Redis master(s)", p.engine_masters)), "{md}");
    // Every measured figure is quoted with the file it comes from.
    assert!(md.contains(c.source) && md.contains(idle.source), "{md}");
    assert!(md.contains(&format!("| {:.1} µs |", c.node_cpu_us_per_msg)), "{md}");
    assert!(md.contains("10,000,000 users, 1,000,000 online, 100,000 messages/s, 50 messages retained per user"), "{md}");
}

#[test]
fn plan_without_bench_or_fleet_is_refused() {
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate")).args(["plan", "--connections", "10"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bench"), "{}", String::from_utf8_lossy(&o.stderr));
}
