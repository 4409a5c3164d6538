//! The core's side of the admin API and of metrics: commands that arrive through the mailbox (publish, presence, kick, mute, groups, ledger) and the hooks that feed counters and the ledger.
//!
//! The admin listener never touches a core's state: it posts an
//! [`AdminCmd`] to the core that owns the answer (the user's home core, or
//! every core for groups and the ledger) and waits on the command's reply
//! channel. So a core handles an admin command between two mailbox
//! batches, like a message from another core, and nothing on the message
//! path waits for the admin thread.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use bytes::Bytes;

use super::{ConnKey, Core, PendingSend};
use crate::metrics::{self, CoreMetrics};
use crate::proto::error::sendack;
use crate::proto::frame::SendAck;
use crate::proto::DisconnectReason;
use crate::runtime::ledger::RecipientDelivery;
use crate::runtime::mesh::{home_core, CoreMsg};
use crate::store::{NewMessage, StoreError};

/// A publish from the admin API, posted to one core (any: it picks the
/// msg_id and fans out to the recipients' home cores like a SEND).
pub struct PublishCmd {
    pub from: Arc<str>,
    /// Distinct recipients (the sender is already left out of a group).
    pub targets: Vec<Arc<str>>,
    pub group: Option<Arc<str>>,
    pub payload: Bytes,
    pub reply: Sender<Result<Published, StoreError>>,
}

/// A stored publish: its id and every recipient's seq.
#[derive(Debug, Clone)]
pub struct Published {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub seqs: Vec<(Arc<str>, u64)>,
}

/// Waiting for the recipients' `Appended` answers.
pub struct PublishWait {
    pub reply: Sender<Result<Published, StoreError>>,
    pub seqs: Vec<(Arc<str>, u64)>,
}

/// One device in a presence answer.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub device_id: Arc<str>,
    pub online: bool,
    pub remote: Option<std::net::SocketAddr>,
    pub connected_at_ms: u64,
    pub acked_seq: u64,
}

#[derive(Debug, Clone)]
pub struct PresenceView {
    pub head_seq: u64,
    pub oldest_seq: u64,
    pub devices: Vec<DeviceView>,
}

pub enum AdminCmd {
    Publish(PublishCmd),
    /// To the user's home core.
    Presence { user: Arc<str>, reply: Sender<PresenceView> },
    /// To the user's home core: DISCONNECT(0) to each online device; answers how many.
    Kick { user: Arc<str>, reply: Sender<usize> },
    /// To the user's home core; `until_ms` 0 lifts it.
    Mute { user: Arc<str>, until_ms: u64, reply: Sender<()> },
    /// To every core: replace (`Some`) or delete (`None`) a group.
    Group { name: Arc<str>, members: Option<Arc<[Arc<str>]>>, reply: Sender<()> },
    /// To every core: this message's recipients homed there.
    Ledger { msg_id: u64, reply: Sender<Vec<RecipientDelivery>> },
}

impl Core {
    pub(crate) fn m(&self) -> &CoreMetrics {
        self.shared.metrics.core(self.id)
    }

    /// Answers a SEND at once (refused before any append) and counts it.
    pub(super) fn answer_send(&mut self, key: ConnKey, ack: &SendAck, received: std::time::Instant) {
        self.write_sendack(key, ack);
        let m = self.m();
        m.sends[ack.status as usize % metrics::SEND_STATUSES.len()].inc();
        m.sendack.observe(received.elapsed());
    }

    /// PUSHes just written to `key` for seqs `sent_before + 1 ..= sent()`.
    /// Hot path: field-level borrows, no `Arc` clones, the clock read only
    /// when the ledger is on.
    pub(super) fn record_pushes(&mut self, key: ConnKey, sent_before: u64) {
        let Core { conns, ledger, shared, id, .. } = self;
        let Some(slot) = conns.get(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        let c = &slot.conn;
        let sent = c.session.sent();
        if sent <= sent_before {
            return;
        }
        let replays = c.session.replay_until().min(sent).saturating_sub(sent_before);
        let m = shared.metrics.core(*id);
        m.pushes[metrics::PUSH_REPLAY].add(replays);
        m.pushes[metrics::PUSH_FIRST].add((sent - sent_before) - replays);
        if let (true, Some(i)) = (ledger.enabled(), c.ident.as_ref()) {
            ledger.pushed(shared.clock.wall_ms(), &i.user, &i.device, sent_before + 1, sent);
        }
    }

    pub(super) fn record_retransmit(&mut self, key: ConnKey, from: u64, to: u64) {
        if from > to {
            return;
        }
        let Core { conns, ledger, shared, id, .. } = self;
        shared.metrics.core(*id).pushes[metrics::PUSH_RETRANSMIT].add(to - from + 1);
        let Some(slot) = conns.get(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        if let (true, Some(i)) = (ledger.enabled(), slot.conn.ident.as_ref()) {
            ledger.pushed(shared.clock.wall_ms(), &i.user, &i.device, from, to);
        }
    }

    /// A PUSHACK moved the device's cursor from `acked_before`.
    pub(super) fn record_ack(&mut self, key: ConnKey, acked_before: u64) {
        let Core { conns, ledger, shared, id, .. } = self;
        if !ledger.enabled() {
            return;
        }
        let Some(slot) = conns.get(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        let Some(i) = slot.conn.ident.as_ref() else { return };
        let hist = &shared.metrics.core(*id).delivery;
        let wall = shared.clock.wall_ms();
        ledger.acked(wall, &i.user, &i.device, acked_before, slot.conn.session.acked(), |ms| {
            hist.observe(std::time::Duration::from_millis(ms))
        });
    }

    /// CONNECT's `last_seq` acknowledges what the device already had.
    pub(super) fn record_connect_ack(&mut self, key: ConnKey, prev: u64, cursor: u64) {
        let Some(ident) = self.conn(key).and_then(|c| c.ident.as_ref()).map(|i| (i.user.clone(), i.device.clone()))
        else {
            return;
        };
        self.ledger_ack(&ident.0, &ident.1, prev.min(cursor), cursor);
    }

    fn ledger_ack(&mut self, user: &str, device: &str, from: u64, to: u64) {
        if !self.ledger.enabled() || to <= from {
            return;
        }
        let wall = self.shared.clock.wall_ms();
        let hist = &self.shared.metrics.core(self.id).delivery;
        self.ledger.acked(wall, user, device, from, to, |ms| hist.observe(std::time::Duration::from_millis(ms)));
    }

    /// Once a second: gauges that are cheaper to recount than to track, ledger expiry.
    pub(super) fn refresh_gauges(&mut self) {
        let (_, retained) = self.store.stats();
        self.m().inbox_messages.set(retained);
        let wall = self.shared.clock.wall_ms();
        self.ledger.expire(wall);
    }

    pub(super) fn on_admin(&mut self, cmd: AdminCmd) {
        match cmd {
            AdminCmd::Publish(p) => self.publish(p),
            AdminCmd::Presence { user, reply } => {
                let _ = reply.send(self.presence(&user));
            }
            AdminCmd::Kick { user, reply } => {
                let keys: Vec<ConnKey> = match self.users.get(&user) {
                    Some(u) => u.devices.iter().filter_map(|d| d.conn).collect(),
                    None => Vec::new(),
                };
                for k in &keys {
                    self.close_conn(*k, DisconnectReason::Normal, "closed by operator");
                }
                let _ = reply.send(keys.len());
            }
            AdminCmd::Mute { user, until_ms, reply } => {
                if until_ms > self.shared.clock.wall_ms() {
                    self.mutes.insert(user, until_ms);
                } else {
                    self.mutes.remove(&user);
                }
                let _ = reply.send(());
            }
            AdminCmd::Group { name, members, reply } => {
                match members {
                    Some(m) => {
                        self.groups.insert(name, m);
                    }
                    None => {
                        self.groups.remove(&name);
                    }
                }
                let _ = reply.send(());
            }
            AdminCmd::Ledger { msg_id, reply } => {
                let _ = reply.send(self.ledger.query(msg_id));
            }
        }
    }

    fn presence(&mut self, user: &Arc<str>) -> PresenceView {
        let wall = self.shared.clock.wall_ms();
        let (oldest_seq, head_seq) = self.store.inbox(user, wall).bounds();
        let mut devices = Vec::new();
        if let Some(u) = self.users.get(user) {
            for d in u.devices.iter().filter(|d| d.connected_at_ms > 0) {
                let conn = d.conn.and_then(|k| match self.conns.get(k.idx as usize) {
                    Some(s) if s.gen == k.gen => Some(&s.conn),
                    _ => None,
                });
                devices.push(DeviceView {
                    device_id: d.id.clone(),
                    online: conn.is_some(),
                    remote: conn.and_then(|c| c.sock).and_then(self.peer_of),
                    connected_at_ms: d.connected_at_ms,
                    acked_seq: conn.map(|c| c.session.acked()).unwrap_or(d.acked_seq),
                });
            }
        }
        PresenceView { head_seq, oldest_seq, devices }
    }

    /// Like a SEND without a device: no dedup (the admin API's idempotency
    /// keys do that), no mute, fsync gating and fan-out the same.
    fn publish(&mut self, p: PublishCmd) {
        let wall = self.shared.clock.wall_ms();
        let msg_id = self.next_msg_id(wall);
        let msg = NewMessage {
            msg_id,
            timestamp_ms: wall,
            from: p.from.clone(),
            // Not a device id a client can use (those are non-empty), so the
            // dedup tables recovery rebuilds never collide with a real device.
            device: Arc::from(""),
            client_msg_id: 0,
            group: p.group,
            payload: p.payload,
        };
        let ack = SendAck { client_msg_id: 0, status: sendack::STORED, msg_id, timestamp_ms: wall };
        let wait = PublishWait { reply: p.reply, seqs: Vec::with_capacity(p.targets.len()) };
        let gen = self.next_gen_pending();
        let idx = self.pending.insert((
            gen,
            PendingSend {
                origin: None,
                // No FANOUT intent is logged for publishes (see the note on
                // `publish`): recovery does not complete a cut-short one.
                group: false,
                user: p.from,
                device: Arc::from(""),
                ack,
                remaining: p.targets.len() as u32,
                failed: false,
                received: std::time::Instant::now(),
                admin: Some(Box::new(wait)),
            },
        ));
        if p.targets.is_empty() {
            self.complete(idx);
            return;
        }
        let req = ((gen as u64) << 32) | idx as u64;
        if self.fleet.is_some() {
            self.fleet_publish(req, msg, p.targets);
            return;
        }
        if !self.reserve_mailboxes(&p.targets) {
            // A target core is behind: the same answer as a client SEND's
            // SENDACK 5 (503 here), nothing stored.
            self.reject(crate::metrics::REJ_BUSY);
            self.pending[idx].1.failed = true;
            self.pending[idx].1.remaining = 0;
            self.complete(idx);
            return;
        }
        let cores = self.shared.mesh.len();
        let mut local = Vec::new();
        // As for a SEND: a large fan-out's own appends go through the mailbox.
        let sliced = p.targets.len() > super::FANOUT_INLINE;
        for t in p.targets {
            let home = home_core(&t, cores);
            if home == self.id && !sliced {
                local.push(t);
            } else {
                self.shared.mesh[home].post(CoreMsg::Append { origin: self.id, req, user: t, msg: msg.clone() });
            }
        }
        for t in local {
            self.append_for(self.id, req, &t, msg.clone(), wall);
        }
    }

    pub(super) fn complete_publish(&mut self, w: PublishWait, ack: SendAck, failed: bool) {
        let result = if failed {
            Err(StoreError::RecipientFailed)
        } else {
            Ok(Published { msg_id: ack.msg_id, timestamp_ms: ack.timestamp_ms, seqs: w.seqs })
        };
        let _ = w.reply.send(result);
    }
}
