//! The `ringgate-bench` command line: one subcommand per scenario, `suite` for all of them, and the hidden `worker` the scenarios spawn.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ringgate_bench::clientnet::Kx;
use ringgate_bench::report::{self, Envelope};
use ringgate_bench::scenarios::{self, HandshakeOpts, IdleOpts, PushOpts, StormOpts};
use ringgate_bench::suite::{self, SuiteOpts, SuiteReport};
use ringgate_bench::targets::{self, Env, TargetKind};
use ringgate_bench::idle_multi::{self, IdleMultiOpts};
use ringgate_bench::{flame, procfs, worker};

#[derive(Parser)]
#[command(name = "ringgate-bench", about = "Load generator and benchmark suite for ringgate and its peers (nginx, Mosquitto)")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// The ringgate binary to benchmark.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/ringgate"))]
    ringgate_bin: PathBuf,
    /// Where result JSON (and the suite's Markdown) is written.
    #[arg(long, global = true, default_value = "bench/results")]
    out: PathBuf,
    /// CPUs the server runs on (default: the first half of the machine).
    #[arg(long, global = true, value_delimiter = ',')]
    server_cpus: Vec<usize>,
    /// CPUs the load generator runs on (default: the other half).
    #[arg(long, global = true, value_delimiter = ',')]
    client_cpus: Vec<usize>,
    /// Server workers (ringgate workers, nginx worker_processes); 0 = one per server CPU.
    #[arg(long, global = true, default_value_t = 0)]
    workers: usize,
    /// Serve ringgate over plain TCP instead of TLS (the peers always use TLS).
    #[arg(long, global = true)]
    plain: bool,
    /// Loopback source addresses to spread client connections over (127.0.0.2 upwards).
    #[arg(long, global = true, default_value_t = 32)]
    src_addrs: u32,
    /// Key exchange groups the client offers.
    #[arg(long, global = true, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    /// Client processes (0 = as many as the open-file limit requires; each holds at most 19,000 connections).
    #[arg(long, global = true, default_value_t = 0)]
    procs: u32,
    /// Record the server with `perf record -e cpu-clock -g` into this file while the scenario runs.
    #[arg(long, global = true)]
    perf_record: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N authenticated TLS connections; server memory per connection, kernel socket memory, ramp rate.
    Idle {
        #[arg(long, value_delimiter = ',', default_value = "ringgate-uring,ringgate-epoll,nginx,mosquitto")]
        targets: Vec<TargetKind>,
        #[command(flatten)]
        o: IdleArgs,
    },
    /// Hold N idle TLS connections across several ringgate processes sharing one port (SO_REUSEPORT) and several client processes.
    IdleMulti {
        #[arg(long, default_value = "ringgate-uring")]
        target: TargetKind,
        /// Server processes (0 = one per 16,000 connections).
        #[arg(long, default_value_t = 0)]
        servers: u32,
        /// Bound on the ramp, seconds; what was reached by then is reported.
        #[arg(long, default_value_t = 240)]
        ramp_timeout_s: u64,
        /// Seconds to hold every connection (heartbeats running) before proving them alive.
        #[arg(long, default_value_t = 0)]
        hold_s: u64,
        /// Heartbeat interval the clients ask for in CONNECT; they PING every 0.8 × this.
        #[arg(long, default_value_t = 600)]
        keepalive_s: u16,
        /// Users (at least) a message is published to after the hold; each must be delivered and acked.
        #[arg(long, default_value_t = 1_000)]
        sample: u64,
        /// PINGs per second, all clients together, when every connection is checked after the hold.
        #[arg(long, default_value_t = 50_000.0)]
        check_rate: f64,
        /// Bound on the check and on the sample delivery, seconds each.
        #[arg(long, default_value_t = 120)]
        check_timeout_s: u64,
        /// Abort cleanly when MemAvailable drops below this many MiB.
        #[arg(long, default_value_t = 2_048)]
        min_available_mib: u64,
        #[command(flatten)]
        o: IdleArgs,
    },
    /// Full or resumed TLS handshakes per second and server CPU per handshake.
    Handshake {
        #[arg(long, value_delimiter = ',', default_value = "ringgate-uring,ringgate-epoll,nginx")]
        targets: Vec<TargetKind>,
        /// Resume TLS sessions (tickets) instead of full handshakes.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        o: HandshakeArgs,
    },
    /// S senders → R receivers with acks: messages/s, server CPU per message, end-to-end latency.
    Push {
        #[arg(long, value_delimiter = ',', default_value = "ringgate-uring,ringgate-epoll,mosquitto")]
        targets: Vec<TargetKind>,
        /// Open-loop offered loads in msg/s (repeatable); without any, closed-loop saturation.
        #[arg(long = "rate", value_delimiter = ',')]
        rates: Vec<f64>,
        /// Also run saturation when rates are given.
        #[arg(long)]
        saturation: bool,
        #[command(flatten)]
        o: PushArgs,
    },
    /// N clients drop and reconnect at once with their last_seq; time until all are back and caught up.
    ReconnectStorm {
        #[arg(long, value_delimiter = ',', default_value = "ringgate-uring,ringgate-epoll")]
        targets: Vec<TargetKind>,
        #[command(flatten)]
        o: StormArgs,
    },
    /// Every scenario against every server; writes JSON and the Markdown table (≤ 10 min on 2 cores).
    Suite {
        #[arg(long, value_delimiter = ',', default_value = "ringgate-uring,ringgate-epoll,nginx,mosquitto")]
        targets: Vec<TargetKind>,
        /// Write the table into this README between the suite markers.
        #[arg(long)]
        readme: Option<PathBuf>,
        /// Open-loop offered loads in msg/s; default 25% and 50% of the lowest saturation rate.
        #[arg(long = "rate", value_delimiter = ',')]
        rates: Vec<f64>,
        /// Wait up to this long for other work on the machine to finish before starting.
        #[arg(long, default_value_t = 120)]
        wait_quiet_s: u64,
        /// Open-loop loads as fractions of the lowest saturation rate (when no --rate is given).
        #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5,0.7,0.85,0.95")]
        load_fractions: Vec<f64>,
        /// More idle connection counts for the ringgate targets (the memory curve).
        #[arg(long, value_delimiter = ',', default_value = "2000,5000")]
        idle_curve_conns: Vec<u64>,
        /// Also hold this many idle connections across several server processes (0 = skip; 200000 takes minutes).
        #[arg(long, default_value_t = 0)]
        idle_multi_conns: u64,
        /// Skip the fleet scenario (3 nodes + redis-server; its short form takes about a minute).
        #[arg(long)]
        no_fleet: bool,
        #[command(flatten)]
        idle: IdleArgs,
        #[command(flatten)]
        hs: HandshakeArgs,
        #[command(flatten)]
        push: PushArgs,
        #[command(flatten)]
        storm: StormArgs,
    },
    /// Re-render the Markdown tables from a suite JSON (and optionally rewrite the README block).
    Render {
        #[arg(long, default_value = "bench/results/latest.json")]
        json: PathBuf,
        #[arg(long)]
        readme: Option<PathBuf>,
    },
    /// Fold `perf script` output and render a flamegraph SVG (used by flamegraphs/record.sh).
    Flamegraph {
        #[arg(long)]
        perf_script: PathBuf,
        #[arg(long)]
        svg: PathBuf,
        #[arg(long, default_value = "ringgate")]
        title: String,
        /// Also print the N heaviest frames (inclusive).
        #[arg(long, default_value_t = 25)]
        top: usize,
    },
    /// A configuration reload (new certificate, changed limit) under push load: p99 in the second around it vs the quiet seconds, connections lost.
    ReloadPush {
        #[arg(long, default_value = "ringgate-uring")]
        target: TargetKind,
        #[arg(long, default_value_t = 32)]
        pairs: u32,
        #[arg(long, default_value_t = 16)]
        window: u32,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 2.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 12.0)]
        duration_s: f64,
        #[arg(long, default_value_t = 7.0)]
        reload_at_s: f64,
    },
    /// Fleet mode: 3 ringgate nodes + redis-server vs one node in the same run (cross-node push, CPU per message, a node killed under load, engine memory per user and per message).
    Fleet {
        #[arg(long, default_value = "ringgate-uring")]
        target: TargetKind,
        /// Sender → receiver pairs (sender on n1, receiver on n2).
        #[arg(long, default_value_t = 8)]
        pairs: u32,
        /// Paced offered load, msg/s in total.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 5.0)]
        measure_s: f64,
        /// A/B rounds (fleet and single node alternate).
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Skip the closed-loop saturation runs.
        #[arg(long)]
        no_saturation: bool,
        /// Messages in flight per sender in the saturation runs.
        #[arg(long, default_value_t = 16)]
        window: u32,
        /// Skip the node-kill phase.
        #[arg(long)]
        no_kill: bool,
        #[arg(long, default_value_t = 24)]
        kill_pairs: u32,
        #[arg(long, default_value_t = 3_000.0)]
        kill_rate: f64,
        #[arg(long, default_value_t = 2.0)]
        kill_at_s: f64,
        #[arg(long, default_value_t = 6.0)]
        kill_load_s: f64,
        /// Engine memory phase: users (0 = skip) and messages retained per user.
        #[arg(long, default_value_t = 2_000)]
        mem_users: u64,
        #[arg(long, default_value_t = 10)]
        mem_messages: u64,
        /// `[fleet] heartbeat_ms` of the nodes.
        #[arg(long, default_value_t = 1_000)]
        heartbeat_ms: u64,
    },
    /// Internal: one load-generating worker process (spawned by the scenarios).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone)]
struct IdleArgs {
    /// Connections to hold (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    conns: u64,
    /// Connections opened before the baseline memory sample.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Ramp rate, connections/s for all client processes (0 = as fast as the client can).
    #[arg(long, default_value_t = 0.0)]
    ramp_rate: f64,
    /// Handshakes in flight per client thread while ramping.
    #[arg(long, default_value_t = 64)]
    inflight: u32,
    /// Seconds to settle before each memory sample.
    #[arg(long, default_value_t = 2.0)]
    settle_s: f64,
}

#[derive(Args, Clone)]
struct HandshakeArgs {
    /// Concurrent connect-handshake-close loops.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    hs_duration_s: f64,
    /// Upper bound on handshakes (the loop also stops at the duration).
    #[arg(long, default_value_t = 5_000_000)]
    hs_max: u64,
}

#[derive(Args, Clone)]
struct PushArgs {
    #[arg(long, default_value_t = 16)]
    senders: u32,
    #[arg(long, default_value_t = 64)]
    receivers: u32,
    /// Payload bytes (the first 12 carry the send timestamp and the sender).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages in flight end to end (sent, not yet delivered) per sender in closed loop.
    #[arg(long, default_value_t = 64)]
    window: u32,
    #[arg(long, default_value_t = 1.0)]
    push_warmup_s: f64,
    #[arg(long, default_value_t = 5.0)]
    push_measure_s: f64,
    #[arg(long, default_value_t = 2.0)]
    push_drain_s: f64,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[arg(long, default_value_t = 5_000)]
    clients: u64,
    /// Messages per client before the drop, and again while offline.
    #[arg(long, default_value_t = 4)]
    messages: u64,
    /// Reconnect handshakes in flight per client thread.
    #[arg(long, default_value_t = 256)]
    storm_inflight: u32,
    #[arg(long, default_value_t = 120)]
    storm_timeout_s: u64,
}

impl IdleArgs {
    fn opts(&self, procs: u32) -> IdleOpts {
        IdleOpts {
            conns: self.conns,
            warmup: self.warmup,
            rate_per_s: self.ramp_rate,
            max_inflight: self.inflight,
            procs,
            settle_s: self.settle_s,
        }
    }
}

impl HandshakeArgs {
    fn opts(&self, resume: bool, procs: u32) -> HandshakeOpts {
        HandshakeOpts { resume, concurrency: self.concurrency, duration_s: self.hs_duration_s, max_count: self.hs_max, procs }
    }
}

impl PushArgs {
    fn opts(&self, procs: u32) -> PushOpts {
        PushOpts {
            senders: self.senders,
            receivers: self.receivers,
            payload_bytes: self.payload.max(ringgate_bench::rgclient::MIN_PAYLOAD),
            window: self.window.max(1),
            warmup_s: self.push_warmup_s,
            measure_s: self.push_measure_s.max(0.1),
            drain_s: self.push_drain_s,
            procs,
        }
    }
}

impl StormArgs {
    fn opts(&self, procs: u32) -> StormOpts {
        StormOpts {
            clients: self.clients,
            messages: self.messages.max(1),
            max_inflight: self.storm_inflight,
            timeout_s: self.storm_timeout_s,
            procs,
        }
    }
}

fn make_env(c: &Common) -> Result<(Env, tempdir::TempDir)> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (ds, dc) = targets::split_cpus(cpus);
    let server_cpus = if c.server_cpus.is_empty() { ds } else { c.server_cpus.clone() };
    let client_cpus = if c.client_cpus.is_empty() { dc } else { c.client_cpus.clone() };
    let dir = tempdir::TempDir::new()?;
    let (cert, key) = targets::write_cert(dir.path())?;
    // The harness itself holds no connections, but raising the limit here
    // makes it the inherited limit of the servers it starts (Mosquitto
    // reads it; nginx sets its own with worker_rlimit_nofile).
    procfs::raise_nofile();
    let ringgate_bin = std::fs::canonicalize(&c.ringgate_bin).unwrap_or_else(|_| c.ringgate_bin.clone());
    let env = Env {
        dir: dir.path().to_path_buf(),
        ringgate_bin,
        workers: if c.workers == 0 { server_cpus.len() } else { c.workers },
        server_cpus,
        client_cpus,
        jwt_secret: targets::random_secret(),
        cert,
        key,
        tls: !c.plain,
        src_addrs: c.src_addrs,
        kx: c.kx,
        perf_record: c.perf_record.clone(),
    };
    Ok((env, dir))
}

/// A scratch directory removed on drop (server configs, logs, certificates).
mod tempdir {
    pub struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let p = std::env::temp_dir().join(format!("ringgate-bench-{}-{}", std::process::id(), ringgate_bench::stats::mono_ns()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            if std::env::var_os("RINGGATE_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

fn write_scenario(common: &Common, env: &Env, name: &str, report: &SuiteReport) -> Result<()> {
    let stamp = report.envelope.as_ref().map(|e| e.date_utc.replace(':', "")).unwrap_or_default();
    let p = report::write_json(&common.out, &format!("{name}-{stamp}.json"), report)?;
    let _ = env;
    println!("{}", suite::markdown(report));
    eprintln!("wrote {}", p.display());
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.cmd {
        return worker::run();
    }
    if let Cmd::Flamegraph { perf_script, svg, title, top } = &cli.cmd {
        let text = std::fs::File::open(perf_script).with_context(|| format!("opening {}", perf_script.display()))?;
        let folded = flame::fold(text)?;
        if folded.trim().is_empty() {
            bail!("no samples in {}", perf_script.display());
        }
        std::fs::write(svg.with_extension("folded"), &folded)?;
        flame::render(&folded, title, std::fs::File::create(svg)?)?;
        println!("inclusive (frame and everything it called):");
        for (f, _, pct) in flame::top_frames(&folded, *top) {
            println!("{pct:6.2}%  {f}");
        }
        println!("\nself (where the samples landed):");
        for (f, _, pct) in flame::self_frames(&folded, *top) {
            println!("{pct:6.2}%  {f}");
        }
        eprintln!("wrote {}", svg.display());
        return Ok(());
    }
    if let Cmd::Render { json, readme } = &cli.cmd {
        let r: SuiteReport = serde_json::from_str(&std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?)?;
        let md = suite::markdown(&r);
        println!("{md}");
        if let Some(path) = readme {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            std::fs::write(path, report::splice_readme(&text, md.trim_end()))?;
        }
        return Ok(());
    }
    let common = cli.common.clone();
    let (env, _dir) = make_env(&common)?;
    let t0 = std::time::Instant::now();
    let envelope = |name: &str| Some(Envelope::collect(name, &env.server_cpus, &env.client_cpus, common.procs));
    match cli.cmd {
        Cmd::Idle { targets, o } => {
            let mut r = SuiteReport { envelope: envelope("idle"), ..Default::default() };
            for k in targets {
                match scenarios::idle(&env, k, &o.opts(common.procs)) {
                    Ok(x) => r.idle.push(x),
                    Err(e) => r.skipped.push(format!("idle {}: {e:#}", k.name())),
                }
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "idle", &r)?;
        }
        Cmd::IdleMulti { target, servers, ramp_timeout_s, hold_s, keepalive_s, sample, check_rate, check_timeout_s, min_available_mib, o } => {
            let mut r = SuiteReport { envelope: envelope("idle-multi"), ..Default::default() };
            let io = o.opts(common.procs);
            let mo = IdleMultiOpts {
                conns: io.conns,
                warmup: io.warmup,
                servers,
                rate_per_s: io.rate_per_s,
                max_inflight: io.max_inflight,
                procs: io.procs,
                settle_s: io.settle_s,
                ramp_timeout_s,
                hold_s,
                keepalive_s,
                sample,
                check_rate_per_s: check_rate,
                check_timeout_s,
                min_available_mib,
            };
            match idle_multi::idle_multi(&env, target, &mo) {
                Ok(x) => r.idle_multi.push(x),
                Err(e) => r.skipped.push(format!("idle-multi {}: {e:#}", target.name())),
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "idle-multi", &r)?;
        }
        Cmd::Handshake { targets, resume, o } => {
            let mut r = SuiteReport { envelope: envelope("handshake"), ..Default::default() };
            for k in targets {
                match scenarios::handshake(&env, k, &o.opts(resume, common.procs)) {
                    Ok(x) => r.handshake.push(x),
                    Err(e) => r.skipped.push(format!("handshake {}: {e:#}", k.name())),
                }
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "handshake", &r)?;
        }
        Cmd::Push { targets, rates, saturation, o } => {
            let mut r = SuiteReport { envelope: envelope("push"), ..Default::default() };
            let mut loads: Vec<Option<f64>> = rates.iter().map(|r| Some(*r)).collect();
            if loads.is_empty() || saturation {
                loads.insert(0, None);
            }
            for load in loads {
                for &k in &targets {
                    match scenarios::push(&env, k, &o.opts(common.procs), load) {
                        Ok(x) => r.push.push(x),
                        Err(e) => r.skipped.push(format!("push {}: {e:#}", k.name())),
                    }
                }
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "push", &r)?;
        }
        Cmd::ReconnectStorm { targets, o } => {
            let mut r = SuiteReport { envelope: envelope("reconnect-storm"), ..Default::default() };
            for k in targets {
                match scenarios::storm(&env, k, &o.opts(common.procs)) {
                    Ok(x) => r.storm.push(x),
                    Err(e) => r.skipped.push(format!("reconnect-storm {}: {e:#}", k.name())),
                }
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "reconnect-storm", &r)?;
        }
        Cmd::Suite { targets, readme, rates, wait_quiet_s, load_fractions, idle_curve_conns, idle_multi_conns, no_fleet, idle, hs, push, storm } => {
            let io = idle.opts(common.procs);
            let idle_multi = (idle_multi_conns > 0).then_some(IdleMultiOpts {
                conns: idle_multi_conns,
                warmup: io.warmup,
                servers: 0,
                rate_per_s: io.rate_per_s,
                max_inflight: io.max_inflight,
                procs: 0,
                settle_s: io.settle_s,
                ramp_timeout_s: 300,
                hold_s: 0,
                keepalive_s: 600,
                sample: 1_000,
                check_rate_per_s: 50_000.0,
                check_timeout_s: 120,
                min_available_mib: 2_048,
            });
            let o = SuiteOpts {
                load_fractions,
                idle_curve_conns,
                idle_multi,
                idle: idle.opts(common.procs),
                handshake: hs.opts(false, common.procs),
                push: push.opts(common.procs),
                rates,
                storm: storm.opts(common.procs),
                targets,
                fleet: (!no_fleet).then(ringgate_bench::fleet_redis::FleetOpts::short),
            };
            let r = suite::run(&env, &o, Envelope::collect("suite", &env.server_cpus, &env.client_cpus, common.procs), wait_quiet_s);
            suite::write(&common.out, &r)?;
            let md = suite::markdown(&r);
            println!("{md}");
            if let Some(path) = readme {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                std::fs::write(&path, report::splice_readme(&text, md.trim_end()))?;
                eprintln!("table written into {}", path.display());
            }
            eprintln!("results in {}", common.out.display());
        }
        Cmd::ReloadPush { target, pairs, window, payload, warmup_s, duration_s, reload_at_s } => {
            let o = ringgate_bench::reload_push::ReloadPushOpts { pairs, window, payload_bytes: payload.max(ringgate_bench::rgclient::MIN_PAYLOAD), warmup_s, duration_s, reload_at_s };
            let r = ringgate_bench::reload_push::run(&env, target, &o)?;
            println!("{}", ringgate_bench::reload_push::markdown(&r));
            let p = report::write_json(&common.out, &format!("reload-push-{}.json", envelope("reload-push").map(|e| e.date_utc.replace(':', "")).unwrap_or_default()), &r)?;
            eprintln!("wrote {}", p.display());
        }
        Cmd::Fleet {
            target,
            pairs,
            rate,
            payload,
            warmup_s,
            measure_s,
            rounds,
            no_saturation,
            window,
            no_kill,
            kill_pairs,
            kill_rate,
            kill_at_s,
            kill_load_s,
            mem_users,
            mem_messages,
            heartbeat_ms,
        } => {
            let o = ringgate_bench::fleet_redis::FleetOpts {
                pairs,
                rate,
                payload_bytes: payload.max(20),
                warmup_s,
                measure_s,
                rounds,
                saturation: !no_saturation,
                window,
                kill: !no_kill,
                kill_pairs,
                kill_rate,
                kill_at_s,
                kill_load_s,
                mem_users,
                mem_messages,
                heartbeat_ms,
            };
            let mut r = SuiteReport { envelope: envelope("fleet"), ..Default::default() };
            match ringgate_bench::fleet_redis::run(&env, target, &o) {
                Ok(x) => r.fleet.push(x),
                Err(e) => r.skipped.push(format!("fleet {}: {e:#}", target.name())),
            }
            r.wall_s = t0.elapsed().as_secs_f64();
            write_scenario(&common, &env, "fleet", &r)?;
        }
        Cmd::Worker | Cmd::Flamegraph { .. } | Cmd::Render { .. } => unreachable!("handled above"),
    }
    Ok(())
}
