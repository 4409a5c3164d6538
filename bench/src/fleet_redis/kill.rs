//! Phase 2, node kill: senders and receivers spread over the three nodes,
//! paced load, SIGKILL of the third node; its clients take the next
//! address as the ladder does, CONNECT with their `last_seq` and retry
//! every unanswered SEND with its `client_msg_id`. Measures the time until
//! every one of them is back and caught up, and counts lost and duplicate
//! messages (both must be 0).
//!
//! Separate from the push phase because its clients are different ones
//! (they reconnect and retry, and keep per-id books); the two share only
//! `Net` and the payload stamp.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Result;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::{payload, payload_parts, FleetOpts, Io, KillResult, Net};
use crate::rgclient;
use crate::stats::{mono_ns, Hist, Schedule};
use crate::targets::Server;
use ringgate::proto::frame::Frame;

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

pub(super) fn kill_phase(net: Rc<Net>, o: &FleetOpts, nodes: &mut [Server], prefix: &str) -> Result<KillResult> {
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
