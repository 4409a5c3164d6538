//! Latency histograms, percentile summaries, and the open-loop send schedule that corrects coordinated omission.
//!
//! Latencies are recorded in microseconds into an HdrHistogram (3
//! significant digits, up to 10 minutes). Worker processes ship histograms
//! to the parent as `(value, count)` pairs of the recorded buckets, which
//! merge exactly.
//!
//! Clock: [`mono_ns`] is `CLOCK_MONOTONIC`, which is one clock for every
//! process on the machine, so a sender in one worker process and a
//! receiver in another can subtract their timestamps.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds of `CLOCK_MONOTONIC` (system-wide, unlike `Instant`'s opaque origin).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Largest latency we record (µs); anything longer is clamped, not dropped.
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        // 1 µs .. 10 min with 3 significant digits: ~0.1% error, ~40 KB.
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!("static bounds are valid")))
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.record_us(ns / 1_000);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The recorded buckets, for shipping between processes.
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }

    pub fn from_pairs(pairs: &[(u64, u64)]) -> Hist {
        let mut h = Hist::new();
        for &(v, c) in pairs {
            let _ = h.0.record_n(v.clamp(1, MAX_US), c);
        }
        h
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean_us: h.mean(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hist({:?})", self.summary())
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_pairs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        Ok(Hist::from_pairs(&pairs))
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// An open-loop timeline: message `k` (0-based) of one sender is due at
/// `start_ns + k * interval_ns`, whatever happened to message `k - 1`.
///
/// The sender sends every message whose time has come (several at once if
/// it fell behind) and stamps each with its *scheduled* time, so a stall
/// anywhere — server, network, or the sender itself — shows up as latency
/// of every message that should have gone out during it, instead of those
/// messages silently never being sent (coordinated omission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub start_ns: u64,
    pub interval_ns: u64,
    /// Messages in the whole run (bounds the loop).
    pub total: u64,
}

impl Schedule {
    /// A sender's share of `rate_per_s` spread evenly over `senders`,
    /// lasting `duration_ns`. Senders are offset by `index` fractions of an
    /// interval so that together they send at an even pace, not in bursts.
    pub fn for_sender(rate_per_s: f64, senders: u32, index: u32, start_ns: u64, duration_ns: u64) -> Schedule {
        let per_sender = (rate_per_s / senders.max(1) as f64).max(1e-9);
        let interval_ns = ((1e9 / per_sender).round() as u64).max(1);
        let offset = interval_ns * index as u64 / senders.max(1) as u64;
        let total = duration_ns / interval_ns;
        Schedule { start_ns: start_ns + offset, interval_ns, total }
    }

    /// Scheduled time of message `k`.
    pub fn at(&self, k: u64) -> u64 {
        self.start_ns + k * self.interval_ns
    }

    /// How many messages are due at `now_ns` (never more than `total`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        ((now_ns - self.start_ns) / self.interval_ns + 1).min(self.total)
    }
}

/// `a / b` for ratios in reports; `None` when either side is missing or zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a >= 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Hist::new();
        for us in 1..=1000 {
            h.record_us(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_us, 1);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 0.5);
    }

    #[test]
    fn one_outlier_moves_p999_not_p99() {
        let mut h = Hist::new();
        for _ in 0..999 {
            h.record_us(100);
        }
        h.record_us(2_000_000);
        let s = h.summary();
        assert_eq!(s.p99_us, 100);
        assert!(s.max_us >= 1_999_000 && s.max_us <= 2_001_000, "{}", s.max_us);
    }

    #[test]
    fn pairs_round_trip_and_merge_exactly() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        for i in 0..500 {
            a.record_us(10 + i);
            b.record_us(10_000 + 7 * i);
        }
        let a2 = Hist::from_pairs(&a.to_pairs());
        assert_eq!(a.summary(), a2.summary());
        let mut m = a2;
        m.merge(&serde_json::from_str::<Hist>(&serde_json::to_string(&b).unwrap()).unwrap());
        let mut direct = a.clone();
        direct.merge(&b);
        assert_eq!(m.summary(), direct.summary());
        assert_eq!(m.len(), 1000);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = Hist::new();
        h.record_us(0);
        h.record_us(u64::MAX);
        h.record_ns(999);
        assert_eq!(h.len(), 3);
        assert_eq!(h.summary().min_us, 1);
    }

    #[test]
    fn schedule_spreads_rate_over_senders() {
        // 1,000 msg/s over 4 senders = 250/s each = every 4 ms, for 2 s.
        let s0 = Schedule::for_sender(1000.0, 4, 0, 1_000, 2_000_000_000);
        let s1 = Schedule::for_sender(1000.0, 4, 1, 1_000, 2_000_000_000);
        assert_eq!(s0.interval_ns, 4_000_000);
        assert_eq!(s0.total, 500);
        assert_eq!(s1.start_ns - s0.start_ns, 1_000_000, "senders interleave");
        assert_eq!(s0.at(3), 1_000 + 12_000_000);
    }

    #[test]
    fn schedule_due_counts_backlog_and_is_bounded() {
        let s = Schedule { start_ns: 100, interval_ns: 10, total: 5 };
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(99), 0);
        assert_eq!(s.due(100), 1, "message 0 is due at start");
        assert_eq!(s.due(119), 2);
        assert_eq!(s.due(120), 3);
        // A sender that stalled sees everything missed at once, never more than total.
        assert_eq!(s.due(1_000_000), 5);
    }

    #[test]
    fn latency_from_schedule_includes_the_stall() {
        // A sender that stalls 50 ms and then sends its backlog: the first
        // delayed message's latency, measured from its scheduled time, is
        // the stall plus the service time, not just the service time.
        let s = Schedule { start_ns: 0, interval_ns: 1_000_000, total: 100 };
        let resume_at = 50_000_000;
        let service = 200_000;
        let mut h = Hist::new();
        for k in 0..s.due(resume_at) {
            h.record_ns(resume_at + service - s.at(k));
        }
        let sm = h.summary();
        assert_eq!(sm.count, 51);
        assert!(sm.max_us >= 50_000, "stall is visible: {sm:?}");
        assert!(sm.p50_us >= 25_000, "half the messages waited at least half the stall: {sm:?}");
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
