//! `fleet`: ringgate in fleet mode (three nodes sharing every inbox through one `redis-server`) against the single node on its local log, measured in the same run; then a node killed under load, and the engine's memory per user and per message.
//!
//! (Not to be confused with [`crate::fleet`], the fleet of *client* worker
//! processes the other scenarios spawn.)
//!
//! Self-contained, like `reload-push`: one tokio current-thread runtime
//! in this process drives every client; the servers are real processes —
//! a `redis-server` on a free port in a temp dir, run as the deployment
//! docs say (`appendonly yes`, `appendfsync always`), three ringgate
//! nodes with `[fleet]`, and one ringgate on its durable local log with
//! `fsync = "always"` (the same promise: a confirmed message survives a
//! kill -9 of the store). Everything the servers do is pinned to the
//! server CPUs, as in the other scenarios.
//!
//! Phases:
//! 1. **push** — `pairs` sender → receiver pairs, the sender on node A and
//!    its receiver on node B (every message crosses nodes through the
//!    engine), paced open loop at `rate` msg/s in total (payloads stamped
//!    with their *scheduled* time, so a stall shows as latency), and the
//!    same pairs on the single node; the two alternate for `rounds` rounds
//!    (A/B, the order flipped each round) so drift on a shared machine hits
//!    both. Server CPU per message is the utime+stime of every server
//!    process (nodes and `redis-server`, or the single node) from
//!    `/proc/<pid>/stat`, sampled at the window's edges, divided by the
//!    messages delivered in it. Optionally a closed-loop saturation run.
//! 2. **node kill** — senders and receivers spread over the three nodes
//!    (each receiver on another node than its sender), paced load, and at
//!    `kill_at_s` the third node is killed with SIGKILL. Its clients take
//!    the next address (as the ladder does), CONNECT with their `last_seq`
//!    and retry every unanswered SEND with its `client_msg_id`. Reported:
//!    time from the kill until every one of its clients is back and caught
//!    up (a receiver holds the CONNACK head; a sender has its unanswered
//!    SENDs answered), and every confirmed message delivered (lost and
//!    duplicate counts, which must be 0).
//! 3. **engine memory** — `INFO memory` `used_memory` deltas while users
//!    are created and filled through ringgate (admin publish, so no
//!    sender's dedup record is in the per-message figure): bytes per
//!    offline user (one device known, no message) and per retained
//!    message; and `MEMORY USAGE` of one bench sender's dedup record (a
//!    device that sent more than the engine keeps). `ringgate plan
//!    --fleet` reads these from the committed result.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::procfs;
use crate::report::thousands;
use crate::rgclient;
use crate::stats::{mono_ns, ratio, Hist, Schedule, Summary};
use crate::targets::{free_port, Env, Server, TargetKind};
use ringgate::proto::frame::Frame;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetOpts {
    /// Sender → receiver pairs in the push phase.
    pub pairs: u32,
    /// Paced offered load, msg/s for all senders together.
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    /// A/B rounds (fleet and single node alternate, the order flipped each round).
    pub rounds: u32,
    /// Also a closed-loop run (each sender keeps `window` messages in flight end to end).
    pub saturation: bool,
    pub window: u32,
    /// Node-kill phase: pairs spread over the nodes, paced load, SIGKILL of the third node.
    pub kill: bool,
    pub kill_pairs: u32,
    pub kill_rate: f64,
    pub kill_at_s: f64,
    pub kill_load_s: f64,
    /// Engine memory phase: users created, then messages retained per user.
    pub mem_users: u64,
    pub mem_messages: u64,
    /// `[fleet] heartbeat_ms` of the nodes (a dead node leaves the route after 3 ×).
    pub heartbeat_ms: u64,
}

impl Default for FleetOpts {
    fn default() -> Self {
        FleetOpts {
            pairs: 8,
            rate: 10_000.0,
            payload_bytes: 64,
            warmup_s: 1.0,
            measure_s: 5.0,
            rounds: 2,
            saturation: true,
            window: 16,
            kill: true,
            kill_pairs: 24,
            kill_rate: 3_000.0,
            kill_at_s: 2.0,
            kill_load_s: 6.0,
            mem_users: 2_000,
            mem_messages: 10,
            heartbeat_ms: 1_000,
        }
    }
}

impl FleetOpts {
    /// The suite's short form: one round at the target rate, a short kill phase, a small memory fill.
    pub fn short() -> FleetOpts {
        FleetOpts { rounds: 1, measure_s: 3.0, saturation: false, kill_pairs: 12, kill_load_s: 5.0, mem_users: 1_000, mem_messages: 5, ..Default::default() }
    }
}

/// One measured push run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetRun {
    /// `fleet` (sender on n1, receiver on n2, + Redis) or `single` (local log, fsync always).
    pub setup: String,
    pub round: u32,
    /// `paced` or `saturation`.
    pub mode: String,
    pub offered_per_s: Option<f64>,
    pub sent_in_window: u64,
    pub delivered_in_window: u64,
    pub msgs_per_s: f64,
    /// Scheduled send time (paced) or send time (saturation) → receipt.
    pub latency_us: Summary,
    /// Messages sent in the window that never arrived.
    pub missing: u64,
    /// SENDACKs with a status other than 0.
    pub send_errors: u64,
    /// CPU of the ringgate process(es) in the window, s.
    pub nodes_cpu_s: f64,
    /// CPU of `redis-server` in the window, s (0 for the single node).
    pub engine_cpu_s: f64,
    /// (nodes + engine) CPU ÷ messages delivered in the window, µs.
    pub cpu_us_per_msg: f64,
    pub engine_cpu_us_per_msg: f64,
    /// Commands the engine processed in the window ÷ messages delivered (`INFO stats` total_commands_processed).
    pub engine_cmds_per_msg: Option<f64>,
    /// AOF rewrites that ran in the window (`INFO persistence`: finished
    /// in it, or still running at its end). Redis starts one whenever the
    /// AOF doubled past 64 MB; its child writes the whole dataset next to
    /// the per-turn fsync, which shows in the p99 (docs/fleet.md, "Latency").
    #[serde(default)]
    pub engine_aof_rewrites: Option<u64>,
    /// AOF bytes the engine wrote in the window ÷ messages delivered
    /// (`aof_current_size` growth; unknown when a rewrite reset it).
    #[serde(default)]
    pub engine_aof_bytes_per_msg: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KillResult {
    pub pairs: u32,
    pub rate: f64,
    /// Clients (senders + receivers) that were on the killed node.
    pub clients_on_killed_node: u64,
    /// SIGKILL → every one of them back (CONNACK on another node) and caught up, ms.
    pub all_back_and_caught_up_ms: f64,
    /// SIGKILL → the last of them got its CONNACK, ms.
    pub all_reconnected_ms: f64,
    /// Per client: SIGKILL → back and caught up.
    pub back_and_caught_up_us: Summary,
    /// SENDs retried with their client_msg_id after the reconnect (unanswered when the node died).
    pub retried_sends: u64,
    pub confirmed: u64,
    /// Confirmed (SENDACK 0) but never delivered, after the drain.
    pub lost: u64,
    /// A message delivered under two seqs (a retransmission of one seq is not counted).
    pub duplicates: u64,
    /// Clients that were never back (should be 0).
    pub not_back: u64,
    pub send_errors: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EngineMemory {
    pub users: u64,
    pub messages_per_user: u64,
    pub payload_bytes: u64,
    /// `used_memory` growth ÷ users after each user connected once (one device known, no message).
    pub bytes_per_known_user: f64,
    /// Growth ÷ users at each user's first message, less one message: the inbox's own keys.
    pub bytes_per_inbox: f64,
    /// Growth ÷ messages for the further messages.
    pub bytes_per_message: f64,
    /// An offline user with a device and an inbox, without messages: known user + inbox.
    pub bytes_per_offline_user: f64,
    /// `MEMORY USAGE` of a sending device's dedup keys once it sent more than the engine keeps.
    pub dedup_bytes_per_sending_device: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetResult {
    pub opts: FleetOpts,
    pub redis_version: String,
    /// The engine's `appendfsync` in this run (`always` unless overridden).
    #[serde(default)]
    pub redis_appendfsync: String,
    pub server_version: String,
    pub nodes: usize,
    /// `/proc/loadavg` before and after (the machine is shared).
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub runs: Vec<FleetRun>,
    /// Medians over the rounds of the paced runs.
    pub fleet_p99_us: f64,
    pub single_p99_us: f64,
    pub fleet_cpu_us_per_msg: f64,
    pub single_cpu_us_per_msg: f64,
    /// The fleet's paced CPU per message split: ringgate nodes and redis-server (medians).
    pub fleet_nodes_cpu_us_per_msg: f64,
    pub fleet_engine_cpu_us_per_msg: f64,
    /// Engine commands per message (median of the paced fleet runs).
    pub engine_cmds_per_msg: f64,
    /// fleet ÷ single CPU per message (target ≤ 4).
    pub cpu_ratio: f64,
    pub p99_target_met: bool,
    pub cpu_target_met: bool,
    pub kill: Option<KillResult>,
    pub memory: Option<EngineMemory>,
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// `redis-server` on a free port in its own directory, durable as the docs
/// say; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// `appendfsync` of the bench's Redis: `always` as documented, or
/// `RINGGATE_BENCH_REDIS_APPENDFSYNC` (e.g. `everysec`, to see what the
/// per-write fsync costs; the nodes then report the engine not durable).
pub fn appendfsync() -> String {
    std::env::var("RINGGATE_BENCH_REDIS_APPENDFSYNC").unwrap_or_else(|_| "always".into())
}

/// Whether each fleet run starts on a freshly rewritten AOF (the default),
/// so that Redis's automatic rewrite (due whenever the AOF doubled past
/// 64 MB: every ~100,000 messages here) does not land in a measured window
/// by chance: one rewrite in a 5 s window took its p99 from 10.6 to 71.8
/// ms (docs/fleet.md, "Latency"). Each run still records the rewrites that
/// ran in it; `RINGGATE_BENCH_REDIS_REWRITE_IN_WINDOW=1` leaves them to chance.
pub fn rewrite_before_runs() -> bool {
    std::env::var_os("RINGGATE_BENCH_REDIS_REWRITE_IN_WINDOW").is_none_or(|v| v != "1")
}

pub fn redis_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RINGGATE_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join("redis-server")).find(|p| p.exists())
}

impl Redis {
    pub fn start(env: &Env) -> Result<Redis> {
        let bin = redis_server_bin().ok_or_else(|| anyhow!("no redis-server on PATH (apt-get install redis-server)"))?;
        let dir = env.dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", &appendfsync(), "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null());
        crate::fleet::pin_command(&mut cmd, env.server_cpus.clone());
        let child = cmd.spawn().context("starting redis-server")?;
        let r = Redis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cmd(&["PING"]).ok().as_deref() != Some("+PONG\r\n") {
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command; the raw reply (read until it stops growing for a moment).
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if resp_complete(&out) {
                        break;
                    }
                }
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `BGREWRITEAOF`, then waits (at most 30 s) until no rewrite runs or is scheduled.
    pub fn rewrite_aof_now(&self) -> Result<()> {
        self.cmd(&["BGREWRITEAOF"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let t = self.cmd(&["INFO", "persistence"])?;
            if info_field(&t, "aof_rewrite_in_progress") == Some(0.0) && info_field(&t, "aof_rewrite_scheduled") == Some(0.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the engine's AOF rewrite did not finish in 30 s");
            }
        }
    }

    /// A numeric field of `INFO section`.
    pub fn info(&self, section: &str, key: &str) -> Result<f64> {
        let text = self.cmd(&["INFO", section])?;
        info_field(&text, key).ok_or_else(|| anyhow!("INFO {section}: no {key}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a buffer holds one whole RESP2 reply (simple, error, integer or bulk string).
fn resp_complete(b: &[u8]) -> bool {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return false };
    match b[0] {
        // Arrays (KEYS): read until the reply stops (the read timeout).
        b'*' => false,
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..eol]).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
            n < 0 || b.len() >= eol + 2 + n as usize + 2
        }
        _ => true,
    }
}

/// `key:value` from an `INFO` reply.
pub fn info_field(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------

/// A boxed client stream (TLS or plain).
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

struct Net {
    tls: Option<tokio_rustls::TlsConnector>,
    key: ringgate::auth::JwtKey,
}

impl Net {
    async fn open(&self, addr: SocketAddr) -> std::io::Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                Box::new(c.connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        })
    }

    /// Connect and CONNECT as `user` (device "d"); the stream, leftover bytes and CONNACK head.
    async fn login(&self, addr: SocketAddr, user: &str, last_seq: u64) -> std::io::Result<(Box<dyn Io>, BytesMut, u64)> {
        let fut = async {
            let mut s = self.open(addr).await?;
            let mut rbuf = BytesMut::new();
            let ack = rgclient::connect_keepalive(&mut s, &mut rbuf, "d", &rgclient::token(&self.key, user, 3600), last_seq, 3600).await?;
            Ok((s, rbuf, ack.head_seq))
        };
        match tokio::time::timeout(Duration::from_secs(5), fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "login timed out")),
        }
    }
}

/// Payload: scheduled/send time (8 B), sender (4 B), client_msg_id (8 B), padding.
fn payload(ts: u64, sender: u32, id: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.resize(size.max(20), b'.');
}

fn payload_parts(p: &[u8]) -> Option<(u64, u32, u64)> {
    let mut b = p.get(..20)?;
    Some((b.get_u64(), b.get_u32(), b.get_u64()))
}

/// What the push phase's clients count.
#[derive(Default)]
struct PushTally {
    latency: Hist,
    sent_in_window: u64,
    delivered_in_window: u64,
    received_sent_in_window: u64,
    send_errors: u64,
    failed: Vec<String>,
}

struct Window {
    start: u64,
    from: u64,
    to: u64,
    end: u64,
}

impl Window {
    fn in_measure(&self, t: u64) -> bool {
        t >= self.from && t < self.to
    }
}

/// One push run: sender `i` on `snd[i % len]` to its own receiver on
/// `rcv[i % len]`. Samples the CPU of `pids` and the engine's command
/// count at the window's edges.
#[allow(clippy::too_many_arguments)]
fn push_run(
    net: &Net,
    o: &FleetOpts,
    snd: &[SocketAddr],
    rcv: &[SocketAddr],
    node_pids: &[u32],
    redis: Option<&Redis>,
    rate: Option<f64>,
    prefix: &str,
) -> Result<(PushTally, f64, f64, Option<f64>, Option<(u64, Option<f64>)>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tally = Rc::new(RefCell::new(PushTally::default()));
    let cpu = Rc::new(Cell::new((0.0f64, 0.0f64, 0.0f64)));
    let cmds = Rc::new(Cell::new(None::<f64>));
    let aof = Rc::new(Cell::new(None::<(u64, Option<f64>)>));
    rt.block_on(tokio::task::LocalSet::new().run_until(async {
        let mut pairs = Vec::new();
        for i in 0..o.pairs as usize {
            let (ru, su) = (format!("{prefix}r{i}"), format!("{prefix}s{i}"));
            let (r, rb, _) = net.login(rcv[i % rcv.len()], &ru, 0).await.with_context(|| format!("receiver {ru}"))?;
            let (s, sb, _) = net.login(snd[i % snd.len()], &su, 0).await.with_context(|| format!("sender {su}"))?;
            pairs.push((ru, r, rb, s, sb));
        }
        // Let the fleet's presence writes of the logins settle before the clock starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = mono_ns() + 100_000_000;
        let from = start + (o.warmup_s * 1e9) as u64;
        let to = from + (o.measure_s * 1e9) as u64;
        let win = Rc::new(Window { start, from, to, end: to + 3_000_000_000 });
        let mut tasks = Vec::new();
        for (i, (ru, r, rb, s, sb)) in pairs.into_iter().enumerate() {
            let inflight = Rc::new(Cell::new(0u32));
            let wake = Rc::new(tokio::sync::Notify::new());
            let (mut rr, mut rw) = tokio::io::split(r);
            let (mut sr, mut sw) = tokio::io::split(s);
            // Receiver: latency per PUSH, one PUSHACK per read batch.
            {
                let (tally, win, inflight, wake) = (tally.clone(), win.clone(), inflight.clone(), wake.clone());
                let mut rbuf = rb;
                tasks.push(tokio::task::spawn_local(async move {
                    let mut out = BytesMut::new();
                    loop {
                        let left = Duration::from_nanos(win.end.saturating_sub(mono_ns()));
                        let f = match tokio::time::timeout(left, rgclient::read_frame(&mut rr, &mut rbuf)).await {
                            Ok(Ok(Some(f))) => f,
                            Ok(Ok(None)) | Ok(Err(_)) => {
                                tally.borrow_mut().failed.push("receiver connection closed".into());
                                break;
                            }
                            Err(_) => break,
                        };
                        let mut top = 0;
                        let mut next = Some(f);
                        while let Some(f) = next {
                            if let Frame::Push(p) = f {
                                top = top.max(p.seq);
                                let now = mono_ns();
                                if let Some((ts, _, _)) = payload_parts(&p.payload) {
                                    let mut t = tally.borrow_mut();
                                    if win.in_measure(now) {
                                        t.delivered_in_window += 1;
                                    }
                                    if win.in_measure(ts) {
                                        t.received_sent_in_window += 1;
                                        t.latency.record_ns(now.saturating_sub(ts));
                                    }
                                }
                                inflight.set(inflight.get().saturating_sub(1));
                                wake.notify_one();
                            }
                            next = rgclient::next_buffered(&mut rbuf).ok().flatten();
                        }
                        if top > 0 {
                            out.clear();
                            rgclient::encode_pushack(&mut out, top);
                            if rw.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    }
                }));
            }
            // Sender's reader: SENDACKs other than 0 are counted.
            {
                let (tally, win) = (tally.clone(), win.clone());
                let mut sbuf = sb;
                tasks.push(tokio::task::spawn_local(async move {
                    loop {
                        let left = Duration::from_nanos(win.end.saturating_sub(mono_ns()));
                        match tokio::time::timeout(left, rgclient::read_frame(&mut sr, &mut sbuf)).await {
                            Ok(Ok(Some(Frame::SendAck(a)))) if a.status != 0 => tally.borrow_mut().send_errors += 1,
                            Ok(Ok(Some(_))) => {}
                            _ => break,
                        }
                    }
                }));
            }
            // Sender: paced (scheduled timestamps) or closed loop.
            {
                let (tally, win, size, window, pairs) = (tally.clone(), win.clone(), o.payload_bytes, o.window, o.pairs);
                tasks.push(tokio::task::spawn_local(async move {
                    let (mut out, mut pl, mut id) = (BytesMut::new(), Vec::new(), 0u64);
                    tokio::time::sleep(Duration::from_nanos(win.start.saturating_sub(mono_ns()))).await;
                    match rate {
                        Some(rate) => {
                            let sched = Schedule::for_sender(rate, pairs, i as u32, win.start, win.to - win.start);
                            let mut sent = 0u64;
                            while sent < sched.total {
                                let due = sched.due(mono_ns());
                                out.clear();
                                while sent < due {
                                    let at = sched.at(sent);
                                    id += 1;
                                    payload(at, i as u32, id, size, &mut pl);
                                    rgclient::encode_send(&mut out, id, &ru, &pl);
                                    if win.in_measure(at) {
                                        tally.borrow_mut().sent_in_window += 1;
                                    }
                                    sent += 1;
                                }
                                if !out.is_empty() && sw.write_all(&out).await.is_err() {
                                    return;
                                }
                                if sent < sched.total {
                                    tokio::time::sleep(Duration::from_nanos(sched.at(sent).saturating_sub(mono_ns()))).await;
                                }
                            }
                        }
                        None => {
                            while mono_ns() < win.to {
                                if inflight.get() >= window {
                                    let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
                                    continue;
                                }
                                out.clear();
                                while inflight.get() < window {
                                    id += 1;
                                    let now = mono_ns();
                                    payload(now, i as u32, id, size, &mut pl);
                                    rgclient::encode_send(&mut out, id, &ru, &pl);
                                    if win.in_measure(now) {
                                        tally.borrow_mut().sent_in_window += 1;
                                    }
                                    inflight.set(inflight.get() + 1);
                                }
                                if sw.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        }
        // The window's edges: CPU of the nodes and the engine, and the engine's command count.
        let sample = || {
            let nodes = procfs::sample_procs(node_pids).cpu_s;
            let engine = redis.map_or(0.0, |r| procfs::sample_procs(&[r.pid()]).cpu_s);
            let cmds = redis.and_then(|r| r.info("stats", "total_commands_processed").ok());
            let aof = redis.and_then(|r| r.cmd(&["INFO", "persistence"]).ok()).and_then(|t| {
                Some((info_field(&t, "aof_rewrites")?, info_field(&t, "aof_rewrite_in_progress")?, info_field(&t, "aof_current_size")?))
            });
            (nodes, engine, cmds, aof)
        };
        tokio::time::sleep(Duration::from_nanos(win.from.saturating_sub(mono_ns()))).await;
        let (n0, e0, c0, a0) = sample();
        tokio::time::sleep(Duration::from_nanos(win.to.saturating_sub(mono_ns()))).await;
        let (n1, e1, c1, a1) = sample();
        cpu.set((n1 - n0, e1 - e0, 0.0));
        if let (Some(a), Some(b)) = (c0, c1) {
            // Less the two INFO calls of the first sample (each counted once it ran).
            cmds.set(Some(b - a - 2.0));
        }
        if let (Some((r0, _, s0)), Some((r1, busy1, s1))) = (a0, a1) {
            let rewrites = (r1 - r0).max(0.0) as u64 + busy1 as u64;
            aof.set(Some((rewrites, (rewrites == 0 && s1 >= s0).then_some(s1 - s0))));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok::<_, anyhow::Error>(())
    }))?;
    drop(rt);
    let t = Rc::try_unwrap(tally).map_err(|_| anyhow!("push tally still shared"))?.into_inner();
    let (nodes, engine, _) = cpu.get();
    Ok((t, nodes, engine, cmds.get(), aof.get()))
}

#[allow(clippy::too_many_arguments)]
fn measured_run(
    net: &Net,
    o: &FleetOpts,
    setup: &str,
    round: u32,
    snd: &[SocketAddr],
    rcv: &[SocketAddr],
    node_pids: &[u32],
    redis: Option<&Redis>,
    rate: Option<f64>,
) -> Result<FleetRun> {
    let prefix = format!("f{}{}{}_", &setup[..1], round, mono_ns() % 1_000_000);
    if let Some(r) = redis.filter(|_| rewrite_before_runs()) {
        r.rewrite_aof_now()?;
    }
    let (t, nodes_cpu_s, engine_cpu_s, cmds, aof) = push_run(net, o, snd, rcv, node_pids, redis, rate, &prefix)?;
    if let Some(f) = t.failed.first() {
        bail!("{setup} round {round}: {f} ({} failures)", t.failed.len());
    }
    let d = t.delivered_in_window;
    let per = |x: f64| if d > 0 { x * 1e6 / d as f64 } else { f64::NAN };
    Ok(FleetRun {
        setup: setup.into(),
        round,
        mode: if rate.is_some() { "paced".into() } else { "saturation".into() },
        offered_per_s: rate,
        sent_in_window: t.sent_in_window,
        delivered_in_window: d,
        msgs_per_s: d as f64 / o.measure_s,
        latency_us: t.latency.summary(),
        missing: t.sent_in_window.saturating_sub(t.received_sent_in_window),
        send_errors: t.send_errors,
        nodes_cpu_s,
        engine_cpu_s,
        cpu_us_per_msg: per(nodes_cpu_s + engine_cpu_s),
        engine_cpu_us_per_msg: per(engine_cpu_s),
        engine_cmds_per_msg: cmds.filter(|_| d > 0).map(|c| c / d as f64),
        engine_aof_rewrites: aof.map(|a| a.0),
        engine_aof_bytes_per_msg: aof.and_then(|a| a.1).filter(|_| d > 0).map(|b| b / d as f64),
    })
}

// ---------------------------------------------------------------------------
// node kill
// ---------------------------------------------------------------------------

/// Shared state of the kill phase.
#[derive(Default)]
struct KillState {
    /// Per pair: ids confirmed with SENDACK 0.
    confirmed: Vec<HashSet<u64>>,
    /// Per pair: ids delivered (from the payload), and how many arrived under a second seq.
    delivered: Vec<HashSet<u64>>,
    duplicates: u64,
    retried: u64,
    send_errors: u64,
    /// Per client on the killed node: kill → CONNACK elsewhere, kill → caught up (ns).
    back: Vec<(Option<u64>, Option<u64>)>,
    kill_ns: Option<u64>,
    senders_done: u64,
}

/// A sender that follows the ladder: on a dead connection it takes the next
/// address, CONNECTs, and retries every unanswered SEND with its id.
#[allow(clippy::too_many_arguments)]
async fn kill_sender(
    net: Rc<Net>,
    st: Rc<RefCell<KillState>>,
    addrs: Vec<SocketAddr>,
    home: usize,
    pair: usize,
    user: String,
    to: String,
    sched: Schedule,
    size: usize,
    back_slot: Option<usize>,
    deadline: u64,
) {
    let mut cur = home;
    let mut unanswered: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut sent = 0u64;
    let mut conn: Option<(tokio::io::ReadHalf<Box<dyn Io>>, tokio::io::WriteHalf<Box<dyn Io>>, BytesMut)> = None;
    let mut first = true;
    // Unanswered when the connection died: the sender is caught up once these are answered.
    let mut owed: HashSet<u64> = HashSet::new();
    let mut out = BytesMut::new();
    let mut pl = Vec::new();
    loop {
        let now = mono_ns();
        if now > deadline || (sent >= sched.total && unanswered.is_empty()) {
            break;
        }
        if conn.is_none() {
            match net.login(addrs[cur], &user, 0).await {
                Ok((s, rb, _)) => {
                    let (r, mut w) = tokio::io::split(s);
                    if !first {
                        if let Some(b) = back_slot {
                            st.borrow_mut().back[b].0.get_or_insert(mono_ns());
                        }
                        out.clear();
                        for (id, p) in &unanswered {
                            rgclient::encode_send(&mut out, *id, &to, p);
                        }
                        st.borrow_mut().retried += unanswered.len() as u64;
                        if w.write_all(&out).await.is_err() {
                            cur = (cur + 1) % addrs.len();
                            continue;
                        }
                    }
                    first = false;
                    conn = Some((r, w, rb));
                    // Nothing was owed: back and caught up at the CONNACK.
                    if let Some(b) = back_slot {
                        let mut s = st.borrow_mut();
                        if s.back[b].0.is_some() && owed.is_empty() && s.back[b].1.is_none() {
                            s.back[b].1 = s.back[b].0;
                        }
                    }
                }
                Err(_) => {
                    // The ladder: next address, a short pause after a full turn.
                    cur = (cur + 1) % addrs.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some((r, w, rb)) = conn.as_mut() else { continue };
        // Send what is due.
        let due = sched.due(mono_ns());
        out.clear();
        while sent < due {
            let id = sent + 1;
            payload(sched.at(sent), pair as u32, id, size, &mut pl);
            rgclient::encode_send(&mut out, id, &to, &pl);
            unanswered.insert(id, pl.clone());
            sent += 1;
        }
        let mut dead = !out.is_empty() && w.write_all(&out).await.is_err();
        if !dead {
            let wait = if sent < sched.total { Duration::from_nanos(sched.at(sent).saturating_sub(mono_ns())) } else { Duration::from_millis(50) };
            match tokio::time::timeout(wait, rgclient::read_frame(r, rb)).await {
                Err(_) => {}
                Ok(Ok(Some(f))) => {
                    let mut next = Some(f);
                    while let Some(f) = next {
                        if let Frame::SendAck(a) = f {
                            let mut s = st.borrow_mut();
                            if a.status == 0 {
                                unanswered.remove(&a.client_msg_id);
                                s.confirmed[pair].insert(a.client_msg_id);
                                owed.remove(&a.client_msg_id);
                            } else {
                                // Engine trouble: stays unanswered and goes again after a reconnect.
                                s.send_errors += 1;
                            }
                        }
                        next = rgclient::next_buffered(rb).ok().flatten();
                    }
                    if let Some(b) = back_slot {
                        let mut s = st.borrow_mut();
                        if s.back[b].0.is_some() && owed.is_empty() && s.back[b].1.is_none() {
                            s.back[b].1 = Some(mono_ns());
                        }
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => dead = true,
            }
        }
        if dead {
            conn = None;
            owed = unanswered.keys().copied().collect();
            cur = (cur + 1) % addrs.len();
        }
    }
    st.borrow_mut().senders_done += 1;
}

/// A receiver that follows the ladder and reconnects with its last seq.
#[allow(clippy::too_many_arguments)]
async fn kill_receiver(
    net: Rc<Net>,
    st: Rc<RefCell<KillState>>,
    stop: Rc<Cell<bool>>,
    addrs: Vec<SocketAddr>,
    home: usize,
    pair: usize,
    user: String,
    back_slot: Option<usize>,
) {
    let mut cur = home;
    let mut last_seq = 0u64;
    let mut first = true;
    let mut catch_up_to: Option<u64> = None;
    let mut out = BytesMut::new();
    while !stop.get() {
        let (s, mut rb, head) = match net.login(addrs[cur], &user, last_seq).await {
            Ok(x) => x,
            Err(_) => {
                cur = (cur + 1) % addrs.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if !first {
            if let Some(b) = back_slot {
                st.borrow_mut().back[b].0.get_or_insert(mono_ns());
                catch_up_to = Some(head);
                if head <= last_seq {
                    st.borrow_mut().back[b].1.get_or_insert(mono_ns());
                }
            }
        }
        first = false;
        let (mut r, mut w) = tokio::io::split(s);
        loop {
            if stop.get() {
                return;
            }
            let f = match tokio::time::timeout(Duration::from_millis(50), rgclient::read_frame(&mut r, &mut rb)).await {
                Err(_) => continue,
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) | Ok(Err(_)) => break,
            };
            let mut top = 0;
            let mut next = Some(f);
            while let Some(f) = next {
                if let Frame::Push(p) = f {
                    top = top.max(p.seq);
                    // A seq at or below the last one is a retransmission, not a second delivery.
                    if p.seq > last_seq {
                        last_seq = p.seq;
                        if let Some((_, _, id)) = payload_parts(&p.payload) {
                            let mut s = st.borrow_mut();
                            if !s.delivered[pair].insert(id) {
                                s.duplicates += 1;
                            }
                        }
                    }
                }
                next = rgclient::next_buffered(&mut rb).ok().flatten();
            }
            if let (Some(b), Some(to)) = (back_slot, catch_up_to) {
                if last_seq >= to {
                    st.borrow_mut().back[b].1.get_or_insert(mono_ns());
                }
            }
            if top > 0 {
                out.clear();
                rgclient::encode_pushack(&mut out, top);
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
        cur = (cur + 1) % addrs.len();
    }
}

fn kill_phase(net: Rc<Net>, o: &FleetOpts, nodes: &mut [Server], prefix: &str) -> Result<KillResult> {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|s| s.addr).collect();
    let n = addrs.len();
    let victim = n - 1;
    let victim_pid = nodes[victim].pid();
    let st = Rc::new(RefCell::new(KillState {
        confirmed: vec![HashSet::new(); o.kill_pairs as usize],
        delivered: vec![HashSet::new(); o.kill_pairs as usize],
        ..Default::default()
    }));
    let stop = Rc::new(Cell::new(false));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kill_at;
    {
        let st = st.clone();
        kill_at = rt.block_on(tokio::task::LocalSet::new().run_until(async move {
            let start = mono_ns() + 500_000_000;
            let load_ns = (o.kill_load_s * 1e9) as u64;
            let kill_at = start + (o.kill_at_s * 1e9) as u64;
            let deadline = start + load_ns + 20_000_000_000;
            let mut tasks = Vec::new();
            for i in 0..o.kill_pairs as usize {
                // Sender on node i % n, its receiver on the next node: every message crosses nodes.
                let (sh, rh) = (i % n, (i + 1) % n);
                let (su, ru) = (format!("{prefix}s{i}"), format!("{prefix}r{i}"));
                let rslot = (rh == victim).then(|| {
                    let mut s = st.borrow_mut();
                    s.back.push((None, None));
                    s.back.len() - 1
                });
                let sslot = (sh == victim).then(|| {
                    let mut s = st.borrow_mut();
                    s.back.push((None, None));
                    s.back.len() - 1
                });
                tasks.push(tokio::task::spawn_local(kill_receiver(net.clone(), st.clone(), stop.clone(), addrs.clone(), rh, i, ru.clone(), rslot)));
                let sched = Schedule::for_sender(o.kill_rate, o.kill_pairs, i as u32, start, load_ns);
                tasks.push(tokio::task::spawn_local(kill_sender(net.clone(), st.clone(), addrs.clone(), sh, i, su, ru, sched, o.payload_bytes, sslot, deadline)));
            }
            tokio::time::sleep(Duration::from_nanos(kill_at.saturating_sub(mono_ns()))).await;
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
            st.borrow_mut().kill_ns = Some(kill_at);
            // Drain: until every confirmed message is delivered and every sender is done, or the deadline.
            while mono_ns() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let s = st.borrow();
                let lost: usize = s.confirmed.iter().zip(&s.delivered).map(|(c, d)| c.difference(d).count()).sum();
                let all_back = s.back.iter().all(|b| b.1.is_some());
                if s.senders_done == o.kill_pairs as u64 && lost == 0 && all_back {
                    break;
                }
            }
            // A moment more, so a late duplicate would be seen.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.set(true);
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
            }
            kill_at
        }));
    }
    drop(rt);
    let s = st.borrow();
    let mut h = Hist::new();
    let mut worst: f64 = 0.0;
    let mut worst_connack: f64 = 0.0;
    let mut not_back = 0;
    for (c, u) in &s.back {
        match (c, u) {
            (Some(c), Some(u)) => {
                h.record_ns(u.saturating_sub(kill_at));
                worst = worst.max(u.saturating_sub(kill_at) as f64 / 1e6);
                worst_connack = worst_connack.max(c.saturating_sub(kill_at) as f64 / 1e6);
            }
            _ => not_back += 1,
        }
    }
    Ok(KillResult {
        pairs: o.kill_pairs,
        rate: o.kill_rate,
        clients_on_killed_node: s.back.len() as u64,
        all_back_and_caught_up_ms: worst,
        all_reconnected_ms: worst_connack,
        back_and_caught_up_us: h.summary(),
        retried_sends: s.retried,
        confirmed: s.confirmed.iter().map(|c| c.len() as u64).sum(),
        lost: s.confirmed.iter().zip(&s.delivered).map(|(c, d)| c.difference(d).count() as u64).sum(),
        duplicates: s.duplicates,
        not_back,
        send_errors: s.send_errors,
    })
}

// ---------------------------------------------------------------------------
// engine memory
// ---------------------------------------------------------------------------

fn parse_admin_addr(log: &str) -> Option<SocketAddr> {
    let at = log.rfind("admin_addr=")? + "admin_addr=".len();
    let rest = &log[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `POST /v1/messages` on a node's admin API; the status.
fn admin_publish(addr: SocketAddr, token: &str, body: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    Ok(text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

/// Waits for the engine's memory to stop moving (lazy frees, the AOF buffer) and reads it.
fn settled_used_memory(redis: &Redis) -> Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    redis.info("memory", "used_memory")
}

fn memory_phase(net: &Net, o: &FleetOpts, node: &Server, redis: &Redis, dedup_user: &str) -> Result<EngineMemory> {
    let log = std::fs::read_to_string(node.dir.join("server.log")).unwrap_or_default();
    let admin = parse_admin_addr(&log).ok_or_else(|| anyhow!("no admin_addr in the node's log"))?;
    let token = std::fs::read_to_string(node.dir.join("data/admin-token")).context("admin-token")?.trim().to_string();
    let prefix = format!("m{}_", mono_ns() % 1_000_000);
    let users: Vec<String> = (0..o.mem_users).map(|i| format!("{prefix}{i}")).collect();
    let m0 = settled_used_memory(redis)?;
    // 1: every user connects once (presence: one device known), then leaves.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for chunk in users.chunks(64) {
            let mut conns = Vec::new();
            for u in chunk {
                conns.push(net.login(node.addr, u, 0).await.with_context(|| format!("login {u}"))?);
            }
            drop(conns);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    drop(rt);
    let m1 = settled_used_memory(redis)?;
    let body = |chunk: &[String], k: u64| {
        let list: Vec<String> = chunk.iter().map(|u| format!("\"{u}\"")).collect();
        format!("{{\"to_users\":[{}],\"payload\":\"{}{}\"}}", list.join(","), k, ".".repeat(o.payload_bytes.saturating_sub(8)))
    };
    let publish = |k: u64| -> Result<()> {
        for chunk in users.chunks(100) {
            let st = admin_publish(admin, &token, &body(chunk, k))?;
            if st != 200 {
                bail!("admin publish answered {st}");
            }
        }
        Ok(())
    };
    // 2: each user's first message (creates the inbox's keys).
    publish(0)?;
    let m2 = settled_used_memory(redis)?;
    // 3: the rest.
    for k in 1..o.mem_messages.max(2) {
        publish(k)?;
    }
    let m3 = settled_used_memory(redis)?;
    let u = o.mem_users as f64;
    let further = (o.mem_messages.max(2) - 1) as f64 * u;
    let per_msg = (m3 - m2) / further;
    let inbox = (m2 - m1) / u - per_msg;
    // The device `d`'s records (16 buckets, `src/fleet/scripts.rs`
    // `dedup_key`) and its id queue.
    let dedup = (0..16)
        .map(|b| format!("rg:{{{dedup_user}}}:d:d:{b}"))
        .chain([format!("rg:{{{dedup_user}}}:q:d")])
        .filter_map(|k| redis.cmd(&["MEMORY", "USAGE", &k]).ok())
        .filter_map(|r| r.strip_prefix(':').and_then(|v| v.trim().parse::<f64>().ok()))
        .sum();
    Ok(EngineMemory {
        users: o.mem_users,
        messages_per_user: o.mem_messages.max(2),
        payload_bytes: o.payload_bytes as u64,
        bytes_per_known_user: (m1 - m0) / u,
        bytes_per_inbox: inbox,
        bytes_per_message: per_msg,
        bytes_per_offline_user: (m1 - m0) / u + inbox,
        dedup_bytes_per_sending_device: dedup,
    })
}

// ---------------------------------------------------------------------------
// the scenario
// ---------------------------------------------------------------------------

fn fleet_edit(redis_url: String, id: String, key: PathBuf, heartbeat_ms: u64) -> impl Fn(String) -> String {
    move |c: String| {
        c + &format!(
            "\n[route]\nsigning_key_file = \"{}\"\n\n[fleet]\nredis = [\"{redis_url}\"]\nnode_id = \"{id}\"\nadvertise_host = \"127.0.0.1\"\nheartbeat_ms = {heartbeat_ms}\n",
            key.display()
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(env: &Env, kind: TargetKind, o: &FleetOpts) -> Result<FleetResult> {
    if !kind.is_ringgate() || kind.ws() {
        bail!("fleet speaks ringgate over TLS/TCP only");
    }
    let loadavg_before = loadavg();
    let redis = Redis::start(env)?;
    let redis_version = redis.cmd(&["INFO", "server"]).ok().and_then(|t| t.lines().find_map(|l| l.strip_prefix("redis_version:").map(|v| v.trim().to_string()))).unwrap_or_default();
    let key_dir = env.dir.join("fleet-route-key");
    std::fs::create_dir_all(&key_dir)?;
    let key = ringgate::route::load_or_create_key(&ringgate::config::RouteConfig::default(), &key_dir).map_err(|e| anyhow!("route key: {e}"))?.path.clone();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(Server::start_edited(env, kind, &format!("fleet-n{i}"), &fleet_edit(redis.url(), format!("n{i}"), key.clone(), o.heartbeat_ms))?);
    }
    let single = Server::start_edited(env, kind, "fleet-single", &|c: String| c.replace("durability = \"memory\"", "durability = \"durable\"\nfsync = \"always\""))?;
    // Every node sees the others before anything is measured.
    std::thread::sleep(Duration::from_millis(3 * o.heartbeat_ms.min(1000)));
    let net = Rc::new(Net {
        tls: env.tls.then(|| tokio_rustls::TlsConnector::from(crate::clientnet::tls_config(&[b"ringgate/1"], false, env.kx))),
        key: ringgate::auth::JwtKey::new(env.jwt_secret.as_bytes()),
    });
    let fleet_pids: Vec<u32> = nodes.iter().map(|s| s.pid()).collect();
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    let mut modes = vec![Some(o.rate)];
    if o.saturation {
        modes.push(None);
    }
    for round in 0..o.rounds.max(1) {
        for &rate in &modes {
            let fleet_first = round % 2 == 0;
            for which in [fleet_first, !fleet_first] {
                let r = if which {
                    measured_run(&net, o, "fleet", round, &[nodes[0].addr], &[nodes[1].addr], &fleet_pids, Some(&redis), rate)
                } else {
                    measured_run(&net, o, "single", round, &[single.addr], &[single.addr], &[single.pid()], None, rate)
                };
                match r {
                    Ok(r) => {
                        eprintln!(
                            "fleet: {} round {} {}: {:.0} msg/s, p50 {} µs, p99 {} µs, {:.1} µs CPU/msg",
                            r.setup,
                            r.round,
                            r.mode,
                            r.msgs_per_s,
                            r.latency_us.p50_us,
                            r.latency_us.p99_us,
                            r.cpu_us_per_msg
                        );
                        runs.push(r);
                    }
                    Err(e) => notes.push(format!("push run failed: {e:#}")),
                }
            }
        }
    }
    let paced = |setup: &str, f: &dyn Fn(&FleetRun) -> f64| median(runs.iter().filter(|r| r.setup == setup && r.mode == "paced").map(f).collect());
    let fleet_p99_us = paced("fleet", &|r| r.latency_us.p99_us as f64);
    let single_p99_us = paced("single", &|r| r.latency_us.p99_us as f64);
    let fleet_cpu = paced("fleet", &|r| r.cpu_us_per_msg);
    let single_cpu = paced("single", &|r| r.cpu_us_per_msg);
    let memory = if o.mem_users > 0 {
        // A bench sender of the last fleet run sent more than the engine keeps (2 × 1,024 ids).
        let sender = last_fleet_sender(&redis);
        match memory_phase(&net, o, &nodes[0], &redis, &sender) {
            Ok(m) => Some(m),
            Err(e) => {
                notes.push(format!("engine memory phase failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let kill = if o.kill {
        match kill_phase(net.clone(), o, &mut nodes, &format!("k{}_", mono_ns() % 1_000_000)) {
            Ok(k) => Some(k),
            Err(e) => {
                notes.push(format!("node-kill phase failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let server_version = single.version.clone();
    drop(nodes);
    single.stop();
    drop(redis);
    let cpu_ratio = fleet_cpu / single_cpu;
    Ok(FleetResult {
        opts: o.clone(),
        redis_version,
        redis_appendfsync: appendfsync(),
        server_version,
        nodes: 3,
        loadavg_before,
        loadavg_after: loadavg(),
        fleet_p99_us,
        single_p99_us,
        fleet_cpu_us_per_msg: fleet_cpu,
        single_cpu_us_per_msg: single_cpu,
        fleet_nodes_cpu_us_per_msg: paced("fleet", &|r| r.nodes_cpu_s * 1e6 / r.delivered_in_window.max(1) as f64),
        fleet_engine_cpu_us_per_msg: paced("fleet", &|r| r.engine_cpu_us_per_msg),
        engine_cmds_per_msg: paced("fleet", &|r| r.engine_cmds_per_msg.unwrap_or(f64::NAN)),
        cpu_ratio,
        p99_target_met: fleet_p99_us < 5_000.0,
        cpu_target_met: cpu_ratio <= 4.0,
        runs,
        kill,
        memory,
        notes,
    })
}

/// A sender of the push phase whose dedup record the engine holds (the
/// one with a `rg:{…}:q:d` queue), for the per-device dedup figure.
fn last_fleet_sender(redis: &Redis) -> String {
    let Ok(keys) = redis.cmd(&["KEYS", "rg:{ff*s0}:q:d"]) else { return String::new() };
    keys.lines().filter(|l| l.starts_with("rg:{")).filter_map(|l| l.strip_prefix("rg:{")?.split_once('}').map(|(u, _)| u.to_string())).next().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------

fn us_ms(v: u64) -> String {
    format!("{:.2}", v as f64 / 1000.0)
}

/// The Markdown tables: push runs with ratios to the single node of the same round, then the kill and memory figures.
pub fn markdown(r: &FleetResult) -> String {
    let mut s = String::new();
    s += &format!(
        "### Fleet: 3 nodes + Redis {} (appendfsync {}) vs one node (local log, fsync always)\n\nSender on n1, receiver on n2 (every message crosses nodes through the engine); server CPU = ringgate processes + redis-server from /proc/<pid>/stat. Load average {} before, {} after.\n\n",
        r.redis_version, r.redis_appendfsync, r.loadavg_before, r.loadavg_after
    );
    let mut data: Vec<&FleetRun> = r.runs.iter().collect();
    data.sort_by_key(|x| (x.mode != "paced", x.round, x.setup != "single"));
    s += "| setup | load | round | msg/s | p50 ms | p99 ms | p99.9 ms | CPU µs/msg (servers) | of which Redis | engine cmds/msg | missing | p99 ÷ single | CPU ÷ single |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for x in &data {
        // The ratios are to the single node of the same round and load.
        let base = r.runs.iter().find(|b| b.setup == "single" && b.round == x.round && b.mode == x.mode);
        let rat = |a: f64, b: Option<f64>| ratio(Some(a), b).map_or("–".to_string(), |v| format!("{v:.2}×"));
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
            if x.setup == "fleet" { "fleet: n1 → n2 + Redis" } else { "single node, local log" },
            x.offered_per_s.map_or("saturation".to_string(), |o| format!("{} msg/s", thousands(o))),
            x.round,
            thousands(x.msgs_per_s),
            us_ms(x.latency_us.p50_us),
            us_ms(x.latency_us.p99_us),
            us_ms(x.latency_us.p999_us),
            x.cpu_us_per_msg,
            if x.setup == "fleet" { format!("{:.1}", x.engine_cpu_us_per_msg) } else { "–".into() },
            x.engine_cmds_per_msg.map_or("–".into(), |c| format!("{c:.2}")),
            thousands(x.missing as f64),
            if x.setup == "fleet" { rat(x.latency_us.p99_us as f64, base.map(|b| b.latency_us.p99_us as f64)) } else { "1×".into() },
            if x.setup == "fleet" { rat(x.cpu_us_per_msg, base.map(|b| b.cpu_us_per_msg)) } else { "1×".into() },
        );
    }
    s += &format!(
        "\nMedians of the paced runs: cross-node p99 **{:.2} ms** (target < 5 ms: {}), single node {:.2} ms; CPU per message fleet {:.1} µs vs single {:.1} µs = **{:.2}×** (target ≤ 4×: {}).\n",
        r.fleet_p99_us / 1000.0,
        if r.p99_target_met { "met" } else { "missed" },
        r.single_p99_us / 1000.0,
        r.fleet_cpu_us_per_msg,
        r.single_cpu_us_per_msg,
        r.cpu_ratio,
        if r.cpu_target_met { "met" } else { "missed" }
    );
    let fleet_runs: Vec<&FleetRun> = r.runs.iter().filter(|x| x.setup == "fleet").collect();
    if fleet_runs.iter().any(|x| x.engine_aof_rewrites.is_some()) {
        let per_run: Vec<String> = fleet_runs
            .iter()
            .map(|x| {
                format!(
                    "{} round {}: {} rewrite(s){}",
                    x.mode,
                    x.round,
                    x.engine_aof_rewrites.map_or("?".into(), |n| n.to_string()),
                    x.engine_aof_bytes_per_msg.map_or(String::new(), |b| format!(", {b:.0} B of AOF per message"))
                )
            })
            .collect();
        s += &format!("\nEngine AOF in the fleet windows (a rewrite writes the whole dataset beside the per-turn fsync): {}.\n", per_run.join("; "));
    }
    if let Some(k) = &r.kill {
        s += &format!(
            "\nNode kill (SIGKILL of n3 at {:.0} s of {:.0} s of paced load, {} pairs at {} msg/s, each receiver on another node than its sender): its {} clients back on another node and caught up after **{:.0} ms** (last CONNACK {:.0} ms; median per client {:.0} ms); {} SENDs retried with their ids; {} confirmed, **{} lost, {} duplicates**, {} clients not back.\n",
            r.opts.kill_at_s,
            r.opts.kill_load_s,
            k.pairs,
            thousands(k.rate),
            k.clients_on_killed_node,
            k.all_back_and_caught_up_ms,
            k.all_reconnected_ms,
            k.back_and_caught_up_us.p50_us as f64 / 1000.0,
            k.retried_sends,
            thousands(k.confirmed as f64),
            k.lost,
            k.duplicates,
            k.not_back
        );
    }
    if let Some(m) = &r.memory {
        s += &format!(
            "\nEngine memory (`used_memory` deltas, {} users × {} messages of {} B through ringgate): **{:.0} B per offline user** (device record {:.0} B + inbox keys {:.0} B), **{:.0} B per retained message**; a sending device's dedup record {:.0} B.\n",
            thousands(m.users as f64),
            m.messages_per_user,
            m.payload_bytes,
            m.bytes_per_offline_user,
            m.bytes_per_known_user,
            m.bytes_per_inbox,
            m.bytes_per_message,
            m.dedup_bytes_per_sending_device
        );
    }
    for n in &r.notes {
        s += &format!("\n- {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_resp_framing() {
        let info = "# Memory\r\nused_memory:1234567\r\nused_memory_human:1.18M\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_234_567.0));
        assert_eq!(info_field(info, "used_memory_rss"), None);
        assert!(resp_complete(b"+PONG\r\n"));
        assert!(!resp_complete(b"$10\r\nabc"));
        assert!(resp_complete(b"$3\r\nabc\r\n"));
        assert!(resp_complete(b"$-1\r\n"));
    }

    #[test]
    fn payload_round_trip() {
        let mut p = Vec::new();
        payload(7, 3, 99, 64, &mut p);
        assert_eq!(p.len(), 64);
        assert_eq!(payload_parts(&p), Some((7, 3, 99)));
        assert_eq!(payload_parts(&p[..10]), None);
    }

    #[test]
    fn markdown_prints_ratios_targets_and_kill() {
        let run = |setup: &str, p99: u64, cpu: f64| FleetRun {
            setup: setup.into(),
            round: 0,
            mode: "paced".into(),
            offered_per_s: Some(10_000.0),
            sent_in_window: 50_000,
            delivered_in_window: 50_000,
            msgs_per_s: 10_000.0,
            latency_us: Summary { p50_us: p99 / 3, p99_us: p99, p999_us: p99 * 2, ..Default::default() },
            missing: 0,
            send_errors: 0,
            nodes_cpu_s: 1.0,
            engine_cpu_s: 0.5,
            cpu_us_per_msg: cpu,
            engine_cpu_us_per_msg: cpu / 3.0,
            engine_cmds_per_msg: Some(4.0),
            engine_aof_rewrites: Some(1),
            engine_aof_bytes_per_msg: None,
        };
        let r = FleetResult {
            opts: FleetOpts::default(),
            redis_version: "7.0.15".into(),
            redis_appendfsync: "always".into(),
            server_version: "ringgate".into(),
            nodes: 3,
            loadavg_before: "1.0 1.0 1.0".into(),
            loadavg_after: "1.5 1.0 1.0".into(),
            runs: vec![run("single", 900, 20.0), run("fleet", 3000, 60.0)],
            fleet_p99_us: 3000.0,
            single_p99_us: 900.0,
            fleet_cpu_us_per_msg: 60.0,
            single_cpu_us_per_msg: 20.0,
            fleet_nodes_cpu_us_per_msg: 40.0,
            fleet_engine_cpu_us_per_msg: 20.0,
            engine_cmds_per_msg: 4.0,
            cpu_ratio: 3.0,
            p99_target_met: true,
            cpu_target_met: true,
            kill: Some(KillResult { clients_on_killed_node: 16, all_back_and_caught_up_ms: 812.0, confirmed: 18_000, ..Default::default() }),
            memory: Some(EngineMemory { bytes_per_offline_user: 300.0, bytes_per_message: 200.0, ..Default::default() }),
            notes: vec![],
        };
        let md = markdown(&r);
        assert!(md.contains("| 3.33× | 3.00× |"), "ratios to the single node of the same round: {md}");
        assert!(md.contains("**3.00 ms** (target < 5 ms: met)"), "{md}");
        assert!(md.contains("**3.00×** (target ≤ 4×: met)"), "{md}");
        assert!(md.contains("**812 ms**") && md.contains("**0 lost, 0 duplicates**"), "{md}");
        assert!(md.contains("**300 B per offline user**") && md.contains("**200 B per retained message**"), "{md}");
        assert!(md.contains("Engine AOF in the fleet windows") && md.contains("paced round 0: 1 rewrite(s)"), "{md}");
    }

    /// Results written before the AOF fields existed still load (plan and
    /// render read the committed ones).
    #[test]
    fn runs_without_aof_fields_still_parse() {
        let v: serde_json::Value = serde_json::from_str(include_str!("../results/fleet-2026-12-05T072903Z.json")).expect("the committed result is JSON");
        let d: FleetResult = serde_json::from_value(v["fleet"][0].clone()).expect("fleet[0] parses");
        assert!(d.runs.iter().all(|r| r.engine_aof_rewrites.is_none() && r.engine_aof_bytes_per_msg.is_none()));
    }
}
