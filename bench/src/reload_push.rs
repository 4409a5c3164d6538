//! `reload-push`: a configuration reload (new certificate, changed limit) under the push load, and what it costs the messages in flight: p99 latency in the second around the reload against the quiet seconds of the same run, and connections lost.
//!
//! Self-contained (one tokio current-thread runtime in this process, not
//! the worker fleet): `pairs` sender → receiver connections, each sender
//! keeping `window` messages in flight end to end (closed loop, so the
//! offered load is what the server sustains). Every PUSH's latency is
//! recorded with its arrival time. At `reload_at_s` the scenario writes a
//! new certificate, edits the config (new `cert_file`/`key_file`, one
//! limit) and sends SIGHUP, then checks the server's log for the reload.
//! Targets: no connection lost (a reload must not reconnect anyone) and
//! the reload second's p99 within 2× the quiet p99.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::rgclient;
use crate::stats::mono_ns;
use crate::targets::{Env, Server, TargetKind};
use ringgate::proto::frame::Frame;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadPushOpts {
    pub pairs: u32,
    pub window: u32,
    pub payload_bytes: usize,
    /// Load before the first measured second.
    pub warmup_s: f64,
    /// Whole run, warm-up included.
    pub duration_s: f64,
    /// When the reload happens, from the start of the load.
    pub reload_at_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadPushResult {
    pub target: TargetKind,
    pub opts: ReloadPushOpts,
    pub delivered: u64,
    pub msgs_per_s: f64,
    /// Quiet seconds pooled (warm-up end to 1 s before the reload, and 1.5 s after it to the end).
    pub quiet_samples: u64,
    pub quiet_p50_us: f64,
    pub quiet_p99_us: f64,
    /// The worst p99 of any single quiet second (how much seconds vary without a reload).
    pub quiet_worst_second_p99_us: f64,
    /// The second centred on the SIGHUP.
    pub reload_samples: u64,
    pub reload_p50_us: f64,
    pub reload_p99_us: f64,
    pub reload_max_us: f64,
    pub p99_ratio: f64,
    /// SIGHUP to the server's "configuration reloaded" log line (the log is polled every 2 ms).
    pub reload_logged_ms: f64,
    pub reload_ok: bool,
    /// Connections that ended before the run did (a reload must cause none).
    pub connections_lost: u64,
    pub send_errors: u64,
}

/// A boxed client stream (TLS or plain).
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

async fn connect(addr: std::net::SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            Box::new(c.connect(name, tcp).await?)
        }
        None => Box::new(tcp),
    })
}

async fn login(s: &mut Box<dyn Io>, key: &ringgate::auth::JwtKey, user: &str) -> Result<BytesMut> {
    let mut out = BytesMut::new();
    rgclient::encode_connect(&mut out, "d", &rgclient::token(key, user, 3600), 0, 3600);
    s.write_all(&out).await?;
    let mut rbuf = BytesMut::new();
    match rgclient::read_frame(s, &mut rbuf).await? {
        Some(Frame::ConnAck(a)) if a.status == 0 => Ok(rbuf),
        other => bail!("login {user}: {other:?}"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Rewrites `cert_file`, `key_file` and one limit in the bench's config, then SIGHUPs the server.
fn reload(dir: &Path, pid: u32) -> Result<()> {
    let renewed = dir.join("renewed");
    std::fs::create_dir_all(&renewed)?;
    let (cert, key) = crate::targets::write_cert(&renewed)?;
    let path = dir.join("ringgate.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut out = String::new();
    for line in text.lines() {
        let l = if line.starts_with("cert_file = ") {
            format!("cert_file = \"{}\"", cert.display())
        } else if line.starts_with("key_file = ") {
            format!("key_file = \"{}\"", key.display())
        } else if line.starts_with("send_rate_per_connection = ") {
            "send_rate_per_connection = 999999".to_string()
        } else {
            line.to_string()
        };
        out += &l;
        out.push('\n');
    }
    std::fs::write(&path, out)?;
    // SAFETY: kill(2) on our own child's pid.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        bail!("SIGHUP: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn run(env: &Env, kind: TargetKind, o: &ReloadPushOpts) -> Result<ReloadPushResult> {
    if !kind.is_ringgate() || kind.ws() {
        bail!("reload-push speaks ringgate over TLS/TCP only");
    }
    let server = Server::start(env, kind)?;
    let dir = env.dir.join(kind.name());
    let key = ringgate::auth::JwtKey::new(env.jwt_secret.as_bytes());
    let tls = env.tls.then(|| tokio_rustls::TlsConnector::from(crate::clientnet::tls_config(&[b"ringgate/1"], false, env.kx)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let samples: Rc<RefCell<Vec<(u64, u64)>>> = Rc::default();
    let lost = Rc::new(Cell::new(0u64));
    let send_errors = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let prefix = format!("rl{}", mono_ns() % 1_000_000);

    let (t0, reload_ns) = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut pairs = Vec::new();
                for i in 0..o.pairs {
                    let (ru, su) = (format!("{prefix}r{i}"), format!("{prefix}s{i}"));
                    let mut r = connect(server.addr, tls.as_ref()).await.context("receiver connect")?;
                    let rbuf = login(&mut r, &key, &ru).await?;
                    let mut s = connect(server.addr, tls.as_ref()).await.context("sender connect")?;
                    let sbuf = login(&mut s, &key, &su).await?;
                    pairs.push((ru, r, rbuf, s, sbuf));
                }
                let t0 = mono_ns();
                let end = t0 + (o.duration_s * 1e9) as u64;
                for (i, (ru, r, rbuf, s, sbuf)) in pairs.into_iter().enumerate() {
                    let inflight = Rc::new(Cell::new(0u32));
                    let wake = Rc::new(tokio::sync::Notify::new());
                    let (mut rr, mut rw) = tokio::io::split(r);
                    let (mut sr, mut sw) = tokio::io::split(s);
                    // Receiver: latency per PUSH, PUSHACK each.
                    {
                        let (samples, lost, stop, inflight, wake) = (samples.clone(), lost.clone(), stop.clone(), inflight.clone(), wake.clone());
                        let mut rbuf = rbuf;
                        tokio::task::spawn_local(async move {
                            let mut out = BytesMut::new();
                            loop {
                                match rgclient::read_frame(&mut rr, &mut rbuf).await {
                                    Ok(Some(Frame::Push(p))) => {
                                        let now = mono_ns();
                                        if let Some(ts) = rgclient::payload_ts(&p.payload) {
                                            samples.borrow_mut().push((now, now.saturating_sub(ts)));
                                        }
                                        inflight.set(inflight.get().saturating_sub(1));
                                        wake.notify_one();
                                        out.clear();
                                        rgclient::encode_pushack(&mut out, p.seq);
                                        if rw.write_all(&out).await.is_err() {
                                            break;
                                        }
                                    }
                                    Ok(Some(_)) => {}
                                    Ok(None) | Err(_) => break,
                                }
                            }
                            if !stop.get() {
                                lost.set(lost.get() + 1);
                            }
                        });
                    }
                    // Sender's reader: SENDACKs (anything but 0 is counted).
                    {
                        let (lost, stop, send_errors) = (lost.clone(), stop.clone(), send_errors.clone());
                        let mut sbuf = sbuf;
                        tokio::task::spawn_local(async move {
                            loop {
                                match rgclient::read_frame(&mut sr, &mut sbuf).await {
                                    Ok(Some(Frame::SendAck(a))) if a.status != 0 => send_errors.set(send_errors.get() + 1),
                                    Ok(Some(_)) => {}
                                    Ok(None) | Err(_) => break,
                                }
                            }
                            if !stop.get() {
                                lost.set(lost.get() + 1);
                            }
                        });
                    }
                    // Sender: keeps `window` messages in flight to its receiver.
                    {
                        let (stop, window, size) = (stop.clone(), o.window, o.payload_bytes);
                        tokio::task::spawn_local(async move {
                            let (mut out, mut payload, mut id) = (BytesMut::new(), Vec::new(), 0u64);
                            while !stop.get() && mono_ns() < end {
                                if inflight.get() >= window {
                                    let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
                                    continue;
                                }
                                out.clear();
                                while inflight.get() < window {
                                    id += 1;
                                    rgclient::stamped_payload(mono_ns(), i as u32, size, &mut payload);
                                    rgclient::encode_send(&mut out, id, &ru, &payload);
                                    inflight.set(inflight.get() + 1);
                                }
                                if sw.write_all(&out).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }
                // The reload, from another thread at reload_at_s.
                let reload_at = t0 + (o.reload_at_s * 1e9) as u64;
                let (pid, rdir) = (server.pid(), dir.clone());
                // Returns when SIGHUP was sent, and when (and whether) the
                // server's log said the reload was applied.
                let reloader = std::thread::spawn(move || -> Result<(u64, Option<u64>)> {
                    std::thread::sleep(Duration::from_nanos(reload_at.saturating_sub(mono_ns())));
                    let at = mono_ns();
                    reload(&rdir, pid)?;
                    let log_path = rdir.join("server.log");
                    while mono_ns() < at + 5_000_000_000 {
                        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                        if log.contains("configuration reload failed") {
                            return Ok((at, None));
                        }
                        if log.contains("configuration reloaded") {
                            return Ok((at, Some(mono_ns())));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Ok((at, None))
                });
                while mono_ns() < end {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                stop.set(true);
                let at = reloader.join().map_err(|_| anyhow!("reload thread panicked"))??;
                Ok::<_, anyhow::Error>((t0, at))
            })
            .await
    })?;
    let (reload_ns, logged) = reload_ns;
    let (reload_ok, logged_ms) = match logged {
        Some(t) => (true, t.saturating_sub(reload_ns) as f64 / 1e6),
        None => (false, f64::NAN),
    };
    drop(rt);
    server.stop();

    let samples = samples.borrow();
    let warm = t0 + (o.warmup_s * 1e9) as u64;
    let end = t0 + (o.duration_s * 1e9) as u64;
    let in_window = |from: u64, to: u64| {
        let mut v: Vec<u64> = samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, l)| *l).collect();
        v.sort_unstable();
        v
    };
    let around = in_window(reload_ns.saturating_sub(500_000_000), reload_ns + 500_000_000);
    let mut quiet = in_window(warm, reload_ns.saturating_sub(1_000_000_000));
    quiet.extend(in_window(reload_ns + 1_500_000_000, end));
    quiet.sort_unstable();
    let mut worst = 0.0f64;
    let mut s = warm;
    while s + 1_000_000_000 <= end {
        let overlaps = s < reload_ns + 1_500_000_000 && s + 1_000_000_000 > reload_ns.saturating_sub(1_000_000_000);
        if !overlaps {
            worst = worst.max(percentile(&in_window(s, s + 1_000_000_000), 0.99));
        }
        s += 1_000_000_000;
    }
    let delivered = in_window(warm, end).len() as u64;
    let (qp99, rp99) = (percentile(&quiet, 0.99), percentile(&around, 0.99));
    Ok(ReloadPushResult {
        target: kind,
        opts: o.clone(),
        delivered,
        msgs_per_s: delivered as f64 / (o.duration_s - o.warmup_s),
        quiet_samples: quiet.len() as u64,
        quiet_p50_us: percentile(&quiet, 0.50),
        quiet_p99_us: qp99,
        quiet_worst_second_p99_us: worst,
        reload_samples: around.len() as u64,
        reload_p50_us: percentile(&around, 0.50),
        reload_p99_us: rp99,
        reload_max_us: around.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        p99_ratio: rp99 / qp99,
        reload_logged_ms: logged_ms,
        reload_ok,
        connections_lost: lost.get(),
        send_errors: send_errors.get(),
    })
}

/// The result as a few lines for the terminal.
pub fn markdown(r: &ReloadPushResult) -> String {
    format!(
        "| target | msg/s | quiet p50 / p99 (µs) | worst quiet second p99 | reload second p50 / p99 / max (µs) | p99 ratio | reload applied | connections lost |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.2}x | {} | {} |\n",
        r.target.name(),
        r.msgs_per_s,
        r.quiet_p50_us,
        r.quiet_p99_us,
        r.quiet_worst_second_p99_us,
        r.reload_p50_us,
        r.reload_p99_us,
        r.reload_max_us,
        r.p99_ratio,
        r.reload_ok,
        r.connections_lost
    )
}

