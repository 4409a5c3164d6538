//! The push job: senders to receivers with acks, open or closed loop, end-to-end latency from timestamped payloads.

use super::*;


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

pub(super) async fn push(c: Rc<Ctx>, job: PushJob) -> Res<Tally> {
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
            // `receive` stops at `win.end` itself and then merges what it
            // counted since its last flush; a deadline at the same instant
            // raced it and, when it won, dropped up to 100 ms of receipts
            // (reported as "missing" on a busy host). This one only bounds
            // a receiver stuck in a write.
            let deadline = instant_at(win.end + 2_000_000_000);
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
            // `send` bounds its own wait for acks by `win.end` and records
            // its counts after it; this only bounds a sender stuck in a write.
            let deadline = instant_at(win.end + 2_000_000_000);
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
    // A fresh user's first message is seq 1 and its seqs are dense
    // (PROTOCOL.md): a seq past this one is a message the server skipped
    // (lost), one below it a redelivery after a late PUSHACK (counted once).
    let mut next_seq = 1u64;
    loop {
        let mut top_seq = 0u64;
        loop {
            let ts = match proto {
                Proto::Ringgate => match rgclient::next_buffered(&mut rbuf)? {
                    Some(Frame::Push(p)) => {
                        top_seq = top_seq.max(p.seq);
                        if p.seq < next_seq {
                            local.add("redelivered", 1);
                            None
                        } else {
                            if p.seq > next_seq {
                                local.add("seq_gaps", p.seq - next_seq);
                            }
                            next_seq = p.seq + 1;
                            credit.deliver(rgclient::payload_sender(&p.payload));
                            rgclient::payload_ts(&p.payload)
                        }
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
                // Counted by the stamp the receiver judges it by: counted
                // by `now` instead, a message stamped just past the window's
                // end was "sent in the window" but never "received" in it.
                let ts = mono_ns();
                encode(sent, ts, &mut out);
                sent += 1;
                if win.in_measure(ts) {
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
    // Wait, until the drain ends, for the last acks so the connection
    // closes cleanly; the counts are recorded either way.
    let _ = tokio::time::timeout_at(instant_at(win.end), async {
        while acked.get() < sent {
            notify.notified().await;
        }
    })
    .await;
    {
        let mut t = tally.borrow_mut();
        t.add("sent", sent);
        t.add("sent_in_window", sent_in_window);
        t.add("acked", acked.get());
    }
    reader.abort();
    Ok(())
}
