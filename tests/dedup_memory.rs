//! What an offline device's full dedup table costs in the server's RSS, packed (`session.dedup_pack_after_ms` passed) against live (not yet) and against a device that never sent, each on a fresh real server in one run; the figure behind `plan::OFFLINE_DEDUP_BYTES`.
//!
//! Each device sends `dedup_per_device + 1` SENDs to a group whose only
//! member is itself: the server answers SENDACK 0 and stores nothing (no
//! recipient), so the RSS growth is the device's state alone (its dedup
//! table, its entry in the users table, its ids), not anyone's inbox.
//!
//! RSS counts the allocator's slack too (mimalloc commits and keeps
//! memory in chunks), which the live tables' churn leaves behind and more
//! devices amortise: 300 devices measured ~20 KB per packed device, 2,000
//! measure 11–13 KB, of which the packed buffer is 4.6 KB and a device
//! that never sent 3–4 KB.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DEVICES: u64 = 2000;
/// `session.dedup_per_device`'s default; one more SEND so the oldest is evicted.
const TABLE: u64 = 1_024;

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap();
    kib * 1024
}

fn sender(u: u64) -> String {
    format!("sender{u}")
}

/// A server whose devices' tables are packed `pack_after_ms` after they leave.
fn server(pack_after_ms: u64) -> Server {
    let mut cfg = Config::default()
        .tls(false)
        .set("session", format!("dedup_pack_after_ms = {pack_after_ms}"))
        // Hundreds of logins from one address in a few seconds.
        .set("limits", "connect_rate_per_ip = 100000")
        .set("limits", "connect_rate = 100000");
    // The warm-up device (u = DEVICES) too.
    for u in 0..=DEVICES {
        let name = sender(u);
        cfg = cfg.group(&format!("solo{u}"), &[name.as_str()]);
    }
    cfg.start()
}

/// Device `u` fills its table and leaves; returns its SENDACKs (cmid 1..=TABLE+1).
fn fill_and_leave(s: &Server, u: u64) -> Vec<SendAck> {
    let (mut c, _) = s.login(&sender(u), "phone", 0);
    let group = format!("solo{u}");
    let burst: Vec<u8> = (1..=TABLE + 1).flat_map(|i| send_to_group(i, &group, b"x").encode()).collect();
    c.send_raw(&burst).unwrap();
    (1..=TABLE + 1)
        .map(|i| {
            let a = c.expect_sendack(i);
            assert_eq!(a.status, 0, "{a:?}");
            a
        })
        .collect()
}

/// Device `u` logs in, sends nothing and leaves.
fn visit_silently(s: &Server, u: u64) {
    let (mut c, _) = s.login(&sender(u), "phone", 0);
    c.ping_pong(u + 1);
}

/// RSS growth per device that visited (`fill`: filled its table first),
/// on a fresh server, and device 3's SENDACKs.
fn bytes_per_offline_device(s: &mut Server, fill: bool) -> (u64, Vec<SendAck>) {
    let settle = Duration::from_millis(300);
    let visit = |s: &Server, u| if fill { fill_and_leave(s, u) } else { visit_silently(s, u); Vec::new() };
    // A first device through the whole cycle, so the allocator's pools and
    // the tables' first growth are in the baseline.
    visit(s, DEVICES);
    std::thread::sleep(settle);
    let base = rss_bytes(s.pid());
    let started = Instant::now();
    let mut kept = Vec::new();
    for u in 0..DEVICES {
        let acks = visit(s, u);
        if u == 3 {
            kept = acks;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "filling took too long");
    }
    // The last devices' tables are packed on the next ticks.
    std::thread::sleep(settle);
    s.assert_alive();
    (rss_bytes(s.pid()).saturating_sub(base) / DEVICES, kept)
}

#[test]
fn a_full_dedup_table_of_an_offline_device_costs_a_few_kilobytes_packed() {
    // A/B/C in one run, each on a fresh server: devices that never sent,
    // full tables packed at once, full tables that would be packed only
    // after a day.
    let mut silent = server(0);
    let (silent_bytes, _) = bytes_per_offline_device(&mut silent, false);
    drop(silent);
    let mut live = server(86_400_000);
    let (live_bytes, _) = bytes_per_offline_device(&mut live, true);
    drop(live);
    let mut packed = server(0);
    let (packed_bytes, first) = bytes_per_offline_device(&mut packed, true);
    eprintln!(
        "RSS per offline device ({DEVICES} devices, 2 workers): with a full dedup table ({TABLE} entries) live {live_bytes} B, packed {packed_bytes} B; one that never sent {silent_bytes} B"
    );
    // `plan::OFFLINE_DEDUP_BYTES` quotes the packed figure (device and
    // table); packed − silent is what the table adds.
    let dedup = packed_bytes.saturating_sub(silent_bytes);
    eprintln!("an offline device's full dedup table: {} B live, {dedup} B packed (RSS, net of a silent device)", live_bytes.saturating_sub(silent_bytes));
    assert!(dedup < 16 << 10, "{dedup} B per offline device's packed table");
    assert!(live_bytes > 5 * packed_bytes, "live {live_bytes} B vs packed {packed_bytes} B");

    // The packed answers are the real ones: after reconnecting, the oldest
    // remembered id (2) and the newest get their original SENDACKs; id 1
    // was evicted (the window is exactly `TABLE` ids) and is a new SEND.
    let (mut c, _) = packed.login(&sender(3), "phone", 0);
    for i in [2, TABLE + 1, 1] {
        c.send_frame(&send_to_group(i, "solo3", b"x"));
    }
    assert_eq!(c.expect_sendack(2), first[1]);
    assert_eq!(c.expect_sendack(TABLE + 1), first[TABLE as usize]);
    let again = c.expect_sendack(1);
    assert_eq!(again.status, 0);
    assert_ne!(again.msg_id, first[0].msg_id, "evicted: accepted afresh");
}
