//! One connection's I/O step on its core: read, detect the transport (frames, HTTP, WebSocket), run the session over the frames, write or queue the write.

use super::*;
use crate::runtime::framing::Framing;

impl Core {
    /// The connection's socket is ready (or the core woke its task): read,
    /// handle frames, queue the writes. Returns what the task must do next.
    /// `io` is the driver's transport: the reads land in this connection's
    /// buffers (`transport.rs`). The writes are the driver's too: it
    /// performs what `poll_transmit` hands out after this call, then looks
    /// at `wants_write` (`transmit.rs`), before acting on the outcome (a
    /// closing connection's last bytes go out before its socket is
    /// dropped). Call `before_io` (and transmit) first: backpressure.
    pub fn on_io<T: Transport + ?Sized>(&mut self, key: ConnKey, io: &mut T) -> Outcome {
        self.tx.task = Some(key);
        let outcome = self.on_io_step(key, io);
        self.tx.task = None;
        outcome
    }

    fn on_io_step<T: Transport + ?Sized>(&mut self, key: ConnKey, io: &mut T) -> Outcome {
        let hw = self.live.limits_cfg.output_high_water_bytes as usize;
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        if conn.dead || conn.session.phase() == Phase::Finished {
            return Outcome::Close;
        }
        if conn.unsent_bytes() > hw {
            // Backpressure: the write `before_io` asked for did not bring
            // the connection under the mark, so nothing is read (every PING
            // or SEND would add to what we owe). TCP then pushes back on
            // the peer.
            return self.after_io(key);
        }
        // Requests were left behind HTTP's output mark and everything went
        // out since: serve them before reading more, as the old write loop
        // did in one go.
        let resume = conn.framing.http_mut().is_some_and(|h| std::mem::take(&mut h.resume));
        let read = if resume { Ok(ReadStatus::Open) } else { conn.read_available(io) };
        let status = match read {
            Ok(s) => s,
            Err(TransportError::Tls(e)) => {
                tracing::debug!(error = %e, "TLS failure");
                conn.stage_alert();
                self.transmit(key, 0);
                self.stats.tls_failures += 1;
                self.m().handshakes[crate::metrics::HS_TLS_ERROR].inc();
                return Outcome::Close;
            }
            Err(TransportError::Record(e)) => {
                tracing::debug!(error = %e, peer_fault = e.is_peer_fault(), alert = ?e.alert(), "TLS record failure");
                conn.stage_record_alert(&e);
                let handshaking = conn.ident.is_none();
                self.transmit(key, 0);
                self.stats.tls_failures += 1;
                if handshaking {
                    self.m().handshakes[crate::metrics::HS_TLS_ERROR].inc();
                }
                return Outcome::Close;
            }
            Err(TransportError::Io(e)) => {
                tracing::debug!(error = %e, "socket error");
                return Outcome::Close;
            }
        };
        if conn.tls_handshaking() {
            if status == ReadStatus::Eof {
                self.stats.tls_failures += 1;
                self.m().handshakes[crate::metrics::HS_TLS_ERROR].inc();
                return Outcome::Close;
            }
            return self.after_io(key);
        }
        let eof = status == ReadStatus::Eof;
        // The first bytes after TLS decide: HTTP (route endpoint) or frames.
        if matches!(conn.framing, Framing::Native)
            && conn.session.phase() == Phase::AwaitConnect
            && !conn.rbuf.is_empty()
            && crate::runtime::gate_http::is_http(conn.alpn(), conn.rbuf[0])
        {
            let deadline = conn.session.next_deadline().unwrap_or(0);
            conn.framing = Framing::Http(Box::new(crate::runtime::gate_http::HttpState::new(deadline)));
        }
        // Ingest, per framing: the one dispatch on the transport.
        match conn.framing {
            Framing::Native => {}
            Framing::Http(_) => return self.on_http(key, eof),
            Framing::Ws(_) => return self.on_ws(key, eof),
            Framing::Sse(_) => return self.on_sse_io(key, eof),
            // No socket: never registered with a task's readiness.
            Framing::LongPoll(_) => return Outcome::Close,
        }
        if let Some(m) = self.process_frames(key) {
            return Outcome::Migrate(m);
        }
        if eof {
            if let Some(c) = self.conn(key) {
                // The device vanished; its messages stay in the inbox.
                c.session.abort();
                c.stage_close_notify();
                self.transmit(key, 0);
            }
            return Outcome::Close;
        }
        self.after_io_deferred(key)
    }

    /// An HTTP connection had I/O (see `gate_http::on_io`).
    pub(super) fn on_http(&mut self, key: ConnKey, eof: bool) -> Outcome {
        let (mono, wall) = (self.shared.clock.mono_ms(), self.shared.clock.wall_ms());
        let (gate, tls) = (self.live.gate.clone(), self.live.tls.is_some());
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        let step = crate::runtime::gate_http::on_io(conn, &gate, tls, mono, wall, eof);
        if let Some(st) = conn.framing.http_mut().filter(|st| st.refused_origins > 0) {
            let (n, origin) = (std::mem::take(&mut st.refused_origins), st.refused_origin.take());
            self.origin_refused(n, origin.as_deref().unwrap_or(""), mono);
        }
        self.http_step(key, step, eof)
    }

    /// Acts on what `gate_http::on_io` answered: its writes become the
    /// connection's transmit, with the follow-up the answer calls for.
    pub(super) fn http_step(&mut self, key: ConnKey, step: crate::runtime::gate_http::Step, eof: bool) -> Outcome {
        use crate::runtime::gate_http::Step;
        match step {
            Step::Close => Outcome::Close,
            Step::Upgraded => self.upgrade_ws(key, eof),
            Step::Session(req) => {
                // The answers before it go out first (its own answer joins
                // them if the connection stays here).
                self.transmit(key, 0);
                self.on_session_req(key, req, eof)
            }
            Step::Closing => {
                // FIN and the close once everything is written; until then
                // the task waits for writability and serves nothing more.
                self.transmit(key, transmit::then::CLOSE_IF_DRAINED);
                self.rearm(key);
                Outcome::Continue
            }
            Step::Continue { more } => {
                self.transmit(key, if more { transmit::then::MORE_IF_DRAINED } else { 0 });
                self.rearm(key);
                Outcome::Continue
            }
        }
    }

    /// Queues the write (with the over-high-water bookkeeping on what it
    /// leaves), half-closes a closing session behind it, releases idle
    /// buffers, re-arms the timer.
    pub(super) fn after_io(&mut self, key: ConnKey) -> Outcome {
        if let Some(o) = self.web_after_io(key) {
            return o;
        }
        self.count_close(key);
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        match conn.session.phase() {
            Phase::Finished => {
                if let Framing::Ws(_) = conn.framing {
                    // Best effort: the close frame. Finished without Closing
                    // means the device's DISCONNECT ended it: 1000 (a
                    // server DISCONNECT's 4000 + reason went out before).
                    conn.framing.close_answer(&mut conn.out, None);
                    conn.prepare_shutdown();
                }
                // The driver writes what is owed before it drops the socket.
                self.transmit(key, 0);
                return Outcome::Close;
            }
            Phase::Closing => self.transmit(key, transmit::then::HW | transmit::then::SHUTDOWN),
            _ => self.transmit(key, transmit::then::HW),
        }
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        conn.release_idle_buffers();
        self.rearm(key);
        Outcome::Continue
    }

    /// The flusher's write of a dirty connection (`flush.rs`; `kick` marks
    /// it): queue its write (a blocked one wakes the task when reported,
    /// `transmit.rs`), and wake the task now if the connection is to close.
    pub(super) fn flush_now(&mut self, key: ConnKey) {
        if let Outcome::Close = self.after_io(key) {
            if let Some(c) = self.conn(key) {
                c.dead = true;
            }
            self.wake(key);
        }
    }

    /// Counts the server's DISCONNECT once, when the session turns Closing
    /// (a device's own DISCONNECT finishes the session directly; a refused
    /// CONNECT closes with no reason).
    pub(super) fn count_close(&mut self, key: ConnKey) {
        let Some(conn) = self.conn(key) else { return };
        if conn.close_counted || conn.session.phase() != Phase::Closing {
            return;
        }
        conn.close_counted = true;
        if let Some(r) = conn.session.close_reason() {
            if let Some(c) = self.shared.metrics.core(self.id).disconnects.get(r.code() as usize) {
                c.inc();
            }
        }
    }

    /// Runs the session over buffered plaintext until it needs more bytes.
    pub(super) fn process_frames(&mut self, key: ConnKey) -> Option<Box<Adopt>> {
        let now = self.shared.clock.mono_ms();
        // A copy of the few integers, not an `Arc` clone: that would bounce
        // the shared refcount's cache line between cores on every read.
        let limits = self.shared.limits.clone();
        loop {
            let conn = self.conn(key)?;
            let before = conn.session.phase();
            let acked_before = conn.session.acked();
            // A WebSocket connection's frames were taken out of its messages.
            let input = conn.framing.session_input(&mut conn.rbuf);
            let ev = conn.session.poll_frame(now, &limits, input, &mut conn.out);
            match ev {
                Event::Closed if before == Phase::AwaitConnect => {
                    self.m().handshakes[crate::metrics::HS_REFUSED].inc();
                    return None;
                }
                Event::NeedMore | Event::Closed => return None,
                Event::Handled => {}
                Event::Acked => {
                    self.record_ack(key, acked_before);
                    self.trace_acked(key);
                    self.fill(key, now)
                }
                Event::Send(s) => self.on_send(key, s),
                Event::Connect(req) => {
                    if let Some(m) = self.on_connect(key, req) {
                        return Some(m);
                    }
                }
            }
        }
    }

    pub(super) fn fill(&mut self, key: ConnKey, now: u64) {
        let Core { conns, store, shared, .. } = self;
        let Some(slot) = conns.get_mut(key.idx as usize) else { return };
        let conn = &mut slot.conn;
        let inbox: &dyn InboxRead = match &conn.ident {
            Some(i) => store.peek(&i.user),
            None => &EmptyInbox,
        };
        let sent_before = conn.session.sent();
        conn.session.fill(now, &shared.limits, inbox, &mut conn.out);
        if let Some(i) = &conn.ident {
            // Stopped at a payload not in memory: read off the event loop.
            store.fetch_cold(&i.user);
        }
        self.record_pushes(key, sent_before);
    }
}
