//! The whole suite in one command: every scenario against ringgate (io_uring and epoll) and its peers, one JSON file and one Markdown table.
//!
//! A peer that is not installed, or a run that fails, is recorded in
//! `skipped` with its reason and the suite goes on: a partial table that
//! says what is missing is more useful than none.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::report::{figure_table, fixed, thousands, Column, Envelope};
use crate::scenarios::{self, HandshakeOpts, HandshakeResult, IdleOpts, IdleResult, PushOpts, PushResult, StormOpts, StormResult};
use crate::targets::{Env, TargetKind};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteOpts {
    pub idle: IdleOpts,
    pub handshake: HandshakeOpts,
    pub push: PushOpts,
    /// Open-loop offered loads (msg/s); empty = 25% and 50% of the lowest
    /// saturation rate measured in this run, the same loads for every server.
    pub rates: Vec<f64>,
    pub storm: StormOpts,
    pub targets: Vec<TargetKind>,
    /// More idle connection counts for the ringgate targets, beyond
    /// `idle.conns`: with it, the memory-per-connection curve (≥ 3 points).
    #[serde(default)]
    pub idle_curve_conns: Vec<u64>,
    /// Open-loop loads as fractions of the lowest saturation rate, when
    /// `rates` is empty: the latency-vs-load curve (≥ 6 points up to saturation).
    #[serde(default)]
    pub load_fractions: Vec<f64>,
    /// The multi-process idle run, if asked for (`--idle-multi-conns`).
    #[serde(default)]
    pub idle_multi: Option<crate::idle_multi::IdleMultiOpts>,
    /// The fleet run (3 nodes + Redis vs one node), in its short form; None = skipped.
    #[serde(default)]
    pub fleet: Option<crate::fleet_redis::FleetOpts>,
}

/// Default `load_fractions`: six open-loop loads from light to near saturation.
pub const DEFAULT_LOAD_FRACTIONS: [f64; 6] = [0.1, 0.25, 0.5, 0.7, 0.85, 0.95];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SuiteReport {
    pub envelope: Option<Envelope>,
    pub opts: Option<SuiteOpts>,
    pub idle: Vec<IdleResult>,
    /// Idle runs across several server processes on one port (`idle-multi`).
    #[serde(default)]
    pub idle_multi: Vec<crate::idle_multi::IdleMultiResult>,
    pub handshake: Vec<HandshakeResult>,
    pub push: Vec<PushResult>,
    pub storm: Vec<StormResult>,
    /// Fleet mode on Redis against the single node (`ringgate-bench fleet`).
    #[serde(default)]
    pub fleet: Vec<crate::fleet_redis::FleetResult>,
    /// `scenario target: reason` for every run that did not happen.
    pub skipped: Vec<String>,
    pub wall_s: f64,
    /// Cores busy on the whole machine in the second before the suite
    /// started (another build running would show here).
    pub machine_busy_at_start: f64,
}

/// Cores busy over one second, from /proc/stat.
pub fn machine_busy_1s() -> f64 {
    let a = crate::procfs::read_proc_stat();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b = crate::procfs::read_proc_stat();
    let all: Vec<usize> = b.keys().copied().collect();
    crate::procfs::cores_busy(&a, &b, &all)
}

/// Waits (at most `max_s`) for the machine to be quiet: measurements
/// taken while something else runs (a build, a test suite) are not worth
/// recording. Returns the last reading.
pub fn wait_quiet(max_s: u64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(max_s);
    loop {
        let busy = machine_busy_1s();
        if busy < 0.15 || std::time::Instant::now() >= deadline {
            if busy >= 0.15 {
                eprintln!("warning: machine still {busy:.2} cores busy with other work; figures will be disturbed");
            }
            return busy;
        }
        eprintln!("waiting for the machine to be quiet ({busy:.2} cores busy)");
    }
}

fn installed(bin: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a target's server binary is present.
pub fn available(env: &Env, kind: TargetKind) -> Result<(), String> {
    match kind {
        TargetKind::RinggateUring | TargetKind::RinggateEpoll | TargetKind::RinggateWsUring | TargetKind::RinggateWsEpoll => {
            if env.ringgate_bin.exists() {
                Ok(())
            } else {
                Err(format!("{} not built (cargo build --release)", env.ringgate_bin.display()))
            }
        }
        TargetKind::Nginx if !installed("nginx") => Err("nginx not installed (bench/setup-peers.sh)".into()),
        TargetKind::Mosquitto if !installed("mosquitto") => Err("mosquitto not installed (bench/setup-peers.sh)".into()),
        TargetKind::NodeWs if crate::targets::ws_module_version().is_none() => {
            Err("node with the ws package not installed (bench/setup-peers.sh)".into())
        }
        _ => Ok(()),
    }
}

/// Two significant digits, so offered loads read as round numbers.
pub fn round2(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 0.0;
    }
    let mag = 10f64.powi(v.log10().floor() as i32 - 1);
    (v / mag).round() * mag
}

pub fn run(env: &Env, o: &SuiteOpts, envelope: Envelope, wait_quiet_s: u64) -> SuiteReport {
    let t0 = std::time::Instant::now();
    let mut r = SuiteReport { envelope: Some(envelope), opts: Some(o.clone()), ..Default::default() };
    r.machine_busy_at_start = wait_quiet(wait_quiet_s);
    let usable: Vec<TargetKind> = o
        .targets
        .iter()
        .copied()
        .filter(|&k| match available(env, k) {
            Ok(()) => true,
            Err(why) => {
                r.skipped.push(format!("all {}: {why}", k.name()));
                false
            }
        })
        .collect();
    let note = |r: &mut SuiteReport, what: &str, k: TargetKind, e: anyhow::Error| {
        eprintln!("  {what} {}: FAILED: {e:#}", k.name());
        r.skipped.push(format!("{what} {}: {e:#}", k.name()));
    };
    for &k in &usable {
        eprintln!("idle {} ({} connections)", k.name(), o.idle.conns);
        match scenarios::idle(env, k, &o.idle) {
            Ok(x) => r.idle.push(x),
            Err(e) => note(&mut r, "idle", k, e),
        }
    }
    // The memory curve: the same run at other counts (after the main
    // count's rows, so the side-by-side tables read those first).
    for &k in usable.iter().filter(|k| k.is_ringgate()) {
        for &n in o.idle_curve_conns.iter().filter(|&&n| n != o.idle.conns) {
            eprintln!("idle {} ({n} connections, memory curve)", k.name());
            match scenarios::idle(env, k, &IdleOpts { conns: n, ..o.idle.clone() }) {
                Ok(x) => r.idle.push(x),
                Err(e) => note(&mut r, "idle", k, e),
            }
        }
    }
    if let Some(mo) = &o.idle_multi {
        let k = TargetKind::RinggateUring;
        if usable.contains(&k) {
            eprintln!("idle-multi {} ({} connections)", k.name(), mo.conns);
            match crate::idle_multi::idle_multi(env, k, mo) {
                Ok(x) => r.idle_multi.push(x),
                Err(e) => note(&mut r, "idle-multi", k, e),
            }
        }
    }
    for &k in usable.iter().filter(|k| **k != TargetKind::Mosquitto) {
        for resume in [false, true] {
            if resume && k == TargetKind::RinggateEpoll {
                continue; // resumption is TLS work, not driver work: measured once
            }
            eprintln!("handshake {} {}", k.name(), if resume { "resumed" } else { "full" });
            let ho = HandshakeOpts { resume, ..o.handshake.clone() };
            match scenarios::handshake(env, k, &ho) {
                Ok(x) => r.handshake.push(x),
                Err(e) => note(&mut r, "handshake", k, e),
            }
        }
    }
    let push_targets: Vec<TargetKind> = usable.iter().copied().filter(|k| *k != TargetKind::Nginx).collect();
    for &k in &push_targets {
        eprintln!("push {} saturation", k.name());
        match scenarios::push(env, k, &o.push, None) {
            Ok(x) => r.push.push(x),
            Err(e) => note(&mut r, "push", k, e),
        }
    }
    let rates = if o.rates.is_empty() {
        // A run that did not deliver what it sent in time (late or lost) did not measure a sustainable rate.
        let min = r
            .push
            .iter()
            .filter(|p| p.missing * 100 <= p.sent_in_window)
            .map(|p| p.msgs_per_s)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        if min.is_finite() {
            let fr: &[f64] = if o.load_fractions.is_empty() { &DEFAULT_LOAD_FRACTIONS } else { &o.load_fractions };
            fr.iter().map(|f| round2(min * f)).collect()
        } else {
            Vec::new()
        }
    } else {
        o.rates.clone()
    };
    for &rate in &rates {
        for &k in &push_targets {
            eprintln!("push {} open loop {rate} msg/s", k.name());
            match scenarios::push(env, k, &o.push, Some(rate)) {
                Ok(x) => r.push.push(x),
                Err(e) => note(&mut r, "push", k, e),
            }
        }
    }
    for &k in usable.iter().filter(|k| k.is_ringgate()) {
        eprintln!("reconnect-storm {} ({} clients)", k.name(), o.storm.clients);
        match scenarios::storm(env, k, &o.storm) {
            Ok(x) => r.storm.push(x),
            Err(e) => note(&mut r, "reconnect-storm", k, e),
        }
    }
    if let Some(fo) = &o.fleet {
        let k = TargetKind::RinggateUring;
        if usable.contains(&k) {
            eprintln!("fleet {} (3 nodes + Redis vs one node)", k.name());
            match crate::fleet_redis::run(env, k, fo) {
                Ok(x) => r.fleet.push(x),
                Err(e) => note(&mut r, "fleet", k, e),
            }
        }
    }
    r.wall_s = t0.elapsed().as_secs_f64();
    r
}

fn rows<T>(v: &[&T], target: impl Fn(&T) -> TargetKind) -> (Vec<String>, Option<usize>) {
    let names: Vec<String> = v.iter().map(|x| target(x).name().to_string()).collect();
    let reference = v.iter().position(|x| target(x) == TargetKind::RinggateUring);
    (names, reference)
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        thousands(v)
    } else {
        format!("{v:.1}")
    }
}

fn ms_from_us(v: f64) -> String {
    if v >= 100_000.0 {
        thousands(v / 1000.0)
    } else {
        format!("{:.2}", v / 1000.0)
    }
}

/// Memory per connection against the number held (every idle run, by target then count).
pub fn memory_curve_table(results: &[IdleResult]) -> String {
    let mut v: Vec<&IdleResult> = results.iter().collect();
    v.sort_by_key(|x| (x.target.name(), x.conns));
    let mut s = String::from(
        "\n**Memory per connection vs connections held** (the memory curve `ringgate plan` plots)\n\n\
         | server | connections | server RSS B/conn | kernel slab B/conn (both ends) |\n|---|---:|---:|---:|\n",
    );
    for x in v {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            x.target.name(),
            thousands(x.connected as f64),
            thousands(x.rss_bytes_per_conn),
            x.kernel_slab_bytes_per_conn.map(thousands).unwrap_or_else(|| "–".into())
        );
    }
    s
}

pub fn idle_table(results: &[IdleResult]) -> String {
    let v: Vec<&IdleResult> = results.iter().collect();
    let (names, reference) = rows(&v, |x| x.target);
    let n = v.first().map(|x| x.conns).unwrap_or(0);
    let mut s = format!("**Idle TLS connections** ({} held after a warm-up of {}; bytes per connection)\n\n", thousands(n as f64), v.first().map(|x| x.warmup).unwrap_or(0));
    s += &figure_table(
        &names,
        reference,
        &[
            Column { title: "server RSS B/conn", values: v.iter().map(|x| Some(x.rss_bytes_per_conn)).collect(), format: thousands },
            Column { title: "server PSS B/conn", values: v.iter().map(|x| Some(x.pss_bytes_per_conn)).collect(), format: thousands },
            Column { title: "kernel slab B/conn (both ends)", values: v.iter().map(|x| x.kernel_slab_bytes_per_conn).collect(), format: thousands },
            Column { title: "kernel sockbuf B/conn", values: v.iter().map(|x| Some(x.kernel_sockbuf_bytes_per_conn)).collect(), format: thousands },
            Column { title: "connects/s (ramp)", values: v.iter().map(|x| Some(x.ramp_conns_per_s)).collect(), format: thousands },
            Column { title: "connected", values: v.iter().map(|x| Some(x.connected as f64)).collect(), format: thousands },
        ],
    );
    s
}

pub fn handshake_table(results: &[HandshakeResult]) -> String {
    let mut s = String::new();
    for mode in ["full", "resumed"] {
        let v: Vec<&HandshakeResult> = results.iter().filter(|x| x.mode == mode).collect();
        if v.is_empty() {
            continue;
        }
        let (names, reference) = rows(&v, |x| x.target);
        s += &format!(
            "\n**{} TLS 1.3 handshakes** (connect, handshake, authenticate, close; {} concurrent, {} s; latency in ms)\n\n",
            if mode == "full" { "Full" } else { "Resumed" },
            v[0].concurrency,
            v[0].duration_s
        );
        s += &figure_table(
            &names,
            reference,
            &[
                Column { title: "server CPU µs/handshake", values: v.iter().map(|x| Some(x.server_cpu_us_per_handshake)).collect(), format: us },
                Column { title: "handshakes/s", values: v.iter().map(|x| Some(x.handshakes_per_s)).collect(), format: thousands },
                Column { title: "server cores busy", values: v.iter().map(|x| Some(x.server_cores_busy)).collect(), format: |x| format!("{x:.2}") },
                Column { title: "p50", values: v.iter().map(|x| Some(x.latency_us.p50_us as f64)).collect(), format: ms_from_us },
                Column { title: "p99", values: v.iter().map(|x| Some(x.latency_us.p99_us as f64)).collect(), format: ms_from_us },
                Column { title: "resumed", values: v.iter().map(|x| Some(x.resumed as f64)).collect(), format: thousands },
                Column { title: "client CPU busy", values: v.iter().map(|x| Some(x.client_cpus_busy)).collect(), format: |x| format!("{x:.2}") },
            ],
        );
    }
    s
}

pub fn push_table(results: &[PushResult]) -> String {
    let mut s = String::new();
    let mut modes: Vec<Option<f64>> = Vec::new();
    for p in results {
        if !modes.iter().any(|m| m.map(|x| x.to_bits()) == p.offered_per_s.map(|x| x.to_bits())) {
            modes.push(p.offered_per_s);
        }
    }
    for m in modes {
        let v: Vec<&PushResult> = results.iter().filter(|x| x.offered_per_s.map(|x| x.to_bits()) == m.map(|x| x.to_bits())).collect();
        let (names, reference) = rows(&v, |x| x.target);
        let o = &v[0].opts;
        s += &match m {
            None => format!(
                "\n**Push + ack at saturation** ({} senders → {} receivers, {} B payload, {} messages in flight end to end per sender, {} s measured; latency in ms)\n\n",
                o.senders, o.receivers, o.payload_bytes, o.window, o.measure_s
            ),
            Some(r) => format!(
                "\n**Push + ack, open loop at {} msg/s offered** (latency from each message's scheduled send time: coordinated omission corrected; ms)\n\n",
                thousands(r)
            ),
        };
        s += &figure_table(
            &names,
            reference,
            &[
                Column { title: "delivered msg/s", values: v.iter().map(|x| Some(x.msgs_per_s)).collect(), format: thousands },
                Column { title: "server CPU µs/msg", values: v.iter().map(|x| Some(x.server_cpu_us_per_msg)).collect(), format: |x| format!("{x:.2}") },
                Column { title: "p50", values: v.iter().map(|x| Some(x.latency_us.p50_us as f64)).collect(), format: ms_from_us },
                Column { title: "p99", values: v.iter().map(|x| Some(x.latency_us.p99_us as f64)).collect(), format: ms_from_us },
                Column { title: "p99.9", values: v.iter().map(|x| Some(x.latency_us.p999_us as f64)).collect(), format: ms_from_us },
                Column { title: "missing", values: v.iter().map(|x| Some(x.missing as f64)).collect(), format: thousands },
                Column { title: "server cores busy", values: v.iter().map(|x| Some(x.server_cores_busy)).collect(), format: |x| format!("{x:.2}") },
                Column { title: "client CPU busy", values: v.iter().map(|x| Some(x.client_cpus_busy)).collect(), format: |x| format!("{x:.2}") },
            ],
        );
    }
    s
}

pub fn storm_table(results: &[StormResult]) -> String {
    let v: Vec<&StormResult> = results.iter().collect();
    if v.is_empty() {
        return String::new();
    }
    let (names, reference) = rows(&v, |x| x.target);
    let mut s = format!(
        "\n**Reconnect storm** ({} clients drop at once, {} messages each arrive while offline, all reconnect with last_seq at once; ms from the reconnect signal{})\n\n",
        thousands(v[0].clients as f64),
        v[0].messages_while_offline,
        if v[0].servers > 1 { format!("; {} server processes, CPU summed", v[0].servers) } else { String::new() }
    );
    s += &figure_table(
        &names,
        reference,
        &[
            Column { title: "all CONNACKed", values: v.iter().map(|x| Some(x.all_connacked_ms as f64)).collect(), format: thousands },
            Column { title: "all caught up", values: v.iter().map(|x| Some(x.all_caught_up_ms as f64)).collect(), format: thousands },
            Column { title: "p50 caught up", values: v.iter().map(|x| Some(x.to_caught_up_us.p50_us as f64)).collect(), format: ms_from_us },
            Column { title: "p99 caught up", values: v.iter().map(|x| Some(x.to_caught_up_us.p99_us as f64)).collect(), format: ms_from_us },
            Column { title: "server CPU µs/reconnect", values: v.iter().map(|x| Some(x.server_cpu_us_per_reconnect)).collect(), format: us },
            Column { title: "caught up", values: v.iter().map(|x| Some(x.caught_up as f64)).collect(), format: thousands },
        ],
    );
    s
}

/// The side-by-side summary: one row per headline figure, one column per
/// server, each peer's cell with ringgate-uring's ratio to it.
pub fn headline(r: &SuiteReport) -> String {
    let mut cols = vec![TargetKind::RinggateUring, TargetKind::RinggateEpoll, TargetKind::Nginx, TargetKind::Mosquitto];
    // The WebSocket targets get a column only in runs that measured them.
    for k in [TargetKind::RinggateWsUring, TargetKind::RinggateWsEpoll, TargetKind::NodeWs] {
        if r.idle.iter().any(|x| x.target == k) || r.push.iter().any(|x| x.target == k) {
            cols.push(k);
        }
    }
    type Pick<'a> = Box<dyn Fn(TargetKind) -> Option<f64> + 'a>;
    type Row<'a> = (&'static str, Pick<'a>, fn(f64) -> String);
    let idle = |k: TargetKind| r.idle.iter().find(|x| x.target == k).map(|x| x.rss_bytes_per_conn);
    let hs = |k: TargetKind| r.handshake.iter().find(|x| x.target == k && x.mode == "full").map(|x| x.server_cpu_us_per_handshake);
    let sat = |k: TargetKind| r.push.iter().find(|x| x.target == k && x.offered_per_s.is_none());
    let rows: Vec<Row<'_>> = vec![
        ("bytes per idle TLS connection (server RSS)", Box::new(idle), thousands),
        ("server CPU µs per full TLS handshake", Box::new(hs), us),
        ("push+ack msg/s at saturation", Box::new(move |k| sat(k).map(|x| x.msgs_per_s)), thousands),
        ("push+ack p50 latency at saturation, ms", Box::new(move |k| sat(k).map(|x| x.latency_us.p50_us as f64)), ms_from_us),
        ("push+ack p99 latency at saturation, ms", Box::new(move |k| sat(k).map(|x| x.latency_us.p99_us as f64)), ms_from_us),
        ("server CPU µs per pushed+acked message", Box::new(move |k| sat(k).map(|x| x.server_cpu_us_per_msg)), |x| format!("{x:.2}")),
    ];
    let mut s = String::from("**Side by side** (details and every ratio in the tables below)\n\n| figure |");
    for c in &cols {
        s += &format!(" {} |", c.name());
    }
    s += "\n|---|";
    for _ in &cols {
        s += "---:|";
    }
    s += "\n";
    for (title, pick, fmt) in rows {
        s += &format!("| {title} |");
        let reference = pick(TargetKind::RinggateUring);
        for &c in &cols {
            let cell = match pick(c) {
                None => "–".to_string(),
                Some(v) if c == TargetKind::RinggateUring => fmt(v),
                Some(v) => match crate::stats::ratio(reference, Some(v)) {
                    Some(x) => format!("{} ({x:.2}×)", fmt(v)),
                    None => fmt(v),
                },
            };
            s += &format!(" {cell} |");
        }
        s += "\n";
    }
    s
}

/// The whole Markdown block the suite prints and writes into bench/README.md.
pub fn markdown(r: &SuiteReport) -> String {
    let mut s = String::new();
    if let Some(e) = &r.envelope {
        s += &format!(
            "Run {} on {} × {} ({} GiB), {}; server on CPU {:?}, load generator on CPU {:?}; commit `{}`{}; wall time {:.0} s; machine {:.2} cores busy before the start.\n\n",
            e.date_utc,
            e.cpus,
            if e.cpu_model.is_empty() { "unknown CPU" } else { &e.cpu_model },
            e.mem_total_kb / (1024 * 1024),
            e.kernel,
            e.server_cpus,
            e.client_cpus,
            &e.git_commit[..e.git_commit.len().min(12)],
            if e.git_dirty { " (work tree modified)" } else { "" },
            r.wall_s,
            r.machine_busy_at_start
        );
    }
    s += "A peer's cell reads `value (r×)` where r = ringgate-uring's value ÷ that server's value, measured in the same run.\n\n";
    s += &headline(r);
    s += "\n";
    if !r.idle.is_empty() {
        // The side-by-side table at the main count; the curve below it.
        let main = r.idle[0].conns;
        let at_main: Vec<IdleResult> = r.idle.iter().filter(|x| x.conns == main).cloned().collect();
        s += &idle_table(&at_main);
        if at_main.len() < r.idle.len() {
            s += &memory_curve_table(&r.idle);
        }
    }
    if !r.idle_multi.is_empty() {
        s += "\n**Idle TLS connections across several server processes** (SO_REUSEPORT on one port; bytes per connection)\n\n";
        s += &crate::idle_multi::table(&r.idle_multi);
    }
    if !r.handshake.is_empty() {
        s += &handshake_table(&r.handshake);
    }
    if !r.push.is_empty() {
        s += &push_table(&r.push);
    }
    s += &storm_table(&r.storm);
    for f in &r.fleet {
        s += "\n";
        s += &crate::fleet_redis::markdown(f);
    }
    let lossy: Vec<String> = r
        .push
        .iter()
        .filter(|p| p.missing * 100 > p.sent_in_window)
        .map(|p| {
            format!(
                "- push {} {}: {} of {} messages sent in the window not delivered by the end of the drain ({} of them skipped in a receiver's seqs: lost, the rest late); its rate is not sustainable\n",
                p.target.name(),
                p.offered_per_s.map(|r| format!("at {} msg/s", thousands(r))).unwrap_or_else(|| "saturation".into()),
                thousands(p.missing as f64),
                thousands(p.sent_in_window as f64),
                thousands(p.seq_gaps as f64)
            )
        })
        .collect();
    if !lossy.is_empty() {
        s += "\nRuns that did not deliver everything sent in the window:\n\n";
        s += &lossy.concat();
    }
    if !r.skipped.is_empty() {
        s += "\nNot measured in this run:\n\n";
        for k in &r.skipped {
            s += &format!("- {}\n", k.replace('\n', " "));
        }
    }
    s
}

/// Writes `suite.json` (timestamped and `latest`) and `suite.md` under `out`.
pub fn write(out: &Path, r: &SuiteReport) -> Result<()> {
    let stamp = r.envelope.as_ref().map(|e| e.date_utc.replace(':', "")).unwrap_or_default();
    crate::report::write_json(out, &format!("suite-{stamp}.json"), r)?;
    crate::report::write_json(out, "latest.json", r)?;
    std::fs::write(out.join("latest.md"), markdown(r))?;
    Ok(())
}

pub fn fixed_opt(v: Option<f64>) -> String {
    fixed(v, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn push_result(target: TargetKind, rate: Option<f64>, mps: f64) -> PushResult {
        PushResult {
            target,
            mode: if rate.is_some() { "open-loop".into() } else { "saturation".into() },
            offered_per_s: rate,
            server_version: String::new(),
            server_config: String::new(),
            opts: PushOpts { senders: 8, receivers: 64, payload_bytes: 64, window: 32, warmup_s: 1.0, measure_s: 5.0, drain_s: 1.0, procs: 0 },
            sent_in_window: 10,
            delivered_in_window: 10,
            msgs_per_s: mps,
            server_cpu_s: 1.0,
            server_cpu_us_per_msg: 2.0,
            server_cores_busy: 0.9,
            server_cpus_busy: 1.0,
            client_cpus_busy: 1.0,
            latency_us: Summary { p50_us: 1_500, p99_us: 250_000, ..Default::default() },
            missing: 0,
            seq_gaps: 0,
            redelivered: 0,
            sender_backlog_capped: 0,
            client_cpu_s: 1.0,
            errors: Default::default(),
        }
    }

    #[test]
    fn offered_loads_are_round() {
        assert_eq!(round2(123_456.0), 120_000.0);
        assert_eq!(round2(9_870.0), 9_900.0);
        assert_eq!(round2(0.0), 0.0);
    }

    #[test]
    fn push_tables_group_by_offered_load_with_ratios() {
        let r = vec![
            push_result(TargetKind::RinggateUring, None, 100_000.0),
            push_result(TargetKind::Mosquitto, None, 50_000.0),
            push_result(TargetKind::RinggateUring, Some(20_000.0), 20_000.0),
            push_result(TargetKind::Mosquitto, Some(20_000.0), 20_000.0),
        ];
        let t = push_table(&r);
        assert!(t.contains("at saturation"));
        assert!(t.contains("open loop at 20,000 msg/s"));
        assert!(t.contains("| mosquitto | 50,000 (2.00×) |"), "{t}");
        assert!(t.contains("| ringgate-uring | 100,000 | 2.00 | 1.50 | 250 |"), "{t}");
    }

    #[test]
    fn lossy_runs_are_called_out() {
        let mut bad = push_result(TargetKind::RinggateEpoll, None, 5_000.0);
        bad.sent_in_window = 100_000;
        bad.missing = 50_000;
        bad.seq_gaps = 7;
        let r = SuiteReport { push: vec![push_result(TargetKind::RinggateUring, None, 60_000.0), bad], ..Default::default() };
        let md = markdown(&r);
        assert!(md.contains("Runs that did not deliver everything"), "{md}");
        assert!(md.contains("push ringgate-epoll saturation: 50,000 of 100,000"), "{md}");
        assert!(md.contains("(7 of them skipped in a receiver's seqs: lost"), "{md}");
    }

    #[test]
    fn suite_json_shape() {
        let r = SuiteReport {
            envelope: Some(Envelope::collect("suite", &[0], &[1], 1)),
            push: vec![push_result(TargetKind::RinggateEpoll, None, 1.0)],
            skipped: vec!["idle nginx: not installed".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in ["envelope", "idle", "handshake", "push", "storm", "skipped", "wall_s"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["push"][0]["target"], "ringgate-epoll");
        assert_eq!(v["push"][0]["latency_us"]["p99_us"], 250_000);
        assert!(v["envelope"]["sysctls"].is_object());
        let back: SuiteReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.push.len(), 1);
        let md = markdown(&back);
        assert!(md.contains("Not measured in this run") && md.contains("ringgate-epoll"));
        assert!(md.contains("| push+ack msg/s at saturation | – | 1 | – | – |"), "{md}");
    }
}
