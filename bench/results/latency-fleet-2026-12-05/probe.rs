//! TEMPORARY diagnosis probe (not for commit): per-stage delay since the bench payload's send timestamp.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Once;

pub const STAGES: [&str; 6] = ["n_core_send", "n_eng_start", "n_eng_reply", "n_sub_recv", "n_core_entries", "n_core_sentack"];
static ON: AtomicBool = AtomicBool::new(false);
static INIT: Once = Once::new();
static H: [[AtomicU64; 40]; 6] = [const { [const { AtomicU64::new(0) }; 40] }; 6];

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn rec(stage: usize, payload: &[u8]) {
    INIT.call_once(|| {
        if std::env::var_os("RINGGATE_PROBE").is_some() {
            ON.store(true, Relaxed);
            std::thread::spawn(|| loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                dump();
            });
        }
    });
    if !ON.load(Relaxed) || payload.len() < 20 {
        return;
    }
    let ts = u64::from_be_bytes(payload[..8].try_into().unwrap());
    let now = mono_ns();
    if ts == 0 || ts > now || now - ts > 60_000_000_000 {
        return;
    }
    // buckets of 250 us up to 10 ms (40 buckets), last = overflow
    let us = (now - ts) / 1000;
    let b = ((us / 250) as usize).min(39);
    H[stage][b].fetch_add(1, Relaxed);
}

fn q(h: &[u64; 40], n: u64, p: f64) -> String {
    let want = ((n as f64) * p).ceil() as u64;
    let mut s = 0;
    for (i, c) in h.iter().enumerate() {
        s += c;
        if s >= want.max(1) {
            return if i == 39 { ">=9.75ms".into() } else { format!("<{}us", (i + 1) * 250) };
        }
    }
    "-".into()
}

pub fn dump() {
    let mut out = String::new();
    for (i, name) in STAGES.iter().enumerate() {
        let h: [u64; 40] = std::array::from_fn(|b| H[i][b].load(Relaxed));
        let n: u64 = h.iter().sum();
        if n == 0 {
            continue;
        }
        out += &format!("{name} n={n} p50{} p90{} p99{} hist={:?}\n", q(&h, n, 0.5), q(&h, n, 0.9), q(&h, n, 0.99), h);
    }
    let _ = std::fs::write(format!("/tmp/fleetp99/probe-{}.txt", std::process::id()), out);
}
