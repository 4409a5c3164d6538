//! The durable store's payload budget: far more payload bytes than `store.memory_budget_bytes` stored for offline users keep the server's RSS within the budget plus a constant, every message replays intact from the log, and a replay of thousands of cold messages leaves a neighbour's PING round trips alone.
//!
//! Before the budget each inbox kept its newest 64 payloads in RAM: the
//! 250 offline inboxes below held all 125 MiB of their payloads.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const USERS: u64 = 250;
const PER_USER: u64 = 32;
const PAYLOAD: usize = 16 * 1024;
/// The whole process's budget (two workers: 4 MiB each).
const BUDGET: u64 = 8 << 20;
/// RSS allowed beyond the budget over the server's RSS before the load:
/// the index (~100 bytes per message: 8,000 here), the delivery ledger,
/// connection and write buffers, allocator slack. Measured at 23 to 36 MiB
/// here, and the same with 1 MiB of budget and 375 MiB stored (it does not
/// grow with what is stored); the payloads stored are 125 MiB.
const SLACK: u64 = 40 << 20;
/// PING round trips allowed while another device replays cold messages.
const P99_MS: u128 = 50;
const MAX_MS: u128 = 2_000;

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap();
    kib * 1024
}

/// Message `i` of `user`: its identity repeated, so any mix-up shows.
fn body(user: u64, i: u64) -> Vec<u8> {
    let tag = format!("user{user}/msg{i};");
    tag.as_bytes().iter().copied().cycle().take(PAYLOAD).collect()
}

/// A user homed on the same core as `other` (2 workers).
fn neighbour_of(other: &str) -> String {
    let home = ringgate::runtime::mesh::home_core(other, 2);
    (0..).map(|i| format!("pinger{i}")).find(|u| ringgate::runtime::mesh::home_core(u, 2) == home).unwrap()
}

#[test]
fn offline_payloads_beyond_the_budget_stay_on_disk_and_replay_intact() {
    let mut s = Config::default()
        .tls(false)
        .durable("never")
        .set("store", format!("memory_budget_bytes = {BUDGET}"))
        .set("limits", "send_rate_per_connection = 1000000")
        // 250 users log in back to back from one address below; the default
        // 200 connections/s per address closes the excess at accept.
        .set("limits", "connect_rate_per_ip = 1000000")
        .start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.ping_pong(1);
    let base = rss_bytes(s.pid());

    let started = Instant::now();
    let mut cmid = 0;
    for i in 1..=PER_USER {
        let mut burst = Vec::new();
        let first = cmid + 1;
        for u in 0..USERS {
            cmid += 1;
            burst.extend(send_to_user(cmid, &format!("user{u}"), &body(u, i)).encode());
            if burst.len() > 1 << 20 || u + 1 == USERS {
                alice.send_raw(&burst).unwrap();
                burst.clear();
            }
        }
        for c in first..=cmid {
            assert_eq!(alice.expect_sendack(c).status, 0);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "sending took too long");
        if std::env::var_os("RSS_TRACE").is_some() { eprintln!("round {i}: RSS {} KiB", rss_bytes(s.pid()) >> 10); }
    }
    let stored = USERS * PER_USER * PAYLOAD as u64;
    let after_load = rss_bytes(s.pid());
    eprintln!(
        "stored {} MiB of payloads; RSS before {} MiB, after {} MiB (+{:.1} MiB; budget {} MiB)",
        stored >> 20,
        base >> 20,
        after_load >> 20,
        after_load.saturating_sub(base) as f64 / (1 << 20) as f64,
        BUDGET >> 20
    );
    assert!(stored > 10 * BUDGET);
    assert!(after_load <= base + BUDGET + SLACK, "RSS grew by {} bytes storing {stored} bytes of payloads; budget {BUDGET}", after_load - base);

    // One device replays a whole inbox of cold messages while a neighbour
    // on the same core pings.
    let stop = Arc::new(AtomicBool::new(false));
    let ping_user = neighbour_of("user7");
    let (mut pinger, _) = s.login(&ping_user, "pinger", 0);
    let p = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rtts = Vec::new();
            let mut nonce = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                pinger.ping_pong(nonce);
                rtts.push(t.elapsed().as_micros());
                nonce += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            rtts
        })
    };

    // Every user reconnects; every message comes back intact, in order.
    for u in 0..USERS {
        let user = format!("user{u}");
        let (mut c, ack) = s.login(&user, "phone", 0);
        assert_eq!(ack.head_seq, PER_USER, "{user}");
        for i in 1..=PER_USER {
            let push = c.expect_push();
            assert_eq!(push.seq, i, "{user}");
            assert!(push.payload == body(u, i), "{user} seq {i}: payload differs");
            c.ack(i);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut rtts = p.join().unwrap();
    rtts.sort();
    let (p50, p99, max) = (rtts[rtts.len() / 2] / 1000, rtts[rtts.len() * 99 / 100] / 1000, rtts[rtts.len() - 1] / 1000);
    let after_replay = rss_bytes(s.pid());
    eprintln!(
        "replayed {} cold messages: neighbour's PING {} round trips, p50 {p50} ms, p99 {p99} ms, max {max} ms; RSS after {} MiB",
        USERS * PER_USER,
        rtts.len(),
        after_replay >> 20
    );
    assert!(rtts.len() >= 20, "only {} pings", rtts.len());
    assert!(p99 < P99_MS && max < MAX_MS, "PING p99 {p99} ms, max {max} ms during the replay");
    assert!(after_replay <= base + BUDGET + SLACK, "RSS grew by {} bytes after replaying; budget {BUDGET}", after_replay - base);

    // And after a restart (the cache starts empty) they are all still there.
    s.kill9();
    s.restart();
    let (mut c, ack) = s.login("user42", "tablet", 0);
    assert_eq!(ack.head_seq, PER_USER);
    for i in 1..=PER_USER {
        let push = c.expect_push();
        assert!(push.seq == i && push.payload == body(42, i), "after restart: seq {}", push.seq);
        c.ack(i);
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    n
}

const MEMBERS: usize = 2_000;
const GROUP_PAYLOAD: usize = 60 * 1024;

#[test]
fn a_group_message_is_written_to_the_log_once_per_core_not_once_per_member() {
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = std::iter::once("alice").chain(members.iter().map(|m| m.as_str())).collect();
    let mut s = Config::default().tls(false).durable("always").group("big", &refs).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.ping_pong(1);
    let log_before = dir_bytes(&s.data_dir().join("log"));
    let rss_before = rss_bytes(s.pid());
    let payload: Vec<u8> = (0..GROUP_PAYLOAD).map(|i| (i % 251) as u8).collect();
    alice.send_frame(&send_to_group(1, "big", &payload));
    assert_eq!(alice.expect_sendack(1).status, 0);
    let log_grew = dir_bytes(&s.data_dir().join("log")) - log_before;
    let rss_grew = rss_bytes(s.pid()).saturating_sub(rss_before);
    eprintln!(
        "one {} KB SEND to {MEMBERS} members: log +{} KiB (a copy per member would be {} MiB), RSS +{} KiB",
        GROUP_PAYLOAD / 1024,
        log_grew >> 10,
        (MEMBERS * GROUP_PAYLOAD) >> 20,
        rss_grew >> 10
    );
    // The payload once per core (2), plus ~100 bytes of index record per member.
    assert!(log_grew < 2 * GROUP_PAYLOAD as u64 + MEMBERS as u64 * 200 + (64 << 10), "log grew by {log_grew} bytes");
    // Ten more: the same again each (no per-member payload).
    let (log_before, rss_before) = (dir_bytes(&s.data_dir().join("log")), rss_bytes(s.pid()));
    for cmid in 2..=11 {
        alice.send_frame(&send_to_group(cmid, "big", &payload));
        assert_eq!(alice.expect_sendack(cmid).status, 0);
    }
    let log_grew_10 = dir_bytes(&s.data_dir().join("log")) - log_before;
    let rss_grew_10 = rss_bytes(s.pid()).saturating_sub(rss_before);
    eprintln!("ten more: log +{} KiB, RSS +{} KiB", log_grew_10 >> 10, rss_grew_10 >> 10);
    assert!(log_grew_10 < 11 * log_grew, "log grew by {log_grew_10} bytes for ten more");
    // The target: < 8 MiB for one such SEND, the first one with
    // its 2,000 new inboxes included (seen 3.6-5 MiB; 28-30 MiB, and 3-45
    // MiB for ten more, while the allocator's arenas had transparent huge
    // pages: src/main.rs). Ten more: seen 6-7.5 MiB together.
    assert!(rss_grew < 8 << 20, "the first {} KB SEND to {MEMBERS} members cost {} KiB of RSS", GROUP_PAYLOAD / 1024, rss_grew >> 10);
    assert!(rss_grew_10 < 10 * (2 << 20), "ten {} KB SENDs to {MEMBERS} members cost {} KiB of RSS", GROUP_PAYLOAD / 1024, rss_grew_10 >> 10);
    // Every member gets it, intact, also after a restart (recovery reads
    // the shared payload for each).
    s.kill9();
    s.restart();
    for m in [0, 1, 999, MEMBERS - 1] {
        let (mut c, ack) = s.login(&members[m], "phone", 0);
        assert_eq!(ack.head_seq, 11);
        for seq in 1..=11 {
            c.expect_push_seq(seq, &payload);
            c.ack(seq);
        }
    }
}

/// RAM per offline user, for the capacity plan (`ringgate plan`'s
/// `--offline-users`): (a) a user who never connected, with 100 retained
/// messages in the durable store (the index; payloads are in the budgeted
/// cache, kept at 1 MiB here, and the delivery ledger is off: both are
/// bounded on their own); (b) what a device that sent
/// `dedup_per_device` (1,024) SENDs and went offline leaves in its core (its
/// dedup table and cursor).
#[test]
fn ram_per_offline_user_is_measured_and_bounded() {
    const USERS_A: u64 = 2_000;
    const RETAINED: u64 = 100;
    const USERS_B: u64 = 100;
    const DEDUP: u64 = 1_024;
    let mut s = Config::default()
        .tls(false)
        .durable("never")
        .set("store", "memory_budget_bytes = 1048576")
        .set("admin", "ledger_retention_s = 0")
        .set("limits", "send_rate_per_connection = 1000000")
        .start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.ping_pong(1);
    let base = rss_bytes(s.pid());
    let mut cmid = 0;
    for i in 0..RETAINED {
        let mut burst = Vec::new();
        let first = cmid + 1;
        for u in 0..USERS_A {
            cmid += 1;
            burst.extend(send_to_user(cmid, &format!("offline{u}"), format!("m{i}-{u}").as_bytes()).encode());
        }
        alice.send_raw(&burst).unwrap();
        for c in first..=cmid {
            assert_eq!(alice.expect_sendack(c).status, 0);
        }
    }
    let after_a = rss_bytes(s.pid());
    // Minus the cache (at most its 1 MiB budget).
    let per_user_a = after_a.saturating_sub(base + (1 << 20)) / USERS_A;

    for u in 0..USERS_B {
        let (mut c, _) = s.login(&format!("sender{u}"), "phone", 0);
        let burst: Vec<u8> = (1..=DEDUP).flat_map(|i| send_to_user(i, "sink", b"x").encode()).collect();
        c.send_raw(&burst).unwrap();
        for i in 1..=DEDUP {
            assert_eq!(c.expect_sendack(i).status, 0);
        }
    }
    let after_b = rss_bytes(s.pid());
    let per_user_b = after_b.saturating_sub(after_a) / USERS_B;
    eprintln!(
        "RAM per offline user: {per_user_a} B with {RETAINED} retained messages (durable index; {USERS_A} users); {per_user_b} B per offline device with a full dedup table ({DEDUP} entries; {USERS_B} devices)"
    );
    // `plan::OFFLINE_USER_BYTES` quotes this figure (20,791 B measured: the
    // index's ~50 B per message, its queue's growth to 128 slots, the
    // inbox, allocator slack).
    assert!(per_user_a < 32 << 10, "{per_user_a} B per offline user with {RETAINED} messages");
    assert!(per_user_b < 512 << 10, "{per_user_b} B per offline device's dedup table");
    // Dedup answers are real: a retried SEND after the device comes back
    // gets its original answer.
    let (mut c, _) = s.login("sender3", "phone", 0);
    c.send_frame(&send_to_user(DEDUP, "sink", b"x"));
    assert_eq!(c.expect_sendack(DEDUP).status, 0);
    let _ = &mut s;
}
