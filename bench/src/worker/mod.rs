//! The load-generating worker process: one tokio current-thread runtime per client core, driven in phases by its parent.
//!
//! Runtime choice: tokio's current-thread runtime, one per thread, each
//! thread owning its connections (`spawn_local`, `Rc` state) — thread per
//! core without a work-stealing scheduler moving connections between
//! threads. tokio rather than monoio because the client is not what is
//! measured: tokio-rustls and tokio's epoll driver are the most used
//! client stack, so the client is a typical one, and the server's own
//! io_uring driver is never on both ends of a measurement.
//!
//! Protocol with the parent (see [`crate::fleet`]): the first stdin line
//! is a JSON [`WorkerSpec`]; later stdin lines are phase commands
//! (`NAME [u64 arg]`) that every thread waits on in order; stdin EOF
//! aborts. stdout carries `PROGRESS n`, `EVENT stage {tally}` once all
//! threads finished a stage, `RESULT {tally}` at the end, and `FATAL msg`.
//!
//! Every loop here is bounded in count and in time: connection sets by
//! their size, timed phases by deadlines computed from the parent's
//! start timestamp, and every network wait by a timeout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ringgate::proto::frame::Frame;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsConnector;

use crate::clientnet::{self, Conn, Kx};
use crate::stats::{mono_ns, Schedule};
use crate::{http1, mqtt, rgclient};

/// Connections one worker process may hold: the 20,000 open-file limit
/// less room for the runtime, pipes and stdio.
pub const MAX_CONNS_PER_PROC: u64 = 19_000;

/// How long one connect + handshake may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra attempts for a connect that failed during a ramp.
const RAMP_RETRIES: u32 = 2;
const RAMP_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Application protocol spoken to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proto {
    /// ringgate protocol v1 (CONNECT/CONNACK, SEND, PUSH/PUSHACK).
    Ringgate,
    /// HTTP/1.1 GET (nginx).
    Http,
    /// MQTT 3.1.1, QoS 1 (Mosquitto).
    Mqtt,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetSpec {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub tls: bool,
    pub jwt_secret: String,
    /// Loopback source addresses to spread connections over.
    pub src_addrs: u32,
    pub kx: Kx,
    /// Speak the protocol over WebSocket (`GET /v1/ws`, one frame per binary message).
    #[serde(default)]
    pub ws: bool,
}

/// One worker process's share of a scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub proc_index: u32,
    pub procs: u32,
    pub threads: u32,
    pub target: TargetSpec,
    pub job: Job,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Job {
    Idle(IdleJob),
    Hold(HoldJob),
    Handshake(HandshakeJob),
    Push(PushJob),
    Storm(StormJob),
}

/// Hold `warmup` then `conns` more connections (global counts; each
/// thread takes every G-th index). Commands: 1 `GO` ramp the rest, 2 `CLOSE`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleJob {
    pub warmup: u64,
    pub conns: u64,
    /// Connections per second for the whole fleet; 0 = as fast as the client can.
    pub rate_per_s: f64,
    /// Handshakes in flight per thread.
    pub max_inflight: u32,
    pub user_prefix: String,
}

/// The lean hold of `idle-multi` (ringgate over TLS only): like
/// [`IdleJob`], but each connection is handed off to the TLS record layer
/// after CONNACK ([`crate::lean`]) and PINGs every `heartbeat_s` while
/// held. Commands: 1 `GO` ramp the rest; 2 `CHECK` PING every connection
/// (stage `alive`); 3 `SAMPLE <stride>` expect one PUSH on every held
/// connection whose index is a multiple of `stride`, PUSHACK it (stage
/// `sampled`); 4 `CLOSE`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldJob {
    pub warmup: u64,
    pub conns: u64,
    /// Connections per second for the whole fleet; 0 = as fast as the client can.
    pub rate_per_s: f64,
    /// Handshakes in flight per thread.
    pub max_inflight: u32,
    pub user_prefix: String,
    /// Heartbeat interval asked of the server in CONNECT (it closes a
    /// connection silent for 2.5 × this).
    pub keepalive_s: u16,
    /// PINGs per second for the whole fleet in the `CHECK` phase.
    pub check_rate_per_s: f64,
    /// Bound on the `CHECK` and `SAMPLE` phases, each.
    pub check_timeout_s: u64,
}

/// Connect, handshake, authenticate, close, in `concurrency` loops for
/// `duration_ms` from the `GO` timestamp (command 1), at most `max_count`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandshakeJob {
    pub resume: bool,
    pub concurrency: u32,
    pub duration_ms: u64,
    pub max_count: u64,
    pub user_prefix: String,
}

/// Senders → receivers. Command 1 `GO <start_ns>`: warm-up, measure,
/// drain on the absolute timeline from `start_ns`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushJob {
    pub senders: u32,
    pub receivers: u32,
    pub payload_bytes: usize,
    /// `None`: closed loop with `window` outstanding per sender (saturation);
    /// `Some(r)`: open loop at `r` messages/s in total on a fixed timeline.
    pub rate_per_s: Option<f64>,
    pub window: u32,
    pub warmup_ms: u64,
    pub measure_ms: u64,
    pub drain_ms: u64,
    pub user_prefix: String,
}

/// Reconnect storm. Before command 1 (`DROP`): connect `clients`, deliver
/// `messages` to each. On `DROP`: close them all, send `messages` more to
/// each. Command 2 `RECONNECT <t_ns>`: everyone reconnects with its last
/// seq at once; measured until every client holds its inbox head.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormJob {
    pub clients: u64,
    pub messages: u64,
    pub max_inflight: u32,
    pub timeout_ms: u64,
    pub user_prefix: String,
}

/// What a stage produced: named counters (summed across threads and
/// processes), named durations (max), and named latency histograms (merged).

mod handshake;
mod hold;
mod idle;
mod push;
mod storm;
mod tally;

pub use push::PushWindow;
pub use tally::Tally;

#[derive(Clone, Copy, Debug, Default)]
struct Cmd {
    seq: u32,
    abort: bool,
}

/// What one worker thread gets.
struct Ctx {
    spec: Arc<WorkerSpec>,
    /// Global thread index over all processes, and their total.
    g: u64,
    total: u64,
    cmd: watch::Receiver<Cmd>,
    args: Arc<Mutex<Vec<u64>>>,
    events: std::sync::mpsc::Sender<(String, Tally)>,
    progress: Arc<AtomicU64>,
    tls: Option<TlsConnector>,
    jwt: ringgate::auth::JwtKey,
}

type Res<T> = Result<T, io::Error>;

impl Ctx {
    /// Waits for phase command `seq` (1-based) and returns its argument.
    async fn wait_cmd(&self, seq: u32) -> Res<u64> {
        let mut rx = self.cmd.clone();
        loop {
            let c = *rx.borrow_and_update();
            if c.abort {
                return Err(io::Error::other("aborted by parent"));
            }
            if c.seq >= seq {
                let args = self.args.lock().unwrap_or_else(|p| p.into_inner());
                return Ok(args.get(seq as usize - 1).copied().unwrap_or(0));
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other("command channel closed"));
            }
        }
    }

    /// Whether phase command `seq` has arrived (without waiting).
    fn cmd_reached(&self, seq: u32) -> Res<bool> {
        let c = *self.cmd.borrow();
        if c.abort {
            return Err(io::Error::other("aborted by parent"));
        }
        Ok(c.seq >= seq)
    }

    fn report(&self, stage: &str, t: Tally) {
        let _ = self.events.send((stage.to_string(), t));
    }

    /// This thread's indexes among `0..n`.
    fn mine(&self, n: u64) -> Vec<u64> {
        (self.g..n).step_by(self.total as usize).collect()
    }

    fn src(&self, i: u64) -> std::net::Ipv4Addr {
        clientnet::source_addr(i, self.spec.target.src_addrs)
    }

    fn token(&self, user: &str) -> String {
        rgclient::token(&self.jwt, user, 24 * 3600)
    }

    /// Opens connection `i` as `user` and authenticates in the target's
    /// protocol. Returns the stream, leftover read bytes, and the CONNACK
    /// head seq for ringgate.
    async fn establish(&self, i: u64, user: &str, last_seq: u64, subscribe: bool) -> Res<(Conn, BytesMut, u64)> {
        let t = &self.spec.target;
        let mut conn = open_target(t, self.src(i), self.tls.as_ref(), i).await?;
        let mut rbuf = BytesMut::with_capacity(256);
        match t.proto {
            Proto::Ringgate => {
                let ack = rgclient::connect(&mut conn, &mut rbuf, "d", &self.token(user), last_seq).await?;
                Ok((conn, rbuf, ack.head_seq))
            }
            Proto::Http => {
                conn.write_all(&http1::get_request(true)).await?;
                conn.flush().await?;
                read_http_response(&mut conn, &mut rbuf).await?;
                Ok((conn, rbuf, 0))
            }
            Proto::Mqtt => {
                mqtt_connect(&mut conn, &mut rbuf, user, subscribe).await?;
                Ok((conn, rbuf, 0))
            }
        }
    }
}

/// Connects (TLS when configured) and, for a WebSocket target, upgrades.
async fn open_target(t: &TargetSpec, src: std::net::Ipv4Addr, tls: Option<&TlsConnector>, i: u64) -> Res<Conn> {
    let conn = clientnet::open(t.addr, src, tls).await?;
    if !t.ws {
        return Ok(conn);
    }
    let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mono_ns();
    Ok(Conn::Ws(Box::new(crate::wsclient::upgrade(conn, "localhost", seed).await?)))
}

async fn read_http_response(conn: &mut Conn, rbuf: &mut BytesMut) -> Res<()> {
    loop {
        if let Some(n) = http1::response_len(rbuf) {
            if http1::status(rbuf) != Some(200) {
                return Err(io::Error::other("HTTP status not 200"));
            }
            let _ = rbuf.split_to(n);
            return Ok(());
        }
        rbuf.reserve(1024);
        if conn.read_buf(rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before HTTP response"));
        }
    }
}

async fn read_mqtt(conn: &mut Conn, rbuf: &mut BytesMut) -> Res<mqtt::Packet> {
    loop {
        match mqtt::decode(rbuf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        rbuf.reserve(1024);
        if conn.read_buf(rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed"));
        }
    }
}

/// MQTT topic a user's messages are published to.
pub fn mqtt_topic(user: &str) -> String {
    format!("u/{user}")
}

async fn mqtt_connect(conn: &mut Conn, rbuf: &mut BytesMut, user: &str, subscribe: bool) -> Res<()> {
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode_connect(&mut out, user, 0, true);
    if subscribe {
        mqtt::encode_subscribe(&mut out, 1, &mqtt_topic(user), 1);
    }
    conn.write_all(&out).await?;
    conn.flush().await?;
    match read_mqtt(conn, rbuf).await? {
        mqtt::Packet::ConnAck { code: 0, .. } => {}
        p => return Err(io::Error::other(format!("MQTT CONNECT refused: {p:?}"))),
    }
    if subscribe {
        match read_mqtt(conn, rbuf).await? {
            mqtt::Packet::SubAck { codes, .. } if codes.first().is_some_and(|&c| c <= 2) => {}
            p => return Err(io::Error::other(format!("MQTT SUBSCRIBE refused: {p:?}"))),
        }
    }
    Ok(())
}

async fn with_timeout<T>(d: Duration, f: impl std::future::Future<Output = Res<T>>) -> Res<T> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

/// `tokio::time::Instant` for a `mono_ns` timestamp.
fn instant_at(ns: u64) -> tokio::time::Instant {
    let now_ns = mono_ns();
    let now = tokio::time::Instant::now();
    if ns >= now_ns {
        now + Duration::from_nanos(ns - now_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_ns - ns)).unwrap_or(now)
    }
}

/// Opens connections for `indexes` at `rate` per second (0 = unpaced) with
/// at most `inflight` handshakes at once; `f(i)` does one and returns what
/// to keep. Records `connect` latency (µs) and ok/failed counts.
async fn ramp<T: 'static, F, Fut>(ctx: &Ctx, indexes: &[u64], rate: f64, inflight: u32, f: F) -> (Vec<T>, Tally)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Res<T>> + 'static,
{
    let kept = Rc::new(RefCell::new(Vec::with_capacity(indexes.len())));
    let t = ramp_into(ctx, indexes, rate, inflight, f, kept.clone()).await;
    let v = std::mem::take(&mut *kept.borrow_mut());
    (v, t)
}

/// [`ramp`], pushing each connection into `kept` as soon as it is up (so
/// the caller can tend the ones already open while the ramp goes on).
async fn ramp_into<T: 'static, F, Fut>(ctx: &Ctx, indexes: &[u64], rate: f64, inflight: u32, f: F, kept: Rc<RefCell<Vec<T>>>) -> Tally
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Res<T>> + 'static,
{
    let tally = Rc::new(RefCell::new(Tally::default()));
    let sem = Arc::new(Semaphore::new(inflight.max(1) as usize));
    let start = tokio::time::Instant::now();
    let t0 = mono_ns();
    // A connect that fails or times out is tried again after the pass, as
    // a device would reconnect (at most RAMP_RETRIES more times, unpaced but
    // within `inflight`); `failed` counts only what never got through, and
    // `retried` every extra attempt, with its first error under "retried: …".
    let mut pending: Vec<u64> = indexes.to_vec();
    for pass in 0..=RAMP_RETRIES {
        let again = Rc::new(RefCell::new(Vec::new()));
        for (k, &i) in pending.iter().enumerate() {
            if rate > 0.0 && pass == 0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else { break };
            let fut = f(i);
            let (kept, tally, progress, again) = (kept.clone(), tally.clone(), ctx.progress.clone(), again.clone());
            tokio::task::spawn_local(async move {
                let t = mono_ns();
                match with_timeout(CONNECT_TIMEOUT, fut).await {
                    Ok(v) => {
                        let mut tl = tally.borrow_mut();
                        tl.hist("connect").record_ns(mono_ns() - t);
                        tl.add("ok", 1);
                        kept.borrow_mut().push(v);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if pass < RAMP_RETRIES => {
                        let mut tl = tally.borrow_mut();
                        tl.add("retried", 1);
                        tl.error(&format!("retried: {e}"));
                        again.borrow_mut().push(i);
                    }
                    Err(e) => {
                        tally.borrow_mut().fail(&e);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
        }
        // All permits back = every spawned connect of this pass finished.
        drop(sem.acquire_many(inflight.max(1)).await);
        pending = again.take();
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(RAMP_RETRY_PAUSE).await;
    }
    let mut t = tally.take();
    t.max("ramp_ms", (mono_ns() - t0) / 1_000_000);
    t
}

// ---------------------------------------------------------------------------
// process entry
// ---------------------------------------------------------------------------

fn out_line(s: &str) {
    let mut o = io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

/// Parses one parent command line: `NAME [u64]`.
pub fn parse_command(line: &str) -> (String, u64) {
    let mut it = line.split_whitespace();
    let name = it.next().unwrap_or("").to_string();
    let arg = it.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    (name, arg)
}

/// Stages each job reports before its result (the parent waits on these names).
pub fn stages(job: &Job) -> &'static [&'static str] {
    match job {
        Job::Idle(_) => &["warm", "ready"],
        Job::Hold(_) => &["warm", "ready", "alive", "sampled"],
        Job::Handshake(_) => &["primed"],
        Job::Push(_) => &["connected"],
        Job::Storm(_) => &["primed", "dropped"],
    }
}

fn client_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The `worker` subcommand: read the spec, run the threads, report.
pub fn run() -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut first = String::new();
    stdin.lock().read_line(&mut first)?;
    let spec: WorkerSpec = serde_json::from_str(&first)?;
    let limit = crate::procfs::raise_nofile();
    let conns = conns_per_proc(&spec);
    if conns > MAX_CONNS_PER_PROC.min(limit.saturating_sub(500)) {
        out_line(&format!(
            "FATAL worker {} would hold {conns} connections but a process may open {limit} files here; use more --procs",
            spec.proc_index
        ));
        std::process::exit(3);
    }
    let spec = Arc::new(spec);
    let (cmd_tx, cmd_rx) = watch::channel(Cmd::default());
    let args = Arc::new(Mutex::new(Vec::new()));
    {
        let args = args.clone();
        std::thread::spawn(move || {
            let mut seq = 0;
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let (_, arg) = parse_command(&line);
                args.lock().unwrap_or_else(|p| p.into_inner()).push(arg);
                seq += 1;
                let _ = cmd_tx.send(Cmd { seq, abort: false });
            }
            // Parent gone or done: unwind every phase.
            let _ = cmd_tx.send(Cmd { seq, abort: true });
        });
    }
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<(String, Tally)>();
    let progress = Arc::new(AtomicU64::new(0));
    let threads = spec.threads.max(1);
    let mut handles = Vec::new();
    for t in 0..threads {
        let spec = spec.clone();
        let (cmd, args, events, progress) = (cmd_rx.clone(), args.clone(), ev_tx.clone(), progress.clone());
        handles.push(std::thread::Builder::new().name(format!("load-{t}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            let tls = match (spec.target.tls, spec.target.proto) {
                (false, _) => None,
                (true, p) => {
                    let alpn: &[&[u8]] = match p {
                        Proto::Ringgate if spec.target.ws => &[b"http/1.1"],
                        Proto::Ringgate => &[b"ringgate/1"],
                        Proto::Http => &[b"http/1.1"],
                        Proto::Mqtt => &[],
                    };
                    let resume = matches!(&spec.job, Job::Handshake(h) if h.resume);
                    Some(TlsConnector::from(match &spec.job {
                        Job::Hold(_) => crate::lean::tls_config(spec.target.kx),
                        _ => clientnet::tls_config(alpn, resume, spec.target.kx),
                    }))
                }
            };
            let ctx = Ctx {
                g: (spec.proc_index * spec.threads.max(1) + t) as u64,
                total: (spec.procs.max(1) * spec.threads.max(1)) as u64,
                jwt: ringgate::auth::JwtKey::new(spec.target.jwt_secret.as_bytes()),
                spec: spec.clone(),
                cmd,
                args,
                events: events.clone(),
                progress,
                tls,
            };
            let ctx = Rc::new(ctx);
            let r = local.block_on(&rt, async move {
                match spec.job.clone() {
                    Job::Idle(j) => idle::idle(ctx, j).await,
                    Job::Hold(j) => hold::hold(ctx, j).await,
                    Job::Handshake(j) => handshake::handshake(ctx, j).await,
                    Job::Push(j) => push::push(ctx, j).await,
                    Job::Storm(j) => storm::storm(ctx, j).await,
                }
            });
            let t = r.unwrap_or_else(|e| {
                let mut t = Tally::default();
                t.add("thread_failed", 1);
                t.error(&e);
                t
            });
            let _ = events.send(("result".to_string(), t));
        })?);
    }
    drop(ev_tx);
    let mut pending: BTreeMap<String, (u32, Tally)> = BTreeMap::new();
    let mut last_progress = u64::MAX;
    let mut done_threads = 0;
    while done_threads < threads {
        match ev_rx.recv_timeout(Duration::from_millis(250)) {
            Ok((stage, t)) => {
                let e = pending.entry(stage.clone()).or_default();
                e.0 += 1;
                e.1.merge(&t);
                if e.0 == threads {
                    let (_, mut t) = pending.remove(&stage).unwrap_or_default();
                    if stage == "result" {
                        done_threads = threads;
                        t.max("client_cpu_ms", (client_cpu_s() * 1000.0) as u64);
                        out_line(&format!("RESULT {}", serde_json::to_string(&t)?));
                    } else {
                        out_line(&format!("EVENT {stage} {}", serde_json::to_string(&t)?));
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let p = progress.load(Ordering::Relaxed);
        if p != last_progress {
            out_line(&format!("PROGRESS {p}"));
            last_progress = p;
        }
    }
    // Threads hold connections until they return; exit without waiting on
    // any that are still unwinding after an abort.
    std::process::exit(0);
}

/// Connections one worker process will hold at its peak.
pub fn conns_per_proc(spec: &WorkerSpec) -> u64 {
    let share = |n: u64| n.div_ceil(spec.procs.max(1) as u64);
    match &spec.job {
        Job::Idle(j) => share(j.warmup + j.conns),
        Job::Hold(j) => share(j.warmup + j.conns),
        Job::Handshake(j) => share(j.concurrency as u64),
        Job::Push(j) => share(j.senders as u64 + j.receivers as u64),
        Job::Storm(j) => share(j.clients) + spec.threads as u64,
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_by_kind() {
        let mut a = Tally::default();
        a.add("ok", 3);
        a.max("ramp_ms", 10);
        a.hist("connect").record_us(100);
        a.error(&"refused");
        let mut b = Tally::default();
        b.add("ok", 4);
        b.add("failed", 1);
        b.max("ramp_ms", 7);
        b.hist("connect").record_us(300);
        b.error(&"refused");
        a.merge(&b);
        assert_eq!(a.count("ok"), 7);
        assert_eq!(a.count("failed"), 1);
        assert_eq!(a.count("errors"), 2);
        assert_eq!(a.max_ms["ramp_ms"], 10);
        assert_eq!(a.hists["connect"].len(), 2);
        assert_eq!(a.errors["refused"], 2);
        // And survives the trip through a worker's stdout.
        let back: Tally = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.count("ok"), 7);
        assert_eq!(back.hists["connect"].summary().max_us, a.hists["connect"].summary().max_us);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut t = Tally::default();
        for i in 0..100 {
            t.error(&format!("error {i}"));
        }
        assert_eq!(t.count("errors"), 100);
        assert_eq!(t.errors.len(), 8);
    }

    #[test]
    fn commands_parse_with_and_without_argument() {
        assert_eq!(parse_command("GO 123456789"), ("GO".to_string(), 123_456_789));
        assert_eq!(parse_command("CLOSE"), ("CLOSE".to_string(), 0));
        assert_eq!(parse_command(""), (String::new(), 0));
    }

    #[test]
    fn push_window_boundaries() {
        let job = PushJob {
            senders: 1,
            receivers: 1,
            payload_bytes: 8,
            rate_per_s: None,
            window: 1,
            warmup_ms: 1,
            measure_ms: 2,
            drain_ms: 3,
            user_prefix: String::new(),
        };
        let w = PushWindow::new(1_000, &job);
        assert_eq!((w.measure_from, w.measure_to, w.end), (1_001_000, 3_001_000, 6_001_000));
        assert!(!w.in_measure(1_000_999));
        assert!(w.in_measure(1_001_000));
        assert!(!w.in_measure(3_001_000));
    }

    #[test]
    fn per_process_share_and_spec_round_trip() {
        let spec = WorkerSpec {
            proc_index: 0,
            procs: 3,
            threads: 1,
            target: TargetSpec {
                addr: "127.0.0.1:1".parse().unwrap(),
                proto: Proto::Ringgate,
                tls: true,
                jwt_secret: "s".into(),
                src_addrs: 16,
                kx: Kx::X25519,
                ws: false,
            },
            job: Job::Idle(IdleJob { warmup: 200, conns: 50_000, rate_per_s: 0.0, max_inflight: 64, user_prefix: "i".into() }),
        };
        assert_eq!(conns_per_proc(&spec), 16_734);
        let back: WorkerSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(conns_per_proc(&back), 16_734);
        assert_eq!(stages(&back.job), &["warm", "ready"]);
    }
}

