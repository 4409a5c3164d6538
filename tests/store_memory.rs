//! Recovery in bounded memory: after a SIGKILL the restarted server's resident memory, peak included, stays within a small constant of what the running server used, however large the log.
//!
//! Recovery streams each segment through a fixed window and keeps only the
//! index (payloads are read back on demand); before, it read every segment whole into RAM, so a server using
//! 190 MiB came back at 471 MiB.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const USERS: u64 = 200;
const PER_USER: u64 = 250;
const PAYLOAD: usize = 1024;
/// Allowed growth over the running server: the scan window, the index
/// being built, allocator slack. Far below the ~50 MiB of log.
const SLACK_KIB: u64 = 24 * 1024;

#[test]
fn restart_after_sigkill_uses_no_more_memory_than_the_running_server_plus_a_constant() {
    let mut s = Config::default().tls(false).durable("never").segment_max_bytes(8 << 20).set("limits", "send_rate_per_connection = 1000000").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let body = vec![b'x'; PAYLOAD];
    let started = Instant::now();
    let mut cmid = 0u64;
    for round in 0..PER_USER {
        let mut burst = Vec::new();
        let first = cmid + 1;
        for u in 0..USERS {
            cmid += 1;
            burst.extend(send_to_user(cmid, &format!("user{u}"), &body).encode());
        }
        alice.send_raw(&burst).unwrap();
        for c in first..=cmid {
            let a = alice.expect_sendack(c);
            assert_eq!(a.status, 0, "round {round}: {a:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "sending took too long");
    }
    let log_bytes: u64 = walk(&s.data_dir().join("log"));
    let (running, _) = mem_kib(s.pid());
    s.kill9();
    s.restart();
    let (after, peak) = mem_kib(s.pid());
    eprintln!(
        "log {:.1} MiB; running server RSS {} KiB; after restart RSS {} KiB, peak {} KiB",
        log_bytes as f64 / (1 << 20) as f64,
        running,
        after,
        peak
    );
    assert!(log_bytes > 40 << 20, "the log is too small to show anything: {log_bytes} bytes");
    assert!(peak <= running + SLACK_KIB, "peak RSS during recovery {peak} KiB > running {running} KiB + {SLACK_KIB} KiB");
    assert!(after <= running + SLACK_KIB, "RSS after restart {after} KiB > running {running} KiB + {SLACK_KIB} KiB");
    // And it is all there.
    let (mut bob, ack) = s.login("user7", "phone", 0);
    assert_eq!(ack.head_seq, PER_USER);
    let p = bob.expect_push();
    assert_eq!(p.payload.len(), PAYLOAD);
}

fn walk(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
    }
    n
}
