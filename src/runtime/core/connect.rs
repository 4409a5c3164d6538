//! CONNECT on the core: the token checked, the connection opened here or moved to its user's home core (and adopted there), the session opened with replacement of the device's older connection and replay; and closing a connection from outside its task.

use super::*;

impl Core {
    /// CONNECT passed the session's checks: verify the token, then open here or move home.
    pub(super) fn on_connect(&mut self, key: ConnKey, req: ConnectRequest) -> Option<Box<Adopt>> {
        let now = self.shared.clock.mono_ms();
        let wall = self.shared.clock.wall_ms();
        self.leave_preauth(key);
        if !self.connect_bucket.take(self.live.limits_cfg.connect_rate, now) {
            // A CONNECT storm (after a restart, say): tell clients to back
            // off rather than queueing token checks and replays.
            self.reject(REJ_CONNECT_RATE);
            let lim = self.shared.limits.clone();
            if let Some(c) = self.conn(key) {
                c.session.refuse(now, &lim, connack::SERVER_BUSY, &mut c.out);
            }
            return None;
        }
        let claims = match self.live.jwt.verify(req.token.as_str(), wall / 1000) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT refused: bad token");
                self.m().handshakes[crate::metrics::HS_BAD_TOKEN].inc();
                let lim = self.shared.limits.clone();
                if let Some(c) = self.conn(key) {
                    c.session.refuse(now, &lim, connack::BAD_TOKEN, &mut c.out);
                }
                return None;
            }
        };
        let user: Arc<str> = Arc::from(claims.sub.as_str());
        let token_exp_wall_ms = claims.exp.saturating_mul(1000);
        let home = home_core(&user, self.shared.mesh.len());
        if home == self.id {
            self.open(key, user, req, token_exp_wall_ms);
            return None;
        }
        // Move to the home core: take the connection out of this core
        // entirely; the task hands over the fd.
        let c = self.detach(key);
        Some(Box::new(Adopt {
            sock: c.sock,
            tls: c.tls,
            tls_in: c.tls_in,
            tls_out: c.tls_out,
            session: c.session,
            rbuf: c.rbuf,
            out: c.out,
            framing: c.framing,
            web: None,
            user,
            req,
            token_exp_wall_ms,
        }))
    }

    /// Takes connection `key` out of this core for a move to another one
    /// (its timer cancelled, counted as migrated); the caller packs it
    /// into an `Adopt` and the task hands over the fd.
    pub(super) fn detach(&mut self, key: ConnKey) -> Conn {
        let slot = self.conns.remove(key.idx as usize);
        if let Some((t, _)) = slot.conn.timer {
            self.wheel.cancel(t);
        }
        self.stats.migrated_out += 1;
        self.m().conns.set(self.conns.len() as u64);
        slot.conn
    }

    /// A connection moved here from another core: register it and open its
    /// session (an HTTP connection's session request is answered at once;
    /// the driver performs the transmits after the call).
    pub fn adopt(&mut self, a: Adopt) -> ConnKey {
        let mut conn = Conn::new(a.sock, a.tls, a.session);
        conn.tls_in = a.tls_in;
        conn.tls_out = a.tls_out;
        conn.rbuf = a.rbuf;
        conn.out = a.out;
        conn.framing = a.framing;
        if let Some(w) = a.web {
            return self.adopt_http(conn, *w);
        }
        let key = self.insert(conn);
        self.open(key, a.user, a.req, a.token_exp_wall_ms);
        // Frames pipelined behind CONNECT were read on the other core.
        let _ = self.process_frames(key);
        self.kick(key);
        key
    }

    /// Accepts the CONNECT on the user's home core: replacement, CONNACK,
    /// replay (in fleet mode once the engine has answered).
    pub(super) fn open(&mut self, key: ConnKey, user: Arc<str>, req: ConnectRequest, token_exp_wall_ms: u64) {
        if self.fleet.is_some() && self.fleet_defer_open(key, &user, &req, token_exp_wall_ms) {
            return;
        }
        self.open_with(key, user, req, token_exp_wall_ms, None);
    }

    /// `bounds`: the inbox's (oldest, head) when the store's view is not
    /// the whole inbox (fleet mode: the engine's).
    pub(super) fn open_with(&mut self, key: ConnKey, user: Arc<str>, req: ConnectRequest, token_exp_wall_ms: u64, bounds: Option<(u64, u64)>) {
        let now = self.shared.clock.mono_ms();
        let wall = self.shared.clock.wall_ms();
        let device: Arc<str> = Arc::from(req.device_id.as_str());
        let cap = self.live.limits_cfg.max_devices_per_user as usize;
        let u = self.users.entry(user.clone()).or_default();
        let i = match u.find(&device) {
            Some(i) => i,
            None if u.make_room(cap) => u.push(Device::new(device.clone(), Dedup::default())),
            None => {
                // Every device of the user is online: a new one would have
                // to close one of them, which no rule allows. CONNACK 3: the
                // client backs off and retries.
                self.reject(REJ_TOO_MANY_DEVICES);
                let lim = self.shared.limits.clone();
                if let Some(c) = self.conn(key) {
                    c.session.refuse(now, &lim, connack::SERVER_BUSY, &mut c.out);
                }
                return;
            }
        };
        let d = &mut u.devices[i];
        d.connected_at_ms = wall;
        d.seen_ms = now;
        let prev_acked = d.acked_seq;
        let older = d.conn.replace(key);
        if let Some(old) = older.filter(|o| *o != key) {
            self.close_conn(old, DisconnectReason::Replaced, "replaced by a newer connection of this device");
        }
        // Monotonic deadline for the token's wall-clock expiry.
        let token_exp_ms = if token_exp_wall_ms > wall { now.saturating_add(token_exp_wall_ms - wall) } else { now };
        let Core { conns, store, shared, .. } = self;
        let Some(slot) = conns.get_mut(key.idx as usize) else { return };
        let conn = &mut slot.conn;
        let bounds = bounds.unwrap_or_else(|| store.inbox(&user, wall).bounds());
        conn.session.accept(now, wall, &shared.limits, &user, &req, bounds, token_exp_ms, &mut conn.out);
        let cursor = conn.session.acked();
        conn.session.fill(now, &shared.limits, store.peek(&user), &mut conn.out);
        store.fetch_cold(&user);
        conn.ident = Some(Box::new(Identity { user, device }));
        conn.send_bucket = TokenBucket::full(self.live.limits_cfg.send_rate_per_connection, now);
        self.rearm(key);
        let m = self.shared.metrics.core(self.id);
        m.handshakes[crate::metrics::HS_OK].inc();
        m.conns_open.inc();
        // CONNECT's last_seq acknowledges what the device already has.
        self.record_connect_ack(key, prev_acked, cursor);
        self.record_pushes(key, cursor);
    }

    /// Writes DISCONNECT to a connection from outside its task and lets it close.
    pub(super) fn close_conn(&mut self, key: ConnKey, reason: DisconnectReason, msg: &str) {
        let now = self.shared.clock.mono_ms();
        let Some(c) = self.conn(key) else { return };
        if c.tls_handshaking() || c.framing.is_http() {
            c.dead = true;
        } else {
            c.session.close(now, reason, msg, &mut c.out);
        }
        self.kick(key);
        self.wake(key);
    }
}
