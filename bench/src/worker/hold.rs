//! The lean hold job of `idle-multi`: ramp, hold with heartbeats, prove every connection alive, deliver to a sample.
//!
//! Each thread owns its [`Held`] connections in one `Vec` and drives them
//! without readiness notification (see [`crate::lean`]): a 100 ms tick
//! PINGs the next slice of connections so every one PINGs once per
//! heartbeat period, and reads only from connections awaiting a PONG.

use super::*;
use crate::lean::{self, Held, Scratch, F_ALIVE, F_AWAIT_PONG, F_DEAD, F_PUSHED};

/// Heartbeat tick.
const TICK: Duration = Duration::from_millis(100);
/// A heartbeat PONG later than this (deciseconds) is counted late and forgotten.
const PONG_LATE_DS: u32 = 100;
/// Pause between read sweeps while waiting for answers.
const SWEEP_PAUSE: Duration = Duration::from_millis(20);

/// Deciseconds since `t0`, from 1 (0 means "never").
fn ds_since(t0: tokio::time::Instant) -> u32 {
    (t0.elapsed().as_millis() / 100) as u32 + 1
}

fn mark_dead(h: &mut Held, t: &mut Tally, phase: &str, e: &io::Error) {
    h.flags |= F_DEAD;
    t.add(&format!("dead_{phase}"), 1);
    t.error(&format!("{phase}: {e}"));
}

pub(super) async fn hold(c: Rc<Ctx>, job: HoldJob) -> Res<Tally> {
    let target = &c.spec.target;
    if target.proto != Proto::Ringgate || !target.tls || target.ws {
        return Err(io::Error::other("the lean hold speaks ringgate over TLS (not WebSocket) only"));
    }
    let tls = c.tls.clone().ok_or_else(|| io::Error::other("no TLS connector"))?;
    let warm = c.mine(job.warmup);
    let main: Vec<u64> = c.mine(job.warmup + job.conns).into_iter().filter(|&i| i >= job.warmup).collect();
    let (prefix, ka) = (job.user_prefix.as_str(), job.keepalive_s);
    let open = |i: u64| {
        let (c, tls) = (c.clone(), tls.clone());
        let token = c.token(&format!("{prefix}{i}"));
        async move { lean::establish(c.spec.target.addr, c.src(i), &tls, &token, ka, i as u32).await }
    };
    let (warm_held, t) = ramp(&c, &warm, 0.0, job.max_inflight, open).await;
    c.report("warm", t);
    let held = Rc::new(RefCell::new(warm_held));
    let mut s = Scratch::default();
    let mut beat = Beat::new(&job);
    c.wait_cmd(1).await?;
    let rate = job.rate_per_s / c.total as f64;
    // Heartbeats run during the ramp too: a connection opened early in a
    // long ramp would otherwise be silent for the whole ramp and be closed
    // by the server (2.5 × keepalive_s) before the hold began.
    let done = Cell::new(false);
    let (mut t, hb) = tokio::join!(
        async {
            let t = ramp_into(&c, &main, rate, job.max_inflight, open, held.clone()).await;
            done.set(true);
            t
        },
        beat.run(&held, &mut s, || Ok(done.get()))
    );
    hb?;
    {
        let mut h = held.borrow_mut();
        h.shrink_to_fit();
        t.add("held", h.len() as u64);
    }
    // The handshakes' buffers are free now; give them back to the kernel
    // so the RSS sample shows what holding costs, not the ramp's peak.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    c.report("ready", t);
    beat.run(&held, &mut s, || c.cmd_reached(2)).await?;
    let mut held = held.take();
    c.report("alive", check_alive(&c, &job, &mut held, &mut s).await?);
    let stride = c.wait_cmd(3).await?.max(1);
    c.report("sampled", expect_sample(&job, &mut held, &mut s, stride).await);
    c.wait_cmd(4).await?;
    let mut t = beat.t;
    t.add("closed", held.len() as u64);
    drop(held);
    Ok(t)
}

/// The heartbeat: every tick, read the PONGs of the last PINGs and PING
/// the next slice, so each connection PINGs about once per 0.8 ×
/// `keepalive_s` (the server closes after 2.5 × without a frame).
struct Beat {
    t0: tokio::time::Instant,
    /// Seconds between two PINGs of one connection (0.8 × keepalive_s).
    period_s: f64,
    /// When the last tick ran: the PINGs owed are paced by elapsed time,
    /// not by ticks, since on a loaded machine ticks run late (a run at
    /// load 250 PINGed too few, and the servers closed 69,408 connections
    /// as silent for 2.5 × keepalive).
    last_tick: tokio::time::Instant,
    credit: f64,
    cursor: usize,
    /// Positions in the held list with a PING outstanding (the list only grows while beating).
    awaiting: Vec<u32>,
    t: Tally,
}

impl Beat {
    fn new(job: &HoldJob) -> Beat {
        Beat {
            t0: tokio::time::Instant::now(),
            period_s: (job.keepalive_s as f64 * 0.8).max(TICK.as_secs_f64()),
            last_tick: tokio::time::Instant::now(),
            credit: 0.0,
            cursor: 0,
            awaiting: Vec::new(),
            t: Tally::default(),
        }
    }

    /// Beats until `stop()` says so.
    async fn run(&mut self, held: &RefCell<Vec<Held>>, s: &mut Scratch, stop: impl Fn() -> Res<bool>) -> Res<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop()? {
            tick.tick().await;
            // No await while borrowed: the ramp's tasks push between ticks.
            self.tick(&mut held.borrow_mut(), s);
        }
        Ok(())
    }

    fn tick(&mut self, held: &mut [Held], s: &mut Scratch) {
        let now = ds_since(self.t0);
        let t = &mut self.t;
        self.awaiting.retain(|&k| {
            let h = &mut held[k as usize];
            match h.poll(s) {
                Ok(g) if g.pongs > 0 => {
                    h.flags &= !F_AWAIT_PONG;
                    t.add("heartbeat_pongs", 1);
                    false
                }
                Ok(_) if now.saturating_sub(h.ping_at_ds) > PONG_LATE_DS => {
                    h.flags &= !F_AWAIT_PONG;
                    t.add("heartbeat_late", 1);
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    mark_dead(h, t, "hold", &e);
                    false
                }
            }
        });
        let at = tokio::time::Instant::now();
        let elapsed_s = at.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = at;
        if held.is_empty() {
            return;
        }
        self.credit = (self.credit + held.len() as f64 * elapsed_s / self.period_s).min(held.len() as f64);
        let n = self.credit.floor() as usize;
        self.credit -= n as f64;
        for _ in 0..n.min(held.len()) {
            let k = self.cursor % held.len();
            self.cursor = k + 1;
            let h = &mut held[k];
            if h.flags & (F_DEAD | F_AWAIT_PONG) != 0 {
                continue;
            }
            match h.send(&Frame::Ping { nonce: h.idx as u64 }, s) {
                Ok(()) => {
                    h.flags |= F_AWAIT_PONG;
                    h.ping_at_ds = now;
                    self.awaiting.push(k as u32);
                    t.add("heartbeat_pings", 1);
                }
                Err(e) => mark_dead(h, t, "hold", &e),
            }
        }
    }
}

/// Command 2: PING every connection (paced) and wait for every PONG.
async fn check_alive(c: &Ctx, job: &HoldJob, held: &mut [Held], s: &mut Scratch) -> Res<Tally> {
    let mut t = Tally::default();
    let rate = (job.check_rate_per_s / c.total as f64).max(100.0);
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(job.check_timeout_s);
    // Forget heartbeat PINGs still outstanding: any PONG now counts.
    for h in held.iter_mut() {
        h.flags &= !(F_AWAIT_PONG | F_ALIVE);
    }
    const BATCH: usize = 64;
    for (b, chunk) in held.chunks_mut(BATCH).enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64((b * BATCH) as f64 / rate)).await;
        for h in chunk.iter_mut() {
            if h.flags & F_DEAD != 0 {
                continue;
            }
            match h.send(&Frame::Ping { nonce: h.idx as u64 }, s) {
                Ok(()) => h.flags |= F_AWAIT_PONG,
                Err(e) => mark_dead(h, &mut t, "check", &e),
            }
        }
    }
    let t_sent = start.elapsed();
    loop {
        let mut waiting = 0u64;
        for h in held.iter_mut().filter(|h| h.flags & F_AWAIT_PONG != 0 && h.flags & F_DEAD == 0) {
            match h.poll(s) {
                Ok(g) if g.pongs > 0 => h.flags = (h.flags & !F_AWAIT_PONG) | F_ALIVE,
                Ok(_) => waiting += 1,
                Err(e) => mark_dead(h, &mut t, "check", &e),
            }
        }
        if waiting == 0 || tokio::time::Instant::now() >= deadline {
            t.add("check_unanswered", waiting);
            break;
        }
        tokio::time::sleep(SWEEP_PAUSE).await;
    }
    t.add("alive", held.iter().filter(|h| h.flags & F_ALIVE != 0).count() as u64);
    t.max("check_send_ms", t_sent.as_millis() as u64);
    t.max("check_ms", start.elapsed().as_millis() as u64);
    Ok(t)
}

/// Command 3: every live connection whose index is a multiple of `stride`
/// waits for one PUSH (the parent publishes to those users) and acks it.
async fn expect_sample(job: &HoldJob, held: &mut [Held], s: &mut Scratch, stride: u64) -> Tally {
    let mut t = Tally::default();
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(job.check_timeout_s);
    let mut sample: Vec<usize> = (0..held.len()).filter(|&k| held[k].idx as u64 % stride == 0).collect();
    t.add("sample_held", sample.len() as u64);
    loop {
        let mut left = Vec::with_capacity(sample.len());
        for k in sample {
            let h = &mut held[k];
            if h.flags & F_DEAD != 0 {
                continue;
            }
            match h.poll(s) {
                Ok(g) if g.pushes > 0 => {
                    h.flags |= F_PUSHED;
                    t.hist("delivery").record_ns(start.elapsed().as_nanos() as u64);
                    match h.send(&Frame::PushAck { seq: g.push_seq }, s) {
                        Ok(()) => t.add("delivered", 1),
                        Err(e) => mark_dead(h, &mut t, "sample", &e),
                    }
                }
                Ok(_) => left.push(k),
                Err(e) => mark_dead(h, &mut t, "sample", &e),
            }
        }
        sample = left;
        if sample.is_empty() || tokio::time::Instant::now() >= deadline {
            t.add("sample_undelivered", sample.len() as u64);
            break;
        }
        tokio::time::sleep(SWEEP_PAUSE).await;
    }
    t
}
