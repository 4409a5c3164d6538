//! End to end: `ringgate-bench idle-multi` against real ringgate processes sharing a port, with the lean client.
//!
//! Runs the real binaries (the bench spawns its worker processes from its
//! own executable, so the test cannot call the library in-process): two
//! servers on one port, two client processes, 2,000 TLS connections handed
//! off to the record layer after CONNACK, held with heartbeats, every one
//! PINGed, and a message published to a sample through both servers' admin
//! APIs and acked. Needs the `ringgate` binary of this workspace
//! (`cargo test --workspace` builds it).

use std::path::PathBuf;
use std::process::Command;

fn ringgate_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/ringgate");
    assert!(p.exists(), "{} missing: run `cargo build --release --workspace` first", p.display());
    p
}

#[test]
fn lean_idle_multi_holds_proves_alive_and_delivers_to_the_sample() {
    let out = std::env::temp_dir().join(format!("rg-idle-multi-test-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_ringgate-bench"))
        .args(["idle-multi", "--conns", "2000", "--warmup", "40", "--servers", "2", "--procs", "2"])
        .args(["--hold-s", "3", "--keepalive-s", "2", "--sample", "200", "--check-timeout-s", "30", "--settle-s", "0.2"])
        .arg("--ringgate-bin")
        .arg(ringgate_bin())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "ringgate-bench exited with {status}");
    let file = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("idle-multi-") && n.ends_with(".json")))
        .expect("result JSON written");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(v["skipped"].as_array().map(|a| a.len()), Some(0), "{}", v["skipped"]);
    let r = &v["idle_multi"][0];
    assert_eq!(r["stopped"], serde_json::Value::Null, "{r}");
    assert_eq!(r["connected"], 2000);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["servers"], 2);
    assert_eq!(r["server_held"], 2000, "{r}");
    assert_eq!(r["lean_client"], true);
    // Heartbeats ran (keepalive 2 s: a PING every 1.6 s per connection).
    assert!(r["heartbeat_pings"].as_u64().unwrap() >= 2040, "{r}");
    assert_eq!(r["dead_during_hold"], 0, "{r}");
    // Every connection, warm-up included, answered a PING after the hold.
    assert_eq!(r["alive_after_hold"], 2040, "{r}");
    // 2,040 / stride 10 = 204 sampled users, each delivered and acked on the server.
    assert_eq!(r["sample"], 204);
    assert_eq!(r["delivered_sample"], 204, "{r}");
    assert_eq!(r["acked_sample"], 204, "{r}");
    assert!(r["held_s"].as_f64().unwrap() >= 3.0);
}
