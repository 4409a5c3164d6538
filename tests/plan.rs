//! `ringgate plan` against a real benchmark suite JSON (a copy of one run's
//! bench/results/latest.json): the report's numbers must be the JSON's.

use std::process::Command;

use serde_json::Value;

fn fixture() -> (std::path::PathBuf, Value) {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench-suite.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    (p, v)
}

fn target<'a>(v: &'a Value, section: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    v[section].as_array().unwrap().iter().find(|e| e["target"] == "ringgate-uring" && pred(e)).unwrap()
}

#[test]
fn report_figures_trace_back_to_the_benchmark_json() {
    let (path, v) = fixture();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--bench"])
        .arg(&path)
        .args(["--connections", "2000000", "--messages-per-s", "100000", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let idle = target(&v, "idle", |_| true);
    let rss = idle["rss_bytes_per_conn"].as_f64().unwrap();
    let kernel = idle["kernel_slab_bytes_per_conn"].as_f64().unwrap() / 2.0;
    assert!(md.contains(&format!("| {rss:.0} B | `idle[target].rss_bytes_per_conn` |")), "{md}");
    assert!(md.contains(&format!("| {kernel:.0} B |")), "{md}");
    let hs = target(&v, "handshake", |e| e["mode"] == "full")["server_cpu_us_per_handshake"].as_f64().unwrap();
    assert!(md.contains(&format!("| {hs:.0} µs |")), "{md}");
    // RAM = (base + N × (rss + kernel)) × 1.3, printed in GiB.
    let base = idle["server_before"]["mem"]["rss_kb"].as_f64().unwrap() * 1024.0;
    let ram = (base + 2e6 * (rss + kernel)) * 1.3 / (1u64 << 30) as f64;
    assert!(md.contains(&format!("{ram:.2} GiB")), "RAM {ram:.2} GiB not in\n{md}");
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.contains("Reconnect-storm recovery time"));
}

#[test]
fn missing_target_is_explained() {
    let (path, _) = fixture();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--bench"])
        .arg(&path)
        .args(["--target", "nosuch", "--connections", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no idle result for target \"nosuch\""));
}
