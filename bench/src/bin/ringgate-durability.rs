//! Durability benchmark: SENDs/s and SEND→SENDACK latency under each fsync policy, group-commit batch sizes, and recovery time per million records.
//!
//! Runs the real server (`target/release/ringgate`, or `$RINGGATE_BIN`) on
//! loopback with TLS off (this measures the disk path, not TLS), durable
//! inboxes, and one fsync policy at a time. Senders pipeline SENDs with a
//! bounded window per connection (closed loop: the figure is what a device
//! waiting for its SENDACKs sees) to users that are offline, so only the
//! append path is measured. Batch sizes come from the server's own
//! `log flushed` line at shutdown. Recovery is timed on a log of
//! `--recovery-records` messages written through the store API and read
//! back by the same `recover()` the server runs at start, and by starting
//! the server on it (start → `listening`).
//!
//!     cargo run --release -p ringgate-bench --bin ringgate-durability -- --out bench/results/durability.json

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use ringgate::proto::frame::{Connect, Frame, Send, Utf8Bytes};

const SECRET: &str = "durability-bench-secret-0123456789";

#[derive(Parser)]
struct Args {
    /// Sender connections.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// SENDs per sender and policy.
    #[arg(long, default_value_t = 5000)]
    messages: u64,
    /// Outstanding SENDs per connection.
    #[arg(long, default_value_t = 32)]
    window: u64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Records in the recovery log.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_records: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where the data directories go (a real disk, not tmpfs, for fsync to mean anything).
    #[arg(long, default_value = "target/durability-bench")]
    dir: PathBuf,
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

fn bin() -> PathBuf {
    std::env::var_os("RINGGATE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/release/ringgate"))
}

fn start_server(dir: &Path, fsync: &str, workers: usize) -> Result<(Server, Duration)> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("ringgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = {workers}\n[tls]\nenabled = false\n[auth]\njwt_secret = \"{SECRET}\"\n\
             [store]\ndata_dir = {:?}\ndurability = \"durable\"\nfsync = \"{fsync}\"\ninbox_max_messages = 100000000\n\
             [limits]\nsend_rate_per_connection = 1000000\nmax_sends_in_flight = 100000\n",
            dir.join("data").display().to_string()
        ),
    )?;
    let t0 = Instant::now();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build it with cargo build --release)", bin().display()))?;
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().context("stderr")?;
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(Duration::from_secs(600)).context("server did not start")?;
        if let Some(at) = line.find("listening addr=") {
            let a: String = line[at + 15..].chars().take_while(|c| !c.is_whitespace()).collect();
            return Ok((Server { child, addr: a.parse()?, lines }, t0.elapsed()));
        }
    }
}

impl Server {
    /// SIGTERM, wait, and return the stderr lines.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let v = self.lines.lock().unwrap().clone();
        v
    }
}

fn encode(f: &Frame, out: &mut BytesMut) {
    f.encode(out);
}

fn read_frame(s: &mut TcpStream, rbuf: &mut BytesMut) -> Result<Frame> {
    loop {
        if let Some(f) = ringgate::proto::frame::decode(rbuf, 1 << 24).map_err(|e| anyhow::anyhow!("{e:?}"))? {
            return Ok(f);
        }
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp)?;
        if n == 0 {
            bail!("server closed the connection");
        }
        rbuf.extend_from_slice(&tmp[..n]);
    }
}

fn login(addr: SocketAddr, user: &str) -> Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let key = ringgate::auth::JwtKey::new(SECRET.as_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut out = BytesMut::new();
    encode(
        &Frame::Connect(Connect {
            version: 1,
            keepalive_s: 0,
            device_id: Utf8Bytes::from("bench"),
            token: Utf8Bytes::from(key.mint(user, now, 3600).as_str()),
            last_seq: u64::MAX,
        }),
        &mut out,
    );
    s.write_all(&out)?;
    let mut rbuf = BytesMut::new();
    match read_frame(&mut s, &mut rbuf)? {
        Frame::ConnAck(c) if c.status == 0 => Ok((s, rbuf)),
        other => bail!("login {user}: {other:?}"),
    }
}

/// One sender: `n` SENDs to `to`, at most `window` outstanding; latencies in µs.
fn sender(addr: SocketAddr, id: usize, to: String, n: u64, window: u64, payload: usize) -> Result<Histogram<u64>> {
    let (mut s, mut rbuf) = login(addr, &format!("sender{id}"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let (mut next, mut acked) = (1u64, 0u64);
    let mut out = BytesMut::new();
    while acked < n {
        while next <= n && next - acked <= window {
            encode(
                &Frame::Send(Send { client_msg_id: next, target_kind: 1, target: Utf8Bytes::from(to.as_str()), payload: body.clone() }),
                &mut out,
            );
            sent_at.insert(next, Instant::now());
            next += 1;
        }
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
        match read_frame(&mut s, &mut rbuf)? {
            Frame::SendAck(a) => {
                if a.status != 0 {
                    bail!("SENDACK status {} for {}", a.status, a.client_msg_id);
                }
                if let Some(t) = sent_at.remove(&a.client_msg_id) {
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                }
                acked += 1;
            }
            Frame::Ping { nonce } => {
                encode(&Frame::Pong { nonce }, &mut out);
            }
            _ => {}
        }
    }
    Ok(hist)
}

fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()?.parse().ok()
}

fn run_policy(a: &Args, fsync: &str) -> Result<serde_json::Value> {
    let dir = a.dir.join(format!("policy-{fsync}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (srv, _) = start_server(&dir, fsync, a.workers)?;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..a.senders)
        .map(|i| {
            let (addr, n, w, p) = (srv.addr, a.messages, a.window, a.payload_bytes);
            std::thread::spawn(move || sender(addr, i, format!("receiver{i}"), n, w, p))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for h in handles {
        hist.add(h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = a.messages * a.senders as u64;
    let lines = srv.stop();
    let (mut fsyncs, mut records, mut max_batch) = (0.0, 0.0, 0.0f64);
    for l in lines.iter().filter(|l| l.contains("log flushed")) {
        fsyncs += field(l, "fsyncs").unwrap_or(0.0);
        records += field(l, "records").unwrap_or(0.0);
        max_batch = max_batch.max(field(l, "max_batch").unwrap_or(0.0));
    }
    let v = serde_json::json!({
        "fsync": fsync,
        "sends": total,
        "seconds": secs,
        "sends_per_s": total as f64 / secs,
        "latency_us": {"p50": hist.value_at_quantile(0.5), "p99": hist.value_at_quantile(0.99), "p999": hist.value_at_quantile(0.999), "max": hist.max()},
        "fsyncs": fsyncs,
        "mean_batch": if fsyncs > 0.0 { records / fsyncs } else { 0.0 },
        "max_batch": max_batch,
    });
    println!(
        "{fsync:>8}: {:>9.0} SENDs/s  SEND→SENDACK p50 {:>6} µs  p99 {:>6} µs  fsyncs {:>6}  mean batch {:>6.1}  max batch {:>5}",
        total as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        fsyncs,
        v["mean_batch"].as_f64().unwrap_or(0.0),
        max_batch
    );
    Ok(v)
}

fn recovery(a: &Args) -> Result<serde_json::Value> {
    use ringgate::store::durable::{DurableStore, LogSettings};
    use ringgate::store::{InboxStore, NewMessage, Retention};
    let dir = a.dir.join("recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let log_dir = data.join("log");
    let settings = LogSettings {
        policy: ringgate::config::Fsync::Never,
        fsync_interval_ms: 100,
        segment_max_bytes: 64 << 20,
        retention: Retention { max_messages: u64::MAX, max_age_ms: u64::MAX / 2 },
    };
    let t0 = Instant::now();
    let per_core = a.recovery_records / a.workers as u64;
    let users = 10_000usize;
    let names: Vec<Arc<str>> = (0..users).map(|i| Arc::from(format!("user{i}"))).collect();
    let from: Arc<str> = Arc::from("sender");
    let device: Arc<str> = Arc::from("bench");
    let payload = bytes::Bytes::from(vec![b'y'; a.payload_bytes]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    for core in 0..a.workers {
        let mut st = DurableStore::new(core, &log_dir, settings, HashMap::new(), HashMap::new(), 1)?;
        for i in 0..per_core {
            // Each user written by one core only (as the server does);
            // recovery reassigns them to home cores by hash.
            let user = &names[(i as usize * a.workers + core) % users];
            let msg = NewMessage {
                msg_id: i + 1,
                timestamp_ms: now,
                from: from.clone(),
                device: device.clone(),
                client_msg_id: i + 1 + core as u64 * per_core,
                group: None,
                payload: payload.clone(),
            };
            st.append(user, msg, now).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        st.shutdown();
    }
    let write_s = t0.elapsed().as_secs_f64();
    let groups = HashMap::new();
    let t1 = Instant::now();
    let rec = ringgate::store::recovery::recover(&ringgate::store::recovery::RecoverOpts {
        data_dir: &data,
        workers: a.workers,
        settings,
        dedup_per_device: 1024,
        groups: &groups,
        now_ms: now,
    })?;
    let recover_s = t1.elapsed().as_secs_f64();
    drop(rec);
    // The same through the binary: start until `listening`.
    let (srv, startup) = start_server(&dir, "never", a.workers)?;
    let lines = srv.stop();
    let logged_ms = lines.iter().find(|l| l.contains("recovered the durable log")).and_then(|l| field(l, "elapsed_ms"));
    let records = per_core * a.workers as u64;
    let per_million = recover_s * 1e6 / records as f64;
    println!(
        "recovery: {records} records ({} users): recover() {:.2} s = {:.2} s per million; server start to listening {:.2} s (log says {} ms); writing them took {:.1} s",
        users,
        recover_s,
        per_million,
        startup.as_secs_f64(),
        logged_ms.unwrap_or(-1.0),
        write_s
    );
    Ok(serde_json::json!({
        "records": records,
        "users": users,
        "payload_bytes": a.payload_bytes,
        "recover_seconds": recover_s,
        "seconds_per_million": per_million,
        "server_start_to_listening_seconds": startup.as_secs_f64(),
        "server_logged_recovery_ms": logged_ms,
    }))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let commit = Command::new("git").args(["rev-parse", "HEAD"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!(
        "durability benchmark: {} senders × {} SENDs, window {}, {} B payloads, {} workers, data in {} (kernel {kernel})",
        a.senders,
        a.messages,
        a.window,
        a.payload_bytes,
        a.workers,
        a.dir.display()
    );
    let mut policies = Vec::new();
    for p in ["always", "interval", "never"] {
        policies.push(run_policy(&a, p)?);
    }
    let always = policies[0]["sends_per_s"].as_f64().unwrap_or(0.0);
    for p in &policies {
        println!("  {} / always: {:.2}x SENDs/s", p["fsync"].as_str().unwrap_or("?"), p["sends_per_s"].as_f64().unwrap_or(0.0) / always.max(1e-9));
    }
    let rec = recovery(&a)?;
    let report = serde_json::json!({
        "commit": commit,
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "config": {"senders": a.senders, "messages": a.messages, "window": a.window, "payload_bytes": a.payload_bytes, "workers": a.workers},
        "policies": policies,
        "recovery": rec,
    });
    if let Some(out) = &a.out {
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
