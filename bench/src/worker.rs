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
use crate::stats::{mono_ns, Hist, Schedule};
use crate::{http1, mqtt, rgclient};

/// Connections one worker process may hold: the 20,000 open-file limit
/// less room for the runtime, pipes and stdio.
pub const MAX_CONNS_PER_PROC: u64 = 19_000;

/// How long one connect + handshake may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub max_ms: BTreeMap<String, u64>,
    #[serde(default)]
    pub hists: BTreeMap<String, Hist>,
    /// First few error messages, counted.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, name: &str, n: u64) {
        *self.counts.entry(name.to_string()).or_default() += n;
    }

    pub fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    pub fn max(&mut self, name: &str, ms: u64) {
        let e = self.max_ms.entry(name.to_string()).or_default();
        *e = (*e).max(ms);
    }

    pub fn hist(&mut self, name: &str) -> &mut Hist {
        self.hists.entry(name.to_string()).or_default()
    }

    pub fn error(&mut self, e: &dyn std::fmt::Display) {
        self.add("errors", 1);
        let msg: String = e.to_string().chars().take(120).collect();
        if self.errors.len() < 8 || self.errors.contains_key(&msg) {
            *self.errors.entry(msg).or_default() += 1;
        }
    }

    /// One failed attempt: counted, and its error kept.
    pub fn fail(&mut self, e: &dyn std::fmt::Display) {
        self.add("failed", 1);
        self.error(e);
    }

    pub fn merge(&mut self, o: &Tally) {
        for (k, v) in &o.counts {
            self.add(k, *v);
        }
        for (k, v) in &o.max_ms {
            self.max(k, *v);
        }
        for (k, h) in &o.hists {
            self.hist(k).merge(h);
        }
        for (k, v) in &o.errors {
            if self.errors.len() < 8 || self.errors.contains_key(k) {
                *self.errors.entry(k.clone()).or_default() += v;
            }
        }
    }
}

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
    let tally = Rc::new(RefCell::new(Tally::default()));
    let sem = Arc::new(Semaphore::new(inflight.max(1) as usize));
    let start = tokio::time::Instant::now();
    let t0 = mono_ns();
    for (k, &i) in indexes.iter().enumerate() {
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else { break };
        let fut = f(i);
        let (kept, tally, progress) = (kept.clone(), tally.clone(), ctx.progress.clone());
        tokio::task::spawn_local(async move {
            let t = mono_ns();
            match with_timeout(CONNECT_TIMEOUT, fut).await {
                Ok(v) => {
                    let mut tl = tally.borrow_mut();
                    tl.hist("connect").record_ns(mono_ns() - t);
                    tl.add("ok", 1);
                    kept.borrow_mut().push(v);
                }
                Err(e) => {
                    let mut tl = tally.borrow_mut();
                    tl.fail(&e);
                }
            }
            progress.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    // All permits back = every spawned connect finished.
    let _all = sem.acquire_many(inflight.max(1)).await;
    let mut t = tally.take();
    t.max("ramp_ms", (mono_ns() - t0) / 1_000_000);
    let v = std::mem::take(&mut *kept.borrow_mut());
    (v, t)
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

async fn idle(c: Rc<Ctx>, job: IdleJob) -> Res<Tally> {
    let warm = c.mine(job.warmup);
    let main: Vec<u64> = c.mine(job.warmup + job.conns).into_iter().filter(|&i| i >= job.warmup).collect();
    let open = |i: u64| {
        let c = c.clone();
        let u = format!("{}{i}", job.user_prefix);
        async move { c.establish(i, &u, 0, true).await.map(|(conn, _, _)| conn) }
    };
    let (mut held, t) = ramp(&c, &warm, 0.0, job.max_inflight, open).await;
    c.report("warm", t);
    c.wait_cmd(1).await?;
    let rate = job.rate_per_s / c.total as f64;
    let (more, t) = ramp(&c, &main, rate, job.max_inflight, open).await;
    held.extend(more);
    c.report("ready", t);
    c.wait_cmd(2).await?;
    let mut t = Tally::default();
    t.add("closed", held.len() as u64);
    drop(held);
    Ok(t)
}

// ---------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------

async fn handshake(c: Rc<Ctx>, job: HandshakeJob) -> Res<Tally> {
    let per_thread = (job.concurrency as u64).div_ceil(c.total).max(1);
    let max_per_loop = job.max_count.div_ceil(c.total * per_thread).max(1);
    let t = c.spec.target.clone();
    let tls = c.tls.clone();
    // With resumption: one full handshake per loop first, so the measured
    // ones can resume (rustls keeps up to 8 tickets per server name).
    let tally = Rc::new(RefCell::new(Tally::default()));
    if job.resume {
        let (_, pt) = ramp(&c, &c.mine(per_thread * c.total), 0.0, per_thread as u32, |i| {
            let (t, tls) = (t.clone(), tls.clone());
            let c = c.clone();
            async move { one_handshake(&c, &t, tls.as_ref(), i).await.map(|_| ()) }
        })
        .await;
        tally.borrow_mut().add("priming_ok", pt.count("ok"));
    }
    c.report("primed", Tally::default());
    let start_ns = c.wait_cmd(1).await?;
    let deadline = instant_at(start_ns + job.duration_ms * 1_000_000);
    let mut loops = Vec::new();
    for l in 0..per_thread {
        let (c, t, tls, tally) = (c.clone(), t.clone(), tls.clone(), tally.clone());
        loops.push(tokio::task::spawn_local(async move {
            let mut i = (c.g * per_thread + l) * 1_000_003;
            for _ in 0..max_per_loop {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                i += 1;
                let t0 = mono_ns();
                let r = tokio::time::timeout_at(deadline + Duration::from_secs(5), one_handshake(&c, &t, tls.as_ref(), i)).await;
                let mut tl = tally.borrow_mut();
                match r {
                    Ok(Ok(resumed)) => {
                        tl.hist("connect").record_ns(mono_ns() - t0);
                        tl.add("ok", 1);
                        if resumed == Some(true) {
                            tl.add("resumed", 1);
                        }
                    }
                    Ok(Err(e)) => {
                        tl.fail(&e);
                    }
                    Err(_) => {
                        tl.fail(&"timed out");
                    }
                }
                c.progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    let mut t = tally.take();
    t.max("elapsed_ms", (mono_ns().saturating_sub(start_ns)) / 1_000_000);
    Ok(t)
}

/// One connect → TLS → authenticate → close. Returns whether TLS resumed.
async fn one_handshake(c: &Ctx, t: &TargetSpec, tls: Option<&TlsConnector>, i: u64) -> Res<Option<bool>> {
    let mut conn = open_target(t, c.src(i), tls, i).await?;
    let resumed = conn.resumed();
    let mut rbuf = BytesMut::with_capacity(512);
    match t.proto {
        Proto::Ringgate => {
            let user = format!("hs{}", i % 100_000);
            rgclient::connect(&mut conn, &mut rbuf, "d", &c.token(&user), 0).await?;
        }
        Proto::Http => {
            // keep-alive off: nginx closes after the response, as a handshake-per-request client sees it.
            conn.write_all(&http1::get_request(false)).await?;
            conn.flush().await?;
            read_http_response(&mut conn, &mut rbuf).await?;
        }
        Proto::Mqtt => mqtt_connect(&mut conn, &mut rbuf, &format!("hs{i}"), false).await?,
    }
    // Close at once (no close_notify): the server sees EOF, as with a client that goes away.
    drop(conn);
    Ok(resumed)
}

// ---------------------------------------------------------------------------
// push
// ---------------------------------------------------------------------------

/// Shared clock points of one push run (absolute `mono_ns`).
#[derive(Clone, Copy, Debug)]
pub struct PushWindow {
    pub start: u64,
    pub measure_from: u64,
    pub measure_to: u64,
    pub end: u64,
}

impl PushWindow {
    pub fn new(start: u64, job: &PushJob) -> PushWindow {
        let measure_from = start + job.warmup_ms * 1_000_000;
        let measure_to = measure_from + job.measure_ms * 1_000_000;
        PushWindow { start, measure_from, measure_to, end: measure_to + job.drain_ms * 1_000_000 }
    }

    pub fn in_measure(&self, t: u64) -> bool {
        t >= self.measure_from && t < self.measure_to
    }
}

async fn push(c: Rc<Ctx>, job: PushJob) -> Res<Tally> {
    let mine_r = c.mine(job.receivers as u64);
    let mine_s = c.mine(job.senders as u64);
    let pre = job.user_prefix.clone();
    let (receivers, mut tr) = ramp(&c, &mine_r, 0.0, 64, |i| {
        let c = c.clone();
        let u = format!("{pre}r{i}");
        async move { c.establish(i, &u, 0, true).await.map(|(conn, rbuf, _)| (conn, rbuf)) }
    })
    .await;
    let (senders, ts) = ramp(&c, &mine_s, 0.0, 64, |i| {
        let c = c.clone();
        let u = format!("{pre}s{i}");
        async move { c.establish(1_000_000 + i, &u, 0, false).await.map(|(conn, rbuf, _)| (i, conn, rbuf)) }
    })
    .await;
    tr.merge(&ts);
    c.report("connected", tr);
    let start = c.wait_cmd(1).await?;
    let win = PushWindow::new(start, &job);
    let tally = Rc::new(RefCell::new(Tally::default()));
    // Senders address only this thread's receivers, so a receipt can credit
    // its sender's end-to-end window without crossing threads or processes.
    let targets: Rc<Vec<String>> = Rc::new(mine_r.iter().map(|r| format!("{pre}r{r}")).collect());
    let credit: Rc<Credit> = Rc::new(Credit {
        delivered: (0..job.senders).map(|_| Cell::new(0)).collect(),
        notify: (0..job.senders).map(|_| Notify::new()).collect(),
    });
    let mut tasks = Vec::new();
    for (conn, rbuf) in receivers {
        let (tally, progress, credit) = (tally.clone(), c.progress.clone(), credit.clone());
        let proto = c.spec.target.proto;
        tasks.push(tokio::task::spawn_local(async move {
            let deadline = instant_at(win.end);
            let r = tokio::time::timeout_at(deadline, receive(proto, conn, rbuf, win, &tally, &progress, &credit)).await;
            if let Ok(Err(e)) = r {
                tally.borrow_mut().error(&e);
            }
        }));
    }
    for (i, conn, rbuf) in senders {
        let (tally, targets, credit) = (tally.clone(), targets.clone(), credit.clone());
        let job = job.clone();
        let proto = c.spec.target.proto;
        tasks.push(tokio::task::spawn_local(async move {
            let deadline = instant_at(win.end);
            let r = tokio::time::timeout_at(deadline, send(proto, i, conn, rbuf, &job, win, &tally, &targets, &credit)).await;
            if let Ok(Err(e)) = r {
                tally.borrow_mut().error(&e);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = tally.take();
    Ok(t)
}

/// Messages delivered per sender (global sender index), for the closed
/// loop's end-to-end window.
struct Credit {
    delivered: Vec<Cell<u64>>,
    notify: Vec<Notify>,
}

impl Credit {
    fn deliver(&self, sender: Option<u32>) {
        if let Some(i) = sender.map(|s| s as usize).filter(|&s| s < self.delivered.len()) {
            self.delivered[i].set(self.delivered[i].get() + 1);
            self.notify[i].notify_one();
        }
    }
}

/// Receives PUSHes (or MQTT PUBLISHes) until the window ends, acking each
/// read batch, recording end-to-end latency of messages sent in the
/// measurement window and counting deliveries that happen inside it.
async fn receive(
    proto: Proto,
    mut conn: Conn,
    mut rbuf: BytesMut,
    win: PushWindow,
    tally: &RefCell<Tally>,
    progress: &AtomicU64,
    credit: &Credit,
) -> Res<()> {
    let mut out = BytesMut::with_capacity(256);
    let mut local = Tally::default();
    let mut last_flush = mono_ns();
    loop {
        let mut top_seq = 0u64;
        loop {
            let ts = match proto {
                Proto::Ringgate => match rgclient::next_buffered(&mut rbuf)? {
                    Some(Frame::Push(p)) => {
                        top_seq = top_seq.max(p.seq);
                        credit.deliver(rgclient::payload_sender(&p.payload));
                        rgclient::payload_ts(&p.payload)
                    }
                    Some(Frame::Disconnect { reason, message }) => {
                        return Err(io::Error::other(format!("DISCONNECT({reason}): {}", message.as_str())));
                    }
                    Some(_) => None,
                    None => break,
                },
                Proto::Mqtt => match mqtt::decode(&mut rbuf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                    Some(mqtt::Packet::Publish { packet_id, payload, .. }) => {
                        if let Some(id) = packet_id {
                            mqtt::encode_puback(&mut out, id);
                        }
                        credit.deliver(rgclient::payload_sender(&payload));
                        rgclient::payload_ts(&payload)
                    }
                    Some(_) => None,
                    None => break,
                },
                Proto::Http => return Err(io::Error::other("push has no HTTP form")),
            };
            if let Some(ts) = ts {
                let now = mono_ns();
                local.add("received", 1);
                if win.in_measure(now) {
                    local.add("received_in_window", 1);
                }
                if win.in_measure(ts) {
                    local.add("received_sent_in_window", 1);
                    local.hist("latency").record_ns(now.saturating_sub(ts));
                }
            }
        }
        if top_seq > 0 {
            rgclient::encode_pushack(&mut out, top_seq);
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            conn.flush().await?;
            out.clear();
        }
        let now = mono_ns();
        if now - last_flush > 100_000_000 {
            // Keep the shared tally and progress current without locking per message.
            progress.fetch_add(local.count("received"), Ordering::Relaxed);
            tally.borrow_mut().merge(&local);
            local = Tally::default();
            last_flush = now;
        }
        if now >= win.end {
            break;
        }
        rbuf.reserve(16 * 1024);
        let n = match tokio::time::timeout_at(instant_at(win.end), conn.read_buf(&mut rbuf)).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "receiver closed by server"));
        }
    }
    progress.fetch_add(local.count("received"), Ordering::Relaxed);
    tally.borrow_mut().merge(&local);
    Ok(())
}

/// Sends to this thread's receivers round-robin: closed loop (`window`
/// messages sent but not yet *delivered*, until the measurement ends) or
/// open loop on a fixed schedule, stamping each payload with its send time
/// (closed) or scheduled time (open).
///
/// The closed-loop window is end to end on purpose: gating on SENDACK
/// alone lets a server accept SENDs faster than it delivers them, and the
/// "saturation" figure then measures a growing inbox instead of a
/// sustainable delivery rate.
#[allow(clippy::too_many_arguments)]
async fn send(
    proto: Proto,
    index: u64,
    conn: Conn,
    mut rbuf: BytesMut,
    job: &PushJob,
    win: PushWindow,
    tally: &RefCell<Tally>,
    targets: &[String],
    credit: &Credit,
) -> Res<()> {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let acked = Rc::new(Cell::new(0u64));
    let notify = Rc::new(Notify::new());
    // Reader: counts SENDACKs / PUBACKs until the window ends.
    let reader = {
        let (acked, notify) = (acked.clone(), notify.clone());
        tokio::task::spawn_local(async move {
            loop {
                loop {
                    let got = match proto {
                        Proto::Ringgate => match rgclient::next_buffered(&mut rbuf)? {
                            Some(Frame::SendAck(a)) if a.status == 0 => true,
                            Some(Frame::SendAck(a)) => return Err(io::Error::other(format!("SENDACK status {}", a.status))),
                            Some(Frame::Disconnect { reason, .. }) => return Err(io::Error::other(format!("sender got DISCONNECT({reason})"))),
                            Some(_) => false,
                            None => break,
                        },
                        _ => match mqtt::decode(&mut rbuf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                            Some(mqtt::Packet::PubAck { .. }) => true,
                            Some(_) => false,
                            None => break,
                        },
                    };
                    if got {
                        acked.set(acked.get() + 1);
                        notify.notify_one();
                    }
                }
                rbuf.reserve(8192);
                if rd.read_buf(&mut rbuf).await? == 0 {
                    return Ok::<(), io::Error>(());
                }
            }
        })
    };
    if targets.is_empty() {
        return Err(io::Error::other("no receivers on this client thread: use at least as many receivers as client threads"));
    }
    let receivers = targets.len() as u64;
    let me = index as usize;
    let delivered = || credit.delivered.get(me).map(|c| c.get()).unwrap_or(0);
    let mut sent = 0u64;
    let mut sent_in_window = 0u64;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut payload = Vec::with_capacity(job.payload_bytes);
    let mut encode = |k: u64, ts: u64, out: &mut BytesMut| {
        let user = &targets[((index + k * job.senders as u64) % receivers) as usize];
        rgclient::stamped_payload(ts, index as u32, job.payload_bytes, &mut payload);
        match proto {
            Proto::Mqtt => mqtt::encode_publish(out, &mqtt_topic(user), 1, (k % 65_535 + 1) as u16, &payload),
            _ => rgclient::encode_send(out, k + 1, user, &payload),
        }
    };
    tokio::time::sleep_until(instant_at(win.start)).await;
    match job.rate_per_s {
        None => loop {
            // Closed loop: refill the window, then wait for an ack.
            let now = mono_ns();
            if now >= win.measure_to {
                break;
            }
            while sent - delivered() < job.window as u64 {
                encode(sent, mono_ns(), &mut out);
                sent += 1;
                if win.in_measure(now) {
                    sent_in_window += 1;
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                wr.flush().await?;
                out.clear();
            }
            let wake = credit.notify.get(me).map(|n| n.notified());
            let Some(wake) = wake else { break };
            if tokio::time::timeout_at(instant_at(win.measure_to), wake).await.is_err() {
                break;
            }
        },
        Some(rate) => {
            let sched = Schedule::for_sender(rate, job.senders, index as u32, win.start, win.measure_to - win.start);
            // Far more than any healthy backlog; reaching it is reported, and
            // latency from the schedule still shows the delay.
            let cap = 65_536u64;
            while sent < sched.total {
                let due = sched.due(mono_ns());
                while sent < due && sent - acked.get() < cap {
                    let at = sched.at(sent);
                    encode(sent, at, &mut out);
                    if win.in_measure(at) {
                        sent_in_window += 1;
                    }
                    sent += 1;
                }
                if sent < due {
                    tally.borrow_mut().add("sender_backlog_capped", 1);
                }
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    out.clear();
                }
                if sent < sched.total {
                    tokio::time::sleep_until(instant_at(sched.at(sent))).await;
                }
            }
        }
    }
    // Wait (bounded by the caller's deadline) for the last acks so the connection closes cleanly.
    while acked.get() < sent {
        notify.notified().await;
    }
    {
        let mut t = tally.borrow_mut();
        t.add("sent", sent);
        t.add("sent_in_window", sent_in_window);
        t.add("acked", acked.get());
    }
    reader.abort();
    Ok(())
}

// ---------------------------------------------------------------------------
// reconnect-storm
// ---------------------------------------------------------------------------

/// A storm client's cursor: highest seq received with nothing missing below.
struct Cursor {
    last_seq: Cell<u64>,
}

/// Reads PUSHes, acks each batch, and advances the cursor; returns when the
/// cursor reaches `until` (0 = never; read until the connection drops).
async fn follow(conn: &mut Conn, rbuf: &mut BytesMut, cur: &Cursor, until: u64) -> Res<u64> {
    let mut out = BytesMut::with_capacity(32);
    let mut got = 0u64;
    loop {
        let mut top = 0;
        while let Some(f) = rgclient::next_buffered(rbuf)? {
            if let Frame::Push(p) = f {
                got += 1;
                if p.seq == cur.last_seq.get() + 1 {
                    cur.last_seq.set(p.seq);
                }
                top = top.max(p.seq);
            }
        }
        if top > 0 {
            rgclient::encode_pushack(&mut out, cur.last_seq.get());
            conn.write_all(&out).await?;
            conn.flush().await?;
            out.clear();
        }
        if until > 0 && cur.last_seq.get() >= until {
            return Ok(got);
        }
        rbuf.reserve(8192);
        if conn.read_buf(rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
    }
}

/// Sends `per_user` messages to every user in `users` over one connection,
/// `window` outstanding, and waits for every SENDACK.
async fn send_to_all(conn: &mut Conn, users: &[String], per_user: u64, id_base: u64) -> Res<u64> {
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let total = users.len() as u64 * per_user;
    let (mut sent, mut acked) = (0u64, 0u64);
    let window = 256;
    let mut payload = Vec::new();
    while acked < total {
        while sent < total && sent - acked < window {
            let user = &users[(sent % users.len() as u64) as usize];
            rgclient::stamped_payload(mono_ns(), 0, 32, &mut payload);
            rgclient::encode_send(&mut out, id_base + sent, user, &payload);
            sent += 1;
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            conn.flush().await?;
            out.clear();
        }
        match rgclient::read_frame(conn, &mut rbuf).await? {
            Some(Frame::SendAck(a)) if a.status == 0 => acked += 1,
            Some(Frame::SendAck(a)) => return Err(io::Error::other(format!("SENDACK status {}", a.status))),
            Some(_) => {}
            None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sender closed")),
        }
    }
    Ok(acked)
}

async fn storm(c: Rc<Ctx>, job: StormJob) -> Res<Tally> {
    if c.spec.target.proto != Proto::Ringgate {
        return Err(io::Error::other("reconnect-storm speaks ringgate only"));
    }
    let mine = c.mine(job.clients);
    let users: Vec<String> = mine.iter().map(|i| format!("{}{i}", job.user_prefix)).collect();
    let timeout = Duration::from_millis(job.timeout_ms);
    let cursors: Rc<Vec<Cursor>> = Rc::new(mine.iter().map(|_| Cursor { last_seq: Cell::new(0) }).collect());

    // Phase A: connect everyone, deliver `messages` each.
    let (mut held, mut t) = ramp(&c, &(0..mine.len() as u64).collect::<Vec<_>>(), 0.0, job.max_inflight, |k| {
        let c = c.clone();
        let (i, u) = (mine[k as usize], users[k as usize].clone());
        async move { c.establish(i, &u, 0, false).await.map(|(conn, rbuf, _)| (k, conn, rbuf)) }
    })
    .await;
    let mut sender = c.establish(2_000_000 + c.g, &format!("{}sender{}", job.user_prefix, c.g), 0, false).await?.0;
    let followers: Vec<_> = held
        .drain(..)
        .map(|(k, mut conn, mut rbuf)| {
            let cursors = cursors.clone();
            tokio::task::spawn_local(async move {
                let _ = follow(&mut conn, &mut rbuf, &cursors[k as usize], 0).await;
            })
        })
        .collect();
    with_timeout(timeout, send_to_all(&mut sender, &users, job.messages, 1)).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    while cursors.iter().any(|cur| cur.last_seq.get() < job.messages) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.add("primed", cursors.iter().filter(|cur| cur.last_seq.get() >= job.messages).count() as u64);
    c.report("primed", t);

    c.wait_cmd(1).await?;
    // Phase B: everyone drops at once (abort closes each socket without a
    // DISCONNECT, as a phone losing its network would), then more messages arrive.
    for f in &followers {
        f.abort();
    }
    for f in followers {
        let _ = f.await;
    }
    let mut t = Tally::default();
    t.add("offline_sent", with_timeout(timeout, send_to_all(&mut sender, &users, job.messages, 1 << 40)).await?);
    c.report("dropped", t);

    let t_ns = c.wait_cmd(2).await?;
    // Phase C: everyone reconnects at once with its cursor.
    let tally = Rc::new(RefCell::new(Tally::default()));
    let sem = Arc::new(Semaphore::new(job.max_inflight.max(1) as usize));
    let mut tasks = Vec::new();
    for (k, &i) in mine.iter().enumerate() {
        let (c, tally, cursors, sem) = (c.clone(), tally.clone(), cursors.clone(), sem.clone());
        let user = users[k].clone();
        tasks.push(tokio::task::spawn_local(async move {
            let Ok(_permit) = sem.acquire_owned().await else { return };
            let cur = &cursors[k];
            let r = tokio::time::timeout(timeout, async {
                let (mut conn, mut rbuf, head) = c.establish(i, &user, cur.last_seq.get(), false).await?;
                let at_connack = mono_ns();
                let got = if head > cur.last_seq.get() { follow(&mut conn, &mut rbuf, cur, head).await? } else { 0 };
                Ok::<_, io::Error>((at_connack, got))
            })
            .await;
            let mut tl = tally.borrow_mut();
            match r {
                Ok(Ok((at_connack, got))) => {
                    let done = mono_ns();
                    tl.add("caught_up", 1);
                    tl.add("replayed", got);
                    tl.hist("to_connack").record_ns(at_connack.saturating_sub(t_ns));
                    tl.hist("to_caught_up").record_ns(done.saturating_sub(t_ns));
                    tl.max("all_connacked_ms", at_connack.saturating_sub(t_ns) / 1_000_000);
                    tl.max("all_caught_up_ms", done.saturating_sub(t_ns) / 1_000_000);
                }
                Ok(Err(e)) => {
                    tl.fail(&e);
                }
                Err(_) => {
                    tl.fail(&"timed out");
                }
            }
            c.progress.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = tally.take();
    Ok(t)
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
                    Some(TlsConnector::from(clientnet::tls_config(alpn, resume, spec.target.kx)))
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
                    Job::Idle(j) => idle(ctx, j).await,
                    Job::Handshake(j) => handshake(ctx, j).await,
                    Job::Push(j) => push(ctx, j).await,
                    Job::Storm(j) => storm(ctx, j).await,
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
