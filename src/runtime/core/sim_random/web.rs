//! The web clients of the whole-Core simulation: an SSE + POST or long-poll
//! session's HTTP side (WEB.md) — its frames POSTed on keep-alive
//! connections, its answers read in the order the server wrote them, the
//! SSE stream's events and the polls' bodies turned back into frames. Kept
//! apart from `sim_random.rs` (the world, its actions and invariants):
//! this is how a browser-like client speaks HTTP, the same for every rule.

use super::*;

impl World {
    /// Client frames for an SSE or long-poll session: in the body of a
    /// request on an idle HTTP connection (a new one if none is idle), or
    /// kept until the sid is known.
    pub(super) fn web_send(&mut self, dev: usize, i: usize, frames: &[u8]) {
        let cores = self.sim.cores.len();
        // A request body holds at most `max_frame` x 64 bytes (docs/web.md;
        // `413` beyond): whole frames up to that, the rest waits.
        let max_body = self.knobs.max_frame as usize * 64;
        let c = &mut self.devices[dev].conns[i];
        let via = c.via;
        let Some(w) = c.web.as_mut() else { return };
        w.backlog.extend_from_slice(frames);
        let Some(sid) = w.sid.clone() else { return };
        let body = if via == Via::LongPoll && w.drain_first {
            // Drain first: one empty poll at a time, the frames wait.
            if w.http.iter().any(|(_, r)| r.is_some()) {
                return;
            }
            Vec::new()
        } else {
            let n = whole_frames_within(&w.backlog, max_body);
            w.backlog.drain(..n).collect()
        };
        let sim = &mut self.sim;
        // Idle connections the server closed (keep-alive idle) are dropped.
        drop_closed_idle(sim, &mut w.http);
        let at = match w.http.iter().position(|(_, r)| r.is_none()) {
            Some(at) => at,
            None => {
                let core = w.next_core % cores;
                w.next_core = w.next_core.wrapping_add(1);
                match sim.try_connect_at(core) {
                    Ok(h) => {
                        w.http.push((h, None));
                        w.http.len() - 1
                    }
                    Err(_) => {
                        if !body.is_empty() {
                            w.backlog = body;
                        }
                        return;
                    }
                }
            }
        };
        let path = match via {
            Via::Sse => format!("/v1/send?sid={sid}"),
            _ => format!("/v1/lp?sid={sid}"),
        };
        sim.http_post(w.http[at].0, &path, &body);
        w.http[at].1 = Some(Req { connect: false, body });
    }

    /// The answers on `dev`'s connection `i`'s HTTP connections, checked:
    /// each one's request is done (a body refused with 429, or left
    /// unanswered by a connection that closed, goes back to the backlog;
    /// closed connections are dropped). Returns (request, answer) pairs in
    /// the order the server wrote the answers, as a client sees them come.
    pub(super) fn http_answers(&mut self, dev: usize, i: usize) -> Result<Vec<(Req, HttpResponse)>, Violation> {
        let sim = &mut self.sim;
        let Some(w) = self.devices[dev].conns[i].web.as_mut() else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (h, req) in w.http.iter_mut() {
            for r in sim.http_responses(*h) {
                let Some(q) = req.take() else {
                    return Err(format!("device {dev}: an HTTP answer {} to no request", r.status));
                };
                if r.status == 429 {
                    w.backlog.extend_from_slice(&q.body);
                    w.drain_first = true;
                } else if r.status == 200 && q.body.is_empty() && !q.connect {
                    // The empty poll took the queue: frames may go again.
                    w.drain_first = false;
                }
                out.push((q, r));
            }
            if sim.closed(*h) || sim.server_fin(*h) {
                if let Some(q) = req.take() {
                    if q.connect {
                        return Err(format!("device {dev}: the long-poll connect request's connection closed unanswered"));
                    }
                    w.backlog.extend_from_slice(&q.body);
                    // A poll's answer may have carried frames (WEB.md:
                    // "frames lost with a broken response are covered by
                    // the protocol"): later ones may skip seqs until the
                    // server retransmits them.
                    w.lost_answer = true;
                }
            }
        }
        drop_closed_idle(sim, &mut w.http);
        out.sort_by_key(|(_, r)| r.written_at);
        Ok(out)
    }

    /// An SSE session: its stream's events (frames, the sid) and the
    /// answers to its POSTs. Returns the frames and whether the stream ended.
    pub(super) fn sse_read(&mut self, dev: usize, i: usize) -> Result<(Vec<Frame>, bool), Violation> {
        let client = self.devices[dev].conns[i].client;
        let (head, events, ended) = self.sim.sse_events(client);
        if let Some(h) = head {
            if h.status != 200 || h.header("content-type") != Some("text/event-stream") {
                return Err(format!("device {dev}: GET /v1/sse answered {} {:?}", h.status, h.headers));
            }
        }
        let mut frames = Vec::new();
        for e in events {
            match e.event.as_deref() {
                Some("frame") => {
                    use base64::Engine as _;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(&e.data)
                        .map_err(|x| format!("device {dev}: SSE data not base64 ({x}): {:?}", e.data))?;
                    let mut b = bytes::BytesMut::from(&raw[..]);
                    let f = match frame::decode(&mut b, u32::MAX) {
                        Ok(Some(f)) if b.is_empty() => f,
                        other => return Err(format!("device {dev}: an SSE event that is not exactly one frame: {other:?}")),
                    };
                    let want = match &f {
                        Frame::Push(p) => Some(p.seq.to_string()),
                        _ => None,
                    };
                    if e.id != want {
                        return Err(format!("device {dev}: SSE event id {:?} on {f:?}", e.id));
                    }
                    frames.push(f);
                }
                Some("session") => {
                    let w = self.devices[dev].conns[i].web.as_mut().expect("an SSE connection has its web side");
                    if w.sid.is_some() || e.data.is_empty() {
                        return Err(format!("device {dev}: a second or empty session event {:?}", e.data));
                    }
                    w.sid = Some(e.data);
                }
                None if e.data.is_empty() && e.id.is_none() => {}
                _ => return Err(format!("device {dev}: unexpected SSE event {e:?}")),
            }
        }
        for (_, r) in self.http_answers(dev, i)? {
            // 204 done; 400 a broken body (DISCONNECT 1 on the stream);
            // 404 the session ended (its stream says how); 429 resent.
            if !matches!(r.status, 204 | 400 | 404 | 429) {
                return Err(format!("device {dev}: POST /v1/send answered {} {:?}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
        Ok((frames, ended))
    }

    /// A long-poll session: the answers to its connect request and polls.
    /// Returns the frames they carried (never "ended": see `WebConn::gone`).
    pub(super) fn lp_read(&mut self, dev: usize, i: usize) -> Result<(Vec<Frame>, bool), Violation> {
        let mut frames = Vec::new();
        for (q, r) in self.http_answers(dev, i)? {
            let decode = |body: &[u8]| -> Result<Vec<Frame>, Violation> {
                let mut b = bytes::BytesMut::from(body);
                let mut fs = Vec::new();
                loop {
                    match frame::decode(&mut b, u32::MAX) {
                        Ok(Some(f)) => fs.push(f),
                        Ok(None) if b.is_empty() => return Ok(fs),
                        other => return Err(format!("device {dev}: a poll body that is not whole frames: {other:?}")),
                    }
                }
            };
            let w = self.devices[dev].conns[i].web.as_mut().expect("a long-poll connection has its web side");
            match (q.connect, r.status) {
                (true, 200) => {
                    let fs = decode(&r.body)?;
                    let ok = matches!(&fs[..], [Frame::ConnAck(a)] if a.status == 0);
                    if !matches!(&fs[..], [Frame::ConnAck(_)]) {
                        return Err(format!("device {dev}: /v1/lp/connect answered {fs:?}, not one CONNACK"));
                    }
                    match (ok, r.header("x-ringgate-session")) {
                        (true, Some(sid)) => w.sid = Some(sid.to_string()),
                        (false, None) => {}
                        (_, sid) => return Err(format!("device {dev}: CONNACK {fs:?} with session header {sid:?}")),
                    }
                    frames.extend(fs);
                }
                (false, 200) => frames.extend(decode(&r.body)?),
                // The poll ran its time or a newer one ended it; a broken
                // body (DISCONNECT 1 on the next poll); resent after 429.
                (false, 204 | 400 | 429) => {}
                (false, 404) => w.gone = true,
                (_, s) => {
                    return Err(format!("device {dev}: long-poll request answered {s} {:?}", String::from_utf8_lossy(&r.body)));
                }
            }
        }
        Ok((frames, false))
    }
}

/// The length of the longest run of whole length-prefixed frames at the
/// front of `b` that fits in `max` bytes (at least one frame, so that a
/// frame is never stuck; the server bounds a frame far below `max`).
fn whole_frames_within(b: &[u8], max: usize) -> usize {
    let mut at = 0;
    while let Some(len) = b.get(at..at + 4).map(|p| 4 + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize) {
        if at > 0 && at + len > max {
            break;
        }
        at = (at + len).min(b.len());
    }
    if at == 0 { b.len() } else { at }
}

/// Forgets the session's idle HTTP connections that the server closed
/// (keep-alive idle); one with a request in flight stays until answered.
fn drop_closed_idle(sim: &mut Sim, http: &mut Vec<(Client, Option<Req>)>) {
    http.retain(|(h, req)| {
        let dead = req.is_none() && (sim.closed(*h) || sim.server_fin(*h));
        if dead {
            sim.hang_up(*h);
            sim.forget(*h);
        }
        !dead
    });
}
