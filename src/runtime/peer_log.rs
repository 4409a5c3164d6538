//! A rate-limited summary of per-peer failures, so a flood of bad peers costs one log line a minute, not one per peer.
//!
//! Each failure is logged at `debug` where it happens (with peer text
//! escaped and truncated) and counted in the metrics; operators running at
//! `info` see this summary instead: per core, at most once per
//! [`SUMMARY_INTERVAL_MS`], and only when something failed.

use crate::metrics::{CoreMetrics, DISCONNECT_REASONS, HANDSHAKE_RESULTS, HS_OK, REJECTION_REASONS};

/// At most one summary line per core per minute.
pub const SUMMARY_INTERVAL_MS: u64 = 60_000;

/// Failure counters read from one core's metrics (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// Handshakes that did not end in CONNACK 0, by `HANDSHAKE_RESULTS` index.
    pub handshakes: [u64; HANDSHAKE_RESULTS.len()],
    /// Server DISCONNECTs for the peer's fault: protocol error, frame too large.
    pub protocol: u64,
    /// Admission and limit refusals, by `REJECTION_REASONS` index.
    pub rejections: [u64; REJECTION_REASONS.len()],
}

impl Failures {
    pub fn read(m: &CoreMetrics) -> Self {
        let mut f = Failures::default();
        for (i, c) in m.handshakes.iter().enumerate() {
            if i != HS_OK {
                f.handshakes[i] = c.get();
            }
        }
        f.protocol = reason(m, "protocol_error") + reason(m, "frame_too_large");
        for (i, c) in m.rejections.iter().enumerate() {
            f.rejections[i] = c.get();
        }
        f
    }

    fn minus(&self, o: &Failures) -> Failures {
        let mut d = Failures { protocol: self.protocol.saturating_sub(o.protocol), ..Default::default() };
        for i in 0..d.handshakes.len() {
            d.handshakes[i] = self.handshakes[i].saturating_sub(o.handshakes[i]);
        }
        for i in 0..d.rejections.len() {
            d.rejections[i] = self.rejections[i].saturating_sub(o.rejections[i]);
        }
        d
    }

    fn is_zero(&self) -> bool {
        self.protocol == 0 && self.handshakes.iter().all(|&n| n == 0) && self.rejections.iter().all(|&n| n == 0)
    }

    /// `tls_error=3 timeout=1 protocol=2 rate_limited=7`: the non-zero counts only.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (i, &n) in self.handshakes.iter().enumerate() {
            if n != 0 {
                parts.push(format!("{}={n}", HANDSHAKE_RESULTS[i]));
            }
        }
        if self.protocol != 0 {
            parts.push(format!("protocol={}", self.protocol));
        }
        for (i, &n) in self.rejections.iter().enumerate() {
            if n != 0 {
                parts.push(format!("{}={n}", REJECTION_REASONS[i]));
            }
        }
        parts.join(" ")
    }
}

fn reason(m: &CoreMetrics, name: &str) -> u64 {
    DISCONNECT_REASONS.iter().position(|r| *r == name).map_or(0, |i| m.disconnects[i].get())
}

/// When the last summary went out and what had been counted by then.
#[derive(Default)]
pub struct PeerLog {
    last_ms: u64,
    seen: Failures,
}

impl PeerLog {
    /// Called from the core's tick with the current counters: the failures
    /// since the last summary, when one is due and there were any.
    pub fn due(&mut self, now_ms: u64, current: Failures) -> Option<Failures> {
        if self.last_ms == 0 {
            // First look: start the window here (nothing to compare with).
            self.last_ms = now_ms.max(1);
            self.seen = current;
            return None;
        }
        if now_ms < self.last_ms.saturating_add(SUMMARY_INTERVAL_MS) {
            return None;
        }
        let delta = current.minus(&self.seen);
        self.last_ms = now_ms;
        self.seen = current;
        (!delta.is_zero()).then_some(delta)
    }

    /// [`Self::due`] plus the log line.
    pub fn tick(&mut self, worker: usize, now_ms: u64, m: &CoreMetrics) {
        if let Some(d) = self.due(now_ms, Failures::read(m)) {
            tracing::info!(worker, window_s = SUMMARY_INTERVAL_MS / 1000, failures = %d.describe(), "peer failures in the last window (details at debug)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(tls: u64, rate: u64) -> Failures {
        let mut f = Failures::default();
        f.handshakes[crate::metrics::HS_TLS_ERROR] = tls;
        f.rejections[crate::metrics::REJ_RATE_LIMITED] = rate;
        f
    }

    #[test]
    fn one_line_per_window_with_the_delta_and_none_when_quiet() {
        let mut p = PeerLog::default();
        assert_eq!(p.due(1_000, with(5, 0)), None, "the first look opens the window");
        // A flood inside the window: nothing until the window ends.
        assert_eq!(p.due(30_000, with(5_000, 10)), None);
        let d = p.due(61_000, with(20_000, 10)).expect("a summary after a minute");
        assert_eq!(d, with(19_995, 10));
        assert_eq!(d.describe(), "tls_error=19995 rate_limited=10");
        // Quiet minute: no line.
        assert_eq!(p.due(122_000, with(20_000, 10)), None);
        // The next failure is reported in the window after it.
        assert_eq!(p.due(150_000, with(20_001, 10)), None);
        assert_eq!(p.due(182_000, with(20_001, 10)), Some(with(1, 0)));
    }

    #[test]
    fn reads_every_failure_kind_from_the_metrics() {
        let m = CoreMetrics::default();
        m.handshakes[HS_OK].add(100);
        m.handshakes[crate::metrics::HS_TIMEOUT].add(2);
        m.disconnects[1].add(3); // protocol_error
        m.disconnects[2].add(1); // frame_too_large
        m.disconnects[5].add(9); // idle_timeout: not a peer failure
        m.rejections[crate::metrics::REJ_SLOW_CONSUMER].add(4);
        let f = Failures::read(&m);
        assert_eq!(f.describe(), "timeout=2 protocol=4 slow_consumer=4");
    }
}
