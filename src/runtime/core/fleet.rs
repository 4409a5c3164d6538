//! The core's seam to fleet mode (`crate::fleet`): CONNECT waits for the engine's view of the inbox, SENDs and publishes append in the engine, engine answers and notifications arrive as `CoreMsg::Fleet`.
//!
//! On the local log none of this runs: `Core::fleet` is `None` and the
//! only cost is one branch per CONNECT, SEND and tick.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::fleet::{Event, Fleet, FleetError, Refused, Request, Stored};

/// A core's fleet state.
pub struct CoreFleet {
    pub fleet: Arc<Fleet>,
    /// CONNECTs waiting for the engine: the user, request, token expiry
    /// and presence stamp.
    connecting: HashMap<ConnKey, (Arc<str>, ConnectRequest, u64, u64)>,
    last_repair_ms: u64,
    /// The last presence stamp handed out: stamps are wall ms made
    /// strictly increasing here (a device's connections on this node all
    /// come to its home core), so two connections of one device never
    /// share one, even within a millisecond.
    last_stamp: u64,
}

impl CoreFleet {
    pub fn new(fleet: Arc<Fleet>) -> Box<Self> {
        Box::new(CoreFleet { fleet, connecting: HashMap::new(), last_repair_ms: 0, last_stamp: 0 })
    }
}

/// A SEND or publish goes to the engine only with a msg_id unique in the
/// fleet: without a leased node index (the engine not reached since the
/// start, or the lease lapsed) `next_msg_id` mints 0, and the SEND gets
/// SENDACK 5 / the publish 503, like any engine failure.
fn submit_send(fleet: &Fleet, r: Request) -> Result<(), FleetError> {
    if matches!(&r, Request::Send { msg, .. } if msg.msg_id == 0) {
        return Err(FleetError::Engine("no msg_id index leased from the engine yet".into()));
    }
    fleet.submit(r)
}

impl Core {
    /// Fleet mode: asks the engine for the inbox before the CONNACK (its
    /// bounds are fleet-wide). True when the open is deferred (or refused).
    pub(super) fn fleet_defer_open(&mut self, key: ConnKey, user: &Arc<str>, req: &ConnectRequest, exp: u64) -> bool {
        if self.fleet.is_none() {
            return false;
        }
        let device: Arc<str> = Arc::from(req.device_id.as_str());
        let remote = self.conns.get(key.idx as usize).filter(|s| s.gen == key.gen).and_then(|s| s.conn.sock).and_then(self.peer_of);
        let wall = self.shared.clock.wall_ms();
        let Some(f) = self.fleet.as_mut() else { return false };
        f.last_stamp = wall.max(f.last_stamp + 1);
        let at_ms = f.last_stamp;
        let r = Request::Connect { core: self.id, key, user: user.clone(), device, last_seq: req.last_seq, remote, at_ms };
        match f.fleet.submit(r) {
            Ok(()) => {
                f.connecting.insert(key, (user.clone(), req.clone(), exp, at_ms));
            }
            Err(e) => self.fleet_refuse_connect(key, &e),
        }
        true
    }

    fn fleet_refuse_connect(&mut self, key: ConnKey, e: &FleetError) {
        tracing::debug!(error = %e, "CONNECT refused: fleet engine");
        self.reject(REJ_BUSY);
        let now = self.shared.clock.mono_ms();
        let lim = self.shared.limits.clone();
        if let Some(c) = self.conn(key) {
            c.session.refuse(now, &lim, connack::SERVER_BUSY, &mut c.out);
        }
        self.kick(key);
    }

    /// Fleet mode: the SEND (dedup-checked, limits passed, targets resolved)
    /// goes to the engine; its SENDACK waits for the engine's answer.
    pub(super) fn fleet_send(
        &mut self,
        key: ConnKey,
        user: Arc<str>,
        device: Arc<str>,
        s: &frame::Send,
        targets: Vec<Arc<str>>,
        received: Instant,
        wall: u64,
    ) {
        let (ack, msg) = self.begin_send(&user, &device, s, wall);
        let gen = self.next_gen_pending();
        let idx = self.pending.insert((
            gen,
            PendingSend {
                origin: Some(key),
                user,
                device: device.clone(),
                ack,
                remaining: 1,
                failed: false,
                received,
                admin: None,
                group: false,
            },
        ));
        if let Some(c) = self.conn(key) {
            c.sends_in_flight += 1;
        }
        let req = ((gen as u64) << 32) | idx as u64;
        // A group whose only member is the sender still goes through the
        // engine: its claim makes a retry on another node answer the same.
        let r = Request::Send { core: self.id, req, device: Some(device), msg, targets };
        if let Err(e) = self.fleet.as_ref().map_or(Err(FleetError::Busy), |f| submit_send(&f.fleet, r)) {
            self.on_fleet_sent(req, Err(e));
        }
    }

    /// Fleet mode: an admin publish appends in the engine. False on the local log.
    pub(super) fn fleet_publish(&mut self, req: u64, msg: NewMessage, targets: Vec<Arc<str>>) -> bool {
        let Some(f) = self.fleet.as_ref() else { return false };
        let r = Request::Send { core: self.id, req, device: None, msg, targets };
        if let Err(e) = submit_send(&f.fleet, r) {
            self.on_fleet_sent(req, Err(e));
        }
        true
    }

    fn on_fleet_sent(&mut self, req: u64, result: Result<Stored, FleetError>) {
        let idx = (req & 0xffff_ffff) as usize;
        let gen = (req >> 32) as u32;
        match self.pending.get_mut(idx) {
            Some((g, p)) if *g == gen => {
                match result {
                    Ok(Stored { refused: Some(why), .. }) => return self.fleet_refused(idx, why),
                    Ok(st) => {
                        p.ack.msg_id = st.msg_id;
                        p.ack.timestamp_ms = st.timestamp_ms;
                        if let Some(w) = p.admin.as_mut() {
                            w.seqs.extend(st.seqs);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "SEND not stored: fleet engine");
                        p.failed = true;
                    }
                }
                p.remaining = 0;
            }
            _ => return,
        }
        self.complete(idx);
    }

    /// The engine refused a client SEND (no such group, not a member,
    /// muted): answered like the same refusal on one node, before any
    /// append, so the dedup entry is dropped (a retry is tried afresh).
    fn fleet_refused(&mut self, idx: usize, why: Refused) {
        let (_, p) = self.pending.remove(idx);
        if let Some(c) = p.origin.and_then(|o| self.conn(o)) {
            c.sends_in_flight = c.sends_in_flight.saturating_sub(1);
        }
        let status = match why {
            Refused::NoSuchGroup => sendack::NO_SUCH_TARGET,
            Refused::NotMember | Refused::Muted => sendack::FORBIDDEN,
        };
        if why == Refused::Muted {
            self.reject(crate::metrics::REJ_MUTED);
        }
        let ack = SendAck { status, msg_id: 0, ..p.ack };
        let (target, idle) = match self.device_mut(&p.user, &p.device) {
            Some(d) => {
                d.dedup.forget(ack.client_msg_id);
                (d.conn, d.conn.is_none() && !d.dedup.has_pending())
            }
            None => (None, false),
        };
        if idle {
            self.dedup_went_idle(p.user.clone(), p.device.clone());
        }
        match target {
            Some(key) => self.answer_send(key, &ack, p.received),
            None => {
                let m = self.m();
                m.sends[status as usize % crate::metrics::SEND_STATUSES.len()].inc();
            }
        }
    }

    /// An engine answer or notification.
    pub(super) fn on_fleet(&mut self, ev: Event) {
        match ev {
            Event::Sent { req, result } => self.on_fleet_sent(req, result),
            Event::Connected { key, user, result } => {
                let Some((_, req, exp, at_ms)) = self.fleet.as_mut().and_then(|f| f.connecting.remove(&key)) else { return };
                if self.conn(key).is_none() {
                    return;
                }
                match result {
                    Ok(l) => {
                        // The user's devices already open on this core read
                        // the same mirror: a load must not move it past a seq
                        // one of them still lacks (the lowest cursor wins; the
                        // gap up to the new device's cursor is fetched).
                        let open_low = self.users.get(&user).into_iter().flat_map(|u| u.devices.iter()).filter_map(|d| d.conn).filter(|k| *k != key);
                        let open_low: Option<u64> = open_low.filter_map(|k| self.conns.get(k.idx as usize).filter(|s| s.gen == k.gen)).map(|s| s.conn.session.acked()).min();
                        let after = open_low.map_or(req.last_seq, |low| low.min(req.last_seq));
                        let (behind, grew) = match self.store.fleet_mirror() {
                            Some(st) => {
                                let m = st.mirror(&user);
                                let before = m.head();
                                m.load(after, l.oldest, l.head, l.entries, self.shared.clock.wall_ms());
                                (m.behind(), m.head() > before)
                            }
                            None => (false, false),
                        };
                        let device: Arc<str> = Arc::from(req.device_id.as_str());
                        self.open_with(key, user.clone(), req, exp, Some((l.oldest, l.head)));
                        // The device's stamp is the one its presence record
                        // carries (its OFFLINE names it).
                        if let Some(d) = self.device_mut(&user, &device).filter(|d| d.conn == Some(key)) {
                            d.connected_at_ms = at_ms;
                        }
                        if grew {
                            // The load may carry entries whose notification
                            // this core missed: the user's other devices
                            // here get them now, not at the next append.
                            let now = self.shared.clock.mono_ms();
                            self.push_to_online(&user, now);
                        }
                        // Frames pipelined behind the CONNECT waited in the
                        // read buffer while the engine answered.
                        let _ = self.process_frames(key);
                        self.kick(key);
                        if behind {
                            self.fleet_fetch(&user);
                        }
                    }
                    Err(e) => self.fleet_refuse_connect(key, &e),
                }
            }
            Event::Entries { user, oldest, head, entries, fetched, repaired } => {
                let skew_ms = self.fleet.as_ref().map_or(0, |f| f.fleet.cfg.max_clock_skew_ms);
                let Some(st) = self.store.fleet_mirror() else { return };
                let Some(m) = st.get_mut(&user) else { return };
                if fetched {
                    m.fetching = false;
                }
                // The engine lost data while devices here stayed connected:
                // it reports a head below what this mirror holds, or hands
                // out a seq the devices already have for another message
                // (appended after the loss: they would drop it as a
                // duplicate) — one the mirror holds with another msg_id, or
                // one below the mirror appended after what it accounts for
                // there. The head is raised past the mirror's and such
                // messages move above it before more are appended at seqs
                // the devices have (FLEET.md "Seqs are never reused").
                let (base, top) = crate::proto::session::InboxRead::bounds(&*m);
                let reused = entries
                    .iter()
                    .filter(|e| e.seq >= base && e.seq <= top)
                    .any(|e| crate::proto::session::InboxRead::get(&*m, e.seq).is_some_and(|x| x.msg_id != e.msg_id));
                if reused || m.reused_below(&entries, skew_ms) || (head > 0 && head < top) {
                    if let Some(f) = &self.fleet {
                        let (below, after_ms) = m.accounted_below(skew_ms);
                        let held = m.held();
                        let _ = f.fleet.submit(Request::Floor { core: self.id, user: user.clone(), floor: top, held, below, after_ms });
                    }
                }
                if head > 0 {
                    m.set_bounds(oldest, head);
                }
                let grew = m.insert(entries);
                let fetch = m.behind() && !m.fetching;
                if repaired && grew {
                    if let Some(f) = &self.fleet {
                        f.fleet.metrics.gap_repairs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if fetch {
                    self.fleet_fetch(&user);
                }
                if grew {
                    let now = self.shared.clock.mono_ms();
                    self.push_to_online(&user, now);
                }
            }
            Event::Kick { user, device } => {
                if let Some(k) = self.device_mut(&user, &device).and_then(|d| d.conn) {
                    self.close_conn(k, DisconnectReason::Replaced, "replaced by a newer connection of this device on another node");
                }
            }
        }
    }

    fn fleet_fetch(&mut self, user: &Arc<str>) {
        let Some(f) = self.fleet.as_ref() else { return };
        let Some(m) = self.store.fleet_mirror().and_then(|st| st.get_mut(user)) else { return };
        if m.fetching {
            return;
        }
        let after = m.head();
        if f.fleet.submit(Request::Fetch { core: self.id, user: user.clone(), after }).is_ok() {
            m.fetching = true;
        }
    }

    /// Every `heartbeat_ms`: forget mirrors no device here needs, and ask
    /// the engine for the heads of the others (gap repair).
    pub(super) fn fleet_tick(&mut self, now: u64) {
        let Some(f) = self.fleet.as_mut() else { return };
        if now < f.last_repair_ms + f.fleet.cfg.heartbeat_ms {
            return;
        }
        f.last_repair_ms = now;
        let fleet = f.fleet.clone();
        let connecting: Vec<Arc<str>> = f.connecting.values().map(|(u, ..)| u.clone()).collect();
        let users = &self.users;
        let Some(st) = self.store.fleet_mirror() else { return };
        let mut gone = Vec::new();
        let mut check = Vec::new();
        for (u, head) in st.heads() {
            let online = users.get(u).is_some_and(|x| x.devices.iter().any(|d| d.conn.is_some()));
            if online {
                check.push((Arc::from(u), head));
            } else if !connecting.iter().any(|c| &**c == u) {
                gone.push(u.to_string());
            }
        }
        for u in gone {
            st.drop_user(&u);
        }
        if !check.is_empty() {
            let _ = fleet.submit(Request::Repair { core: self.id, users: check });
        }
    }

    /// Fleet mode: presence shows the device offline, with its cursor
    /// (`at_ms`: the ending connection's stamp).
    pub(super) fn fleet_offline(&mut self, user: Arc<str>, device: Arc<str>, acked: u64, at_ms: u64) {
        if let Some(f) = &self.fleet {
            let _ = f.fleet.submit(Request::Offline { user, device, acked, at_ms });
        }
    }
}
