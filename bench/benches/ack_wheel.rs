//! Timer wheel micro-benchmarks: insert, cancel and advance on `AckWheel` holding 10^3 to 10^6 timers.
//!
//! The wheel always holds `n` timers while measured, so each figure is the
//! cost at that occupancy (cache misses grow with it; the algorithm is O(1)).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringgate::proto::ack_wheel::{AckWheel, TimerKey};

const TICK_MS: u64 = 10;
/// Deadlines spread over 5 s (the default ACK timeout), like live ACK timers.
const SPREAD_MS: u64 = 5_000;

/// Deterministic spread of deadlines (no RNG dependency, reproducible).
fn deadline(now: u64, i: u64) -> u64 {
    now + 1 + (i.wrapping_mul(2_654_435_761) % SPREAD_MS)
}

fn filled(n: u64) -> (AckWheel<u64>, Vec<TimerKey>) {
    let mut w = AckWheel::new(TICK_MS, 0);
    let keys = (0..n).map(|i| w.insert(deadline(0, i), i)).collect();
    (w, keys)
}

fn sizes() -> [u64; 4] {
    [1_000, 10_000, 100_000, 1_000_000]
}

fn insert_cancel(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack_wheel/insert+cancel");
    g.throughput(Throughput::Elements(1));
    for n in sizes() {
        let (mut w, _) = filled(n);
        let mut i = n;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                let k = w.insert(deadline(0, i), i);
                black_box(w.cancel(k));
            })
        });
    }
    g.finish();
}

fn cancel_reinsert(c: &mut Criterion) {
    // The ACK path: an ACK cancels a connection's timer and arms a new one.
    let mut g = c.benchmark_group("ack_wheel/cancel+reinsert");
    g.throughput(Throughput::Elements(1));
    for n in sizes() {
        let (mut w, mut keys) = filled(n);
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let slot = (i.wrapping_mul(2_654_435_761) % n) as usize;
                i += 1;
                let v = w.cancel(keys[slot]).unwrap_or(i);
                keys[slot] = w.insert(deadline(0, i), v);
            })
        });
    }
    g.finish();
}

fn advance(c: &mut Criterion) {
    // One tick of a core's timer loop: advance 10 ms, expire what is due
    // (n / 500 timers at this spread), and re-arm them 5 s out.
    let mut g = c.benchmark_group("ack_wheel/advance_10ms");
    for n in sizes() {
        let mut w = AckWheel::new(TICK_MS, 0);
        for i in 0..n {
            w.insert(deadline(0, i), i);
        }
        let mut now = 0u64;
        let mut out = Vec::with_capacity((n / 100) as usize);
        g.throughput(Throughput::Elements((n * TICK_MS / SPREAD_MS).max(1)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                now += TICK_MS;
                w.advance(now, &mut out);
                for v in out.drain(..) {
                    w.insert(now + SPREAD_MS, v);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, insert_cancel, cancel_reinsert, advance);
criterion_main!(benches);
