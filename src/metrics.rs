//! Metrics: per-core counters written only by their core (no lock, no shared cache line), summed into Prometheus text at scrape time.
//!
//! Each worker core owns one [`CoreMetrics`] (cache-line aligned, so two
//! cores never write the same line). A core is the only writer of its
//! counters, so an increment is a relaxed load and a relaxed store (plain
//! `mov`s on x86, no `lock` prefix, no contention); the scraper reads them
//! with relaxed loads and may see a value a few nanoseconds old, which a
//! scrape every 15 s cannot tell from exact. Counters the admin threads
//! write (publishes) use `fetch_add`, since several threads share them.
//!
//! The text is encoded by hand rather than with `prometheus-client`: the
//! names are a contract (ADMIN.md) and that crate appends `_total` and unit
//! suffixes itself; the format is a dozen lines of `format!` either way.
//! Both Prometheus text 0.0.4 and OpenMetrics 1.0 are written.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A counter or gauge with exactly one writing thread.
#[derive(Default, Debug)]
pub struct Cell(AtomicU64);

impl Cell {
    /// Single-writer increment: a load and a store, no read-modify-write.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (seconds) of every latency histogram's buckets.
pub const BUCKETS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with one writing thread: per-bucket counts (not
/// cumulative; summed at scrape), the sum in nanoseconds and the count.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [Cell; BUCKETS_S.len()],
    sum_ns: Cell,
    count: Cell,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            self.buckets[i].inc();
        }
        self.sum_ns.add(d.as_nanos().min(u64::MAX as u128) as u64);
        self.count.inc();
    }
}

#[derive(Default)]
struct HistSum {
    buckets: [u64; BUCKETS_S.len()],
    sum_ns: u64,
    count: u64,
}

impl HistSum {
    fn add(&mut self, h: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(h.buckets.iter()) {
            *a += b.get();
        }
        self.sum_ns += h.sum_ns.get();
        self.count += h.count.get();
    }
}

/// `ringgate_handshakes_total{result}` label values, by index.
pub const HANDSHAKE_RESULTS: [&str; 5] = ["ok", "tls_error", "timeout", "bad_token", "refused"];
pub const HS_OK: usize = 0;
pub const HS_TLS_ERROR: usize = 1;
pub const HS_TIMEOUT: usize = 2;
pub const HS_BAD_TOKEN: usize = 3;
pub const HS_REFUSED: usize = 4;

/// `status` label values of sends and publishes, indexed by SENDACK status
/// (0 stored .. 5 retry, which the contract calls `busy`).
pub const SEND_STATUSES: [&str; 6] = ["stored", "no_such_target", "forbidden", "rate_limited", "too_large", "busy"];

pub const PUSH_KINDS: [&str; 3] = ["first", "retransmit", "replay"];
pub const PUSH_FIRST: usize = 0;
pub const PUSH_RETRANSMIT: usize = 1;
pub const PUSH_REPLAY: usize = 2;

/// `reason` label values, indexed by DISCONNECT reason code.
pub const DISCONNECT_REASONS: [&str; 10] = [
    "normal",
    "protocol_error",
    "frame_too_large",
    "token_expired",
    "ack_timeout",
    "idle_timeout",
    "replaced",
    "shutdown",
    "slow_consumer",
    "handshake_timeout",
];

/// `ringgate_rejections_total{reason}` label values.
/// What each means: the table in docs/limits.md.
pub const REJECTION_REASONS: [&str; 16] = [
    "rate_limited",
    "busy",
    "too_large",
    "preauth_limit",
    "fd_limit",
    "connect_rate_ip",
    "address_table_full",
    "shed_preauth",
    "full",
    "connect_rate",
    "slow_consumer",
    "bad_target",
    "post_over_high_water",
    "too_many_devices",
    "origin",
    "muted",
];
/// SENDACK 3: over `limits.send_rate_per_connection`.
pub const REJ_RATE_LIMITED: usize = 0;
/// SENDACK 5: too many SENDs in flight, or a target core's mailbox full.
pub const REJ_BUSY: usize = 1;
/// SENDACK 4 (413 for publishes): payload over the limit or a PUSH over `max_frame`.
pub const REJ_TOO_LARGE: usize = 2;
/// No longer counted (kept so the label set stays stable): at
/// `max_preauth_per_ip` the address's oldest pre-auth connection is now
/// shed instead (`shed_preauth`).
pub const REJ_PREAUTH_LIMIT: usize = 3;
/// accept(2) failed for lack of file descriptors.
pub const REJ_FD_LIMIT: usize = 4;
/// Closed at accept: the address connects faster than `connect_rate_per_ip`.
pub const REJ_CONNECT_RATE_IP: usize = 5;
/// Closed at accept: too many distinct addresses tracked.
pub const REJ_ADDRESS_TABLE_FULL: usize = 6;
/// A pre-auth connection closed to make room near `max_connections`.
pub const REJ_SHED_PREAUTH: usize = 7;
/// Closed at accept: at `max_connections` with nothing to shed.
pub const REJ_FULL: usize = 8;
/// CONNACK 3: over `limits.connect_rate` on a core.
pub const REJ_CONNECT_RATE: usize = 9;
/// DISCONNECT 8 after `slow_consumer_timeout_ms` above the output high-water mark.
pub const REJ_SLOW_CONSUMER: usize = 10;
/// SENDACK 1 for a target that is not a valid name.
pub const REJ_BAD_TARGET: usize = 11;
/// `429`: frames POSTed for an SSE or long-poll session whose output is
/// above `limits.output_high_water_bytes` (nothing processed).
pub const REJ_POST_OVER_HIGH_WATER: usize = 12;
/// CONNACK 3: a new device of a user at `limits.max_devices_per_user`
/// whose devices are all online (none to evict).
pub const REJ_TOO_MANY_DEVICES: usize = 13;
/// `403`: an HTTP request (WebSocket, SSE, long-poll) from an `Origin` not in `web.allowed_origins`.
pub const REJ_ORIGIN: usize = 14;
/// SENDACK 2: the sender is muted by an operator (`PUT /v1/users/NAME/mute`).
pub const REJ_MUTED: usize = 15;

/// One core's metrics; only that core (and, for `fsync`, its syncer thread) writes them.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct CoreMetrics {
    /// Connections registered on this core (any phase).
    pub conns: Cell,
    /// Of those, CONNECT accepted (the session is open or closing).
    pub conns_open: Cell,
    pub handshakes: [Cell; HANDSHAKE_RESULTS.len()],
    pub sends: [Cell; SEND_STATUSES.len()],
    pub pushes: [Cell; PUSH_KINDS.len()],
    pub disconnects: [Cell; DISCONNECT_REASONS.len()],
    pub rejections: [Cell; REJECTION_REASONS.len()],
    pub delivery: Histogram,
    pub sendack: Histogram,
    /// Retained messages in this core's inboxes (refreshed once a second).
    pub inbox_messages: Cell,
    /// Written by this core's syncer thread only.
    pub fsync: Histogram,
}

/// Readiness inputs (ADMIN.md `/readyz`).
#[derive(Debug)]
pub struct Health {
    pub recovering: AtomicBool,
    pub gateway_up: AtomicBool,
    pub admin_up: AtomicBool,
    pub draining: AtomicBool,
    pub storage_failed: AtomicBool,
    /// Fleet mode: the engine did not answer the last heartbeat.
    pub engine_down: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            recovering: AtomicBool::new(true),
            gateway_up: AtomicBool::new(false),
            admin_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            storage_failed: AtomicBool::new(false),
            engine_down: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Why the process is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        // Any failed fsync (data file, new segment, directory) fails the
        // store for good (store/durable.rs, "When the disk fails"); the
        // runtime sets the flag from the store's failure hook.
        if self.storage_failed.load(Relaxed) {
            Some("storage failure")
        } else if self.engine_down.load(Relaxed) {
            Some("fleet engine unreachable")
        } else if self.draining.load(Relaxed) {
            Some("draining")
        } else if self.recovering.load(Relaxed) {
            Some("recovering")
        } else if !self.gateway_up.load(Relaxed) || !self.admin_up.load(Relaxed) {
            Some("starting")
        } else {
            None
        }
    }
}

/// Every metric of the process.
pub struct Metrics {
    cores: OnceLock<Box<[CoreMetrics]>>,
    /// Admin publishes by status (several admin threads: `fetch_add`).
    pub publishes: [AtomicU64; SEND_STATUSES.len()],
    /// Rejections decided by the admin API (oversized publish bodies...).
    pub admin_rejections: [AtomicU64; REJECTION_REASONS.len()],
    pub admin_requests: AtomicU64,
    /// Configuration reloads: [ok, error] (the main thread writes them).
    pub config_reloads: [AtomicU64; 2],
    /// When the running configuration was loaded (start, then each good reload), Unix ms.
    pub config_last_reload_ms: AtomicU64,
    pub health: Health,
    /// "tls" or "tcp": what the gateway port speaks.
    pub transport: &'static str,
    /// Fleet mode's metrics (FLEET.md), rendered after the others.
    pub fleet: OnceLock<Arc<crate::fleet::FleetMetrics>>,
    start: Instant,
    start_unix_s: f64,
}

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Records one fsync of `core`'s log (called on that core's syncer thread;
/// a no-op before `serve` registered the process's metrics).
pub fn record_fsync(core: usize, d: Duration) {
    if let Some(c) = GLOBAL.get().and_then(|m| m.cores.get()).and_then(|c| c.get(core)) {
        c.fsync.observe(d);
    }
}

impl Metrics {
    pub fn new(transport: &'static str) -> Self {
        Metrics {
            cores: OnceLock::new(),
            publishes: Default::default(),
            admin_rejections: Default::default(),
            admin_requests: AtomicU64::new(0),
            config_reloads: Default::default(),
            config_last_reload_ms: AtomicU64::new(0),
            health: Health::default(),
            transport,
            fleet: OnceLock::new(),
            start: Instant::now(),
            start_unix_s: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        }
    }

    /// Sizes the per-core table once the worker count is known.
    pub fn set_cores(&self, n: usize) {
        let _ = self.cores.set((0..n).map(|_| CoreMetrics::default()).collect());
    }

    /// Makes this the process's registry for hooks that have no handle (the log's syncer threads).
    pub fn install_global(self: &Arc<Self>) {
        let _ = GLOBAL.set(self.clone());
    }

    pub fn core(&self, id: usize) -> &CoreMetrics {
        static EMPTY: OnceLock<CoreMetrics> = OnceLock::new();
        self.cores.get().and_then(|c| c.get(id)).unwrap_or_else(|| EMPTY.get_or_init(CoreMetrics::default))
    }

    fn cores(&self) -> &[CoreMetrics] {
        self.cores.get().map(|c| &c[..]).unwrap_or(&[])
    }

    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }

    /// The exposition: Prometheus text 0.0.4, or OpenMetrics 1.0.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut w = Writer { out: String::with_capacity(8192), om: openmetrics };
        let cores = self.cores();
        let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(f).sum::<u64>();

        let open = sum(&|c| c.conns_open.get());
        let all = sum(&|c| c.conns.get());
        w.family("ringgate_connections", "gauge", "Connections by transport and state (handshake = accept to CONNACK).");
        for t in ["tls", "tcp", "ws", "sse", "lp"] {
            let (hs, op) = if t == self.transport { (all.saturating_sub(open), open) } else { (0, 0) };
            w.sample("ringgate_connections", &[("transport", t), ("state", "handshake")], hs as f64);
            w.sample("ringgate_connections", &[("transport", t), ("state", "open")], op as f64);
        }
        w.counter_vec("ringgate_handshakes", "Handshakes by result.", "result", &HANDSHAKE_RESULTS, |i| {
            sum(&|c| c.handshakes[i].get())
        });
        w.counter_vec("ringgate_sends", "Client SENDs by SENDACK status.", "status", &SEND_STATUSES, |i| {
            sum(&|c| c.sends[i].get())
        });
        w.counter_vec("ringgate_publishes", "Admin publishes by status.", "status", &SEND_STATUSES, |i| {
            self.publishes[i].load(Relaxed)
        });
        w.counter_vec("ringgate_pushes", "PUSH frames sent by kind.", "kind", &PUSH_KINDS, |i| sum(&|c| c.pushes[i].get()));
        w.counter_vec(
            "ringgate_disconnects",
            "DISCONNECT frames sent by the server, by reason.",
            "reason",
            &DISCONNECT_REASONS,
            |i| sum(&|c| c.disconnects[i].get()),
        );
        w.counter_vec("ringgate_rejections", "Requests and connections refused by a limit.", "reason", &REJECTION_REASONS, |i| {
            sum(&|c| c.rejections[i].get()) + self.admin_rejections[i].load(Relaxed)
        });
        let hist = |f: &dyn Fn(&CoreMetrics) -> &Histogram| {
            let mut h = HistSum::default();
            for c in cores {
                h.add(f(c));
            }
            h
        };
        w.histogram(
            "ringgate_delivery_seconds",
            "SEND or publish received to the first device's PUSHACK covering it (per recipient, from the ledger).",
            &hist(&|c| &c.delivery),
        );
        w.histogram("ringgate_sendack_seconds", "SEND received to SENDACK written.", &hist(&|c| &c.sendack));
        w.histogram("ringgate_fsync_seconds", "Duration of one group-commit fsync round of a core's log.", &hist(&|c| &c.fsync));
        w.family("ringgate_inbox_messages", "gauge", "Messages retained in all inboxes.");
        w.sample("ringgate_inbox_messages", &[], sum(&|c| c.inbox_messages.get()) as f64);

        let p = process_stats();
        w.family("ringgate_process_open_fds", "gauge", "Open file descriptors.");
        w.sample("ringgate_process_open_fds", &[], p.open_fds as f64);
        w.family("ringgate_process_max_fds", "gauge", "RLIMIT_NOFILE soft limit.");
        w.sample("ringgate_process_max_fds", &[], p.max_fds as f64);
        w.family("ringgate_process_resident_memory_bytes", "gauge", "Resident set size.");
        w.sample("ringgate_process_resident_memory_bytes", &[], p.rss_bytes as f64);
        w.family("ringgate_process_start_time_seconds", "gauge", "Start time, Unix seconds.");
        w.sample("ringgate_process_start_time_seconds", &[], self.start_unix_s);
        w.family("ringgate_uptime_seconds", "gauge", "Seconds since start.");
        w.sample("ringgate_uptime_seconds", &[], self.uptime().as_secs_f64());
        w.family("ringgate_ready", "gauge", "1 when /readyz answers 200.");
        w.sample("ringgate_ready", &[], if self.health.not_ready().is_none() { 1.0 } else { 0.0 });
        w.family("ringgate_workers", "gauge", "Worker cores.");
        w.sample("ringgate_workers", &[], cores.len() as f64);
        w.counter_vec("ringgate_config_reloads", "Configuration reloads (SIGHUP) by result.", "result", &["ok", "error"], |i| {
            self.config_reloads[i].load(Relaxed)
        });
        w.family("ringgate_config_last_reload_timestamp_seconds", "gauge", "When the running configuration was loaded (start or last good reload), Unix seconds.");
        w.sample("ringgate_config_last_reload_timestamp_seconds", &[], self.config_last_reload_ms.load(Relaxed) as f64 / 1000.0);
        if let Some(f) = self.fleet.get() {
            f.render(&mut w.out, openmetrics);
        }
        if openmetrics {
            w.out.push_str("# EOF\n");
        }
        w.out
    }
}

struct Writer {
    out: String,
    om: bool,
}

impl Writer {
    /// `# HELP` and `# TYPE`. OpenMetrics names a counter family without its `_total`.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let fam = if self.om && kind == "counter" { name.trim_end_matches("_total") } else { name };
        let _ = writeln!(self.out, "# HELP {fam} {help}\n# TYPE {fam} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{val}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    fn counter_vec(&mut self, base: &str, help: &str, label: &str, values: &[&str], get: impl Fn(usize) -> u64) {
        let name = format!("{base}_total");
        self.family(&name, "counter", help);
        for (i, v) in values.iter().enumerate() {
            self.sample(&name, &[(label, v)], get(i) as f64);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistSum) {
        self.family(name, "histogram", help);
        let mut cum = 0;
        for (i, b) in BUCKETS_S.iter().enumerate() {
            cum += h.buckets[i];
            let le = format!("{b}");
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cum as f64);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_ns as f64 / 1e9);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// What `/proc` says about this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub open_fds: u64,
    pub max_fds: u64,
    pub rss_bytes: u64,
}

pub fn process_stats() -> ProcessStats {
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let (max_fds, _) = crate::net::listener::nofile_limit();
    // statm: size resident shared ... in pages.
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    ProcessStats { open_fds, max_fds, rss_bytes: rss_pages * page }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores_and_uses_contract_names() {
        let m = Metrics::new("tls");
        m.set_cores(2);
        m.core(0).sends[0].inc();
        m.core(1).sends[0].add(2);
        m.core(1).handshakes[HS_BAD_TOKEN].inc();
        m.core(0).conns.set(3);
        m.core(0).conns_open.set(1);
        m.core(1).sendack.observe(Duration::from_millis(3));
        m.publishes[2].fetch_add(1, Relaxed);
        let t = m.render(false);
        assert!(t.contains("ringgate_sends_total{status=\"stored\"} 3\n"), "{t}");
        assert!(t.contains("ringgate_handshakes_total{result=\"bad_token\"} 1\n"));
        assert!(t.contains("ringgate_connections{transport=\"tls\",state=\"handshake\"} 2\n"));
        assert!(t.contains("ringgate_connections{transport=\"tls\",state=\"open\"} 1\n"));
        assert!(t.contains("ringgate_connections{transport=\"ws\",state=\"open\"} 0\n"));
        assert!(t.contains("ringgate_publishes_total{status=\"forbidden\"} 1\n"));
        assert!(t.contains("ringgate_sendack_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(t.contains("ringgate_sendack_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("ringgate_sendack_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(t.contains("ringgate_sendack_seconds_count 1\n"));
        assert!(t.contains("# TYPE ringgate_sends_total counter\n"));
        assert!(t.contains("ringgate_process_max_fds "));
        assert!(!t.contains("# EOF"));
        let om = m.render(true);
        assert!(om.contains("# TYPE ringgate_sends counter\n"), "{om}");
        assert!(om.contains("ringgate_sends_total{status=\"stored\"} 3\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn readiness_reasons() {
        let h = Health::default();
        assert_eq!(h.not_ready(), Some("recovering"));
        h.recovering.store(false, Relaxed);
        assert_eq!(h.not_ready(), Some("starting"));
        h.gateway_up.store(true, Relaxed);
        h.admin_up.store(true, Relaxed);
        assert_eq!(h.not_ready(), None);
        h.storage_failed.store(true, Relaxed);
        assert_eq!(h.not_ready(), Some("storage failure"));
    }
}
