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
//!
//! Here: the clients, the push phase and the run that ties the phases
//! together. The node-kill phase is `kill.rs`, the memory phase
//! `memory.rs`, the `redis-server` process `redis_server.rs`, and the
//! options, result types and Markdown `results.rs`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::procfs;
use crate::rgclient;
use crate::stats::{mono_ns, Hist, Schedule};
use crate::targets::{Env, Server, TargetKind};
use ringgate::proto::frame::Frame;

mod kill;
mod memory;
mod redis_server;
mod results;

use kill::kill_phase;
use memory::memory_phase;
pub use redis_server::{appendfsync, info_field, redis_server_bin, rewrite_before_runs, Redis};
pub use results::{markdown, EngineMemory, FleetOpts, FleetResult, FleetRun, KillResult};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut p = Vec::new();
        payload(7, 3, 99, 64, &mut p);
        assert_eq!(p.len(), 64);
        assert_eq!(payload_parts(&p), Some((7, 3, 99)));
        assert_eq!(payload_parts(&p[..10]), None);
    }
}
