//! The core's side of SSE and long-poll sessions (WEB.md): session requests routed to the core holding the session, the SSE stream, POSTed frames fed to the session, polls draining a virtual connection's queue.
//!
//! One transport seam: an SSE stream and a long-poll session are
//! connections of this core's slab with an ordinary `proto::Session`, so
//! CONNECT, replacement, dedup, retransmission, heartbeat and DISCONNECT
//! reasons run through `process_frames`, `open`, `close_conn` and `on_tick`
//! exactly as for TLS and WebSocket. What differs is only where output
//! goes: SSE events on the stream connection (`web::sse`), or the queue of
//! a virtual connection (no socket) that polls drain.
//!
//! Routing: a session lives on its user's home core, like every connection
//! after CONNECT. A connect request is moved to that core before the
//! session is created (the token is checked once to find it, and again by
//! the session path there); a request naming a sid is moved to the core in
//! the sid. The HTTP connection moves whole (fd, TLS state, buffered
//! bytes), the way a connection moves after CONNECT, and stays there for
//! its later requests, which then need no move.

use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::{ConnKey, Core, Outcome};
use crate::proto::frame::{self, Frame};
use crate::proto::session::{ConnectRequest, Phase, Session, MAX_PREAUTH_FRAME};
use crate::proto::DisconnectReason;
use crate::runtime::conn::{Conn, Tls};
use crate::runtime::gate_http::{self, SessionReq, Step};
use crate::runtime::mesh::{home_core, Adopt};
use crate::runtime::web::lp::LpState;
use crate::runtime::web::sse::SseState;
use crate::runtime::framing::Framing;
use crate::runtime::web::{self, Sid, WebMove};

const TEXT: &str = "text/plain; charset=utf-8";

/// `Retry-After` of a POST refused because its session's output is above
/// the high-water mark, or of a session refused at `max_connections`.
const RETRY_AFTER_S: &str = "1";

/// What answering one session request left to do.
enum Handled {
    /// Answered into the connection's `out`; serve the next request.
    Answered,
    /// A poll is open on the connection: it waits for the session.
    Parked,
    /// The connection became an SSE stream.
    Stream,
    /// The request belongs to another core: the connection moves there.
    Migrate(Box<Adopt>),
    /// The connection is gone.
    Gone,
}

fn open_phase(p: Phase) -> bool {
    matches!(p, Phase::AwaitConnect | Phase::Authenticating | Phase::Open)
}

impl Core {
    /// `gate_http` stopped at a session request on HTTP connection `key`:
    /// answer it, then go on serving what the connection sent after it.
    pub(super) fn on_session_req(&mut self, key: ConnKey, req: Box<SessionReq>, eof: bool) -> Outcome {
        let mut req = req;
        loop {
            match self.session_req(key, req) {
                Handled::Answered => {}
                Handled::Parked if eof => return Outcome::Close,
                Handled::Parked => {
                    self.rearm(key);
                    return Outcome::Continue;
                }
                Handled::Stream => return self.after_io(key),
                Handled::Migrate(a) => return Outcome::Migrate(a),
                Handled::Gone => return Outcome::Close,
            }
            let (mono, wall) = (self.shared.clock.mono_ms(), self.shared.clock.wall_ms());
            let (gate, tls) = (self.live.gate.clone(), self.live.tls.is_some());
            let Some(conn) = self.conn(key) else { return Outcome::Close };
            match gate_http::on_io(conn, &gate, tls, mono, wall, eof) {
                Step::Session(r) => {
                    // The answers so far go out first.
                    self.transmit(key, 0);
                    req = r;
                }
                step => return self.http_step(key, step, eof),
            }
        }
    }

    fn session_req(&mut self, key: ConnKey, req: Box<SessionReq>) -> Handled {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/sse") => self.sse_open(key, req),
            ("POST", "/v1/send") => self.sse_send(key, req),
            ("POST", "/v1/lp/connect") => self.lp_connect(key, req),
            ("POST", "/v1/lp") => self.lp_poll(key, req),
            (_, p) => {
                let allow = if p == "/v1/sse" { "GET" } else { "POST" };
                self.answer(key, &req, 405, Some((TEXT, b"method not allowed\n")), vec![("Allow", allow.into())]);
                Handled::Answered
            }
        }
    }

    /// Writes an answer to `req` on HTTP connection `key`.
    fn answer(&mut self, key: ConnKey, req: &SessionReq, status: u16, body: Option<(&'static str, &[u8])>, extra: Vec<(&'static str, String)>) {
        let Some(c) = self.conn(key) else { return };
        let close = c.framing.http().is_some_and(|h| h.closing);
        gate_http::write_answer(&mut c.out, status, body, extra, req.cross.as_deref(), close);
    }

    /// `429`/`503` with `Retry-After`: the request was not processed at all.
    fn answer_later(&mut self, key: ConnKey, req: &SessionReq, status: u16, why: &str) -> Handled {
        let body = format!("{why}\n");
        self.answer(key, req, status, Some((TEXT, body.as_bytes())), vec![("Retry-After", RETRY_AFTER_S.into())]);
        Handled::Answered
    }

    /// Whether session `s` owes its client more than the output high-water
    /// mark. POSTed frames are input that makes output (a PONG per PING, a
    /// SENDACK per SEND) on a connection the poster need not read: without
    /// this bound one session never read and fed by POSTs grew the server
    /// without limit. The bound is the same one a native connection's reads
    /// stop at, so the queue has one bound whichever connection feeds it.
    fn over_high_water(&mut self, s: ConnKey) -> bool {
        let hw = self.live.limits_cfg.output_high_water_bytes as usize;
        self.conn(s).is_some_and(|c| c.unsent_bytes() > hw)
    }

    fn answer_text(&mut self, key: ConnKey, req: &SessionReq, status: u16, why: &str) -> Handled {
        let body = format!("{why}\n");
        self.answer(key, req, status, Some((TEXT, body.as_bytes())), Vec::new());
        Handled::Answered
    }

    /// The core a connect request belongs on: the home core of the token's
    /// user, or this one when the token does not verify (the session path
    /// then refuses it here, with the usual CONNACK).
    fn connect_core(&self, connect: &[u8]) -> usize {
        let mut b = BytesMut::from(connect);
        let Ok(Some(Frame::Connect(c))) = frame::decode(&mut b, MAX_PREAUTH_FRAME) else { return self.id };
        match self.live.jwt.verify(c.token.as_str(), self.shared.clock.wall_ms() / 1000) {
            Ok(claims) => home_core(&claims.sub, self.shared.mesh.len()),
            Err(_) => self.id,
        }
    }

    /// Takes HTTP connection `key` out of this core, to serve `req` on `core`.
    fn migrate_http(&mut self, key: ConnKey, req: Box<SessionReq>, core: usize) -> Handled {
        if self.conn(key).is_none() {
            return Handled::Gone;
        }
        let preauth_ip = self.conns.get(key.idx as usize).and_then(|s| s.preauth).map(|(_, ip)| ip);
        self.leave_preauth(key);
        let mut c = self.detach(key);
        tracing::debug!(from = self.id, to = core, path = %req.path, "HTTP connection moved to the session's core");
        let framing = match mem::take(&mut c.framing) {
            h @ Framing::Http(_) => h,
            _ => Framing::Http(Box::new(gate_http::HttpState::new(0))),
        };
        Handled::Migrate(Box::new(Adopt {
            sock: c.sock,
            tls: c.tls,
            tls_in: c.tls_in,
            tls_out: c.tls_out,
            session: c.session,
            rbuf: c.rbuf,
            out: c.out,
            framing,
            user: Arc::from(""),
            req: ConnectRequest {
                keepalive_s: 0,
                device_id: Default::default(),
                token: Default::default(),
                last_seq: 0,
            },
            token_exp_wall_ms: 0,
            web: Some(Box::new(WebMove { core, req, preauth_ip })),
        }))
    }

    /// An HTTP connection moved here for a session request: register it and answer.
    pub(super) fn adopt_http(&mut self, conn: Conn, w: WebMove) -> ConnKey {
        let key = self.insert(conn);
        if let Some(ip) = w.preauth_ip {
            // Still anonymous: the pre-auth limits of its address apply
            // here too (a sid naming another core is no way around them).
            let now = self.shared.clock.mono_ms();
            self.preauth_seq += 1;
            let seq = self.preauth_seq;
            match self.addrs.admit(ip, seq, now) {
                Err(_) => {
                    self.reject(crate::metrics::REJ_CONNECT_RATE_IP);
                    if let Some(c) = self.conn(key) {
                        c.dead = true;
                    }
                    self.wake(key);
                    return key;
                }
                Ok(Some(oldest)) => self.shed_preauth(oldest),
                Ok(None) => {}
            }
            self.preauth_order.insert(seq, key);
            if let Some(slot) = self.conns.get_mut(key.idx as usize) {
                slot.preauth = Some((seq, ip));
            }
        }
        match self.on_session_req(key, w.req, false) {
            Outcome::Continue => {}
            Outcome::Close => {
                if let Some(c) = self.conn(key) {
                    c.dead = true;
                }
                self.wake(key);
            }
            Outcome::Migrate(_) => {
                // Cannot happen (the request names this core); the moved-out
                // connection is dropped and no longer counted.
                self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            }
        }
        key
    }

    /// Finds the session `req`'s sid names: here (its key), on another core
    /// (the connection moves there), or nowhere (`404`).
    fn route_sid(&mut self, key: ConnKey, req: Box<SessionReq>, lp: bool) -> Result<(ConnKey, Box<SessionReq>), Handled> {
        let sid = web::query_param(&req.query, "sid").and_then(Sid::parse);
        let Some(sid) = sid else { return Err(self.answer_text(key, &req, 404, "unknown session")) };
        if sid.core() != self.id {
            if sid.core() < self.shared.mesh.len() {
                return Err(self.migrate_http(key, req, sid.core()));
            }
            return Err(self.answer_text(key, &req, 404, "unknown session"));
        }
        let found = self.web_sids.get(&sid).copied().filter(|s| {
            self.conns.get(s.idx as usize).is_some_and(|slot| {
                slot.gen == s.gen && matches!((&slot.conn.framing, lp), (Framing::LongPoll(_), true) | (Framing::Sse(_), false))
            })
        });
        match found {
            Some(s) => Ok((s, req)),
            None => Err(self.answer_text(key, &req, 404, "unknown session")),
        }
    }

    /// Feeds POSTed client frames (already checked whole and allowed) to
    /// session `s`. False when they broke a protocol rule (DISCONNECT 1 went out).
    fn feed(&mut self, s: ConnKey, body: BytesMut) -> bool {
        let now = self.shared.clock.mono_ms();
        let Some(c) = self.conn(s) else { return true };
        let before = c.session.phase();
        c.session.touch(now);
        // The stream connection's own input is discarded, so `rbuf` is free.
        c.rbuf = body;
        // No CONNECT can be in the body, so nothing migrates.
        let _ = self.process_frames(s);
        let ok = match self.conn(s) {
            Some(c) => {
                c.rbuf = BytesMut::new();
                !(before == Phase::Open
                    && c.session.phase() == Phase::Closing
                    && c.session.close_reason() == Some(DisconnectReason::ProtocolError))
            }
            None => true,
        };
        self.kick(s);
        ok
    }

    /// `GET /v1/sse?connect=`: this connection becomes the session's stream.
    fn sse_open(&mut self, key: ConnKey, req: Box<SessionReq>) -> Handled {
        let Some(mut connect) = web::decode_connect_param(&req.query) else {
            return self.answer_text(key, &req, 400, "connect= must be base64url of exactly one CONNECT frame");
        };
        // Resume: last_seq = max(CONNECT's, Last-Event-ID); a Last-Event-ID
        // that is not a decimal u64 is ignored.
        if let Some(id) = req.last_event_id.as_deref().and_then(|v| v.parse::<u64>().ok()) {
            let mut b = connect.clone();
            if let Ok(Some(Frame::Connect(mut c))) = frame::decode(&mut b, MAX_PREAUTH_FRAME) {
                c.last_seq = c.last_seq.max(id);
                connect.clear();
                Frame::Connect(c).encode(&mut connect);
            }
        }
        let core = self.connect_core(&connect);
        if core != self.id {
            return self.migrate_http(key, req, core);
        }
        let now = self.shared.clock.mono_ms();
        let sid = Sid::new(self.id);
        let Some(c) = self.conn(key) else { return Handled::Gone };
        let extra = vec![
            ("Content-Type", "text/event-stream".to_string()),
            ("Transfer-Encoding", "chunked".into()),
            ("Cache-Control", "no-cache".into()),
            ("X-Accel-Buffering", "no".into()),
        ];
        gate_http::write_answer(&mut c.out, 200, None, extra, req.cross.as_deref(), false);
        // From here the connection is the stream: nothing more is read
        // from it, its session takes the CONNECT.
        c.framing = Framing::Sse(Box::new(SseState::new(sid, c.out.len(), now)));
        c.rbuf = connect;
        if self.process_frames(key).is_some() {
            // Cannot happen (this is the user's home core).
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            return Handled::Gone;
        }
        let Some(c) = self.conn(key) else { return Handled::Gone };
        c.rbuf = BytesMut::new();
        if c.session.phase() == Phase::Open {
            let hb = c.session.heartbeat_s();
            if let Framing::Sse(s) = &mut c.framing {
                s.set_heartbeat(hb, now);
            }
            self.web_sids.insert(sid, key);
        }
        Handled::Stream
    }

    /// `POST /v1/send?sid=`: client frames for an SSE session.
    fn sse_send(&mut self, key: ConnKey, req: Box<SessionReq>) -> Handled {
        let (s, mut req) = match self.route_sid(key, req, false) {
            Ok(x) => x,
            Err(h) => return h,
        };
        if self.conn(s).is_none_or(|c| c.session.phase() != Phase::Open) {
            return self.answer_text(key, &req, 404, "session ended");
        }
        if !req.body.is_empty() && self.over_high_water(s) {
            // Nothing is processed: the client retries once its stream drained.
            self.reject(crate::metrics::REJ_POST_OVER_HIGH_WATER);
            return self.answer_later(key, &req, 429, "the session's stream is not being read: retry later");
        }
        if let Err(e) = web::check_client_frames(&req.body, self.shared.limits.max_frame) {
            self.close_conn(s, DisconnectReason::ProtocolError, &e.to_string());
            return self.answer_text(key, &req, 400, &e.to_string());
        }
        if self.feed(s, mem::take(&mut req.body)) {
            self.answer(key, &req, 204, None, Vec::new());
            Handled::Answered
        } else {
            self.answer_text(key, &req, 400, "a frame broke the protocol: the session is closed")
        }
    }

    /// `POST /v1/lp/connect`: a long-poll session, answered with its CONNACK.
    fn lp_connect(&mut self, key: ConnKey, req: Box<SessionReq>) -> Handled {
        let Some(connect) = web::one_connect(&req.body) else {
            return self.answer_text(key, &req, 400, "the body must be exactly one CONNECT frame");
        };
        let core = self.connect_core(&connect);
        if core != self.id {
            return self.migrate_http(key, req, core);
        }
        // A long-poll session holds what a connection holds (a session, a
        // queue, a device): it counts against `max_connections` like one.
        // No pre-auth connection is shed for it: the HTTP connection asking
        // is one of them itself (it never sends CONNECT), and shedding
        // another anonymous poster to make room would only move the refusal.
        if self.shared.open_conns.load(Ordering::Relaxed) >= self.live.max_connections {
            self.reject(crate::metrics::REJ_FULL);
            return self.answer_later(key, &req, 503, "the server is at its connection limit");
        }
        let now = self.shared.clock.mono_ms();
        let sid = Sid::new(self.id);
        // No socket (`sock: None`): the session's input comes in POSTs and
        // its output leaves in the answers to polls, on their connections.
        let mut conn = Conn::new(None, Tls::Off, Session::new(now, &self.shared.limits));
        conn.framing = Framing::LongPoll(Box::new(LpState::new(sid)));
        conn.rbuf = connect;
        // A session counts as a connection (`remove` gives it back).
        self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
        let v = self.insert(conn);
        if self.process_frames(v).is_some() {
            // Cannot happen (this is the user's home core).
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            return self.answer_text(key, &req, 503, "try again");
        }
        let Some(c) = self.conn(v) else { return self.answer_text(key, &req, 503, "try again") };
        c.rbuf = BytesMut::new();
        // The CONNACK is the answer; replay and live frames wait for polls.
        let n = frame::check(&c.out, u32::MAX).ok().flatten().unwrap_or(c.out.len());
        let ack = c.out.split_to(n);
        let open = c.session.phase() == Phase::Open;
        let mut extra = Vec::new();
        if open {
            self.web_sids.insert(sid, v);
            extra.push(("X-Ringgate-Session", sid.encode()));
        } else {
            self.remove(v);
        }
        self.answer(key, &req, 200, Some(("application/octet-stream", &ack)), extra);
        if open {
            self.kick(v);
        }
        Handled::Answered
    }

    /// `POST /v1/lp?sid=`: client frames in, server frames out (now, or
    /// when the first is queued, or `204` at the poll's end).
    fn lp_poll(&mut self, key: ConnKey, req: Box<SessionReq>) -> Handled {
        let (v, mut req) = match self.route_sid(key, req, true) {
            Ok(x) => x,
            Err(h) => return h,
        };
        let now = self.shared.clock.mono_ms();
        let poll_timeout_ms = self.live.gate.poll_timeout_ms;
        // A newer poll ends the older one.
        let older = self.conn(v).and_then(|c| c.framing.lp_mut()).and_then(|l| l.poll.take());
        if let Some((p, _)) = older {
            self.answer_poll(p, None);
        }
        let open = self.conn(v).is_some_and(|c| c.session.phase() == Phase::Open);
        if open && !req.body.is_empty() && self.over_high_water(v) {
            // The queue already holds more than the high-water mark: the
            // body is not processed (its answers would grow the queue
            // further). An empty poll drains the queue; then resend.
            self.reject(crate::metrics::REJ_POST_OVER_HIGH_WATER);
            return self.answer_later(key, &req, 429, "the session's queue is above the high-water mark: poll it empty, then resend");
        }
        let mut bad = None;
        if open {
            match web::check_client_frames(&req.body, self.shared.limits.max_frame) {
                Err(e) => {
                    if let Some(c) = self.conn(v) {
                        c.session.close(now, DisconnectReason::ProtocolError, &e.to_string(), &mut c.out);
                    }
                    bad = Some(e.to_string());
                }
                Ok(()) => {
                    if !self.feed(v, mem::take(&mut req.body)) {
                        bad = Some("a frame broke the protocol: the session is closed".into());
                    }
                }
            }
        }
        if let Some(why) = bad {
            // The DISCONNECT waits for the next poll.
            self.kick(v);
            return self.answer_text(key, &req, 400, &why);
        }
        // Frames handed to an earlier poll whose answer is not written yet
        // (it waits for the end of the turn, or for its socket) go first:
        // this poll, answered and written now, would overtake them, and the
        // client would see a seq gap. It waits as an open poll instead, and
        // the session's flush (`lp_after_io`) answers it after that write.
        let behind = self.lp_behind(v, key);
        let Some(c) = self.conn(v) else {
            // Ended by this poll's own frames (the device's DISCONNECT).
            self.answer(key, &req, 204, None, Vec::new());
            return Handled::Answered;
        };
        let closed = !open_phase(c.session.phase());
        if !c.out.is_empty() && !behind {
            let body = mem::take(&mut c.out);
            c.write_blocked = false;
            if let Some(l) = c.framing.lp_mut() {
                l.answered = Some(key);
            }
            self.answer(key, &req, 200, Some(("application/octet-stream", &body)), Vec::new());
            if closed {
                self.remove(v);
            } else {
                self.rearm(v);
            }
            return Handled::Answered;
        }
        if closed && !behind {
            self.remove(v);
            self.answer(key, &req, 204, None, Vec::new());
            return Handled::Answered;
        }
        // Held at most one heartbeat, so an open poll always counts as
        // activity for the idle rule (touched at its start and its end).
        c.session.touch(now);
        let hold = poll_timeout_ms.min(u64::from(c.session.heartbeat_s()) * 1000).max(1);
        let until = now + hold;
        if let Some(l) = c.framing.lp_mut() {
            l.poll = Some((key, until));
        }
        let keepalive = self.live.gate.keepalive_idle_ms;
        if let Some(h) = self.conn(key).and_then(|c| c.framing.http_mut()) {
            h.parked = true;
            h.poll_cross = req.cross.take();
            h.deadline_ms = until + keepalive;
        }
        if behind {
            // Queued behind the earlier answer's write: the flush hands
            // the frames over after it.
            self.kick(v);
        }
        self.rearm(v);
        Handled::Parked
    }

    /// Session `v`'s frames were last handed to another poll than `p` whose
    /// answer is not all written yet: `p` must not be answered with frames
    /// before it (the client would see a seq gap). That connection kicks
    /// `v` once its output has gone out (`HttpState::lp_waiting`).
    fn lp_behind(&mut self, v: ConnKey, p: ConnKey) -> bool {
        let Some(a) = self.conn(v).and_then(|c| c.framing.lp_mut()).and_then(|l| l.answered).filter(|a| *a != p) else { return false };
        let Some(h) = self.conn(a).filter(|h| h.unsent_bytes() > 0) else { return false };
        if let Some(http) = h.framing.http_mut() {
            http.lp_waiting = Some(v);
        }
        true
    }

    /// Answers the open poll on HTTP connection `p`: 200 with `body`, or 204.
    /// False when `p` no longer waits (gone or not parked): nothing written.
    fn answer_poll(&mut self, p: ConnKey, body: Option<&[u8]>) -> bool {
        let now = self.shared.clock.mono_ms();
        let keepalive = self.live.gate.keepalive_idle_ms;
        let Some(c) = self.conn(p) else { return false };
        let Some(h) = c.framing.http_mut().filter(|h| h.parked) else { return false };
        h.parked = false;
        h.deadline_ms = now + keepalive;
        let close = h.closing;
        let cross = h.poll_cross.take();
        match body {
            Some(b) => gate_http::write_answer(&mut c.out, 200, Some(("application/octet-stream", b)), Vec::new(), cross.as_deref(), close),
            None => gate_http::write_answer(&mut c.out, 204, None, Vec::new(), cross.as_deref(), close),
        }
        self.kick(p);
        // Its task serves whatever the client pipelined behind the poll.
        self.wake(p);
        true
    }

    /// `after_io` of a connection with web state: SSE marks pings and the
    /// stream's end, then the usual flush runs (None); a long-poll session
    /// does its own (Some).
    pub(super) fn web_after_io(&mut self, key: ConnKey) -> Option<Outcome> {
        let now = self.shared.clock.mono_ms();
        let c = self.conn(key)?;
        let phase = c.session.phase();
        match &mut c.framing {
            Framing::Sse(s) => {
                s.on_time(now);
                if !open_phase(phase) {
                    s.ending = true;
                }
                None
            }
            Framing::LongPoll(_) => Some(self.lp_after_io(key)),
            Framing::Native | Framing::Http(_) | Framing::Ws(_) => None,
        }
    }

    /// A long-poll session's output moved, or its timer fired: hand queued
    /// frames to the open poll, end a poll that ran its time, apply the
    /// slow-consumer rule, and forget a closed session once its last frames
    /// went out (or nobody came for them).
    fn lp_after_io(&mut self, v: ConnKey) -> Outcome {
        let now = self.shared.clock.mono_ms();
        let hw = self.live.limits_cfg.output_high_water_bytes as usize;
        let slow_ms = self.live.limits_cfg.slow_consumer_timeout_ms;
        let shutting = self.shutting_down;
        let mut slow = false;
        let Some(c) = self.conn(v) else { return Outcome::Close };
        let Some(l) = c.framing.lp_mut() else { return Outcome::Close };
        if c.out.len() > hw {
            if l.over_hw_since_ms == 0 {
                l.over_hw_since_ms = now.max(1);
                l.slow_deadline_ms = now + slow_ms;
            } else if now >= l.slow_deadline_ms && open_phase(c.session.phase()) {
                slow = true;
            }
        } else {
            l.over_hw_since_ms = 0;
            l.slow_deadline_ms = 0;
        }
        if slow {
            // Nobody polled what we owe for the whole timeout: DISCONNECT 8
            // behind the backlog, for a poll that may still come.
            c.session.close(now, DisconnectReason::SlowConsumer, "nobody polled the queued frames for too long", &mut c.out);
            self.reject(crate::metrics::REJ_SLOW_CONSUMER);
        }
        self.count_close(v);
        let Some(c) = self.conn(v) else { return Outcome::Close };
        let closed = !open_phase(c.session.phase()) || c.dead;
        let idle_ms = u64::from(c.session.heartbeat_s()) * 2_500;
        let Some(l) = c.framing.lp_mut() else { return Outcome::Close };
        if closed && l.closed_expiry_ms == 0 {
            // The final DISCONNECT waits for one more poll, this long.
            l.closed_expiry_ms = now + idle_ms.max(1);
        }
        let expired = closed && (now >= l.closed_expiry_ms || shutting);
        let poll = l.poll;
        let has = !c.out.is_empty();
        // Frames wait while an earlier answer carrying frames is unwritten
        // (`lp_behind`); a poll that ran its time meanwhile ends empty.
        let behind = matches!(poll, Some((p, _)) if (has || closed) && self.lp_behind(v, p));
        let Some(c) = self.conn(v) else { return Outcome::Close };
        let Some(l) = c.framing.lp_mut() else { return Outcome::Close };
        if let Some((p, until)) = poll {
            let has = has && !behind;
            if has || (closed && !behind) || now >= until {
                l.poll = None;
                if has {
                    let body = mem::take(&mut c.out);
                    if !self.answer_poll(p, Some(&body)) {
                        // The poll's connection is gone: the frames stay queued.
                        if let Some(c) = self.conn(v) {
                            c.out = body;
                        }
                    } else if let Some(l) = self.conn(v).and_then(|c| c.framing.lp_mut()) {
                        l.answered = Some(p);
                    }
                } else {
                    self.answer_poll(p, None);
                    // A poll that ran its time was activity.
                    if let Some(c) = self.conn(v) {
                        c.session.touch(now);
                    }
                }
            }
        }
        let Some(c) = self.conn(v) else { return Outcome::Close };
        c.write_blocked = !c.out.is_empty();
        if closed && (c.out.is_empty() || expired) {
            self.remove(v);
            return Outcome::Close;
        }
        self.rearm(v);
        Outcome::Continue
    }

    /// I/O on an SSE stream's socket: the client sends nothing on it (its
    /// frames come in POSTs), so input is discarded; EOF ends the session.
    pub(super) fn on_sse_io(&mut self, key: ConnKey, eof: bool) -> Outcome {
        let Some(c) = self.conn(key) else { return Outcome::Close };
        c.rbuf.clear();
        if eof {
            c.session.abort();
            return Outcome::Close;
        }
        self.after_io(key)
    }
}
