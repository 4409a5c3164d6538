//! The handshake job: connect, handshake, authenticate, close, in loops, optionally resuming TLS sessions.

use super::*;

pub(super) async fn handshake(c: Rc<Ctx>, job: HandshakeJob) -> Res<Tally> {
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
