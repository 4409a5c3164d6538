//! The SEND path of a core: dedup, routing to the recipients' home cores, appends, fsync-gated SENDACKs and the pushes they cause.

use std::sync::Arc;

use super::*;

impl Core {
    /// A SEND that passed every check becomes a message: its msg_id, the
    /// SENDACK it will get once stored, and its dedup entry opened (the
    /// local log and the fleet engine both start a stored SEND here).
    pub(super) fn begin_send(&mut self, user: &Arc<str>, device: &Arc<str>, s: &frame::Send, wall: u64) -> (SendAck, NewMessage) {
        let msg_id = self.next_msg_id(wall);
        let ack = SendAck { client_msg_id: s.client_msg_id, status: sendack::STORED, msg_id, timestamp_ms: wall };
        let group = (s.target_kind == 2).then(|| Arc::from(s.target.as_str()));
        let msg = NewMessage {
            msg_id,
            timestamp_ms: wall,
            from: user.clone(),
            device: device.clone(),
            client_msg_id: s.client_msg_id,
            group,
            // The one copy of the payload: out of the connection's read
            // buffer (which it would otherwise pin), shared by every
            // recipient's inbox entry and every core it travels to.
            payload: bytes::Bytes::copy_from_slice(&s.payload),
        };
        if let Some(d) = self.device_mut(user, device) {
            d.dedup.begin(s.client_msg_id);
        }
        (ack, msg)
    }

    pub(super) fn next_msg_id(&mut self, wall_ms: u64) -> u64 {
        if let Some(f) = self.fleet.as_ref() {
            // Unique across the fleet too (the node's leased index); 0
            // (never a msg_id) without a lease: `fleet.rs` refuses to store it.
            return match f.fleet.node_index() {
                Some(index) => crate::fleet::fleet_msg_id(&mut self.last_msg_id, wall_ms, index, self.id),
                None => 0,
            };
        }
        // Time-ordered and unique across cores (low 8 bits = core) and
        // restarts (the counter never falls behind the clock).
        self.last_msg_id = (self.last_msg_id + 1).max(wall_ms << 12);
        (self.last_msg_id << 8) | (self.id as u64 & 0xff)
    }

    pub(super) fn on_send(&mut self, key: ConnKey, s: frame::Send) {
        let wall = self.shared.clock.wall_ms();
        let Some(ident) = self.conn(key).and_then(|c| c.ident.as_ref()).map(|i| (i.user.clone(), i.device.clone()))
        else {
            return;
        };
        let (user, device) = ident;
        self.stats.sends += 1;
        let received = Instant::now();
        let reply = |status: u8| SendAck { client_msg_id: s.client_msg_id, status, msg_id: 0, timestamp_ms: wall };
        // Dedup: a retried id gets its original answer, or none yet if the
        // original is still being appended (its SENDACK is on the way).
        if let Some(d) = self.device_mut(&user, &device) {
            match d.dedup.lookup(s.client_msg_id) {
                Some(Some(ack)) => {
                    self.write_sendack(key, &ack);
                    return;
                }
                Some(None) => return,
                None => {}
            }
        }
        // Muted by an operator (checked after dedup: a SEND accepted before
        // the mute and retried keeps its original answer). Fleet mode: the
        // engine's claim checks the fleet-wide mute instead.
        if self.fleet.is_none() && self.mutes.get(&user).is_some_and(|until| *until > wall) {
            self.reject(crate::metrics::REJ_MUTED);
            return self.answer_send(key, &reply(sendack::FORBIDDEN), received);
        }
        // Limits, cheapest first. None of these answers enters the dedup
        // table: a retry with the same id after backing off is tried afresh.
        let now = self.shared.clock.mono_ms();
        let lim = &self.live.limits_cfg;
        let (rate, max_in_flight, max_payload) = (lim.send_rate_per_connection, lim.max_sends_in_flight, lim.max_payload_bytes);
        let max_frame = self.shared.limits.max_frame;
        let Some(c) = self.conn(key) else { return };
        if !c.send_bucket.take(rate, now) {
            self.reject(REJ_RATE_LIMITED);
            return self.answer_send(key, &reply(sendack::RATE_LIMITED), received);
        }
        if c.sends_in_flight >= max_in_flight {
            self.reject(REJ_BUSY);
            return self.answer_send(key, &reply(sendack::RETRY), received);
        }
        if s.payload.len() > max_payload as usize || !crate::limits::push_fits(user.len(), s.payload.len(), max_frame) {
            self.reject(REJ_TOO_LARGE);
            return self.answer_send(key, &reply(sendack::TOO_LARGE), received);
        }
        if crate::limits::check_name(s.target.as_str()).is_err() {
            // An id no token could name and no group can have: no such target.
            self.reject(REJ_BAD_TARGET);
            return self.answer_send(key, &reply(sendack::NO_SUCH_TARGET), received);
        }
        // Inline for one target (no Vec per SEND), and a recipient homed here
        // reuses the id its inbox is keyed by (no `Arc<str>` per SEND).
        let targets: smallvec::SmallVec<[Arc<str>; 1]> = match s.target_kind {
            1 => smallvec::smallvec![self.intern_user(s.target.as_str())],
            // Fleet mode: the engine resolves the group (its membership
            // lives there, fleet-wide) and answers SENDACK 1 or 2 itself.
            2 if self.fleet.is_some() => smallvec::SmallVec::new(),
            2 => match self.groups.get(s.target.as_str()) {
                None => return self.answer_send(key, &reply(sendack::NO_SUCH_TARGET), received),
                Some(members) if !members.iter().any(|m| **m == *user) => {
                    return self.answer_send(key, &reply(sendack::FORBIDDEN), received)
                }
                Some(members) => members.iter().filter(|m| ***m != *user).cloned().collect(),
            },
            _ => return self.answer_send(key, &reply(sendack::NO_SUCH_TARGET), received),
        };
        if self.fleet.is_some() {
            return self.fleet_send(key, user, device, &s, targets.into_vec(), received, wall);
        }
        if !self.reserve_mailboxes(&targets) {
            self.reject(REJ_BUSY);
            return self.answer_send(key, &reply(sendack::RETRY), received);
        }
        let (ack, msg) = self.begin_send(&user, &device, &s, wall);
        let gen = self.next_gen_pending();
        let group = msg.group.is_some() && !targets.is_empty();
        let idx = self.pending.insert((
            gen,
            PendingSend { origin: Some(key), user, device, ack, remaining: 0, failed: false, received, admin: None, group },
        ));
        if let Some(c) = self.conn(key) {
            c.sends_in_flight += 1;
        }
        let req = ((gen as u64) << 32) | idx as u64;
        // A group send logs its recipients (the membership now) before any
        // copy exists anywhere, so recovery completes exactly these; the
        // SENDACK waits for that record like for a copy.
        let intent = match group {
            true => match self.store.record_fanout(&msg, &targets) {
                Ok(lsn) => Some(lsn),
                Err(e) => {
                    // No copy was posted: give the mailbox room back.
                    self.release_mailboxes(&targets);
                    self.pending[idx].1.remaining = 1;
                    self.on_appended(req, msg.from.clone(), Err(e));
                    return;
                }
            },
            false => None,
        };
        // Every target, local or not, answers through `Appended`, so a local
        // append under fsync "always" waits for its fsync like a remote one.
        let cores = self.shared.mesh.len();
        let mut local = Vec::new();
        let mut remaining = 0;
        // A large fan-out's own appends go through this core's mailbox too,
        // so they run in slices between other clients' I/O instead of all
        // at once inside this connection's turn.
        let sliced = targets.len() > FANOUT_INLINE;
        for t in targets {
            remaining += 1;
            let home = home_core(&t, cores);
            if home == self.id && !sliced {
                local.push(t);
            } else {
                self.shared.mesh[home].post(CoreMsg::Append { origin: self.id, req, user: t, msg: msg.clone() });
            }
        }
        if intent.is_some() {
            remaining += 1;
        }
        self.pending[idx].1.remaining = remaining;
        if remaining == 0 {
            // A group whose only member is the sender: nothing to store.
            self.complete(idx);
            return;
        }
        // The intent record answers like a copy (as the sender, seq 0).
        match intent {
            Some(lsn) if lsn > self.store.synced_lsn() => self.waiting.push_back((lsn, self.id, req, msg.from.clone(), 0)),
            Some(_) => self.on_appended(req, msg.from.clone(), Ok(0)),
            None => {}
        }
        for t in local {
            self.append_for(self.id, req, &t, msg.clone(), wall);
        }
    }

    /// Appends for a SEND handled on core `origin`; answers `Appended` once
    /// the entry is durable per the fsync policy.
    pub(super) fn append_for(&mut self, origin: usize, req: u64, user: &Arc<str>, msg: NewMessage, wall: u64) {
        match self.append_local(user, msg, wall) {
            Ok((seq, lsn)) if lsn > self.store.synced_lsn() => self.waiting.push_back((lsn, origin, req, user.clone(), seq)),
            Ok((seq, _)) => self.answer_appended(origin, req, user.clone(), Ok(seq)),
            Err(e) => {
                self.answer_appended(origin, req, user.clone(), Err(e));
                self.refuse_waiting_if_failed();
            }
        }
    }

    /// Once the store has failed nothing waiting for an fsync will ever be
    /// confirmed: those SENDs are answered SENDACK 5 now (store/durable.rs,
    /// "When the disk fails").
    pub(super) fn refuse_waiting_if_failed(&mut self) {
        let Some(why) = self.store.failed().cloned() else { return };
        while let Some((_, origin, req, user, _)) = self.waiting.pop_front() {
            self.answer_appended(origin, req, user, Err(crate::store::StoreError::Failed(Box::new(why.clone()))));
        }
    }

    /// `result` is the recipient's new seq.
    pub(super) fn answer_appended(&mut self, origin: usize, req: u64, user: Arc<str>, result: Result<u64, crate::store::StoreError>) {
        if origin == self.id {
            self.on_appended(req, user, result);
        } else {
            self.shared.mesh[origin].post(CoreMsg::Appended { req, user, result });
        }
    }

    pub(super) fn on_appended(&mut self, req: u64, user: Arc<str>, result: Result<u64, crate::store::StoreError>) {
        let idx = (req & 0xffff_ffff) as usize;
        let gen = (req >> 32) as u32;
        let done = match self.pending.get_mut(idx) {
            Some((g, p)) if *g == gen => {
                if let (Some(w), Ok(seq)) = (p.admin.as_mut(), &result) {
                    w.seqs.push((user, *seq));
                }
                p.failed |= result.is_err();
                p.remaining = p.remaining.saturating_sub(1);
                p.remaining == 0
            }
            _ => false,
        };
        if done {
            self.complete(idx);
        }
    }

    /// The syncer finished an fsync: show the entries it covered to online
    /// devices and release the SENDACKs that waited for it.
    pub fn on_synced(&mut self, result: Result<u64, crate::store::StoreError>) {
        let mut woken = std::mem::take(&mut self.woken_users);
        if let Err(e) = &result {
            tracing::error!(worker = self.id, error = %e, "log fsync failed: /readyz reports a storage failure");
            self.shared.metrics.health.storage_failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.store.on_synced(result, &mut woken);
        let now = self.shared.clock.mono_ms();
        for user in woken.drain(..) {
            self.push_to_online(&user, now);
        }
        self.woken_users = woken;
        let synced = self.store.synced_lsn();
        while self.waiting.front().is_some_and(|w| w.0 <= synced) {
            let Some((_, origin, req, user, seq)) = self.waiting.pop_front() else { break };
            self.answer_appended(origin, req, user, Ok(seq));
        }
        self.refuse_waiting_if_failed();
    }

    /// The log reader has cold payloads in memory now: fill the sessions
    /// that stopped at them, one finished read at a time (while its
    /// payloads are surely still cached).
    pub fn on_store_io(&mut self) {
        let mut woken = Vec::new();
        while self.store.poll_io(&mut woken) {
            let now = self.shared.clock.mono_ms();
            for user in woken.drain(..) {
                self.push_to_online(&user, now);
            }
        }
    }

    pub(super) fn next_gen_pending(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    pub(super) fn device_mut(&mut self, user: &str, device: &str) -> Option<&mut Device> {
        self.users.get_mut(user)?.find_mut(device)
    }

    /// Appends to a user homed here; pushes to their online devices when the
    /// entry is already visible (memory, or fsync policies other than always).
    /// Returns the entry's (seq, lsn).
    pub(super) fn append_local(&mut self, user: &Arc<str>, msg: NewMessage, wall: u64) -> Result<(u64, u64), crate::store::StoreError> {
        let (msg_id, from, ts) = (msg.msg_id, msg.from.clone(), msg.timestamp_ms);
        let (seq, lsn) = self.store.append(user, msg, wall).inspect_err(|e| tracing::warn!(error = %e, "append failed"))?;
        // Before any push of it, so the ledger sees the first one.
        self.ledger.appended(wall, msg_id, &from, ts, user, seq);
        if lsn <= self.store.synced_lsn() {
            let now = self.shared.clock.mono_ms();
            self.push_to_online(user, now);
        }
        Ok((seq, lsn))
    }

    pub(super) fn push_to_online(&mut self, user: &Arc<str>, now: u64) {
        let online: Vec<ConnKey> = match self.users.get(user) {
            Some(u) => u.devices.iter().filter_map(|d| d.conn).collect(),
            None => return,
        };
        for key in online {
            self.fill(key, now);
            self.kick(key);
        }
    }

    pub(super) fn complete(&mut self, idx: usize) {
        let (_, mut p) = self.pending.remove(idx);
        if let Some(c) = p.origin.and_then(|o| self.conn(o)) {
            c.sends_in_flight = c.sends_in_flight.saturating_sub(1);
        }
        if let Some(w) = p.admin.take() {
            return self.complete_publish(*w, p.ack, p.failed);
        }
        let ack = if p.failed { SendAck { status: sendack::RETRY, msg_id: 0, ..p.ack } } else { p.ack };
        let m = self.m();
        m.sends[ack.status as usize % crate::metrics::SEND_STATUSES.len()].inc();
        m.sendack.observe(p.received.elapsed());
        if p.failed {
            m.rejections[crate::metrics::REJ_BUSY].inc();
        }
        if p.group && !p.failed {
            // Every copy is confirmed: recovery must not complete it again.
            self.store.fanout_done(&p.user, &p.device, ack.client_msg_id);
        }
        let limit = self.shared.dedup_per_device;
        let (target, idle) = match self.device_mut(&p.user, &p.device) {
            Some(d) => {
                if p.failed {
                    // A failed SEND may be retried with the same id and must be tried again.
                    d.dedup.forget(ack.client_msg_id);
                } else {
                    d.dedup.finish(ack, limit);
                }
                (d.conn, d.conn.is_none() && !d.dedup.has_pending())
            }
            None => (None, false),
        };
        if idle {
            // The last pending SEND completed after its device left: the
            // table was not packed meanwhile (`core/dedup.rs`); it may be now.
            self.dedup_went_idle(p.user.clone(), p.device.clone());
        }
        // The answer goes to the device's current connection, which may be a
        // newer one than the connection that sent.
        if let Some(key) = target {
            self.write_sendack(key, &ack);
        }
    }

    pub(super) fn write_sendack(&mut self, key: ConnKey, ack: &SendAck) {
        if let Some(c) = self.conn(key) {
            if c.session.phase() == Phase::Open {
                frame::encode_sendack(&mut c.out, ack);
            }
        }
        self.kick(key);
    }
}
