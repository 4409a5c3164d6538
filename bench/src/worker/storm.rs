//! The reconnect-storm job: connect and prime, drop everyone at once, reconnect with last_seq and measure catch-up.

use super::*;


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

pub(super) async fn storm(c: Rc<Ctx>, job: StormJob) -> Res<Tally> {
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
